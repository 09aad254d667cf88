//! Ownership handoff: host leases, host states, placement of nodes, and the leader's
//! reconciler that takes over dead hosts' nodes, completes or rolls back migrations and
//! drains hosts. Every ownership change is a committed, epoch-fenced store command.
//!
//! [`gate`] is the one rule of who answers for a node; [`timing`] ties Raft's timing to
//! the lease. Pure parts (gate, state, placement, timing, `reconcile::plan`) know
//! nothing of sockets or the runtime; the drivers here (lease, reconcile) reach the
//! store only through its replica reads and the write path (`store::raft::propose`),
//! never the HTTP layer or the protocol drivers.

pub mod gate;
pub mod lease;
pub mod placement;
pub mod rebalance;
pub mod reconcile;
pub mod state;
pub mod timing;

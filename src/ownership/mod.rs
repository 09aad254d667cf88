//! Ownership handoff: host leases, host states, placement of nodes, and the leader's
//! reconciler that takes over dead hosts' nodes, completes or rolls back migrations and
//! drains hosts. Every ownership change is a committed, epoch-fenced store command.

pub mod gate;
pub mod lease;
pub mod placement;
pub mod rebalance;
pub mod reconcile;
pub mod state;
pub mod timing;

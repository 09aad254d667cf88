//! Once-only application of tagged writes ([`Command::Idempotent`]): a table of recent
//! request ids with the outcome each first produced.
//!
//! A proposer that lost a write's answer (the leader died after committing it, the
//! forward timed out) cannot know whether it was applied, so it sends the same write
//! again under the same request id. Applying the retry would double the effect or
//! answer a false conflict ("node exists"); instead the first outcome is returned.
//! The table is pruned on every tagged write, by the proposer's time and by count, so
//! every replica prunes the same rows at the same log position.

use rusqlite::{params, OptionalExtension, Transaction};

use super::{dispatch, with_savepoint};
use crate::store::command::{Command, Outcome, Rejection};
use crate::store::types::{Millis, RequestId};
use crate::store::StoreError;

/// How long a request's outcome is kept, after the proposer's time of its first
/// attempt. A proposer retries for at most its propose deadline, which start-up keeps
/// under half of this.
pub const REQUEST_RETENTION_MS: u64 = 10 * 60 * 1000;

/// Most request outcomes kept: beyond, the oldest go first (a burst of writes cannot
/// grow the table without bound within the retention time).
pub const MAX_REQUESTS: u64 = 100_000;

/// Applies `command` unless `request` was applied already; then returns the recorded
/// outcome and changes nothing else.
pub(super) fn apply_once(
    tx: &Transaction<'_>,
    request: RequestId,
    at: Millis,
    command: &Command,
) -> Result<Outcome, StoreError> {
    prune(tx, at, REQUEST_RETENTION_MS, MAX_REQUESTS)?;
    let id = request.to_string();
    if let Some(first) = recorded(tx, &id)? {
        return Ok(first);
    }
    // A nested tag is refused by `dispatch` like any malformed command, and recorded.
    let outcome = with_savepoint(tx, |tx| dispatch(tx, command))?;
    let json = serde_json::to_string(&outcome).map_err(|e| StoreError::Serde(e.to_string()))?;
    tx.execute(
        "INSERT INTO requests (id, at, outcome) VALUES (?1, ?2, ?3)",
        params![id, at, json],
    )?;
    Ok(outcome)
}

/// The outcome recorded for request `id`, if it is still kept.
fn recorded(tx: &Transaction<'_>, id: &str) -> Result<Option<Outcome>, StoreError> {
    let json: Option<String> = tx
        .query_row("SELECT outcome FROM requests WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(json.map(|j| {
        // Written by an older build with another Outcome shape: the write still must
        // not apply twice; the answer says what happened.
        serde_json::from_str(&j).unwrap_or_else(|e| {
            Outcome::Rejected(Rejection::Invalid {
                reason: format!("request {id} was applied already; its outcome is unreadable: {e}"),
            })
        })
    }))
}

/// Forgets requests first tried more than `retention_ms` before `at`, and the oldest
/// beyond `max - 1` (room for the one about to be recorded).
fn prune(tx: &Transaction<'_>, at: Millis, retention_ms: u64, max: u64) -> Result<(), StoreError> {
    let cutoff = at.saturating_sub(i64::try_from(retention_ms).unwrap_or(i64::MAX));
    tx.prepare_cached("DELETE FROM requests WHERE at < ?1")?
        .execute([cutoff])?;
    let keep = i64::try_from(max.saturating_sub(1)).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "DELETE FROM requests WHERE seq <= (SELECT COALESCE(MAX(seq), 0) FROM requests) - ?1",
    )?
    .execute([keep])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::command::Applied;
    use crate::store::{MacAddr, Store};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("baton.db")).unwrap();
        let host = Command::RegisterHost {
            name: "h1".into(),
            group: "g".into(),
            addresses: vec![],
            at: 1,
        };
        assert!(store.apply(&host).unwrap().is_applied());
        (dir, store)
    }

    fn enroll(node: &str, mac: u8, at: Millis) -> Command {
        Command::EnrollNode {
            node: node.into(),
            macs: vec![MacAddr([0x52, 0x54, 0, 0, 0, mac])],
            group: "g".into(),
            arch: None,
            owner: "h1".into(),
            at,
        }
    }

    fn tagged(id: u128, at: Millis, cmd: Command) -> Command {
        Command::Idempotent {
            request: RequestId(id),
            at,
            command: Box::new(cmd),
        }
    }

    fn events(store: &Store, kind: &str) -> usize {
        store
            .events_since(0, 10_000)
            .unwrap()
            .iter()
            .filter(|e| e.kind == kind)
            .count()
    }

    fn kept(store: &Store) -> Vec<String> {
        store
            .canonical_dump()
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("requests "))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_retried_write_applies_once_and_gets_its_first_answer() {
        let (_d, store) = store();
        let first = store.apply(&tagged(7, 10, enroll("n1", 1, 10))).unwrap();
        assert!(
            matches!(&first, Outcome::Applied(Applied::NodeEnrolled { node, .. }) if node == "n1"),
            "{first:?}"
        );
        // The same write again (its answer was lost): same outcome, no second effect,
        // no "node exists".
        let again = store.apply(&tagged(7, 10, enroll("n1", 1, 10))).unwrap();
        assert_eq!(again, first);
        assert_eq!(events(&store, "node_enrolled"), 1);
        // A new request for the same node is a real conflict and says so.
        let other = store.apply(&tagged(8, 11, enroll("n1", 1, 11))).unwrap();
        assert!(
            matches!(other, Outcome::Rejected(Rejection::NodeExists { .. })),
            "{other:?}"
        );
        assert_eq!(kept(&store).len(), 2, "{:?}", kept(&store));
    }

    #[test]
    fn a_refusal_is_recorded_and_replayed_even_after_the_state_changed() {
        let (_d, store) = store();
        assert!(store.apply(&enroll("n1", 1, 10)).unwrap().is_applied());
        let refused = store.apply(&tagged(1, 20, enroll("n2", 1, 20))).unwrap();
        assert!(
            matches!(refused, Outcome::Rejected(Rejection::MacInUse { .. })),
            "{refused:?}"
        );
        // The MAC is free now, but the retry is the same request: it is not applied
        // late, behind the caller's back.
        let rm = Command::RemoveNode {
            node: "n1".into(),
            at: 21,
        };
        assert!(store.apply(&rm).unwrap().is_applied());
        assert_eq!(
            store.apply(&tagged(1, 20, enroll("n2", 1, 20))).unwrap(),
            refused
        );
        assert!(store.node("n2").unwrap().is_none());
    }

    #[test]
    fn tags_do_not_nest_or_batch() {
        let (_d, store) = store();
        let nested = tagged(1, 5, tagged(2, 5, enroll("n1", 1, 5)));
        assert!(matches!(
            store.apply(&nested).unwrap(),
            Outcome::Rejected(Rejection::Invalid { .. })
        ));
        let batched = Command::Batch {
            commands: vec![tagged(3, 5, enroll("n1", 1, 5))],
        };
        assert!(matches!(
            store.apply(&batched).unwrap(),
            Outcome::Rejected(Rejection::BatchRejected { .. })
        ));
        assert!(store.node("n1").unwrap().is_none());
        // A tagged batch is fine.
        let ok = tagged(
            4,
            6,
            Command::Batch {
                commands: vec![enroll("n1", 1, 6), enroll("n2", 2, 6)],
            },
        );
        assert!(store.apply(&ok).unwrap().is_applied());
        assert_eq!(store.apply(&ok).unwrap(), store.apply(&ok).unwrap());
        assert_eq!(events(&store, "node_enrolled"), 2);
    }

    #[test]
    fn records_age_out_by_the_proposers_time() {
        let (_d, store) = store();
        let retention = REQUEST_RETENTION_MS as i64;
        store
            .apply(&tagged(1, 1_000, enroll("n1", 1, 1_000)))
            .unwrap();
        // Still kept just inside the retention time.
        store
            .apply(&tagged(2, 1_000 + retention, enroll("n2", 2, 1_000)))
            .unwrap();
        assert_eq!(kept(&store).len(), 2);
        store
            .apply(&tagged(3, 1_001 + retention, enroll("n3", 3, 1_000)))
            .unwrap();
        let k = kept(&store);
        assert_eq!(k.len(), 2, "{k:?}");
        assert!(k.iter().all(|l| !l.contains(&RequestId(1).to_string())));
        // Past its retention a retry is a new write again (here: a real conflict).
        assert!(matches!(
            store
                .apply(&tagged(1, 1_000, enroll("n1", 1, 1_000)))
                .unwrap(),
            Outcome::Rejected(Rejection::NodeExists { .. })
        ));
    }

    #[test]
    fn records_are_bounded_by_count_oldest_first_on_every_replica() {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let stores: Vec<Store> = dirs
            .iter()
            .map(|d| Store::open(d.path().join("baton.db")).unwrap())
            .collect();
        for s in &stores {
            let mut conn = s.writer.lock().unwrap();
            let tx = conn.transaction().unwrap();
            for i in 0..10u128 {
                prune(&tx, 100, REQUEST_RETENTION_MS, 4).unwrap();
                tx.execute(
                    "INSERT INTO requests (id, at, outcome) VALUES (?1, 100, '{}')",
                    [RequestId(i).to_string()],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let k = kept(&stores[0]);
        assert_eq!(k.len(), 4, "{k:?}");
        for (i, line) in (6..10u128).zip(&k) {
            assert!(line.contains(&RequestId(i).to_string()), "{line}");
        }
        assert_eq!(
            stores[0].canonical_dump().unwrap(),
            stores[1].canonical_dump().unwrap()
        );
    }

    #[test]
    fn request_ids_are_32_hex_digits() {
        let id = RequestId(0xabc);
        let s = serde_json::to_string(&id).unwrap();
        assert_eq!(s, "\"00000000000000000000000000000abc\"");
        assert_eq!(serde_json::from_str::<RequestId>(&s).unwrap(), id);
        for bad in ["\"abc\"", "\"g0000000000000000000000000000abc\"", "7"] {
            assert!(serde_json::from_str::<RequestId>(bad).is_err(), "{bad}");
        }
    }
}

//! Fair shares of a limited number of slots (TFTP transfers, HTTP connections) among
//! source addresses. Sans-IO: the table keeps ids, sources and which entries may be
//! evicted; the driver owns what a slot stands for and ends it when told to.
//!
//! The policy, decided in [`SlotTable::decide`]:
//! - a source never holds more than `per_source` slots;
//! - while slots are free, any source below that cap gets one (the table is
//!   work-conserving: many clients behind one NAT address may use what others don't);
//! - when the table is full, a source below its fair share (`total / active sources`)
//!   takes the place of the oldest *evictable* entry of the source that is furthest over
//!   its share. Evictable entries are the ones that have cost their source nothing to
//!   create and would hold a slot for no one: a TFTP transfer whose client has not
//!   acknowledged anything yet, an HTTP connection with no request in flight;
//! - a source at its cap, or at a full table, may replace its own oldest evictable entry;
//! - otherwise the request is refused, with the limit that refused it.
//!
//! So a few addresses cannot hold every slot with requests they never follow up: a new
//! source always gets in while some source holds more than its share in such entries.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

/// Identifies one slot holder.
pub type SlotId = u64;

/// The limits in force for one decision (the total may follow the fd budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Slots in all.
    pub total: usize,
    /// Slots one source may hold.
    pub per_source: usize,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Every slot is taken and no entry may be evicted for this source.
    Total,
    /// The source holds its maximum and none of its entries may be evicted.
    PerSource,
}

impl Refusal {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerSource => "per_client",
        }
    }
}

/// What to do with a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Take a slot.
    Admit,
    /// End this entry first (it is removed from the table), then decide again.
    Evict(SlotId),
    /// Refuse.
    Refuse(Refusal),
}

#[derive(Debug)]
struct Entry<S> {
    source: S,
    /// Order in which it became evictable, if it is.
    evictable: Option<u64>,
}

#[derive(Debug, Default)]
struct Source {
    count: usize,
    /// Evictable entries, oldest first: (order, id).
    evictable: BTreeSet<(u64, SlotId)>,
}

/// The slots in use, by source.
#[derive(Debug)]
pub struct SlotTable<S> {
    entries: HashMap<SlotId, Entry<S>>,
    sources: HashMap<S, Source>,
    next_id: SlotId,
    seq: u64,
}

impl<S> Default for SlotTable<S> {
    fn default() -> Self {
        SlotTable {
            entries: HashMap::new(),
            sources: HashMap::new(),
            next_id: 1,
            seq: 0,
        }
    }
}

impl<S: Hash + Eq + Clone> SlotTable<S> {
    /// Slots in use.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no slot is in use.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Slots `source` holds.
    pub fn count(&self, source: &S) -> usize {
        self.sources.get(source).map_or(0, |s| s.count)
    }

    /// Sources holding at least one slot.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// The share of the slots `source` is entitled to when they are contended: the
    /// total divided by the sources holding slots (itself included), at least one.
    pub fn fair_share(&self, source: &S, caps: Caps) -> usize {
        let active = self.sources.len() + usize::from(!self.sources.contains_key(source));
        (caps.total / active.max(1)).clamp(1, caps.per_source.max(1))
    }

    /// The decision for a new request from `source` (see the module doc).
    pub fn decide(&self, source: &S, caps: Caps) -> Admission {
        let n = self.count(source);
        let own_oldest = || {
            self.sources
                .get(source)
                .and_then(|s| s.evictable.first())
                .map(|&(_, id)| id)
        };
        if n >= caps.per_source {
            return own_oldest().map_or(Admission::Refuse(Refusal::PerSource), Admission::Evict);
        }
        if self.entries.len() < caps.total {
            return Admission::Admit;
        }
        let share = self.fair_share(source, caps);
        if n < share {
            // The source furthest over its share that has an entry to give back.
            let victim = self
                .sources
                .iter()
                .filter(|(k, s)| *k != source && s.count > share && !s.evictable.is_empty())
                .max_by_key(|(_, s)| s.count)
                .and_then(|(_, s)| s.evictable.first())
                .map(|&(_, id)| id);
            if let Some(id) = victim {
                return Admission::Evict(id);
            }
        }
        own_oldest().map_or(Admission::Refuse(Refusal::Total), Admission::Evict)
    }

    /// Records a slot for `source` (after [`Admission::Admit`]); returns its id.
    pub fn insert(&mut self, source: S, evictable: bool) -> SlotId {
        let id = self.next_id;
        self.next_id += 1;
        self.sources.entry(source.clone()).or_default().count += 1;
        self.entries.insert(
            id,
            Entry {
                source,
                evictable: None,
            },
        );
        self.set_evictable(id, evictable);
        id
    }

    /// Frees a slot; true if it was held (freeing twice is harmless).
    pub fn remove(&mut self, id: SlotId) -> bool {
        let Some(e) = self.entries.remove(&id) else {
            return false;
        };
        if let Some(s) = self.sources.get_mut(&e.source) {
            s.count -= 1;
            if let Some(o) = e.evictable {
                s.evictable.remove(&(o, id));
            }
            if s.count == 0 {
                self.sources.remove(&e.source);
            }
        }
        true
    }

    /// Marks a slot evictable (it becomes the newest evictable one of its source) or not.
    pub fn set_evictable(&mut self, id: SlotId, evictable: bool) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if e.evictable.is_some() == evictable {
            return;
        }
        let Some(s) = self.sources.get_mut(&e.source) else {
            return;
        };
        match e.evictable.take() {
            Some(o) => {
                s.evictable.remove(&(o, id));
            }
            None => {
                self.seq += 1;
                e.evictable = Some(self.seq);
                s.evictable.insert((self.seq, id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        total: 12,
        per_source: 5,
    };

    /// Takes a slot for `src` as a driver would: evicting as told, at most twice.
    fn take(
        t: &mut SlotTable<&'static str>,
        src: &'static str,
        evictable: bool,
        caps: Caps,
    ) -> Result<(SlotId, Option<SlotId>), Refusal> {
        let mut evicted = None;
        for _ in 0..3 {
            match t.decide(&src, caps) {
                Admission::Admit => return Ok((t.insert(src, evictable), evicted)),
                Admission::Evict(id) => {
                    assert!(t.remove(id));
                    evicted = Some(id);
                }
                Admission::Refuse(r) => return Err(r),
            }
        }
        panic!("no decision after two evictions");
    }

    #[test]
    fn per_source_cap_then_own_eviction() {
        let mut t = SlotTable::default();
        let firsts: Vec<_> = (0..5)
            .map(|_| take(&mut t, "a", true, CAPS).unwrap().0)
            .collect();
        // At its cap, a source replaces its own oldest evictable entry...
        assert_eq!(take(&mut t, "a", true, CAPS).unwrap().1, Some(firsts[0]));
        // ...and is refused when it has none.
        let mut t = SlotTable::default();
        for _ in 0..5 {
            take(&mut t, "a", false, CAPS).unwrap();
        }
        assert_eq!(take(&mut t, "a", true, CAPS), Err(Refusal::PerSource));
        assert_eq!(t.count(&"a"), 5);
    }

    #[test]
    fn work_conserving_below_the_caps() {
        let mut t = SlotTable::default();
        let caps = Caps {
            total: 10,
            per_source: 10,
        };
        for _ in 0..9 {
            take(&mut t, "nat", false, caps).unwrap();
        }
        // One source may use nearly everything while nobody else asks.
        assert_eq!(t.count(&"nat"), 9);
        take(&mut t, "b", false, caps).unwrap();
        assert_eq!(take(&mut t, "c", false, caps), Err(Refusal::Total));
    }

    #[test]
    fn a_few_sources_cannot_lock_out_a_new_one() {
        // The lockout: four addresses fill the table with requests they never
        // follow up (evictable entries).
        let caps = Caps {
            total: 4096,
            per_source: 1024,
        };
        let mut t = SlotTable::default();
        for src in ["a1", "a2", "a3", "a4"] {
            for _ in 0..1100 {
                let _ = take(&mut t, src, true, caps);
            }
        }
        assert_eq!(t.len(), 4096);
        // Each new client gets in by evicting an attacker's entry, up to its share.
        for _ in 0..100 {
            let (_, ev) = take(&mut t, "node", false, caps).unwrap();
            assert!(ev.is_some());
        }
        assert_eq!(t.count(&"node"), 100);
        assert!(["a1", "a2", "a3", "a4"].iter().all(|a| t.count(a) >= 999));
        // Many new sources each get a slot too.
        let names: Vec<&'static str> = (0..200)
            .map(|i| &*Box::leak(format!("n{i}").into_boxed_str()))
            .collect();
        for n in &names {
            take(&mut t, n, false, caps).unwrap();
        }
        assert_eq!(t.len(), 4096);
    }

    #[test]
    fn proven_entries_are_never_evicted() {
        let caps = Caps {
            total: 4,
            per_source: 4,
        };
        let mut t = SlotTable::default();
        for _ in 0..4 {
            take(&mut t, "a", false, caps).unwrap();
        }
        assert_eq!(take(&mut t, "b", false, caps), Err(Refusal::Total));
        // One entry turns evictable (e.g. an idle HTTP connection): now b gets in.
        let id = *t.entries.keys().next().unwrap();
        t.set_evictable(id, true);
        assert_eq!(take(&mut t, "b", false, caps).unwrap().1, Some(id));
    }

    #[test]
    fn no_eviction_from_a_source_within_its_share() {
        let caps = Caps {
            total: 4,
            per_source: 4,
        };
        let mut t = SlotTable::default();
        for s in ["a", "a", "b", "b"] {
            take(&mut t, s, true, caps).unwrap();
        }
        // c's share is 4/3 = 1; a and b hold 2 each (> 1): the oldest of one of them goes.
        assert!(take(&mut t, "c", false, caps).unwrap().1.is_some());
        // d's share is 4/4 = 1; a or b still holds 2 (> 1), c holds 1 (not over).
        assert!(take(&mut t, "d", false, caps).unwrap().1.is_some());
        assert!(["a", "b", "c", "d"].iter().all(|s| t.count(s) == 1));
        // Now everyone holds its share: e is refused, nobody is evicted for it.
        assert_eq!(take(&mut t, "e", false, caps), Err(Refusal::Total));
    }

    #[test]
    fn remove_and_set_evictable_are_idempotent() {
        let mut t = SlotTable::default();
        let id = t.insert("a", false);
        t.set_evictable(id, true);
        t.set_evictable(id, true);
        t.set_evictable(id, false);
        t.set_evictable(id, true);
        assert!(t.remove(id));
        assert!(!t.remove(id));
        t.set_evictable(id, false);
        assert_eq!((t.len(), t.sources()), (0, 0));
    }
}

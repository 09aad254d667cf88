//! Per-key token buckets (per source address, per MAC) in a table of bounded size, for
//! everything a remote party can make this host do repeatedly: ERROR replies, refusal
//! log lines, proxy-DHCP answers. Sans-IO: callers pass the instant.
//!
//! A key's bucket holds up to `burst` tokens and refills at `per_sec`; each allowed
//! event takes one. Denied events are counted per key, and the next allowed one reports
//! how many were suppressed since (for "N similar lines suppressed" in logs).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How fast a key may act.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Events allowed at once after a quiet period.
    pub burst: u32,
    /// Events per second allowed over time.
    pub per_sec: f64,
}

impl Rate {
    /// `n` events per minute, all of them allowed at once.
    pub fn per_minute(n: u32) -> Rate {
        Rate {
            burst: n.max(1),
            per_sec: f64::from(n.max(1)) / 60.0,
        }
    }
}

/// The answer for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead; `suppressed` events of this key were denied since its last allowed one.
    Allow {
        /// Denied events since the last allowed one.
        suppressed: u64,
    },
    /// Over the rate: drop it (and count it).
    Deny,
}

impl Verdict {
    /// True for [`Verdict::Allow`].
    pub fn allowed(self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

/// Token buckets by key. The table holds at most `max_keys` keys: buckets that have
/// refilled completely are forgotten (they are the same as a new key); when every
/// bucket is still in use, new keys are denied until some refill, so a flood of spoofed
/// sources costs bounded memory and cannot make anyone else's events pass.
#[derive(Debug)]
pub struct Limiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
    /// Last sweep of full buckets: at most one per `sweep_every`, so a full table of
    /// active keys costs one scan per period, not one per event.
    swept: Option<Instant>,
}

/// Shortest time between two sweeps of the table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// A limiter allowing `rate` per key, for at most `max_keys` keys at once.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Limiter {
            rate,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
            swept: None,
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * self.rate.per_sec).min(f64::from(self.rate.burst));
        b.at = now;
    }

    /// Takes a token for `key` at `now`.
    pub fn check(&mut self, key: &K, now: Instant) -> Verdict {
        if let Some(mut b) = self.buckets.get(key).copied() {
            self.refill(&mut b, now);
            let v = if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                let s = b.suppressed;
                b.suppressed = 0;
                Verdict::Allow { suppressed: s }
            } else {
                b.suppressed += 1;
                Verdict::Deny
            };
            self.buckets.insert(key.clone(), b);
            return v;
        }
        if self.buckets.len() >= self.max_keys {
            self.sweep(now);
            if self.buckets.len() >= self.max_keys {
                return Verdict::Deny;
            }
        }
        self.buckets.insert(
            key.clone(),
            Bucket {
                tokens: f64::from(self.rate.burst) - 1.0,
                at: now,
                suppressed: 0,
            },
        );
        Verdict::Allow { suppressed: 0 }
    }

    /// Forgets buckets that are full again, at most once per [`SWEEP_EVERY`] (a pending
    /// suppressed count goes with them: the caller's metric has counted it already).
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        let rate = self.rate;
        self.buckets.retain(|_, b| {
            let dt = now.saturating_duration_since(b.at).as_secs_f64();
            let tokens = (b.tokens + dt * rate.per_sec).min(f64::from(rate.burst));
            tokens < f64::from(rate.burst)
        });
    }
}

/// Budget of log lines a remote party can cause: per key (source address, MAC), and in
/// all, so that many keys (spoofed sources) cannot flood the log either.
#[derive(Debug)]
pub struct LogBudget<K> {
    per_key: Limiter<K>,
    all: Limiter<()>,
}

impl<K: Hash + Eq + Clone> LogBudget<K> {
    /// Lines per key: 20 at once, then one a second; in all: 200 at once, then 20 a
    /// second; for at most 4096 keys at once.
    pub fn new() -> Self {
        LogBudget {
            per_key: Limiter::new(
                Rate {
                    burst: 20,
                    per_sec: 1.0,
                },
                4096,
            ),
            all: Limiter::new(
                Rate {
                    burst: 200,
                    per_sec: 20.0,
                },
                1,
            ),
        }
    }

    /// May a line about `key` be written now? `Allow` says how many of this key's lines
    /// were dropped since its last one.
    pub fn check(&mut self, key: &K, now: Instant) -> Verdict {
        match self.per_key.check(key, now) {
            Verdict::Allow { suppressed } => match self.all.check(&(), now) {
                Verdict::Allow { .. } => Verdict::Allow { suppressed },
                Verdict::Deny => Verdict::Deny,
            },
            Verdict::Deny => Verdict::Deny,
        }
    }
}

impl<K: Hash + Eq + Clone> Default for LogBudget<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut l = Limiter::new(
            Rate {
                burst: 3,
                per_sec: 2.0,
            },
            10,
        );
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(&"a", t0).allowed());
        }
        assert_eq!(l.check(&"a", t0), Verdict::Deny);
        assert_eq!(l.check(&"a", t0), Verdict::Deny);
        // Another key has its own bucket.
        assert!(l.check(&"b", t0).allowed());
        // Half a second refills one token; the two denials are reported with it.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.check(&"a", t1), Verdict::Allow { suppressed: 2 });
        assert_eq!(l.check(&"a", t1), Verdict::Deny);
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.check(&"a", t2).allowed());
        }
        assert_eq!(l.check(&"a", t2), Verdict::Deny);
    }

    #[test]
    fn table_is_bounded_and_full_buckets_are_forgotten() {
        let mut l = Limiter::new(Rate::per_minute(60), 4);
        let t0 = Instant::now();
        for k in 0..4 {
            assert!(l.check(&k, t0).allowed());
        }
        // Four active keys: a fifth is denied, and no memory is spent on it.
        assert_eq!(l.check(&99, t0), Verdict::Deny);
        assert_eq!(l.len(), 4);
        // Once their buckets have refilled, old keys make room.
        let t1 = t0 + Duration::from_secs(2);
        assert!(l.check(&99, t1).allowed());
        assert!(l.len() <= 4);
        // A million spoofed keys still cost four buckets.
        for k in 1000..1_001_000u32 {
            l.check(&k, t1);
        }
        assert!(l.len() <= 4);
    }

    #[test]
    fn per_minute_allows_its_count_at_once() {
        let mut l = Limiter::new(Rate::per_minute(30), 8);
        let t = Instant::now();
        assert_eq!((0..40).filter(|_| l.check(&1, t).allowed()).count(), 30);
    }

    #[test]
    fn log_budget_caps_each_key_and_the_sum() {
        let mut b = LogBudget::new();
        let t = Instant::now();
        assert_eq!((0..30).filter(|_| b.check(&1u32, t).allowed()).count(), 20);
        // 100 other keys: their lines stop at the overall burst of 200.
        let n = (0..100u32)
            .flat_map(|k| (0..5).map(move |_| k + 10))
            .filter(|k| b.check(k, t).allowed())
            .count();
        assert_eq!(n, 180);
    }
}

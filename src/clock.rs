//! Wall-clock time in the store's unit. One place, so commands, heartbeats and the
//! serve gate agree on what "now" is; monotonic deadlines use `Instant` directly.

/// Milliseconds since the Unix epoch (the store's `Millis`).
pub type Millis = i64;

/// Current Unix time in milliseconds: the proposer's timestamp for commands.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

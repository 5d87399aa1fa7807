//! The wall clock, as the wire writes it.

/// Unix milliseconds now: the unit of every `*_at_ms` field on the wire, so every crate stamps
/// and compares them with this one function.
///
/// Reading the clock is the one exception to this crate's "no I/O": it is here because
/// `schemas` is the crate every other one depends on, and a time that goes on the wire should be
/// read the same way everywhere. A clock set before 1970 reads as 0.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_2020_in_milliseconds() {
        // 2020-01-01T00:00:00Z; a seconds clock would read about a thousand times less.
        assert!(now_ms() > 1_577_836_800_000);
    }
}

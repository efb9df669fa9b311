//! Exponential backoff shared by the queue consumers.

use std::time::Duration;

/// The delay before attempt `attempts + 1`: `base · 2^(attempts-1)`, capped at `max`, with up
/// to 25 % jitter taken from `jitter_seed` so that many failures do not retry in lockstep.
pub fn backoff(attempts: u32, base: Duration, max: Duration, jitter_seed: u64) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    let delay = base.saturating_mul(1 << exponent).min(max);
    let jitter_permille = jitter_seed % 250;
    delay + delay * jitter_permille as u32 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        assert_eq!(backoff(1, base, max, 0), Duration::from_millis(100));
        assert_eq!(backoff(3, base, max, 0), Duration::from_millis(400));
        assert_eq!(backoff(30, base, max, 0), max);
        assert!(backoff(1, base, max, 249) < Duration::from_millis(125));
    }
}

//! Rate limits: per user for WebSocket sends (frames are not HTTP requests, so a tower layer
//! would cover only half), per IP for HTTP requests and for authentication.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parlor_core::UserId;

use crate::config::LimitsConfig;

/// One keyed limiter.
pub struct Limiter<K: Hash + Eq + Clone>(DefaultKeyedRateLimiter<K>);

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self(RateLimiter::keyed(
            Quota::per_second(per_second).allow_burst(burst),
        ))
    }

    /// Whether `key` may act now (and counts it).
    pub fn allow(&self, key: &K) -> bool {
        self.check(key).is_ok()
    }

    /// Counts an action of `key` if the limit allows it now; otherwise how long until it will.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.0
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets keys whose buckets are full again, bounding memory.
    pub fn forget_idle(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }
}

/// Every limiter of a gateway.
pub struct Limits {
    pub sends: Limiter<UserId>,
    /// Typing notices: a client sends one every few seconds while typing.
    pub typing: Limiter<UserId>,
    /// Read markers that are written and announced. A WebSocket holds back and coalesces
    /// markers above this rate; each costs a store write and a frame to every member.
    pub reads: Limiter<UserId>,
    /// Delivered markers, the same way: a client sends one per batch of events it receives.
    pub delivered: Limiter<UserId>,
    /// New conversations: each is a store write and, for a group, a row per member.
    pub conversations: Limiter<UserId>,
    pub searches: Limiter<UserId>,
    /// Uploads: each is up to a file's size of disk and, for an image, a decode.
    pub uploads: Limiter<UserId>,
    pub requests: Limiter<IpAddr>,
    pub auth: Limiter<IpAddr>,
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            sends: Limiter::new(
                config.sends_per_second_per_user,
                config.sends_burst_per_user,
            ),
            typing: Limiter::new(
                NonZeroU32::new(2).expect("non-zero"),
                NonZeroU32::new(10).expect("non-zero"),
            ),
            reads: Limiter::new(
                NonZeroU32::new(4).expect("non-zero"),
                NonZeroU32::new(10).expect("non-zero"),
            ),
            delivered: Limiter::new(
                NonZeroU32::new(4).expect("non-zero"),
                NonZeroU32::new(10).expect("non-zero"),
            ),
            conversations: Limiter::new(
                NonZeroU32::new(2).expect("non-zero"),
                NonZeroU32::new(20).expect("non-zero"),
            ),
            searches: Limiter::new(
                config.searches_per_second_per_user,
                config.searches_burst_per_user,
            ),
            uploads: Limiter::new(
                NonZeroU32::new(2).expect("non-zero"),
                NonZeroU32::new(20).expect("non-zero"),
            ),
            requests: Limiter::new(
                config.requests_per_second_per_ip,
                config.requests_burst_per_ip,
            ),
            auth: Limiter::new(config.auth_per_second_per_ip, config.auth_burst_per_ip),
        }
    }

    pub fn forget_idle(&self) {
        self.sends.forget_idle();
        self.typing.forget_idle();
        self.reads.forget_idle();
        self.delivered.forget_idle();
        self.conversations.forget_idle();
        self.searches.forget_idle();
        self.uploads.forget_idle();
        self.requests.forget_idle();
        self.auth.forget_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused() {
        let limiter = Limiter::new(NonZeroU32::new(1).unwrap(), NonZeroU32::new(3).unwrap());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| limiter.allow(&ip)));
        let wait = limiter.check(&ip).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limiter.allow(&other));
    }
}

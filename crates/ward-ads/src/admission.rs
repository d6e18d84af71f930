//! Admission of new ADS streams: a token bucket, so a reconnect storm (every proxy of a
//! stopped replica at once) is taken at a rate the server can sync, and the excess is refused
//! at once with UNAVAILABLE instead of queueing. Envoy retries a refused stream with jittered
//! exponential back-off, which spreads the storm out.
//!
//! A stream's first sync is what costs (about 4 ms of CPU per proxy at 1,000 services; a
//! refusal about 40 µs, a TLS handshake about 330 µs: docs/benchmarks.md), so the limit is
//! on streams, and refusing is cheap next to admitting.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `burst` tokens at most, refilled at `per_second`.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket. `per_second` must be positive and `burst` at least 1.
    pub fn new(per_second: f64, burst: u32, now: Instant) -> Self {
        debug_assert!(per_second > 0.0 && burst >= 1);
        TokenBucket {
            per_second,
            burst: f64::from(burst),
            state: Mutex::new(Bucket {
                tokens: f64::from(burst),
                refilled_at: now,
            }),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&self, now: Instant) -> bool {
        let mut bucket = self.state.lock().expect("token bucket lock");
        let elapsed = now.saturating_duration_since(bucket.refilled_at);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        bucket.refilled_at = now.max(bucket.refilled_at);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the next token, as of `now` (zero if one is there).
    pub fn next_token_in(&self, now: Instant) -> Duration {
        let bucket = self.state.lock().expect("token bucket lock");
        let elapsed = now.saturating_duration_since(bucket.refilled_at);
        let tokens = (bucket.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        if tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - tokens) / self.per_second)
        }
    }

    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_rate() {
        let start = Instant::now();
        let bucket = TokenBucket::new(10.0, 3, start);
        // The burst: three at once, the fourth refused.
        assert!((0..3).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start));
        assert_eq!(bucket.next_token_in(start), Duration::from_millis(100));
        // 50 ms is half a token at 10/s.
        assert!(!bucket.try_take(start + Duration::from_millis(50)));
        assert!(bucket.try_take(start + Duration::from_millis(100)));
        assert!(!bucket.try_take(start + Duration::from_millis(100)));
    }

    #[test]
    fn an_idle_bucket_refills_to_the_burst_and_no_more() {
        let start = Instant::now();
        let bucket = TokenBucket::new(100.0, 5, start);
        assert!((0..5).all(|_| bucket.try_take(start)));
        // An hour idle refills 5 tokens, not 360,000.
        let later = start + Duration::from_secs(3600);
        let admitted = (0..10).filter(|_| bucket.try_take(later)).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn a_clock_read_out_of_order_takes_nothing_back() {
        let start = Instant::now();
        let bucket = TokenBucket::new(1.0, 1, start + Duration::from_secs(1));
        // A caller that read the clock before the bucket was made gets no negative refill.
        assert!(bucket.try_take(start));
        assert!(!bucket.try_take(start));
        assert!(bucket.try_take(start + Duration::from_secs(2)));
    }
}

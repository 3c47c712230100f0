//! A token bucket on the virtual clock: how many new things (connections) may start per
//! second, with a burst allowance. Pure: time comes in as `now`.

use smoltcp::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens at most (the burst).
    capacity: u32,
    /// Time to earn one token; `None`: no limit.
    per_token: Option<Duration>,
    tokens: u32,
    /// Up to when tokens have been credited.
    credited_until: Instant,
}

impl TokenBucket {
    /// `rate` tokens per second (0: unlimited), at most `burst` saved up; starts full.
    pub fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        let per_token = (rate > 0).then(|| Duration::from_micros(1_000_000 / u64::from(rate)));
        TokenBucket {
            capacity: burst.max(1),
            per_token,
            tokens: burst.max(1),
            credited_until: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let Some(per_token) = self.per_token else {
            return true;
        };
        if now > self.credited_until {
            let earned =
                (now - self.credited_until).total_micros() / per_token.total_micros().max(1);
            let room = u64::from(self.capacity - self.tokens);
            if earned >= room {
                self.tokens = self.capacity;
                self.credited_until = now;
            } else {
                self.tokens += earned as u32;
                self.credited_until += per_token * earned as u32;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::from_secs(100);
        let mut bucket = TokenBucket::new(1_000, 10, start);
        assert_eq!((0..20).filter(|_| bucket.take(start)).count(), 10);
        // One token per millisecond from then on, fractions kept.
        let later = start + Duration::from_micros(2_500);
        assert_eq!((0..20).filter(|_| bucket.take(later)).count(), 2);
        let later = start + Duration::from_micros(3_000);
        assert_eq!((0..20).filter(|_| bucket.take(later)).count(), 1);
        // A long pause refills only up to the burst.
        let much_later = start + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| bucket.take(much_later)).count(), 10);
    }

    #[test]
    fn zero_rate_means_no_limit() {
        let now = Instant::from_secs(1);
        let mut bucket = TokenBucket::new(0, 0, now);
        assert!((0..100_000).all(|_| bucket.take(now)));
    }

    #[test]
    fn a_sustained_flood_gets_the_rate_and_no_more() {
        let start = Instant::from_secs(0);
        let mut bucket = TokenBucket::new(5_000, 1_000, start);
        let mut admitted = 0;
        // 50,000 attempts a second for 10 s, one every 20 µs.
        for i in 0..500_000u64 {
            if bucket.take(start + Duration::from_micros(i * 20)) {
                admitted += 1;
            }
        }
        assert!((50_000..=51_001).contains(&admitted), "{admitted}");
    }
}

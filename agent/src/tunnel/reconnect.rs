//! Reconnection timing: exponential backoff with jitter, reset only after a tunnel stayed
//! healthy for a while. Pure: the caller sleeps.

use std::time::Duration;

/// Exponential backoff with "equal jitter": each delay lies between half and all of the
/// current step, and the step doubles up to the maximum. Half the step stays fixed so a
/// fleet of agents never reconnects faster than the floor; the other half spreads them.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    rng: u64,
}

impl Backoff {
    /// A backoff starting at `min`, growing to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let mut seed = [0u8; 8];
        // A failed OS RNG only costs spread between agents, never safety.
        let _ = getrandom::fill(&mut seed);
        Self::with_seed(min, max, u64::from_le_bytes(seed) | 1)
    }

    fn with_seed(min: Duration, max: Duration, seed: u64) -> Self {
        Self {
            min,
            max: max.max(min),
            step: min,
            rng: seed | 1,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            0
        } else {
            self.next_random() % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Back to the first step, after a healthy session.
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for jitter.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn delays_stay_within_half_and_all_of_a_doubling_capped_step(
            min_ms in 1u64..5_000,
            extra_ms in 0u64..120_000,
            seed in any::<u64>(),
            attempts in 1usize..40,
        ) {
            let min = Duration::from_millis(min_ms);
            let max = Duration::from_millis(min_ms + extra_ms);
            let mut backoff = Backoff::with_seed(min, max, seed);
            let mut step = min;
            for _ in 0..attempts {
                let delay = backoff.next_delay();
                prop_assert!(delay >= step / 2, "{delay:?} below half of {step:?}");
                prop_assert!(delay <= step, "{delay:?} above {step:?}");
                prop_assert!(delay <= max);
                step = (step * 2).min(max);
            }
            backoff.reset();
            prop_assert!(backoff.next_delay() <= min);
        }
    }

    #[test]
    fn jitter_spreads_agents_apart() {
        let delays: std::collections::HashSet<_> = (1..50u64)
            .map(|seed| {
                Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(30), seed * 7919)
                    .next_delay()
            })
            .collect();
        assert!(delays.len() > 40);
    }
}

//! A circuit breaker for the producer: after a run of failures it opens and
//! callers skip Redis entirely (failing fast to the spool) until a cool-down
//! has passed; then a single probe call decides whether it closes again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; others keep failing fast until it reports or times out.
    HalfOpen {
        probe_deadline: Instant,
    },
}

#[derive(Debug)]
pub struct CircuitBreaker {
    state: Mutex<State>,
    failures_to_open: u32,
    cooldown: Duration,
}

impl CircuitBreaker {
    pub fn new(failures_to_open: u32, cooldown: Duration) -> Self {
        CircuitBreaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            failures_to_open: failures_to_open.max(1),
            cooldown,
        }
    }

    /// Whether a call may go to Redis now.
    pub fn allow(&self) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until }
            | State::HalfOpen {
                probe_deadline: until,
            } if now >= until => {
                *state = State::HalfOpen {
                    probe_deadline: now + self.cooldown,
                };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    pub fn record_success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    pub fn record_failure(&self) {
        let mut state = self.lock();
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.failures_to_open => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: Instant::now() + self.cooldown,
            },
        };
    }

    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value; a panic elsewhere cannot leave it torn.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_fails_fast() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(60));
        breaker.record_failure();
        breaker.record_failure();
        assert!(breaker.allow(), "two failures keep it closed");
        breaker.record_failure();
        assert!(breaker.is_open());
        assert!(!breaker.allow(), "open: fail fast");
    }

    #[test]
    fn success_resets_the_count() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(60));
        breaker.record_failure();
        breaker.record_success();
        breaker.record_failure();
        assert!(breaker.allow());
    }

    #[test]
    fn after_cooldown_one_probe_goes_through() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(20));
        breaker.record_failure();
        assert!(!breaker.allow());
        std::thread::sleep(Duration::from_millis(30));
        assert!(breaker.allow(), "the probe");
        assert!(!breaker.allow(), "only one probe at a time");
        breaker.record_success();
        assert!(!breaker.is_open());
        assert!(breaker.allow());
    }

    #[test]
    fn a_failed_probe_reopens() {
        let breaker = CircuitBreaker::new(5, Duration::from_millis(20));
        for _ in 0..5 {
            breaker.record_failure();
        }
        std::thread::sleep(Duration::from_millis(30));
        assert!(breaker.allow());
        breaker.record_failure();
        assert!(!breaker.allow());
    }
}

//! Consecutive rise/fall, with keepalived's `retry` in front. Pure: no clock, no IO.
//!
//! A *round* is one probe plus its retries. While a backend is up (or has never finished a
//! round), a failed probe is retried up to `retry` times, `delay_before_retry` apart, and only
//! the last failure counts: this is keepalived's `retry` / `delay_before_retry` (formerly
//! `nb_get_retry`), which its checkers apply only while the real server is up, since retrying a
//! backend already down would only delay nothing. A success ends the round at once.
//!
//! Rounds then feed the counters: `fall` consecutive failed rounds take an up backend down,
//! `rise` consecutive successful rounds bring a down backend up. keepalived's real-server
//! checkers have no rise/fall (it acts on the first counted result); `rise = fall = 1`, the
//! defaults, give exactly that.
//!
//! So with `retry = R` and `fall = F`, an up backend that stops answering goes down after
//! `F` rounds of `R + 1` failed probes each.

use std::time::Duration;

use super::CheckFailure;

/// The counters of [`RiseFall`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive successful rounds to go up; 0 is taken as 1. See [`super::CheckSpec::rise`].
    pub rise: u32,
    /// Consecutive failed rounds to go down; 0 is taken as 1. See [`super::CheckSpec::fall`].
    pub fall: u32,
    /// Retries of a failed probe within a round. See [`super::CheckSpec::retry`].
    pub retry: u32,
}

/// When to probe next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextProbe {
    /// The round is over: wait `delay_loop`.
    Loop,
    /// Retry within the round: wait `delay_before_retry`.
    Retry,
}

/// A change of a backend's state, with the reason to log and show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The new state.
    pub up: bool,
    /// Why, in one line: the counts, and for a fall the last failure.
    pub reason: String,
}

/// What one probe result did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// When to probe next.
    pub next: NextProbe,
    /// Set when the backend changed state.
    pub transition: Option<Transition>,
}

/// The health state of one backend under one check.
#[derive(Debug, Clone)]
pub struct RiseFall {
    thresholds: Thresholds,
    up: bool,
    has_run: bool,
    successes: u32,
    failures: u32,
    retries: u32,
}

impl RiseFall {
    /// Starts down when `alpha` (up only once proven), up otherwise.
    pub fn new(thresholds: Thresholds, alpha: bool) -> Self {
        Self {
            thresholds: Thresholds {
                rise: thresholds.rise.max(1),
                fall: thresholds.fall.max(1),
                retry: thresholds.retry,
            },
            up: !alpha,
            has_run: false,
            successes: 0,
            failures: 0,
            retries: 0,
        }
    }

    /// The current state.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Feeds one probe result.
    pub fn observe(&mut self, result: &Result<Duration, CheckFailure>) -> Step {
        match result {
            Ok(_) => self.success(),
            Err(e) => self.failure(&e.to_string()),
        }
    }

    /// Feeds a successful probe.
    pub fn success(&mut self) -> Step {
        self.has_run = true;
        self.retries = 0;
        self.failures = 0;
        let mut transition = None;
        if !self.up {
            self.successes = self.successes.saturating_add(1);
            if self.successes >= self.thresholds.rise {
                self.up = true;
                self.successes = 0;
                transition = Some(Transition {
                    up: true,
                    reason: format!(
                        "{} consecutive successful check(s) (rise {})",
                        self.thresholds.rise, self.thresholds.rise
                    ),
                });
            }
        }
        Step {
            next: NextProbe::Loop,
            transition,
        }
    }

    /// Feeds a failed probe; `reason` is the probe's one-line failure.
    pub fn failure(&mut self, reason: &str) -> Step {
        if (self.up || !self.has_run) && self.retries < self.thresholds.retry {
            self.retries += 1;
            return Step {
                next: NextProbe::Retry,
                transition: None,
            };
        }
        let retried = std::mem::take(&mut self.retries);
        self.has_run = true;
        self.successes = 0;
        let mut transition = None;
        if self.up {
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.thresholds.fall {
                self.up = false;
                self.failures = 0;
                let retries = if retried > 0 {
                    format!(", each after {retried} retr{}", plural_y(retried))
                } else {
                    String::new()
                };
                transition = Some(Transition {
                    up: false,
                    reason: format!(
                        "{} consecutive failed check(s) (fall {}{retries}), last: {reason}",
                        self.thresholds.fall, self.thresholds.fall
                    ),
                });
            }
        }
        Step {
            next: NextProbe::Loop,
            transition,
        }
    }
}

fn plural_y(n: u32) -> &'static str {
    if n == 1 { "y" } else { "ies" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rf(rise: u32, fall: u32, retry: u32, alpha: bool) -> RiseFall {
        RiseFall::new(Thresholds { rise, fall, retry }, alpha)
    }

    /// Feeds `script` ('+' success, '-' failure) and returns the transitions as "U"/"D" at the
    /// index where they happened, "." elsewhere.
    fn run(s: &mut RiseFall, script: &str) -> String {
        script
            .chars()
            .map(|c| {
                let step = if c == '+' {
                    s.success()
                } else {
                    s.failure("refused")
                };
                match step.transition {
                    Some(t) if t.up => 'U',
                    Some(_) => 'D',
                    None => '.',
                }
            })
            .collect()
    }

    #[test]
    fn flaps_within_thresholds_do_not_transition() {
        let mut s = rf(3, 2, 0, false);
        assert!(s.is_up());
        assert_eq!(run(&mut s, "-+-+-+"), "......");
        assert!(s.is_up());
        assert_eq!(run(&mut s, "--"), ".D");
        assert!(!s.is_up());
        assert_eq!(run(&mut s, "++-++-"), "......");
        assert_eq!(run(&mut s, "+++"), "..U");
        assert!(s.is_up());
        assert_eq!(run(&mut s, "-+--"), "...D");
    }

    #[test]
    fn alpha_starts_down_and_needs_rise() {
        let mut s = rf(2, 1, 0, true);
        assert!(!s.is_up());
        assert_eq!(run(&mut s, "-+-++"), "....U");
        assert!(s.is_up());
    }

    #[test]
    fn not_alpha_starts_up_and_needs_fall() {
        let mut s = rf(1, 3, 0, false);
        assert!(s.is_up());
        assert_eq!(run(&mut s, "++---"), "....D");
        assert_eq!(run(&mut s, "+"), "U");
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut s = rf(0, 0, 0, false);
        assert_eq!(run(&mut s, "-+"), "DU");
    }

    #[test]
    fn retry_delays_the_count_while_up_only() {
        let mut s = rf(1, 1, 2, false);
        let f = s.failure("timeout");
        assert_eq!((f.next, f.transition), (NextProbe::Retry, None));
        assert_eq!(s.failure("timeout").next, NextProbe::Retry);
        // A success mid-round ends the round and resets the retries.
        assert_eq!(s.success().next, NextProbe::Loop);
        assert_eq!(run(&mut s, "--"), "..");
        let last = s.failure("status 503 not in 200-299");
        assert_eq!(last.next, NextProbe::Loop);
        let t = last.transition.expect("went down");
        assert!(!t.up);
        assert_eq!(
            t.reason,
            "1 consecutive failed check(s) (fall 1, each after 2 retries), \
             last: status 503 not in 200-299"
        );
        // Down: failures are counted at once, never retried.
        assert_eq!(s.failure("refused").next, NextProbe::Loop);
        let up = s.success().transition.expect("came up");
        assert_eq!(up.reason, "1 consecutive successful check(s) (rise 1)");
    }

    #[test]
    fn alpha_retries_its_first_round() {
        let mut s = rf(1, 1, 1, true);
        assert_eq!(s.failure("refused").next, NextProbe::Retry);
        assert_eq!(s.failure("refused").next, NextProbe::Loop);
        assert_eq!(s.failure("refused").next, NextProbe::Loop);
        assert!(!s.is_up());
    }

    #[test]
    fn observe_maps_results() {
        let mut s = rf(1, 1, 0, false);
        let down = s.observe(&Err(CheckFailure::Refused));
        assert!(
            down.transition
                .expect("down")
                .reason
                .ends_with("last: connection refused")
        );
        assert!(
            s.observe(&Ok(Duration::from_millis(1)))
                .transition
                .is_some()
        );
    }
}

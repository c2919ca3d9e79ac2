//! Passive health: connection errors the datapath sees in backend replies
//! (HAProxy's `observe layer4`, done in XDP). Pure: samples in, verdicts out.
//!
//! In nat mode every backend reply crosses the LB, so the datapath counts,
//! per backend, the SYNs of new flows and the backend's first answer to each:
//! a SYN-ACK (accepted) or a RST (refused). A SYN with no answer after
//! `syn_timeout` is an error too. `error_limit` consecutive errors (an
//! accepted connection resets the run, as in HAProxy) mark the backend down
//! at once instead of waiting `delay_loop × fall` for the active checks,
//! which then need `rise` passes to bring it back.
//!
//! The counters are read in samples, so the order of the errors and
//! acceptances within one sample is unknown. A sample with any accepted
//! connection breaks the run, whatever errors it also holds: a backend that
//! keeps accepting is not dead. For the same reason a SYN seen before the
//! backend's latest acceptance never counts as unanswered: a backend
//! accepting after it is alive, and the few SYNs of a busy backend whose
//! answer goes uncounted would otherwise all come due at once when its load
//! stops (seen: all three nat backends of `lb-bench-e2e` marked down at the
//! end of every Connection: close run, ~2 % of their SYNs). Under load a
//! few such SYNs land in almost every sample (a backend's TIME_WAIT socket
//! on a reused SNAT port answers the SYN with an ACK, the client resets and
//! retries, and the retry's SYN-ACK is not the first answer), which would
//! otherwise add up to a false down of a busy, healthy backend.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

/// Cumulative datapath counters of one backend (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub syn: u64,
    pub syn_ack: u64,
    pub syn_rst: u64,
}

/// Watches one backend.
#[derive(Debug)]
pub struct Observer {
    error_limit: u32,
    syn_timeout: Duration,
    /// The first sample: counts before it belong to an earlier life of the
    /// backend (before it last came up) and are ignored.
    base: Option<Sample>,
    /// Recent (time, SYNs so far), to know how many SYNs are older than
    /// `syn_timeout`.
    syns: VecDeque<(Instant, u64)>,
    last: Sample,
    last_unanswered: u64,
    consecutive: u64,
    refused: u64,
    timed_out: u64,
}

impl Observer {
    pub fn new(error_limit: u32, syn_timeout: Duration) -> Self {
        Observer {
            error_limit,
            syn_timeout,
            base: None,
            syns: VecDeque::new(),
            last: Sample::default(),
            last_unanswered: 0,
            consecutive: 0,
            refused: 0,
            timed_out: 0,
        }
    }

    /// Feeds the counters read at `now`. Returns why the backend must go
    /// down when the error run reaches `error_limit`.
    pub fn observe(&mut self, now: Instant, raw: Sample) -> Option<String> {
        let base = *self.base.get_or_insert(raw);
        let s = Sample {
            syn: raw.syn.saturating_sub(base.syn),
            syn_ack: raw.syn_ack.saturating_sub(base.syn_ack),
            syn_rst: raw.syn_rst.saturating_sub(base.syn_rst),
        };
        self.syns.push_back((now, s.syn));
        let cutoff = now.checked_sub(self.syn_timeout);
        // SYNs sent before the cutoff should all have an answer by now.
        let old_syns = cutoff
            .and_then(|c| self.syns.iter().rev().find(|(t, _)| *t <= c))
            .map_or(0, |(_, n)| *n);
        if let Some(c) = cutoff {
            while self.syns.len() > 1 && self.syns[1].0 <= c {
                self.syns.pop_front();
            }
        }
        let unanswered = old_syns.saturating_sub(s.syn_ack + s.syn_rst);
        let timeouts = unanswered.saturating_sub(self.last_unanswered);
        self.last_unanswered = self.last_unanswered.max(unanswered);
        let refused = s.syn_rst - self.last.syn_rst;
        let accepted = s.syn_ack - self.last.syn_ack;
        self.last = s;
        if accepted > 0 {
            self.consecutive = 0;
            self.refused = 0;
            self.timed_out = 0;
            // Every SYN seen so far came before this acceptance, so none of
            // them can be part of a run of errors: the gap they leave (SYNs
            // whose answer the datapath did not count) is written off. Left
            // alone, a load's whole gap would show up as timeouts in the
            // samples after it ends, once the SYNs of its last `syn_timeout`
            // count as old and no acceptance follows.
            self.last_unanswered = self
                .last_unanswered
                .max(s.syn.saturating_sub(s.syn_ack + s.syn_rst));
        } else {
            self.consecutive += timeouts + refused;
            self.refused += refused;
            self.timed_out += timeouts;
        }
        if self.consecutive >= u64::from(self.error_limit) {
            let reason = format!(
                "observe layer4: {} consecutive connection errors ({} refused with RST, {} SYNs unanswered after {:?})",
                self.consecutive, self.refused, self.timed_out, self.syn_timeout
            );
            *self = Observer::new(self.error_limit, self.syn_timeout);
            return Some(reason);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn s(syn: u64, syn_ack: u64, syn_rst: u64) -> Sample {
        Sample {
            syn,
            syn_ack,
            syn_rst,
        }
    }

    #[test]
    fn refusals_mark_down_at_the_limit_and_history_before_start_is_ignored() {
        let t0 = Instant::now();
        let mut o = Observer::new(3, Duration::from_secs(2));
        assert_eq!(o.observe(t0, s(100, 50, 50)), None, "baseline");
        assert_eq!(o.observe(at(t0, 250), s(102, 50, 52)), None);
        let r = o
            .observe(at(t0, 500), s(103, 50, 53))
            .expect("third refusal");
        assert!(
            r.contains("3 consecutive") && r.contains("3 refused"),
            "{r}"
        );
    }

    #[test]
    fn an_accepted_connection_resets_the_run() {
        let t0 = Instant::now();
        let mut o = Observer::new(3, Duration::from_secs(2));
        o.observe(t0, s(0, 0, 0));
        assert_eq!(o.observe(at(t0, 250), s(2, 0, 2)), None);
        assert_eq!(o.observe(at(t0, 500), s(3, 1, 2)), None);
        assert_eq!(
            o.observe(at(t0, 750), s(5, 1, 4)),
            None,
            "run restarted at 0"
        );
        assert!(o.observe(at(t0, 1_000), s(6, 1, 5)).is_some());
    }

    #[test]
    fn unanswered_syns_count_only_after_the_timeout() {
        let t0 = Instant::now();
        let mut o = Observer::new(4, Duration::from_secs(2));
        o.observe(t0, s(0, 0, 0));
        assert_eq!(o.observe(at(t0, 500), s(4, 0, 0)), None);
        assert_eq!(o.observe(at(t0, 1_500), s(4, 0, 0)), None, "not yet old");
        let r = o
            .observe(at(t0, 2_600), s(4, 0, 0))
            .expect("4 SYNs timed out");
        assert!(r.contains("4 SYNs unanswered"), "{r}");
    }

    #[test]
    fn a_busy_backend_with_a_few_errors_in_every_sample_stays_up() {
        // 27k connections a second over three backends, with a few SYNs of
        // each sample unanswered or refused: the run never builds up.
        let t0 = Instant::now();
        let mut o = Observer::new(10, Duration::from_secs(2));
        o.observe(t0, s(0, 0, 0));
        for i in 1..=60u64 {
            let syn = i * 9_000;
            assert_eq!(
                o.observe(at(t0, i * 1_000), s(syn, syn - i * 8, i * 3)),
                None,
                "sample {i}"
            );
        }
    }

    #[test]
    fn a_backend_that_stops_accepting_goes_down_once_its_syns_time_out() {
        let t0 = Instant::now();
        let mut o = Observer::new(10, Duration::from_secs(2));
        o.observe(t0, s(0, 0, 0));
        assert_eq!(o.observe(at(t0, 1_000), s(100, 100, 0)), None);
        // It dies: SYNs keep coming, nothing answers.
        assert_eq!(
            o.observe(at(t0, 2_000), s(200, 150, 0)),
            None,
            "accepted some"
        );
        assert_eq!(
            o.observe(at(t0, 3_000), s(300, 150, 0)),
            None,
            "not yet old"
        );
        // The SYNs timing out now were seen by 2 s, no later than its last
        // acceptance: they prove nothing.
        assert_eq!(o.observe(at(t0, 4_000), s(400, 150, 0)), None);
        let r = o
            .observe(at(t0, 5_000), s(500, 150, 0))
            .expect("its SYNs after its last acceptance went unanswered");
        assert!(r.contains("100 SYNs unanswered"), "{r}");
    }

    /// Found by `lb-bench-e2e` (nat, Connection: close): under ~9k
    /// connections a second per backend, ~2 % of the SYNs had no answer
    /// counted, and the backends were all marked down at once when the
    /// load stopped.
    #[test]
    fn the_gap_of_a_busy_backend_does_not_come_due_when_its_load_stops() {
        let t0 = Instant::now();
        let mut o = Observer::new(10, Duration::from_secs(2));
        o.observe(t0, s(0, 0, 0));
        let (mut syn, mut ack) = (0, 0);
        for i in 1..=10u64 {
            syn += 9_000;
            ack += 8_820;
            assert_eq!(o.observe(at(t0, i * 1_000), s(syn, ack, 0)), None);
        }
        for i in 11..=20u64 {
            assert_eq!(
                o.observe(at(t0, i * 1_000), s(syn, ack, 0)),
                None,
                "{} s after the load stopped",
                i - 10
            );
        }
        // It still goes down when new SYNs go unanswered.
        assert_eq!(o.observe(at(t0, 21_000), s(syn + 20, ack, 0)), None);
        let r = o
            .observe(at(t0, 24_000), s(syn + 20, ack, 0))
            .expect("20 new SYNs, no answer");
        assert!(r.contains("20 SYNs unanswered"), "{r}");
    }

    #[test]
    fn answered_syns_are_not_errors() {
        let t0 = Instant::now();
        let mut o = Observer::new(1, Duration::from_secs(1));
        o.observe(t0, s(0, 0, 0));
        for i in 1..20u64 {
            assert_eq!(o.observe(at(t0, i * 300), s(i * 10, i * 10, 0)), None);
        }
    }
}

//! What every probe of one backend measured: a latency histogram and the
//! last successful latency, for `lb status` and the Prometheus histogram.
//!
//! The runner's task writes, scrapes read at any time; plain atomics keep
//! both sides lock-free. The buckets are fixed so the series never churn.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the histogram's buckets, in seconds: from a loopback
/// connect (sub-millisecond) to keepalived's longest usual `connect_timeout`.
pub const BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// No successful probe yet.
const NONE: u64 = u64::MAX;

/// Probe results of one backend since its check started.
#[derive(Debug)]
pub struct ProbeRecord {
    /// Per bucket (not cumulative), plus one past the last bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    failed: AtomicU64,
    sum_ns: AtomicU64,
    last_ok_ns: AtomicU64,
}

impl Default for ProbeRecord {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            failed: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            last_ok_ns: AtomicU64::new(NONE),
        }
    }
}

impl ProbeRecord {
    /// Counts one probe that took `elapsed`, failed ones included: a probe
    /// that timed out shows up in the timeout's bucket.
    pub fn observe(&self, ok: bool, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX - 1);
        self.sum_ns.fetch_add(ns, Relaxed);
        if ok {
            self.last_ok_ns.store(ns, Relaxed);
        } else {
            self.failed.fetch_add(1, Relaxed);
        }
    }

    /// The values as of now. `count` is the sum of the buckets read, so the
    /// `+Inf` bucket always equals the count even while a probe lands.
    pub fn snapshot(&self) -> ProbeSnapshot {
        let mut cumulative = Vec::with_capacity(BUCKETS.len());
        let mut total = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Relaxed);
            if i < BUCKETS.len() {
                cumulative.push(total);
            }
        }
        let last = self.last_ok_ns.load(Relaxed);
        ProbeSnapshot {
            count: total,
            failed: self.failed.load(Relaxed).min(total),
            sum_seconds: Duration::from_nanos(self.sum_ns.load(Relaxed)).as_secs_f64(),
            buckets: cumulative,
            last_ok_latency_seconds: (last != NONE)
                .then(|| Duration::from_nanos(last).as_secs_f64()),
        }
    }
}

/// A [`ProbeRecord`] read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeSnapshot {
    /// Probes made.
    pub count: u64,
    /// Of which failed.
    pub failed: u64,
    /// Time spent in all of them.
    pub sum_seconds: f64,
    /// Cumulative count of probes at or under each bound of [`BUCKETS`].
    pub buckets: Vec<u64>,
    /// Latency of the last successful probe.
    pub last_ok_latency_seconds: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_at_the_count() {
        let r = ProbeRecord::default();
        assert_eq!(r.snapshot().last_ok_latency_seconds, None);
        r.observe(true, Duration::from_micros(300));
        r.observe(true, Duration::from_millis(3));
        r.observe(false, Duration::from_secs(7));
        let s = r.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.failed, 1);
        assert_eq!(s.buckets.len(), BUCKETS.len());
        assert_eq!(s.buckets[0], 1, "0.3 ms is under the first bound");
        assert_eq!(s.buckets[3], 2, "3 ms is under 5 ms");
        assert_eq!(*s.buckets.last().unwrap(), 2, "7 s is over every bound");
        assert!(s.buckets.windows(2).all(|w| w[0] <= w[1]));
        assert!((s.sum_seconds - 7.0033).abs() < 1e-9);
        assert_eq!(s.last_ok_latency_seconds, Some(0.003));
    }

    #[test]
    fn a_failure_does_not_replace_the_last_good_latency() {
        let r = ProbeRecord::default();
        r.observe(true, Duration::from_millis(2));
        r.observe(false, Duration::from_millis(900));
        assert_eq!(r.snapshot().last_ok_latency_seconds, Some(0.002));
    }
}

//! Packet and byte rates from two samples of the datapath's counters.
//!
//! The datapath keeps totals only. Rather than sample in the background
//! (reading active flows walks the whole connection table), the API keeps
//! the counters it read for the previous request and divides the difference
//! by the time between them.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{config::Protocol, daemon::UsageSnapshot};

/// A service (`None`) or one of its backends.
pub type RateKey = (SocketAddr, Protocol, Option<SocketAddr>);

/// Per-second rates over one window.
#[derive(Clone, Debug, PartialEq)]
pub struct Rates {
    /// Time between the two samples.
    pub window: Duration,
    per_second: HashMap<RateKey, (f64, f64)>,
}

impl Rates {
    /// Packets and bytes per second; `None` for a key missing from either
    /// sample or whose counters went backwards (the service was re-added).
    pub fn get(&self, k: &RateKey) -> Option<(f64, f64)> {
        self.per_second.get(k).copied()
    }
}

struct Sample {
    at: Instant,
    totals: HashMap<RateKey, (u64, u64)>,
}

impl Sample {
    fn new(at: Instant, snap: &UsageSnapshot) -> Self {
        let vips = snap
            .vips
            .iter()
            .map(|((v, p), u)| ((*v, *p, None), u.counters));
        let backends = snap
            .backends
            .iter()
            .map(|((v, p, b), u)| ((*v, *p, Some(*b)), u.counters));
        Sample {
            at,
            totals: vips
                .chain(backends)
                .map(|(k, c)| (k, (c.packets, c.bytes)))
                .collect(),
        }
    }
}

#[derive(Default)]
struct State {
    prev: Option<Sample>,
    last: Option<Rates>,
}

/// Remembers the previous sample between requests.
pub struct RateTracker {
    /// Shortest window a rate is computed over; shorter ones are noise.
    min_window: Duration,
    /// A previous sample older than this no longer says anything about now.
    max_window: Duration,
    state: Mutex<State>,
}

impl RateTracker {
    pub fn new(min_window: Duration, max_window: Duration) -> Self {
        RateTracker {
            min_window,
            max_window,
            state: Mutex::default(),
        }
    }

    /// The shortest window: how long to wait for a second sample.
    pub fn min_window(&self) -> Duration {
        self.min_window
    }

    /// Records `snap`, taken at `at`, and returns the rates since the
    /// previous sample. Within `min_window` of that sample the last rates
    /// are returned again (and the sample kept, so the next window is long
    /// enough); `None` when there is no usable previous sample.
    pub fn observe(&self, at: Instant, snap: &UsageSnapshot) -> Option<Rates> {
        // A poisoned lock only means another request panicked mid-update;
        // the worst outcome is one wrong rate, so carry on.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(prev) = state.prev.take() else {
            state.prev = Some(Sample::new(at, snap));
            return None;
        };
        let window = at.saturating_duration_since(prev.at);
        if window < self.min_window {
            state.prev = Some(prev);
            return state.last.clone();
        }
        let new = Sample::new(at, snap);
        if window > self.max_window {
            state.prev = Some(new);
            state.last = None;
            return None;
        }
        let secs = window.as_secs_f64();
        let per_second = new
            .totals
            .iter()
            .filter_map(|(k, (p, b))| {
                let (p0, b0) = prev.totals.get(k)?;
                let dp = p.checked_sub(*p0)?;
                let db = b.checked_sub(*b0)?;
                Some((*k, (dp as f64 / secs, db as f64 / secs)))
            })
            .collect();
        state.prev = Some(new);
        let rates = Rates { window, per_second };
        state.last = Some(rates.clone());
        Some(rates)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_ebpf::abi::Counters;

    use super::*;
    use crate::daemon::Usage;

    fn vip() -> SocketAddr {
        SocketAddr::new(Ipv4Addr::new(198, 18, 0, 100).into(), 80)
    }

    fn snap(packets: u64, bytes: u64) -> UsageSnapshot {
        UsageSnapshot {
            vips: vec![(
                (vip(), Protocol::Tcp),
                Usage {
                    counters: Counters {
                        packets,
                        bytes,
                        ..Counters::default()
                    },
                    active_flows: 0,
                },
            )],
            ..UsageSnapshot::default()
        }
    }

    #[test]
    fn rates_need_two_samples_a_window_apart() {
        let t = RateTracker::new(Duration::from_secs(1), Duration::from_secs(60));
        let t0 = Instant::now();
        let key = (vip(), Protocol::Tcp, None);
        assert_eq!(t.observe(t0, &snap(100, 1000)), None);
        assert_eq!(
            t.observe(t0 + Duration::from_millis(500), &snap(150, 1500)),
            None
        );
        let r = t
            .observe(t0 + Duration::from_secs(2), &snap(300, 3000))
            .expect("a 2 s window");
        assert_eq!(r.window, Duration::from_secs(2));
        assert_eq!(r.get(&key), Some((100.0, 1000.0)));
        // Too soon after: the same rates again.
        let again = t.observe(t0 + Duration::from_millis(2500), &snap(400, 4000));
        assert_eq!(again.as_ref(), Some(&r));
    }

    #[test]
    fn stale_samples_and_counter_resets_give_no_rate() {
        let t = RateTracker::new(Duration::from_secs(1), Duration::from_secs(60));
        let t0 = Instant::now();
        let key = (vip(), Protocol::Tcp, None);
        t.observe(t0, &snap(100, 1000));
        assert_eq!(
            t.observe(t0 + Duration::from_secs(120), &snap(200, 2000)),
            None
        );
        let r = t
            .observe(t0 + Duration::from_secs(121), &snap(5, 50))
            .expect("a 1 s window");
        assert_eq!(r.get(&key), None);
    }
}

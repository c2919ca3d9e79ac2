//! From backend health to the live backend set of one service. Pure: no clock, no IO.
//!
//! Rules, in keepalived's terms:
//! - Weights: a backend's configured weight, replaced by the admin's override when one is set
//!   (`lb weight`); an override of 0 is a drain: the backend stays in the set with weight 0, so
//!   its existing flows finish and it gets no new ones.
//! - `inhibit_on_failure`: a down backend stays in the set with weight 0 (existing flows keep
//!   going) instead of being removed.
//! - `quorum` / `hysteresis`: the service has quorum while the sum of the effective weights of
//!   its up backends is at least `quorum`. Once up, it loses quorum below `quorum - hysteresis`
//!   (or at a sum of 0); once down, it regains it at `quorum + hysteresis`. At first evaluation it
//!   is up iff the sum is at least `quorum + hysteresis`. This is keepalived's
//!   `update_quorum_state`.
//! - `sorry_server`: used while quorum is lost, and then alone: the real backends leave the set
//!   (or stay at weight 0 with `inhibit_on_failure`), as keepalived does. With the default
//!   `quorum = 1` that means "no backend up". Without a sorry server, losing quorum changes
//!   nothing in the set.

use std::collections::HashMap;
use std::net::SocketAddr;

/// One service's backends and failure policy.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Backends and their configured weights, in config order (kept in the live set).
    pub backends: Vec<(SocketAddr, u32)>,
    /// Keep a down backend at weight 0 instead of removing it. Default `false` (keepalived's).
    pub inhibit_on_failure: bool,
    /// Backend used, alone, while the service has no quorum. Default `None`.
    pub sorry_server: Option<SocketAddr>,
    /// Sum of up weights needed for the service to be up. Default 1 (keepalived's).
    pub quorum: u32,
    /// Margin around `quorum` that keeps the service from flapping. Default 0 (keepalived's).
    pub hysteresis: u32,
}

impl ServiceSpec {
    /// A spec for `backends` with every policy at its default.
    pub fn new(backends: Vec<(SocketAddr, u32)>) -> Self {
        Self {
            backends,
            inhibit_on_failure: false,
            sorry_server: None,
            quorum: 1,
            hysteresis: 0,
        }
    }
}

/// What the table builder gets for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSet {
    /// Backends and their weights; weight 0 means "no new flows".
    pub backends: Vec<(SocketAddr, u32)>,
    /// Whether the service has quorum.
    pub quorum_up: bool,
    /// Whether this evaluation changed `quorum_up` (the daemon logs and notifies on it).
    pub quorum_changed: bool,
    /// Whether the sorry server is in use.
    pub sorry: bool,
}

/// One service's spec and the quorum state that hysteresis needs to remember.
#[derive(Debug, Clone)]
pub struct Service {
    spec: ServiceSpec,
    quorum_up: Option<bool>,
}

impl Service {
    /// A service not yet evaluated.
    pub fn new(spec: ServiceSpec) -> Self {
        Self {
            spec,
            quorum_up: None,
        }
    }

    /// The spec.
    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    /// Computes the live set from each backend's health (`true` = up; a backend missing from
    /// `health` counts as down, so the caller seeds it from `alpha`) and the admin weight
    /// overrides, and updates the quorum state.
    pub fn live_set(
        &mut self,
        health: &HashMap<SocketAddr, bool>,
        overrides: &HashMap<SocketAddr, u32>,
    ) -> LiveSet {
        let spec = &self.spec;
        let weight = |addr: &SocketAddr, configured: u32| -> u32 {
            overrides.get(addr).copied().unwrap_or(configured)
        };
        let is_up = |addr: &SocketAddr| health.get(addr).copied().unwrap_or(false);
        let up_sum: u64 = spec
            .backends
            .iter()
            .filter(|(a, _)| is_up(a))
            .map(|(a, w)| u64::from(weight(a, *w)))
            .sum();
        let quorum = u64::from(spec.quorum);
        let hysteresis = u64::from(spec.hysteresis);
        let quorum_up = match self.quorum_up {
            None => up_sum >= quorum + hysteresis,
            Some(true) => !(up_sum == 0 || up_sum < quorum.saturating_sub(hysteresis)),
            Some(false) => up_sum >= quorum + hysteresis,
        };
        let quorum_changed = self.quorum_up.is_some_and(|was| was != quorum_up);
        self.quorum_up = Some(quorum_up);

        let sorry = match spec.sorry_server {
            Some(addr) if !quorum_up => Some(addr),
            _ => None,
        };
        let mut backends = Vec::with_capacity(spec.backends.len() + 1);
        for (addr, configured) in &spec.backends {
            let entry = if sorry.is_some() {
                spec.inhibit_on_failure.then_some(0)
            } else if is_up(addr) {
                Some(weight(addr, *configured))
            } else {
                spec.inhibit_on_failure.then_some(0)
            };
            if let Some(w) = entry {
                backends.push((*addr, w));
            }
        }
        if let Some(addr) = sorry {
            // Weight 1: the sorry server is alone among non-zero weights, so any weight works.
            backends.push((addr, 1));
        }
        LiveSet {
            backends,
            quorum_up,
            quorum_changed,
            sorry: sorry.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, n], 8033))
    }

    fn health(ups: &[(u8, bool)]) -> HashMap<SocketAddr, bool> {
        ups.iter().map(|&(n, up)| (addr(n), up)).collect()
    }

    fn none() -> HashMap<SocketAddr, u32> {
        HashMap::new()
    }

    #[test]
    fn down_backends_are_removed_by_default() {
        let mut s = Service::new(ServiceSpec::new(vec![(addr(1), 10), (addr(2), 20)]));
        let l = s.live_set(&health(&[(1, true), (2, false)]), &none());
        assert_eq!(l.backends, vec![(addr(1), 10)]);
        assert!(l.quorum_up && !l.sorry);
    }

    #[test]
    fn inhibit_on_failure_keeps_down_backends_at_weight_zero() {
        let mut spec = ServiceSpec::new(vec![(addr(1), 10), (addr(2), 20)]);
        spec.inhibit_on_failure = true;
        let mut s = Service::new(spec);
        let l = s.live_set(&health(&[(1, true), (2, false)]), &none());
        assert_eq!(l.backends, vec![(addr(1), 10), (addr(2), 0)]);
    }

    #[test]
    fn missing_health_counts_as_down() {
        let mut s = Service::new(ServiceSpec::new(vec![(addr(1), 1)]));
        let l = s.live_set(&HashMap::new(), &none());
        assert!(l.backends.is_empty());
        assert!(!l.quorum_up);
    }

    #[test]
    fn sorry_server_only_when_no_backend_is_up() {
        let mut spec = ServiceSpec::new(vec![(addr(1), 5), (addr(2), 5)]);
        spec.sorry_server = Some(addr(99));
        let mut s = Service::new(spec);
        let l = s.live_set(&health(&[(1, false), (2, true)]), &none());
        assert_eq!(l.backends, vec![(addr(2), 5)]);
        assert!(!l.sorry);
        let l = s.live_set(&health(&[(1, false), (2, false)]), &none());
        assert_eq!(l.backends, vec![(addr(99), 1)]);
        assert!(l.sorry && !l.quorum_up && l.quorum_changed);
        let l = s.live_set(&health(&[(1, true), (2, false)]), &none());
        assert_eq!(l.backends, vec![(addr(1), 5)]);
        assert!(!l.sorry && l.quorum_up && l.quorum_changed);
    }

    #[test]
    fn sorry_with_inhibit_keeps_real_backends_at_zero() {
        let mut spec = ServiceSpec::new(vec![(addr(1), 5), (addr(2), 5)]);
        spec.sorry_server = Some(addr(99));
        spec.inhibit_on_failure = true;
        spec.quorum = 8;
        let mut s = Service::new(spec);
        // One backend up, weight 5 < quorum 8: the sorry server takes over, and the up backend
        // is held at 0 so its flows finish.
        let l = s.live_set(&health(&[(1, true), (2, false)]), &none());
        assert_eq!(l.backends, vec![(addr(1), 0), (addr(2), 0), (addr(99), 1)]);
    }

    #[test]
    fn quorum_with_hysteresis() {
        // Four backends of weight 1, quorum 3, hysteresis 1: down below 2, up again at 4.
        let mut spec = ServiceSpec::new((1..=4).map(|n| (addr(n), 1)).collect());
        spec.quorum = 3;
        spec.hysteresis = 1;
        spec.sorry_server = Some(addr(99));
        let mut s = Service::new(spec);
        let ups = |k: u8| health(&(1..=4).map(|n| (n, n <= k)).collect::<Vec<_>>());
        let mut trace = Vec::new();
        for k in [4, 3, 2, 1, 2, 3, 4, 3, 2, 1] {
            let l = s.live_set(&ups(k), &none());
            trace.push((k, l.quorum_up, l.sorry));
        }
        assert_eq!(
            trace,
            vec![
                (4, true, false),
                (3, true, false),
                (2, true, false),
                (1, false, true),
                (2, false, true),
                (3, false, true),
                (4, true, false),
                (3, true, false),
                (2, true, false),
                (1, false, true),
            ]
        );
    }

    #[test]
    fn first_evaluation_needs_quorum_plus_hysteresis() {
        let mut spec = ServiceSpec::new((1..=3).map(|n| (addr(n), 1)).collect());
        spec.quorum = 2;
        spec.hysteresis = 1;
        let mut s = Service::new(spec);
        let l = s.live_set(&health(&[(1, true), (2, true), (3, false)]), &none());
        assert!(!l.quorum_up && !l.quorum_changed);
        // No sorry server: losing quorum leaves the up backends serving.
        assert_eq!(l.backends, vec![(addr(1), 1), (addr(2), 1)]);
    }

    #[test]
    fn drain_override_keeps_backend_at_zero_and_out_of_quorum() {
        let mut spec = ServiceSpec::new(vec![(addr(1), 10), (addr(2), 10)]);
        spec.sorry_server = Some(addr(99));
        let mut s = Service::new(spec);
        let drained: HashMap<_, _> = [(addr(1), 0)].into();
        let l = s.live_set(&health(&[(1, true), (2, true)]), &drained);
        assert_eq!(l.backends, vec![(addr(1), 0), (addr(2), 10)]);
        // Drained and the other one down: no capacity left, so the sorry server serves.
        let l = s.live_set(&health(&[(1, true), (2, false)]), &drained);
        assert_eq!(l.backends, vec![(addr(99), 1)]);
        // An override other than 0 replaces the configured weight.
        let heavier: HashMap<_, _> = [(addr(2), 30)].into();
        let l = s.live_set(&health(&[(1, true), (2, true)]), &heavier);
        assert_eq!(l.backends, vec![(addr(1), 10), (addr(2), 30)]);
    }
}

//! Who is to blame for each failed request: the pure core of the chaos run.
//!
//! Input is what the run recorded (every request, every connection a
//! backend accepted, every event with its time) and the detection bounds
//! the config implies. A failure is excused only by a fault that explains
//! it: the backend that took the connection was faulty and not yet
//! detectable, a killed backend not yet detectable, a master change, or no
//! healthy backend at all. Everything else is the load balancer's.

use std::{collections::HashMap, fmt::Write as _, time::Duration};

use super::backend::{Accept, Mode};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Refused,
    Reset,
    Timeout,
    /// Closed without an answer.
    Closed,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered by backend `n`.
    Served(usize),
    Failed(Failure),
}

/// One client request; times since the run's start.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub start: Duration,
    pub end: Duration,
    /// The client's port, once connected.
    pub port: Option<u16>,
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Backend `n` switched to a mode.
    Backend(usize, Mode),
    /// The master LB node was SIGKILLed.
    MasterKill,
    /// The killed node was started again (it preempts: higher priority).
    MasterStart,
    /// SIGHUP to both nodes with a valid (`true`) or an invalid config.
    Reload(bool),
}

#[derive(Clone, Copy, Debug)]
pub struct Timed {
    pub at: Duration,
    pub event: Event,
}

/// What the config promises.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// A faulty backend is out of the table this long after its fault
    /// began, at most.
    pub detect: Duration,
    /// A backend back up is in the table this long after, at most.
    pub rise: Duration,
    /// Traffic is back on the other node this long after a master is
    /// killed or returns, at most.
    pub failover: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// A healthy backend accepted the connection and the request then timed
    /// out: the LB delivered it (load on the machine running the lab).
    HealthyBackendTimeout,
    /// A hung, resetting or killed backend, within its detection bound.
    BackendBeforeDetection,
    /// Within the failover bound of a master kill ...
    MasterKilled,
    /// ... or of its return (it preempts the backup).
    MasterReturned,
    /// No backend was healthy.
    NoHealthyBackend,
    /// None of the above: the LB failed while a healthy backend existed.
    Lb,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::HealthyBackendTimeout,
        Class::BackendBeforeDetection,
        Class::MasterKilled,
        Class::MasterReturned,
        Class::NoHealthyBackend,
        Class::Lb,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Class::HealthyBackendTimeout => "healthy backend reached, then timed out (host load)",
            Class::BackendBeforeDetection => "faulty backend, before detection bound",
            Class::MasterKilled => "failover window: master LB killed",
            Class::MasterReturned => "failover window: master LB back (preempts)",
            Class::NoHealthyBackend => "no healthy backend existed",
            Class::Lb => "LB, while a healthy backend existed (must be 0)",
        }
    }
}

/// Mode history of each backend: (since, mode), in time order, starting Up
/// at 0.
struct Modes(Vec<Vec<(Duration, Mode)>>);

impl Modes {
    fn new(backends: usize, events: &[Timed]) -> Modes {
        let mut m = vec![vec![(Duration::ZERO, Mode::Up)]; backends];
        for e in events {
            if let Event::Backend(i, mode) = e.event {
                m[i].push((e.at, mode));
            }
        }
        Modes(m)
    }

    /// The mode of backend `i` at `t` and since when.
    fn at(&self, i: usize, t: Duration) -> (Duration, Mode) {
        self.0[i]
            .iter()
            .rev()
            .find(|(since, _)| *since <= t)
            .copied()
            .unwrap_or((Duration::ZERO, Mode::Up))
    }

    /// Up, and long enough to be in the table (up from the start counts:
    /// backends start up until checks fail).
    fn healthy(&self, i: usize, t: Duration, b: &Bounds) -> bool {
        let (since, mode) = self.at(i, t);
        mode == Mode::Up && (since.is_zero() || t.saturating_sub(since) >= b.rise)
    }

    /// Some backend was in a fault matching `kinds` that began within the
    /// detection bound before some instant of [from, to].
    fn fault_window(&self, from: Duration, to: Duration, kinds: &[Mode], b: &Bounds) -> bool {
        self.0.iter().any(|h| {
            h.iter().any(|(since, mode)| {
                kinds.contains(mode) && *since <= to && since.saturating_add(b.detect) >= from
            })
        })
    }
}

/// The failover class of a request overlapping a master change's bound.
fn failover_window(events: &[Timed], from: Duration, to: Duration, b: &Bounds) -> Option<Class> {
    events.iter().rev().find_map(|e| {
        let class = match e.event {
            Event::MasterKill => Class::MasterKilled,
            Event::MasterStart => Class::MasterReturned,
            _ => return None,
        };
        (e.at <= to && e.at.saturating_add(b.failover) >= from).then_some(class)
    })
}

/// The class of every failed request, in request order.
pub fn classify(
    requests: &[Request],
    accepts: &[Accept],
    events: &[Timed],
    backends: usize,
    bounds: &Bounds,
) -> Vec<(Request, Class)> {
    let modes = Modes::new(backends, events);
    let mut by_port: HashMap<u16, Vec<&Accept>> = HashMap::new();
    for a in accepts {
        by_port.entry(a.peer.port()).or_default().push(a);
    }
    // Accept and connect are timed by different threads.
    let slack = Duration::from_millis(50);
    requests
        .iter()
        .filter_map(|r| {
            let Outcome::Failed(failure) = r.outcome else {
                return None;
            };
            // A refused connect was answered by a RST to its SYN: nothing
            // accepted it. An accept on its port within the slack is the
            // client's next connection reusing the port.
            let taken = r
                .port
                .filter(|_| failure != Failure::Refused)
                .and_then(|p| {
                    by_port
                        .get(&p)?
                        .iter()
                        .find(|a| a.at + slack >= r.start && a.at <= r.end + slack)
                });
            let failover = failover_window(events, r.start, r.end, bounds);
            let class = match taken {
                Some(a) => {
                    let (since, mode) = modes.at(a.backend, a.at);
                    if mode != Mode::Up && a.at.saturating_sub(since) <= bounds.detect {
                        Class::BackendBeforeDetection
                    } else if let Some(c) = failover {
                        c
                    } else if mode == Mode::Up && failure == Failure::Timeout {
                        Class::HealthyBackendTimeout
                    } else {
                        // A faulty backend past its bound, or a healthy one
                        // that reset or closed early: the packets went
                        // where they should not have.
                        Class::Lb
                    }
                }
                None if !(0..backends).any(|i| modes.healthy(i, r.start, bounds)) => {
                    Class::NoHealthyBackend
                }
                None if modes.fault_window(r.start, r.end, &[Mode::Down], bounds) => {
                    Class::BackendBeforeDetection
                }
                None => failover.unwrap_or(Class::Lb),
            };
            Some((*r, class))
        })
        .collect()
}

/// How far after a master change the gap is looked for.
const GAP_HORIZON: Duration = Duration::from_secs(10);

/// For each master kill or return: the longest time without an answered
/// request in the [`GAP_HORIZON`] after it (what clients see of it), and
/// how long after the event that gap began.
pub fn failover_gaps(requests: &[Request], events: &[Timed]) -> Vec<(Event, Duration, Duration)> {
    events
        .iter()
        .filter(|e| matches!(e.event, Event::MasterKill | Event::MasterStart))
        .map(|e| {
            let horizon = e.at + GAP_HORIZON;
            let mut answers: Vec<Duration> = requests
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Served(_)))
                .map(|r| r.end)
                .filter(|t| *t >= e.at && *t <= horizon)
                .collect();
            answers.sort();
            let (gap, from) = std::iter::once(e.at)
                .chain(answers.iter().copied())
                .chain(std::iter::once(horizon))
                .collect::<Vec<_>>()
                .windows(2)
                .map(|w| (w[1] - w[0], w[0] - e.at))
                .max()
                .unwrap_or((GAP_HORIZON, Duration::ZERO));
            (e.event, gap, from)
        })
        .collect()
}

/// The run's summary: one table.
pub struct Report {
    pub duration: Duration,
    /// The backend that flaps throughout (its downs are counted apart).
    pub flapper: usize,
    pub events: Vec<Timed>,
    pub requests: usize,
    pub served: usize,
    pub failed: Vec<(Request, Class)>,
    pub gaps: Vec<(Event, Duration, Duration)>,
}

impl Report {
    pub fn count(&self, c: Class) -> usize {
        self.failed.iter().filter(|(_, k)| *k == c).count()
    }

    /// "N" or "N (refused a, timeout b, ...)".
    fn count_by_kind(&self, c: Class) -> String {
        let mut kinds: Vec<(Failure, usize)> = Vec::new();
        for (r, k) in &self.failed {
            if let (true, Outcome::Failed(f)) = (*k == c, r.outcome) {
                match kinds.iter_mut().find(|(g, _)| *g == f) {
                    Some((_, n)) => *n += 1,
                    None => kinds.push((f, 1)),
                }
            }
        }
        let n = self.count(c);
        if kinds.is_empty() {
            return n.to_string();
        }
        let parts: Vec<String> = kinds
            .iter()
            .map(|(f, n)| format!("{} {n}", format!("{f:?}").to_lowercase()))
            .collect();
        format!("{n} ({})", parts.join(", "))
    }

    fn events_of(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.events.iter().filter(|e| f(&e.event)).count()
    }

    /// The summary table (markdown), and the LB-attributed failures below
    /// it if any.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            (
                "duration".into(),
                format!("{:.0} s", self.duration.as_secs_f64()),
            ),
            (
                "events: backend killed / flapped down / hung / resetting".into(),
                format!(
                    "{} / {} / {} / {}",
                    self.events_of(
                        |e| matches!(e, Event::Backend(i, Mode::Down) if *i != self.flapper)
                    ),
                    self.events_of(
                        |e| matches!(e, Event::Backend(i, Mode::Down) if *i == self.flapper)
                    ),
                    self.events_of(|e| matches!(e, Event::Backend(_, Mode::Hang))),
                    self.events_of(|e| matches!(e, Event::Backend(_, Mode::Reset))),
                ),
            ),
            (
                "events: master LB killed / returned".into(),
                format!(
                    "{} / {}",
                    self.events_of(|e| *e == Event::MasterKill),
                    self.events_of(|e| *e == Event::MasterStart)
                ),
            ),
            (
                "events: reloads valid / invalid".into(),
                format!(
                    "{} / {}",
                    self.events_of(|e| *e == Event::Reload(true)),
                    self.events_of(|e| *e == Event::Reload(false))
                ),
            ),
            (
                "failover: longest time without an answer after kill / return".into(),
                self.gaps
                    .iter()
                    .map(|(e, g, from)| {
                        let g = format!(
                            "{:.2} s (from +{:.1} s)",
                            g.as_secs_f64(),
                            from.as_secs_f64()
                        );
                        match e {
                            Event::MasterKill => format!("kill {g}"),
                            _ => format!("return {g}"),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("requests".into(), self.requests.to_string()),
            ("answered".into(), self.served.to_string()),
            ("failed".into(), self.failed.len().to_string()),
        ];
        for c in Class::ALL {
            rows.push((format!("failed: {}", c.label()), self.count_by_kind(c)));
        }
        let mut out = String::from("| chaos run | count |\n|---|---:|\n");
        for (k, v) in rows {
            let _ = writeln!(out, "| {k} | {v} |");
        }
        for (r, _) in self.failed.iter().filter(|(_, c)| *c == Class::Lb).take(10) {
            let _ = writeln!(
                out,
                "LB failure: request at {:.3} s to {:.3} s, port {:?}: {:?}",
                r.start.as_secs_f64(),
                r.end.as_secs_f64(),
                r.port,
                r.outcome
            );
        }
        out
    }
}

impl Report {
    /// Every event with its time since the start of the load.
    pub fn timeline(&self) -> String {
        self.events
            .iter()
            .map(|e| format!("  {:>7.3} s  {:?}\n", e.at.as_secs_f64(), e.event))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    const S: Duration = Duration::from_secs(1);
    const BOUNDS: Bounds = Bounds {
        detect: Duration::from_secs(4),
        rise: Duration::from_secs(3),
        failover: Duration::from_secs(6),
    };

    fn failed(start: u64, port: Option<u16>, f: Failure) -> Request {
        Request {
            start: S * start as u32,
            end: S * start as u32 + S / 2,
            port,
            outcome: Outcome::Failed(f),
        }
    }

    fn accept(backend: usize, port: u16, at: u64) -> Accept {
        Accept {
            backend,
            peer: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), port),
            at: S * at as u32,
        }
    }

    fn at(secs: u64, event: Event) -> Timed {
        Timed {
            at: S * secs as u32,
            event,
        }
    }

    fn classes(reqs: &[Request], accepts: &[Accept], events: &[Timed]) -> Vec<Class> {
        classify(reqs, accepts, events, 2, &BOUNDS)
            .into_iter()
            .map(|(_, c)| c)
            .collect()
    }

    #[test]
    fn a_hung_backend_is_excused_until_its_detection_bound_only() {
        let events = [at(10, Event::Backend(0, Mode::Hang))];
        let reqs = [
            failed(12, Some(1000), Failure::Timeout),
            failed(20, Some(1001), Failure::Timeout),
        ];
        let accepts = [accept(0, 1000, 12), accept(0, 1001, 20)];
        assert_eq!(
            classes(&reqs, &accepts, &events),
            [Class::BackendBeforeDetection, Class::Lb]
        );
    }

    #[test]
    fn refusals_are_excused_near_a_kill_and_nowhere_else() {
        let events = [
            at(10, Event::Backend(0, Mode::Down)),
            at(30, Event::Backend(0, Mode::Up)),
        ];
        let reqs = [
            failed(11, None, Failure::Refused),
            failed(20, None, Failure::Refused),
            failed(40, None, Failure::Refused),
        ];
        assert_eq!(
            classes(&reqs, &[], &events),
            [Class::BackendBeforeDetection, Class::Lb, Class::Lb]
        );
    }

    #[test]
    fn a_refused_connect_is_not_the_accept_of_its_ports_next_connection() {
        let events = [at(10, Event::Backend(0, Mode::Down))];
        // Refused by the dead backend; the port's next connect, right after,
        // reached a healthy one.
        let reqs = [failed(11, Some(1000), Failure::Refused)];
        let accepts = [accept(1, 1000, 11)];
        assert_eq!(
            classes(&reqs, &accepts, &events),
            [Class::BackendBeforeDetection]
        );
    }

    #[test]
    fn a_healthy_backend_that_resets_means_the_lb_sent_packets_elsewhere() {
        let reqs = [
            failed(5, Some(1000), Failure::Reset),
            failed(6, Some(1001), Failure::Timeout),
        ];
        let accepts = [accept(1, 1000, 5), accept(1, 1001, 6)];
        assert_eq!(
            classes(&reqs, &accepts, &[]),
            [Class::Lb, Class::HealthyBackendTimeout]
        );
    }

    #[test]
    fn failover_and_outage_windows() {
        let events = [
            at(10, Event::MasterKill),
            at(30, Event::Backend(0, Mode::Down)),
            at(30, Event::Backend(1, Mode::Down)),
            at(40, Event::Backend(0, Mode::Up)),
        ];
        let reqs = [
            failed(12, None, Failure::Timeout),
            failed(20, None, Failure::Timeout),
            failed(38, None, Failure::Refused),
            // Back up, not yet risen into the table.
            failed(41, None, Failure::Timeout),
            failed(45, None, Failure::Timeout),
        ];
        assert_eq!(
            classes(&reqs, &[], &events),
            [
                Class::MasterKilled,
                Class::Lb,
                Class::NoHealthyBackend,
                Class::NoHealthyBackend,
                Class::Lb
            ]
        );
    }
}

//! The VRRP election as a sans-IO state machine: the caller feeds events with
//! the current time and carries out the returned actions; the next deadline
//! comes from [`Instance::poll_timeout`].
//!
//! The rules are keepalived 2.2.7's, because a mixed pair must behave like
//! two keepalived nodes. Where that is easy to get wrong:
//! - a preempting backup does not take over on the first lower-priority
//!   advert; it ignores such adverts and lets its master-down timer expire;
//! - a master answers a priority-0 or lower-priority advert with an advert;
//! - v2 skew is `(256 - priority) / 256` s whatever `advert_int` is (RFC 3768),
//!   v3 skew is `(256 - priority) * master_adver_int / 256` (RFC 5798), both
//!   truncated to whole microseconds as keepalived does;
//! - two address owners both drop to 254, so one of them yields.

use std::cmp::Ordering;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::config::{InstanceConfig, PRIORITY_OWNER};
use super::packet::Version;

/// keepalived's `down_timer_adverts` default: adverts missed before takeover.
const DOWN_TIMER_ADVERTS: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Initialize,
    Backup,
    Master,
    Fault,
}

/// The state word a `notify` script receives, as keepalived spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyState {
    Master,
    Backup,
    Fault,
    Stop,
}

impl NotifyState {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyState::Master => "MASTER",
            NotifyState::Backup => "BACKUP",
            NotifyState::Fault => "FAULT",
            NotifyState::Stop => "STOP",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackKind {
    Interface,
    Script,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Startup,
    /// An advertisement that passed every check of `packet`.
    Advert {
        src: Ipv4Addr,
        priority: u8,
        advert_int: Duration,
    },
    /// The deadline from `poll_timeout` has passed.
    Timeout,
    Shutdown,
    /// A tracked object changed. Events before `Startup` set the initial
    /// state; objects start up.
    Track {
        kind: TrackKind,
        name: String,
        up: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    SendAdvert {
        priority: u8,
    },
    AddVips,
    RemoveVips,
    /// Send `repeat` gratuitous ARPs for every VIP.
    SendGarp {
        repeat: u32,
    },
    Notify {
        state: NotifyState,
        priority: u8,
    },
}

#[derive(Clone, Debug)]
struct Tracker {
    kind: TrackKind,
    name: String,
    weight: i32,
    up: bool,
}

#[derive(Clone, Debug)]
pub struct Instance {
    version: Version,
    advert_int: Duration,
    nopreempt: bool,
    preempt_delay: Duration,
    garp_delay: Duration,
    garp_repeat: u32,
    /// Our address in tie-breaks: `unicast_src_ip` or the interface's primary.
    local_addr: Ipv4Addr,
    base_priority: u8,
    effective_priority: u8,
    trackers: Vec<Tracker>,
    state: State,
    master_adver_int: Duration,
    /// Backup: master down. Master: next advert.
    deadline: Option<Instant>,
    garp_deadline: Option<Instant>,
    preempt_until: Option<Instant>,
    master: Option<(Ipv4Addr, u8)>,
}

impl Instance {
    pub fn new(config: &InstanceConfig, local_addr: Ipv4Addr) -> Self {
        let mut trackers: Vec<Tracker> = config
            .track_interface
            .iter()
            .map(|t| (TrackKind::Interface, t))
            .chain(config.track_script.iter().map(|t| (TrackKind::Script, t)))
            .map(|(kind, t)| Tracker {
                kind,
                name: t.name.clone(),
                weight: t.weight,
                up: true,
            })
            .collect();
        // As in keepalived, the instance's own interface going down is a
        // fault unless the config tracks it with a weight of its own.
        if !trackers
            .iter()
            .any(|t| t.kind == TrackKind::Interface && t.name == config.interface)
        {
            trackers.push(Tracker {
                kind: TrackKind::Interface,
                name: config.interface.clone(),
                weight: 0,
                up: true,
            });
        }
        let mut instance = Instance {
            version: config.version,
            advert_int: config.advert_int,
            nopreempt: config.nopreempt,
            preempt_delay: config.preempt_delay,
            garp_delay: config.garp_master_delay,
            garp_repeat: config.garp_master_repeat,
            local_addr,
            base_priority: config.priority,
            effective_priority: config.priority,
            trackers,
            state: State::Initialize,
            master_adver_int: config.advert_int,
            deadline: None,
            garp_deadline: None,
            preempt_until: None,
            master: None,
        };
        instance.effective_priority = instance.compute_priority();
        instance
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn effective_priority(&self) -> u8 {
        self.effective_priority
    }

    /// The last master we accepted adverts from, with its priority.
    pub fn master(&self) -> Option<(Ipv4Addr, u8)> {
        self.master
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.deadline, self.garp_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Startup => self.startup(now, &mut out),
            Event::Advert {
                src,
                priority,
                advert_int,
            } => match self.state {
                State::Backup => self.backup_rx(src, priority, advert_int, now),
                State::Master => self.master_rx(src, priority, advert_int, now, &mut out),
                State::Initialize | State::Fault => {}
            },
            Event::Timeout => self.timeout(now, &mut out),
            Event::Shutdown => self.shutdown(&mut out),
            Event::Track { kind, name, up } => self.track(kind, &name, up, now, &mut out),
        }
        out
    }

    fn startup(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.state != State::Initialize {
            return;
        }
        if self.base_priority != PRIORITY_OWNER || self.faulted() {
            // A predecessor that crashed as master may have left the VIPs
            // behind; a node that is not master must not answer for them.
            out.push(Action::RemoveVips);
        }
        if self.faulted() {
            self.state = State::Fault;
            self.notify(NotifyState::Fault, out);
        } else {
            self.come_up(now, out);
        }
    }

    /// Leaving Initialize or Fault: the owner takes over at once, anyone else
    /// listens for a full master-down interval first.
    fn come_up(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.master_adver_int = self.advert_int;
        if self.base_priority == PRIORITY_OWNER {
            self.become_master(now, out);
        } else {
            self.state = State::Backup;
            self.preempt_until = None;
            self.deadline = Some(now + self.master_down());
            self.notify(NotifyState::Backup, out);
        }
    }

    fn become_master(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.state = State::Master;
        self.master_adver_int = self.advert_int;
        self.master = None;
        // The advert goes first so that the old master drops the VIPs before
        // our GARPs move them.
        out.push(Action::SendAdvert {
            priority: self.effective_priority,
        });
        out.push(Action::AddVips);
        out.push(Action::SendGarp {
            repeat: self.garp_repeat,
        });
        self.notify(NotifyState::Master, out);
        self.deadline = Some(now + self.advert_int);
        self.garp_deadline = (!self.garp_delay.is_zero()).then(|| now + self.garp_delay);
    }

    fn leave_master(&mut self, to: State, out: &mut Vec<Action>) {
        if to == State::Fault {
            out.push(Action::SendAdvert { priority: 0 });
        }
        out.push(Action::RemoveVips);
        self.garp_deadline = None;
        self.state = to;
    }

    fn backup_rx(&mut self, src: Ipv4Addr, priority: u8, advert_int: Duration, now: Instant) {
        if priority == 0 {
            self.deadline = Some(now + self.skew());
            return;
        }
        let preempt_pending =
            !self.preempt_delay.is_zero() && self.preempt_until.is_none_or(|until| until > now);
        if !(self.nopreempt || priority >= self.effective_priority || preempt_pending) {
            // A lower-priority master: keep the timer running so that we
            // take over when it expires.
            return;
        }
        if self.version == Version::V3 {
            self.master_adver_int = advert_int;
        }
        self.deadline = Some(now + self.master_down());
        self.master = Some((src, priority));
        if !self.preempt_delay.is_zero() {
            if priority >= self.effective_priority {
                self.preempt_until = None;
            } else if self.preempt_until.is_none() {
                self.preempt_until = Some(now + self.preempt_delay);
            }
        }
    }

    fn master_rx(
        &mut self,
        src: Ipv4Addr,
        priority: u8,
        advert_int: Duration,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if priority == 0 {
            // The other side is leaving: confirm quickly that we are here.
            self.send_advert(now, out);
            return;
        }
        let addr = src.cmp(&self.local_addr);
        if priority == self.effective_priority {
            if addr == Ordering::Equal {
                tracing::warn!(%src, "equal priority advert from our own address");
                return;
            }
            if priority == PRIORITY_OWNER {
                tracing::warn!(%src, "two address owners on one VRID: lowering ours to 254");
                self.base_priority = PRIORITY_OWNER - 1;
                self.effective_priority = self.compute_priority();
            }
        }
        let theirs_wins = match priority.cmp(&self.effective_priority) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => addr == Ordering::Greater,
        };
        if !theirs_wins {
            // Force a new election, so that the lower-priority node sees us.
            self.send_advert(now, out);
            return;
        }
        if self.version == Version::V3 {
            self.master_adver_int = advert_int;
        }
        self.leave_master(State::Backup, out);
        self.notify(NotifyState::Backup, out);
        self.master = Some((src, priority));
        self.preempt_until = None;
        self.deadline = Some(now + self.master_down());
    }

    fn send_advert(&mut self, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::SendAdvert {
            priority: self.effective_priority,
        });
        self.deadline = Some(now + self.advert_int);
    }

    fn timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.deadline.is_some_and(|d| d <= now) {
            match self.state {
                State::Backup => self.become_master(now, out),
                State::Master => self.send_advert(now, out),
                State::Initialize | State::Fault => self.deadline = None,
            }
        }
        if self.garp_deadline.is_some_and(|d| d <= now) {
            self.garp_deadline = None;
            if self.state == State::Master {
                out.push(Action::SendGarp {
                    repeat: self.garp_repeat,
                });
            }
        }
    }

    fn shutdown(&mut self, out: &mut Vec<Action>) {
        match self.state {
            State::Initialize => return,
            State::Master => {
                // Priority 0 lets the backup take over after skew time instead
                // of a whole master-down interval.
                out.push(Action::SendAdvert { priority: 0 });
                self.leave_master(State::Initialize, out);
            }
            State::Backup | State::Fault => {}
        }
        self.state = State::Initialize;
        self.deadline = None;
        self.garp_deadline = None;
        self.notify(NotifyState::Stop, out);
    }

    fn track(
        &mut self,
        kind: TrackKind,
        name: &str,
        up: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(t) = self
            .trackers
            .iter_mut()
            .find(|t| t.kind == kind && t.name == name)
        else {
            return;
        };
        if t.up == up {
            return;
        }
        t.up = up;
        if t.weight != 0 {
            self.reprioritise();
            return;
        }
        match (self.state, self.faulted()) {
            (State::Backup | State::Master, true) => self.go_fault(out),
            (State::Fault, false) => self.come_up(now, out),
            _ => {}
        }
    }

    fn go_fault(&mut self, out: &mut Vec<Action>) {
        if self.state == State::Master {
            self.leave_master(State::Fault, out);
        }
        self.state = State::Fault;
        self.deadline = None;
        self.preempt_until = None;
        self.notify(NotifyState::Fault, out);
    }

    /// A new effective priority changes a backup's skew: its running
    /// master-down timer moves by the difference, as in keepalived. A master
    /// announces the change with its next regular advert.
    fn reprioritise(&mut self) {
        let old_down = self.master_down();
        self.effective_priority = self.compute_priority();
        let new_down = self.master_down();
        if self.state == State::Backup {
            self.deadline = self.deadline.map(|d| {
                if new_down >= old_down {
                    d + (new_down - old_down)
                } else {
                    d - (old_down - new_down)
                }
            });
        }
    }

    fn compute_priority(&self) -> u8 {
        if self.base_priority == PRIORITY_OWNER {
            return PRIORITY_OWNER;
        }
        let adjust: i64 = self
            .trackers
            .iter()
            .filter(|t| (t.weight > 0 && t.up) || (t.weight < 0 && !t.up))
            .map(|t| i64::from(t.weight))
            .sum();
        let total =
            (i64::from(self.base_priority) + adjust).clamp(1, i64::from(PRIORITY_OWNER - 1));
        u8::try_from(total).unwrap_or(PRIORITY_OWNER - 1)
    }

    fn faulted(&self) -> bool {
        self.trackers.iter().any(|t| t.weight == 0 && !t.up)
    }

    fn skew(&self) -> Duration {
        let weight = u64::from(256 - u16::from(self.effective_priority));
        match self.version {
            Version::V2 => Duration::from_micros(weight * 1_000_000 / 256),
            Version::V3 => {
                // keepalived computes in µs from whole centiseconds:
                // (256 - p) * cs * 10000 / 256 = (256 - p) * cs * 625 / 16.
                let cs = (self.master_adver_int.as_millis() / 10) as u64;
                Duration::from_micros(weight * cs * 625 / 16)
            }
        }
    }

    fn master_down(&self) -> Duration {
        self.master_adver_int * DOWN_TIMER_ADVERTS + self.skew()
    }

    fn notify(&self, state: NotifyState, out: &mut Vec<Action>) {
        out.push(Action::Notify {
            state,
            priority: self.effective_priority,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vrrp::config::{Track, Vip};
    use Action::*;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const LOWER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const HIGHER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

    fn config(priority: u8) -> InstanceConfig {
        InstanceConfig::new(
            "VI_1",
            "eth0",
            51,
            priority,
            vec![Vip {
                addr: Ipv4Addr::new(198, 18, 0, 100),
                prefix_len: 32,
            }],
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn advert(src: Ipv4Addr, priority: u8) -> Event {
        Event::Advert {
            src,
            priority,
            advert_int: Duration::from_secs(1),
        }
    }

    /// Runs a timeline: scripted events at their offsets, and a `Timeout`
    /// whenever `poll_timeout` falls due before the next one, up to `end`.
    /// Returns every action with the offset it happened at.
    fn run(
        inst: &mut Instance,
        script: Vec<(Duration, Event)>,
        end: Duration,
    ) -> Vec<(Duration, Action)> {
        let t0 = Instant::now();
        let mut log = Vec::new();
        let fire_until = |inst: &mut Instance, limit: Duration, log: &mut Vec<_>| {
            while let Some(d) = inst.poll_timeout().filter(|d| *d <= t0 + limit) {
                for a in inst.handle(Event::Timeout, d) {
                    log.push((d - t0, a));
                }
            }
        };
        for (at, ev) in script {
            fire_until(inst, at, &mut log);
            for a in inst.handle(ev, t0 + at) {
                log.push((at, a));
            }
        }
        fire_until(inst, end, &mut log);
        log
    }

    fn adverts_every_second(
        src: Ipv4Addr,
        priority: u8,
        from_ms: u64,
        count: u64,
    ) -> Vec<(Duration, Event)> {
        (0..count)
            .map(|i| (ms(from_ms + i * 1000), advert(src, priority)))
            .collect()
    }

    fn with_startup(mut rest: Vec<(Duration, Event)>) -> Vec<(Duration, Event)> {
        rest.insert(0, (Duration::ZERO, Event::Startup));
        rest
    }

    fn became_master(priority: u8) -> [Action; 4] {
        [
            SendAdvert { priority },
            AddVips,
            SendGarp { repeat: 5 },
            Notify {
                state: NotifyState::Master,
                priority,
            },
        ]
    }

    fn first_master_at(log: &[(Duration, Action)]) -> Option<Duration> {
        log.iter().find(|(_, a)| *a == AddVips).map(|(t, _)| *t)
    }

    #[test]
    fn alone_backup_takes_over_after_master_down_interval() {
        let mut i = Instance::new(&config(100), LOCAL);
        let log = run(&mut i, with_startup(vec![]), ms(9_000));
        // 3 * 1 s + (256 - 100) / 256 s = 3.609375 s.
        let down = us(3_609_375);
        let mut expected = vec![
            (Duration::ZERO, RemoveVips),
            (
                Duration::ZERO,
                Notify {
                    state: NotifyState::Backup,
                    priority: 100,
                },
            ),
        ];
        expected.extend(became_master(100).map(|a| (down, a)));
        for k in 1..=5 {
            expected.push((down + ms(1000 * k), SendAdvert { priority: 100 }));
            if k == 5 {
                expected.push((down + ms(5000), SendGarp { repeat: 5 }));
            }
        }
        assert_eq!(log, expected);
        assert_eq!(i.state(), State::Master);
    }

    #[test]
    fn address_owner_is_master_at_once() {
        let mut i = Instance::new(&config(255), LOCAL);
        let log = run(&mut i, with_startup(vec![]), ms(500));
        let expected: Vec<_> = became_master(255)
            .into_iter()
            .map(|a| (Duration::ZERO, a))
            .collect();
        assert_eq!(log, expected);
    }

    #[test]
    fn adverts_from_higher_priority_hold_backup_until_they_stop() {
        let mut i = Instance::new(&config(100), LOCAL);
        let log = run(
            &mut i,
            with_startup(adverts_every_second(HIGHER, 150, 500, 10)),
            ms(20_000),
        );
        // Last advert at 9.5 s.
        assert_eq!(first_master_at(&log), Some(ms(9_500) + us(3_609_375)));
    }

    #[test]
    fn preempt_lets_the_down_timer_expire_over_a_lower_master() {
        let mut i = Instance::new(&config(150), LOCAL);
        let log = run(
            &mut i,
            with_startup(adverts_every_second(HIGHER, 100, 500, 10)),
            ms(10_000),
        );
        // Lower-priority adverts are ignored: 3 s + 106/256 s from startup.
        assert_eq!(first_master_at(&log), Some(us(3_414_062)));
    }

    #[test]
    fn nopreempt_stays_backup_under_a_lower_master() {
        let mut cfg = config(150);
        cfg.nopreempt = true;
        let mut i = Instance::new(&cfg, LOCAL);
        let log = run(
            &mut i,
            with_startup(adverts_every_second(HIGHER, 100, 500, 10)),
            ms(10_000),
        );
        assert_eq!(first_master_at(&log), None);
        assert_eq!(i.state(), State::Backup);
        assert_eq!(i.master(), Some((HIGHER, 100)));
    }

    #[test]
    fn preempt_delay_defers_takeover() {
        let mut cfg = config(150);
        cfg.preempt_delay = Duration::from_secs(10);
        let mut i = Instance::new(&cfg, LOCAL);
        let log = run(
            &mut i,
            with_startup(adverts_every_second(HIGHER, 100, 500, 30)),
            ms(30_000),
        );
        // The delay starts at the first advert (0.5 s, until 10.5 s); adverts
        // up to 9.5 s reset the timer, later ones are ignored.
        assert_eq!(first_master_at(&log), Some(ms(9_500) + us(3_414_062)));
    }

    #[test]
    fn priority_zero_means_takeover_after_skew_only() {
        let mut i = Instance::new(&config(100), LOCAL);
        let mut script = adverts_every_second(HIGHER, 150, 500, 2);
        script.push((ms(2_000), advert(HIGHER, 0)));
        let log = run(&mut i, with_startup(script), ms(5_000));
        assert_eq!(first_master_at(&log), Some(ms(2_000) + us(609_375)));
    }

    #[test]
    fn master_shutdown_sends_priority_zero() {
        let mut i = Instance::new(&config(255), LOCAL);
        let log = run(
            &mut i,
            vec![(Duration::ZERO, Event::Startup), (ms(300), Event::Shutdown)],
            ms(5_000),
        );
        assert_eq!(
            log[4..],
            [
                (ms(300), SendAdvert { priority: 0 }),
                (ms(300), RemoveVips),
                (
                    ms(300),
                    Notify {
                        state: NotifyState::Stop,
                        priority: 255
                    }
                ),
            ]
        );
        assert_eq!(i.state(), State::Initialize);
        assert_eq!(i.poll_timeout(), None);
    }

    #[test]
    fn backup_shutdown_only_notifies() {
        let mut i = Instance::new(&config(100), LOCAL);
        let log = run(
            &mut i,
            vec![(Duration::ZERO, Event::Startup), (ms(300), Event::Shutdown)],
            ms(5_000),
        );
        assert_eq!(
            log[2..],
            [(
                ms(300),
                Notify {
                    state: NotifyState::Stop,
                    priority: 100
                }
            )]
        );
    }

    #[test]
    fn master_steps_down_on_higher_priority() {
        let mut i = Instance::new(&config(100), LOCAL);
        let log = run(
            &mut i,
            with_startup(vec![(ms(4_000), advert(LOWER, 150))]),
            ms(4_000),
        );
        assert_eq!(
            log[log.len() - 2..],
            [
                (ms(4_000), RemoveVips),
                (
                    ms(4_000),
                    Notify {
                        state: NotifyState::Backup,
                        priority: 100
                    }
                ),
            ]
        );
        assert_eq!(i.state(), State::Backup);
        assert_eq!(i.master(), Some((LOWER, 150)));
    }

    #[test]
    fn equal_priority_higher_address_wins() {
        let mut i = Instance::new(&config(100), LOCAL);
        run(
            &mut i,
            with_startup(vec![(ms(4_000), advert(HIGHER, 100))]),
            ms(4_000),
        );
        assert_eq!(i.state(), State::Backup);

        let mut i = Instance::new(&config(100), LOCAL);
        let log = run(
            &mut i,
            with_startup(vec![(ms(4_000), advert(LOWER, 100))]),
            ms(4_000),
        );
        assert_eq!(i.state(), State::Master);
        assert_eq!(log.last(), Some(&(ms(4_000), SendAdvert { priority: 100 })));
    }

    #[test]
    fn equal_priority_backup_keeps_listening() {
        // Ties are broken by the master; a backup accepts equal priority.
        let mut i = Instance::new(&config(100), HIGHER);
        let log = run(
            &mut i,
            with_startup(adverts_every_second(LOWER, 100, 500, 10)),
            ms(10_000),
        );
        assert_eq!(first_master_at(&log), None);
    }

    #[test]
    fn master_answers_lower_priority_and_priority_zero_at_once() {
        let mut i = Instance::new(&config(100), LOCAL);
        let log = run(
            &mut i,
            with_startup(vec![
                (ms(4_000), advert(HIGHER, 50)),
                (ms(4_200), advert(HIGHER, 0)),
            ]),
            ms(5_300),
        );
        let tail: Vec<_> = log.iter().filter(|(t, _)| *t >= ms(4_000)).collect();
        assert_eq!(
            tail,
            [
                &(ms(4_000), SendAdvert { priority: 100 }),
                &(ms(4_200), SendAdvert { priority: 100 }),
                // The answer restarts the advert timer.
                &(ms(5_200), SendAdvert { priority: 100 }),
            ]
        );
    }

    #[test]
    fn two_owners_one_yields() {
        let mut i = Instance::new(&config(255), LOCAL);
        run(
            &mut i,
            vec![
                (Duration::ZERO, Event::Startup),
                (ms(100), advert(HIGHER, 255)),
            ],
            ms(100),
        );
        assert_eq!(i.state(), State::Backup);
        assert_eq!(i.effective_priority(), 254);
    }

    #[test]
    fn v3_learns_the_masters_interval() {
        let mut cfg = config(100);
        cfg.version = Version::V3;
        let mut i = Instance::new(&cfg, LOCAL);
        let script = with_startup(vec![(
            ms(500),
            Event::Advert {
                src: HIGHER,
                priority: 150,
                advert_int: ms(2_000),
            },
        )]);
        let log = run(&mut i, script, ms(20_000));
        // 3 * 2 s + 156 * 200 cs * 625 / 16 µs = 6 s + 1.21875 s.
        assert_eq!(first_master_at(&log), Some(ms(500) + us(7_218_750)));
    }

    #[test]
    fn v2_skew_ignores_advert_int() {
        let mut cfg = config(100);
        cfg.advert_int = Duration::from_secs(2);
        let mut i = Instance::new(&cfg, LOCAL);
        let log = run(&mut i, with_startup(vec![]), ms(20_000));
        assert_eq!(first_master_at(&log), Some(us(6_609_375)));
    }

    fn tracked(weight: i32) -> InstanceConfig {
        let mut cfg = config(100);
        cfg.track_interface = vec![Track {
            name: "eth1".into(),
            weight,
        }];
        cfg
    }

    fn eth1(up: bool) -> Event {
        Event::Track {
            kind: TrackKind::Interface,
            name: "eth1".into(),
            up,
        }
    }

    #[test]
    fn tracked_interface_down_is_fault_and_up_is_backup() {
        let mut i = Instance::new(&tracked(0), LOCAL);
        let log = run(
            &mut i,
            with_startup(vec![(ms(4_000), eth1(false)), (ms(6_000), eth1(true))]),
            ms(6_000),
        );
        let tail: Vec<_> = log.iter().filter(|(t, _)| *t >= ms(4_000)).collect();
        assert_eq!(
            tail,
            [
                &(ms(4_000), SendAdvert { priority: 0 }),
                &(ms(4_000), RemoveVips),
                &(
                    ms(4_000),
                    Notify {
                        state: NotifyState::Fault,
                        priority: 100
                    }
                ),
                &(
                    ms(6_000),
                    Notify {
                        state: NotifyState::Backup,
                        priority: 100
                    }
                ),
            ]
        );
        assert_eq!(i.state(), State::Backup);
        assert!(i.poll_timeout().is_some());
    }

    #[test]
    fn own_interface_down_is_fault() {
        let mut i = Instance::new(&config(100), LOCAL);
        let eth0 = |up| Event::Track {
            kind: TrackKind::Interface,
            name: "eth0".into(),
            up,
        };
        run(
            &mut i,
            with_startup(vec![(ms(4_000), eth0(false))]),
            ms(4_000),
        );
        assert_eq!(i.state(), State::Fault);
        i.handle(eth0(true), Instant::now());
        assert_eq!(i.state(), State::Backup);
    }

    #[test]
    fn fault_ignores_adverts_and_starts_faulted_when_told_so() {
        let mut i = Instance::new(&tracked(0), LOCAL);
        let log = run(
            &mut i,
            vec![
                (Duration::ZERO, eth1(false)),
                (Duration::ZERO, Event::Startup),
                (ms(500), advert(HIGHER, 150)),
            ],
            ms(10_000),
        );
        assert_eq!(
            log,
            [
                (Duration::ZERO, RemoveVips),
                (
                    Duration::ZERO,
                    Notify {
                        state: NotifyState::Fault,
                        priority: 100
                    }
                )
            ]
        );
        assert_eq!(i.poll_timeout(), None);
    }

    #[test]
    fn weighted_track_changes_advertised_priority() {
        let mut i = Instance::new(&tracked(-60), LOCAL);
        let log = run(
            &mut i,
            with_startup(vec![(ms(4_000), eth1(false))]),
            ms(5_000),
        );
        assert_eq!(
            log.last(),
            Some(&(ms(4_609) + us(375), SendAdvert { priority: 40 }))
        );
        assert_eq!(i.state(), State::Master);
    }

    #[test]
    fn positive_weight_counts_while_up_and_clamps() {
        let i = Instance::new(&tracked(200), LOCAL);
        assert_eq!(i.effective_priority(), 254);
        let mut owner = tracked(-60);
        owner.priority = 255;
        let mut i = Instance::new(&owner, LOCAL);
        i.handle(eth1(false), Instant::now());
        assert_eq!(i.effective_priority(), 255);
    }

    #[test]
    fn backup_priority_change_moves_the_down_timer() {
        let mut i = Instance::new(&tracked(-60), LOCAL);
        let log = run(
            &mut i,
            with_startup(vec![(ms(1_000), eth1(false))]),
            ms(10_000),
        );
        // Skew grows from 156/256 s to 216/256 s.
        assert_eq!(first_master_at(&log), Some(us(3_843_750)));
    }

    #[test]
    fn garp_settings_are_honoured() {
        let mut cfg = config(255);
        cfg.garp_master_repeat = 3;
        cfg.garp_master_delay = Duration::ZERO;
        let mut i = Instance::new(&cfg, LOCAL);
        let log = run(&mut i, with_startup(vec![]), ms(10_000));
        let garps: Vec<_> = log
            .iter()
            .filter(|(_, a)| matches!(a, SendGarp { .. }))
            .collect();
        assert_eq!(garps, [&(Duration::ZERO, SendGarp { repeat: 3 })]);
    }

    #[test]
    fn delayed_garp_is_dropped_when_leaving_master() {
        let mut i = Instance::new(&config(255), LOCAL);
        let log = run(
            &mut i,
            vec![
                (Duration::ZERO, Event::Startup),
                (ms(1_000), Event::Shutdown),
            ],
            ms(10_000),
        );
        assert_eq!(
            log.iter()
                .filter(|(_, a)| matches!(a, SendGarp { .. }))
                .count(),
            1
        );
    }
}

//! The chaos plan: which fault, when, for how long. Pure and seeded, so a
//! run can be repeated event for event.

use std::time::Duration;

use super::backend::Mode;
use super::classify::{Event, Timed};

/// No fault in the first seconds (both nodes up, checks settled) ...
pub const WARMUP: Duration = Duration::from_secs(5);
/// ... nor in the last ones: every fault has ended and been seen.
pub const COOLDOWN: Duration = Duration::from_secs(8);
/// A killed master returns after this long (the backup has taken over).
pub const MASTER_DOWN_FOR: Duration = Duration::from_secs(10);
/// While the master is away a backend hangs (the backup has seen it go by
/// the time the master returns) and stays hung a while after the return:
/// the returning node must not send new flows to it. Hung, because a hang
/// takes the longest to detect.
const DEAD_BEFORE_RETURN: Duration = Duration::from_secs(5);
const DEAD_AFTER_RETURN: Duration = Duration::from_secs(4);
/// Runs at least this long get one outage of every backend at once.
pub const OUTAGE_FROM: Duration = Duration::from_secs(120);
const OUTAGE_FOR: Duration = Duration::from_secs(4);

/// xorshift64*: enough to vary a schedule, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Kill,
    Hang,
    Reset,
    MasterKill,
    ReloadGood,
    ReloadBad,
}

/// The first round has every kind, in an order that fits a 60 s run; later
/// rounds are shuffled.
const FIRST_ROUND: [Kind; 6] = [
    Kind::Kill,
    Kind::ReloadGood,
    Kind::Hang,
    Kind::MasterKill,
    Kind::Reset,
    Kind::ReloadBad,
];

/// Events for a run of `duration`: faults on backends `0..normal` one at a
/// time, the backend `normal` flapping throughout, master kills and
/// reloads; one outage of all backends in runs of [`OUTAGE_FROM`] or more.
pub fn plan(duration: Duration, seed: u64, normal: usize) -> Vec<Timed> {
    let mut rng = Rng(seed | 1);
    let end = duration.saturating_sub(COOLDOWN);
    let mut out = Vec::new();
    let mut push = |at: Duration, event: Event| out.push(Timed { at, event });
    let mut t = WARMUP;
    let mut round = FIRST_ROUND.to_vec();
    let mut outage_done = duration < OUTAGE_FROM;
    'rounds: loop {
        for &kind in &round {
            let hold = rng.ms(5_000, 7_000);
            let needs = match kind {
                Kind::ReloadGood | Kind::ReloadBad => Duration::from_secs(2),
                Kind::MasterKill => MASTER_DOWN_FOR + DEAD_AFTER_RETURN,
                _ => hold,
            };
            if t + needs > end {
                break 'rounds;
            }
            let target = rng.below(normal);
            match kind {
                Kind::Kill | Kind::Hang | Kind::Reset => {
                    let mode = match kind {
                        Kind::Kill => Mode::Down,
                        Kind::Hang => Mode::Hang,
                        _ => Mode::Reset,
                    };
                    push(t, Event::Backend(target, mode));
                    push(t + hold, Event::Backend(target, Mode::Up));
                }
                Kind::MasterKill => {
                    let back = t + MASTER_DOWN_FOR;
                    push(t, Event::MasterKill);
                    push(
                        back - DEAD_BEFORE_RETURN,
                        Event::Backend(target, Mode::Hang),
                    );
                    push(back, Event::MasterStart);
                    push(back + DEAD_AFTER_RETURN, Event::Backend(target, Mode::Up));
                }
                Kind::ReloadGood => push(t, Event::Reload(true)),
                Kind::ReloadBad => push(t, Event::Reload(false)),
            }
            t += needs + rng.ms(1_000, 3_000);
        }
        if !outage_done && t + OUTAGE_FOR + Duration::from_secs(6) <= end {
            for i in 0..=normal {
                push(t, Event::Backend(i, Mode::Down));
            }
            for i in 0..=normal {
                push(t + OUTAGE_FOR, Event::Backend(i, Mode::Up));
            }
            t += OUTAGE_FOR + Duration::from_secs(6);
            outage_done = true;
        }
        for i in (1..round.len()).rev() {
            round.swap(i, rng.below(i + 1));
        }
    }
    // The flapper: down 2-5 s, up 4-8 s, until the cooldown.
    let mut t = WARMUP + rng.ms(0, 2_000);
    loop {
        let down = rng.ms(2_000, 5_000);
        if t + down > end {
            break;
        }
        push(t, Event::Backend(normal, Mode::Down));
        push(t + down, Event::Backend(normal, Mode::Up));
        t += down + rng.ms(4_000, 8_000);
    }
    // A flap may overlap the outage: classification follows the modes as
    // they were set, whichever event set them.
    out.sort_by_key(|e| e.at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_has_every_kind_of_event_and_ends_quiet() {
        let p = plan(Duration::from_secs(60), 7, 4);
        let has = |f: &dyn Fn(&Event) -> bool| p.iter().any(|e| f(&e.event));
        assert!(has(&|e| matches!(e, Event::Backend(0..4, Mode::Down))));
        assert!(has(&|e| matches!(e, Event::Backend(_, Mode::Hang))));
        assert!(has(&|e| matches!(e, Event::Backend(_, Mode::Reset))));
        assert!(has(&|e| matches!(e, Event::Backend(4, Mode::Down))));
        assert!(has(&|e| *e == Event::MasterKill));
        assert!(has(&|e| *e == Event::MasterStart));
        assert!(has(&|e| *e == Event::Reload(true)));
        assert!(has(&|e| *e == Event::Reload(false)));
        assert!(p.iter().all(|e| e.at <= Duration::from_secs(60) - COOLDOWN));
        assert_eq!(plan(Duration::from_secs(60), 7, 4).len(), p.len());
    }
}

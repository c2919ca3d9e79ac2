//! Failover between the real `lb run` and the real keepalived 2.2.7 on one
//! VRID, in network namespaces (198.18.0.0/15), with a client probing the
//! VIP every 50 ms through lb's nat datapath: crash (SIGKILL), return with
//! and without `nopreempt`, and clean shutdown (SIGTERM, priority 0).
//!
//! The tests take a lock so that they run one at a time: they assert on
//! timings of a few hundred milliseconds, and two of them side by side on a
//! 2-core machine would measure each other.
use std::{path::Path, sync::Mutex, thread, time::Duration};

use lb_testlab::vrrp::{FailoverLab, NodeSpec, Probed, Speaker, Vrrp};

const LB_BIN: &str = env!("CARGO_BIN_EXE_lb");
static SERIAL: Mutex<()> = Mutex::new(());

const SEC: Duration = Duration::from_secs(1);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn spec(speaker: Speaker, priority: u8) -> NodeSpec {
    NodeSpec {
        speaker,
        priority,
        nopreempt: false,
    }
}

/// advert_int 1 s, the keepalived default the bounds below are stated for.
fn vrrp(version: u8) -> Vrrp {
    Vrrp {
        version,
        advert_int: SEC,
    }
}

fn lab(test: &str, v: Vrrp, master: NodeSpec, backup: NodeSpec) -> FailoverLab {
    FailoverLab::new(test, Path::new(LB_BIN), v, master, backup)
}

/// Runs `act` while the client probes: half a second of steady answers
/// before, and half a second after `act` returns.
fn probed<T>(fl: &mut FailoverLab, act: impl FnOnce(&mut FailoverLab) -> T) -> (T, Probed) {
    let prober = fl.probe();
    thread::sleep(SEC / 2);
    let out = act(fl);
    thread::sleep(SEC / 2);
    (out, prober.stop())
}

fn ok<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn assert_gap(fl: &FailoverLab, what: &str, p: &Probed, bound: Duration) {
    println!(
        "{what}: longest gap {:?}, {} of {} probes failed",
        p.longest_gap, p.failures, p.attempts
    );
    assert!(
        p.recovered,
        "{what}: the VIP stopped answering\n{}",
        fl.logs()
    );
    assert!(
        p.longest_gap <= bound,
        "{what}: gap {:?} > {bound:?}\n{}",
        p.longest_gap,
        fl.logs()
    );
}

/// Each side would log its objections to the other's adverts: keepalived
/// (or to its config), lb at debug level.
fn assert_no_complaints(fl: &FailoverLab) {
    for i in 0..2 {
        if fl.spec(i).speaker == Speaker::Lb {
            let log = fl.lb_log(i);
            assert!(
                log.contains("VRRP state change"),
                "lb on node {i} never changed state:\n{log}"
            );
            let dropped: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("VRRP packet dropped"))
                .collect();
            assert!(
                dropped.is_empty(),
                "lb on node {i} dropped adverts: {dropped:#?}"
            );
            continue;
        }
        let log = fl.keepalived_log(i);
        assert!(
            log.contains("Entering MASTER STATE") || log.contains("Entering BACKUP STATE"),
            "keepalived on node {i} never ran an election:\n{log}"
        );
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| {
                let l = l.to_lowercase();
                ["invalid", "bad", "mismatch"].iter().any(|w| l.contains(w))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "keepalived on node {i} complained: {bad:#?}"
        );
    }
}

/// Node 0 (priority 150) and node 1 (priority 100): node 0 wins, crashes,
/// node 1 takes over after the master-down interval, node 0 returns and
/// preempts, then leaves cleanly and node 1 takes over after its skew only.
fn crash_return_and_clean_stop(test: &str, version: u8, master: Speaker, backup: Speaker) {
    let _serial = serial();
    let v = vrrp(version);
    let mut fl = lab(test, v, spec(master, 150), spec(backup, 100));
    fl.start(0);
    fl.start(1);
    ok(fl.wait_sole_master(0, 15 * SEC));

    let (takeover, p) = probed(&mut fl, |fl| {
        fl.kill(0);
        let d = ok(fl.wait_vip(1, 10 * SEC));
        ok(fl.wait_answers(5 * SEC));
        d
    });
    println!("SIGKILL: node 1 has the VIP {takeover:?} after the kill");
    // The last advert left up to one interval before the kill.
    assert!(
        takeover >= v.master_down(100) - SEC - SEC / 5,
        "node 1 took over {takeover:?} after a crash, before its master-down interval"
    );
    assert_gap(&fl, "SIGKILL", &p, v.master_down(100) + SEC);

    let (_, p) = probed(&mut fl, |fl| {
        fl.start(0);
        ok(fl.wait_sole_master(0, 15 * SEC))
    });
    assert_gap(&fl, "return with preemption", &p, SEC);

    let (takeover, p) = probed(&mut fl, |fl| {
        fl.term(0);
        let d = ok(fl.wait_vip(1, 10 * SEC));
        ok(fl.wait_answers(5 * SEC));
        d
    });
    println!("SIGTERM: node 1 has the VIP {takeover:?} after the signal");
    assert!(
        fl.wait_stopped(0, 10 * SEC),
        "node 0 still running 10 s after SIGTERM"
    );
    assert!(!fl.has_vip(0), "node 0 kept the VIP after SIGTERM");
    // Skew time, not 3 × advert_int: node 1 heard priority 0.
    assert!(
        takeover <= v.skew(100) + SEC * 3 / 10,
        "node 1 took over {takeover:?} after SIGTERM; skew is {:?}\n{}",
        v.skew(100),
        fl.logs()
    );
    assert_gap(&fl, "SIGTERM", &p, SEC);
    assert_no_complaints(&fl);
}

#[test]
fn lb_master_keepalived_backup_v2() {
    crash_return_and_clean_stop("vflbk2", 2, Speaker::Lb, Speaker::Keepalived);
}

#[test]
fn lb_master_keepalived_backup_v3() {
    crash_return_and_clean_stop("vflbk3", 3, Speaker::Lb, Speaker::Keepalived);
}

#[test]
fn keepalived_master_lb_backup_v2() {
    crash_return_and_clean_stop("vfklb2", 2, Speaker::Keepalived, Speaker::Lb);
}

#[test]
fn keepalived_master_lb_backup_v3() {
    crash_return_and_clean_stop("vfklb3", 3, Speaker::Keepalived, Speaker::Lb);
}

/// Node 0 (priority 150, `nopreempt`) wins, crashes and comes back: it stays
/// BACKUP under node 1 (priority 100) well past its master-down interval.
fn nopreempt_return_stays_backup(test: &str, returning: Speaker, other: Speaker) {
    let _serial = serial();
    let mut a = spec(returning, 150);
    a.nopreempt = true;
    let v = vrrp(2);
    let mut fl = lab(test, v, a, spec(other, 100));
    // A nopreempt node wins only if it is first: lb loads its datapath
    // before it speaks VRRP, so starting both at once would let keepalived
    // win the race half the time.
    fl.start(0);
    ok(fl.wait_sole_master(0, 15 * SEC));
    fl.start(1);
    thread::sleep(v.master_down(100) + SEC / 2);
    ok(fl.wait_sole_master(0, SEC));
    fl.kill(0);
    ok(fl.wait_vip(1, 10 * SEC));
    ok(fl.wait_answers(5 * SEC));

    let (_, p) = probed(&mut fl, |fl| {
        fl.start(0);
        thread::sleep(v.master_down(150) + 2 * SEC);
    });
    assert!(
        fl.has_vip(1) && !fl.has_vip(0),
        "the returning nopreempt node took the VIP back: has_vip = [{}, {}]\n{}",
        fl.has_vip(0),
        fl.has_vip(1),
        fl.logs()
    );
    assert_gap(&fl, "nopreempt return", &p, SEC / 2);
    assert_no_complaints(&fl);
}

#[test]
fn nopreempt_lb_returns_as_backup() {
    nopreempt_return_stays_backup("vfnplb", Speaker::Lb, Speaker::Keepalived);
}

#[test]
fn nopreempt_keepalived_returns_as_backup() {
    nopreempt_return_stays_backup("vfnpka", Speaker::Keepalived, Speaker::Lb);
}

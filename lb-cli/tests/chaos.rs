//! A minute of chaos under load (see `lb_testlab::chaos`): backends killed,
//! hung, resetting and flapping, the master LB killed and back, valid and
//! invalid reloads, in network namespaces (198.18.0.0/15). No client error
//! may be the LB's while a healthy backend existed, and a master's return
//! costs none. `cargo xtask chaos`
//! runs the same for longer.
use std::{path::Path, time::Duration};

use lb_testlab::chaos::{self, Options, classify::Class};

const LB_BIN: &str = env!("CARGO_BIN_EXE_lb");

#[test]
fn a_minute_of_chaos_has_no_lb_error_while_a_healthy_backend_exists() {
    let out = chaos::run(
        Path::new(LB_BIN),
        "chaos",
        &Options::new(Duration::from_secs(60), 1),
    );
    let r = &out.report;
    println!("{}{}", r.table(), r.timeline());
    let logs = || format!("--- node a\n{}\n--- node b\n{}", out.logs[0], out.logs[1]);
    assert_eq!(
        r.count(Class::Lb),
        0,
        "{}{}\n{}",
        r.table(),
        r.timeline(),
        logs()
    );
    // A returning master waits for its checks before it preempts: it
    // never sends new flows to the backend that hung while it was away.
    assert_eq!(
        r.count(Class::MasterReturned),
        0,
        "{}{}\n{}",
        r.table(),
        r.timeline(),
        logs()
    );
    // Both nodes saw the valid reload (node a maybe in its second life)
    // and rejected the invalid one.
    for i in 0..2 {
        assert!(
            out.reloads_applied[i] >= 1,
            "node {i}: no reload\n{}",
            logs()
        );
        assert!(
            out.reloads_rejected[i] >= 1,
            "node {i}: bad reload not rejected\n{}",
            logs()
        );
    }
    // The faults were felt, and most requests still got through.
    assert!(r.count(Class::BackendBeforeDetection) > 0, "{}", r.table());
    assert!(r.served * 10 > r.requests * 8, "{}", r.table());
}

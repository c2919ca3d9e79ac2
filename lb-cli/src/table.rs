//! `lb status` as text, laid out like `ipvsadm -Ln`: two header lines (one
//! for service rows, one for backend rows), each service followed by its
//! backends, then the VRRP instances.

use std::{collections::BTreeMap, fmt::Write};

use lb_core::admin::view::{BackendView, ServiceView, StatusView, UsageView, VrrpView};

/// Renders the status as aligned text, ending with a newline.
pub fn render(s: &StatusView) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        cells(&[
            "Prot LocalAddress:Port",
            "Forward",
            "Scheduler",
            "Quorum",
            "",
            "Flows",
            "Pkts/s",
            "Packets",
            "Bytes",
            "",
        ]),
        cells(&[
            "  -> RemoteAddress:Port",
            "Health",
            "Weight",
            "Admin",
            "Live",
            "Flows",
            "Pkts/s",
            "Packets",
            "Bytes",
            "Reason",
        ]),
    ];
    // Lines printed under a row, outside the column layout.
    let mut notes: Vec<(usize, String)> = Vec::new();
    for svc in &s.services {
        rows.push(service_row(svc));
        if let Some(d) = svc.usage.as_ref().and_then(|u| nonzero(&u.drops)) {
            notes.push((rows.len(), format!("     drops: {d}")));
        }
        for b in &svc.backends {
            rows.push(backend_row(b));
        }
    }
    let mut out = String::new();
    let table = align(&rows);
    for (i, line) in table.iter().enumerate() {
        out.push_str(line);
        out.push('\n');
        for (_, note) in notes.iter().filter(|(at, _)| *at == i + 1) {
            out.push_str(note);
            out.push('\n');
        }
    }
    if s.services.is_empty() {
        out.push_str("(no services)\n");
    }
    out.push('\n');
    out.push_str(&vrrp(&s.vrrp));
    out.push('\n');
    footer(&mut out, s);
    out
}

fn cells(c: &[&str]) -> Vec<String> {
    c.iter().map(|s| s.to_string()).collect()
}

fn service_row(svc: &ServiceView) -> Vec<String> {
    let mut addr = format!("{:<4} {}", svc.protocol.to_uppercase(), svc.vip);
    if let Some(name) = &svc.name {
        let _ = write!(addr, " ({name})");
    }
    let quorum = match (svc.quorum_up, svc.sorry) {
        (true, _) => "up",
        (false, true) => "down,sorry",
        (false, false) => "down",
    };
    let mut row = vec![
        addr,
        svc.forwarding.clone(),
        svc.scheduler.clone(),
        quorum.to_string(),
        String::new(),
    ];
    row.extend(traffic(svc.usage.as_ref()));
    row.push(if svc.removing {
        "removing: no new flows".into()
    } else {
        String::new()
    });
    row
}

fn backend_row(b: &BackendView) -> Vec<String> {
    let health = match (b.sorry_server, b.healthy) {
        (true, _) => "sorry",
        (false, true) => "up",
        (false, false) => "down",
    };
    let admin = match b.admin_weight {
        Some(0) => "drained".to_string(),
        Some(w) => w.to_string(),
        None => "-".to_string(),
    };
    let mut row = vec![
        format!("  -> {}", b.address),
        health.to_string(),
        b.weight.to_string(),
        admin,
        b.live_weight.map_or("-".to_string(), |w| w.to_string()),
    ];
    row.extend(traffic(b.usage.as_ref()));
    let mut reason = b.reason.clone().unwrap_or_default();
    if let Some(l) = b.probe_latency_seconds {
        let _ = write!(reason, " ({:.1}ms)", l * 1e3);
    }
    row.push(reason.trim().to_string());
    row
}

/// Flows, packets/s, packets, bytes; `-` when unknown.
fn traffic(u: Option<&UsageView>) -> Vec<String> {
    let Some(u) = u else {
        return vec!["-".into(); 4];
    };
    vec![
        u.active_flows.to_string(),
        u.packets_per_second
            .map_or("-".into(), |r| human(r.round() as u64)),
        human(u.packets),
        human(u.bytes),
    ]
}

/// Non-zero counters as `reason=N ...`, or `None` when all are zero.
fn nonzero(counts: &BTreeMap<String, u64>) -> Option<String> {
    let d: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    (!d.is_empty()).then(|| d.join(" "))
}

/// Exact below 100000, then with a K, M, G or T (powers of 1000, as
/// `ipvsadm --stats` does).
pub fn human(n: u64) -> String {
    if n < 100_000 {
        return n.to_string();
    }
    let mut v = n as f64;
    let mut unit = "";
    for u in ["K", "M", "G", "T"] {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    format!("{v:.1}{unit}")
}

/// Pads every column but the last to its widest cell, two spaces apart.
fn align(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

fn vrrp(instances: &[VrrpView]) -> String {
    if instances.is_empty() {
        return "VRRP: no instances\n".into();
    }
    let mut rows = vec![cells(&[
        "VRRP Instance",
        "Interface",
        "VRID",
        "State",
        "Priority",
        "Transitions",
        "Master",
    ])];
    for v in instances {
        rows.push(vec![
            v.name.clone(),
            v.interface.clone(),
            v.virtual_router_id.to_string(),
            v.state.clone(),
            v.priority.to_string(),
            v.transitions.to_string(),
            v.master.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut out = String::new();
    for line in align(&rows) {
        out.push_str(&line);
        out.push('\n');
    }
    for v in instances {
        if let Some(r) = nonzero(&v.rejected) {
            let _ = writeln!(out, "{}: adverts rejected: {r}", v.name);
        }
    }
    out
}

fn footer(out: &mut String, s: &StatusView) {
    if let Some(y) = &s.sync {
        let _ = writeln!(
            out,
            "Sync: {} flows sent, {} flows applied, {} datagrams received",
            y.flows_sent, y.flows_applied, y.messages_received
        );
        if let Some(r) = nonzero(&y.rejected) {
            let _ = writeln!(out, "Sync datagrams rejected: {r}");
        }
        if let Some(r) = nonzero(&y.skipped) {
            let _ = writeln!(out, "Sync flows skipped: {r}");
        }
    }
    let _ = writeln!(
        out,
        "Config {}: {} reloads, {} rejected",
        s.config_path, s.reloads, s.reload_failures
    );
    match (&s.usage_error, s.rate_window_seconds) {
        (Some(e), _) => {
            let _ = writeln!(out, "Counters unavailable: {e}");
        }
        (None, Some(w)) => {
            let _ = writeln!(out, "Pkts/s over the last {w:.1}s");
        }
        (None, None) => {}
    }
    if let Some(d) = nonzero(&s.unmatched_drops) {
        let _ = writeln!(out, "Drops before a service matched: {d}");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lb_core::admin::view::{
        BackendView, ServiceView, StatusView, SyncView, UsageView, VrrpView,
    };
    use lb_core::health::ProbeSnapshot;

    use super::*;

    fn usage(packets: u64, flows: u64, pps: Option<f64>) -> Option<UsageView> {
        Some(UsageView {
            packets,
            bytes: packets * 1400,
            new_flows: flows,
            drops: BTreeMap::new(),
            active_flows: flows,
            packets_per_second: pps,
            bytes_per_second: pps.map(|p| p * 1400.0),
        })
    }

    fn backend(addr: &str, weight: u32) -> BackendView {
        BackendView {
            address: addr.parse().unwrap(),
            weight,
            admin_weight: None,
            live_weight: Some(weight),
            healthy: true,
            reason: Some("HTTP 200".into()),
            probe_latency_seconds: Some(0.0021),
            probes: Some(ProbeSnapshot {
                count: 10,
                last_ok_latency_seconds: Some(0.0021),
                ..ProbeSnapshot::default()
            }),
            sorry_server: false,
            usage: usage(1_234_567, 42, Some(812.4)),
        }
    }

    fn fixture() -> StatusView {
        let mut drained = backend("198.18.1.2:8033", 100);
        drained.admin_weight = Some(0);
        drained.live_weight = Some(0);
        drained.usage = usage(98_000, 3, Some(0.0));
        let mut down = backend("198.18.1.3:8033", 50);
        down.healthy = false;
        down.live_weight = None;
        down.reason = Some("connect: connection refused".into());
        down.probe_latency_seconds = None;
        down.probes = None;
        down.usage = None;
        let mut web_usage = usage(1_332_567, 45, Some(812.4)).unwrap();
        web_usage.drops.insert("no_backend".into(), 12);
        web_usage.drops.insert("fragment".into(), 0);
        let mut sorry = backend("198.18.2.1:53", 1);
        sorry.sorry_server = true;
        sorry.reason = None;
        sorry.probe_latency_seconds = None;
        sorry.probes = None;
        StatusView {
            config_path: "/etc/lb/lb.toml".into(),
            reloads: 3,
            reload_failures: 1,
            usage_error: None,
            rate_window_seconds: Some(1.0),
            services: vec![
                ServiceView {
                    name: Some("portal".into()),
                    vip: "198.18.0.100:80".parse().unwrap(),
                    protocol: "tcp".into(),
                    interface: "eth0".into(),
                    forwarding: "nat".into(),
                    scheduler: "maglev".into(),
                    quorum_up: true,
                    sorry: false,
                    table_generation: 7,
                    removing: false,
                    idle_timeout_seconds: 900,
                    usage: Some(web_usage),
                    backends: vec![backend("198.18.1.1:8033", 100), drained, down],
                },
                ServiceView {
                    name: None,
                    vip: "198.18.0.101:53".parse().unwrap(),
                    protocol: "udp".into(),
                    interface: "eth0".into(),
                    forwarding: "dr".into(),
                    scheduler: "maglev".into(),
                    quorum_up: false,
                    sorry: true,
                    table_generation: 2,
                    removing: true,
                    idle_timeout_seconds: 300,
                    usage: usage(10, 0, None),
                    backends: vec![sorry],
                },
            ],
            unmatched_drops: BTreeMap::from([("ip_options".to_string(), 2)]),
            vrrp: vec![
                VrrpView {
                    name: "VI_1".into(),
                    interface: "eth0".into(),
                    virtual_router_id: 51,
                    state: "MASTER".into(),
                    priority: 150,
                    master: Some("198.18.0.11 (150)".into()),
                    transitions: 2,
                    rejected: BTreeMap::from([("bad_checksum".to_string(), 4)]),
                },
                VrrpView {
                    name: "VI_2".into(),
                    interface: "eth1".into(),
                    virtual_router_id: 52,
                    state: "BACKUP".into(),
                    priority: 100,
                    master: None,
                    transitions: 0,
                    rejected: BTreeMap::new(),
                },
            ],
            sync: Some(SyncView {
                messages_sent: 610,
                flows_sent: 1_200,
                send_errors: 0,
                messages_received: 305,
                flows_applied: 40,
                rejected: BTreeMap::from([("replayed".to_string(), 1), ("bad_tag".to_string(), 0)]),
                skipped: BTreeMap::from([("local_backend".to_string(), 2)]),
            }),
        }
    }

    /// Compares with the golden file; `UPDATE_GOLDEN=1` rewrites it.
    #[test]
    fn status_table_matches_golden() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/status.txt");
        let got = render(&fixture());
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &got).unwrap();
        }
        let want = std::fs::read_to_string(path).unwrap();
        assert_eq!(got, want, "run with UPDATE_GOLDEN=1 to accept:\n{got}");
    }

    #[test]
    fn empty_status() {
        let mut s = fixture();
        s.services.clear();
        s.vrrp.clear();
        s.usage_error = Some("eBPF map FLOWS missing or of the wrong type".into());
        let got = render(&s);
        assert!(got.contains("(no services)\n"), "{got}");
        assert!(got.contains("VRRP: no instances\n"), "{got}");
        assert!(
            got.contains("Counters unavailable: eBPF map FLOWS"),
            "{got}"
        );
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(99_999), "99999");
        assert_eq!(human(123_456), "123.5K");
        assert_eq!(human(4_200_000_000), "4.2G");
    }
}

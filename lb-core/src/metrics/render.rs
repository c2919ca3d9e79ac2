//! One scrape: the daemon's status and datapath counters as metrics.
//!
//! Names follow Prometheus conventions: an `lb_` prefix, `_total` on
//! counters, base units (seconds, bytes). Labels never churn: a service is
//! `vip` + `protocol`, a backend adds `backend`, a VRRP instance is
//! `instance` + `interface` + `vrid`.

use lb_ebpf::abi::{Counters, DropReason};
use metrics::{Label, counter, describe_counter, describe_gauge, gauge, with_local_recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, formatting::sanitize_label_value};

use crate::{
    admin::{Control, view},
    daemon::{Status, Usage, UsageSnapshot},
    health::{ProbeSnapshot, probes::BUCKETS},
};

/// keepalived's VRRP states, each a series of `lb_vrrp_state`.
const VRRP_STATES: [&str; 4] = ["INIT", "BACKUP", "MASTER", "FAULT"];

/// Reads the daemon and renders the Prometheus text format. A datapath that
/// cannot be read leaves the traffic metrics out and sets
/// `lb_datapath_readable` to 0.
pub async fn scrape<C: Control>(control: &C) -> String {
    let status = control.status();
    let usage = control.usage().await;
    if let Err(e) = &usage {
        tracing::warn!(error = %e, "metrics: reading the datapath counters failed");
    }
    render(&status, usage.as_ref().ok())
}

/// Renders one snapshot in the Prometheus text format.
pub fn render(status: &Status, usage: Option<&UsageSnapshot>) -> String {
    // A new recorder per scrape: every value comes from the daemon, and the
    // series of a removed service or backend disappear with it instead of
    // lingering at their last value.
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    with_local_recorder(&recorder, || {
        describe();
        record(status, usage);
    });
    let probes = probe_histogram(status);
    sorted(&handle.render(), probes.as_deref())
}

/// The exporter writes families and series in hash order; sorting them
/// makes a scrape readable with `curl | less` and comparable between two.
/// `histogram` is a family written here in its required order (buckets by
/// increasing `le`), placed among the others but not sorted inside.
fn sorted(text: &str, histogram: Option<&str>) -> String {
    let mut families: Vec<Vec<&str>> = text
        .split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            let (meta, mut series): (Vec<&str>, Vec<&str>) =
                f.lines().partition(|l| l.starts_with('#'));
            series.sort_unstable();
            meta.into_iter().chain(series).collect()
        })
        .collect();
    families.extend(histogram.map(|h| h.lines().collect()));
    families.sort_unstable_by_key(|f| f.iter().find(|l| !l.starts_with('#')).copied());
    families
        .iter()
        .map(|f| f.join("\n") + "\n")
        .collect::<Vec<_>>()
        .join("\n")
}

/// The probe latency histogram of every checked backend. The exporter's
/// histograms aggregate samples it records itself; these are counted by the
/// health tasks as probes land, so the family is written directly.
fn probe_histogram(status: &Status) -> Option<String> {
    const NAME: &str = "lb_backend_probe_duration_seconds";
    let mut out = String::new();
    for s in &status.services {
        for b in &s.backends {
            let Some(p) = &b.probes else { continue };
            let labels = [
                ("vip", s.vip.to_string()),
                ("protocol", s.protocol.clone()),
                ("backend", b.address.to_string()),
            ]
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", sanitize_label_value(v)))
            .collect::<Vec<_>>()
            .join(",");
            write_histogram(&mut out, NAME, &labels, &p.snapshot());
        }
    }
    (!out.is_empty()).then(|| {
        format!(
            "# HELP {NAME} Duration of the backend's health probes, failed ones included (a timeout counts at its timeout).\n# TYPE {NAME} histogram\n{out}"
        )
    })
}

fn write_histogram(out: &mut String, name: &str, labels: &str, p: &ProbeSnapshot) {
    use std::fmt::Write;
    for (le, n) in BUCKETS.iter().zip(&p.buckets) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", p.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", p.sum_seconds);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", p.count);
}

fn describe() {
    describe_counter!("lb_config_reloads_total", "Successful config reloads.");
    describe_counter!(
        "lb_config_reload_failures_total",
        "Rejected config reloads (the previous config kept serving)."
    );
    describe_gauge!(
        "lb_datapath_readable",
        "1 if this scrape read the datapath counters, 0 if not (traffic metrics are then absent)."
    );
    for (scope, what) in [
        ("service", "the service"),
        (
            "backend",
            "the backend (counted per backend address and interface, so a backend in two services shows their sum in both; kept while it is out of the table, so they go on when it comes back)",
        ),
    ] {
        let name = |m: &str| format!("lb_{scope}_{m}");
        describe_counter!(name("packets_total"), format!("Packets to {what}."));
        describe_counter!(name("bytes_total"), format!("Bytes to {what}."));
        describe_counter!(
            name("new_flows_total"),
            format!("Flows scheduled to {what}.")
        );
        describe_counter!(
            name("unpinned_flows_total"),
            format!(
                "New flows to {what} forwarded without a connection-table entry (SYN-flood guard over its per-CPU rate)."
            )
        );
        describe_counter!(
            name("drops_total"),
            format!("Packets to {what} dropped by the datapath, by reason.")
        );
        describe_gauge!(
            name("active_flows"),
            format!("Flows of {what} seen within the service's idle timeout.")
        );
    }
    describe_counter!(
        "lb_backend_syns_total",
        "New TCP flows to the backend that began with a SYN (nat: passive health)."
    );
    describe_counter!(
        "lb_backend_syn_answers_total",
        "The backend's first answer to those SYNs: answer=\"syn_ack\" (accepted) or \"rst\" (refused)."
    );
    describe_counter!(
        "lb_unmatched_drops_total",
        "Packets to a VIP address dropped before matching a service, by reason."
    );
    describe_gauge!(
        "lb_service_quorum_up",
        "1 if the service has quorum (keepalived's quorum)."
    );
    describe_gauge!(
        "lb_service_sorry_active",
        "1 if the sorry server serves instead of the backends."
    );
    describe_counter!(
        "lb_service_table_swaps_total",
        "Table swaps of the service (its table generation)."
    );
    describe_gauge!(
        "lb_backend_healthy",
        "1 if the backend passes its health check."
    );
    describe_gauge!(
        "lb_backend_probe_latency_seconds",
        "Latency of the backend's last successful health probe."
    );
    describe_counter!(
        "lb_backend_probe_failures_total",
        "Health probes of the backend that failed."
    );
    describe_gauge!("lb_backend_weight", "Weight of the backend in the config.");
    describe_gauge!(
        "lb_backend_admin_weight",
        "Weight set by lb weight / lb drain (0 = drained); absent when not set."
    );
    describe_gauge!(
        "lb_backend_live_weight",
        "Weight of the backend in the live table (0 when out of it)."
    );
    describe_gauge!(
        "lb_vrrp_state",
        "1 for the VRRP instance's current state, 0 for the others."
    );
    describe_gauge!(
        "lb_vrrp_priority",
        "Effective VRRP priority of the instance."
    );
    describe_counter!(
        "lb_vrrp_transitions_total",
        "VRRP state changes of the instance."
    );
    describe_counter!(
        "lb_vrrp_adverts_rejected_total",
        "VRRP adverts the instance rejected, by reason."
    );
    describe_counter!(
        "lb_sync_messages_sent_total",
        "Connection-state sync datagrams sent (hellos and flows, each peer counted)."
    );
    describe_counter!(
        "lb_sync_flows_sent_total",
        "nat flows sent to the sync peers (each peer counted)."
    );
    describe_counter!(
        "lb_sync_send_errors_total",
        "Sync datagrams the socket refused to send."
    );
    describe_counter!(
        "lb_sync_messages_received_total",
        "Sync datagrams accepted (authenticated, not replayed)."
    );
    describe_counter!(
        "lb_sync_flows_applied_total",
        "Received nat flows written into the connection table."
    );
    describe_counter!(
        "lb_sync_messages_rejected_total",
        "Sync datagrams refused, by reason (unknown peer, bad tag, replayed, ...)."
    );
    describe_counter!(
        "lb_sync_flows_skipped_total",
        "Received nat flows not applied, by reason (no such service or backend here, ...)."
    );
}

fn sync(s: &crate::sync::Counters) {
    use crate::sync::Counters as C;
    counter!("lb_sync_messages_sent_total").absolute(C::get(&s.messages_sent));
    counter!("lb_sync_flows_sent_total").absolute(C::get(&s.flows_sent));
    counter!("lb_sync_send_errors_total").absolute(C::get(&s.send_errors));
    counter!("lb_sync_messages_received_total").absolute(C::get(&s.messages_received));
    counter!("lb_sync_flows_applied_total").absolute(C::get(&s.flows_applied));
    for (reason, n) in s.rejected() {
        counter!("lb_sync_messages_rejected_total", "reason" => reason).absolute(n);
    }
    for (reason, n) in s.skipped() {
        counter!("lb_sync_flows_skipped_total", "reason" => reason).absolute(n);
    }
}

fn record(status: &Status, usage: Option<&UsageSnapshot>) {
    counter!("lb_config_reloads_total").absolute(status.reloads);
    counter!("lb_config_reload_failures_total").absolute(status.reload_failures);
    gauge!("lb_datapath_readable").set(if usage.is_some() { 1.0 } else { 0.0 });
    if let Some(u) = usage {
        drops("lb_unmatched_drops_total", &[], &u.unmatched);
    }
    if let Some(s) = &status.sync {
        sync(&s.0);
    }
    for s in &status.services {
        let key = view::service_key(s);
        let svc = vec![
            Label::new("vip", s.vip.to_string()),
            Label::new("protocol", s.protocol.clone()),
        ];
        gauge!("lb_service_quorum_up", svc.clone()).set(flag(s.quorum_up));
        gauge!("lb_service_sorry_active", svc.clone()).set(flag(s.sorry));
        counter!("lb_service_table_swaps_total", svc.clone()).absolute(s.table_generation.into());
        if let (Some(k), Some(u)) = (key, usage)
            && let Some((_, vu)) = u.vips.iter().find(|(vk, _)| *vk == k)
        {
            traffic("service", &svc, vu);
        }
        for b in &s.backends {
            let mut labels = svc.clone();
            labels.push(Label::new("backend", b.address.to_string()));
            gauge!("lb_backend_live_weight", labels.clone())
                .set(f64::from(b.live_weight.unwrap_or(0)));
            if !b.sorry_server {
                gauge!("lb_backend_healthy", labels.clone()).set(flag(b.healthy));
                gauge!("lb_backend_weight", labels.clone()).set(f64::from(b.weight));
                if let Some(w) = b.admin_weight {
                    gauge!("lb_backend_admin_weight", labels.clone()).set(f64::from(w));
                }
                if let Some(p) = b.probes.as_ref().map(|p| p.snapshot()) {
                    counter!("lb_backend_probe_failures_total", labels.clone()).absolute(p.failed);
                    if let Some(l) = p.last_ok_latency_seconds {
                        gauge!("lb_backend_probe_latency_seconds", labels.clone()).set(l);
                    }
                }
            }
            let addr = b.address;
            if let (Some((vip, p)), Some(u)) = (key, usage)
                && let Some((_, bu)) = u.backends.iter().find(|(bk, _)| *bk == (vip, p, addr))
            {
                traffic("backend", &labels, bu);
            }
        }
    }
    for v in &status.vrrp {
        let inst = vec![
            Label::new("instance", v.name.clone()),
            Label::new("interface", v.interface.clone()),
            Label::new("vrid", v.virtual_router_id.to_string()),
        ];
        for state in VRRP_STATES {
            let mut labels = inst.clone();
            labels.push(Label::new("state", state));
            gauge!("lb_vrrp_state", labels).set(flag(v.state == state));
        }
        gauge!("lb_vrrp_priority", inst.clone()).set(f64::from(v.priority));
        counter!("lb_vrrp_transitions_total", inst.clone()).absolute(v.transitions);
        for (reason, n) in &v.rejected {
            let mut labels = inst.clone();
            labels.push(Label::new("reason", reason.clone()));
            counter!("lb_vrrp_adverts_rejected_total", labels).absolute(*n);
        }
    }
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

fn traffic(scope: &str, labels: &[Label], u: &Usage) {
    let name = |m: &str| format!("lb_{scope}_{m}");
    counter!(name("packets_total"), labels.to_vec()).absolute(u.counters.packets);
    counter!(name("bytes_total"), labels.to_vec()).absolute(u.counters.bytes);
    counter!(name("new_flows_total"), labels.to_vec()).absolute(u.counters.new_flows);
    gauge!(name("active_flows"), labels.to_vec()).set(u.active_flows as f64);
    counter!(name("unpinned_flows_total"), labels.to_vec()).absolute(u.counters.unpinned);
    drops(&name("drops_total"), labels, &u.counters);
    if scope == "backend" {
        counter!("lb_backend_syns_total", labels.to_vec()).absolute(u.counters.syn);
        for (answer, n) in [("syn_ack", u.counters.syn_ack), ("rst", u.counters.syn_rst)] {
            let mut l = labels.to_vec();
            l.push(Label::new("answer", answer));
            counter!("lb_backend_syn_answers_total", l).absolute(n);
        }
    }
}

fn drops(name: &str, labels: &[Label], c: &Counters) {
    for r in DropReason::ALL {
        let mut l = labels.to_vec();
        l.push(Label::new("reason", r.name()));
        counter!(name.to_string(), l).absolute(c.drops[r as usize]);
    }
}

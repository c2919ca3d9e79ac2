//! A scrape rendered from fixed daemon state, checked by `promtool check
//! metrics` and for the values operators alert on.

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::*;
use crate::{
    admin::{
        Control,
        testutil::{snapshot, status},
    },
    daemon::{AdminError, AdminRequest, Status, UsageSnapshot},
    datapath::DatapathError,
};

fn promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (/usr/bin/promtool)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n--- scrape:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn has(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "missing `{line}` in:\n{text}"
    );
}

#[test]
fn scrape_passes_promtool_and_carries_the_values() {
    let mut st = status();
    st.services[0].backends[1].admin_weight = Some(0);
    st.services[0].backends[1].live_weight = None;
    st.vrrp[0].rejected.insert("bad_checksum".into(), 4);
    let text = render(&st, Some(&snapshot(2000)));
    promtool(&text);
    let svc = r#"vip="198.18.0.100:80",protocol="tcp""#;
    let b1 = format!(r#"{svc},backend="198.18.1.1:8080""#);
    let b2 = format!(r#"{svc},backend="198.18.1.2:8080""#);
    has(&text, "lb_config_reloads_total 2");
    has(&text, "lb_config_reload_failures_total 1");
    has(&text, "lb_datapath_readable 1");
    has(&text, &format!("lb_service_packets_total{{{svc}}} 2000"));
    has(&text, &format!("lb_service_bytes_total{{{svc}}} 200000"));
    has(&text, &format!("lb_service_new_flows_total{{{svc}}} 200"));
    has(&text, &format!("lb_service_active_flows{{{svc}}} 7"));
    has(
        &text,
        &format!(r#"lb_service_drops_total{{{svc},reason="no_backend"}} 1"#),
    );
    has(
        &text,
        &format!(r#"lb_service_drops_total{{{svc},reason="fragment"}} 0"#),
    );
    has(&text, &format!("lb_service_table_swaps_total{{{svc}}} 3"));
    has(&text, &format!("lb_service_quorum_up{{{svc}}} 1"));
    has(&text, &format!("lb_backend_packets_total{{{b1}}} 1000"));
    has(&text, &format!("lb_backend_active_flows{{{b1}}} 7"));
    has(&text, &format!("lb_backend_healthy{{{b1}}} 1"));
    has(
        &text,
        &format!("lb_backend_probe_latency_seconds{{{b1}}} 0.0012"),
    );
    has(&text, &format!("lb_backend_probe_failures_total{{{b1}}} 0"));
    // One probe of 1.2 ms: over the 1 ms bound, under 2.5 ms, in order.
    let h = "lb_backend_probe_duration_seconds";
    let buckets = [
        format!(r#"{h}_bucket{{{b1},le="0.001"}} 0"#),
        format!(r#"{h}_bucket{{{b1},le="0.0025"}} 1"#),
        format!(r#"{h}_bucket{{{b1},le="5"}} 1"#),
        format!(r#"{h}_bucket{{{b1},le="+Inf"}} 1"#),
        format!("{h}_sum{{{b1}}} 0.0012"),
        format!("{h}_count{{{b1}}} 1"),
    ];
    let at: Vec<usize> = buckets
        .iter()
        .map(|l| {
            text.find(&format!("{l}\n"))
                .unwrap_or_else(|| panic!("{l} in\n{text}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "buckets in order:\n{text}"
    );
    has(&text, &format!("# TYPE {h} histogram"));
    has(&text, &format!("lb_backend_weight{{{b1}}} 100"));
    has(&text, &format!("lb_backend_live_weight{{{b1}}} 100"));
    has(&text, &format!("lb_backend_admin_weight{{{b2}}} 0"));
    has(&text, &format!("lb_backend_live_weight{{{b2}}} 0"));
    has(&text, r#"lb_unmatched_drops_total{reason="malformed"} 0"#);
    let vi = r#"instance="VI_1",interface="eth0",vrid="51""#;
    has(&text, &format!(r#"lb_vrrp_state{{{vi},state="MASTER"}} 1"#));
    has(&text, &format!(r#"lb_vrrp_state{{{vi},state="BACKUP"}} 0"#));
    has(&text, &format!("lb_vrrp_priority{{{vi}}} 150"));
    has(&text, &format!("lb_vrrp_transitions_total{{{vi}}} 1"));
    has(
        &text,
        &format!(r#"lb_vrrp_adverts_rejected_total{{{vi},reason="bad_checksum"}} 4"#),
    );
    assert!(!text.contains("lb_backend_admin_weight{vip=\"198.18.0.100:80\",protocol=\"tcp\",backend=\"198.18.1.1:8080\"}"));
    assert!(!text.contains("lb_sync_"), "no sync metrics without [sync]");
}

#[test]
fn sync_counters_are_read_live_at_each_scrape() {
    use crate::sync::{Counters as C, flows::Skip, wire::Reject};
    let mut st = status();
    let counters = Arc::new(C::default());
    st.sync = Some(crate::daemon::status::SyncStatus(counters.clone()));
    C::add(&counters.flows_sent, 200);
    counters.reject(Reject::Replayed);
    counters.reject(Reject::BadTag);
    counters.reject(Reject::BadTag);
    counters.skip(Skip::LocalBackend);
    let text = render(&st, Some(&snapshot(1)));
    promtool(&text);
    has(&text, "lb_sync_flows_sent_total 200");
    has(
        &text,
        r#"lb_sync_messages_rejected_total{reason="bad_tag"} 2"#,
    );
    has(
        &text,
        r#"lb_sync_messages_rejected_total{reason="replayed"} 1"#,
    );
    has(
        &text,
        r#"lb_sync_messages_rejected_total{reason="unknown_peer"} 0"#,
    );
    has(
        &text,
        r#"lb_sync_flows_skipped_total{reason="local_backend"} 1"#,
    );
    C::add(&counters.flows_applied, 5);
    has(&render(&st, None), "lb_sync_flows_applied_total 5");
}

#[test]
fn unreadable_datapath_is_visible_and_the_rest_still_renders() {
    let text = render(&status(), None);
    promtool(&text);
    has(&text, "lb_datapath_readable 0");
    assert!(!text.contains("lb_service_packets_total{"), "{text}");
    assert!(text.contains("lb_backend_healthy{"), "{text}");
}

/// A daemon that never changes, counting the changes asked of it.
#[derive(Clone)]
struct Fixed {
    status: Arc<Status>,
    requests: Arc<AtomicUsize>,
}

impl Fixed {
    fn new() -> Fixed {
        Fixed {
            status: Arc::new(status()),
            requests: Arc::default(),
        }
    }
}

impl Control for Fixed {
    fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    async fn request(&self, _: AdminRequest) -> Result<String, AdminError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        Err(AdminError::Datapath("read-only fixture".into()))
    }

    async fn usage(&self) -> Result<UsageSnapshot, DatapathError> {
        Ok(snapshot(10))
    }
}

fn get(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_metrics_over_http_read_only() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let task = tokio::spawn(server.serve(Fixed::new()));
    let (ok, post) = tokio::task::spawn_blocking(move || {
        (
            get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            get(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
    })
    .await
    .unwrap();
    task.abort();
    assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    assert!(
        ok.contains("content-type: text/plain; version=0.0.4"),
        "{ok}"
    );
    assert!(ok.contains("\nlb_service_packets_total{"), "{ok}");
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_method_but_get_and_head_is_refused_and_changes_nothing() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let daemon = Fixed::new();
    let task = tokio::spawn(server.serve(daemon.clone()));
    let scrape = move || {
        let r = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        // The body only: the Date header moves between two scrapes.
        r.split_once("\r\n\r\n")
            .expect("a full response")
            .1
            .to_owned()
    };
    let (before, refused, after) = tokio::task::spawn_blocking(move || {
        let before = scrape();
        let mut refused = Vec::new();
        // The admin API's write routes too: a request meant for the admin
        // socket that lands here must not be taken for one.
        for path in [
            "/metrics",
            "/",
            "/v1/reload",
            "/v1/services/198.18.0.100:80/tcp/backends/198.18.1.1:8080/drain",
        ] {
            for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
                let body = r#"{"weight": 0}"#;
                let req = format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                refused.push((format!("{method} {path}"), get(addr, &req)));
            }
        }
        (before, refused, scrape())
    })
    .await
    .unwrap();
    task.abort();
    for (req, resp) in &refused {
        assert!(
            resp.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{req}: {resp}"
        );
        assert!(resp.contains("\r\nallow: GET, HEAD\r\n"), "{req}: {resp}");
        assert!(
            resp.ends_with("\r\n\r\nthe metrics endpoint is read-only\n"),
            "{req}: {resp}"
        );
    }
    assert_eq!(daemon.requests.load(Ordering::Relaxed), 0);
    assert!(before.contains("\nlb_service_packets_total{"), "{before}");
    assert_eq!(before, after);
}

#[test]
fn scrapes_are_sorted_so_two_compare() {
    let a = render(&status(), Some(&snapshot(2000)));
    assert_eq!(a, render(&status(), Some(&snapshot(2000))));
    let names: Vec<&str> = a
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
}

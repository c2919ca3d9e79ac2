//! `lb run` for real, in network namespaces: the admin socket, `lb status`
//! with counters from the XDP datapath, a drain that stops new flows, the
//! metrics endpoint checked by promtool, a second daemon refused, and the
//! socket removed at exit. Needs root (it fails without, never skips).
//!
//! Layout, all in 198.18.0.0/15: client .0.1, lb .0.2 holding the VIP
//! .0.100, backends .1.1 and .1.2 (python's http.server on :8080).

use std::{
    io::Write,
    path::Path,
    process::{Child, Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use lb_core::admin::StatusView;
use lb_testlab::{Lab, require_root};

const VIP: &str = "198.18.0.100:80";
const BE1: &str = "198.18.1.1:8080";
const BE2: &str = "198.18.1.2:8080";

/// The daemon, stopped with SIGTERM (then SIGKILL) when dropped.
struct Daemon(Child);

impl Daemon {
    fn terminate(&mut self) -> Option<i32> {
        // SAFETY: kill(2) of our own child, by its pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.0.try_wait() {
                return s.code();
            }
            sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.terminate();
        }
    }
}

fn lb_in(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_lb")])
        .args(args);
    c
}

fn lb(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lb"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("running lb")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn status(socket: &Path) -> StatusView {
    let out = lb(socket, &["status", "--json"]);
    assert!(out.status.success(), "lb status: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// Bodies of `n` requests from the client through the VIP.
fn requests(lab: &Lab, client: &str, n: usize) -> Vec<String> {
    let out = lab.sh(
        client,
        &format!("for i in $(seq {n}); do curl -s --max-time 2 http://{VIP}/; echo; done"),
    );
    text(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn lb_run_serves_the_admin_api_and_metrics() {
    require_root();
    let mut lab = Lab::new("admin");
    let client = lab.host("client", "198.18.0.1/15");
    let lb_ns = lab.host("lb", "198.18.0.2/15");
    lab.ip(&[
        "-n",
        &lb_ns,
        "addr",
        "add",
        "198.18.0.100/32",
        "dev",
        "eth0",
    ]);
    for (i, be) in [BE1, BE2].iter().enumerate() {
        let ns = lab.host(&format!("be{}", i + 1), &format!("198.18.1.{}/15", i + 1));
        let (addr, port) = be.split_once(':').unwrap();
        lab.http_backend(&ns, addr, port.parse().unwrap(), &format!("be{}", i + 1));
    }

    // Under the lab's tag, so the lab removes it whatever happens.
    let dir = std::env::temp_dir().join(format!("{}-run", lab.ns("admin")));
    std::fs::create_dir_all(&dir).unwrap();
    // A socket directory that does not exist yet: the daemon creates it.
    let socket = dir.join("run/admin.sock");
    let config = dir.join("lb.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    write!(
        f,
        r#"[daemon]
xdp_mode = "generic"
admin_socket = "{}"

[[service]]
name = "e2e"
vip = "{VIP}"
interface = "eth0"
forwarding = "nat"

[service.check]
type = "tcp"
delay_loop = "200ms"

[[service.backend]]
address = "{BE1}"

[[service.backend]]
address = "{BE2}"
"#,
        socket.display()
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("lb.log")).unwrap();
    let config_arg = config.display().to_string();
    let mut daemon = Daemon(
        lb_in(&lb_ns, &["run", "--config", &config_arg])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting lb run"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lb(&socket, &["status"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "lb run did not answer on {}; log:\n{}",
            socket.display(),
            std::fs::read_to_string(dir.join("lb.log")).unwrap_or_default()
        );
        sleep(Duration::from_millis(200));
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let before = requests(&lab, &client, 20);
    assert!(
        before.iter().all(|b| b == "be1" || b == "be2"),
        "{before:?}"
    );
    let v = status(&socket);
    let svc = &v.services[0];
    let u = svc.usage.as_ref().expect("service counters");
    assert!(u.packets >= 20 && u.new_flows >= 20, "{u:?}");
    let per_backend: u64 = svc
        .backends
        .iter()
        .map(|b| b.usage.as_ref().expect("backend counters").new_flows)
        .sum();
    assert_eq!(per_backend, u.new_flows);
    assert!(text(&lb(&socket, &["status"]).stdout).contains(&format!("TCP  {VIP} (e2e)")));

    // A drained backend takes no new flows.
    let out = lb(&socket, &["drain", VIP, BE1]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = requests(&lab, &client, 20);
    assert!(after.iter().all(|b| b == "be2"), "{after:?}");
    let b1 = &status(&socket).services[0].backends[0];
    assert_eq!((b1.admin_weight, b1.live_weight), (Some(0), Some(0)));
    let out = lb(&socket, &["undrain", VIP, BE1]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // drain --wait returns once the last connection to the backend closes.
    let active = |s: &StatusView| -> Vec<u64> {
        s.services[0]
            .backends
            .iter()
            .map(|b| b.usage.as_ref().map_or(0, |u| u.active_flows))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while active(&status(&socket)).iter().any(|n| *n > 0) {
        assert!(
            Instant::now() < deadline,
            "closed HTTP/1.0 connections still count as active"
        );
        sleep(Duration::from_millis(200));
    }
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let (open_tx, open_rx) = std::sync::mpsc::channel();
    let client_ns = client.clone();
    let holder = std::thread::spawn(move || {
        lb_testlab::enter(&client_ns);
        let conn = std::net::TcpStream::connect(VIP).expect("long-lived connection");
        open_tx.send(()).unwrap();
        let _ = close_rx.recv();
        drop(conn);
    });
    open_rx.recv().unwrap();
    sleep(Duration::from_millis(300));
    let counts = active(&status(&socket));
    let held = counts
        .iter()
        .position(|n| *n == 1)
        .expect("one active flow");
    let held_be = [BE1, BE2][held];
    let mut waiter = Command::new(env!("CARGO_BIN_EXE_lb"))
        .arg("--socket")
        .arg(&socket)
        .args(["drain", VIP, held_be, "--wait", "--timeout", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_secs(2));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "drain --wait returned while a connection was open"
    );
    close_tx.send(()).unwrap();
    holder.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status_code = loop {
        if let Some(s) = waiter.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "drain --wait did not return after the connection closed"
        );
        sleep(Duration::from_millis(100));
    };
    let out = waiter.wait_with_output().unwrap();
    assert!(
        status_code.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let _ = lb(&socket, &["undrain", VIP, held_be]);
    let out = lb(&socket, &["drain", VIP, BE1]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let metrics = lab.sh(&lb_ns, "curl -s http://127.0.0.1:9658/metrics");
    let metrics = text(&metrics.stdout);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "{}{}\n{metrics}",
        text(&checked.stdout),
        text(&checked.stderr)
    );
    let be1 = format!(r#"lb_backend_admin_weight{{vip="{VIP}",protocol="tcp",backend="{BE1}"}} 0"#);
    assert!(metrics.lines().any(|l| l == be1), "{metrics}");
    assert!(metrics.contains("\nlb_datapath_readable 1\n"), "{metrics}");
    // Every probe lands in the latency histogram, as it happens.
    let probes = format!(
        r#"lb_backend_probe_duration_seconds_count{{vip="{VIP}",protocol="tcp",backend="{BE2}"}} "#
    );
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&probes))
        .unwrap_or_else(|| panic!("{probes} in {metrics}"))
        .parse()
        .unwrap();
    assert!(count >= 3, "probes every 200 ms for seconds: {count}");

    // A second daemon on the same socket gives up before touching the datapath.
    let second = lb_in(&lb_ns, &["run", "--config", &config_arg])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        text(&second.stderr).contains("another daemon answers on the admin socket"),
        "{}",
        text(&second.stderr)
    );
    assert_eq!(requests(&lab, &client, 2), ["be2", "be2"]);

    // weight, reload, and bad input for each, against the real daemon.
    let out = lb(&socket, &["weight", VIP, BE2, "7"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let b2 = &status(&socket).services[0].backends[1];
    assert_eq!((b2.admin_weight, b2.live_weight), (Some(7), Some(7)));
    for (args, code, needle) in [
        (vec!["weight", VIP, BE2, "70000"], 1, "out of range"),
        (
            vec!["weight", "198.18.0.99:80", BE2, "1"],
            1,
            "no service 198.18.0.99:80/tcp",
        ),
        (
            vec!["drain", VIP, "198.18.1.9:8080"],
            1,
            "has no backend 198.18.1.9:8080",
        ),
        (vec!["undrain", "not-an-address", BE2], 2, "not-an-address"),
        (vec!["weight", VIP, BE2, "-1"], 2, "-1"),
    ] {
        let out = lb(&socket, &args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let b2 = &status(&socket).services[0].backends[1];
    assert_eq!(
        b2.admin_weight,
        Some(7),
        "a refused change changed something"
    );
    let out = lb(&socket, &["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("config reloaded"),
        "{}",
        text(&out.stdout)
    );
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace("[[service]]", "[[service]]\ncolour = \"red\""),
    )
    .unwrap();
    let out = lb(&socket, &["reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("service[0].colour: unknown key"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        requests(&lab, &client, 2).len(),
        2,
        "a rejected reload stopped the service"
    );
    std::fs::write(&config, good).unwrap();

    assert_eq!(daemon.terminate(), Some(0));
    assert!(!socket.exists(), "the socket is removed at exit");
}

/// `lb run` with an IPv6 service (nat, 80 → 8080, health-checked over
/// IPv6): traffic through the VIP, counters and active flows in `lb
/// status`, a drain by IPv6 address. Layout: 2001:2::/64 (RFC 5180) beside the IPv4 one, client
/// ::1, lb ::2 holding the VIP ::100, backends ::11 and ::12.
#[test]
fn lb_run_balances_an_ipv6_service() {
    require_root();
    const VIP6: &str = "[2001:2::100]:80";
    const BACKENDS6: [&str; 2] = ["[2001:2::11]:8080", "[2001:2::12]:8080"];
    let mut lab = Lab::new("admin6");
    let add6 = |lab: &Lab, ns: &str, cidr: &str| {
        lab.ip(&["-n", ns, "addr", "add", cidr, "dev", "eth0", "nodad"]);
    };
    let client = lab.host("client", "198.18.0.1/15");
    add6(&lab, &client, "2001:2::1/64");
    let lb_ns = lab.host("lb", "198.18.0.2/15");
    add6(&lab, &lb_ns, "2001:2::2/64");
    add6(&lab, &lb_ns, "2001:2::100/128");
    for i in 1..=2 {
        let ns = lab.host(&format!("be{i}"), &format!("198.18.1.{i}/15"));
        add6(&lab, &ns, &format!("2001:2::1{i}/64"));
        lab.http_backend(&ns, &format!("2001:2::1{i}"), 8080, &format!("be{i}"));
    }
    let dir = std::env::temp_dir().join(format!("{}-run", lab.ns("admin6")));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("admin.sock");
    let config = dir.join("lb.toml");
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
xdp_mode = "generic"
admin_socket = "{}"
metrics_listen = "127.0.0.1:0"

[[service]]
name = "v6"
vip = "{VIP6}"
interface = "eth0"
forwarding = "nat"

[service.check]
type = "tcp"
delay_loop = "1s"

[[service.backend]]
address = "{}"

[[service.backend]]
address = "{}"
"#,
            socket.display(),
            BACKENDS6[0],
            BACKENDS6[1]
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("lb.log")).unwrap();
    let config_arg = config.display().to_string();
    let _daemon = Daemon(
        lb_in(&lb_ns, &["run", "--config", &config_arg])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting lb run"),
    );
    let requests = |n: usize| -> Vec<String> {
        let out = lab.sh(
            &client,
            &format!("for i in $(seq {n}); do curl -gs --max-time 2 http://{VIP6}/; echo; done"),
        );
        text(&out.stdout).lines().map(str::to_string).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = lb(&socket, &["status", "--json"]).status.success()
            && status(&socket).services[0]
                .backends
                .iter()
                .all(|b| b.healthy);
        if up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lb run did not bring the IPv6 backends up; log:\n{}",
            std::fs::read_to_string(dir.join("lb.log")).unwrap_or_default()
        );
        sleep(Duration::from_millis(200));
    }
    let seen = requests(20);
    assert!(seen.iter().all(|b| b == "be1" || b == "be2"), "{seen:?}");
    assert!(seen.iter().any(|b| b == "be1") && seen.iter().any(|b| b == "be2"));
    let u = status(&socket).services[0]
        .usage
        .clone()
        .expect("service counters");
    assert!(u.packets >= 20 && u.new_flows >= 20, "{u:?}");

    // Active flows are counted from the IPv6 connection table.
    let active = || -> u64 {
        status(&socket).services[0]
            .backends
            .iter()
            .map(|b| b.usage.as_ref().map_or(0, |u| u.active_flows))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while active() > 0 {
        assert!(Instant::now() < deadline, "closed connections still active");
        sleep(Duration::from_millis(200));
    }
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let (open_tx, open_rx) = std::sync::mpsc::channel();
    let client_ns = client.clone();
    let holder = std::thread::spawn(move || {
        lb_testlab::enter(&client_ns);
        let conn = std::net::TcpStream::connect(VIP6).expect("long-lived connection");
        open_tx.send(()).unwrap();
        let _ = close_rx.recv();
        drop(conn);
    });
    open_rx.recv().unwrap();
    sleep(Duration::from_millis(300));
    assert_eq!(active(), 1);
    close_tx.send(()).unwrap();
    holder.join().unwrap();

    let out = lb(&socket, &["drain", VIP6, BACKENDS6[0]]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = requests(10);
    assert!(after.iter().all(|b| b == "be2"), "{after:?}");
}

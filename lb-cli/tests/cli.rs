//! The `lb` operator commands against an admin server backed by a fake
//! daemon: output, exit codes, `drain --wait`, and who may use the socket.
//!
//! The permission tests run the client as `nobody` with setpriv and need
//! root: without it they fail, they do not skip.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Output,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use lb_core::{
    admin::{AdminServer, Api, Control, StatusView},
    config::Protocol,
    daemon::{
        AdminError, AdminRequest, BackendStatus, ServiceStatus, Status, Usage, UsageSnapshot,
        VrrpStatus,
    },
    datapath::DatapathError,
};
use lb_ebpf::abi::Counters;
use tokio::task::JoinHandle;

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
/// Its flows end 1.5 s after it is drained.
const B1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 8080);
/// Its 5 flows never end.
const B2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 8080);
const NOBODY: u32 = 65534;

fn backend(a: SocketAddrV4) -> BackendStatus {
    BackendStatus {
        address: a.into(),
        weight: 10,
        admin_weight: None,
        live_weight: Some(10),
        healthy: true,
        reason: Some("tcp connect ok".into()),
        probes: None,
        sorry_server: false,
    }
}

#[derive(Default)]
struct State {
    status: Status,
    requests: Vec<AdminRequest>,
    b1_drained_at: Option<Instant>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn new() -> Fake {
        let f = Fake::default();
        f.0.lock().unwrap().status = Status {
            config_path: "/etc/lb/lb.toml".into(),
            reloads: 0,
            reload_failures: 0,
            services: vec![ServiceStatus {
                name: Some("portal".into()),
                vip: VIP.into(),
                protocol: "tcp".into(),
                interface: "eth0".into(),
                forwarding: "nat".into(),
                scheduler: "maglev".into(),
                quorum_up: true,
                sorry: false,
                table_generation: 1,
                removing: false,
                idle_timeout_seconds: 900,
                backends: vec![backend(B1), backend(B2)],
            }],
            vrrp: vec![VrrpStatus {
                name: "VI_1".into(),
                interface: "eth0".into(),
                virtual_router_id: 51,
                state: "BACKUP".into(),
                priority: 100,
                master: None,
                transitions: 0,
                rejected: BTreeMap::new(),
            }],
            sync: None,
        };
        f
    }

    fn requests(&self) -> Vec<AdminRequest> {
        self.0.lock().unwrap().requests.clone()
    }
}

impl Control for Fake {
    fn status(&self) -> Arc<Status> {
        Arc::new(self.0.lock().unwrap().status.clone())
    }

    async fn request(&self, r: AdminRequest) -> Result<String, AdminError> {
        let mut st = self.0.lock().unwrap();
        match r {
            AdminRequest::SetWeight { weight, .. } if weight > 65_535 => {
                return Err(AdminError::WeightRange(weight));
            }
            AdminRequest::Drain { backend, .. } if backend == B1.into() => {
                st.b1_drained_at = Some(Instant::now());
            }
            AdminRequest::Reload => {
                return Err(AdminError::Reload(
                    "lb.toml:3:1: services[0].vip: not an address".into(),
                ));
            }
            _ => {}
        }
        st.requests.push(r.clone());
        Ok(format!("done: {r:?}"))
    }

    async fn usage(&self) -> Result<UsageSnapshot, DatapathError> {
        let st = self.0.lock().unwrap();
        let b1_flows = match st.b1_drained_at {
            Some(t) if t.elapsed() > Duration::from_millis(1500) => 0,
            _ => 3,
        };
        let u = |flows| Usage {
            counters: Counters {
                packets: 100,
                bytes: 10_000,
                ..Counters::default()
            },
            active_flows: flows,
        };
        Ok(UsageSnapshot {
            vips: vec![((VIP.into(), Protocol::Tcp), u(b1_flows + 5))],
            backends: vec![
                ((VIP.into(), Protocol::Tcp, B1.into()), u(b1_flows)),
                ((VIP.into(), Protocol::Tcp, B2.into()), u(5)),
            ],
            unmatched: Counters::default(),
        })
    }
}

/// A directory (mode 0755, so `nobody` can reach the socket's own mode
/// check), removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Daemon {
    fake: Fake,
    socket: PathBuf,
    task: JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn daemon() -> Daemon {
    let dir = TempDir::new();
    let socket = dir.0.join("admin.sock");
    let server = AdminServer::bind(&socket).await.unwrap();
    let fake = Fake::new();
    let api = Api::with_rate_windows(
        fake.clone(),
        Duration::from_millis(50),
        Duration::from_secs(60),
    );
    let task = tokio::spawn(server.serve(api));
    Daemon {
        fake,
        socket,
        task,
        _dir: dir,
    }
}

async fn lb_as(uid: Option<u32>, socket: &Path, args: &[&str]) -> Output {
    let lb = env!("CARGO_BIN_EXE_lb");
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = tokio::process::Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                lb.into(),
            ]);
            c
        }
        None => tokio::process::Command::new(lb),
    };
    cmd.env_remove("LB_ADMIN_SOCKET")
        .arg("--socket")
        .arg(socket)
        .args(args);
    cmd.output().await.expect("running lb")
}

async fn lb(socket: &Path, args: &[&str]) -> Output {
    lb_as(None, socket, args).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_table_and_json() {
    let d = daemon().await;
    let out = lb(&d.socket, &["status"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("TCP  198.18.0.100:80 (portal)"), "{table}");
    assert!(table.contains("  -> 198.18.1.2:8080"), "{table}");
    assert!(table.contains("VI_1"), "{table}");

    let out = lb(&d.socket, &["status", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: StatusView = serde_json::from_slice(&out.stdout).unwrap();
    let b2 = &v.services[0].backends[1];
    assert_eq!(b2.usage.as_ref().unwrap().active_flows, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_and_their_errors() {
    let d = daemon().await;
    let vip = VIP.to_string();
    let (b1, b2) = (B1.to_string(), B2.to_string());
    for args in [
        vec!["drain", &vip, &b2],
        vec!["undrain", &format!("{vip}/tcp"), &b2],
        vec!["weight", &vip, &b2, "7"],
    ] {
        let out = lb(&d.socket, &args).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(d.fake.requests().len(), 3);

    let out = lb(&d.socket, &["weight", &vip, &b1, "70000"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "lb: weight 70000 is out of range 0..=65535\n"
    );
    let out = lb(&d.socket, &["reload"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("lb.toml:3:1: services[0].vip"));
    // Usage errors are clap's: exit 2, nothing sent.
    let out = lb(&d.socket, &["weight", "198.18.0.100", &b1, "1"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = lb(&d.socket, &["undrain", &vip, &b1, "--timeout", "1s"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(d.fake.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_wait_ends_at_zero_flows_or_fails_at_the_timeout() {
    let d = daemon().await;
    let vip = VIP.to_string();
    let out = lb(
        &d.socket,
        &["drain", &vip, &B1.to_string(), "--wait", "--timeout", "20s"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let progress = text(&out.stderr);
    assert!(
        progress.contains("198.18.1.1:8080: 3 active flows remaining"),
        "{progress}"
    );
    assert!(text(&out.stdout).contains("drained, no active flows"));

    let start = Instant::now();
    let out = lb(
        &d.socket,
        &["drain", &vip, &B2.to_string(), "--wait", "--timeout", "2s"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(start.elapsed() < Duration::from_secs(10));
    let err = text(&out.stderr);
    assert!(
        err.contains("lb: timed out after 2s with 5 active flows on 198.18.1.2:8080"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_daemon_is_one_clear_line() {
    let dir = TempDir::new();
    let socket = dir.0.join("admin.sock");
    let out = lb(&socket, &["status"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "lb: cannot reach the daemon at {}: no such socket (is 'lb run' running?)\n",
            socket.display()
        )
    );
    // LB_ADMIN_SOCKET is the default for --socket.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lb"))
        .env("LB_ADMIN_SOCKET", &socket)
        .arg("reload")
        .output()
        .await
        .unwrap();
    assert!(text(&out.stderr).contains(&socket.display().to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn other_users_are_refused() {
    lb_testlab::require_root();
    let d = daemon().await;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = lb_as(Some(NOBODY), &d.socket, &["status"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("permission denied (the socket is mode 0600"),
        "{}",
        text(&out.stderr)
    );

    // Even with the socket's mode loosened, the daemon checks the peer.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [
        vec!["status"],
        vec!["drain", "198.18.0.100:80", "198.18.1.1:8080"],
    ] {
        let out = lb_as(Some(NOBODY), &d.socket, &args).await;
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            text(&out.stderr),
            format!(
                "lb: uid {NOBODY} may not use the admin API: only root and the daemon's user (uid 0) may\n"
            )
        );
    }
    assert_eq!(d.fake.requests(), vec![]);
    // Root still may.
    let out = lb(&d.socket, &["drain", "198.18.0.100:80", "198.18.1.1:8080"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `lb check-config` (and so `lb run` and a reload, which read the config
/// the same way) refuses a script check whose directory anyone may write,
/// naming the key and the directory, and accepts it once that is fixed;
/// then one its `script_user` may not execute.
#[test]
fn check_config_refuses_a_script_other_users_could_change() {
    let dir = TempDir::new();
    let scripts = dir.0.join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    let script = scripts.join("check.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&scripts, std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = dir.0.join("lb.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nvip = \"198.18.0.100:80\"\ninterface = \"lo\"\nforwarding = \"dr\"\n\n\
             [service.check]\ntype = \"script\"\ncommand = [\"{}\"]\n\n\
             [[service.backend]]\naddress = \"198.18.1.1:80\"\n",
            script.display()
        ),
    )
    .unwrap();
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lb"))
            .arg("check-config")
            .arg(&config)
            .output()
            .expect("running lb")
    };
    let out = check();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let expected = format!(
        "{}:8:11: service[0].check.command: {}: {} is writable by a group other than root's or by others (mode 0777",
        config.display(),
        script.display(),
        scripts.display()
    );
    assert!(
        text(&out.stderr).starts_with(&expected),
        "{}",
        text(&out.stderr)
    );
    std::fs::set_permissions(&scripts, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = check();
    assert!(out.status.success(), "{}", text(&out.stderr));

    // With a script user, the script must be one that user can run.
    let body = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("[daemon]\nscript_user = \"nobody\"\n{body}"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o744)).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let expected = format!(
        "{}:10:11: service[0].check.command: {}: script_user \"nobody\" (uid {NOBODY}, gid ",
        config.display(),
        script.display(),
    );
    assert!(
        text(&out.stderr).starts_with(&expected)
            && text(&out.stderr).contains("cannot execute the script (mode 0744"),
        "{}",
        text(&out.stderr)
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = check();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

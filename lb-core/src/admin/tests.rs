//! The admin API against a fake daemon: routing, validation (nothing reaches
//! the daemon, or nothing changes, when a request is refused), status
//! merging, and the socket file's life cycle.

use std::{
    os::unix::fs::{FileTypeExt, PermissionsExt},
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper::{Method, StatusCode};

use super::{
    routes::Route,
    testutil::{B1, B2, TempDir, VIP, snapshot, status},
    *,
};
use crate::{
    config::Protocol,
    daemon::{AdminError, AdminRequest, Status, UsageSnapshot},
    datapath::DatapathError,
};

#[derive(Default)]
struct FakeState {
    status: Status,
    requests: Vec<AdminRequest>,
    usage_reads: u64,
    usage_fails: bool,
}

/// Answers like the daemon: refuses unknown services and backends and
/// weights over 65535, and changes nothing when it refuses.
#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn new() -> Self {
        let f = Fake::default();
        f.0.lock().unwrap().status = status();
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
        let (vip, protocol, backend, weight) = match r {
            AdminRequest::Reload => {
                st.requests.push(r);
                return Ok("config reloaded".into());
            }
            AdminRequest::Drain {
                vip,
                protocol,
                backend,
            } => (vip, protocol, backend, Some(0)),
            AdminRequest::Undrain {
                vip,
                protocol,
                backend,
            } => (vip, protocol, backend, None),
            AdminRequest::SetWeight {
                vip,
                protocol,
                backend,
                weight,
            } => {
                if weight > 65_535 {
                    return Err(AdminError::WeightRange(weight));
                }
                (vip, protocol, backend, Some(weight))
            }
        };
        let svc = st
            .status
            .services
            .iter_mut()
            .find(|s| s.vip == vip && s.protocol == protocol.to_string())
            .ok_or(AdminError::UnknownVip(vip, protocol))?;
        let b = svc
            .backends
            .iter_mut()
            .find(|b| b.address == backend)
            .ok_or(AdminError::UnknownBackend(vip, protocol, backend))?;
        b.admin_weight = weight;
        st.requests.push(r);
        Ok(format!("{vip}/{protocol} backend {backend} changed"))
    }

    async fn usage(&self) -> Result<UsageSnapshot, DatapathError> {
        let mut st = self.0.lock().unwrap();
        if st.usage_fails {
            return Err(DatapathError::ThreadGone);
        }
        st.usage_reads += 1;
        // Every read sees 1000 more packets, so rates are non-zero.
        let n = st.usage_reads * 1000;
        Ok(snapshot(n))
    }
}

fn api(fake: &Fake) -> Api<Fake> {
    Api::with_rate_windows(
        fake.clone(),
        Duration::from_millis(20),
        Duration::from_secs(60),
    )
}

fn backend_path(action: &str) -> String {
    format!("/v1/services/{VIP}/tcp/backends/{B1}/{action}")
}

async fn refused(api: &Api<Fake>, method: Method, path: &str, body: &str) -> StatusCode {
    match api.handle(&method, path, body.as_bytes()).await {
        Ok(r) => panic!("{method} {path} {body:?} was accepted: {r:?}"),
        Err(e) => e.status(),
    }
}

#[test]
fn routes_parse() {
    let get = Method::GET;
    assert_eq!(Route::parse(&get, "/v1/status").unwrap(), Route::Status);
    assert_eq!(Route::parse(&get, "/v1/reload/").unwrap(), Route::Reload);
    assert_eq!(
        Route::parse(
            &get,
            &format!("/v1/services/{VIP}/udp/backends/{B2}/weight")
        )
        .unwrap(),
        Route::Backend {
            vip: VIP.into(),
            protocol: Protocol::Udp,
            backend: B2.into(),
            action: routes::BackendAction::Weight,
        }
    );
    for (path, status) in [
        ("/v2/status", StatusCode::NOT_FOUND),
        ("v1/status", StatusCode::NOT_FOUND),
        (
            "/v1/services/198.18.0.100:80/tcp/backends/198.18.1.1:8080/kill",
            StatusCode::NOT_FOUND,
        ),
        (
            "/v1/services/198.18.0.100/tcp/backends/198.18.1.1:8080/drain",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/services/198.18.0.100:80/sctp/backends/198.18.1.1:8080/drain",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/services/198.18.0.100:80/tcp/backends/web1/drain",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        assert_eq!(
            Route::parse(&get, path).unwrap_err().status(),
            status,
            "{path}"
        );
    }
}

#[tokio::test]
async fn writes_reach_the_daemon() {
    let fake = Fake::new();
    let api = api(&fake);
    let (vip, backend, protocol) = (VIP.into(), B1.into(), Protocol::Tcp);
    for (method, action, body) in [
        (Method::POST, "drain", ""),
        (Method::POST, "undrain", "{}"),
        (Method::PUT, "weight", r#"{"weight": 65535}"#),
    ] {
        let r = api
            .handle(&method, &backend_path(action), body.as_bytes())
            .await;
        assert!(matches!(r, Ok(Reply::Done(_))), "{action}: {r:?}");
    }
    let r = api.handle(&Method::POST, "/v1/reload", b"").await;
    assert!(matches!(r, Ok(Reply::Done(_))), "{r:?}");
    assert_eq!(
        fake.requests(),
        vec![
            AdminRequest::Drain {
                vip,
                protocol,
                backend
            },
            AdminRequest::Undrain {
                vip,
                protocol,
                backend
            },
            AdminRequest::SetWeight {
                vip,
                protocol,
                backend,
                weight: 65535
            },
            AdminRequest::Reload,
        ]
    );
}

#[tokio::test]
async fn invalid_writes_change_nothing() {
    let fake = Fake::new();
    let api = api(&fake);
    let weight = backend_path("weight");
    let cases = [
        (Method::PUT, weight.as_str(), "", StatusCode::BAD_REQUEST),
        (
            Method::PUT,
            &weight,
            "{\"weight\": ",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            &weight,
            r#"{"weight": -1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            &weight,
            r#"{"weight": "5"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            &weight,
            r#"{"weight": 5, "wait": 1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            &weight,
            r#"{"weight": 65536}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            &weight,
            r#"{"weight": 5}"#,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::POST,
            "/v1/reload",
            r#"{"force": true}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/reload",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::DELETE,
            "/v1/status",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, path, body, status) in cases {
        assert_eq!(
            refused(&api, method, path, body).await,
            status,
            "{path} {body}"
        );
    }
    let unknown_vip = format!("/v1/services/198.18.0.101:80/tcp/backends/{B1}/drain");
    let unknown_proto = format!("/v1/services/{VIP}/udp/backends/{B1}/drain");
    let unknown_backend = format!("/v1/services/{VIP}/tcp/backends/198.18.1.9:8080/drain");
    for path in [&unknown_vip, &unknown_proto, &unknown_backend] {
        assert_eq!(
            refused(&api, Method::POST, path, "").await,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(fake.requests(), vec![]);
    assert!(
        fake.status().services[0]
            .backends
            .iter()
            .all(|b| b.admin_weight.is_none())
    );
}

#[tokio::test]
async fn status_merges_counters_and_rates() {
    let fake = Fake::new();
    let api = api(&fake);
    let Ok(Reply::Status(v)) = api.handle(&Method::GET, "/v1/status", b"").await else {
        panic!("status failed");
    };
    // The first request waits for a second sample to compute rates.
    assert_eq!(fake.0.lock().unwrap().usage_reads, 2);
    let window = v.rate_window_seconds.expect("a rate window");
    let svc = &v.services[0];
    let u = svc.usage.as_ref().expect("service usage");
    assert_eq!((u.packets, u.bytes, u.active_flows), (2000, 200_000, 7));
    assert_eq!(u.drops["no_backend"], 1);
    assert_eq!(u.drops.len(), lb_ebpf::abi::DROP_REASONS);
    let pps = u.packets_per_second.expect("packets/s");
    assert!((pps - 1000.0 / window).abs() < 1e-6, "{pps} over {window}");
    let b = svc.backends[0].usage.as_ref().expect("backend usage");
    assert_eq!(b.packets, 1000);
    assert!(b.packets_per_second.is_some());
    assert_eq!(v.vrrp[0].state, "MASTER");
    assert_eq!(v.usage_error, None);

    fake.0.lock().unwrap().usage_fails = true;
    let Ok(Reply::Status(v)) = api.handle(&Method::GET, "/v1/status", b"").await else {
        panic!("status failed");
    };
    assert!(v.usage_error.is_some());
    assert!(v.services[0].usage.is_none());
    assert_eq!(v.services[0].backends.len(), 2);
}

#[test]
fn only_root_and_the_owner_may_use_the_api() {
    assert!(may_use(0, 1000));
    assert!(may_use(1000, 1000));
    assert!(!may_use(65534, 1000));
    assert!(!may_use(65534, 0));
}

#[test]
fn errors_are_json_with_allow_on_405() {
    let r = response(Err(ApiError::MethodNotAllowed {
        method: Method::GET,
        path: "/v1/reload".into(),
        allow: Method::POST,
    }));
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(r.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn client_and_server_over_the_socket() {
    let dir = TempDir::new("admin");
    // The directory is created when missing.
    let path = dir.0.join("run/admin.sock");
    let server = AdminServer::bind(&path).await.unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let fake = Fake::new();
    let task = tokio::spawn(server.serve(api(&fake)));
    let client = Client::new(&path);
    let msg = client
        .drain(VIP.into(), Protocol::Tcp, B1.into())
        .await
        .unwrap();
    assert!(msg.contains("198.18.1.1:8080"), "{msg}");
    client
        .set_weight(VIP.into(), Protocol::Tcp, B2.into(), 5)
        .await
        .unwrap();
    let v = client.status().await.unwrap();
    assert_eq!(v.services[0].backends[0].admin_weight, Some(0));
    assert_eq!(v.services[0].backends[1].admin_weight, Some(5));
    let e = client
        .set_weight(VIP.into(), Protocol::Tcp, B2.into(), 70_000)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused { status: 400, message } if message.contains("out of range")),
        "{e}"
    );

    // A second daemon must not take over a live socket.
    let e = AdminServer::bind(&path).await.err().expect("bind refused");
    assert!(matches!(e, SocketError::InUse(_)), "{e}");

    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(!path.exists(), "the socket is removed with the server");
    let e = client.reload().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "cannot reach the daemon at {}: no such socket (is 'lb run' running?)",
            path.display()
        )
    );
}

#[tokio::test]
async fn stale_sockets_are_replaced_and_other_files_kept() {
    let dir = TempDir::new("admin");
    let path = dir.0.join("admin.sock");
    // A socket left behind by a daemon that died: nobody accepts on it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let e = Client::new(&path).status().await.unwrap_err();
    assert!(
        e.to_string()
            .contains(": connection refused (is 'lb run' running?)"),
        "{e}"
    );
    let server = AdminServer::bind(&path).await.unwrap();
    assert_eq!(server.path(), path);
    drop(server);

    let file = dir.0.join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let e = AdminServer::bind(&file).await.err().expect("refused");
    assert!(matches!(e, SocketError::NotASocket(_)), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    // A symlink is not followed: its target keeps its content and mode.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.0.join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let e = AdminServer::bind(&link).await.err().expect("refused");
    assert!(matches!(e, SocketError::NotASocket(_)), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
}

#[tokio::test]
async fn socket_directories_others_may_write_to_are_refused() {
    let dir = TempDir::new("admin");
    // Created directories are writable by the daemon's user only.
    let path = dir.0.join("new/run/admin.sock");
    drop(AdminServer::bind(&path).await.unwrap());
    for d in ["new", "new/run"] {
        let mode = std::fs::metadata(dir.0.join(d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o022, 0, "{d}: mode {mode:o}");
    }

    let open = dir.0.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    // In it, or anywhere below it: whoever may rename entries of `open` may
    // swap the directory that holds the socket.
    for path in [open.join("admin.sock"), open.join("run/admin.sock")] {
        let e = AdminServer::bind(&path).await.err().expect("refused");
        assert!(
            matches!(&e, SocketError::UnsafeDir { dir, .. } if *dir == open),
            "{e}"
        );
        assert!(!path.exists(), "{} created", path.display());
    }
    // Sticky, like /tmp: only an entry's owner may remove or rename it.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    drop(AdminServer::bind(&open.join("admin.sock")).await.unwrap());
}

#[tokio::test]
async fn socket_directories_of_other_users_are_refused() {
    lb_testlab::require_root();
    let dir = TempDir::new("admin");
    let theirs = dir.0.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let e = AdminServer::bind(&theirs.join("admin.sock"))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        e.to_string(),
        format!(
            "admin socket directory {} is owned by uid 65534: another user could put their own socket in its place; use a directory only root or the daemon's user may write to, like /run/lb",
            theirs.display()
        )
    );
}

/// Sends `request` as is over the socket and returns the whole answer.
async fn raw(path: &std::path::Path, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
    // The server may answer and close before it read everything: a failed
    // write is fine as long as the answer came.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn request_bodies_over_the_limit_are_refused() {
    let dir = TempDir::new("admin");
    let path = dir.0.join("admin.sock");
    let server = AdminServer::bind(&path).await.unwrap();
    let fake = Fake::new();
    let task = tokio::spawn(server.serve(api(&fake)));
    // A valid change, padded past the limit with JSON whitespace.
    let body = format!("{{\"weight\": 0}}{}", " ".repeat(routes::MAX_BODY));
    let route = backend_path("weight");
    let declared = format!(
        "PUT {route} HTTP/1.1\r\nHost: lb\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (half1, half2) = body.split_at(body.len() / 2);
    let chunked = format!(
        "PUT {route} HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{half1}\r\n{:x}\r\n{half2}\r\n0\r\n\r\n",
        half1.len(),
        half2.len()
    );
    for request in [declared, chunked] {
        let answer = raw(&path, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(
            answer.contains(&format!(
                "{{\"error\":\"request body larger than {} bytes\"}}",
                routes::MAX_BODY
            )),
            "{answer}"
        );
    }
    assert_eq!(fake.requests(), vec![]);
    // The same change within the limit goes through.
    let small = format!(
        "PUT {route} HTTP/1.1\r\nHost: lb\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{{\"weight\": 0}}"
    );
    let answer = raw(&path, small.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(fake.requests().len(), 1);
    task.abort();
}

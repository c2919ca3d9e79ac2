//! The admin API's HTTP/1.1 server on the unix socket.
//!
//! Every connection's peer is identified by SO_PEERCRED: only root and the
//! daemon's own user may read or write (the socket's mode already keeps
//! others out; this holds even if someone loosens it). Writes are logged with
//! the caller's uid and pid.

use std::{convert::Infallible, path::Path, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{ALLOW, CONTENT_TYPE, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};

use super::{
    control::Control,
    http,
    routes::{Api, ApiError, MAX_BODY, Reply},
    socket::{self, SocketError, SocketFile},
};

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug)]
struct Peer {
    uid: u32,
    pid: Option<i32>,
}

/// Root and the socket's owner may use the API.
pub fn may_use(peer_uid: u32, owner_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == owner_uid
}

/// The bound admin socket; serve it with [`AdminServer::serve`]. Dropping
/// it removes the socket file.
pub struct AdminServer {
    listener: UnixListener,
    file: SocketFile,
}

impl AdminServer {
    /// Binds the socket (see [`socket::bind`]).
    pub async fn bind(path: &Path) -> Result<AdminServer, SocketError> {
        let (listener, file) = socket::bind(path).await?;
        Ok(AdminServer { listener, file })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Answers connections until the future is dropped.
    pub async fn serve<C: Control>(self, api: Api<C>) {
        let api = Arc::new(api);
        let owner = self.file.owner();
        tracing::info!(path = %self.path().display(), "admin API listening");
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, api.clone(), owner));
                }
                Err(e) => http::accept_failed("admin socket", e).await,
            }
        }
    }
}

async fn connection<C: Control>(stream: UnixStream, api: Arc<Api<C>>, owner: u32) {
    let peer = match stream.peer_cred() {
        Ok(c) => Peer {
            uid: c.uid(),
            pid: c.pid(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "admin connection without peer credentials; closed");
            return;
        }
    };
    let service = service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(respond(&api, peer, owner, req).await) }
    });
    let conn = http::http1().serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(uid = peer.uid, error = %e, "admin connection ended with an error");
    }
}

async fn respond<C: Control>(
    api: &Api<C>,
    peer: Peer,
    owner: u32,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let result = if !may_use(peer.uid, owner) {
        Err(ApiError::Forbidden {
            uid: peer.uid,
            owner,
        })
    } else {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => api.handle(&method, &path, &body.to_bytes()).await,
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge),
            Err(e) => Err(ApiError::BadRequest(format!(
                "reading the request body: {e}"
            ))),
        }
    };
    log(&method, &path, peer, &result);
    response(result)
}

fn log(method: &Method, path: &str, peer: Peer, result: &Result<Reply, ApiError>) {
    let (uid, pid) = (peer.uid, peer.pid.unwrap_or(0));
    let read = *method == Method::GET || *method == Method::HEAD;
    match result {
        Err(e @ ApiError::Forbidden { .. }) => {
            tracing::warn!(uid, pid, %method, path, "admin request refused: {e}");
        }
        Ok(Reply::Done(msg)) if !read => {
            tracing::info!(uid, pid, %method, path, "admin write: {msg}");
        }
        Err(e) if !read => tracing::warn!(uid, pid, %method, path, "admin write refused: {e}"),
        _ => tracing::debug!(uid, pid, %method, path, "admin read"),
    }
}

/// Turns a result into JSON: the status view, `{"message": ...}` for a
/// change, `{"error": ...}` for a refusal.
pub fn response(result: Result<Reply, ApiError>) -> Response<Full<Bytes>> {
    let (status, body, allow) = match result {
        Ok(Reply::Status(v)) => (StatusCode::OK, serde_json::to_vec(&v), None),
        Ok(Reply::Done(message)) => (
            StatusCode::OK,
            serde_json::to_vec(&serde_json::json!({ "message": message })),
            None,
        ),
        Err(e) => (
            e.status(),
            serde_json::to_vec(&serde_json::json!({ "error": e.to_string() })),
            match &e {
                ApiError::MethodNotAllowed { allow, .. } => Some(allow.clone()),
                _ => None,
            },
        ),
    };
    let (status, body) = match body {
        Ok(b) => (status, b),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{{\"error\":\"encoding the reply: {e}\"}}").into_bytes(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(allow) = allow
        && let Ok(v) = HeaderValue::from_str(allow.as_str())
    {
        headers.insert(ALLOW, v);
    }
    resp
}

//! A client of the admin API for the `lb` command: one HTTP/1.1 request per
//! connection over the unix socket.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request,
    header::{CONTENT_TYPE, HOST},
};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, de::DeserializeOwned};
use tokio::net::UnixStream;

use super::view::StatusView;
use crate::config::Protocol;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    // The causes are part of the one-line messages rather than `#[source]`,
    // so printing the error chain does not repeat them.
    #[error("cannot reach the daemon at {}: {} (is 'lb run' running?)", path.display(), describe(cause))]
    Connect { path: PathBuf, cause: io::Error },
    #[error("talking to the daemon at {}: {cause}", path.display())]
    Http { path: PathBuf, cause: hyper::Error },
    /// The daemon refused the request; nothing changed.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("unexpected reply from the daemon (HTTP {status}): {reason}")]
    BadReply { status: u16, reason: String },
}

/// io::Error's text with the "(os error N)" noise left out, and advice for
/// the case operators hit most.
fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such socket".into(),
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (the socket is mode 0600: run as root or as the daemon's user)"
                .into()
        }
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_lowercase(),
                None => s,
            }
        }
    }
}

#[derive(Deserialize)]
struct Message {
    message: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Talks to the daemon listening on one socket.
#[derive(Clone, Debug)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Client { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.call(Method::GET, "/v1/status".into(), None).await
    }

    /// Drains a backend (weight 0: no new flows, existing flows finish).
    pub async fn drain(
        &self,
        vip: SocketAddr,
        protocol: Protocol,
        backend: SocketAddr,
    ) -> Result<String, ClientError> {
        let path = backend_path(vip, protocol, backend, "drain");
        self.message(Method::POST, path, None).await
    }

    /// Returns a backend to its configured weight.
    pub async fn undrain(
        &self,
        vip: SocketAddr,
        protocol: Protocol,
        backend: SocketAddr,
    ) -> Result<String, ClientError> {
        let path = backend_path(vip, protocol, backend, "undrain");
        self.message(Method::POST, path, None).await
    }

    pub async fn set_weight(
        &self,
        vip: SocketAddr,
        protocol: Protocol,
        backend: SocketAddr,
        weight: u32,
    ) -> Result<String, ClientError> {
        let path = backend_path(vip, protocol, backend, "weight");
        let body = serde_json::json!({ "weight": weight }).to_string();
        self.message(Method::PUT, path, Some(body)).await
    }

    /// Re-reads the config, as SIGHUP does.
    pub async fn reload(&self) -> Result<String, ClientError> {
        self.message(Method::POST, "/v1/reload".into(), None).await
    }

    async fn message(
        &self,
        method: Method,
        path: String,
        body: Option<String>,
    ) -> Result<String, ClientError> {
        let m: Message = self.call(method, path, body).await?;
        Ok(m.message)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<String>,
    ) -> Result<T, ClientError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|cause| ClientError::Connect {
                    path: self.path.clone(),
                    cause,
                })?;
        let http = |cause| ClientError::Http {
            path: self.path.clone(),
            cause,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        // The connection future drives the socket; it ends with the request.
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "lb");
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadReply {
                status: 0,
                reason: format!("building the request: {e}"),
            })?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(http)?.to_bytes();
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::BadReply {
                status: status.as_u16(),
                reason: e.to_string(),
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => Err(ClientError::Refused {
                status: status.as_u16(),
                message: e.error,
            }),
            Err(_) => Err(ClientError::BadReply {
                status: status.as_u16(),
                reason: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }
}

fn backend_path(vip: SocketAddr, protocol: Protocol, backend: SocketAddr, action: &str) -> String {
    format!("/v1/services/{vip}/{protocol}/backends/{backend}/{action}")
}

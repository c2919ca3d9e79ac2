//! Routing and validation of admin requests, apart from HTTP and sockets so
//! it can be tested against a fake daemon.
//!
//! Routes (v1):
//! - `GET  /v1/status`
//! - `POST /v1/services/{vip}/{proto}/backends/{backend}/drain`
//! - `POST /v1/services/{vip}/{proto}/backends/{backend}/undrain`
//! - `PUT  /v1/services/{vip}/{proto}/backends/{backend}/weight` with `{"weight": N}`
//! - `POST /v1/reload`
//!
//! `{vip}` and `{backend}` are `ADDRESS:PORT`, `{proto}` is `tcp` or `udp`.
//! The server checks the syntax of a request; the daemon checks that the
//! service and backend exist and that the weight is in range. Either way a
//! refused request changes nothing.

use std::{net::SocketAddr, time::Duration};

use hyper::{Method, StatusCode};
use serde::Deserialize;

use super::{
    control::Control,
    rate::RateTracker,
    view::{self, StatusView},
};
use crate::{
    config::Protocol,
    daemon::{AdminError, AdminRequest},
};

/// Largest request body accepted: 64 KiB (a weight change is a few bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Shortest window packets/s are computed over: 1 s.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// A counter sample older than this (60 s) is not used for rates.
pub const RATE_MAX_AGE: Duration = Duration::from_secs(60);

/// Why a request was refused. Nothing changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "no such route: {method} {path} (see /v1/status, /v1/reload, /v1/services/VIP/PROTO/backends/BACKEND/{{drain,undrain,weight}})"
    )]
    NotFound { method: Method, path: String },
    #[error("{method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allow: Method,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("request body larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error(
        "uid {uid} may not use the admin API: only root and the daemon's user (uid {owner}) may"
    )]
    Forbidden { uid: u32, owner: u32 },
    #[error(transparent)]
    Admin(#[from] AdminError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Admin(e) => match e {
                AdminError::UnknownVip(..) | AdminError::UnknownBackend(..) => {
                    StatusCode::NOT_FOUND
                }
                AdminError::WeightRange(_) => StatusCode::BAD_REQUEST,
                AdminError::Reload(_) => StatusCode::UNPROCESSABLE_ENTITY,
                AdminError::Datapath(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

/// What a backend route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendAction {
    Drain,
    Undrain,
    Weight,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Status,
    Reload,
    Backend {
        vip: SocketAddr,
        protocol: Protocol,
        backend: SocketAddr,
        action: BackendAction,
    },
}

impl Route {
    /// Parses a request path (without its query string).
    pub fn parse(method: &Method, path: &str) -> Result<Route, ApiError> {
        let not_found = || ApiError::NotFound {
            method: method.clone(),
            path: path.to_string(),
        };
        let segments: Vec<&str> = path
            .strip_prefix('/')
            .ok_or_else(not_found)?
            .trim_end_matches('/')
            .split('/')
            .collect();
        match segments.as_slice() {
            ["v1", "status"] => Ok(Route::Status),
            ["v1", "reload"] => Ok(Route::Reload),
            ["v1", "services", vip, proto, "backends", backend, action] => {
                let action = match *action {
                    "drain" => BackendAction::Drain,
                    "undrain" => BackendAction::Undrain,
                    "weight" => BackendAction::Weight,
                    _ => return Err(not_found()),
                };
                Ok(Route::Backend {
                    vip: address("VIP", vip)?,
                    protocol: view::protocol(proto).ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "malformed protocol {proto:?}: expected tcp or udp"
                        ))
                    })?,
                    backend: address("backend", backend)?,
                    action,
                })
            }
            _ => Err(not_found()),
        }
    }

    /// The one method the route answers.
    pub fn method(&self) -> Method {
        match self {
            Route::Status => Method::GET,
            Route::Reload => Method::POST,
            Route::Backend { action, .. } => match action {
                BackendAction::Drain | BackendAction::Undrain => Method::POST,
                BackendAction::Weight => Method::PUT,
            },
        }
    }
}

fn address(what: &str, s: &str) -> Result<SocketAddr, ApiError> {
    s.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "malformed {what} {s:?}: expected ADDRESS:PORT, such as 198.18.0.100:80"
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))
}

/// Requests without parameters take an empty body or `{}`; anything else is
/// refused so a misspelt parameter is not silently ignored.
fn no_body(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    json::<NoFields>(body).map(|_| ())
}

/// A successful answer.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Status(Box<StatusView>),
    /// A change was applied; the daemon's one-line summary.
    Done(String),
}

/// The admin API over a daemon.
pub struct Api<C> {
    control: C,
    rates: RateTracker,
}

impl<C: Control> Api<C> {
    /// Rates over at least [`RATE_WINDOW`], from samples at most
    /// [`RATE_MAX_AGE`] old.
    pub fn new(control: C) -> Self {
        Self::with_rate_windows(control, RATE_WINDOW, RATE_MAX_AGE)
    }

    pub fn with_rate_windows(control: C, min: Duration, max: Duration) -> Self {
        Api {
            control,
            rates: RateTracker::new(min, max),
        }
    }

    pub async fn handle(
        &self,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Result<Reply, ApiError> {
        let route = Route::parse(method, path)?;
        let allow = route.method();
        // HEAD is GET without a body, which hyper strips.
        if *method != allow && !(*method == Method::HEAD && allow == Method::GET) {
            return Err(ApiError::MethodNotAllowed {
                method: method.clone(),
                path: path.to_string(),
                allow,
            });
        }
        let request = match route {
            Route::Status => return Ok(Reply::Status(Box::new(self.status().await))),
            Route::Reload => {
                no_body(body)?;
                AdminRequest::Reload
            }
            Route::Backend {
                vip,
                protocol,
                backend,
                action,
            } => match action {
                BackendAction::Drain => {
                    no_body(body)?;
                    AdminRequest::Drain {
                        vip,
                        protocol,
                        backend,
                    }
                }
                BackendAction::Undrain => {
                    no_body(body)?;
                    AdminRequest::Undrain {
                        vip,
                        protocol,
                        backend,
                    }
                }
                BackendAction::Weight => AdminRequest::SetWeight {
                    vip,
                    protocol,
                    backend,
                    weight: json::<WeightBody>(body)?.weight,
                },
            },
        };
        Ok(Reply::Done(self.control.request(request).await?))
    }

    async fn status(&self) -> StatusView {
        let (mut status, mut usage) = (self.control.status(), self.control.usage().await);
        let observe = |u: &Result<_, _>| {
            u.as_ref()
                .ok()
                .and_then(|u| self.rates.observe(tokio::time::Instant::now().into(), u))
        };
        let mut rates = observe(&usage);
        if rates.is_none()
            && let Ok(u) = &usage
            && !u.vips.is_empty()
        {
            // No recent sample to compare with: take a second one so even a
            // one-off `lb status` shows packets/s.
            tokio::time::sleep(self.rates.min_window()).await;
            (status, usage) = (self.control.status(), self.control.usage().await);
            rates = observe(&usage);
        }
        view::merge(
            &status,
            usage.as_ref().map_err(ToString::to_string),
            rates.as_ref(),
        )
    }
}

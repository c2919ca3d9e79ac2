//! The metrics endpoint: `GET /metrics` over plain HTTP/1.1.

use std::{convert::Infallible, io, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{ALLOW, CONTENT_TYPE, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::render::scrape;
use crate::admin::{Control, http};

/// The Prometheus text exposition format.
const CONTENT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// The bound metrics listener; serve it with [`MetricsServer::serve`].
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> Result<MetricsServer, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(MetricsServer { listener })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers scrapes until the future is dropped.
    pub async fn serve<C: Control>(self, control: C) {
        if let Ok(addr) = self.local_addr() {
            tracing::info!(%addr, "metrics on http://{addr}/metrics");
        }
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    http::accept_failed("metrics", e).await;
                    continue;
                }
            };
            let control = control.clone();
            let service = service_fn(move |req| {
                let control = control.clone();
                async move { Ok::<_, Infallible>(respond(&control, req).await) }
            });
            tokio::spawn(async move {
                let conn = http::http1().serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "metrics connection ended with an error");
                }
            });
        }
    }
}

async fn respond<C: Control, B>(control: &C, req: Request<B>) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (StatusCode::OK, scrape(control).await),
        (&Method::GET | &Method::HEAD, "/") => (StatusCode::OK, "lb metrics: /metrics\n".into()),
        (&Method::GET | &Method::HEAD, _) => {
            (StatusCode::NOT_FOUND, "not found; see /metrics\n".into())
        }
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "the metrics endpoint is read-only\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT));
    // RFC 9110 requires Allow on a 405; it also tells the caller that no
    // method writes here.
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

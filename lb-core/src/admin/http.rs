//! HTTP/1.1 serving settings shared by the admin API and the metrics
//! endpoint.

use std::{io, time::Duration};

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;

/// A client that sends no complete request head within 10 s is dropped, so
/// idle connections cannot pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause of 100 ms after a failed accept (out of file descriptors):
/// retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A connection builder with [`HEADER_TIMEOUT`].
pub(crate) fn http1() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    b
}

/// Logs a failed accept and waits [`ACCEPT_BACKOFF`] before the next.
pub(crate) async fn accept_failed(listener: &str, e: io::Error) {
    tracing::warn!(error = %e, "{listener}: accept failed");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

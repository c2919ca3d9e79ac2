//! TCP connect check, like keepalived's `TCP_CHECK`: up when the three-way handshake completes.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};

use super::{CheckFailure, CheckFuture, Checker};

/// Connects, then closes at once.
#[derive(Debug, Clone)]
pub struct TcpCheck {
    /// Limit for the handshake. See [`super::CheckSpec::connect_timeout`].
    pub connect_timeout: Duration,
    /// Address to bind before connecting. See [`super::CheckSpec::source_address`].
    pub source_address: Option<IpAddr>,
}

impl Checker for TcpCheck {
    fn check(&self, target: SocketAddr) -> CheckFuture<'_> {
        Box::pin(async move {
            let start = Instant::now();
            let stream = connect(target, self.source_address, self.connect_timeout).await?;
            let latency = start.elapsed();
            drop(stream);
            Ok(latency)
        })
    }
}

/// Opens a TCP connection to `target` from `source` (if any) within `limit`.
///
/// Shared with the HTTP check so both report refusals, timeouts and bind errors alike.
pub(crate) async fn connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    limit: Duration,
) -> Result<TcpStream, CheckFailure> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(CheckFailure::Connect)?;
    if let Some(addr) = source {
        // Port 0: the kernel picks an ephemeral port, so concurrent probes from one source
        // address do not collide.
        socket
            .bind(SocketAddr::new(addr, 0))
            .map_err(|source| CheckFailure::Bind { addr, source })?;
    }
    match tokio::time::timeout(limit, socket.connect(target)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err(CheckFailure::Refused),
        Ok(Err(e)) => Err(CheckFailure::Connect(e)),
        Err(_) => Err(CheckFailure::Timeout {
            after: limit,
            during: "connect",
        }),
    }
}

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
            let stream = connect(
                target,
                self.source_address,
                self.connect_timeout,
                Ack::Quick,
            )
            .await?;
            let latency = start.elapsed();
            drop(stream);
            Ok(latency)
        })
    }
}

/// When the probe's side of the connection ACKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ack {
    /// At once: the handshake completes on the backend, so its application
    /// sees the connection, as keepalived's `TCP_CHECK` does.
    Quick,
    /// Delayed, as HAProxy's checks: the handshake's last ACK rides on the
    /// request, and the response is not ACKed before the RST that ends the
    /// probe. 7 packets an HTTP probe instead of 9.
    Delayed,
}

/// Opens a TCP connection to `target` from `source` (if any) within `limit`.
///
/// Shared with the HTTP check so both report refusals, timeouts and bind errors alike.
pub(crate) async fn connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    limit: Duration,
    ack: Ack,
) -> Result<TcpStream, CheckFailure> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(CheckFailure::Connect)?;
    // Probes end with a RST, as HAProxy's do: no FIN exchange (10 packets a
    // probe instead of 8) and no TIME_WAIT socket left per probe, which at
    // 1000 backends a second would pile up 60 000 of them.
    socket.set_zero_linger().map_err(CheckFailure::Connect)?;
    if ack == Ack::Delayed {
        socket2::SockRef::from(&socket)
            .set_tcp_quickack(false)
            .map_err(CheckFailure::Connect)?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(ms: u64, source_address: Option<IpAddr>) -> TcpCheck {
        TcpCheck {
            connect_timeout: Duration::from_millis(ms),
            source_address,
        }
    }

    #[tokio::test]
    async fn listener_is_up() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let latency = tcp(1000, None)
            .check(l.local_addr().expect("addr"))
            .await
            .expect("up");
        assert!(latency < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn closed_port_is_refused() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let e = tcp(1000, None).check(addr).await.expect_err("refused");
        assert_eq!(e.to_string(), "connection refused");
    }

    /// A listener whose accept queue is full drops new SYNs, as a backend too busy to accept
    /// does: the probe must give up at `connect_timeout`, not wait for the kernel's retries.
    #[tokio::test]
    async fn full_backlog_times_out_within_connect_timeout() {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = socket.listen(0).expect("listen");
        let addr = listener.local_addr().expect("addr");
        // Fill the queue: connections complete until the kernel starts dropping SYNs.
        let mut held = Vec::new();
        let filled = loop {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(s)) if held.len() < 16 => held.push(s),
                Ok(Ok(_)) => break false,
                Ok(Err(e)) => panic!("connect: {e}"),
                Err(_) => break true,
            }
        };
        assert!(filled, "accept queue never filled");
        let limit = Duration::from_millis(300);
        let start = Instant::now();
        let e = tcp(300, None).check(addr).await.expect_err("timeout");
        let took = start.elapsed();
        assert!(
            took >= limit && took < limit + Duration::from_millis(300),
            "{took:?}"
        );
        assert_eq!(e.to_string(), "timeout after 300ms (connect)");
        drop(listener);
    }

    #[tokio::test]
    async fn probes_leave_from_source_address() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let src: IpAddr = "127.0.0.3".parse().expect("ip");
        tcp(1000, Some(src))
            .check(l.local_addr().expect("addr"))
            .await
            .expect("up");
        let (_, peer) = l.accept().await.expect("accept");
        assert_eq!(peer.ip(), src);
    }

    #[tokio::test]
    async fn source_address_not_local_fails_to_bind() {
        // 198.18.0.0/15 is the project's test range; nothing on this host owns this address,
        // so bind fails before any packet is sent.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let e = tcp(1000, Some("198.18.255.254".parse().expect("ip")))
            .check(l.local_addr().expect("addr"))
            .await
            .expect_err("bind fails");
        assert!(matches!(e, CheckFailure::Bind { .. }), "{e}");
    }
}

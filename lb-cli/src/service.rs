//! The operator's VIP syntax: `198.18.0.100:80`, optionally with `/tcp` or
//! `/udp` (default tcp), as `ipvsadm -t|-u` would take it.

use std::{fmt, net::SocketAddr, str::FromStr};

use lb_core::{admin::view, config::Protocol};

/// A service: VIP address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    pub vip: SocketAddr,
    pub protocol: Protocol,
}

impl FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, protocol) = match s.rsplit_once('/') {
            Some((addr, p)) => (
                addr,
                view::protocol(p)
                    .ok_or_else(|| format!("unknown protocol {p:?}: expected tcp or udp"))?,
            ),
            None => (s, Protocol::Tcp),
        };
        let vip = addr.parse().map_err(|_| {
            format!("expected ADDRESS:PORT[/tcp|/udp], such as 198.18.0.100:80/tcp; got {s:?}")
        })?;
        Ok(Service { vip, protocol })
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vip, self.protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_protocol() {
        let tcp: Service = "198.18.0.100:80".parse().unwrap();
        assert_eq!(tcp.protocol, Protocol::Tcp);
        assert_eq!(tcp.vip, "198.18.0.100:80".parse().unwrap());
        let udp: Service = "198.18.0.100:53/udp".parse().unwrap();
        assert_eq!(udp.protocol, Protocol::Udp);
        assert_eq!(udp.to_string(), "198.18.0.100:53/udp");
        for bad in [
            "198.18.0.100",
            "198.18.0.100:80/sctp",
            "web:80",
            "198.18.0.100:80/",
        ] {
            assert!(bad.parse::<Service>().is_err(), "{bad}");
        }
    }
}

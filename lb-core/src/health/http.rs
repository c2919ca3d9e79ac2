//! HTTP GET check, over TLS or not, like keepalived's `HTTP_GET` and `SSL_GET`.
//!
//! One fresh connection per probe (no keep-alive), so a probe sees what a new client flow would:
//! a backend that accepts but cannot serve is caught, and probes never pin a backend's worker.
//!
//! The request is HTTP/1.0, as keepalived's and HAProxy's are: the server closes after the
//! response and never uses chunked coding, so a probe is one write, reads until the headers
//! parse (httparse) and, only for a digest or regex, reads the body to its `Content-Length` or
//! EOF. Then the socket is dropped, which resets it (zero linger): with delayed ACKs
//! ([`Ack::Delayed`]) 7 packets a probe, no connection task, no TIME_WAIT.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use hyper::Uri;
use hyper::header::HeaderValue;
use md5::{Digest, Md5};
use regex::Regex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::tcp::{Ack, connect};
use super::{BuildError, CheckFailure, CheckFuture, Checker};

/// What an HTTP(S) check asks for and what it accepts.
#[derive(Debug, Clone)]
pub struct HttpSpec {
    /// Request target, origin form. Default `/`.
    pub path: String,
    /// `Host` header (and TLS SNI unless [`TlsSpec::sni`] is set), like keepalived's
    /// `virtualhost`. Default `None`: the backend's `ip:port`, as keepalived sends.
    pub host: Option<String>,
    /// Accepted status codes. Default `200-299`.
    pub status: StatusRanges,
    /// MD5 of the body, hex, like keepalived's `digest` (its `genhash` tool prints it).
    /// Default `None`: the body is not hashed.
    pub digest: Option<String>,
    /// A regex the body must match somewhere (the `regex` crate's syntax).
    /// Default `None`: the body is not searched.
    pub body_regex: Option<String>,
    /// Largest body read for `digest` or `body_regex`; a larger body fails the probe, so a
    /// misrouted probe to a big file cannot eat memory. Default 1 MiB.
    pub max_body: usize,
    /// Speak TLS (HTTPS). Default `None`: plain HTTP.
    pub tls: Option<TlsSpec>,
}

impl Default for HttpSpec {
    fn default() -> Self {
        Self {
            path: "/".to_owned(),
            host: None,
            status: StatusRanges::default(),
            digest: None,
            body_regex: None,
            max_body: 1 << 20,
            tls: None,
        }
    }
}

/// TLS options of an HTTPS check.
#[derive(Debug, Clone, Default)]
pub struct TlsSpec {
    /// Check the backend's certificate chain and name. Default `false`, like keepalived's
    /// `SSL_GET`: backends commonly serve self-signed certificates on their health port, and the
    /// probe asks "does it serve?", not "is it who it claims to be?". The handshake signature is
    /// verified either way, so a broken TLS stack still fails.
    pub verify_tls: bool,
    /// PEM file of the CAs to trust when `verify_tls` is true. Default `None`: the Mozilla roots
    /// compiled in (webpki-roots), so the check does not depend on the host's CA bundle.
    pub ca_file: Option<PathBuf>,
    /// Name to send as SNI and to verify against. Default `None`: [`HttpSpec::host`] if set,
    /// else the backend's IP (no SNI is sent for an IP).
    pub sni: Option<String>,
}

/// Inclusive ranges of accepted status codes, written `200-299,301-302` or `200`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRanges(Vec<(u16, u16)>);

impl StatusRanges {
    /// Ranges from inclusive `(low, high)` pairs.
    pub fn new(ranges: Vec<(u16, u16)>) -> Self {
        Self(ranges)
    }

    /// Whether `code` is in one of the ranges.
    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

impl Default for StatusRanges {
    fn default() -> Self {
        Self(vec![(200, 299)])
    }
}

impl fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// A status range list that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("status ranges {0:?}: expected e.g. \"200-299,301-302\", codes 100-599, low <= high")]
pub struct StatusRangesError(String);

impl FromStr for StatusRanges {
    type Err = StatusRangesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || StatusRangesError(s.to_owned());
        let code = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (code(lo).ok_or_else(err)?, code(hi).ok_or_else(err)?),
                None => {
                    let c = code(part).ok_or_else(err)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(err());
            }
            ranges.push((lo, hi));
        }
        Ok(Self(ranges))
    }
}

/// A ready HTTP(S) checker: the spec validated, the regex compiled, the TLS config built.
#[derive(Clone)]
pub struct HttpCheck {
    path: Uri,
    host: Option<HeaderValue>,
    status: StatusRanges,
    digest: Option<String>,
    body_regex: Option<Regex>,
    max_body: usize,
    tls: Option<Tls>,
    timeout: Duration,
    source_address: Option<IpAddr>,
}

#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    name: Option<ServerName<'static>>,
}

impl fmt::Debug for HttpCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCheck")
            .field("path", &self.path)
            .field("host", &self.host)
            .field("status", &self.status)
            .field("digest", &self.digest)
            .field("body_regex", &self.body_regex)
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .field("source_address", &self.source_address)
            .finish()
    }
}

/// Largest response head read; a backend sending more is broken.
const MAX_HEAD: usize = 16 << 10;
/// Headers parsed; more fail the probe as a bad response.
const MAX_HEADERS: usize = 64;

// Stages of one probe, recorded as it goes so a timeout can say where it was stuck.
const CONNECT: u8 = 0;
const TLS_HANDSHAKE: u8 = 1;
const RESPONSE: u8 = 2;
const BODY: u8 = 3;

fn stage_name(stage: u8) -> &'static str {
    match stage {
        CONNECT => "connect",
        TLS_HANDSHAKE => "tls handshake",
        RESPONSE => "waiting for response",
        _ => "reading body",
    }
}

impl HttpCheck {
    /// Validates `spec`. `timeout` bounds the whole probe; `source_address` is bound before
    /// connecting.
    pub fn new(
        spec: &HttpSpec,
        timeout: Duration,
        source_address: Option<IpAddr>,
    ) -> Result<Self, BuildError> {
        let path: Uri = spec
            .path
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| {
                BuildError::Path(spec.path.clone(), e.to_string())
            })?;
        if path.scheme().is_some() || !spec.path.starts_with('/') {
            return Err(BuildError::Path(
                spec.path.clone(),
                "must be an absolute path such as /healthz".to_owned(),
            ));
        }
        let host = spec
            .host
            .as_deref()
            .map(|h| {
                HeaderValue::from_str(h).map_err(|e| BuildError::Host(h.to_owned(), e.to_string()))
            })
            .transpose()?;
        let digest = spec
            .digest
            .as_deref()
            .map(|d| {
                if d.len() == 32 && d.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(d.to_ascii_lowercase())
                } else {
                    Err(BuildError::Digest(d.to_owned()))
                }
            })
            .transpose()?;
        let body_regex = spec.body_regex.as_deref().map(Regex::new).transpose()?;
        let tls = spec
            .tls
            .as_ref()
            .map(|t| build_tls(t, spec.host.as_deref()))
            .transpose()?;
        Ok(Self {
            path,
            host,
            status: spec.status.clone(),
            digest,
            body_regex,
            max_body: spec.max_body,
            tls,
            timeout,
            source_address,
        })
    }

    async fn probe(&self, target: SocketAddr, stage: &AtomicU8) -> Result<(), CheckFailure> {
        let stream = connect(target, self.source_address, self.timeout, Ack::Delayed).await?;
        match &self.tls {
            None => self.exchange(stream, target, stage).await,
            Some(tls) => {
                stage.store(TLS_HANDSHAKE, Ordering::Relaxed);
                let name = tls
                    .name
                    .clone()
                    .unwrap_or_else(|| ServerName::IpAddress(target.ip().into()));
                let stream = tls
                    .connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| CheckFailure::Tls(e.to_string()))?;
                self.exchange(stream, target, stage).await
            }
        }
    }

    async fn exchange<S>(
        &self,
        mut stream: S,
        target: SocketAddr,
        stage: &AtomicU8,
    ) -> Result<(), CheckFailure>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        stage.store(RESPONSE, Ordering::Relaxed);
        let io = |e: std::io::Error| CheckFailure::Http(e.to_string());
        let mut request = Vec::with_capacity(128);
        request.extend_from_slice(b"GET ");
        request.extend_from_slice(self.path.to_string().as_bytes());
        request.extend_from_slice(b" HTTP/1.0\r\nHost: ");
        match &self.host {
            Some(h) => request.extend_from_slice(h.as_bytes()),
            None => request.extend_from_slice(target.to_string().as_bytes()),
        }
        request.extend_from_slice(b"\r\nUser-Agent: lb-healthcheck\r\nConnection: close\r\n\r\n");
        stream.write_all(&request).await.map_err(io)?;
        stream.flush().await.map_err(io)?;

        let mut buf = Vec::with_capacity(1024);
        let (code, head_len, content_length) = loop {
            if buf.len() >= MAX_HEAD {
                return Err(CheckFailure::Http(format!(
                    "response headers larger than {MAX_HEAD} bytes"
                )));
            }
            let n = (&mut stream)
                .take((MAX_HEAD - buf.len()) as u64)
                .read_buf(&mut buf)
                .await
                .map_err(io)?;
            if n == 0 {
                return Err(CheckFailure::Http(
                    "connection closed before a complete response".into(),
                ));
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let length = response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    break (response.code.unwrap_or(0), len, length);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(CheckFailure::Http(format!("bad response: {e}"))),
            }
        };
        if !self.status.contains(code) {
            return Err(CheckFailure::Status {
                got: code,
                expected: self.status.clone(),
            });
        }
        if self.digest.is_none() && self.body_regex.is_none() {
            return Ok(());
        }
        stage.store(BODY, Ordering::Relaxed);
        let mut body = buf.split_off(head_len);
        let too_big = || CheckFailure::Http(format!("body: larger than {} bytes", self.max_body));
        if content_length.is_some_and(|l| l > self.max_body) {
            return Err(too_big());
        }
        let want = content_length.unwrap_or(self.max_body + 1);
        while body.len() < want {
            let n = (&mut stream)
                .take((want - body.len()) as u64)
                .read_buf(&mut body)
                .await
                .map_err(io)?;
            if n == 0 {
                if content_length.is_some() {
                    return Err(CheckFailure::Http(
                        "body: connection closed before Content-Length".into(),
                    ));
                }
                break;
            }
        }
        if body.len() > self.max_body {
            return Err(too_big());
        }
        body.truncate(want);
        self.check_body(&body)
    }

    fn check_body(&self, body: &[u8]) -> Result<(), CheckFailure> {
        if let Some(expected) = &self.digest {
            let got = hex(&Md5::digest(body));
            if &got != expected {
                return Err(CheckFailure::DigestMismatch {
                    got,
                    expected: expected.clone(),
                });
            }
        }
        if let Some(re) = &self.body_regex {
            // Lossy: a regex is written against text, and a stray invalid byte must not hide a
            // match elsewhere in the body.
            if !re.is_match(&String::from_utf8_lossy(body)) {
                return Err(CheckFailure::RegexNotMatched(re.as_str().to_owned()));
            }
        }
        Ok(())
    }
}

impl Checker for HttpCheck {
    fn check(&self, target: SocketAddr) -> CheckFuture<'_> {
        Box::pin(async move {
            let start = Instant::now();
            let stage = AtomicU8::new(CONNECT);
            match tokio::time::timeout(self.timeout, self.probe(target, &stage)).await {
                Ok(Ok(())) => Ok(start.elapsed()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(CheckFailure::Timeout {
                    after: self.timeout,
                    during: stage_name(stage.load(Ordering::Relaxed)),
                }),
            }
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn build_tls(spec: &TlsSpec, host: Option<&str>) -> Result<Tls, BuildError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError::Tls(e.to_string()))?;
    let mut config = if spec.verify_tls {
        let mut roots = RootCertStore::empty();
        match &spec.ca_file {
            Some(path) => {
                let shown = path.display().to_string();
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| BuildError::CaFile(shown.clone(), e.to_string()))?
                {
                    let cert =
                        cert.map_err(|e| BuildError::CaFile(shown.clone(), e.to_string()))?;
                    roots
                        .add(cert)
                        .map_err(|e| BuildError::CaFile(shown.clone(), e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(BuildError::CaFile(shown, "no certificate".to_owned()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = spec
        .sni
        .as_deref()
        .or(host)
        .map(|n| {
            ServerName::try_from(without_port(n).to_owned())
                .map_err(|e| BuildError::Host(n.to_owned(), e.to_string()))
        })
        .transpose()?;
    Ok(Tls {
        connector: TlsConnector::from(Arc::new(config)),
        name,
    })
}

/// The name part of a Host header value: SNI and certificate names never carry a port, and an
/// IPv6 literal loses its brackets.
fn without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(host, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.parse::<u16>().is_ok() => name,
        _ => host,
    }
}

/// Accepts any certificate chain, for `verify_tls = false`, but still checks that the server
/// signed the handshake with the key in the certificate it sent.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::testutil::{HttpServer, Reply, self_signed};

    const T: Duration = Duration::from_secs(2);

    fn check(f: impl FnOnce(&mut HttpSpec)) -> HttpCheck {
        let mut spec = HttpSpec::default();
        f(&mut spec);
        HttpCheck::new(&spec, T, None).expect("valid spec")
    }

    #[tokio::test]
    async fn ok_is_up_and_sends_host_header() {
        let server = HttpServer::plain(Reply::With(200, "ok")).await;
        let c = check(|s| {
            s.path = "/healthz?deep=1".into();
            s.host = Some("portal.example".into());
        });
        c.check(server.addr).await.expect("up");
        let seen = server.requests();
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0].head.starts_with("GET /healthz?deep=1 HTTP/1.0\r\n"),
            "{:?}",
            seen[0]
        );
        assert_eq!(seen[0].header("host").as_deref(), Some("portal.example"));
    }

    #[test]
    fn sni_name_drops_port_and_brackets() {
        assert_eq!(without_port("portal.example:8443"), "portal.example");
        assert_eq!(without_port("portal.example"), "portal.example");
        assert_eq!(without_port("[::1]:443"), "::1");
        assert_eq!(without_port("::1"), "::1");
    }

    #[tokio::test]
    async fn ipv6_backend_gets_bracketed_host() {
        let server = HttpServer::plain_on("[::1]:0", Reply::With(200, "")).await;
        check(|_| {}).check(server.addr).await.expect("up");
        let host = server.requests()[0].header("host").expect("host sent");
        assert_eq!(host, format!("[::1]:{}", server.addr.port()));
    }

    #[tokio::test]
    async fn default_host_is_the_backend_address() {
        let server = HttpServer::plain(Reply::With(204, "")).await;
        check(|_| {}).check(server.addr).await.expect("up");
        assert_eq!(
            server.requests()[0].header("host"),
            Some(server.addr.to_string())
        );
    }

    #[tokio::test]
    async fn unavailable_is_down() {
        let server = HttpServer::plain(Reply::With(503, "busy")).await;
        let e = check(|_| {}).check(server.addr).await.expect_err("down");
        assert_eq!(e.to_string(), "status 503 not in 200-299");
    }

    #[tokio::test]
    async fn status_ranges_decide() {
        let server = HttpServer::plain(Reply::With(302, "")).await;
        check(|s| s.status = "200-299,301-302".parse().expect("ranges"))
            .check(server.addr)
            .await
            .expect("302 accepted");
        let e = check(|s| s.status = "200".parse().expect("ranges"))
            .check(server.addr)
            .await
            .expect_err("302 refused");
        assert_eq!(e.to_string(), "status 302 not in 200");
    }

    #[tokio::test]
    async fn body_ends_at_content_length_without_waiting_for_close() {
        let server = HttpServer::plain(Reply::KeepOpen("hello\n")).await;
        let c = check(|s| s.digest = Some("b1946ac92492d2347c6235b4d2611184".into()));
        let latency = c.check(server.addr).await.expect("digest matches");
        assert!(
            latency < T / 2,
            "{latency:?}: waited for a close that never comes"
        );
    }

    #[tokio::test]
    async fn digest_match_and_mismatch() {
        let server = HttpServer::plain(Reply::With(200, "hello\n")).await;
        // md5("hello\n"), as `printf 'hello\n' | md5sum` prints it.
        let good = "b1946ac92492d2347c6235b4d2611184";
        check(|s| s.digest = Some(good.to_uppercase()))
            .check(server.addr)
            .await
            .expect("digest matches");
        let e = check(|s| s.digest = Some("d41d8cd98f00b204e9800998ecf8427e".into()))
            .check(server.addr)
            .await
            .expect_err("digest differs");
        assert_eq!(
            e.to_string(),
            format!("digest mismatch: got {good}, expected d41d8cd98f00b204e9800998ecf8427e")
        );
    }

    #[tokio::test]
    async fn body_regex_match_and_miss() {
        let server = HttpServer::plain(Reply::With(200, "{\"status\":\"green\"}")).await;
        check(|s| s.body_regex = Some(r#""status":"(green|yellow)""#.into()))
            .check(server.addr)
            .await
            .expect("matches");
        let e = check(|s| s.body_regex = Some("red".into()))
            .check(server.addr)
            .await
            .expect_err("no match");
        assert!(matches!(e, CheckFailure::RegexNotMatched(_)), "{e}");
    }

    #[tokio::test]
    async fn oversized_body_fails() {
        let server = HttpServer::plain(Reply::With(200, "0123456789")).await;
        let e = check(|s| {
            s.body_regex = Some("9".into());
            s.max_body = 4;
        })
        .check(server.addr)
        .await
        .expect_err("too big");
        assert!(matches!(e, CheckFailure::Http(_)), "{e}");
    }

    #[tokio::test]
    async fn silent_server_times_out_within_limit() {
        let server = HttpServer::plain(Reply::Silent).await;
        let limit = Duration::from_millis(300);
        let c = HttpCheck::new(&HttpSpec::default(), limit, None).expect("valid");
        let start = Instant::now();
        let e = c.check(server.addr).await.expect_err("timeout");
        let took = start.elapsed();
        assert!(
            took >= limit && took < limit + Duration::from_millis(300),
            "{took:?}"
        );
        assert_eq!(e.to_string(), "timeout after 300ms (waiting for response)");
    }

    #[tokio::test]
    async fn closed_port_is_refused() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let e = check(|_| {}).check(port).await.expect_err("refused");
        assert!(matches!(e, CheckFailure::Refused), "{e}");
    }

    #[tokio::test]
    async fn probes_leave_from_source_address() {
        let server = HttpServer::plain(Reply::With(200, "")).await;
        let src: IpAddr = "127.0.0.2".parse().expect("ip");
        HttpCheck::new(&HttpSpec::default(), T, Some(src))
            .expect("valid")
            .check(server.addr)
            .await
            .expect("up");
        assert_eq!(server.requests()[0].peer.ip(), src);
    }

    #[tokio::test]
    async fn https_accepts_self_signed_by_default() {
        let (acceptor, _) = self_signed();
        let server = HttpServer::tls(Reply::With(200, "secure"), acceptor).await;
        let c = check(|s| {
            s.tls = Some(TlsSpec::default());
            s.body_regex = Some("^secure$".into());
        });
        c.check(server.addr).await.expect("up over tls");
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn https_verify_rejects_unknown_ca_and_trusts_configured_one() {
        let (acceptor, pem) = self_signed();
        let server = HttpServer::tls(Reply::With(200, ""), acceptor).await;
        let e = check(|s| {
            s.host = Some("localhost".into());
            s.tls = Some(TlsSpec {
                verify_tls: true,
                ..TlsSpec::default()
            });
        })
        .check(server.addr)
        .await
        .expect_err("self-signed refused when verifying");
        assert!(matches!(e, CheckFailure::Tls(_)), "{e}");

        let dir = std::env::temp_dir().join(format!("lb-health-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, pem).expect("write ca");
        let trusted = check(|s| {
            s.tls = Some(TlsSpec {
                verify_tls: true,
                ca_file: Some(ca.clone()),
                sni: Some("localhost".into()),
            });
        });
        let result = trusted.check(server.addr).await;
        std::fs::remove_dir_all(&dir).expect("cleanup");
        result.expect("trusted via ca_file");
    }

    #[tokio::test]
    async fn plain_http_to_tls_port_fails() {
        let (acceptor, _) = self_signed();
        let server = HttpServer::tls(Reply::With(200, ""), acceptor).await;
        let e = HttpCheck::new(&HttpSpec::default(), Duration::from_millis(500), None)
            .expect("valid")
            .check(server.addr)
            .await
            .expect_err("no tls");
        assert!(matches!(e, CheckFailure::Http(_)), "{e}");
    }

    #[test]
    fn status_ranges_parse_and_print() {
        let r: StatusRanges = "200-299, 301-302,404".parse().expect("valid");
        assert!(r.contains(200) && r.contains(299) && r.contains(302) && r.contains(404));
        assert!(!r.contains(300) && !r.contains(503));
        assert_eq!(r.to_string(), "200-299,301-302,404");
        for bad in ["", "abc", "299-200", "200-", "99", "200-600"] {
            assert!(bad.parse::<StatusRanges>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_specs_are_rejected_at_build() {
        let t = Duration::from_secs(1);
        let with = |f: fn(&mut HttpSpec)| {
            let mut s = HttpSpec::default();
            f(&mut s);
            HttpCheck::new(&s, t, None)
        };
        assert!(matches!(
            with(|s| s.digest = Some("xyz".into())),
            Err(BuildError::Digest(_))
        ));
        assert!(matches!(
            with(|s| s.body_regex = Some("(".into())),
            Err(BuildError::Regex(_))
        ));
        assert!(matches!(
            with(|s| s.path = "healthz".into()),
            Err(BuildError::Path(..))
        ));
        assert!(matches!(
            with(|s| s.host = Some("a\nb".into())),
            Err(BuildError::Host(..))
        ));
        assert!(with(|s| s.digest = Some("D41D8CD98F00B204E9800998ECF8427E".into())).is_ok());
    }
}

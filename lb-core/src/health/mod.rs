//! Active health checks: probers, consecutive rise/fall and the live backend set.
//!
//! The pieces, from the wire up:
//! - [`Checker`] runs one probe against one backend and says how long it took or why it failed:
//!   [`tcp::TcpCheck`], [`http::HttpCheck`] (HTTP and HTTPS) and [`script::ScriptCheck`].
//!   [`build`] makes the right one from a [`CheckSpec`].
//! - [`state::RiseFall`] turns a stream of probe results into up/down transitions (pure, no IO),
//!   with keepalived's `retry` / `delay_before_retry` in front of the `rise`/`fall` counters.
//! - [`service::Service`] turns backend health, weights and admin overrides into the live backend
//!   set that the table builder consumes (pure, no IO): `inhibit_on_failure`, `sorry_server`,
//!   `quorum` and `hysteresis`.
//! - [`runner::Runner`] drives one tokio task per (service, backend) and sends a
//!   [`runner::HealthEvent`] on each transition.
//!
//! The configuration types here are plain structs that the daemon fills from the TOML config.
//! Option names follow keepalived's where the concept exists.

pub mod http;
pub mod passive;
pub mod probes;
pub mod runner;
pub mod script;
pub mod service;
pub mod state;
pub mod tcp;
#[cfg(test)]
pub(crate) mod testutil;

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use http::{HttpCheck, HttpSpec, StatusRanges, TlsSpec};
pub use probes::{ProbeRecord, ProbeSnapshot};
pub use runner::{HealthEvent, Job, Runner, Schedule};
pub use script::{ScriptCheck, ScriptSpec};
pub use service::{LiveSet, Service, ServiceSpec};
pub use state::{NextProbe, RiseFall, Step, Thresholds, Transition};
pub use tcp::TcpCheck;

/// The future a [`Checker`] returns: the probe's latency, or why it failed.
///
/// Boxed so that checkers of different kinds can sit behind one `Arc<dyn Checker>` in the runner.
pub type CheckFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Duration, CheckFailure>> + Send + 'a>>;

/// One active probe against one backend.
pub trait Checker: Send + Sync + fmt::Debug {
    /// Probes `target` once. Every implementation bounds its own run time, so the caller needs
    /// no outer timeout.
    fn check(&self, target: SocketAddr) -> CheckFuture<'_>;
}

/// Why a probe failed, in one line fit for a log and for `lb status`.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    /// The backend answered the SYN with a RST.
    #[error("connection refused")]
    Refused,
    /// The step named in `during` did not finish in time.
    #[error("timeout after {after:?} ({during})")]
    Timeout {
        /// The limit that ran out.
        after: Duration,
        /// What was going on: "connect", "response", "tls handshake" ...
        during: &'static str,
    },
    /// The probe could not bind its configured source address.
    #[error("cannot bind source address {addr}: {source}")]
    Bind {
        /// The configured `source_address`.
        addr: IpAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Connecting failed for a reason other than a refusal or a timeout (unreachable, ...).
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed (bad certificate when `verify_tls = true`, protocol error ...).
    #[error("tls: {0}")]
    Tls(String),
    /// The HTTP exchange broke (malformed response, connection closed early, body too large ...).
    #[error("http: {0}")]
    Http(String),
    /// The status code is outside the expected ranges.
    #[error("status {got} not in {expected}")]
    Status {
        /// What the backend answered.
        got: u16,
        /// What the check accepts.
        expected: StatusRanges,
    },
    /// The MD5 of the body differs from the configured `digest`.
    #[error("digest mismatch: got {got}, expected {expected}")]
    DigestMismatch {
        /// MD5 hex of the body received.
        got: String,
        /// MD5 hex configured.
        expected: String,
    },
    /// The body does not match the configured `body_regex`.
    #[error("body does not match regex {0:?}")]
    RegexNotMatched(String),
    /// The script could not be started.
    #[error("cannot run script: {0}")]
    Spawn(std::io::Error),
    /// The script exited non-zero; `output` is the tail of what it printed.
    #[error("exit code {code}{}", output_suffix(.output))]
    Exit {
        /// The exit status.
        code: i32,
        /// Captured stdout then stderr, bounded, newlines folded.
        output: String,
    },
    /// The script was killed by a signal it did not get from us.
    #[error("killed by signal {signal}{}", output_suffix(.output))]
    Signal {
        /// The signal number.
        signal: i32,
        /// Captured stdout then stderr, bounded, newlines folded.
        output: String,
    },
    /// The script ran past its timeout; its whole process group was killed and reaped.
    #[error("killed after timeout {after:?}{}", output_suffix(.output))]
    ScriptTimeout {
        /// The script's `timeout`.
        after: Duration,
        /// Whatever it printed before it was killed.
        output: String,
    },
}

fn output_suffix(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!(": {output}")
    }
}

/// How a backend is probed, with the timing and thresholds that turn probes into up/down.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    /// What to probe.
    pub kind: CheckKind,
    /// Time between two probes of one backend. Default 6 s: keepalived's own default is 60 s,
    /// but nearly every keepalived config sets `delay_loop 6`, and a minute to notice a dead
    /// backend is too slow for a load balancer.
    pub delay_loop: Duration,
    /// Limit for a TCP connect, and for the whole exchange of an HTTP(S) probe (connect, TLS,
    /// request, response, body), like keepalived's `connect_timeout`. Default 5 s (keepalived's).
    pub connect_timeout: Duration,
    /// Consecutive successful rounds that bring a down backend up. Default 1 (keepalived brings
    /// a real server up on its first success).
    pub rise: u32,
    /// Consecutive failed rounds that take an up backend down. Default 1 (keepalived takes a
    /// real server down once its retries are spent).
    pub fall: u32,
    /// Extra attempts after a failed probe before the round counts as failed, as keepalived's
    /// `retry`. Only while the backend is up or not yet checked: a down backend is not retried.
    /// Default 1 (keepalived's TCP_CHECK default).
    pub retry: u32,
    /// Wait before each retry. Default 1 s (keepalived's).
    pub delay_before_retry: Duration,
    /// `true`: a backend starts down and must pass `rise` rounds first. `false`: it starts up
    /// and must fail `fall` rounds to go down. Default `false` (keepalived's default, no `alpha`).
    pub alpha: bool,
    /// Local address the probes leave from (bound before connect), like keepalived's `bindto`.
    /// Default `None`: the kernel picks by route. Unused by scripts.
    pub source_address: Option<IpAddr>,
}

impl Default for CheckSpec {
    /// A TCP check (keepalived's `TCP_CHECK`) with every default above.
    fn default() -> Self {
        Self::new(CheckKind::Tcp)
    }
}

impl CheckSpec {
    /// A spec of `kind` with every other field at its documented default.
    pub fn new(kind: CheckKind) -> Self {
        Self {
            kind,
            delay_loop: Duration::from_secs(6),
            connect_timeout: Duration::from_secs(5),
            rise: 1,
            fall: 1,
            retry: 1,
            delay_before_retry: Duration::from_secs(1),
            alpha: false,
            source_address: None,
        }
    }

    /// The longest a backend that starts failing can stay up: the failure
    /// is probed within a delay_loop, and each of the `fall` rounds takes a
    /// delay_loop to the next plus its `retry` retries (delay_before_retry
    /// apart), every probe up to its timeout.
    pub fn down_within(&self) -> Duration {
        let timeout = match &self.kind {
            CheckKind::Script(s) => s.timeout,
            _ => self.connect_timeout,
        };
        let fall = self.fall.max(1);
        (self.delay_loop + timeout) * fall
            + (self.delay_before_retry + timeout) * (fall * self.retry)
    }

    /// The rise/fall/retry part of the spec.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            rise: self.rise,
            fall: self.fall,
            retry: self.retry,
        }
    }
}

/// What a check does. Mirrors keepalived's `TCP_CHECK`, `HTTP_GET`/`SSL_GET` and `MISC_CHECK`.
#[derive(Debug, Clone)]
pub enum CheckKind {
    /// A TCP connect, closed as soon as it succeeds.
    Tcp,
    /// An HTTP GET, over TLS when [`HttpSpec::tls`] is set.
    Http(HttpSpec),
    /// An external program; exit code 0 means up.
    Script(ScriptSpec),
}

/// A configuration value that cannot be turned into a working checker.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `body_regex` does not compile.
    #[error("body_regex: {0}")]
    Regex(#[from] regex::Error),
    /// `digest` is not 32 hex digits.
    #[error("digest {0:?}: expected 32 hex digits (an MD5)")]
    Digest(String),
    /// The Host header or SNI name is unusable.
    #[error("host {0:?}: {1}")]
    Host(String, String),
    /// The path does not make a request target.
    #[error("path {0:?}: {1}")]
    Path(String, String),
    /// The CA file cannot be read or holds no certificate.
    #[error("ca_file {0}: {1}")]
    CaFile(String, String),
    /// The TLS client configuration was rejected.
    #[error("tls: {0}")]
    Tls(String),
    /// `argv` is empty.
    #[error("script argv is empty")]
    EmptyArgv,
}

/// A ready-to-run checker of any kind, built once from a [`CheckSpec`] and shared by the tasks
/// that probe each backend with it.
pub fn build(spec: &CheckSpec) -> Result<Arc<dyn Checker>, BuildError> {
    Ok(match &spec.kind {
        CheckKind::Tcp => Arc::new(TcpCheck {
            connect_timeout: spec.connect_timeout,
            source_address: spec.source_address,
        }),
        CheckKind::Http(http) => Arc::new(HttpCheck::new(
            http,
            spec.connect_timeout,
            spec.source_address,
        )?),
        CheckKind::Script(script) => Arc::new(ScriptCheck::new(script)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn build_makes_a_checker_for_each_kind() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tcp = build(&CheckSpec::default()).expect("tcp");
        tcp.check(addr).await.expect("tcp up");

        let script = build(&CheckSpec::new(CheckKind::Script(ScriptSpec::new([
            "true",
        ]))))
        .expect("script");
        script.check(addr).await.expect("true is up");

        let http = build(&CheckSpec::new(CheckKind::Http(HttpSpec {
            body_regex: Some("[".into()),
            ..HttpSpec::default()
        })));
        assert!(matches!(http, Err(BuildError::Regex(_))));
        let empty = build(&CheckSpec::new(CheckKind::Script(ScriptSpec::new(Vec::<
            String,
        >::new(
        )))));
        assert!(matches!(empty, Err(BuildError::EmptyArgv)));
    }

    #[test]
    fn down_within_covers_every_round_and_retry() {
        let mut spec = CheckSpec::default();
        // 6 s loop + 5 s timeout, one retry after 1 s: (6 + 5) + (1 + 5).
        assert_eq!(spec.down_within(), Duration::from_secs(17));
        spec.fall = 2;
        spec.retry = 0;
        spec.delay_loop = Duration::from_secs(1);
        spec.connect_timeout = Duration::from_secs(1);
        assert_eq!(spec.down_within(), Duration::from_secs(4));
        let mut script = CheckSpec::new(CheckKind::Script(ScriptSpec::new(["true"])));
        script.retry = 0;
        script.delay_loop = Duration::from_secs(2);
        assert_eq!(script.down_within(), Duration::from_secs(7));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let spec = CheckSpec::default();
        assert!(matches!(spec.kind, CheckKind::Tcp));
        assert_eq!(spec.delay_loop, Duration::from_secs(6));
        assert_eq!(spec.connect_timeout, Duration::from_secs(5));
        assert_eq!(
            spec.thresholds(),
            Thresholds {
                rise: 1,
                fall: 1,
                retry: 1
            }
        );
        assert_eq!(spec.delay_before_retry, Duration::from_secs(1));
        assert!(!spec.alpha && spec.source_address.is_none());
        let schedule = Schedule::from(&spec);
        assert_eq!(schedule.delay_loop, spec.delay_loop);
    }
}

//! Runs the checks: one tokio task per (service, backend), each feeding its own [`RiseFall`]
//! and sending a [`HealthEvent`] on every transition.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::state::{NextProbe, RiseFall, Thresholds};
use super::{CheckSpec, Checker};

/// The timing and thresholds a task probes with; the part of a [`CheckSpec`] the runner needs.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// See [`CheckSpec::delay_loop`].
    pub delay_loop: Duration,
    /// See [`CheckSpec::delay_before_retry`].
    pub delay_before_retry: Duration,
    /// See [`CheckSpec::rise`], [`CheckSpec::fall`], [`CheckSpec::retry`].
    pub thresholds: Thresholds,
    /// See [`CheckSpec::alpha`].
    pub alpha: bool,
}

impl From<&CheckSpec> for Schedule {
    fn from(spec: &CheckSpec) -> Self {
        Self {
            delay_loop: spec.delay_loop,
            delay_before_retry: spec.delay_before_retry,
            thresholds: spec.thresholds(),
            alpha: spec.alpha,
        }
    }
}

/// One backend of one service to keep checking.
#[derive(Debug, Clone)]
pub struct Job {
    /// The service's name, as events and logs show it.
    pub service: Arc<str>,
    /// The backend whose health this is.
    pub backend: SocketAddr,
    /// Where probes go: usually `backend`, or another port of it (keepalived's `connect_port`).
    pub target: SocketAddr,
    /// The probe, usually shared by all the backends of a service (see [`super::build`]).
    pub checker: Arc<dyn Checker>,
    /// When to probe and how results count.
    pub schedule: Schedule,
}

/// A backend changed state. The initial state is not an event: it is `!alpha`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// The service's name.
    pub service: Arc<str>,
    /// The backend.
    pub backend: SocketAddr,
    /// The new state.
    pub up: bool,
    /// Why, in one line.
    pub reason: String,
    /// Latency of the probe that made the backend go up; `None` when it went down.
    pub latency: Option<Duration>,
}

/// The running checks. Dropping it cancels them; [`Runner::shutdown`] also waits for them.
#[derive(Debug)]
pub struct Runner {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Runner {
    /// Starts one task per job; transitions go to `events`. Each task's first probe comes after
    /// a delay drawn uniformly from `[0, delay_loop)`, as keepalived's warmup does, so a
    /// thousand backends configured at once are not probed in lockstep. A task ends when the
    /// runner is cancelled or `events` is closed. Must be called within a tokio runtime.
    pub fn start(jobs: impl IntoIterator<Item = Job>, events: mpsc::Sender<HealthEvent>) -> Self {
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for job in jobs {
            let first = jitter(job.schedule.delay_loop);
            tasks.spawn(run(job, first, events.clone(), cancel.child_token()));
        }
        Self { cancel, tasks }
    }

    /// The number of tasks started.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task was started.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// A token that stops every task when cancelled, e.g. from a signal handler.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops every task, probes in flight included, and waits until they have all ended.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn jitter(delay_loop: Duration) -> Duration {
    if delay_loop.is_zero() {
        Duration::ZERO
    } else {
        delay_loop.mul_f64(rand::random::<f64>())
    }
}

async fn run(
    job: Job,
    first: Duration,
    events: mpsc::Sender<HealthEvent>,
    cancel: CancellationToken,
) {
    let mut state = RiseFall::new(job.schedule.thresholds, job.schedule.alpha);
    let mut wait = first;
    loop {
        // Cancellation is checked around every await, the probe included, so a hung probe
        // (a script, a backend that never answers) cannot hold shutdown up to its timeout.
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            result = async {
                tokio::time::sleep(wait).await;
                job.checker.check(job.target).await
            } => result,
        };
        let step = state.observe(&result);
        wait = match step.next {
            NextProbe::Loop => job.schedule.delay_loop,
            NextProbe::Retry => job.schedule.delay_before_retry,
        };
        let Some(transition) = step.transition else {
            continue;
        };
        if transition.up {
            tracing::info!(service = %job.service, backend = %job.backend, reason = %transition.reason, "backend up");
        } else {
            tracing::warn!(service = %job.service, backend = %job.backend, reason = %transition.reason, "backend down");
        }
        let event = HealthEvent {
            service: job.service.clone(),
            backend: job.backend,
            up: transition.up,
            reason: transition.reason,
            latency: if transition.up { result.ok() } else { None },
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            sent = events.send(event) => if sent.is_err() { return },
        }
    }
}

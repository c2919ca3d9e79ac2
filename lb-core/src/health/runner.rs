//! Runs the checks: one tokio task per (service, backend), each feeding its own [`RiseFall`]
//! and sending a [`HealthEvent`] on every transition.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::probes::ProbeRecord;
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
    /// Where every probe's outcome and latency is counted.
    pub probes: Arc<ProbeRecord>,
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
                let start = tokio::time::Instant::now();
                let result = job.checker.check(job.target).await;
                job.probes.observe(result.is_ok(), start.elapsed());
                result
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
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            sent = events.send(event) => if sent.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::super::tcp::TcpCheck;
    use super::super::{CheckFailure, CheckFuture};
    use super::*;

    /// Records when each target is probed; succeeds at once, or never returns when `hang`.
    #[derive(Debug, Default)]
    struct Recorder {
        probes: Mutex<Vec<(SocketAddr, Instant)>>,
        hang: bool,
    }

    impl Checker for Recorder {
        fn check(&self, target: SocketAddr) -> CheckFuture<'_> {
            self.probes
                .lock()
                .expect("lock")
                .push((target, Instant::now()));
            let hang = self.hang;
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok::<_, CheckFailure>(Duration::ZERO)
            })
        }
    }

    fn schedule(delay_loop_ms: u64, rise: u32, fall: u32, alpha: bool) -> Schedule {
        Schedule {
            delay_loop: Duration::from_millis(delay_loop_ms),
            delay_before_retry: Duration::from_millis(10),
            thresholds: Thresholds {
                rise,
                fall,
                retry: 0,
            },
            alpha,
        }
    }

    fn jobs(n: u16, checker: Arc<dyn Checker>, schedule: Schedule) -> Vec<Job> {
        (0..n)
            .map(|i| {
                let backend = SocketAddr::from(([127, 0, 0, 1], 20_000 + i));
                Job {
                    service: Arc::from("web"),
                    backend,
                    target: backend,
                    checker: checker.clone(),
                    schedule,
                    probes: Arc::default(),
                }
            })
            .collect()
    }

    // Virtual time: the schedule is what is under test, not how promptly a
    // loaded machine runs 200 tasks.
    #[tokio::test(start_paused = true)]
    async fn first_probes_are_spread_over_delay_loop() {
        let recorder = Arc::new(Recorder::default());
        let (tx, _rx) = mpsc::channel(16);
        let started = Instant::now();
        let runner = Runner::start(jobs(200, recorder.clone(), schedule(1000, 1, 1, false)), tx);
        assert_eq!(runner.len(), 200);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        runner.shutdown().await;

        let mut first: HashMap<SocketAddr, Duration> = HashMap::new();
        for (target, at) in recorder.probes.lock().expect("lock").iter() {
            first.entry(*target).or_insert(at.duration_since(started));
        }
        assert_eq!(
            first.len(),
            200,
            "every backend probed within one delay_loop"
        );
        // Uniform over [0, 1 s): 20 per 100 ms bucket on average. Lockstep would put all 200
        // in one bucket; a bound of 60 is far beyond chance for a uniform draw.
        let mut buckets = [0u32; 11];
        for offset in first.values() {
            let i = usize::try_from(offset.as_millis() / 100).expect("small");
            buckets[i.min(10)] += 1;
        }
        assert!(buckets.iter().all(|&b| b <= 60), "{buckets:?}");
        assert!(buckets[..10].iter().all(|&b| b >= 1), "{buckets:?}");
        let spread = *first.values().max().expect("some") - *first.values().min().expect("some");
        assert!(spread >= Duration::from_millis(700), "{spread:?}");
    }

    #[tokio::test]
    async fn shutdown_stops_tasks_with_probes_in_flight() {
        let hanging = Arc::new(Recorder {
            hang: true,
            ..Recorder::default()
        });
        let idle = Arc::new(Recorder::default());
        let (tx, _rx) = mpsc::channel(16);
        let mut all = jobs(100, hanging.clone(), schedule(10, 1, 1, false));
        all.extend(jobs(100, idle.clone(), schedule(60_000, 1, 1, false)));
        let runner = Runner::start(all, tx);
        // Every hanging task has started its probe by now (delay_loop 10 ms).
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(hanging.probes.lock().expect("lock").len(), 100);
        let start = Instant::now();
        tokio::time::timeout(Duration::from_millis(500), runner.shutdown())
            .await
            .expect("shutdown is prompt");
        assert!(start.elapsed() < Duration::from_millis(500));
        // Every task has ended and dropped its job, so only our handles remain.
        assert_eq!(Arc::strong_count(&hanging), 1);
        assert_eq!(Arc::strong_count(&idle), 1);
    }

    #[tokio::test]
    async fn cancel_token_stops_tasks() {
        let recorder = Arc::new(Recorder::default());
        let (tx, _rx) = mpsc::channel(16);
        let runner = Runner::start(jobs(10, recorder.clone(), schedule(5, 1, 1, false)), tx);
        tokio::time::sleep(Duration::from_millis(50)).await;
        runner.cancel_token().cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let count = recorder.probes.lock().expect("lock").len();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(recorder.probes.lock().expect("lock").len(), count);
        runner.shutdown().await;
    }

    #[tokio::test]
    async fn transitions_are_sent_with_reason_and_probes_counted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let up_addr = listener.local_addr().expect("addr");
        let down_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let tcp: Arc<dyn Checker> = Arc::new(TcpCheck {
            connect_timeout: Duration::from_millis(500),
            source_address: None,
        });
        let job = |backend, alpha| Job {
            service: Arc::from("portal"),
            backend,
            target: backend,
            checker: tcp.clone(),
            schedule: schedule(20, 2, 2, alpha),
            probes: Arc::default(),
        };
        let (tx, mut rx) = mpsc::channel(16);
        // Alpha on a listener: starts down, comes up after rise 2. Not alpha on a closed
        // port: starts up, goes down after fall 2.
        let (up_job, down_job) = (job(up_addr, true), job(down_addr, false));
        let (up_probes, down_probes) = (up_job.probes.clone(), down_job.probes.clone());
        let runner = Runner::start([up_job, down_job], tx);
        let mut events = HashMap::new();
        while events.len() < 2 {
            let ev = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .expect("event in time")
                .expect("channel open");
            events.insert(ev.backend, ev);
        }
        runner.shutdown().await;
        let up = &events[&up_addr];
        assert!(up.up);
        let seen = up_probes.snapshot();
        assert!(seen.count >= 2 && seen.failed == 0, "{seen:?}");
        assert!(seen.last_ok_latency_seconds.is_some());
        assert_eq!(&*up.service, "portal");
        assert_eq!(up.reason, "2 consecutive successful check(s) (rise 2)");
        let down = &events[&down_addr];
        assert!(!down.up);
        let seen = down_probes.snapshot();
        assert!(seen.count >= 2 && seen.failed == seen.count, "{seen:?}");
        assert_eq!(seen.last_ok_latency_seconds, None);
        assert_eq!(
            down.reason,
            "2 consecutive failed check(s) (fall 2), last: connection refused"
        );
    }

    #[tokio::test]
    async fn closed_event_channel_ends_tasks() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let down_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let tcp: Arc<dyn Checker> = Arc::new(TcpCheck {
            connect_timeout: Duration::from_millis(500),
            source_address: None,
        });
        let mut runner = Runner::start(
            [Job {
                service: Arc::from("web"),
                backend: down_addr,
                target: down_addr,
                checker: tcp,
                schedule: schedule(5, 1, 1, false),
                probes: Arc::default(),
            }],
            tx,
        );
        tokio::time::timeout(Duration::from_secs(2), runner.tasks.join_next())
            .await
            .expect("task ended on its own")
            .expect("one task")
            .expect("no panic");
    }
}

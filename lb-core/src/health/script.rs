//! External program check, like keepalived's `MISC_CHECK`: exit code 0 means up.
//!
//! The program runs from `argv` directly, with no shell, so nothing in the config is ever
//! re-parsed by `sh`. It runs in its own process group: on timeout, or when the probe is
//! cancelled, the whole group is killed, so a wrapper script's children die with it, and the
//! child is reaped so no zombie is left behind.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{BuildError, CheckFailure, CheckFuture, Checker};

/// Bytes kept from each of stdout and stderr. Enough for a reason line; the rest is read and
/// thrown away so a chatty script never blocks on a full pipe.
const KEEP_OUTPUT: usize = 512;

/// What a script check runs.
#[derive(Debug, Clone)]
pub struct ScriptSpec {
    /// Program and arguments; `argv[0]` is looked up in `PATH` if it has no `/`. The program
    /// also gets `LB_BACKEND_IP` and `LB_BACKEND_PORT` in its environment, so one script can
    /// serve every backend. No default: required.
    pub argv: Vec<OsString>,
    /// Time the program may run before its process group is killed, like keepalived's
    /// `misc_timeout`. Default 5 s.
    pub timeout: Duration,
    /// uid and gid to run as (keepalived's `script_user`); supplementary groups are dropped.
    /// Default: none, the daemon's own.
    pub run_as: Option<(u32, u32)>,
}

impl ScriptSpec {
    /// A spec for `argv` with the default timeout.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(5),
            run_as: None,
        }
    }
}

/// A ready script checker.
#[derive(Debug, Clone)]
pub struct ScriptCheck {
    program: OsString,
    args: Vec<OsString>,
    timeout: Duration,
    run_as: Option<(u32, u32)>,
}

impl ScriptCheck {
    /// Validates `spec`: `argv` must not be empty.
    pub fn new(spec: &ScriptSpec) -> Result<Self, BuildError> {
        let (program, args) = spec.argv.split_first().ok_or(BuildError::EmptyArgv)?;
        Ok(Self {
            program: program.clone(),
            args: args.to_vec(),
            timeout: spec.timeout,
            run_as: spec.run_as,
        })
    }

    async fn run(&self, target: SocketAddr) -> Result<Duration, CheckFailure> {
        let start = Instant::now();
        let mut command = Command::new(&self.program);
        if let Some((uid, gid)) = self.run_as {
            // std's spawn drops supplementary groups when a uid is set.
            command.uid(uid).gid(gid);
        }
        let mut child = command
            .args(&self.args)
            .env("LB_BACKEND_IP", target.ip().to_string())
            .env("LB_BACKEND_PORT", target.port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(CheckFailure::Spawn)?;
        // Armed from here on: if this future is dropped before the child is reaped, the whole
        // group dies, and tokio reaps the child it was told to kill on drop.
        let mut group = GroupKill(child.id().and_then(|pid| i32::try_from(pid).ok()));
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let mut out = Vec::new();
        let mut err = Vec::new();
        let finished = tokio::time::timeout(self.timeout, async {
            let (status, (), ()) = tokio::join!(
                child.wait(),
                drain(stdout, &mut out),
                drain(stderr, &mut err)
            );
            status
        })
        .await;
        let status = match finished {
            Ok(status) => status,
            Err(_) => {
                group.kill_now();
                // start_kill covers the child alone should the group kill have had no pid to
                // use; then wait reaps it, so it does not linger as a zombie.
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(CheckFailure::ScriptTimeout {
                    after: self.timeout,
                    output: fold(&out, &err),
                });
            }
        };
        // The child is reaped: disarm, so its pid, free for reuse now, is never signalled.
        group.disarm();
        let status = status.map_err(CheckFailure::Spawn)?;
        judge(status, &out, &err).map(|()| start.elapsed())
    }
}

impl Checker for ScriptCheck {
    fn check(&self, target: SocketAddr) -> CheckFuture<'_> {
        Box::pin(self.run(target))
    }
}

fn judge(status: ExitStatus, out: &[u8], err: &[u8]) -> Result<(), CheckFailure> {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(CheckFailure::Exit {
            code,
            output: fold(out, err),
        }),
        (None, signal) => Err(CheckFailure::Signal {
            signal: signal.unwrap_or(0),
            output: fold(out, err),
        }),
    }
}

/// Kills a process group when dropped, unless disarmed once its leader is reaped.
struct GroupKill(Option<i32>);

impl GroupKill {
    fn kill_now(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) takes no pointers; a negative pid names the process group that
            // `process_group(0)` created with the child as its leader.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Reads `from` to its end, keeping the first [`KEEP_OUTPUT`] bytes in `into`.
async fn drain<R: AsyncRead + Unpin>(from: Option<R>, into: &mut Vec<u8>) {
    let Some(mut from) = from else { return };
    let mut chunk = [0u8; 4096];
    while let Ok(n) = from.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        let room = KEEP_OUTPUT.saturating_sub(into.len());
        into.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// stdout then stderr on one line, for a failure reason.
fn fold(out: &[u8], err: &[u8]) -> String {
    let text = [out, err]
        .iter()
        .map(|b| String::from_utf8_lossy(b))
        .flat_map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join(" / ");
    text.chars().filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::testutil::ArgvProbe;

    fn sh(script: &str, timeout_ms: u64) -> ScriptCheck {
        let mut spec = ScriptSpec::new(["/bin/sh", "-c", script]);
        spec.timeout = Duration::from_millis(timeout_ms);
        ScriptCheck::new(&spec).expect("valid")
    }

    fn target() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8033))
    }

    /// The state letter of `/proc/<pid>/stat`, or `None` once the process is gone (reaped).
    fn proc_state(pid: i32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.trim().chars().next()
    }

    #[tokio::test]
    async fn exit_zero_is_up() {
        sh("exit 0", 2000).check(target()).await.expect("up");
    }

    /// keepalived's `script_user`: uid, gid and no supplementary groups.
    #[tokio::test]
    async fn runs_as_the_script_user_with_its_group_alone() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test needs root (setuid)"
        );
        let ids = "echo \"$(id -u) $(id -g) $(id -G)\"; test \"$(id -u) $(id -g) $(id -G)\" = '65534 65534 65534'";
        let mut spec = ScriptSpec::new(["/bin/sh", "-c", ids]);
        spec.run_as = Some((65534, 65534));
        let check = ScriptCheck::new(&spec).expect("valid");
        check.check(target()).await.expect("ran as nobody");
        let as_root = sh(ids, 2000)
            .check(target())
            .await
            .expect_err("root is not nobody");
        // uid and gid 0; root's own supplementary groups, if any, follow.
        assert!(
            as_root.to_string().starts_with("exit code 1: 0 0"),
            "{as_root}"
        );
    }

    #[tokio::test]
    async fn exit_one_is_down_with_output() {
        let e = sh("echo checking; echo 'db unreachable' >&2; exit 1", 2000)
            .check(target())
            .await
            .expect_err("down");
        assert_eq!(e.to_string(), "exit code 1: checking / db unreachable");
    }

    #[tokio::test]
    async fn backend_is_in_the_environment() {
        sh(
            r#"test "$LB_BACKEND_IP:$LB_BACKEND_PORT" = 127.0.0.1:8033"#,
            2000,
        )
        .check(target())
        .await
        .expect("env set");
    }

    #[tokio::test]
    async fn missing_program_fails_to_spawn() {
        let spec = ScriptSpec::new(["/nonexistent/lb-check"]);
        let e = ScriptCheck::new(&spec)
            .expect("valid")
            .check(target())
            .await
            .expect_err("spawn fails");
        assert!(matches!(e, CheckFailure::Spawn(_)), "{e}");
    }

    #[tokio::test]
    async fn signal_is_reported() {
        let e = sh("kill -TERM $$", 2000)
            .check(target())
            .await
            .expect_err("signalled");
        assert_eq!(e.to_string(), "killed by signal 15");
    }

    #[tokio::test]
    async fn hung_script_is_killed_at_timeout_and_reaped() {
        let dir = std::env::temp_dir().join(format!("lb-health-script-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let pids = dir.join("pids");
        // The shell records its own pid and a background child's, then waits on the child:
        // a wrapper whose child outlives it unless the whole group is killed.
        let script = format!(
            "sleep 60 & echo $$ $! > {}; echo started; wait",
            pids.display()
        );
        let start = Instant::now();
        let e = sh(&script, 300).check(target()).await.expect_err("killed");
        let took = start.elapsed();
        assert!(took < Duration::from_millis(800), "{took:?}");
        assert_eq!(e.to_string(), "killed after timeout 300ms: started");

        let recorded = std::fs::read_to_string(&pids).expect("pids written");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let [shell, sleeper]: [i32; 2] = recorded
            .split_whitespace()
            .map(|p| p.parse().expect("pid"))
            .collect::<Vec<_>>()
            .try_into()
            .expect("two pids");
        // Our direct child is reaped by the time the check returns: not even a zombie.
        assert_eq!(proc_state(shell), None, "shell {shell} left behind");
        // The grandchild got SIGKILL with the group; reaping it is its new parent's (init's)
        // job, so it may linger briefly as a zombie, but it must not be running.
        let deadline = Instant::now() + Duration::from_secs(2);
        while matches!(proc_state(sleeper), Some(s) if s != 'Z') {
            assert!(Instant::now() < deadline, "sleep {sleeper} still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn cancelled_probe_kills_the_group() {
        let dir = std::env::temp_dir().join(format!("lb-health-cancel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let pids = dir.join("pids");
        let check = sh(
            &format!("echo $$ > {}; exec sleep 60", pids.display()),
            60_000,
        );
        // Drop the probe mid-run, as the runner does on shutdown.
        let dropped = tokio::time::timeout(Duration::from_millis(300), check.check(target())).await;
        assert!(dropped.is_err());
        let recorded = std::fs::read_to_string(&pids).expect("pid written");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let pid: i32 = recorded.trim().parse().expect("pid");
        let deadline = Instant::now() + Duration::from_secs(2);
        while proc_state(pid).is_some() {
            assert!(Instant::now() < deadline, "{pid} not killed and reaped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn config_arguments_reach_the_program_verbatim_and_run_nothing() {
        let probe = ArgvProbe::new("health-argv");
        let mut argv = probe.command();
        argv.extend(probe.hostile.iter().cloned());
        let check = ScriptCheck::new(&ScriptSpec::new(argv)).expect("valid");
        check.check(target()).await.expect("the program ran");
        assert_eq!(probe.recorded(), Some(probe.hostile.clone()));
        probe.assert_nothing_ran();
    }

    #[test]
    fn empty_argv_is_rejected() {
        let spec = ScriptSpec::new(Vec::<OsString>::new());
        assert!(matches!(
            ScriptCheck::new(&spec),
            Err(BuildError::EmptyArgv)
        ));
    }

    #[test]
    fn output_is_folded_to_one_line() {
        assert_eq!(fold(b"a\n\n b \n", b"err\r\n"), "a / b / err");
        assert_eq!(fold(b"", b""), "");
    }
}

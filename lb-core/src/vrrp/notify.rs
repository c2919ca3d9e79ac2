//! Notify scripts with keepalived's calling conventions: `notify_master`,
//! `notify_backup`, `notify_fault` and `notify_stop` run as configured, and
//! `notify` gets `INSTANCE <name> <STATE> <priority>` appended. Commands are
//! argv lists run without a shell, so no config value is ever interpreted.

use std::path::{Path, PathBuf};

use super::config::InstanceConfig;
use super::state::NotifyState;

/// The scripts to run for one transition, with their arguments.
pub fn commands(
    config: &InstanceConfig,
    state: NotifyState,
    priority: u8,
) -> Vec<(PathBuf, Vec<String>)> {
    let specific = match state {
        NotifyState::Master => &config.notify_master,
        NotifyState::Backup => &config.notify_backup,
        NotifyState::Fault => &config.notify_fault,
        NotifyState::Stop => &config.notify_stop,
    };
    let mut out = Vec::new();
    if let Some((program, args)) = specific.as_ref().and_then(|a| a.split_first()) {
        out.push((PathBuf::from(program), args.to_vec()));
    }
    if let Some((program, args)) = config.notify.as_ref().and_then(|a| a.split_first()) {
        let mut args = args.to_vec();
        args.extend([
            "INSTANCE".to_owned(),
            config.name.clone(),
            state.as_str().to_owned(),
            priority.to_string(),
        ]);
        out.push((PathBuf::from(program), args));
    }
    out
}

/// Starts the scripts without waiting: a slow script must not delay adverts.
/// Each exit status is logged when it comes. They run as `run_as` (uid,
/// gid; supplementary groups dropped) when given.
pub fn spawn(commands: Vec<(PathBuf, Vec<String>)>, run_as: Option<(u32, u32)>) {
    for (script, args) in commands {
        let mut command = tokio::process::Command::new(&script);
        if let Some((uid, gid)) = run_as {
            command.uid(uid).gid(gid);
        }
        match command.args(&args).spawn() {
            Ok(mut child) => {
                tokio::spawn(async move {
                    match child.wait().await {
                        Ok(status) if status.success() => {}
                        Ok(status) => log_failure(&script, &status.to_string()),
                        Err(e) => log_failure(&script, &e.to_string()),
                    }
                });
            }
            Err(e) => log_failure(&script, &e.to_string()),
        }
    }
}

fn log_failure(script: &Path, reason: &str) {
    tracing::warn!(script = %script.display(), reason, "VRRP notify script failed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::testutil::ArgvProbe;

    #[test]
    fn keepalived_arguments() {
        let mut c = InstanceConfig::new("VI_1", "eth0", 51, 100, Vec::new());
        c.notify = Some(vec!["/etc/lb/notify.sh".into()]);
        c.notify_master = Some(vec!["/etc/lb/master.sh".into(), "--vip".into()]);
        assert_eq!(
            commands(&c, NotifyState::Master, 150),
            vec![
                (
                    PathBuf::from("/etc/lb/master.sh"),
                    vec!["--vip".to_string()]
                ),
                (
                    PathBuf::from("/etc/lb/notify.sh"),
                    vec![
                        "INSTANCE".into(),
                        "VI_1".into(),
                        "MASTER".into(),
                        "150".into()
                    ]
                ),
            ]
        );
        assert_eq!(commands(&c, NotifyState::Fault, 100).len(), 1);
    }

    /// keepalived's `script_user` applies to notify scripts too.
    #[tokio::test]
    async fn runs_as_the_script_user() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test needs root (setuid)"
        );
        let out = std::env::temp_dir().join(format!("lb-notify-user-{}", std::process::id()));
        // The script's user may write this file, not create it: it exists
        // first, writable by all.
        std::fs::write(&out, "").unwrap();
        std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();
        let mut c = InstanceConfig::new("VI_1", "eth0", 51, 100, Vec::new());
        c.notify = Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("id -u > {}; id -G >> {}", out.display(), out.display()),
        ]);
        spawn(commands(&c, NotifyState::Master, 150), Some((65534, 65534)));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let written = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.lines().count() == 2 || std::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let _ = std::fs::remove_file(&out);
        assert_eq!(written, "65534\n65534\n");
    }

    #[tokio::test]
    async fn config_values_reach_the_script_verbatim_and_run_nothing() {
        let probe = ArgvProbe::new("notify-argv");
        // The instance name is appended too: it must not be parsed either.
        let name = probe.hostile[0].clone();
        let mut c = InstanceConfig::new(name.clone(), "eth0", 51, 100, Vec::new());
        let mut notify = probe.command();
        notify.extend(probe.hostile.iter().cloned());
        c.notify = Some(notify);
        spawn(commands(&c, NotifyState::Master, 150), None);
        let mut expected = probe.hostile.clone();
        expected.extend(["INSTANCE".into(), name, "MASTER".into(), "150".into()]);
        assert_eq!(probe.wait_recorded().await, expected);
        probe.assert_nothing_ran();
    }
}

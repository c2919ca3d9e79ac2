//! Who can change what the daemon runs.
//!
//! The daemon runs health-check, track and notify scripts as its own user,
//! usually root, or as `daemon.script_user`. A script that another user can
//! rewrite, or that sits in a directory another user can write (and so can
//! swap the file or a symlink on its path), hands that user the script's
//! privileges. keepalived refuses such scripts with `enable_script_security`;
//! lb does the same by default (`daemon.script_security`, default true).
//!
//! Trusted owners are root, the daemon's own user and the script user. A
//! file or directory is unsafe when another user owns it, or when others
//! may write it, or its group may and that group is not root's (gid 0, as
//! keepalived allows). A world-writable directory with the sticky bit
//! (`/tmp`) is safe, since only a file's owner may then rename or remove
//! it. Every directory on the path as written and on the resolved path is
//! checked, and each symlink on the way must have a trusted owner too.
//!
//! With a script user, the program must also be one that user can run:
//! every directory on the resolved path searchable and the file executable
//! by its uid and primary group alone (the groups a script runs with), or
//! the script would fail at every run instead of at config time.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::ScriptUser;

/// What glibc's `execvp(3)`, and so the spawn of a script, searches when
/// `PATH` is unset.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

const GROUP_WRITE: u32 = 0o020;
const OTHER_WRITE: u32 = 0o002;
const STICKY: u32 = 0o1000;
const ANY_EXEC: u32 = 0o111;

/// Why the daemon must not run `program` (argv[0] of a configured script,
/// looked up in `path_var` like `execvp` when it has no `/`), or `None` when
/// it is safe. `euid` is the daemon's effective user; `run_as` the
/// `script_user`, if any.
pub fn problem(
    program: &str,
    path_var: Option<&OsStr>,
    euid: u32,
    run_as: Option<&ScriptUser>,
) -> Option<String> {
    let file = match resolve(program, path_var, run_as) {
        Ok(f) => f,
        Err(reason) => return Some(reason),
    };
    check(&file, euid, run_as).err()
}

/// The file `program` names: itself when it has a `/`, else the first file
/// of that name in `path_var`'s absolute directories that the script's user
/// may execute, as `execvp` skips the others.
fn resolve(
    program: &str,
    path_var: Option<&OsStr>,
    run_as: Option<&ScriptUser>,
) -> Result<PathBuf, String> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        if !path.is_absolute() {
            return Err(format!(
                "{program}: a relative path depends on the daemon's working directory; write it absolute"
            ));
        }
        return Ok(path);
    }
    let search = path_var.unwrap_or(OsStr::new(DEFAULT_PATH));
    std::env::split_paths(search)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| {
                m.is_file()
                    && match run_as {
                        Some(u) => may_execute(&m, u),
                        None => m.permissions().mode() & ANY_EXEC != 0,
                    }
            })
        })
        .ok_or_else(|| {
            format!(
                "{program}: no executable of that name in PATH ({}){}",
                search.to_string_lossy(),
                run_as
                    .map(|u| format!(" for script_user {:?}", u.name))
                    .unwrap_or_default()
            )
        })
}

/// Whether `user`, with its primary group alone, may execute the file or
/// search the directory `m` describes. Root may search any directory and
/// execute a file with any execute bit.
fn may_execute(m: &Metadata, user: &ScriptUser) -> bool {
    let mode = m.permissions().mode();
    if user.uid == 0 {
        return m.is_dir() || mode & ANY_EXEC != 0;
    }
    let bit = if m.uid() == user.uid {
        0o100
    } else if m.gid() == user.gid {
        0o010
    } else {
        0o001
    };
    mode & bit != 0
}

/// Whether users other than the trusted ones may write `m`.
fn writable_by_others(m: &Metadata) -> bool {
    let mode = m.permissions().mode();
    let group = mode & GROUP_WRITE != 0 && m.gid() != 0;
    let other = mode & OTHER_WRITE != 0;
    (group || other) && !(m.is_dir() && mode & STICKY != 0)
}

fn check(file: &Path, euid: u32, run_as: Option<&ScriptUser>) -> Result<(), String> {
    let trusted =
        |m: &Metadata| m.uid() == 0 || m.uid() == euid || run_as.is_some_and(|u| u.uid == m.uid());
    let real = std::fs::canonicalize(file)
        .map_err(|e| format!("{}: cannot be resolved: {e}", file.display()))?;
    let name = |what: &Path| {
        if what == file || what == real {
            "the script".to_owned()
        } else {
            what.display().to_string()
        }
    };
    let fail = |what: &Path, reason: String| {
        Err(format!(
            "{}: {} {reason}; whoever can change it can run anything as the script's user \
             (fix the ownership or permissions, or set daemon.script_security = false)",
            file.display(),
            name(what)
        ))
    };
    let unsafe_mode = |m: &Metadata| {
        format!(
            "is writable by a group other than root's or by others (mode {:04o}, gid {})",
            m.permissions().mode() & 0o7777,
            m.gid()
        )
    };
    // The path as written (its symlinks included), then the resolved one,
    // whose every directory the script user must be able to search.
    for (path, resolved) in [(file, false), (real.as_path(), true)] {
        let mut prefix = PathBuf::new();
        for c in path.components() {
            prefix.push(c);
            let m = std::fs::symlink_metadata(&prefix)
                .map_err(|e| format!("{}: {}: {e}", file.display(), prefix.display()))?;
            if !trusted(&m) {
                return fail(&prefix, format!("is owned by uid {}", m.uid()));
            }
            if m.is_dir() && writable_by_others(&m) {
                return fail(&prefix, unsafe_mode(&m));
            }
            if resolved
                && let Some(user) = run_as
                && !may_execute(&m, user)
            {
                let verb = if m.is_dir() { "search" } else { "execute" };
                return Err(format!(
                    "{}: script_user {:?} (uid {}, gid {}) cannot {verb} {} (mode {:04o}, owner {}:{})",
                    file.display(),
                    user.name,
                    user.uid,
                    user.gid,
                    name(&prefix),
                    m.permissions().mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ));
            }
        }
    }
    // The walk saw the file itself last (no symlinks are left on the
    // resolved path), its owner included.
    let m = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", file.display()))?;
    if !m.is_file() {
        return Err(format!("{}: not a regular file", file.display()));
    }
    let mode = m.permissions().mode();
    if mode & ANY_EXEC == 0 {
        return Err(format!(
            "{}: not executable (mode {:04o})",
            file.display(),
            mode & 0o7777
        ));
    }
    if writable_by_others(&m) {
        return fail(file, unsafe_mode(&m));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Dir(PathBuf);

    impl Dir {
        /// A fresh 0700 directory under the system temp dir (sticky `/tmp`).
        fn new(name: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("lb-scriptsec-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir(&d).unwrap();
            chmod(&d, 0o700);
            Dir(d)
        }

        fn script(&self, name: &str, mode: u32) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
            chmod(&p, mode);
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    fn problem_of(p: &Path) -> Option<String> {
        problem(p.to_str().unwrap(), None, euid(), None)
    }

    #[test]
    fn a_script_only_trusted_users_can_change_is_safe() {
        let d = Dir::new("safe");
        assert_eq!(problem_of(&d.script("check.sh", 0o755)), None);
        // Its directory sits in the sticky, world-writable temp dir.
        let tmp = std::fs::metadata(std::env::temp_dir()).unwrap();
        assert_ne!(tmp.permissions().mode() & STICKY, 0);
    }

    #[test]
    fn a_script_others_may_write_is_refused() {
        let d = Dir::new("filemode");
        let s = d.script("check.sh", 0o757);
        let reason = problem_of(&s).unwrap();
        assert!(
            reason.contains(
                "the script is writable by a group other than root's or by others (mode 0757"
            ),
            "{reason}"
        );
        assert!(
            reason.contains("daemon.script_security = false"),
            "{reason}"
        );
    }

    /// keepalived's rule: group write is fine when the group is root's.
    #[test]
    fn group_write_is_refused_unless_the_group_is_root() {
        assert_eq!(euid(), 0, "this test needs root (chgrp to other groups)");
        let d = Dir::new("group");
        let s = d.script("check.sh", 0o775);
        assert_eq!(problem_of(&s), None);
        std::os::unix::fs::chown(&s, None, Some(65534)).unwrap();
        let reason = problem_of(&s).unwrap();
        assert!(
            reason.contains(
                "the script is writable by a group other than root's or by others (mode 0775, gid 65534)"
            ),
            "{reason}"
        );
        std::os::unix::fs::chown(&s, None, Some(0)).unwrap();
        chmod(&d.0, 0o770);
        assert_eq!(problem_of(&s), None);
        std::os::unix::fs::chown(&d.0, None, Some(65534)).unwrap();
        let reason = problem_of(&s).unwrap();
        assert!(reason.contains(&d.0.display().to_string()), "{reason}");
    }

    #[test]
    fn a_directory_others_may_write_is_refused_unless_sticky() {
        let d = Dir::new("dirmode");
        let sub = d.0.join("scripts");
        std::fs::create_dir(&sub).unwrap();
        let s = sub.join("check.sh");
        std::fs::write(&s, "#!/bin/sh\n").unwrap();
        chmod(&s, 0o755);
        chmod(&sub, 0o777);
        let reason = problem_of(&s).unwrap();
        assert!(
            reason.contains(&format!(
                "{} is writable by a group other than root's or by others (mode 0777",
                sub.display()
            )),
            "{reason}"
        );
        chmod(&sub, 0o1777);
        assert_eq!(problem_of(&s), None);
    }

    #[test]
    fn a_symlink_through_an_unsafe_directory_is_refused() {
        let safe = Dir::new("link-target");
        let target = safe.script("check.sh", 0o755);
        let open = Dir::new("link-open");
        chmod(&open.0, 0o777);
        let link = open.0.join("check");
        symlink(&target, &link).unwrap();
        // The target is fine, but anyone could repoint the link.
        let reason = problem_of(&link).unwrap();
        assert!(reason.contains("or by others (mode 0777"), "{reason}");
        // And a safe link to an unsafe target is refused for the target.
        chmod(&open.0, 0o700);
        chmod(&safe.0, 0o777);
        let reason = problem_of(&link).unwrap();
        assert!(reason.contains(&safe.0.display().to_string()), "{reason}");
    }

    #[test]
    fn a_script_owned_by_another_user_is_refused() {
        assert_eq!(euid(), 0, "this test needs root (chown to another user)");
        let d = Dir::new("owner");
        let s = d.script("check.sh", 0o755);
        std::os::unix::fs::chown(&s, Some(65534), None).unwrap();
        let reason = problem_of(&s).unwrap();
        assert!(
            reason.contains("the script is owned by uid 65534"),
            "{reason}"
        );
        std::os::unix::fs::chown(&s, Some(0), None).unwrap();
        std::os::unix::fs::chown(&d.0, Some(65534), None).unwrap();
        let reason = problem_of(&s).unwrap();
        assert!(reason.contains("is owned by uid 65534"), "{reason}");
    }

    #[test]
    fn names_are_looked_up_in_path_and_must_exist() {
        let d = Dir::new("lookup");
        d.script("lb-probe", 0o755);
        let path = std::env::join_paths(["relative/dir".into(), d.0.clone()]).unwrap();
        assert_eq!(problem("lb-probe", Some(&path), euid(), None), None);
        chmod(&d.0, 0o777);
        let reason = problem("lb-probe", Some(&path), euid(), None).unwrap();
        assert!(reason.contains("or by others (mode 0777"), "{reason}");
        let reason = problem("lb-no-such-probe", Some(&path), euid(), None).unwrap();
        assert!(
            reason.contains("no executable of that name in PATH"),
            "{reason}"
        );
        // sh itself, as a health check would find it.
        assert_eq!(problem("sh", None, euid(), None), None);
    }

    #[test]
    fn relative_missing_and_unexecutable_paths_are_refused() {
        let d = Dir::new("misc");
        let reason = problem("./check.sh", None, euid(), None).unwrap();
        assert!(reason.contains("write it absolute"), "{reason}");
        let missing = d.0.join("nope.sh");
        assert!(problem_of(&missing).unwrap().contains("cannot be resolved"));
        let plain = d.script("plain.sh", 0o644);
        assert!(
            problem_of(&plain)
                .unwrap()
                .contains("not executable (mode 0644)")
        );
        assert!(problem_of(&d.0).unwrap().contains("not a regular file"));
    }

    fn nobody() -> ScriptUser {
        ScriptUser {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        }
    }

    /// A script the script user cannot run would fail at every run: it is
    /// refused when the config is read, naming what stands in the way.
    #[test]
    fn the_script_user_must_be_able_to_run_the_script() {
        let d = Dir::new("runas");
        let s = d.script("check.sh", 0o755);
        let as_nobody = |p: &Path| problem(p.to_str().unwrap(), None, euid(), Some(&nobody()));
        // Dir::new is 0700: nobody cannot get in.
        let reason = as_nobody(&s).unwrap();
        assert!(
            reason.contains(&format!(
                "script_user \"nobody\" (uid 65534, gid 65534) cannot search {} (mode 0700",
                d.0.display()
            )),
            "{reason}"
        );
        chmod(&d.0, 0o755);
        assert_eq!(as_nobody(&s), None);
        chmod(&s, 0o744);
        let reason = as_nobody(&s).unwrap();
        assert!(
            reason.contains("cannot execute the script (mode 0744"),
            "{reason}"
        );
        // Through a symlink, the file it names is what must be executable.
        let link = d.0.join("check");
        symlink(&s, &link).unwrap();
        let reason = as_nobody(&link).unwrap();
        assert!(
            reason.contains("cannot execute the script (mode 0744"),
            "{reason}"
        );
        // Root runs anything with an execute bit.
        let root = ScriptUser {
            name: "root".into(),
            uid: 0,
            gid: 0,
        };
        chmod(&d.0, 0o700);
        assert_eq!(
            problem(s.to_str().unwrap(), None, euid(), Some(&root)),
            None
        );
    }

    /// Its own files, and its group's execute bit, are the script user's.
    #[test]
    fn the_script_user_may_own_its_script() {
        assert_eq!(euid(), 0, "this test needs root (chown to another user)");
        let d = Dir::new("runas-owner");
        chmod(&d.0, 0o755);
        let s = d.script("check.sh", 0o700);
        std::os::unix::fs::chown(&s, Some(65534), Some(0)).unwrap();
        let as_nobody = problem(s.to_str().unwrap(), None, euid(), Some(&nobody()));
        assert_eq!(as_nobody, None);
        // Without the script user, a file owned by nobody is not trusted.
        assert!(problem_of(&s).unwrap().contains("is owned by uid 65534"));
        std::os::unix::fs::chown(&s, Some(0), Some(65534)).unwrap();
        chmod(&s, 0o750);
        let as_nobody = problem(s.to_str().unwrap(), None, euid(), Some(&nobody()));
        assert_eq!(as_nobody, None);
    }

    /// Like execvp, the lookup skips a file the script user cannot execute.
    #[test]
    fn path_lookup_finds_what_the_script_user_can_execute() {
        let first = Dir::new("runas-path1");
        let second = Dir::new("runas-path2");
        chmod(&first.0, 0o755);
        chmod(&second.0, 0o755);
        first.script("lb-probe", 0o700);
        second.script("lb-probe", 0o755);
        let path = std::env::join_paths([first.0.clone(), second.0.clone()]).unwrap();
        assert_eq!(
            problem("lb-probe", Some(&path), euid(), Some(&nobody())),
            None
        );
        chmod(&second.0.join("lb-probe"), 0o700);
        let reason = problem("lb-probe", Some(&path), euid(), Some(&nobody())).unwrap();
        assert!(
            reason.contains("no executable of that name in PATH")
                && reason.contains("for script_user \"nobody\""),
            "{reason}"
        );
    }
}

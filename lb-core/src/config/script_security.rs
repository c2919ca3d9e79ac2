//! Who can change what the daemon runs.
//!
//! The daemon runs health-check, track and notify scripts as its own user,
//! usually root. A script that another user can rewrite, or that sits in a
//! directory another user can write (and so can swap the file or a symlink
//! on its path), hands that user root. keepalived refuses such scripts with
//! `enable_script_security`; lb does the same by default
//! (`daemon.script_security`, default true).
//!
//! Trusted owners are root and the daemon's own user. A file or directory is
//! unsafe when another user owns it, or when group or others may write it;
//! a group/world-writable directory with the sticky bit (`/tmp`) is safe,
//! since only a file's owner may then rename or remove it. Every directory
//! on the path as written and on the resolved path is checked, and each
//! symlink on the way must have a trusted owner too.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What glibc's `execvp(3)`, and so the spawn of a script, searches when
/// `PATH` is unset.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

const GROUP_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;
const ANY_EXEC: u32 = 0o111;

/// Why the daemon must not run `program` (argv[0] of a configured script,
/// looked up in `path_var` like `execvp` when it has no `/`), or `None` when
/// it is safe. `euid` is the daemon's effective user.
pub fn problem(program: &str, path_var: Option<&OsStr>, euid: u32) -> Option<String> {
    let file = match resolve(program, path_var) {
        Ok(f) => f,
        Err(reason) => return Some(reason),
    };
    check(&file, euid).err()
}

/// The file `program` names: itself when it has a `/`, else the first
/// executable file of that name in `path_var`'s absolute directories.
fn resolve(program: &str, path_var: Option<&OsStr>) -> Result<PathBuf, String> {
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
            std::fs::metadata(p)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & ANY_EXEC != 0)
        })
        .ok_or_else(|| {
            format!(
                "{program}: no executable of that name in PATH ({})",
                search.to_string_lossy()
            )
        })
}

fn check(file: &Path, euid: u32) -> Result<(), String> {
    let trusted = |m: &Metadata| m.uid() == 0 || m.uid() == euid;
    let fail = |what: &Path, reason: String| {
        Err(format!(
            "{}: {} {reason}; whoever can change it can run anything as this daemon's user \
             (fix the ownership or permissions, or set daemon.script_security = false)",
            file.display(),
            if what == file {
                "the script".to_owned()
            } else {
                what.display().to_string()
            }
        ))
    };
    let real = std::fs::canonicalize(file)
        .map_err(|e| format!("{}: cannot be resolved: {e}", file.display()))?;
    // The path as written (its symlinks included), then the resolved one.
    for path in [file, real.as_path()] {
        let mut prefix = PathBuf::new();
        for c in path.components() {
            prefix.push(c);
            let m = std::fs::symlink_metadata(&prefix)
                .map_err(|e| format!("{}: {}: {e}", file.display(), prefix.display()))?;
            if !trusted(&m) {
                return fail(&prefix, format!("is owned by uid {}", m.uid()));
            }
            let mode = m.permissions().mode();
            if m.is_dir() && mode & GROUP_OTHER_WRITE != 0 && mode & STICKY == 0 {
                return fail(
                    &prefix,
                    format!(
                        "is writable by group or others (mode {:04o})",
                        mode & 0o7777
                    ),
                );
            }
        }
    }
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
    if !trusted(&m) {
        return fail(file, format!("is owned by uid {}", m.uid()));
    }
    if mode & GROUP_OTHER_WRITE != 0 {
        return fail(
            file,
            format!(
                "is writable by group or others (mode {:04o})",
                mode & 0o7777
            ),
        );
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
        problem(p.to_str().unwrap(), None, euid())
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
            reason.contains("the script is writable by group or others (mode 0757)"),
            "{reason}"
        );
        assert!(
            reason.contains("daemon.script_security = false"),
            "{reason}"
        );
        chmod(&s, 0o775);
        assert!(problem_of(&s).is_some());
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
                "{} is writable by group or others (mode 0777)",
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
        assert!(reason.contains("writable by group or others"), "{reason}");
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
        assert_eq!(problem("lb-probe", Some(&path), euid()), None);
        chmod(&d.0, 0o777);
        let reason = problem("lb-probe", Some(&path), euid()).unwrap();
        assert!(reason.contains("writable by group or others"), "{reason}");
        let reason = problem("lb-no-such-probe", Some(&path), euid()).unwrap();
        assert!(
            reason.contains("no executable of that name in PATH"),
            "{reason}"
        );
        // sh itself, as a health check would find it.
        assert_eq!(problem("sh", None, euid()), None);
    }

    #[test]
    fn relative_missing_and_unexecutable_paths_are_refused() {
        let d = Dir::new("misc");
        let reason = problem("./check.sh", None, euid()).unwrap();
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
}

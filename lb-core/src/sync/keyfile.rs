//! The shared key, read from a file only its owner (and group) may read.

use std::{os::unix::fs::PermissionsExt, path::Path};

use super::wire::{Key, MIN_KEY_LEN};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("sync key file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error(
        "sync key file {path} is accessible to other users (mode {mode:o}): chmod 600 it, the key authenticates connection state"
    )]
    Exposed { path: String, mode: u32 },
    #[error(
        "sync key file {path} holds {len} bytes; at least {MIN_KEY_LEN} are needed (e.g. `head -c 32 /dev/urandom | base64 > {path}`)"
    )]
    Short { path: String, len: usize },
}

/// Reads the key: the file's bytes without surrounding whitespace (a
/// trailing newline from an editor or `base64` is not part of it). Refused
/// if "other" has any permission on the file, or if it is too short.
pub fn load(path: &Path) -> Result<Key, KeyFileError> {
    let shown = path.display().to_string();
    let read_err = |error| KeyFileError::Read {
        path: shown.clone(),
        error,
    };
    let mode = std::fs::metadata(path)
        .map_err(read_err)?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o007 != 0 {
        return Err(KeyFileError::Exposed { path: shown, mode });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    let secret = bytes.trim_ascii();
    Key::new(secret).ok_or(KeyFileError::Short {
        path: shown,
        len: secret.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, content: &[u8], mode: u32) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("lb-sync-key-{}-{name}", std::process::id()));
        std::fs::write(&p, content).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn world_readable_and_short_keys_are_refused() {
        let good = write("good", b"0123456789abcdef0123\n", 0o600);
        assert!(load(&good).is_ok());
        let group = write("group", b"0123456789abcdef0123\n", 0o640);
        assert!(load(&group).is_ok());
        let world = write("world", b"0123456789abcdef0123\n", 0o644);
        assert!(matches!(
            load(&world),
            Err(KeyFileError::Exposed { mode: 0o644, .. })
        ));
        let short = write("short", b"  tooshort \n", 0o600);
        assert!(matches!(
            load(&short),
            Err(KeyFileError::Short { len: 8, .. })
        ));
        let missing = std::env::temp_dir().join("lb-sync-key-does-not-exist");
        assert!(matches!(load(&missing), Err(KeyFileError::Read { .. })));
        for p in [good, group, world, short] {
            let _ = std::fs::remove_file(p);
        }
    }
}

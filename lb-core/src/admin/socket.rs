//! The admin socket file: created mode 0600 in a directory no other user
//! may write to, a stale one replaced, a live one left alone, removed again
//! when the server is dropped.

use std::{
    fs::{self, Permissions},
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("creating the admin socket's directory {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "admin socket directory {dir} {why}: another user could put their own socket in its place; use a directory only root or the daemon's user may write to, like /run/lb"
    )]
    UnsafeDir { dir: PathBuf, why: String },
    #[error("another daemon answers on the admin socket {0}; stop it first")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Mode of the admin socket: the daemon's user only (root passes anyway).
pub const SOCKET_MODE: u32 = 0o600;
/// Mode of the socket's directory when the daemon creates it: others may
/// traverse it, the socket's own mode keeps them out.
const DIR_MODE: u32 = 0o755;

/// The bound socket file, removed on drop.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    owner: u32,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// uid owning the socket: the daemon's user.
    pub fn owner(&self) -> u32 {
        self.owner
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "removing the admin socket");
        }
    }
}

/// Binds `path` with mode [`SOCKET_MODE`], creating its directory if
/// missing. A socket file nobody answers on (a daemon that crashed) is
/// replaced; one that answers means another daemon runs, and is an error.
/// A directory another user may write to is refused (see [`check_dir`]).
pub async fn bind(path: &Path) -> Result<(UnixListener, SocketFile), SocketError> {
    let io_err = |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|source| SocketError::CreateDir {
                dir: dir.to_path_buf(),
                source,
            })?;
        for d in dir.ancestors().filter(|d| !d.as_os_str().is_empty()) {
            check_dir(d)?;
        }
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(SocketError::NotASocket(path.to_path_buf()));
        }
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing a stale admin socket");
                fs::remove_file(path).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        },
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    // Until this chmod the socket has the umask's mode; the server checks
    // every peer's uid anyway, so the window only lets a peer be refused.
    // The guard exists from here on so an error below removes the socket.
    let mut file = SocketFile {
        path: path.to_path_buf(),
        owner: 0,
    };
    fs::set_permissions(path, Permissions::from_mode(SOCKET_MODE)).map_err(io_err)?;
    file.owner = fs::metadata(path).map_err(io_err)?.uid();
    Ok((listener, file))
}

/// Refuses a directory on the socket's path that a user other than root and
/// the daemon's own may rename or delete entries in: that user could swap
/// the socket for their own, which `lb` would then trust, or for a symlink
/// between bind and chmod, so that the chmod hits another file. A sticky
/// directory (`/tmp`) is safe: there only an entry's owner may do that.
fn check_dir(dir: &Path) -> Result<(), SocketError> {
    let unsafe_dir = |why: String| SocketError::UnsafeDir {
        dir: dir.to_path_buf(),
        why,
    };
    let m = fs::metadata(dir).map_err(|source| SocketError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != 0 && m.uid() != me {
        return Err(unsafe_dir(format!("is owned by uid {}", m.uid())));
    }
    let mode = m.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(unsafe_dir(format!(
            "is writable by group or others (mode {:o}) and not sticky",
            mode & 0o7777
        )));
    }
    Ok(())
}

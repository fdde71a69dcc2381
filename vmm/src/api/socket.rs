//! The API's Unix socket: created owner-only, never over an existing path, removed when
//! the server stops (and only if the path is still our socket).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Permissions of the socket file: the owner may connect, nobody else.
pub const SOCKET_MODE: u32 = 0o600;
/// Pending connections the kernel queues.
const BACKLOG: i32 = 16;

/// Why the socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The path exists: another VMM's socket, a stale one, or any other file.
    #[error(
        "API socket path {0} already exists; not replacing it (remove it if no VMM is using it)"
    )]
    Exists(PathBuf),
    /// The path does not fit in a socket address.
    #[error("API socket path {0} is too long (at most 107 bytes)")]
    TooLong(PathBuf),
    /// A system call failed.
    #[error("API socket {path}: {op}: {source}")]
    Os {
        /// The path.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// A listening socket bound at a path we created.
#[derive(Debug)]
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file, to recognise it at removal.
    file: (u64, u64),
}

impl ApiSocket {
    /// Create a listening socket at `path` with mode [`SOCKET_MODE`]. Refuses an existing
    /// path of any kind: it may be another VMM's live socket, and unlinking it would cut
    /// that VMM off from its clients.
    pub fn bind(path: &Path) -> Result<ApiSocket, SocketError> {
        let os = |op| {
            move |source| SocketError::Os {
                path: path.to_path_buf(),
                op,
                source,
            }
        };
        if fs::symlink_metadata(path).is_ok() {
            return Err(SocketError::Exists(path.to_path_buf()));
        }
        let addr = sockaddr(path)?;
        // SAFETY: socket(2) with constant arguments; the result is checked below.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(os("socket")(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // Linux creates the socket file with the socket inode's mode (less the umask): set
        // it before bind(2), so that the file is never reachable by others, not even
        // between bind and a chmod.
        // SAFETY: fchmod(2) on a descriptor we own; the result is checked.
        if unsafe { libc::fchmod(sock.as_raw_fd(), SOCKET_MODE) } < 0 {
            return Err(os("fchmod")(io::Error::last_os_error()));
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: `addr` is an initialised sockaddr_un that outlives the call; `len` is its size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EADDRINUSE) => SocketError::Exists(path.to_path_buf()),
                _ => os("bind")(e),
            });
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                // We just created it: remove it rather than leave a dead socket behind.
                let _ = fs::remove_file(path);
                return Err(os("stat")(e));
            }
        };
        let socket = ApiSocket {
            listener: UnixListener::from(sock),
            path: path.to_path_buf(),
            file: (meta.dev(), meta.ino()),
        };
        // Belt and braces, on a file only we can reach already.
        if meta.mode() & 0o777 != SOCKET_MODE {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))
                .map_err(os("chmod"))?;
        }
        // SAFETY: listen(2) on the bound socket we own; the result is checked.
        if unsafe { libc::listen(socket.listener.as_raw_fd(), BACKLOG) } < 0 {
            return Err(os("listen")(io::Error::last_os_error()));
        }
        Ok(socket)
    }

    /// The listener.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiSocket {
    /// Remove the socket file, unless the path now names something else.
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.file
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// `path` as a Unix socket address (NUL-terminated, at most 107 bytes).
fn sockaddr(path: &Path) -> Result<libc::sockaddr_un, SocketError> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(SocketError::TooLong(path.to_path_buf()));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cma-sock-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn socket_is_owner_only_and_removed_on_drop() {
        let dir = temp_dir("mode");
        let path = dir.join("api.sock");
        let sock = ApiSocket::bind(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, SOCKET_MODE);
        UnixStream::connect(&path).unwrap();
        drop(sock);
        assert!(fs::symlink_metadata(&path).is_err(), "removed");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_existing_path_is_refused_and_left_alone() {
        let dir = temp_dir("exists");
        let file = dir.join("file");
        fs::write(&file, "precious").unwrap();
        let e = ApiSocket::bind(&file).unwrap_err();
        assert!(matches!(e, SocketError::Exists(_)), "{e}");
        assert!(e.to_string().contains("already exists"));
        assert_eq!(fs::read_to_string(&file).unwrap(), "precious");
        // A live socket, and a dangling symlink, are refused too.
        let live = dir.join("live.sock");
        let first = ApiSocket::bind(&live).unwrap();
        assert!(matches!(
            ApiSocket::bind(&live),
            Err(SocketError::Exists(_))
        ));
        UnixStream::connect(&live).expect("the first socket still works");
        let link = dir.join("link");
        std::os::unix::fs::symlink(dir.join("nowhere"), &link).unwrap();
        assert!(matches!(
            ApiSocket::bind(&link),
            Err(SocketError::Exists(_))
        ));
        drop(first);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_replaced_path_is_not_removed() {
        let dir = temp_dir("replaced");
        let path = dir.join("api.sock");
        let sock = ApiSocket::bind(&path).unwrap();
        fs::remove_file(&path).unwrap();
        fs::write(&path, "someone else's").unwrap();
        drop(sock);
        assert_eq!(fs::read_to_string(&path).unwrap(), "someone else's");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_paths_are_errors() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        assert!(matches!(
            ApiSocket::bind(&long),
            Err(SocketError::TooLong(_))
        ));
        let e = ApiSocket::bind(Path::new("/nonexistent-dir/api.sock")).unwrap_err();
        assert!(e.to_string().contains("bind"), "{e}");
    }
}

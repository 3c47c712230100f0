//! The helper that removes the control socket's file when rslirp ends. Confined
//! (`--enable-sandbox` or `--enable-seccomp`), rslirp itself no longer can: the sandbox
//! does not reach the file and the filter has no unlink. So before confinement a small
//! process is forked that stays outside, waits for our end of a socket pair to close
//! (at [`Confinement`]'s drop, or when rslirp dies), and removes the file.

use super::{failed, io_failed, Confinement, SandboxError};
use nix::errno::Errno;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// Longest the exit waits for the socket remover.
const SOCKET_REMOVER_TIMEOUT: Duration = Duration::from_secs(1);

impl Drop for Confinement {
    /// Tells the socket remover we are done and waits (bounded) until it has removed the
    /// file, so that a caller who sees rslirp exit also sees the file gone.
    fn drop(&mut self) {
        let Some(fd) = self.socket_remover.take() else {
            return;
        };
        let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        let mut byte = [0u8; 1];
        // EOF once the remover is done; an error (the receive timeout) ends the wait too.
        while let Ok(n) = nix::unistd::read(&fd, &mut byte) {
            if n == 0 {
                break;
            }
        }
    }
}

/// Forks a helper that waits, outside any confinement, until this process is done (EOF on
/// a socket pair whose other end only we hold: at [`Confinement`]'s drop, or when the
/// process dies), then removes the control socket's file if it is still the socket we made,
/// and exits. It keeps nothing else: every other fd is closed (so the caller's ready pipe
/// and stderr see their EOF when rslirp ends), it has no input but that EOF, and it is not
/// dumpable, so a taken-over rslirp of the same uid cannot ptrace it. Must run while
/// single-threaded, like the rest of the sandbox module. Returns our end.
pub(super) fn spawn_socket_remover(path: &Path) -> Result<OwnedFd, SandboxError> {
    use nix::sys::socket::{setsockopt, sockopt, SockType};
    use std::os::unix::fs::MetadataExt;
    let display = path.display().to_string();
    let made = fs::symlink_metadata(path).map_err(io_failed(format!("stat {display}")))?;
    let identity = (made.dev(), made.ino());
    let (ours, theirs) = crate::unix_socketpair(SockType::Stream)
        .map_err(failed("socketpair for the socket remover"))?;
    let timeout = nix::sys::time::TimeVal::new(SOCKET_REMOVER_TIMEOUT.as_secs() as _, 0);
    setsockopt(&ours, sockopt::ReceiveTimeout, &timeout)
        .map_err(failed("SO_RCVTIMEO for the socket remover"))?;
    // SAFETY: the process is single-threaded here (see the sandbox module's documentation), so the
    // child may do anything the parent could, allocation included.
    match unsafe { nix::unistd::fork() }.map_err(failed("fork the socket remover"))? {
        nix::unistd::ForkResult::Child => {
            drop(ours);
            remove_socket_when_done(theirs, path, identity)
        }
        nix::unistd::ForkResult::Parent { .. } => Ok(ours),
    }
}

/// The helper's whole life (see [`spawn_socket_remover`]).
fn remove_socket_when_done(theirs: OwnedFd, path: &Path, identity: (u64, u64)) -> ! {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    // SAFETY: prctl with integer arguments (and a static NUL-terminated name) only.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"rslirp-cleanup".as_ptr(), 0, 0, 0);
    }
    close_all_fds_but(theirs.as_raw_fd());
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(&theirs, &mut byte) {
            Ok(0) => break,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    if let Ok(now) = fs::symlink_metadata(path) {
        if now.file_type().is_socket() && (now.dev(), now.ino()) == identity {
            let _ = fs::remove_file(path);
        }
    }
    // SAFETY: ends the helper at once (closing its end, which tells rslirp it is done); it
    // shares no state worth flushing with anyone.
    unsafe { libc::_exit(0) }
}

/// Closes every fd but `keep`: those listed in /proc/self/fd (collected first, since
/// listing holds an fd of its own), or the first 1024 numbers if /proc cannot be read.
fn close_all_fds_but(keep: libc::c_int) {
    let open: Vec<libc::c_int> = match fs::read_dir("/proc/self/fd") {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => (0..1024).collect(),
    };
    for fd in open.into_iter().filter(|&fd| fd != keep) {
        // SAFETY: closes an fd number of this helper process, which uses none of them
        // (EBADF for the listing's own, already closed, is harmless).
        unsafe { libc::close(fd) };
    }
}

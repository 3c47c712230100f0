//! `--target-type=bess`: instead of a tap, one peer on a SOCK_SEQPACKET Unix socket, as User
//! Mode Linux's `vec0:transport=bess,dst=PATH` connects to it. One message is one Ethernet
//! frame, without any header, in both directions.
//!
//! As slirp4netns does, we listen at PATH (replacing a stale socket file there), accept one
//! peer, and stop listening; only then do we go on with the setup (control socket, sandbox,
//! seccomp) and write the ready byte. So the peer connects first, and "ready" means that
//! frames flow. Unlike slirp4netns, whose child blocks in accept(2) beyond the reach of the
//! caller's exit fd, we wait in poll(2) on the listener, the signalfd and the exit fd: a
//! SIGTERM or a hang-up of the exit fd ends the wait as it would end the run. The socket
//! file is removed once the peer is in: nobody else can connect anyway.
//!
//! What happens when the peer goes away is the event loop's business (see
//! `event_loop::EventLoop::link_lost`).

use crate::event_loop::{exit_fd_closed, Exit};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("BESS socket {}: {detail}", .path.display())]
pub struct BessError {
    path: PathBuf,
    /// What failed and why.
    detail: String,
}

/// How the wait for the peer ended.
#[derive(Debug)]
pub enum Accepted {
    /// The peer's connection: non-blocking and close-on-exec.
    Peer(OwnedFd),
    /// A signal or the exit fd ended the run before any peer came.
    Exit(Exit),
}

/// Listens at `path` and waits for one peer (see the module documentation).
pub fn accept_peer(
    path: &Path,
    signals: &SignalFd,
    exit_fd: Option<&OwnedFd>,
) -> Result<Accepted, BessError> {
    let error = |detail: String| BessError {
        path: path.to_path_buf(),
        detail,
    };
    let fail = |op: &'static str| move |errno: Errno| error(format!("{op}: {}", errno.desc()));
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(fail("socket"))?;
    // The reference unlinks whatever is there; like the control socket we only replace a
    // socket, so that a mistyped path cannot delete a file.
    crate::api_socket::remove_stale_socket(path).map_err(|err| error(err.to_string()))?;
    let addr = UnixAddr::new(path).map_err(fail("socket address"))?;
    bind(listener.as_raw_fd(), &addr).map_err(fail("bind"))?;
    let result =
        wait_and_accept(&listener, signals, exit_fd).map_err(|(op, errno)| fail(op)(errno));
    // One peer only: stop listening (closing `listener`) and take the file away, whatever
    // the outcome.
    drop(listener);
    if let Err(err) = std::fs::remove_file(path) {
        log::debug!("cannot remove BESS socket file {}: {err}", path.display());
    }
    result
}

fn wait_and_accept(
    listener: &OwnedFd,
    signals: &SignalFd,
    exit_fd: Option<&OwnedFd>,
) -> Result<Accepted, (&'static str, Errno)> {
    listen(listener, Backlog::new(1).map_err(|e| ("listen", e))?).map_err(|e| ("listen", e))?;
    log::info!("waiting for a BESS peer to connect");
    loop {
        let mut fds = vec![
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        if let Some(fd) = exit_fd {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(("poll", errno)),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(PollFd::revents)
                .is_some_and(|r| !r.is_empty())
        };
        let (peer_waiting, signal, exit) = (ready(0), ready(1), ready(2));
        drop(fds);
        if signal && signals.read_signal().ok().flatten().is_some() {
            return Ok(Accepted::Exit(Exit::Signal));
        }
        if exit && exit_fd.is_some_and(exit_fd_closed) {
            return Ok(Accepted::Exit(Exit::ExitFd));
        }
        if !peer_waiting {
            continue;
        }
        match accept4(
            listener.as_raw_fd(),
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        ) {
            Ok(raw) => {
                // SAFETY: accept4 just returned this fd; nothing else owns it.
                let peer = unsafe { OwnedFd::from_raw_fd(raw) };
                log::info!("BESS peer connected");
                return Ok(Accepted::Peer(peer));
            }
            // The peer gave up between poll and accept: wait for the next one.
            Err(Errno::EAGAIN) | Err(Errno::ECONNABORTED) | Err(Errno::EINTR) => {}
            Err(errno) => return Err(("accept", errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::SigSet;
    use nix::sys::signalfd::SfdFlags;
    use nix::sys::socket::connect;
    use std::io::Write;

    fn signalfd() -> SignalFd {
        // An empty mask: never readable, which is all these tests need.
        SignalFd::with_flags(
            &SigSet::empty(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )
        .unwrap()
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rslirp-bess-{}-{name}", std::process::id()))
    }

    fn seqpacket() -> OwnedFd {
        socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap()
    }

    #[test]
    fn one_peer_is_accepted_and_the_file_removed() {
        let path = temp_path("accept");
        // A stale socket file of an earlier run is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        let client_path = path.clone();
        let client = std::thread::spawn(move || {
            let addr = UnixAddr::new(&client_path).unwrap();
            for _ in 0..500 {
                let fd = seqpacket();
                if connect(fd.as_raw_fd(), &addr).is_ok() {
                    return fd;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!("could not connect");
        });
        let signals = signalfd();
        let peer = match accept_peer(&path, &signals, None).unwrap() {
            Accepted::Peer(fd) => fd,
            other => panic!("{other:?}"),
        };
        let client = client.join().unwrap();
        assert!(!path.exists(), "socket file left behind");
        // One message is one frame, both ways.
        nix::unistd::write(&client, b"frame one").unwrap();
        nix::unistd::write(&client, b"two").unwrap();
        let mut buf = [0u8; 64];
        let wait = || {
            let mut fds = [PollFd::new(peer.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(5000u16)).unwrap();
        };
        wait();
        assert_eq!(nix::unistd::read(&peer, &mut buf).unwrap(), 9);
        assert_eq!(nix::unistd::read(&peer, &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"two");
    }

    #[test]
    fn the_exit_fd_ends_the_wait() {
        let path = temp_path("exit");
        let (read, write) = nix::unistd::pipe().unwrap();
        let mut write = std::fs::File::from(write);
        // Data is not a request to exit; the hang-up is.
        write.write_all(b"x").unwrap();
        drop(write);
        let signals = signalfd();
        match accept_peer(&path, &signals, Some(&read)).unwrap() {
            Accepted::Exit(Exit::ExitFd) => {}
            other => panic!("{other:?}"),
        }
        assert!(!path.exists());
    }

    #[test]
    fn a_file_in_the_way_is_not_removed() {
        let path = temp_path("file");
        std::fs::write(&path, b"keep me").unwrap();
        let err = accept_peer(&path, &signalfd(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "BESS socket {}: a file that is not a socket is in the way",
                path.display()
            )
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        std::fs::remove_file(&path).unwrap();
    }
}

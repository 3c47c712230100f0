//! Taps the test opens itself: to hand one to rslirp (`--netns-type=tapfd`), or to put a
//! BESS peer's frames into a namespace where the kernel's own TCP/IP runs (see [`Bridge`]).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::{Env, GATEWAY, GUEST_ADDR, SETUP_TIMEOUT};

/// How often the bridge looks at its stop flag.
const BRIDGE_POLL: Duration = Duration::from_millis(20);

/// Opens `/dev/net/tun` in the guest's network namespace and attaches it to a new interface
/// `name` with `flags` (e.g. `IFF_TAP | IFF_NO_PI`). The interface lives in that namespace;
/// the fd works from anywhere.
pub fn open_tun(env: &Env, name: &str, flags: libc::c_int) -> OwnedFd {
    let name = name.to_string();
    env.in_guest("open tun", move || {
        let fd = unattached_tun();
        attach(&fd, &name, flags).unwrap_or_else(|e| panic!("TUNSETIFF {name}: {e}"));
        fd
    })
    .wait(SETUP_TIMEOUT)
}

/// An open `/dev/net/tun` attached to no interface (no TUNSETIFF).
pub fn unattached_tun() -> OwnedFd {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    OwnedFd::from(file)
}

fn attach(fd: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: all-zero bytes are a valid ifreq (plain data).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    assert!(name.len() < ifr.ifr_name.len());
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq at that address, valid for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What `rslirp -c` would do to interface `name` in the guest: lo and `name` up, the
/// guest address and a default route via the gateway.
pub fn configure_guest_interface(env: &Env, name: &str) {
    env.guest_ok(&["ip", "link", "set", "lo", "up"]);
    env.guest_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{GUEST_ADDR}/24"),
        "dev",
        name,
    ]);
    env.guest_ok(&["ip", "link", "set", name, "up"]);
    env.guest_ok(&["ip", "route", "add", "default", "via", &GATEWAY.to_string()]);
}

/// Copies frames both ways between a tap (without virtio-net header) and a connected
/// SOCK_SEQPACKET socket, one message per frame, until dropped.
pub struct Bridge {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<io::Result<()>>>,
}

impl Bridge {
    pub fn start(tap: OwnedFd, socket: OwnedFd) -> Bridge {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = thread::spawn(move || -> io::Result<()> {
            let mut buf = vec![0u8; 65_536 + 64];
            while !stop_flag.load(Ordering::SeqCst) {
                let mut fds = [
                    libc::pollfd {
                        fd: tap.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: socket.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: two valid pollfds, count 2.
                let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, BRIDGE_POLL.as_millis() as i32) };
                if rc <= 0 {
                    continue;
                }
                if fds[0].revents != 0 {
                    let n = nix::unistd::read(&tap, &mut buf)?;
                    // The peer may be gone; the test notices that by itself.
                    let _ = nix::unistd::write(socket.as_fd(), &buf[..n]);
                }
                if fds[1].revents != 0 {
                    let n = nix::unistd::read(&socket, &mut buf)?;
                    if n == 0 {
                        return Ok(()); // rslirp closed its end
                    }
                    // EIO while the interface is down: dropped, as on a real link.
                    let _ = nix::unistd::write(tap.as_fd(), &buf[..n]);
                }
            }
            Ok(())
        });
        Bridge {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("warning: the tap bridge failed: {e}"),
                Err(_) => eprintln!("warning: the tap bridge panicked"),
            }
        }
    }
}

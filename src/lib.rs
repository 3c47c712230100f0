//! rslirp's outer ring: everything that touches the operating system. The network logic
//! lives in the pure `rslirp-stack` crate; this crate parses the command line, enters the
//! container's namespaces, opens the tap, runs the mio event loop and owns the host sockets.

pub mod alloc;
pub mod api_socket;
pub mod bess;
pub mod cli;
pub mod event_loop;
pub mod fds;
pub mod host;
pub mod netns;
pub mod pcap;
pub mod resolv;
pub mod sandbox;
pub mod tap;

use std::os::fd::AsFd;

/// Hand the allocator's free memory back to the kernel (glibc keeps what a burst of flows
/// freed in its heap otherwise, so the resident size would stay at the burst's peak).
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own heaps (under their locks) and returns free
    // pages with brk/madvise; it touches no memory of ours and takes a plain integer.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Set O_NONBLOCK on an fd we own.
pub fn set_nonblocking(fd: impl AsFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// A pair of connected unix sockets of `kind`, both ends close-on-exec: the channel to a
/// helper process rslirp forks (the namespace child, the socket remover).
pub fn unix_socketpair(
    kind: nix::sys::socket::SockType,
) -> nix::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag};
    socketpair(AddressFamily::Unix, kind, None, SockFlag::SOCK_CLOEXEC)
}

/// A random seed for the stack (TCP initial sequence numbers). std's `RandomState` is
/// keyed from the OS's random source, which is all this needs.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish()
}

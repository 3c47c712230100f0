//! Entering the container network namespace and opening the tap.
//!
//! rslirp must open its tap inside the container's network namespace, but every host socket
//! it opens afterwards must live in the caller's namespace. As slirp4netns does, we fork a
//! short-lived child that joins the user namespace (when needed) and the network namespace,
//! opens or creates the tap there, optionally configures it, and passes the tap fd back over a
//! socketpair with `SCM_RIGHTS`. The parent never changes namespace.
//!
//! With `--netns-type=tapfd` none of that happens: the caller did it and passes the tap fd
//! down; [`crate::tap::adopt_tap_fd`] only asks the fd what it is.
//!
//! The child reports failure as a step code plus an errno rather than as text: the parent
//! knows the paths, names and addresses involved and builds the typed [`SetupError`] itself.
//!
//! The pieces: `target.rs` (which namespace: a PID or a path), `child.rs` (the fork, what
//! the child does and its report), `configure.rs` (`--configure`'s ioctls). The tap
//! device's own code (offloads, the virtio-net header, `--netns-type=tapfd`) is in
//! `src/tap.rs`. This file holds the request, the error type and [`open_tap`].

mod child;
mod configure;
mod target;

pub use target::NetnsTarget;

use std::net::Ipv4Addr;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

use libc::c_char;
use nix::errno::Errno;

use crate::tap::{enable_offloads, LinkKind, Tap};
use child::{run_child, ChildJob};
use configure::PreparedConfig;
use target::Namespaces;

/// What `--configure` sets up inside the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    pub mtu: u32,
    /// The guest's address on the tap (network + 100 by default).
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// Next hop of the default route (network + 2).
    pub gateway: Ipv4Addr,
    /// Set on the tap before it goes up; `None` keeps the kernel's random MAC.
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapRequest {
    pub target: NetnsTarget,
    /// User namespace to join before a [`NetnsTarget::Path`] netns (`--userns-path`).
    pub userns_path: Option<PathBuf>,
    pub tap_name: String,
    pub configure: Option<TapConfig>,
    /// Ask for the virtio-net header and TCP offloads (see [`Tap`]).
    pub offload: bool,
}

/// One configuration action done inside the namespace, for matching on [`SetupError::Configure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigStep {
    Socket,
    LoopbackGetFlags,
    LoopbackUp,
    TapMac,
    TapMtu,
    TapAddress,
    TapNetmask,
    TapGetFlags,
    TapUp,
    DefaultRoute,
}

/// A fatal setup error; `Display` is one line naming what failed and why. The errno is a
/// plain field, not a `#[source]`, because the line already ends with its text and a reporter
/// walking the chain would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid tap name {name:?}: {reason}")]
    InvalidTapName { name: String, reason: &'static str },
    #[error("invalid tap configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot open {}: {}", .path.display(), .errno.desc())]
    OpenNamespace { path: PathBuf, errno: Errno },
    #[error("cannot stat {}: {}", .path.display(), .errno.desc())]
    StatNamespace { path: PathBuf, errno: Errno },
    #[error("{} is not a {expected} namespace", .path.display())]
    WrongNamespaceType {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("setns({}): {}", .path.display(), .errno.desc())]
    Setns { path: PathBuf, errno: Errno },
    #[error("cannot open /dev/net/tun: {}", .errno.desc())]
    OpenTun { errno: Errno },
    #[error("TUNSETIFF({name}, IFF_TAP|IFF_NO_PI{}): {}", if *.vnet_hdr { "|IFF_VNET_HDR" } else { "" }, .errno.desc())]
    Tunsetiff {
        name: String,
        vnet_hdr: bool,
        errno: Errno,
    },
    #[error("{detail}: {}", .errno.desc())]
    Configure {
        step: ConfigStep,
        detail: String,
        errno: Errno,
    },
    /// socketpair/fork/recvmsg/fcntl around the hand-over of the fd.
    #[error("{op}: {}", .errno.desc())]
    Handoff { op: &'static str, errno: Errno },
    #[error("tap setup child ended without reporting a result ({status})")]
    ChildVanished { status: String },
    #[error("tap setup child sent a malformed report ({0})")]
    BadReport(&'static str),
    #[error("SIOCGIFHWADDR on the tap fd: {}", .errno.desc())]
    TapMac { errno: Errno },
    /// `--netns-type=tapfd` with an fd we cannot use as a tap.
    #[error("TAPFD {fd}: {detail}")]
    TapFd { fd: RawFd, detail: String },
}

/// Opens (creating if missing) the tap `req.tap_name` inside the target network namespace,
/// configures it if asked, and returns its fd (O_NONBLOCK, O_CLOEXEC) in our own namespace.
///
/// Must be called while the process is still single-threaded: it forks, and the child
/// allocates (nix's `sendmsg` does), which is only sound when no other thread can be holding
/// a lock at the moment of the fork. (The child, being single-threaded, can always join a
/// user namespace; that restriction of setns applies to the process that calls it.)
pub fn open_tap(req: &TapRequest) -> Result<Tap, SetupError> {
    let name = IfName::new(&req.tap_name)?;
    let config = req
        .configure
        .as_ref()
        .map(PreparedConfig::new)
        .transpose()?;
    let namespaces = Namespaces::open(req)?;
    let job = ChildJob {
        namespaces: &namespaces,
        name: &name,
        config: config.as_ref(),
        vnet_hdr: req.offload,
    };
    let fd = run_child(&job)?;
    set_nonblocking(&fd)?;
    let offload = req.offload && enable_offloads(&fd);
    Ok(Tap {
        fd,
        vnet_hdr: req.offload,
        offload,
        kind: LinkKind::Tap,
    })
}

/// An interface name checked the way the kernel's `dev_valid_name` does, so a bad name is
/// rejected with a clear message before any namespace is touched.
pub(crate) struct IfName {
    pub(super) text: String,
    /// NUL-terminated, as `ifr_name` wants it.
    pub(super) raw: [c_char; libc::IFNAMSIZ],
}

impl IfName {
    pub(super) fn new(name: &str) -> Result<Self, SetupError> {
        let invalid = |reason| SetupError::InvalidTapName {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("empty"));
        }
        if name.len() >= libc::IFNAMSIZ {
            return Err(invalid("longer than 15 bytes"));
        }
        if name == "." || name == ".." {
            return Err(invalid("not a valid interface name"));
        }
        if name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace())
        {
            return Err(invalid("contains NUL, '/', ':' or whitespace"));
        }
        let mut raw = [0 as c_char; libc::IFNAMSIZ];
        for (dst, src) in raw.iter_mut().zip(name.bytes()) {
            *dst = src as c_char;
        }
        Ok(IfName {
            text: name.to_owned(),
            raw,
        })
    }

    pub(super) fn loopback() -> Self {
        let mut raw = [0 as c_char; libc::IFNAMSIZ];
        for (dst, src) in raw.iter_mut().zip(*b"lo") {
            *dst = src as c_char;
        }
        IfName {
            text: "lo".to_owned(),
            raw,
        }
    }

    pub(super) fn ifreq(&self) -> libc::ifreq {
        let mut ifr = zeroed_ifreq();
        ifr.ifr_name = self.raw;
        ifr
    }
}

pub(crate) fn zeroed_ifreq() -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a char array and a union of integers, sockaddrs and a
    // pointer); all-zero bytes are a valid value of it, the one the kernel expects unset
    // fields to have.
    unsafe { std::mem::zeroed() }
}

/// `rslirp::set_nonblocking`, its error as a setup error of the tap's hand-off.
pub(crate) fn set_nonblocking(fd: &OwnedFd) -> Result<(), SetupError> {
    crate::set_nonblocking(fd).map_err(|errno| SetupError::Handoff {
        op: "fcntl(tap fd, O_NONBLOCK)",
        errno,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_name(name: &IfName) -> Vec<u8> {
        name.raw.iter().map(|c| *c as u8).collect()
    }

    #[test]
    fn ifname_is_nul_terminated_in_ifreq() {
        let name = IfName::new("tap0").unwrap();
        let mut expected = b"tap0".to_vec();
        expected.resize(libc::IFNAMSIZ, 0);
        assert_eq!(raw_name(&name), expected);
        let ifr = name.ifreq();
        assert_eq!(ifr.ifr_name, name.raw);
    }

    #[test]
    fn ifname_of_15_bytes_fits_16_does_not() {
        let name = IfName::new("abcdefghijklmno").unwrap();
        assert_eq!(raw_name(&name)[15], 0);
        let err = IfName::new("abcdefghijklmnop").err().unwrap();
        assert_eq!(
            err.to_string(),
            "invalid tap name \"abcdefghijklmnop\": longer than 15 bytes"
        );
    }

    #[test]
    fn ifname_rejects_what_the_kernel_rejects() {
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\tb", "a\0b"] {
            assert!(IfName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(IfName::new("tap-0_x.1").is_ok());
    }

    #[test]
    fn bad_name_is_rejected_before_any_namespace_is_opened() {
        let mut req = request(NetnsTarget::Pid(i32::MAX));
        req.tap_name = "no/slash".to_owned();
        let err = open_tap(&req).unwrap_err();
        assert!(matches!(err, SetupError::InvalidTapName { .. }), "{err}");
    }

    pub(crate) fn request(target: NetnsTarget) -> TapRequest {
        TapRequest {
            target,
            userns_path: None,
            tap_name: "tap0".to_owned(),
            configure: None,
            offload: true,
        }
    }
}

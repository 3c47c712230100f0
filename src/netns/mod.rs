//! Entering the container network namespace and opening the tap.
//!
//! rslirp must open its tap inside the container's network namespace, but every host socket
//! it opens afterwards must live in the caller's namespace. As slirp4netns does, we fork a
//! short-lived child that joins the user namespace (when needed) and the network namespace,
//! opens or creates the tap there, optionally configures it, and passes the tap fd back over a
//! socketpair with `SCM_RIGHTS`. The parent never changes namespace.
//!
//! With `--netns-type=tapfd` none of that happens: the caller did it and passes the tap fd
//! down; [`adopt_tap_fd`] only asks the fd what it is.
//!
//! The child reports failure as a step code plus an errno rather than as text: the parent
//! knows the paths, names and addresses involved and builds the typed [`SetupError`] itself.
//!
//! Why not the `tun-tap` crate: its `Iface::without_packet_info` does give IFF_NO_PI and
//! `IntoRawFd`, but the TUNSETIFF flags are fixed inside its bundled C helper (so no
//! IFF_VNET_HDR later: the flag can only be given in the one TUNSETIFF call an fd gets), it
//! truncates over-long names silently instead of rejecting them, it needs a C compiler at
//! build time, and its default features pull in tokio-core 0.1 and mio 0.6. One ioctl through
//! nix's `ioctl_readwrite_bad!` is smaller than any of that.

use std::io::{IoSlice, IoSliceMut};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use libc::c_char;
use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    recvmsg, sendmsg, socket, socketpair, AddressFamily, ControlMessage, ControlMessageOwned,
    MsgFlags, SockFlag, SockType,
};
use nix::sys::stat::{fstat, Mode};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// Which network namespace holds the tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsTarget {
    /// The network namespace of that process (`/proc/PID/ns/net`); its user namespace is
    /// joined first when it differs from ours.
    Pid(i32),
    /// A network namespace file such as `/run/netns/NAME`; only `userns_path` is joined.
    Path(PathBuf),
}

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

/// The tap as opened. With `vnet_hdr`, every frame read starts with a `virtio_net_hdr`
/// ([`VNET_HDR_LEN`] bytes) and every frame written must; with `offload` too, the kernel
/// passes the guest's TCP segments unsplit (up to 64 KiB, checksum possibly partial) and
/// takes ours the same way (TSO4/6, CSUM). `offload` without `vnet_hdr` never happens.
#[derive(Debug)]
pub struct Tap {
    pub fd: OwnedFd,
    pub vnet_hdr: bool,
    pub offload: bool,
    pub kind: LinkKind,
}

/// What carries the guest's frames; decides what an end of file or a reset means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A tap device: one read or write is one frame; it never hangs up while we hold it.
    Tap,
    /// A connected datagram or seqpacket socket (the BESS peer, or a socket inherited with
    /// `--netns-type=tapfd`): one message is one frame, and the peer may go away.
    Socket,
}

/// The virtio-net header size we set (`struct virtio_net_hdr`, tun's default): 10 bytes,
/// which also puts the IP header of a frame read at offset 24 of our buffer, 8-aligned.
pub const VNET_HDR_LEN: usize = 10;

/// The offloads we take: checksums and TCP segmentation (ECN segments too, which we pass
/// on as any other). Not UDP segmentation: we would have to split datagrams ourselves.
const TAP_OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

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

/// `--netns-type=tapfd`: takes over a tap fd the caller opened and passed down. Nothing
/// about it is assumed; the fd is asked:
///
/// - TUNGETIFF says it is a tun file attached to an interface, which one, and with which
///   flags. It must be a tap (IFF_TAP: Ethernet frames) without packet information
///   (IFF_NO_PI); the caller chose IFF_VNET_HDR or not, and frames carry the virtio-net
///   header exactly when it did. With the header, its size is set to ours (the caller may
///   have set another) and, if `offload` is wanted, TUNSETOFFLOAD is tried as for a tap we
///   open. Without it no offload is set: the kernel would have no way to tell us about a
///   partial checksum or a large segment.
/// - An fd that is no tun file at all (ENOTTY) is still accepted when it is a datagram or
///   seqpacket socket, as slirp4netns just reads and writes whatever fd it is given: one
///   message per frame (a socketpair to a VM, say).
///
/// The fd becomes O_NONBLOCK (a flag of the open file, so the caller's copy sees it too)
/// and close-on-exec.
///
/// # Safety
///
/// Nothing else in this process may own `raw` (use or close it) from now on: if it is open,
/// the returned [`Tap`] (or the error path) owns and closes it.
pub unsafe fn adopt_tap_fd(raw: RawFd, offload: bool) -> Result<Tap, SetupError> {
    let refuse = |detail: String| SetupError::TapFd { fd: raw, detail };
    // SAFETY: F_GETFD only looks the number up in our fd table; a number that is not open
    // gets EBADF and nothing else happens.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if flags < 0 {
        return Err(refuse(format!(
            "not an open file descriptor ({})",
            Errno::last().desc()
        )));
    }
    // SAFETY: `raw` is open (just checked) and, by this function's contract, ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let flags = nix::fcntl::FdFlag::from_bits_retain(flags) | nix::fcntl::FdFlag::FD_CLOEXEC;
    fcntl(&fd, FcntlArg::F_SETFD(flags))
        .map_err(|errno| refuse(format!("fcntl(F_SETFD): {}", errno.desc())))?;
    let mut ifr = zeroed_ifreq();
    // SAFETY: `ifr` is a valid, writable ifreq for the whole call; TUNGETIFF writes one
    // `struct ifreq` there (and any other driver answers ENOTTY without touching it).
    let tun = unsafe { ioctl::tungetiff(raw, &mut ifr) };
    let kind = match tun {
        Ok(_) => LinkKind::Tap,
        Err(Errno::ENOTTY) | Err(Errno::EINVAL) => {
            check_frame_socket(&fd).map_err(refuse)?;
            LinkKind::Socket
        }
        Err(Errno::EBADFD) => {
            return Err(refuse(
                "a tun file not attached to any interface (TUNSETIFF was not called)".into(),
            ))
        }
        Err(errno) => return Err(refuse(format!("TUNGETIFF: {}", errno.desc()))),
    };
    set_nonblocking(&fd)?;
    if kind == LinkKind::Socket {
        log::info!("TAPFD {raw} is a socket: one message per frame");
        return Ok(Tap {
            fd,
            vnet_hdr: false,
            offload: false,
            kind,
        });
    }
    let name: String = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    // SAFETY: TUNGETIFF filled in `ifru_flags`; any c_short is a valid value.
    let tun_flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags }) & 0xffff;
    if tun_flags & libc::IFF_TAP == 0 {
        return Err(refuse(format!(
            "{name} is a tun device (IFF_TUN, IP packets); rslirp needs a tap (IFF_TAP)"
        )));
    }
    let no_pi = without_packet_information(&fd, tun_flags)
        .map_err(|errno| refuse(format!("{name}: asking for IFF_NO_PI: {}", errno.desc())))?;
    if !no_pi {
        return Err(refuse(format!(
            "{name} was opened without IFF_NO_PI; rslirp needs frames without packet information"
        )));
    }
    let vnet_hdr = tun_flags & libc::IFF_VNET_HDR != 0;
    let mut offloads_on = false;
    if vnet_hdr {
        set_vnet_hdr_size(&fd).map_err(|errno| {
            refuse(format!("TUNSETVNETHDRSZ({VNET_HDR_LEN}): {}", errno.desc()))
        })?;
        offloads_on = offload && set_offloads(&fd);
    }
    log::info!(
        "TAPFD {raw} is tap {name}{}",
        match (vnet_hdr, offloads_on) {
            (false, _) => " without virtio-net header (IFF_VNET_HDR not set): no offloads",
            (true, false) => " with virtio-net header, offloads off",
            (true, true) => " with virtio-net header and offloads",
        }
    );
    Ok(Tap {
        fd,
        vnet_hdr,
        offload: offloads_on,
        kind,
    })
}

/// Whether the tap's frames come without the 4-byte packet information (IFF_NO_PI).
/// TUNGETIFF answers in one bit for two things: the device's IFF_NO_PI (0x1000), ORed with
/// IFF_NOFILTER (0x1000 too) when this fd has no socket filter. A clear bit is a sure "with
/// packet information"; a set bit only counts while a filter is attached. So, if no filter
/// was ever attached to the tap (TUNGETFILTER reports an empty program), we attach an
/// accept-all filter (no effect on traffic), ask again, and detach it. If the caller did
/// attach one, we leave it alone and take the set bit as IFF_NO_PI (slirp4netns assumes it
/// in every case).
fn without_packet_information(tap: &OwnedFd, tun_flags: i32) -> Result<bool, Errno> {
    if tun_flags & libc::IFF_NO_PI == 0 {
        return Ok(false);
    }
    let mut current = libc::sock_fprog {
        len: 0,
        filter: std::ptr::null_mut(),
    };
    // SAFETY: TUNGETFILTER writes one sock_fprog (a length and a pointer value, which we
    // never follow) to the valid, writable struct we pass.
    unsafe { ioctl::tungetfilter(tap.as_raw_fd(), &mut current) }?;
    if current.len != 0 {
        log::debug!("the tap has a socket filter of the caller's: IFF_NO_PI taken as set");
        return Ok(true);
    }
    let mut accept_all = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: u32::MAX,
    }];
    let program = libc::sock_fprog {
        len: 1,
        filter: accept_all.as_mut_ptr(),
    };
    // SAFETY: TUNATTACHFILTER copies the sock_fprog and the one instruction it points to
    // (both live across the call) into the kernel.
    unsafe { ioctl::tunattachfilter(tap.as_raw_fd(), &program) }?;
    let mut ifr = zeroed_ifreq();
    // SAFETY: `ifr` is a valid, writable ifreq for the call; TUNGETIFF fills it in.
    let answer = unsafe { ioctl::tungetiff(tap.as_raw_fd(), &mut ifr) };
    // SAFETY: TUNDETACHFILTER reads nothing through its argument; it gets a valid pointer.
    let detached = unsafe { ioctl::tundetachfilter(tap.as_raw_fd(), &program) };
    answer?;
    detached?;
    // SAFETY: TUNGETIFF filled in `ifru_flags`; any c_short is a valid value.
    let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags }) & 0xffff;
    Ok(flags & libc::IFF_NO_PI != 0)
}

/// A socket that keeps message boundaries, so that one message can be one frame.
fn check_frame_socket(fd: &OwnedFd) -> Result<(), String> {
    let st = fstat(fd).map_err(|errno| format!("fstat: {}", errno.desc()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err("neither a tap device nor a socket".into());
    }
    match nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::SockType) {
        Ok(SockType::Datagram) | Ok(SockType::SeqPacket) => Ok(()),
        Ok(other) => Err(format!(
            "a socket of type {other:?}; frames need message boundaries (a datagram or \
             seqpacket socket)"
        )),
        Err(errno) => Err(format!("getsockopt(SO_TYPE): {}", errno.desc())),
    }
}

/// Fix the virtio-net header size and turn on the offloads of a tap opened with
/// IFF_VNET_HDR; false (and a log line) if the kernel refuses. These ioctls act on the tun
/// file itself, so they work from our namespace and need no capability. Without offloads
/// the header stays (the flag cannot be undone on this fd) and only ever says "nothing".
fn enable_offloads(tap: &OwnedFd) -> bool {
    if let Err(errno) = set_vnet_hdr_size(tap) {
        log::warn!("TUNSETVNETHDRSZ({VNET_HDR_LEN}): {}", errno.desc());
        return false;
    }
    set_offloads(tap)
}

/// The virtio-net header size we read and write: [`VNET_HDR_LEN`].
fn set_vnet_hdr_size(tap: &OwnedFd) -> Result<(), Errno> {
    let size = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which is valid for the call.
    unsafe { ioctl::tunsetvnethdrsz(tap.as_raw_fd(), &size) }.map(drop)
}

/// TUNSETOFFLOAD with [`TAP_OFFLOADS`]; false (and a log line) if the kernel refuses.
fn set_offloads(tap: &OwnedFd) -> bool {
    // SAFETY: TUNSETOFFLOAD takes its flags as the integer argument itself; no memory.
    match unsafe { ioctl::tunsetoffload(tap.as_raw_fd(), TAP_OFFLOADS as libc::c_int) } {
        Ok(_) => true,
        Err(errno) => {
            log::info!(
                "TUNSETOFFLOAD: {}; the tap works without offloads",
                errno.desc()
            );
            false
        }
    }
}

/// The tap's current MAC address, asked of the tap fd itself: tun's own ioctl handler
/// answers SIOCGIFHWADDR in the tap's namespace, so this works from our namespace too.
pub fn tap_mac(fd: BorrowedFd) -> Result<[u8; 6], SetupError> {
    let mut ifr = zeroed_ifreq();
    // SAFETY: `ifr` is a valid, writable ifreq for the whole call; tun's ioctl handler reads
    // and writes exactly one `struct ifreq` at that address.
    unsafe { ioctl::siocgifhwaddr(fd.as_raw_fd(), &mut ifr) }
        .map_err(|errno| SetupError::TapMac { errno })?;
    // SAFETY: SIOCGIFHWADDR filled in `ifru_hwaddr`; every bit pattern is a valid sockaddr.
    let hwaddr = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hwaddr.sa_data) {
        *dst = src as u8;
    }
    Ok(mac)
}

/// The ioctls we need; libc has the request numbers, nix the typed wrappers. All are
/// read-write because the kernel copies the ifreq back for some of them (TUNSETIFF does).
mod ioctl {
    nix::ioctl_readwrite_bad!(tunsetiff, libc::TUNSETIFF, libc::ifreq);
    nix::ioctl_readwrite_bad!(tungetiff, libc::TUNGETIFF, libc::ifreq);
    nix::ioctl_write_ptr_bad!(tunattachfilter, libc::TUNATTACHFILTER, libc::sock_fprog);
    nix::ioctl_write_ptr_bad!(tundetachfilter, libc::TUNDETACHFILTER, libc::sock_fprog);
    nix::ioctl_read_bad!(tungetfilter, libc::TUNGETFILTER, libc::sock_fprog);
    nix::ioctl_readwrite_bad!(siocgifflags, libc::SIOCGIFFLAGS, libc::ifreq);
    nix::ioctl_readwrite_bad!(siocsifflags, libc::SIOCSIFFLAGS, libc::ifreq);
    nix::ioctl_readwrite_bad!(siocsifhwaddr, libc::SIOCSIFHWADDR, libc::ifreq);
    nix::ioctl_readwrite_bad!(siocgifhwaddr, libc::SIOCGIFHWADDR, libc::ifreq);
    nix::ioctl_readwrite_bad!(siocsifmtu, libc::SIOCSIFMTU, libc::ifreq);
    nix::ioctl_readwrite_bad!(siocsifaddr, libc::SIOCSIFADDR, libc::ifreq);
    nix::ioctl_readwrite_bad!(siocsifnetmask, libc::SIOCSIFNETMASK, libc::ifreq);
    nix::ioctl_readwrite_bad!(siocaddrt, libc::SIOCADDRT, super::RtEntry);
    nix::ioctl_none_bad!(ns_get_nstype, libc::NS_GET_NSTYPE);
    nix::ioctl_write_ptr_bad!(tunsetvnethdrsz, libc::TUNSETVNETHDRSZ, libc::c_int);
    nix::ioctl_write_int_bad!(tunsetoffload, libc::TUNSETOFFLOAD);
}

/// `struct rtentry` from <linux/route.h>; glibc's libc crate does not export it.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// An interface name checked the way the kernel's `dev_valid_name` does, so a bad name is
/// rejected with a clear message before any namespace is touched.
struct IfName {
    text: String,
    /// NUL-terminated, as `ifr_name` wants it.
    raw: [c_char; libc::IFNAMSIZ],
}

impl IfName {
    fn new(name: &str) -> Result<Self, SetupError> {
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

    fn loopback() -> Self {
        let mut raw = [0 as c_char; libc::IFNAMSIZ];
        for (dst, src) in raw.iter_mut().zip(*b"lo") {
            *dst = src as c_char;
        }
        IfName {
            text: "lo".to_owned(),
            raw,
        }
    }

    fn ifreq(&self) -> libc::ifreq {
        let mut ifr = zeroed_ifreq();
        ifr.ifr_name = self.raw;
        ifr
    }
}

fn zeroed_ifreq() -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a char array and a union of integers, sockaddrs and a
    // pointer); all-zero bytes are a valid value of it, the one the kernel expects unset
    // fields to have.
    unsafe { std::mem::zeroed() }
}

/// A `struct sockaddr_in` (port 0) laid out in a `struct sockaddr`, as SIOCSIFADDR and
/// SIOCADDRT take it.
fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let mut sa_data = [0 as c_char; 14];
    // sa_data[0..2] is sin_port, [2..6] is sin_addr in network order.
    for (dst, src) in sa_data[2..6].iter_mut().zip(addr.octets()) {
        *dst = src as c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

fn sockaddr_ether(mac: [u8; 6]) -> libc::sockaddr {
    let mut sa_data = [0 as c_char; 14];
    for (dst, src) in sa_data.iter_mut().zip(mac) {
        *dst = src as c_char;
    }
    libc::sockaddr {
        sa_family: libc::ARPHRD_ETHER,
        sa_data,
    }
}

fn netmask(prefix_len: u8) -> Result<Ipv4Addr, SetupError> {
    if prefix_len > 32 {
        return Err(SetupError::InvalidConfig(format!(
            "prefix length {prefix_len} is larger than 32"
        )));
    }
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    Ok(Ipv4Addr::from(bits))
}

fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// `TapConfig` checked and converted to what the ioctls take, before the fork.
struct PreparedConfig {
    source: TapConfig,
    mtu: libc::c_int,
    netmask: Ipv4Addr,
}

impl PreparedConfig {
    fn new(config: &TapConfig) -> Result<Self, SetupError> {
        let mtu = libc::c_int::try_from(config.mtu)
            .map_err(|_| SetupError::InvalidConfig(format!("MTU {} is too large", config.mtu)))?;
        Ok(PreparedConfig {
            source: config.clone(),
            mtu,
            netmask: netmask(config.prefix_len)?,
        })
    }
}

struct NsFile {
    path: PathBuf,
    fd: OwnedFd,
}

impl NsFile {
    /// Opens a namespace file and, where the kernel can tell (NS_GET_NSTYPE, Linux 4.11+),
    /// checks that it is of the `kind` we will setns into: a swapped or wrong path then gets
    /// a clear message instead of setns's bare EINVAL.
    fn open(path: &Path, kind: CloneFlags) -> Result<Self, SetupError> {
        let fd =
            open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|errno| {
                SetupError::OpenNamespace {
                    path: path.to_owned(),
                    errno,
                }
            })?;
        // SAFETY: NS_GET_NSTYPE takes no argument and only returns a value; on a file that
        // is not a namespace the kernel answers ENOTTY.
        let nstype = unsafe { ioctl::ns_get_nstype(fd.as_raw_fd()) };
        // An error (ENOTTY from an old kernel or a non-namespace file) leaves the verdict to
        // setns; only a definite, different answer is rejected here.
        if let Ok(nstype) = nstype {
            if nstype != kind.bits() {
                return Err(SetupError::WrongNamespaceType {
                    path: path.to_owned(),
                    expected: if kind == CloneFlags::CLONE_NEWUSER {
                        "user"
                    } else {
                        "network"
                    },
                });
            }
        }
        Ok(NsFile {
            path: path.to_owned(),
            fd,
        })
    }

    /// Identity of a namespace: its nsfs device and inode.
    fn identity(&self) -> Result<(u64, u64), SetupError> {
        let st = fstat(&self.fd).map_err(|errno| SetupError::StatNamespace {
            path: self.path.clone(),
            errno,
        })?;
        Ok((st.st_dev, st.st_ino))
    }
}

/// The namespace files the child joins, opened in the parent so that a missing PID or path
/// is reported before forking (and a PID cannot be recycled between the checks and setns).
struct Namespaces {
    user: Option<NsFile>,
    net: NsFile,
}

impl Namespaces {
    fn open(req: &TapRequest) -> Result<Self, SetupError> {
        let (net_path, user_path) = match &req.target {
            NetnsTarget::Pid(pid) => (
                PathBuf::from(format!("/proc/{pid}/ns/net")),
                Some(PathBuf::from(format!("/proc/{pid}/ns/user"))),
            ),
            NetnsTarget::Path(path) => (path.clone(), req.userns_path.clone()),
        };
        let net = NsFile::open(&net_path, CloneFlags::CLONE_NEWNET)?;
        let user = match user_path {
            Some(path) => {
                let user = NsFile::open(&path, CloneFlags::CLONE_NEWUSER)?;
                // setns into the user namespace we are already in fails with EINVAL.
                let ours =
                    NsFile::open(Path::new("/proc/self/ns/user"), CloneFlags::CLONE_NEWUSER)?;
                (user.identity()? != ours.identity()?).then_some(user)
            }
            None => None,
        };
        Ok(Namespaces { user, net })
    }
}

/// Everything the child needs, prepared by the parent.
struct ChildJob<'a> {
    namespaces: &'a Namespaces,
    name: &'a IfName,
    config: Option<&'a PreparedConfig>,
    /// Open with IFF_VNET_HDR (the flag can only be given in TUNSETIFF, hence here).
    vnet_hdr: bool,
}

/// Where the child stopped; sent to the parent as a code with the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildStep {
    SetnsUser,
    SetnsNet,
    OpenTun,
    Tunsetiff,
    Configure(ConfigStep),
}

const CONFIG_STEPS: [ConfigStep; 10] = [
    ConfigStep::Socket,
    ConfigStep::LoopbackGetFlags,
    ConfigStep::LoopbackUp,
    ConfigStep::TapMac,
    ConfigStep::TapMtu,
    ConfigStep::TapAddress,
    ConfigStep::TapNetmask,
    ConfigStep::TapGetFlags,
    ConfigStep::TapUp,
    ConfigStep::DefaultRoute,
];

/// Report code for success; the message then carries the tap fd.
const CODE_OK: u32 = 0;
/// code (u32) + errno (i32), native endian: both ends are the same binary.
const REPORT_LEN: usize = 8;
/// Child exit statuses when it could not even report.
const EXIT_SEND_FAILED: i32 = 2;
const EXIT_PANICKED: i32 = 3;

impl ChildStep {
    fn code(self) -> u32 {
        match self {
            ChildStep::SetnsUser => 1,
            ChildStep::SetnsNet => 2,
            ChildStep::OpenTun => 3,
            ChildStep::Tunsetiff => 4,
            ChildStep::Configure(step) => {
                let index = CONFIG_STEPS.iter().position(|s| *s == step).unwrap_or(0);
                100 + index as u32
            }
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(ChildStep::SetnsUser),
            2 => Some(ChildStep::SetnsNet),
            3 => Some(ChildStep::OpenTun),
            4 => Some(ChildStep::Tunsetiff),
            100.. => CONFIG_STEPS
                .get(usize::try_from(code - 100).ok()?)
                .map(|s| ChildStep::Configure(*s)),
            _ => None,
        }
    }
}

fn encode_report(code: u32, errno: i32) -> [u8; REPORT_LEN] {
    let mut report = [0u8; REPORT_LEN];
    report[..4].copy_from_slice(&code.to_ne_bytes());
    report[4..].copy_from_slice(&errno.to_ne_bytes());
    report
}

fn decode_report(report: [u8; REPORT_LEN]) -> (u32, i32) {
    let [a, b, c, d, e, f, g, h] = report;
    (
        u32::from_ne_bytes([a, b, c, d]),
        i32::from_ne_bytes([e, f, g, h]),
    )
}

/// Turns the child's failure report into the error the user sees, with the names the
/// parent knows.
fn child_error(job: &ChildJob, step: ChildStep, errno: Errno) -> SetupError {
    let ns = job.namespaces;
    match step {
        ChildStep::SetnsUser => SetupError::Setns {
            path: ns
                .user
                .as_ref()
                .map_or_else(PathBuf::new, |u| u.path.clone()),
            errno,
        },
        ChildStep::SetnsNet => SetupError::Setns {
            path: ns.net.path.clone(),
            errno,
        },
        ChildStep::OpenTun => SetupError::OpenTun { errno },
        ChildStep::Tunsetiff => SetupError::Tunsetiff {
            name: job.name.text.clone(),
            vnet_hdr: job.vnet_hdr,
            errno,
        },
        ChildStep::Configure(step) => SetupError::Configure {
            step,
            detail: describe_step(step, &job.name.text, job.config.map(|c| &c.source)),
            errno,
        },
    }
}

fn describe_step(step: ConfigStep, tap: &str, config: Option<&TapConfig>) -> String {
    let Some(c) = config else {
        return format!("{step:?} on {tap}");
    };
    match step {
        ConfigStep::Socket => "socket(AF_INET, SOCK_DGRAM) in the target netns".to_owned(),
        ConfigStep::LoopbackGetFlags => "SIOCGIFFLAGS(lo)".to_owned(),
        ConfigStep::LoopbackUp => "SIOCSIFFLAGS(lo, IFF_UP)".to_owned(),
        ConfigStep::TapMac => format!(
            "SIOCSIFHWADDR({tap}, {})",
            c.mac.map_or_else(String::new, format_mac)
        ),
        ConfigStep::TapMtu => format!("SIOCSIFMTU({tap}, {})", c.mtu),
        ConfigStep::TapAddress => format!("SIOCSIFADDR({tap}, {})", c.address),
        ConfigStep::TapNetmask => match netmask(c.prefix_len) {
            Ok(mask) => format!("SIOCSIFNETMASK({tap}, {mask})"),
            Err(_) => format!("SIOCSIFNETMASK({tap}, /{})", c.prefix_len),
        },
        ConfigStep::TapGetFlags => format!("SIOCGIFFLAGS({tap})"),
        ConfigStep::TapUp => format!("SIOCSIFFLAGS({tap}, IFF_UP)"),
        ConfigStep::DefaultRoute => format!("SIOCADDRT(default via {} dev {tap})", c.gateway),
    }
}

fn run_child(job: &ChildJob) -> Result<OwnedFd, SetupError> {
    let handoff = |op| move |errno| SetupError::Handoff { op, errno };
    // SEQPACKET so that the child's exit shows up as end-of-file on our end.
    let (parent_end, child_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(handoff("socketpair"))?;

    // SAFETY: the documented contract of `open_tap` is that the process is single-threaded,
    // so no other thread can hold a lock (malloc's, stdio's) that the child would inherit
    // locked. The child only makes syscalls and small allocations, never returns into the
    // caller's code (it ends in `_exit`, skipping destructors and atexit handlers), and
    // catches panics so that an unwind cannot escape into the caller's stack either.
    match unsafe { fork() }.map_err(handoff("fork"))? {
        ForkResult::Child => {
            drop(parent_end);
            let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child_main(job, &child_end)
            }))
            .unwrap_or(EXIT_PANICKED);
            // SAFETY: `_exit` ends this forked child at once; nothing of the parent's state
            // (buffers, destructors, atexit handlers) may run twice.
            unsafe { libc::_exit(status) }
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            let received = receive_report(&parent_end);
            // Closing our end first makes a still-running child's sendmsg fail instead of
            // blocking, so the wait below always ends.
            drop(parent_end);
            let status = wait_child(child);
            let (tap, report_len, report) = received?;
            if report_len == 0 {
                return Err(SetupError::ChildVanished { status });
            }
            if report_len != REPORT_LEN {
                return Err(SetupError::BadReport("wrong length"));
            }
            match decode_report(report) {
                (CODE_OK, _) => tap.ok_or(SetupError::BadReport("success without an fd")),
                (code, errno) => match ChildStep::from_code(code) {
                    Some(step) => Err(child_error(job, step, Errno::from_raw(errno))),
                    None => Err(SetupError::BadReport("unknown step")),
                },
            }
        }
    }
}

/// Body of the forked child: does the work, reports, and returns the exit status.
fn child_main(job: &ChildJob, sock: &OwnedFd) -> i32 {
    let sent = match child_setup(job) {
        Ok(tap) => {
            let fds = [tap.as_raw_fd()];
            let report = encode_report(CODE_OK, 0);
            send_report(sock, &report, &[ControlMessage::ScmRights(&fds)])
        }
        Err((step, errno)) => {
            let report = encode_report(step.code(), errno as i32);
            send_report(sock, &report, &[])
        }
    };
    match sent {
        Ok(()) => 0,
        Err(_) => EXIT_SEND_FAILED,
    }
}

fn send_report(sock: &OwnedFd, report: &[u8], cmsgs: &[ControlMessage]) -> nix::Result<()> {
    let iov = [IoSlice::new(report)];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None) {
            Err(Errno::EINTR) => continue,
            result => return result.map(drop),
        }
    }
}

type ChildResult<T> = Result<T, (ChildStep, Errno)>;

fn child_setup(job: &ChildJob) -> ChildResult<OwnedFd> {
    let ns = job.namespaces;
    // The user namespace first: it grants the capabilities that setns into the netns (owned
    // by that user namespace) and TUNSETIFF there require.
    if let Some(user) = &ns.user {
        setns(&user.fd, CloneFlags::CLONE_NEWUSER).map_err(|e| (ChildStep::SetnsUser, e))?;
    }
    setns(&ns.net.fd, CloneFlags::CLONE_NEWNET).map_err(|e| (ChildStep::SetnsNet, e))?;
    // tun binds an fd to the netns current at open() time, so open only after setns.
    let tun = open(
        "/dev/net/tun",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| (ChildStep::OpenTun, e))?;
    let mut ifr = job.name.ifreq();
    let vnet_hdr = if job.vnet_hdr { libc::IFF_VNET_HDR } else { 0 };
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | vnet_hdr) as libc::c_short;
    // SAFETY: `ifr` is a valid ifreq that lives across the call; TUNSETIFF reads it and writes
    // the final name back into the same struct.
    unsafe { ioctl::tunsetiff(tun.as_raw_fd(), &mut ifr) }
        .map_err(|e| (ChildStep::Tunsetiff, e))?;
    if let Some(config) = job.config {
        configure(job.name, config).map_err(|(step, e)| (ChildStep::Configure(step), e))?;
    }
    Ok(tun)
}

/// What `slirp4netns --configure` does, in the same order: lo up; on the tap MAC (only
/// while the link is still down), MTU, address, netmask, up; then the default route.
fn configure(tap: &IfName, config: &PreparedConfig) -> Result<(), (ConfigStep, Errno)> {
    let c = &config.source;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| (ConfigStep::Socket, e))?;
    let sock = sock.as_raw_fd();

    bring_up(
        sock,
        &IfName::loopback(),
        ConfigStep::LoopbackGetFlags,
        ConfigStep::LoopbackUp,
    )?;

    if let Some(mac) = c.mac {
        let mut ifr = tap.ifreq();
        ifr.ifr_ifru.ifru_hwaddr = sockaddr_ether(mac);
        // SAFETY: `ifr` is a valid ifreq that lives across the call.
        unsafe { ioctl::siocsifhwaddr(sock, &mut ifr) }.map_err(|e| (ConfigStep::TapMac, e))?;
    }

    let mut ifr = tap.ifreq();
    ifr.ifr_ifru.ifru_mtu = config.mtu;
    // SAFETY: `ifr` is a valid ifreq that lives across the call.
    unsafe { ioctl::siocsifmtu(sock, &mut ifr) }.map_err(|e| (ConfigStep::TapMtu, e))?;

    let mut ifr = tap.ifreq();
    ifr.ifr_ifru.ifru_addr = sockaddr_v4(c.address);
    // SAFETY: `ifr` is a valid ifreq that lives across the call.
    unsafe { ioctl::siocsifaddr(sock, &mut ifr) }.map_err(|e| (ConfigStep::TapAddress, e))?;

    let mut ifr = tap.ifreq();
    ifr.ifr_ifru.ifru_netmask = sockaddr_v4(config.netmask);
    // SAFETY: `ifr` is a valid ifreq that lives across the call.
    unsafe { ioctl::siocsifnetmask(sock, &mut ifr) }.map_err(|e| (ConfigStep::TapNetmask, e))?;

    bring_up(sock, tap, ConfigStep::TapGetFlags, ConfigStep::TapUp)?;

    let mut dev = tap.raw;
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_v4(c.gateway),
        rt_genmask: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: `route` is a valid rtentry whose `rt_dev` points at `dev`, a NUL-terminated
    // name that outlives the call; the kernel only reads both.
    unsafe { ioctl::siocaddrt(sock, &mut route) }.map_err(|e| (ConfigStep::DefaultRoute, e))?;
    Ok(())
}

/// Sets IFF_UP, keeping the interface's other flags.
fn bring_up(
    sock: RawFd,
    name: &IfName,
    get_step: ConfigStep,
    set_step: ConfigStep,
) -> Result<(), (ConfigStep, Errno)> {
    let mut ifr = name.ifreq();
    // SAFETY: `ifr` is a valid ifreq that lives across the call; the kernel fills ifru_flags.
    unsafe { ioctl::siocgifflags(sock, &mut ifr) }.map_err(|e| (get_step, e))?;
    // SAFETY: SIOCGIFFLAGS just wrote ifru_flags; any c_short is valid.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: `ifr` is a valid ifreq that lives across the call.
    unsafe { ioctl::siocsifflags(sock, &mut ifr) }.map_err(|e| (set_step, e))?;
    Ok(())
}

/// Receives the child's report: (the passed fd if any, bytes read, the report bytes).
fn receive_report(
    sock: &OwnedFd,
) -> Result<(Option<OwnedFd>, usize, [u8; REPORT_LEN]), SetupError> {
    let mut report = [0u8; REPORT_LEN];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [IoSliceMut::new(&mut report)];
        // MSG_CMSG_CLOEXEC: the tap fd is close-on-exec from the moment it exists here.
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                return Err(SetupError::Handoff {
                    op: "recvmsg",
                    errno,
                })
            }
            Ok(msg) => msg,
        };
        let mut tap = None;
        let cmsgs = msg.cmsgs().map_err(|errno| SetupError::Handoff {
            op: "recvmsg (control data)",
            errno,
        })?;
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: the kernel just installed `raw` in our fd table for this
                    // message; nothing else knows it, so we are its only owner.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    // Any fd beyond the first is unexpected and is closed by dropping it.
                    tap.get_or_insert(fd);
                }
            }
        }
        let bytes = msg.bytes;
        return Ok((tap, bytes, report));
    }
}

/// Reaps the child and describes how it ended, for error messages.
fn wait_child(child: Pid) -> String {
    loop {
        match waitpid(child, None) {
            Err(Errno::EINTR) => continue,
            Ok(status) => return describe_status(status),
            Err(errno) => return format!("waitpid: {}", errno.desc()),
        }
    }
}

fn describe_status(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, EXIT_SEND_FAILED) => {
            format!("exit status {EXIT_SEND_FAILED}: could not send its report")
        }
        WaitStatus::Exited(_, EXIT_PANICKED) => format!("exit status {EXIT_PANICKED}: panicked"),
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
        other => format!("{other:?}"),
    }
}

/// `rslirp::set_nonblocking`, its error as a setup error of the tap's hand-off.
fn set_nonblocking(fd: &OwnedFd) -> Result<(), SetupError> {
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
    fn netmask_from_prefix() {
        assert_eq!(netmask(0).unwrap(), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(1).unwrap(), Ipv4Addr::new(128, 0, 0, 0));
        assert_eq!(netmask(24).unwrap(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32).unwrap(), Ipv4Addr::new(255, 255, 255, 255));
        assert!(netmask(33).is_err());
    }

    #[test]
    fn sockaddr_v4_is_a_sockaddr_in() {
        let sa = sockaddr_v4(Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(i32::from(sa.sa_family), libc::AF_INET);
        let data: Vec<u8> = sa.sa_data.iter().map(|c| *c as u8).collect();
        assert_eq!(&data[..6], &[0, 0, 10, 0, 2, 100]);
        assert!(data[6..].iter().all(|b| *b == 0));
    }

    #[test]
    fn sockaddr_ether_holds_the_mac() {
        let sa = sockaddr_ether([0x02, 0x42, 0xac, 0x11, 0x00, 0xff]);
        assert_eq!(sa.sa_family, libc::ARPHRD_ETHER);
        let data: Vec<u8> = sa.sa_data.iter().map(|c| *c as u8).collect();
        assert_eq!(&data[..6], &[0x02, 0x42, 0xac, 0x11, 0x00, 0xff]);
    }

    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    #[test]
    fn rtentry_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        assert_eq!(std::mem::offset_of!(RtEntry, rt_dst), 8);
        assert_eq!(std::mem::offset_of!(RtEntry, rt_flags), 56);
        assert_eq!(std::mem::offset_of!(RtEntry, rt_dev), 88);
    }

    #[test]
    fn report_round_trips_every_step() {
        let steps = [
            ChildStep::SetnsUser,
            ChildStep::SetnsNet,
            ChildStep::OpenTun,
            ChildStep::Tunsetiff,
        ]
        .into_iter()
        .chain(CONFIG_STEPS.into_iter().map(ChildStep::Configure));
        for step in steps {
            let (code, errno) = decode_report(encode_report(step.code(), libc::EPERM));
            assert_ne!(code, CODE_OK);
            assert_eq!(ChildStep::from_code(code), Some(step));
            assert_eq!(errno, libc::EPERM);
        }
        assert_eq!(ChildStep::from_code(99), None);
        assert_eq!(ChildStep::from_code(100 + CONFIG_STEPS.len() as u32), None);
    }

    fn request(target: NetnsTarget) -> TapRequest {
        TapRequest {
            target,
            userns_path: None,
            tap_name: "tap0".to_owned(),
            configure: None,
            offload: true,
        }
    }

    #[test]
    fn missing_pid_names_the_file() {
        // Larger than any possible pid_max (2^22), so never a live process.
        let err = open_tap(&request(NetnsTarget::Pid(i32::MAX))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot open /proc/2147483647/ns/net: No such file or directory"
        );
    }

    #[test]
    fn missing_path_names_the_file() {
        let target = NetnsTarget::Path(PathBuf::from("/nonexistent/rslirp-netns"));
        let err = open_tap(&request(target)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot open /nonexistent/rslirp-netns: No such file or directory"
        );
    }

    #[test]
    fn missing_userns_path_names_the_file() {
        let mut req = request(NetnsTarget::Path(PathBuf::from("/proc/self/ns/net")));
        req.userns_path = Some(PathBuf::from("/nonexistent/userns"));
        let err = open_tap(&req).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot open /nonexistent/userns: No such file or directory"
        );
    }

    #[test]
    fn swapped_namespace_files_are_named() {
        let mut req = request(NetnsTarget::Path(PathBuf::from("/proc/self/ns/user")));
        let err = open_tap(&req).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/proc/self/ns/user is not a network namespace"
        );
        req.target = NetnsTarget::Path(PathBuf::from("/proc/self/ns/net"));
        req.userns_path = Some(PathBuf::from("/proc/self/ns/net"));
        let err = open_tap(&req).unwrap_err();
        assert_eq!(err.to_string(), "/proc/self/ns/net is not a user namespace");
    }

    #[test]
    fn bad_name_is_rejected_before_any_namespace_is_opened() {
        let mut req = request(NetnsTarget::Pid(i32::MAX));
        req.tap_name = "no/slash".to_owned();
        let err = open_tap(&req).unwrap_err();
        assert!(matches!(err, SetupError::InvalidTapName { .. }), "{err}");
    }

    #[test]
    fn own_user_namespace_is_not_joined() {
        let ns = Namespaces::open(&request(NetnsTarget::Pid(std::process::id() as i32))).unwrap();
        assert!(ns.user.is_none());
        assert_eq!(
            ns.net.path,
            PathBuf::from(format!("/proc/{}/ns/net", std::process::id()))
        );
    }

    #[test]
    fn child_errors_read_as_one_line_naming_the_step() {
        let ns = Namespaces {
            user: Some(
                NsFile::open(Path::new("/proc/self/ns/user"), CloneFlags::CLONE_NEWUSER).unwrap(),
            ),
            net: NsFile::open(Path::new("/proc/self/ns/net"), CloneFlags::CLONE_NEWNET).unwrap(),
        };
        let name = IfName::new("tap0").unwrap();
        let config = PreparedConfig::new(&TapConfig {
            mtu: 65520,
            address: Ipv4Addr::new(10, 0, 2, 100),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            mac: Some([0x02, 0, 0, 0, 0, 0x01]),
        })
        .unwrap();
        let job = ChildJob {
            namespaces: &ns,
            name: &name,
            config: Some(&config),
            vnet_hdr: false,
        };
        let text = |step| child_error(&job, step, Errno::EPERM).to_string();
        assert_eq!(
            text(ChildStep::SetnsUser),
            "setns(/proc/self/ns/user): Operation not permitted"
        );
        assert_eq!(
            text(ChildStep::Tunsetiff),
            "TUNSETIFF(tap0, IFF_TAP|IFF_NO_PI): Operation not permitted"
        );
        assert_eq!(
            text(ChildStep::Configure(ConfigStep::TapMac)),
            "SIOCSIFHWADDR(tap0, 02:00:00:00:00:01): Operation not permitted"
        );
        assert_eq!(
            text(ChildStep::Configure(ConfigStep::TapNetmask)),
            "SIOCSIFNETMASK(tap0, 255.255.255.0): Operation not permitted"
        );
        assert_eq!(
            text(ChildStep::Configure(ConfigStep::DefaultRoute)),
            "SIOCADDRT(default via 10.0.2.2 dev tap0): Operation not permitted"
        );
    }

    /// `adopt_tap_fd` on an fd we just made and hand over whole.
    fn adopt(fd: OwnedFd) -> Result<Tap, SetupError> {
        use std::os::fd::IntoRawFd;
        // SAFETY: `into_raw_fd` gives up our ownership; adopt_tap_fd takes it over.
        unsafe { adopt_tap_fd(fd.into_raw_fd(), true) }
    }

    #[test]
    fn tapfd_may_be_a_seqpacket_or_datagram_socket() {
        for kind in [SockType::SeqPacket, SockType::Datagram] {
            let (ours, theirs) =
                socketpair(AddressFamily::Unix, kind, None, SockFlag::empty()).unwrap();
            let tap = adopt(ours).unwrap();
            assert_eq!(tap.kind, LinkKind::Socket);
            assert!(!tap.vnet_hdr && !tap.offload);
            let flags = OFlag::from_bits_retain(fcntl(&tap.fd, FcntlArg::F_GETFL).unwrap());
            assert!(flags.contains(OFlag::O_NONBLOCK));
            let fd_flags = fcntl(&tap.fd, FcntlArg::F_GETFD).unwrap();
            assert!(nix::fcntl::FdFlag::from_bits_retain(fd_flags)
                .contains(nix::fcntl::FdFlag::FD_CLOEXEC));
            drop(theirs);
        }
    }

    #[test]
    fn tapfd_without_frames_is_refused() {
        let (ours, _theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        let raw = ours.as_raw_fd();
        let err = adopt(ours).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "TAPFD {raw}: a socket of type Stream; frames need message boundaries (a \
                 datagram or seqpacket socket)"
            )
        );
        let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let raw = null.as_raw_fd();
        assert_eq!(
            adopt(null).unwrap_err().to_string(),
            format!("TAPFD {raw}: neither a tap device nor a socket")
        );
        // A number no process has open (far above any fd limit), so no other test's fd.
        // SAFETY: not open, so nothing owns it; adopt_tap_fd only looks it up.
        let err = unsafe { adopt_tap_fd(i32::MAX, true) }.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "TAPFD {}: not an open file descriptor (Bad file number)",
                i32::MAX
            )
        );
    }

    #[test]
    fn oversized_mtu_is_a_config_error() {
        let err = PreparedConfig::new(&TapConfig {
            mtu: u32::MAX,
            address: Ipv4Addr::new(10, 0, 2, 100),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            mac: None,
        })
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "invalid tap configuration: MTU 4294967295 is too large"
        );
    }
}

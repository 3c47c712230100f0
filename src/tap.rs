//! The tap device's own code, apart from how the namespace holding it is entered
//! (`netns/`): what a tap fd is ([`Tap`], [`LinkKind`]), the tun ioctls, setting the
//! virtio-net header size and the offloads on a tap once open, taking over a tap fd the
//! caller passed down (`--netns-type=tapfd`, [`adopt_tap_fd`]), and the virtio-net header
//! itself ([`vnet_header`], [`frame_read`]) that starts every frame read or written when the
//! tap has one. The event loop calls the latter on each frame; the fuzz harness
//! (fuzz/harness) runs the stack with offloads through them too, hence `pub`.
//!
//! TUNSETIFF, which creates or attaches the tap, is defined here but called by the netns
//! child (`netns/child.rs`): tun binds a file to the network namespace current at open().
//!
//! Why not the `tun-tap` crate: its `Iface::without_packet_info` does give IFF_NO_PI and
//! `IntoRawFd`, but the TUNSETIFF flags are fixed inside its bundled C helper (so no
//! IFF_VNET_HDR later: the flag can only be given in the one TUNSETIFF call an fd gets), it
//! truncates over-long names silently instead of rejecting them, it needs a C compiler at
//! build time, and its default features pull in tokio-core 0.1 and mio 0.6. One ioctl through
//! nix's `ioctl_readwrite_bad!` is smaller than any of that.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::socket::SockType;
use nix::sys::stat::fstat;
use rslirp_stack::Offload;

use crate::netns::{set_nonblocking, zeroed_ifreq, SetupError};

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
pub(crate) fn enable_offloads(tap: &OwnedFd) -> bool {
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

/// The tun ioctls; libc has the request numbers, nix the typed wrappers. All that take an
/// ifreq are read-write because the kernel copies the ifreq back for some of them (TUNSETIFF
/// does). SIOCGIFHWADDR is here because tun's own handler answers it on the tap fd.
pub(crate) mod ioctl {
    nix::ioctl_readwrite_bad!(tunsetiff, libc::TUNSETIFF, libc::ifreq);
    nix::ioctl_readwrite_bad!(tungetiff, libc::TUNGETIFF, libc::ifreq);
    nix::ioctl_write_ptr_bad!(tunattachfilter, libc::TUNATTACHFILTER, libc::sock_fprog);
    nix::ioctl_write_ptr_bad!(tundetachfilter, libc::TUNDETACHFILTER, libc::sock_fprog);
    nix::ioctl_read_bad!(tungetfilter, libc::TUNGETFILTER, libc::sock_fprog);
    nix::ioctl_readwrite_bad!(siocgifhwaddr, libc::SIOCGIFHWADDR, libc::ifreq);
    nix::ioctl_write_ptr_bad!(tunsetvnethdrsz, libc::TUNSETVNETHDRSZ, libc::c_int);
    nix::ioctl_write_int_bad!(tunsetoffload, libc::TUNSETOFFLOAD);
}

/// `struct virtio_net_hdr` (linux/virtio_net.h) values we use.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;

/// The frame in what one read from the tap returned: past the virtio-net header when the
/// tap has one (see `event_loop::EventLoop::read_tap` for why the header itself is not
/// looked at); `None` if the read is shorter than the header.
pub fn frame_read(read: &[u8], vnet_hdr: bool) -> Option<&[u8]> {
    read.get(if vnet_hdr { VNET_HDR_LEN } else { 0 }..)
}

/// The virtio-net header for a frame the stack described. tun reads it in the guest
/// kernel's byte order (legacy virtio: native, as we never set TUNSETVNETLE/BE).
pub fn vnet_header(offload: Offload) -> [u8; VNET_HDR_LEN] {
    let mut flags = 0u8;
    let (mut csum_start, mut csum_offset) = (0u16, 0u16);
    if let Some(partial) = offload.partial_checksum {
        flags |= VIRTIO_NET_HDR_F_NEEDS_CSUM;
        (csum_start, csum_offset) = (partial.start, partial.offset);
    }
    let (mut gso_type, mut hdr_len, mut gso_size) = (0u8, 0u16, 0u16);
    if let Some(gso) = offload.gso {
        gso_type = if gso.ipv6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        (hdr_len, gso_size) = (gso.header_len, gso.segment_size);
    }
    let mut header = [0u8; VNET_HDR_LEN];
    header[0] = flags;
    header[1] = gso_type;
    header[2..4].copy_from_slice(&hdr_len.to_ne_bytes());
    header[4..6].copy_from_slice(&gso_size.to_ne_bytes());
    header[6..8].copy_from_slice(&csum_start.to_ne_bytes());
    header[8..10].copy_from_slice(&csum_offset.to_ne_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag};
    use rslirp_stack::{Gso, PartialChecksum};

    #[test]
    fn vnet_header_layout() {
        assert_eq!(vnet_header(Offload::default()), [0; VNET_HDR_LEN]);
        let offload = Offload {
            partial_checksum: Some(PartialChecksum {
                start: 34,
                offset: 16,
            }),
            gso: Some(Gso {
                ipv6: false,
                segment_size: 1448,
                header_len: 66,
            }),
        };
        let header = vnet_header(offload);
        assert_eq!(header[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(header[1], VIRTIO_NET_HDR_GSO_TCPV4);
        let word = |at: usize| u16::from_ne_bytes([header[at], header[at + 1]]);
        assert_eq!((word(2), word(4), word(6), word(8)), (66, 1448, 34, 16));
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
}

//! The real `HostIo`: non-blocking host sockets registered with mio.
//!
//! Each flow of the stack owns at most one host socket, stored in a slot indexed by the
//! flow's slab index (so lookups are O(1)) and registered with the flow id as its mio token,
//! edge-triggered for both directions. The stack sees only `HostError`s; errno values are
//! translated here.

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rslirp_stack::{
    CloseMode, Datagram, FlowId, HostError, HostIo, HostResult, IcmpReport, SourceAddr,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Where outgoing host sockets are bound: to an address (`--outbound-addr`,
/// `--outbound-addr6`) and, ours, to an interface (`--outbound-if`, `--outbound-if6`).
#[derive(Debug, Clone, Default)]
pub struct Outbound {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    /// SO_BINDTODEVICE for IPv4 flows, except towards host loopback.
    pub if4: Option<String>,
    /// SO_BINDTODEVICE for IPv6 flows, except towards host loopback.
    pub if6: Option<String>,
}

impl Outbound {
    /// The interface a flow's socket towards `remote` is bound to. Never for host loopback
    /// (10.0.2.2 and fd00::2 become 127.0.0.1 and ::1): loopback traffic only exists on
    /// `lo`, and bound elsewhere it would find no route.
    fn device_for(&self, remote: IpAddr) -> Option<&str> {
        let loopback = match remote {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => {
                v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        };
        if loopback {
            return None;
        }
        match remote {
            IpAddr::V4(_) => self.if4.as_deref(),
            IpAddr::V6(_) => self.if6.as_deref(),
        }
    }
}

/// Checks at start that sockets of `family` can be bound to `interface` here (it exists
/// in this network namespace, and SO_BINDTODEVICE is permitted: unprivileged since Linux
/// 5.7 for a socket not yet bound to a device, else it needs CAP_NET_RAW), by binding a
/// throw-away socket.
pub fn check_outbound_device(interface: &str, v6: bool) -> Result<(), String> {
    let (option, domain) = if v6 {
        ("--outbound-if6", Domain::IPV6)
    } else {
        ("--outbound-if", Domain::IPV4)
    };
    let socket = Socket::new(domain, Type::DGRAM.cloexec(), None)
        .map_err(|e| format!("{option} {interface}: cannot open a socket: {e}"))?;
    socket
        .bind_device(Some(interface.as_bytes()))
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENODEV) => {
                format!("{option} {interface}: no such interface in rslirp's network namespace")
            }
            Some(libc::EPERM) | Some(libc::EACCES) => format!(
                "{option} {interface}: binding sockets to an interface (SO_BINDTODEVICE) is \
                 not permitted here; it needs Linux 5.7 or later, or CAP_NET_RAW: {e}"
            ),
            _ => format!("{option} {interface}: SO_BINDTODEVICE: {e}"),
        })
}

/// The mio token of a flow's host socket.
pub fn flow_token(flow: FlowId) -> Token {
    Token(flow.to_u64() as usize)
}

/// The flow a mio token names, if it is a flow token (see `event_loop` for the others).
pub fn token_flow(token: Token) -> FlowId {
    FlowId::from_u64(token.0 as u64)
}

/// Forward listeners use bit 63 (flow ids never set it) with bit 62 clear (the API's).
const FORWARD_BIT: usize = 1 << 63;

pub fn forward_token(forward: u64) -> Token {
    Token(FORWARD_BIT | (forward as usize & ((1 << 62) - 1)))
}

/// The forward a token names, if it is a forward token.
pub fn token_forward(token: Token) -> Option<u64> {
    (token.0 & (3 << 62) == FORWARD_BIT).then_some((token.0 & ((1 << 62) - 1)) as u64)
}

/// A port forward's host socket, as the std type whose calls it needs.
enum ForwardSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl ForwardSocket {
    fn fd(&self) -> std::os::fd::RawFd {
        match self {
            ForwardSocket::Tcp(listener) => listener.as_raw_fd(),
            ForwardSocket::Udp(socket) => socket.as_raw_fd(),
        }
    }
}

struct Slot {
    generation: u32,
    socket: Socket,
    /// An IPv6 socket (IPV6_UNICAST_HOPS rather than IP_TTL).
    v6: bool,
    /// The TTL / hop limit last set on the socket; 0 until the first datagram.
    hop_limit: u8,
    /// A datagram read ahead by `recv_datagram` (the second of its recvmmsg), handed out
    /// by the next call; dropped with the socket.
    held: Option<Held>,
}

/// A datagram read ahead: its bytes and length.
struct Held {
    data: Vec<u8>,
    len: usize,
}

pub struct RealHost {
    registry: Registry,
    slots: Vec<Option<Slot>>,
    outbound: Outbound,
    /// Listening/bound sockets of port forwards, by forward id.
    forwards: HashMap<u64, ForwardSocket>,
    /// The buffer of `recv_datagram`'s read-ahead, kept between calls so that a stream of
    /// datagrams allocates nothing (it moves into a slot's `held` and back).
    spare: Vec<u8>,
}

impl RealHost {
    pub fn new(registry: Registry, outbound: Outbound) -> RealHost {
        RealHost {
            registry,
            slots: Vec::new(),
            outbound,
            forwards: HashMap::new(),
            spare: Vec::new(),
        }
    }

    /// Open sockets (for stats and leak checks).
    pub fn open_count(&self) -> usize {
        self.slots.iter().filter(|slot| slot.is_some()).count()
    }

    fn socket(&self, flow: FlowId) -> HostResult<&Socket> {
        match self.slots.get(flow.index as usize) {
            Some(Some(slot)) if slot.generation == flow.generation => Ok(&slot.socket),
            // The stack only calls for flows it opened; a miss means a bug, reported as a
            // dead connection rather than a panic.
            _ => Err(HostError::ConnectionReset),
        }
    }

    fn forward_listener(&self, forward: u64) -> HostResult<&std::net::TcpListener> {
        match self.forwards.get(&forward) {
            Some(ForwardSocket::Tcp(listener)) => Ok(listener),
            _ => Err(HostError::ConnectionReset),
        }
    }

    fn forward_udp(&self, forward: u64) -> HostResult<&std::net::UdpSocket> {
        match self.forwards.get(&forward) {
            Some(ForwardSocket::Udp(socket)) => Ok(socket),
            _ => Err(HostError::ConnectionReset),
        }
    }

    /// A bound (and for TCP, listening) socket for a port forward.
    fn open_forward(&mut self, forward: u64, addr: SocketAddr, kind: Type) -> HostResult<()> {
        let domain = Domain::for_address(addr);
        let socket = Socket::new(domain, kind.nonblocking().cloexec(), None).map_err(host_error)?;
        if kind == Type::STREAM {
            // Lets a forward be re-added while old connections linger in TIME-WAIT.
            socket.set_reuse_address(true).map_err(host_error)?;
        }
        if addr.is_ipv6() {
            // "::" takes IPv4 clients too (what users of 0.0.0.0-style forwards expect);
            // the forward table treats it as overlapping 0.0.0.0 accordingly.
            let _ = socket.set_only_v6(false);
        }
        socket.bind(&SockAddr::from(addr)).map_err(host_error)?;
        if kind == Type::STREAM {
            socket.listen(1024).map_err(host_error)?;
        }
        self.registry
            .register(
                &mut SourceFd(&socket.as_raw_fd()),
                forward_token(forward),
                Interest::READABLE,
            )
            .map_err(host_error)?;
        let socket = if kind == Type::STREAM {
            ForwardSocket::Tcp(socket.into())
        } else {
            ForwardSocket::Udp(socket.into())
        };
        self.forwards.insert(forward, socket);
        Ok(())
    }

    /// Create a non-blocking socket for a flow towards `remote` (whose family it takes),
    /// bind it to the outbound interface and address (unless `source` says otherwise),
    /// register it.
    fn open(
        &mut self,
        flow: FlowId,
        remote: IpAddr,
        kind: Type,
        protocol: Option<Protocol>,
        source: SourceAddr,
    ) -> HostResult<&Socket> {
        let domain = match remote {
            IpAddr::V4(_) => Domain::IPV4,
            IpAddr::V6(_) => Domain::IPV6,
        };
        let socket =
            Socket::new(domain, kind.nonblocking().cloexec(), protocol).map_err(host_error)?;
        // `--outbound-if[6]`: the route goes through that interface whatever the routing
        // tables (policy routing included) would choose. Set before bind and connect.
        if let Some(device) = self.outbound.device_for(remote) {
            socket
                .bind_device(Some(device.as_bytes()))
                .map_err(host_error)?;
        }
        // As slirp4netns: host loopback destinations too (a server there then sees the
        // outbound address as the peer). Only the DNS forwarder's loopback resolver is left
        // to the kernel's choice (`SourceAddr::Kernel`, decided by the stack).
        let bind = match (remote, source) {
            (_, SourceAddr::Kernel) => None,
            (IpAddr::V4(_), SourceAddr::Outbound) => self.outbound.v4.map(IpAddr::V4),
            (IpAddr::V6(_), SourceAddr::Outbound) => self.outbound.v6.map(IpAddr::V6),
        };
        if let Some(addr) = bind {
            socket
                .bind(&SockAddr::from(SocketAddr::new(addr, 0)))
                .map_err(host_error)?;
        }
        self.adopt(flow, socket, remote.is_ipv6())
    }

    /// Send a datagram on the flow's socket with `hop_limit` as its TTL / hop limit. The
    /// socket option is set only when it changes (a guest sends most datagrams of a flow
    /// with one TTL), so the common path stays one system call.
    fn send_with_hop_limit(&mut self, flow: FlowId, data: &[u8], hop_limit: u8) -> HostResult<()> {
        // TTL 0 is no valid socket setting (a guest that sends it gets the least we can).
        let hop_limit = hop_limit.max(1);
        let slot = match self.slots.get_mut(flow.index as usize) {
            Some(Some(slot)) if slot.generation == flow.generation => slot,
            _ => return Err(HostError::ConnectionReset),
        };
        if slot.hop_limit != hop_limit {
            let set = if slot.v6 {
                slot.socket.set_unicast_hops_v6(u32::from(hop_limit))
            } else {
                slot.socket.set_ttl_v4(u32::from(hop_limit))
            };
            set.map_err(host_error)?;
            slot.hop_limit = hop_limit;
        }
        send(&slot.socket, data).map(|_| ())
    }

    /// Register `socket` as the host socket of `flow`.
    fn adopt(&mut self, flow: FlowId, socket: Socket, v6: bool) -> HostResult<&Socket> {
        self.registry
            .register(
                &mut SourceFd(&socket.as_raw_fd()),
                flow_token(flow),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(host_error)?;
        let index = flow.index as usize;
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        let slot = self.slots[index].insert(Slot {
            generation: flow.generation,
            socket,
            v6,
            hop_limit: 0,
            held: None,
        });
        Ok(&slot.socket)
    }
}

/// errno → what the stack makes of it.
pub fn host_error(err: io::Error) -> HostError {
    if err.kind() == io::ErrorKind::WouldBlock {
        return HostError::WouldBlock;
    }
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => HostError::ConnectionRefused,
        Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ECONNABORTED) => {
            HostError::ConnectionReset
        }
        Some(libc::ENETUNREACH) | Some(libc::ENETDOWN) => HostError::NetworkUnreachable,
        Some(libc::EHOSTUNREACH) | Some(libc::EHOSTDOWN) => HostError::HostUnreachable,
        Some(libc::ETIMEDOUT) => HostError::TimedOut,
        Some(libc::EACCES) | Some(libc::EPERM) => HostError::PermissionDenied,
        Some(libc::EMFILE)
        | Some(libc::ENFILE)
        | Some(libc::ENOBUFS)
        | Some(libc::ENOMEM)
        | Some(libc::EADDRNOTAVAIL) => HostError::Exhausted,
        Some(errno) => HostError::Other(errno),
        None => HostError::Other(0),
    }
}

impl RealHost {
    /// One datagram of a connected UDP or ping socket. The kernel is asked for two at once
    /// (recvmmsg): when it has only one, the flow is known to be drained and the stack
    /// spares the read that would only say EAGAIN — a lone datagram, the DNS-like round
    /// trip, costs one receive call, not two. A second datagram waits in the slot for the
    /// next call, which makes no system call.
    fn recv_datagram(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<Datagram> {
        let RealHost { slots, spare, .. } = self;
        let slot = match slots.get_mut(flow.index as usize) {
            Some(Some(slot)) if slot.generation == flow.generation => slot,
            _ => return Err(HostError::ConnectionReset),
        };
        if let Some(held) = slot.held.take() {
            let len = held.len.min(buf.len());
            buf[..len].copy_from_slice(&held.data[..len]);
            *spare = held.data;
            return Ok(Datagram { len, last: false });
        }
        if spare.len() < buf.len() {
            // Zeroed allocation, not `resize`: a fresh mapping's pages stay untouched (see
            // alloc.rs) until a datagram lands in them.
            *spare = vec![0; buf.len()];
        }
        let lens = loop {
            match recv_two(slot.socket.as_raw_fd(), buf, spare) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                result => break result.map_err(host_error)?,
            }
        };
        match lens {
            (len, None) => Ok(Datagram { len, last: true }),
            (len, Some(second)) => {
                slot.held = Some(Held {
                    data: std::mem::take(spare),
                    len: second,
                });
                Ok(Datagram { len, last: false })
            }
        }
    }
}

impl HostIo for RealHost {
    fn tcp_listen(&mut self, forward: u64, addr: SocketAddr) -> HostResult<()> {
        self.open_forward(forward, addr, Type::STREAM)
    }

    fn tcp_accept(&mut self, forward: u64, flow: FlowId) -> HostResult<SocketAddr> {
        let listener = socket2::SockRef::from(self.forward_listener(forward)?);
        // accept4 makes the socket non-blocking (and close-on-exec) itself: no fcntl after.
        let (stream, peer) = loop {
            match listener.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                result => break result.map_err(host_error)?,
            }
        };
        let Some(peer) = peer.as_socket() else {
            return Err(HostError::Other(libc::EAFNOSUPPORT)); // a TCP listener's peer is IP
        };
        let _ = stream.set_tcp_nodelay(true);
        self.adopt(flow, stream, peer.is_ipv6())?;
        Ok(peer)
    }

    fn udp_bind(&mut self, forward: u64, addr: SocketAddr) -> HostResult<()> {
        self.open_forward(forward, addr, Type::DGRAM)
    }

    fn udp_recv_from(&mut self, forward: u64, buf: &mut [u8]) -> HostResult<(usize, SocketAddr)> {
        let socket = self.forward_udp(forward)?;
        loop {
            match socket.recv_from(buf) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                result => return result.map_err(host_error),
            }
        }
    }

    fn udp_send_to(&mut self, forward: u64, peer: SocketAddr, data: &[u8]) -> HostResult<()> {
        let socket = self.forward_udp(forward)?;
        loop {
            match socket.send_to(data, peer) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                result => return result.map(|_| ()).map_err(host_error),
            }
        }
    }

    fn forward_close(&mut self, forward: u64) {
        if let Some(socket) = self.forwards.remove(&forward) {
            let _ = self.registry.deregister(&mut SourceFd(&socket.fd()));
        }
    }

    fn tcp_connect(
        &mut self,
        flow: FlowId,
        remote: SocketAddr,
        source: SourceAddr,
    ) -> HostResult<()> {
        let socket = self.open(flow, remote.ip(), Type::STREAM, None, source)?;
        // Small guest writes go out at once, as on the guest side (no Nagle on either end).
        let _ = socket.set_tcp_nodelay(true);
        match socket.connect(&SockAddr::from(remote)) {
            Ok(()) => Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
            Err(err) => Err(host_error(err)),
        }
    }

    fn tcp_recv(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<usize> {
        let mut socket = self.socket(flow)?;
        loop {
            match socket.read(buf) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                result => return result.map_err(host_error),
            }
        }
    }

    fn tcp_send(&mut self, flow: FlowId, data: &[u8]) -> HostResult<usize> {
        send(self.socket(flow)?, data)
    }

    fn tcp_shutdown_write(&mut self, flow: FlowId) {
        if let Ok(socket) = self.socket(flow) {
            let _ = socket.shutdown(std::net::Shutdown::Write);
        }
    }

    fn take_error(&mut self, flow: FlowId) -> Option<HostError> {
        match self.socket(flow) {
            Ok(socket) => match socket.take_error() {
                Ok(None) => None,
                Ok(Some(err)) | Err(err) => Some(host_error(err)),
            },
            Err(err) => Some(err),
        }
    }

    fn udp_open(&mut self, flow: FlowId, remote: SocketAddr, source: SourceAddr) -> HostResult<()> {
        let socket = self.open(flow, remote.ip(), Type::DGRAM, None, source)?;
        enable_recverr(socket, remote.is_ipv6());
        socket.connect(&SockAddr::from(remote)).map_err(host_error)
    }

    fn udp_reconnect(
        &mut self,
        flow: FlowId,
        remote: SocketAddr,
        source: SourceAddr,
    ) -> HostResult<()> {
        // A new socket rather than a second connect(): the source address may have to
        // change with the remote (loopback or not), and a late answer of the old remote
        // must not be taken for the new one's.
        self.close(flow, CloseMode::Graceful);
        self.udp_open(flow, remote, source)
    }

    fn udp_send(&mut self, flow: FlowId, data: &[u8], hop_limit: u8) -> HostResult<()> {
        self.send_with_hop_limit(flow, data, hop_limit)
    }

    fn udp_recv(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<Datagram> {
        self.recv_datagram(flow, buf)
    }

    fn ping_open(&mut self, flow: FlowId, remote: IpAddr) -> HostResult<()> {
        let protocol = match remote {
            IpAddr::V4(_) => Protocol::ICMPV4,
            IpAddr::V6(_) => Protocol::ICMPV6,
        };
        // The kernel allows these only to groups in net.ipv4.ping_group_range; EACCES
        // becomes PermissionDenied and the stack then drops pings quietly.
        let socket = self.open(
            flow,
            remote,
            Type::DGRAM,
            Some(protocol),
            SourceAddr::Outbound,
        )?;
        enable_recverr(socket, remote.is_ipv6());
        socket
            .connect(&SockAddr::from(SocketAddr::new(remote, 0)))
            .map_err(host_error)
    }

    fn ping_send(&mut self, flow: FlowId, message: &[u8], hop_limit: u8) -> HostResult<()> {
        self.send_with_hop_limit(flow, message, hop_limit)
    }

    fn ping_recv(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<Datagram> {
        self.recv_datagram(flow, buf)
    }

    fn recv_icmp_error(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<Option<IcmpReport>> {
        let fd = self.socket(flow)?.as_raw_fd();
        // Errors of the host's own making (a local EMSGSIZE, say) are skipped; the queue is
        // bounded by the socket's receive buffer, so this ends.
        loop {
            match recv_error_queue(fd, buf) {
                Ok(Some(report)) => return Ok(Some(report)),
                Ok(None) => continue,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(err) => return Err(host_error(err)),
            }
        }
    }

    fn close(&mut self, flow: FlowId, mode: CloseMode) {
        let Some(entry) = self.slots.get_mut(flow.index as usize) else {
            return;
        };
        if entry
            .as_ref()
            .is_none_or(|slot| slot.generation != flow.generation)
        {
            return;
        }
        if let Some(slot) = entry.take() {
            // No EPOLL_CTL_DEL: the socket is never duplicated, so closing it below removes
            // it from the epoll set; that saves a system call per connection.
            if mode == CloseMode::Abort {
                // SO_LINGER 0: closing sends RST, so the host peer learns the guest aborted.
                let _ = slot.socket.set_linger(Some(Duration::ZERO));
            }
        }
    }
}

fn send(socket: &Socket, data: &[u8]) -> HostResult<usize> {
    loop {
        // MSG_NOSIGNAL: a peer that went away is an EPIPE, not a SIGPIPE.
        match socket.send_with_flags(data, libc::MSG_NOSIGNAL) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            result => return result.map_err(host_error),
        }
    }
}

/// Ask the kernel to queue the ICMP errors the network sends about the socket's datagrams
/// (IP_RECVERR / IPV6_RECVERR), with who sent them and what they quote, so that they can be
/// relayed to the guest. Without it a connected socket learns only an errno, and only of
/// some errors (not of time exceeded). Failing, the flow works on without the relay.
fn enable_recverr(socket: &Socket, v6: bool) {
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    };
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `on`, a live local; the fd
    // is open for as long as `socket` is borrowed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        log::debug!(
            "cannot enable ICMP error reports on a host socket: {}",
            io::Error::last_os_error()
        );
    }
}

/// `struct sock_extended_err`: errno, origin, type, code, pad, info, data.
const EXTENDED_ERR_LEN: usize = 16;

/// Take one entry of the socket's error queue (recvmsg with MSG_ERRQUEUE): its quoted bytes
/// into `buf`, and what the kernel says of it. `Ok(None)`: an entry that is no ICMP error.
/// Receive up to two datagrams without blocking, into `first` and `second`: their lengths
/// (each truncated to its buffer, as recv(2) does). `WouldBlock` when none is queued.
fn recv_two(
    fd: std::os::fd::RawFd,
    first: &mut [u8],
    second: &mut [u8],
) -> io::Result<(usize, Option<usize>)> {
    let mut iovs = [
        libc::iovec {
            iov_base: first.as_mut_ptr().cast(),
            iov_len: first.len(),
        },
        libc::iovec {
            iov_base: second.as_mut_ptr().cast(),
            iov_len: second.len(),
        },
    ];
    // SAFETY: mmsghdr is plain old data, for which all zeroes is a valid (empty) value.
    let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
    for (msg, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: each message's one iovec points into a buffer we own and keep alive across
    // the call, with its length; no name or control buffer; the kernel writes within them
    // and sets `msg_len`. A null timeout with MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            2,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        // recvmmsg returns at least one message or an error.
        1 => Ok((msgs[0].msg_len as usize, None)),
        _ => Ok((msgs[0].msg_len as usize, Some(msgs[1].msg_len as usize))),
    }
}

fn recv_error_queue(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<Option<IcmpReport>> {
    // Room for one cmsghdr with the extended error and an IPv6 offender address; u64s for
    // the cmsghdr's alignment.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data, for which all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` (the iovec over `buf`, the control buffer) points to
    // memory we own and keep alive across the call, with the lengths given; the kernel
    // writes within them.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = n as usize;
    // SAFETY: CMSG_FIRSTHDR / CMSG_NXTHDR walk the control messages the kernel wrote into
    // `control`, bounded by `msg.msg_controllen`, and return null past the last.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and points to a complete cmsghdr inside `control`.
        let header = unsafe { &*cmsg };
        let v4 = header.cmsg_level == libc::SOL_IP && header.cmsg_type == libc::IP_RECVERR;
        let v6 = header.cmsg_level == libc::SOL_IPV6 && header.cmsg_type == libc::IPV6_RECVERR;
        if v4 || v6 {
            // SAFETY: CMSG_LEN(0) is a constant computation with no memory access.
            let data_len =
                (header.cmsg_len as usize).saturating_sub(unsafe { libc::CMSG_LEN(0) } as usize);
            // SAFETY: the kernel wrote `cmsg_len` bytes of this message, its data after the
            // header; `data_len` stays within them (and within `control`).
            let data = unsafe { std::slice::from_raw_parts(libc::CMSG_DATA(cmsg), data_len) };
            return Ok(parse_extended_err(data, len, v6));
        }
        // SAFETY: as above, within `msg`'s control buffer.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(None)
}

/// A `sock_extended_err` (and the offender address after it, SO_EE_OFFENDER) as an
/// [`IcmpReport`]; `None` unless it is an ICMP error (origin SO_EE_ORIGIN_ICMP[6]).
fn parse_extended_err(data: &[u8], len: usize, v6: bool) -> Option<IcmpReport> {
    let ee = data.get(..EXTENDED_ERR_LEN)?;
    let origin = ee[4];
    let icmp_origin = if v6 {
        libc::SO_EE_ORIGIN_ICMP6
    } else {
        libc::SO_EE_ORIGIN_ICMP
    };
    if origin != icmp_origin {
        return None;
    }
    let info = u32::from_ne_bytes([ee[8], ee[9], ee[10], ee[11]]);
    let offender = data.get(EXTENDED_ERR_LEN..).and_then(parse_sockaddr);
    Some(IcmpReport {
        v6,
        icmp_type: ee[5],
        code: ee[6],
        info,
        offender,
        len,
    })
}

/// The address of a `sockaddr_in` / `sockaddr_in6` the kernel wrote (AF_UNSPEC: none).
fn parse_sockaddr(bytes: &[u8]) -> Option<IpAddr> {
    let family = i32::from(u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]));
    if family == libc::AF_INET {
        let octets: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
        Some(IpAddr::V4(Ipv4Addr::from(octets)))
    } else if family == libc::AF_INET6 {
        let octets: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(octets)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `sock_extended_err` as Linux writes it, followed by the offender's sockaddr.
    fn extended_err(origin: u8, icmp_type: u8, code: u8, info: u32, offender: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(libc::EHOSTUNREACH as u32).to_ne_bytes());
        bytes.extend_from_slice(&[origin, icmp_type, code, 0]);
        bytes.extend_from_slice(&info.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(offender);
        bytes
    }

    fn sockaddr_in(ip: Ipv4Addr) -> Vec<u8> {
        let mut bytes = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&ip.octets());
        bytes.extend_from_slice(&[0; 8]);
        bytes
    }

    fn sockaddr_in6(ip: Ipv6Addr) -> Vec<u8> {
        let mut bytes = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        bytes.extend_from_slice(&[0; 6]);
        bytes.extend_from_slice(&ip.octets());
        bytes.extend_from_slice(&[0; 4]);
        bytes
    }

    #[test]
    fn outbound_interface_is_for_every_destination_but_host_loopback() {
        let outbound = Outbound {
            if4: Some("vpn4".into()),
            if6: Some("vpn6".into()),
            ..Outbound::default()
        };
        let device = |ip: &str| outbound.device_for(ip.parse().expect("address"));
        assert_eq!(device("192.0.2.2"), Some("vpn4"));
        assert_eq!(device("10.99.0.1"), Some("vpn4"));
        assert_eq!(device("2001:db8::2"), Some("vpn6"));
        for loopback in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(device(loopback), None, "{loopback}");
        }
        let v4_only = Outbound {
            if4: Some("vpn4".into()),
            ..Outbound::default()
        };
        assert_eq!(
            v4_only.device_for("2001:db8::2".parse().expect("address")),
            None
        );
        assert_eq!(
            Outbound::default().device_for("192.0.2.2".parse().expect("address")),
            None
        );
    }

    #[test]
    fn icmp_errors_are_read_with_their_offender() {
        let router = Ipv4Addr::new(172, 16, 1, 2);
        let data = extended_err(libc::SO_EE_ORIGIN_ICMP, 3, 4, 1400, &sockaddr_in(router));
        assert_eq!(
            parse_extended_err(&data, 12, false),
            Some(IcmpReport {
                v6: false,
                icmp_type: 3,
                code: 4,
                info: 1400,
                offender: Some(IpAddr::V4(router)),
                len: 12,
            })
        );
        let router6: Ipv6Addr = "fd01:1::2".parse().unwrap();
        let data = extended_err(libc::SO_EE_ORIGIN_ICMP6, 3, 0, 0, &sockaddr_in6(router6));
        let report = parse_extended_err(&data, 5, true).expect("an ICMPv6 error");
        assert_eq!(report.offender, Some(IpAddr::V6(router6)));
        assert_eq!((report.icmp_type, report.code), (3, 0));
    }

    #[test]
    fn local_errors_and_unknown_offenders_are_told_apart() {
        let local = extended_err(libc::SO_EE_ORIGIN_LOCAL, 0, 0, 1500, &[0; 16]);
        assert_eq!(
            parse_extended_err(&local, 0, false),
            None,
            "not an ICMP error"
        );
        let unspec = extended_err(libc::SO_EE_ORIGIN_ICMP, 11, 0, 0, &[0; 16]);
        let report = parse_extended_err(&unspec, 0, false).expect("an ICMP error");
        assert_eq!(report.offender, None, "AF_UNSPEC: no offender");
        assert_eq!(parse_extended_err(&[0; 8], 0, false), None, "truncated");
    }
}

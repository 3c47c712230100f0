//! `HostIo`: everything the stack asks of the host, as plain calls.
//!
//! The stack never owns a socket. It names each host socket by the [`FlowId`] of the flow
//! that needs it; the host keeps the real socket and reports readiness back through
//! [`crate::Stack::handle_host_event`] with the same id. All calls are non-blocking:
//! "not now" is [`HostError::WouldBlock`], after which the host must report the socket
//! readable/writable again once it is (edge-triggered readiness, as mio gives it).

use core::fmt;
use core::net::{IpAddr, SocketAddr};

/// Names one flow of the stack and, with it, the one host socket that flow owns.
/// Ids are reused only with a new generation, so a late event for a closed flow is ignored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    pub index: u32,
    pub generation: u32,
}

impl FlowId {
    /// Packs the id into one integer, e.g. a mio `Token`.
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    pub fn from_u64(value: u64) -> FlowId {
        FlowId {
            index: value as u32,
            generation: (value >> 32) as u32,
        }
    }
}

impl fmt::Debug for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flow#{}.{}", self.index, self.generation)
    }
}

/// What went wrong on the host, reduced to what the stack turns into network behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// EAGAIN: try again after the next readiness event.
    #[error("would block")]
    WouldBlock,
    #[error("connection refused")]
    ConnectionRefused,
    #[error("connection reset")]
    ConnectionReset,
    #[error("network unreachable")]
    NetworkUnreachable,
    #[error("host unreachable")]
    HostUnreachable,
    #[error("timed out")]
    TimedOut,
    /// The host forbids this (e.g. ping sockets outside `ping_group_range`).
    #[error("permission denied")]
    PermissionDenied,
    /// Out of file descriptors, ports or memory; the flow is refused.
    #[error("host resources exhausted")]
    Exhausted,
    /// Any other errno, kept for the log.
    #[error("os error {0}")]
    Other(i32),
}

pub type HostResult<T> = Result<T, HostError>;

/// How a flow's host socket is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// Orderly close (FIN after any queued data).
    Graceful,
    /// Abortive close: the host peer sees a reset (SO_LINGER 0).
    Abort,
}

/// Which source address a new host socket takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceAddr {
    /// `--outbound-addr` / `--outbound-addr6` when given, whatever the destination (host
    /// loopback included, as slirp4netns does); else the kernel's choice.
    Outbound,
    /// Always the kernel's choice: the DNS forwarder's queries to a resolver on host
    /// loopback (a local stub resolver such as 127.0.0.53 answers only local clients, so a
    /// NIC address as source would break DNS).
    Kernel,
}

/// One datagram read from a flow's UDP or ping socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Its length in the caller's buffer (the rest of a longer one is discarded, as recv(2)
    /// does).
    pub len: usize,
    /// The host knows no other datagram is queued behind this one: the flow is drained
    /// until its next readable event, and the stack spares the read that would only say
    /// `WouldBlock` (one system call of every DNS-like round trip). `false` when the host
    /// cannot tell.
    pub last: bool,
}

/// Readiness of one flow's host socket, as the event loop saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostEvent {
    pub flow: FlowId,
    pub readable: bool,
    pub writable: bool,
    /// Error or hang-up reported by the poller; the stack asks `take_error` for details.
    pub error: bool,
    /// The peer shut down its sending side (EPOLLRDHUP) or the socket hung up: EOF may
    /// follow the data queued, and no later event will announce it. Until this is seen,
    /// a short read of a TCP socket ends its reading (an empty receive queue; the
    /// edge-triggered poller reports the next arrival), which spares the read that would
    /// only say `WouldBlock`.
    pub read_closed: bool,
}

/// An ICMP error the host kernel queued on a flow's UDP or ping socket (IP_RECVERR /
/// IPV6_RECVERR): a router on the path, or the remote itself, refused a datagram the flow
/// sent. The stack relays it to the guest (see `nat::icmp_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpReport {
    /// ICMPv6 (an IPv6 socket) rather than ICMP.
    pub v6: bool,
    pub icmp_type: u8,
    pub code: u8,
    /// The kernel's `ee_info`: the next-hop MTU of "fragmentation needed" (ICMP) or
    /// "packet too big" (ICMPv6); 0 otherwise.
    pub info: u32,
    /// Who sent the error (SO_EE_OFFENDER), if the kernel says.
    pub offender: Option<IpAddr>,
    /// How many bytes of the quoted datagram were written to the caller's buffer: for a
    /// UDP socket what followed the quoted UDP header, for a ping socket the quoted ICMP
    /// message from its header on (with the host socket's identifier), as Linux returns them.
    pub len: usize,
}

/// The host side of every flow. Implemented by `src/host.rs` with real sockets and by
/// `testing::SimHost` in memory (the test kit, behind the `testing` feature).
pub trait HostIo {
    /// Start a non-blocking TCP connect to `remote`. Completion is reported as a writable
    /// (or error) event, after which the stack calls [`HostIo::take_error`].
    fn tcp_connect(
        &mut self,
        flow: FlowId,
        remote: SocketAddr,
        source: SourceAddr,
    ) -> HostResult<()>;
    /// Read stream bytes; `Ok(0)` means the peer closed its sending side (EOF).
    fn tcp_recv(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<usize>;
    /// Write stream bytes; may accept fewer than offered.
    fn tcp_send(&mut self, flow: FlowId, data: &[u8]) -> HostResult<usize>;
    /// Half-close: send FIN to the host peer, keep receiving.
    fn tcp_shutdown_write(&mut self, flow: FlowId);
    /// The socket's pending error (SO_ERROR), if any. `None` after a connect means success.
    fn take_error(&mut self, flow: FlowId) -> Option<HostError>;

    /// Open a UDP socket connected to `remote` (one per guest 4-tuple).
    fn udp_open(&mut self, flow: FlowId, remote: SocketAddr, source: SourceAddr) -> HostResult<()>;
    /// Point the flow's UDP socket at another remote (the DNS forwarder's fallback to the
    /// next nameserver). The host may replace the socket; datagrams not read yet are lost.
    fn udp_reconnect(
        &mut self,
        flow: FlowId,
        remote: SocketAddr,
        source: SourceAddr,
    ) -> HostResult<()>;
    /// Send one datagram with the guest's TTL / hop limit (so traceroute works through
    /// us); the host changes the socket's setting only when it differs from the last.
    fn udp_send(&mut self, flow: FlowId, data: &[u8], hop_limit: u8) -> HostResult<()>;
    /// Receive one datagram's payload.
    fn udp_recv(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<Datagram>;

    /// Open an unprivileged ping socket (SOCK_DGRAM/IPPROTO_ICMP[V6]) towards `remote`.
    fn ping_open(&mut self, flow: FlowId, remote: IpAddr) -> HostResult<()>;
    /// Send one ICMP echo request message (header + payload); the host kernel
    /// replaces the identifier with the socket's own.
    fn ping_send(&mut self, flow: FlowId, message: &[u8], hop_limit: u8) -> HostResult<()>;
    /// Receive one ICMP message (an echo reply, header + payload).
    fn ping_recv(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<Datagram>;

    /// Take the oldest ICMP error queued on the flow's UDP or ping socket, its quoted datagram
    /// copied into `buf` (truncated to it); `Ok(None)` when none is queued. Errors of other
    /// origins (the host's own, e.g. a local EMSGSIZE) are skipped. Taking the last one
    /// clears the socket's pending error (SO_ERROR) it had set, as Linux does. A host that
    /// does not ask for ICMP errors has none.
    fn recv_icmp_error(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<Option<IcmpReport>> {
        let _ = (flow, buf);
        Ok(None)
    }

    /// Close and forget the flow's host socket. Idempotent.
    fn close(&mut self, flow: FlowId, mode: CloseMode);

    /// Port forwards (`add_hostfwd`): a listening TCP socket on `addr`, named by the
    /// forward's id; readiness arrives through [`crate::Stack::handle_forward_event`].
    fn tcp_listen(&mut self, forward: u64, addr: SocketAddr) -> HostResult<()>;
    /// Accept one pending connection of a TCP forward as the host socket of `flow`;
    /// returns the client's address.
    fn tcp_accept(&mut self, forward: u64, flow: FlowId) -> HostResult<SocketAddr>;
    /// A UDP socket bound to `addr` for a UDP forward.
    fn udp_bind(&mut self, forward: u64, addr: SocketAddr) -> HostResult<()>;
    /// Receive one datagram on a UDP forward's socket, with its sender.
    fn udp_recv_from(&mut self, forward: u64, buf: &mut [u8]) -> HostResult<(usize, SocketAddr)>;
    /// Send a datagram from a UDP forward's socket to `peer`.
    fn udp_send_to(&mut self, forward: u64, peer: SocketAddr, data: &[u8]) -> HostResult<()>;
    /// Stop listening for a forward. Connections already accepted are not affected.
    fn forward_close(&mut self, forward: u64);
}

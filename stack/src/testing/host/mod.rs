//! The in-memory host: [`SimHost`], its sockets and forwards, and the API a test plays the
//! host peers with and inspects what the stack did; the [`HostIo`](crate::io::HostIo) side is in
//! `io.rs`.

use crate::io::{
    CloseMode, Datagram, FlowId, HostError, HostEvent, HostResult, IcmpReport, SourceAddr,
};
use core::net::{IpAddr, SocketAddr};
use io::icmp_errno;
use std::collections::{HashMap, VecDeque};

mod io;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Tcp,
    Udp,
    Ping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketState {
    /// `tcp_connect` returned; the host has not reported the outcome yet.
    Connecting,
    /// A connected TCP socket, or an open UDP/ping socket.
    Connected,
    /// The TCP connect failed with this error.
    Failed(HostError),
    /// The host peer reset the connection.
    Reset,
    /// The stack closed the socket; kept so tests can inspect what happened.
    Closed { mode: CloseMode },
}

/// One simulated host socket and everything that went through it.
#[derive(Debug, Clone)]
pub struct SimSocket {
    pub kind: SocketKind,
    /// The address the stack asked for (port 0 for ping sockets).
    pub remote: SocketAddr,
    pub state: SocketState,
    /// TCP: bytes the host peer sent that the stack has not read yet.
    pub inbound: VecDeque<u8>,
    /// UDP payloads / ICMP messages waiting for the stack.
    pub inbound_datagrams: VecDeque<Vec<u8>>,
    /// TCP: bytes the stack wrote that the test has not taken yet.
    pub outbound: Vec<u8>,
    /// UDP payloads / ICMP messages the stack sent that the test has not taken yet.
    pub outbound_datagrams: VecDeque<Vec<u8>>,
    /// The host peer closed its sending side (the stack reads EOF after `inbound`).
    pub eof_from_peer: bool,
    /// The stack called `tcp_shutdown_write`.
    pub write_shutdown: bool,
    /// At most this many bytes wait in `outbound`; beyond it `tcp_send` is WouldBlock.
    pub send_window: usize,
    /// `tcp_send` hit WouldBlock since the last writable edge.
    pub send_blocked: bool,
    /// What `take_error` (or the next recv/send) reports, as SO_ERROR does.
    pub pending_error: Option<HostError>,
    /// TCP bytes the stack wrote over the socket's life.
    pub bytes_written: u64,
    /// Ping sockets: the identifier the host kernel puts in place of the guest's.
    pub ping_ident: u16,
    /// The source address the stack asked for (ping sockets: always `Outbound`).
    pub source: SourceAddr,
    /// The TTL / hop limit of each datagram sent, in order (not taken by `udp_sent`).
    pub sent_hop_limits: Vec<u8>,
    /// ICMP errors queued as IP_RECVERR queues them, each with its quoted bytes.
    pub icmp_errors: VecDeque<(IcmpReport, Vec<u8>)>,
}

impl SimSocket {
    fn new(kind: SocketKind, remote: SocketAddr, state: SocketState, window: usize) -> Self {
        SimSocket {
            kind,
            remote,
            state,
            inbound: VecDeque::new(),
            inbound_datagrams: VecDeque::new(),
            outbound: Vec::new(),
            outbound_datagrams: VecDeque::new(),
            eof_from_peer: false,
            write_shutdown: false,
            send_window: window,
            send_blocked: false,
            pending_error: None,
            bytes_written: 0,
            ping_ident: 0,
            source: SourceAddr::Outbound,
            sent_hop_limits: Vec::new(),
            icmp_errors: VecDeque::new(),
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, SocketState::Closed { .. })
    }

    pub fn close_mode(&self) -> Option<CloseMode> {
        match self.state {
            SocketState::Closed { mode } => Some(mode),
            _ => None,
        }
    }

    fn send_room(&self) -> usize {
        self.send_window.saturating_sub(self.outbound.len())
    }
}

/// Every call the stack made, in order, with what the host answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCall {
    TcpConnect {
        flow: FlowId,
        remote: SocketAddr,
        result: HostResult<()>,
    },
    TcpRecv {
        flow: FlowId,
        result: HostResult<usize>,
    },
    TcpSend {
        flow: FlowId,
        offered: usize,
        result: HostResult<usize>,
    },
    TcpShutdownWrite {
        flow: FlowId,
    },
    TakeError {
        flow: FlowId,
        result: Option<HostError>,
    },
    UdpOpen {
        flow: FlowId,
        remote: SocketAddr,
        result: HostResult<()>,
    },
    UdpReconnect {
        flow: FlowId,
        remote: SocketAddr,
    },
    UdpSend {
        flow: FlowId,
        len: usize,
        result: HostResult<()>,
    },
    UdpRecv {
        flow: FlowId,
        result: HostResult<Datagram>,
    },
    PingOpen {
        flow: FlowId,
        remote: IpAddr,
        result: HostResult<()>,
    },
    PingSend {
        flow: FlowId,
        len: usize,
        result: HostResult<()>,
    },
    PingRecv {
        flow: FlowId,
        result: HostResult<Datagram>,
    },
    Close {
        flow: FlowId,
        mode: CloseMode,
    },
}

/// A simulated port-forward listener (TCP) or bound socket (UDP).
#[derive(Debug, Clone, Default)]
pub struct SimForward {
    pub udp: bool,
    pub addr: Option<SocketAddr>,
    /// TCP: clients waiting to be accepted.
    pub pending: VecDeque<SocketAddr>,
    /// UDP: datagrams from clients waiting for the stack.
    pub inbound: VecDeque<(SocketAddr, Vec<u8>)>,
    /// UDP: datagrams the stack sent to clients.
    pub sent: Vec<(SocketAddr, Vec<u8>)>,
    pub closed: bool,
}

/// An in-memory [`HostIo`](crate::io::HostIo). The stack drives it through the trait; the test plays the
/// host peers through the inherent methods, each of which returns the [`HostEvent`] a
/// real edge-triggered poller would report for it (pass it to
/// [`crate::Stack::handle_host_event`], or let [`crate::testing::Scenario`] do it).
///
/// Semantics follow Linux sockets where the stack could notice the difference: a
/// pending error is reported once, by `take_error` or by the next recv/send; recv after
/// the peer's EOF or reset is `Ok(0)`; a connect in progress reads and writes
/// WouldBlock. Calls the contract forbids (any call but `close` on a closed or unknown
/// flow, opening a flow id twice, sending after `tcp_shutdown_write`, a recv into an
/// empty buffer) panic.
#[derive(Debug)]
pub struct SimHost {
    forwards: HashMap<u64, SimForward>,
    listen_failures: VecDeque<HostError>,
    accept_failures: VecDeque<HostError>,
    sockets: HashMap<FlowId, SimSocket>,
    calls: Vec<HostCall>,
    open_failures: VecDeque<HostError>,
    ping_allowed: bool,
    default_send_window: usize,
    next_ping_ident: u16,
}

impl Default for SimHost {
    fn default() -> Self {
        SimHost {
            forwards: HashMap::new(),
            listen_failures: VecDeque::new(),
            accept_failures: VecDeque::new(),
            sockets: HashMap::new(),
            calls: Vec::new(),
            open_failures: VecDeque::new(),
            ping_allowed: true,
            default_send_window: usize::MAX,
            next_ping_ident: 0xa000,
        }
    }
}

/// What the poller reports for a socket that has an error: Linux sets EPOLLERR and
/// EPOLLHUP, and mio reports those as readable and writable as well.
fn error_event(flow: FlowId) -> HostEvent {
    HostEvent {
        flow,
        readable: true,
        writable: true,
        error: true,
        read_closed: true,
    }
}

fn readable_event(flow: FlowId) -> HostEvent {
    HostEvent {
        flow,
        readable: true,
        writable: false,
        error: false,
        read_closed: false,
    }
}

fn writable_event(flow: FlowId) -> HostEvent {
    HostEvent {
        flow,
        readable: false,
        writable: true,
        error: false,
        read_closed: false,
    }
}

impl SimHost {
    pub fn new() -> SimHost {
        SimHost::default()
    }

    // ---- scripting the host ----

    /// The next open (`tcp_connect`, `udp_open` or `ping_open`) fails with `error`
    /// synchronously. Queued: calling it twice fails the next two opens.
    pub fn fail_next_open(&mut self, error: HostError) {
        self.open_failures.push_back(error);
    }

    /// Whether `ping_open` succeeds; when not, it fails with PermissionDenied, as on a
    /// host whose `net.ipv4.ping_group_range` excludes us.
    pub fn set_ping_allowed(&mut self, allowed: bool) {
        self.ping_allowed = allowed;
    }

    /// Send buffer size of sockets opened from now on (default: unbounded).
    pub fn set_default_send_window(&mut self, bytes: usize) {
        self.default_send_window = bytes;
    }

    /// Resize one socket's send buffer. Returns the writable edge if the stack was
    /// blocked and now has room.
    pub fn set_send_window(&mut self, flow: FlowId, bytes: usize) -> Option<HostEvent> {
        self.expect_mut(flow).send_window = bytes;
        self.writable_edge(flow)
    }

    /// The host connect succeeded.
    pub fn complete_connect(&mut self, flow: FlowId) -> HostEvent {
        let socket = self.expect_connecting(flow, "complete_connect");
        socket.state = SocketState::Connected;
        socket.send_blocked = false;
        writable_event(flow)
    }

    /// The host connect failed (asynchronously) with `error`.
    pub fn fail_connect(&mut self, flow: FlowId, error: HostError) -> HostEvent {
        let socket = self.expect_connecting(flow, "fail_connect");
        socket.state = SocketState::Failed(error);
        socket.pending_error = Some(error);
        error_event(flow)
    }

    /// The host peer sends stream bytes.
    pub fn peer_send(&mut self, flow: FlowId, data: &[u8]) -> HostEvent {
        let socket = self.expect_tcp_peer(flow, "peer_send");
        assert!(
            !socket.eof_from_peer,
            "test bug: peer_send on {flow:?} after peer_close"
        );
        socket.inbound.extend(data);
        readable_event(flow)
    }

    /// The host peer closes its sending side (the stack will read EOF).
    pub fn peer_close(&mut self, flow: FlowId) -> HostEvent {
        self.expect_tcp_peer(flow, "peer_close").eof_from_peer = true;
        // Linux reports EPOLLIN | EPOLLRDHUP for a FIN (mio: readable, read-closed).
        HostEvent {
            read_closed: true,
            ..readable_event(flow)
        }
    }

    /// The host peer resets the connection; unread inbound bytes are lost.
    pub fn peer_reset(&mut self, flow: FlowId) -> HostEvent {
        let socket = self.expect_tcp_peer(flow, "peer_reset");
        socket.state = SocketState::Reset;
        socket.inbound.clear();
        socket.pending_error = Some(HostError::ConnectionReset);
        error_event(flow)
    }

    /// Any socket gets an asynchronous error (e.g. ECONNREFUSED on UDP after an ICMP
    /// port unreachable).
    pub fn set_error(&mut self, flow: FlowId, error: HostError) -> HostEvent {
        self.expect_mut(flow).pending_error = Some(error);
        error_event(flow)
    }

    /// The network answers a datagram of the flow's UDP or ping socket with an ICMP error,
    /// as Linux reports it with IP_RECVERR: queued with `quoted` (for UDP what followed
    /// the UDP header, for ping the echo request with the socket's identifier), and the
    /// socket's pending error set to its errno until the queue is read.
    pub fn icmp_error(&mut self, flow: FlowId, report: IcmpReport, quoted: &[u8]) -> HostEvent {
        let socket = self.expect_datagram_socket(flow, "test bug: icmp_error");
        socket.pending_error = Some(icmp_errno(&report));
        let report = IcmpReport {
            len: quoted.len(),
            ..report
        };
        socket.icmp_errors.push_back((report, quoted.to_vec()));
        error_event(flow)
    }

    /// A UDP datagram (payload) or an ICMP message (header + payload) arrives on the
    /// flow's socket.
    pub fn deliver_datagram(&mut self, flow: FlowId, data: &[u8]) -> HostEvent {
        let socket = self.expect_datagram_socket(flow, "test bug: deliver_datagram");
        socket.inbound_datagrams.push_back(data.to_vec());
        readable_event(flow)
    }

    /// The pinged host answers: an echo reply as the kernel hands it to a ping socket
    /// of the socket's family, carrying the socket's own identifier (not the guest's).
    pub fn ping_reply(&mut self, flow: FlowId, seq_no: u16, payload: &[u8]) -> HostEvent {
        let socket = self.expect_mut(flow);
        let version = match socket.remote {
            SocketAddr::V4(_) => smoltcp::wire::IpVersion::Ipv4,
            SocketAddr::V6(_) => smoltcp::wire::IpVersion::Ipv6,
        };
        let ident = socket.ping_ident;
        let message = super::frames::echo_message(version, true, ident, seq_no, payload);
        self.deliver_datagram(flow, &message)
    }

    /// Takes the stream bytes the stack wrote to the host socket so far. Frees send
    /// buffer room; see [`SimHost::writable_edge`].
    pub fn take_sent(&mut self, flow: FlowId) -> Vec<u8> {
        std::mem::take(&mut self.expect_mut(flow).outbound)
    }

    /// If the stack hit WouldBlock on send and the socket has room now, the writable
    /// edge the poller reports (once).
    pub fn writable_edge(&mut self, flow: FlowId) -> Option<HostEvent> {
        let socket = self.expect_mut(flow);
        let ready =
            socket.send_blocked && socket.state == SocketState::Connected && socket.send_room() > 0;
        if ready {
            socket.send_blocked = false;
        }
        ready.then(|| writable_event(flow))
    }

    /// Takes the UDP payloads the stack sent on the flow so far.
    pub fn udp_sent(&mut self, flow: FlowId) -> Vec<Vec<u8>> {
        self.take_datagrams(flow, SocketKind::Udp)
    }

    /// Takes the ICMP messages the stack sent on the flow's ping socket so far.
    pub fn ping_sent(&mut self, flow: FlowId) -> Vec<Vec<u8>> {
        self.take_datagrams(flow, SocketKind::Ping)
    }

    fn take_datagrams(&mut self, flow: FlowId, kind: SocketKind) -> Vec<Vec<u8>> {
        let socket = self.expect_mut(flow);
        assert_eq!(socket.kind, kind, "{flow:?} is not a {kind:?} socket");
        socket.outbound_datagrams.drain(..).collect()
    }

    // ---- port forwards ----

    /// The next `tcp_listen`/`udp_bind` fails with `error` (e.g. the port is taken).
    pub fn fail_next_listen(&mut self, error: HostError) {
        self.listen_failures.push_back(error);
    }

    /// The next `tcp_accept` fails with `error` and leaves the client waiting in the
    /// backlog, as accept(2) does on EMFILE. Queued like `fail_next_open`.
    pub fn fail_next_accept(&mut self, error: HostError) {
        self.accept_failures.push_back(error);
    }

    pub fn forward(&self, forward: u64) -> Option<&SimForward> {
        self.forwards.get(&forward)
    }

    /// A host client connects to a TCP forward; deliver the event with
    /// `Stack::handle_forward_event`.
    pub fn client_connects(&mut self, forward: u64, client: SocketAddr) {
        self.live_forward(forward).pending.push_back(client);
    }

    /// A host client sends a datagram to a UDP forward.
    pub fn client_sends(&mut self, forward: u64, client: SocketAddr, payload: &[u8]) {
        self.live_forward(forward)
            .inbound
            .push_back((client, payload.to_vec()));
    }

    /// Takes the datagrams the stack sent from a UDP forward's socket.
    pub fn forward_sent(&mut self, forward: u64) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.live_forward(forward).sent)
    }

    fn live_forward(&mut self, forward: u64) -> &mut SimForward {
        match self.forwards.get_mut(&forward) {
            Some(fwd) if !fwd.closed => fwd,
            _ => panic!("test bug: forward {forward} is not open"),
        }
    }

    // ---- inspecting what happened ----

    /// What `pick` takes from each call it recognizes, in call order.
    fn calls_of<T>(&self, pick: impl Fn(&HostCall) -> Option<T>) -> Vec<T> {
        self.calls.iter().filter_map(pick).collect()
    }

    pub fn calls(&self) -> &[HostCall] {
        &self.calls
    }

    /// Every `tcp_connect` call (successful or not): flow and remote address.
    pub fn connects(&self) -> Vec<(FlowId, SocketAddr)> {
        self.calls_of(|call| match *call {
            HostCall::TcpConnect { flow, remote, .. } => Some((flow, remote)),
            _ => None,
        })
    }

    pub fn last_connect(&self) -> Option<(FlowId, SocketAddr)> {
        self.connects().last().copied()
    }

    /// Every `udp_open` call: flow and remote address.
    pub fn udp_opens(&self) -> Vec<(FlowId, SocketAddr)> {
        self.calls_of(|call| match *call {
            HostCall::UdpOpen { flow, remote, .. } => Some((flow, remote)),
            _ => None,
        })
    }

    /// Every `udp_reconnect` call: flow and new remote address.
    pub fn udp_reconnects(&self) -> Vec<(FlowId, SocketAddr)> {
        self.calls_of(|call| match *call {
            HostCall::UdpReconnect { flow, remote } => Some((flow, remote)),
            _ => None,
        })
    }

    /// Every `ping_open` call: flow and remote address.
    pub fn ping_opens(&self) -> Vec<(FlowId, IpAddr)> {
        self.calls_of(|call| match *call {
            HostCall::PingOpen { flow, remote, .. } => Some((flow, remote)),
            _ => None,
        })
    }

    /// Every `close` call, including repeated ones.
    pub fn closes(&self) -> Vec<(FlowId, CloseMode)> {
        self.calls_of(|call| match *call {
            HostCall::Close { flow, mode } => Some((flow, mode)),
            _ => None,
        })
    }

    /// Whether the stack called `tcp_shutdown_write` on the flow.
    pub fn shutdown_write_called(&self, flow: FlowId) -> bool {
        self.socket(flow).is_some_and(|s| s.write_shutdown)
    }

    pub fn socket(&self, flow: FlowId) -> Option<&SimSocket> {
        self.sockets.get(&flow)
    }

    pub fn sockets(&self) -> impl Iterator<Item = (FlowId, &SimSocket)> {
        self.sockets.iter().map(|(flow, socket)| (*flow, socket))
    }

    /// Sockets opened and not closed by the stack.
    pub fn open_count(&self) -> usize {
        self.sockets.values().filter(|s| !s.is_closed()).count()
    }

    /// How the stack closed the flow's socket, if it did.
    pub fn close_mode(&self, flow: FlowId) -> Option<CloseMode> {
        self.socket(flow).and_then(SimSocket::close_mode)
    }

    /// Level-triggered readiness of a socket right now (for tests that want to poke the
    /// stack without a state change).
    pub fn event(&self, flow: FlowId) -> HostEvent {
        let socket = self
            .socket(flow)
            .unwrap_or_else(|| panic!("test bug: event for unknown {flow:?}"));
        let connecting = socket.state == SocketState::Connecting;
        HostEvent {
            flow,
            readable: !connecting
                && (!socket.inbound.is_empty()
                    || !socket.inbound_datagrams.is_empty()
                    || socket.eof_from_peer
                    || socket.pending_error.is_some()),
            writable: socket.state == SocketState::Connected && socket.send_room() > 0,
            error: socket.pending_error.is_some() || !socket.icmp_errors.is_empty(),
            read_closed: !connecting
                && (socket.eof_from_peer || socket.state != SocketState::Connected),
        }
    }

    // ---- internals ----

    fn expect_mut(&mut self, flow: FlowId) -> &mut SimSocket {
        self.sockets
            .get_mut(&flow)
            .unwrap_or_else(|| panic!("test bug: no host socket for {flow:?}"))
    }

    /// The flow's socket, which `fits` must accept: else a panic that names `who` and
    /// the socket's kind and state.
    fn expect_socket(
        &mut self,
        flow: FlowId,
        who: &str,
        fits: impl Fn(&SimSocket) -> bool,
    ) -> &mut SimSocket {
        let socket = self.expect_mut(flow);
        assert!(
            fits(socket),
            "{who} on {flow:?}, a {:?} socket in state {:?}",
            socket.kind,
            socket.state
        );
        socket
    }

    fn expect_connecting(&mut self, flow: FlowId, what: &str) -> &mut SimSocket {
        self.expect_socket(flow, &format!("test bug: {what}"), |socket| {
            socket.kind == SocketKind::Tcp && socket.state == SocketState::Connecting
        })
    }

    fn expect_tcp_peer(&mut self, flow: FlowId, what: &str) -> &mut SimSocket {
        self.expect_socket(flow, &format!("test bug: {what}"), |socket| {
            socket.kind == SocketKind::Tcp && socket.state == SocketState::Connected
        })
    }

    /// An open UDP or ping socket (where datagrams and ICMP errors arrive).
    fn expect_datagram_socket(&mut self, flow: FlowId, who: &str) -> &mut SimSocket {
        self.expect_socket(flow, who, |socket| {
            matches!(socket.kind, SocketKind::Udp | SocketKind::Ping) && !socket.is_closed()
        })
    }
}

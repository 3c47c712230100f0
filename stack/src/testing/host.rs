//! The in-memory host.

use crate::io::{
    CloseMode, Datagram, FlowId, HostError, HostEvent, HostIo, HostResult, IcmpReport, SourceAddr,
};
use core::net::{IpAddr, SocketAddr};
use std::collections::{HashMap, VecDeque};

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

/// An in-memory [`HostIo`]. The stack drives it through the trait; the test plays the
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
        let socket = self.expect_mut(flow);
        assert!(
            matches!(socket.kind, SocketKind::Udp | SocketKind::Ping) && !socket.is_closed(),
            "test bug: icmp_error on {flow:?}, a {:?} socket in state {:?}",
            socket.kind,
            socket.state
        );
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
        let socket = self.expect_mut(flow);
        assert!(
            matches!(socket.kind, SocketKind::Udp | SocketKind::Ping) && !socket.is_closed(),
            "test bug: deliver_datagram on {flow:?}, a {:?} socket in state {:?}",
            socket.kind,
            socket.state
        );
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

    fn listen(&mut self, forward: u64, addr: SocketAddr, udp: bool) -> HostResult<()> {
        if let Some(error) = self.listen_failures.pop_front() {
            return Err(error);
        }
        assert!(
            !self.forwards.contains_key(&forward),
            "stack reused forward id {forward}"
        );
        self.forwards.insert(
            forward,
            SimForward {
                udp,
                addr: Some(addr),
                ..SimForward::default()
            },
        );
        Ok(())
    }

    // ---- inspecting what happened ----

    pub fn calls(&self) -> &[HostCall] {
        &self.calls
    }

    /// Every `tcp_connect` call (successful or not): flow and remote address.
    pub fn connects(&self) -> Vec<(FlowId, SocketAddr)> {
        self.calls
            .iter()
            .filter_map(|call| match call {
                HostCall::TcpConnect { flow, remote, .. } => Some((*flow, *remote)),
                _ => None,
            })
            .collect()
    }

    pub fn last_connect(&self) -> Option<(FlowId, SocketAddr)> {
        self.connects().last().copied()
    }

    /// Every `udp_open` call: flow and remote address.
    pub fn udp_opens(&self) -> Vec<(FlowId, SocketAddr)> {
        self.calls
            .iter()
            .filter_map(|call| match call {
                HostCall::UdpOpen { flow, remote, .. } => Some((*flow, *remote)),
                _ => None,
            })
            .collect()
    }

    /// Every `udp_reconnect` call: flow and new remote address.
    pub fn udp_reconnects(&self) -> Vec<(FlowId, SocketAddr)> {
        self.calls
            .iter()
            .filter_map(|call| match call {
                HostCall::UdpReconnect { flow, remote } => Some((*flow, *remote)),
                _ => None,
            })
            .collect()
    }

    /// Every `ping_open` call: flow and remote address.
    pub fn ping_opens(&self) -> Vec<(FlowId, IpAddr)> {
        self.calls
            .iter()
            .filter_map(|call| match call {
                HostCall::PingOpen { flow, remote, .. } => Some((*flow, *remote)),
                _ => None,
            })
            .collect()
    }

    /// Every `close` call, including repeated ones.
    pub fn closes(&self) -> Vec<(FlowId, CloseMode)> {
        self.calls
            .iter()
            .filter_map(|call| match call {
                HostCall::Close { flow, mode } => Some((*flow, *mode)),
                _ => None,
            })
            .collect()
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

    fn expect_connecting(&mut self, flow: FlowId, what: &str) -> &mut SimSocket {
        let socket = self.expect_mut(flow);
        assert!(
            socket.kind == SocketKind::Tcp && socket.state == SocketState::Connecting,
            "test bug: {what} on {flow:?}, a {:?} socket in state {:?}",
            socket.kind,
            socket.state
        );
        socket
    }

    fn expect_tcp_peer(&mut self, flow: FlowId, what: &str) -> &mut SimSocket {
        let socket = self.expect_mut(flow);
        assert!(
            socket.kind == SocketKind::Tcp && socket.state == SocketState::Connected,
            "test bug: {what} on {flow:?}, a {:?} socket in state {:?}",
            socket.kind,
            socket.state
        );
        socket
    }

    /// The socket a stack call names; panics on calls the contract forbids.
    fn live(&mut self, flow: FlowId, kind: SocketKind, call: &str) -> &mut SimSocket {
        let Some(socket) = self.sockets.get_mut(&flow) else {
            panic!("stack called {call} on {flow:?}, which has no host socket");
        };
        assert!(
            !socket.is_closed(),
            "stack called {call} on {flow:?} after closing it"
        );
        assert_eq!(
            socket.kind, kind,
            "stack called {call} on {flow:?}, a {:?} socket",
            socket.kind
        );
        socket
    }

    fn open(
        &mut self,
        flow: FlowId,
        kind: SocketKind,
        remote: SocketAddr,
        state: SocketState,
    ) -> HostResult<()> {
        if let Some(existing) = self.sockets.get(&flow) {
            panic!(
                "stack opened {flow:?} again (a {:?} socket in state {:?}); \
                 flow ids must be reused only with a new generation",
                existing.kind, existing.state
            );
        }
        if let Some(error) = self.open_failures.pop_front() {
            return Err(error);
        }
        if kind == SocketKind::Ping && !self.ping_allowed {
            return Err(HostError::PermissionDenied);
        }
        let mut socket = SimSocket::new(kind, remote, state, self.default_send_window);
        if kind == SocketKind::Ping {
            socket.ping_ident = self.next_ping_ident;
            self.next_ping_ident = self.next_ping_ident.wrapping_add(1);
        }
        self.sockets.insert(flow, socket);
        Ok(())
    }

    fn recv_datagram(
        &mut self,
        flow: FlowId,
        kind: SocketKind,
        call: &str,
        buf: &mut [u8],
    ) -> HostResult<Datagram> {
        let socket = self.live(flow, kind, call);
        if let Some(error) = socket.pending_error.take() {
            return Err(error);
        }
        let datagram = socket
            .inbound_datagrams
            .pop_front()
            .ok_or(HostError::WouldBlock)?;
        // Like recv(2) on a datagram socket: the rest of a long datagram is discarded.
        let n = datagram.len().min(buf.len());
        buf[..n].copy_from_slice(&datagram[..n]);
        // The real host knows this only when the kernel queue ran dry in the same call
        // (recvmmsg); the simulation always knows.
        Ok(Datagram {
            len: n,
            last: socket.inbound_datagrams.is_empty(),
        })
    }

    fn send_datagram(
        &mut self,
        flow: FlowId,
        kind: SocketKind,
        call: &str,
        data: &[u8],
    ) -> HostResult<()> {
        let socket = self.live(flow, kind, call);
        if let Some(error) = socket.pending_error.take() {
            return Err(error);
        }
        socket.outbound_datagrams.push_back(data.to_vec());
        Ok(())
    }
}

/// The errno Linux sets on a socket for an ICMP error (`icmp_err_convert`,
/// `icmpv6_err_convert`), as the stack sees it.
fn icmp_errno(report: &IcmpReport) -> HostError {
    match (report.v6, report.icmp_type, report.code) {
        (false, 3, 3) | (true, 1, 4) => HostError::ConnectionRefused,
        (false, 3, 0) | (true, 1, 0) => HostError::NetworkUnreachable,
        (false, 3, 4) | (true, 2, _) => HostError::Other(90), // EMSGSIZE
        _ => HostError::HostUnreachable,
    }
}

impl HostIo for SimHost {
    fn recv_icmp_error(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<Option<IcmpReport>> {
        let socket = self.expect_mut(flow);
        assert!(
            matches!(socket.kind, SocketKind::Udp | SocketKind::Ping) && !socket.is_closed(),
            "stack called recv_icmp_error on {flow:?}, a {:?} socket in state {:?}",
            socket.kind,
            socket.state
        );
        let Some((report, quoted)) = socket.icmp_errors.pop_front() else {
            return Ok(None);
        };
        // As Linux: the pending error follows the next queued one, or clears.
        socket.pending_error = socket.icmp_errors.front().map(|(next, _)| icmp_errno(next));
        let n = quoted.len().min(buf.len());
        buf[..n].copy_from_slice(&quoted[..n]);
        Ok(Some(IcmpReport { len: n, ..report }))
    }

    fn tcp_connect(
        &mut self,
        flow: FlowId,
        remote: SocketAddr,
        source: SourceAddr,
    ) -> HostResult<()> {
        let result = self.open(flow, SocketKind::Tcp, remote, SocketState::Connecting);
        if let Some(socket) = self.sockets.get_mut(&flow) {
            socket.source = source;
        }
        self.calls.push(HostCall::TcpConnect {
            flow,
            remote,
            result,
        });
        result
    }

    fn tcp_recv(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<usize> {
        assert!(
            !buf.is_empty(),
            "stack called tcp_recv on {flow:?} with an empty buffer (Ok(0) would mean EOF)"
        );
        let socket = self.live(flow, SocketKind::Tcp, "tcp_recv");
        let result = if let Some(error) = socket.pending_error.take() {
            Err(error)
        } else if socket.state == SocketState::Connecting {
            Err(HostError::WouldBlock)
        } else if !socket.inbound.is_empty() {
            let n = socket.inbound.len().min(buf.len());
            for (slot, byte) in buf.iter_mut().zip(socket.inbound.drain(..n)) {
                *slot = byte;
            }
            Ok(n)
        } else if socket.eof_from_peer || socket.state != SocketState::Connected {
            Ok(0)
        } else {
            Err(HostError::WouldBlock)
        };
        self.calls.push(HostCall::TcpRecv { flow, result });
        result
    }

    fn tcp_send(&mut self, flow: FlowId, data: &[u8]) -> HostResult<usize> {
        let socket = self.live(flow, SocketKind::Tcp, "tcp_send");
        assert!(
            !socket.write_shutdown,
            "stack called tcp_send on {flow:?} after tcp_shutdown_write"
        );
        let result = if let Some(error) = socket.pending_error.take() {
            Err(error)
        } else {
            match socket.state {
                SocketState::Connecting => {
                    socket.send_blocked = true;
                    Err(HostError::WouldBlock)
                }
                // Linux says EPIPE once the reset was reported.
                SocketState::Reset | SocketState::Failed(_) => Err(HostError::ConnectionReset),
                _ => {
                    let n = socket.send_room().min(data.len());
                    if n == 0 && !data.is_empty() {
                        socket.send_blocked = true;
                        Err(HostError::WouldBlock)
                    } else {
                        socket.outbound.extend_from_slice(&data[..n]);
                        socket.bytes_written += n as u64;
                        Ok(n)
                    }
                }
            }
        };
        self.calls.push(HostCall::TcpSend {
            flow,
            offered: data.len(),
            result,
        });
        result
    }

    fn tcp_shutdown_write(&mut self, flow: FlowId) {
        self.live(flow, SocketKind::Tcp, "tcp_shutdown_write")
            .write_shutdown = true;
        self.calls.push(HostCall::TcpShutdownWrite { flow });
    }

    fn take_error(&mut self, flow: FlowId) -> Option<HostError> {
        let Some(socket) = self.sockets.get_mut(&flow) else {
            panic!("stack called take_error on {flow:?}, which has no host socket");
        };
        assert!(
            !socket.is_closed(),
            "stack called take_error on {flow:?} after closing it"
        );
        let result = socket.pending_error.take();
        self.calls.push(HostCall::TakeError { flow, result });
        result
    }

    fn udp_open(&mut self, flow: FlowId, remote: SocketAddr, source: SourceAddr) -> HostResult<()> {
        let result = self.open(flow, SocketKind::Udp, remote, SocketState::Connected);
        if let Some(socket) = self.sockets.get_mut(&flow) {
            socket.source = source;
        }
        self.calls.push(HostCall::UdpOpen {
            flow,
            remote,
            result,
        });
        result
    }

    fn udp_reconnect(
        &mut self,
        flow: FlowId,
        remote: SocketAddr,
        source: SourceAddr,
    ) -> HostResult<()> {
        let socket = self.live(flow, SocketKind::Udp, "udp_reconnect");
        // A new socket: what the old one held is gone.
        socket.remote = remote;
        socket.source = source;
        socket.inbound_datagrams.clear();
        socket.pending_error = None;
        self.calls.push(HostCall::UdpReconnect { flow, remote });
        Ok(())
    }

    fn udp_send(&mut self, flow: FlowId, data: &[u8], hop_limit: u8) -> HostResult<()> {
        let result = self.send_datagram(flow, SocketKind::Udp, "udp_send", data);
        if result.is_ok() {
            self.expect_mut(flow).sent_hop_limits.push(hop_limit);
        }
        self.calls.push(HostCall::UdpSend {
            flow,
            len: data.len(),
            result,
        });
        result
    }

    fn udp_recv(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<Datagram> {
        let result = self.recv_datagram(flow, SocketKind::Udp, "udp_recv", buf);
        self.calls.push(HostCall::UdpRecv { flow, result });
        result
    }

    fn ping_open(&mut self, flow: FlowId, remote: IpAddr) -> HostResult<()> {
        let address = SocketAddr::new(remote, 0);
        let result = self.open(flow, SocketKind::Ping, address, SocketState::Connected);
        self.calls.push(HostCall::PingOpen {
            flow,
            remote,
            result,
        });
        result
    }

    fn ping_send(&mut self, flow: FlowId, message: &[u8], hop_limit: u8) -> HostResult<()> {
        let result = self.send_datagram(flow, SocketKind::Ping, "ping_send", message);
        if result.is_ok() {
            self.expect_mut(flow).sent_hop_limits.push(hop_limit);
        }
        self.calls.push(HostCall::PingSend {
            flow,
            len: message.len(),
            result,
        });
        result
    }

    fn ping_recv(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<Datagram> {
        let result = self.recv_datagram(flow, SocketKind::Ping, "ping_recv", buf);
        self.calls.push(HostCall::PingRecv { flow, result });
        result
    }

    fn close(&mut self, flow: FlowId, mode: CloseMode) {
        if let Some(socket) = self.sockets.get_mut(&flow) {
            if !socket.is_closed() {
                socket.state = SocketState::Closed { mode };
            }
        }
        self.calls.push(HostCall::Close { flow, mode });
    }

    fn tcp_listen(&mut self, forward: u64, addr: SocketAddr) -> HostResult<()> {
        self.listen(forward, addr, false)
    }

    fn tcp_accept(&mut self, forward: u64, flow: FlowId) -> HostResult<SocketAddr> {
        if !self.live_forward(forward).pending.is_empty() {
            if let Some(error) = self.accept_failures.pop_front() {
                return Err(error);
            }
        }
        let client = self
            .live_forward(forward)
            .pending
            .pop_front()
            .ok_or(HostError::WouldBlock)?;
        self.open(flow, SocketKind::Tcp, client, SocketState::Connected)?;
        Ok(client)
    }

    fn udp_bind(&mut self, forward: u64, addr: SocketAddr) -> HostResult<()> {
        self.listen(forward, addr, true)
    }

    fn udp_recv_from(&mut self, forward: u64, buf: &mut [u8]) -> HostResult<(usize, SocketAddr)> {
        let (client, payload) = self
            .live_forward(forward)
            .inbound
            .pop_front()
            .ok_or(HostError::WouldBlock)?;
        let n = payload.len().min(buf.len());
        buf[..n].copy_from_slice(&payload[..n]);
        Ok((n, client))
    }

    fn udp_send_to(&mut self, forward: u64, peer: SocketAddr, data: &[u8]) -> HostResult<()> {
        match self.forwards.get_mut(&forward) {
            Some(fwd) if !fwd.closed => {
                fwd.sent.push((peer, data.to_vec()));
                Ok(())
            }
            _ => Err(HostError::ConnectionReset),
        }
    }

    fn forward_close(&mut self, forward: u64) {
        if let Some(fwd) = self.forwards.get_mut(&forward) {
            fwd.closed = true;
        }
    }
}

//! Test support for scenario tests on a virtual clock: an in-memory host ([`SimHost`]),
//! guest-side frame tools ([`Guest`], [`GuestTcp`], [`parse`]) and a harness that plays the
//! event loop ([`Scenario`]).
//!
//! Compiled always (not only under `cfg(test)`) so that `stack/tests/`, benches and fuzz
//! targets can use it. Like the rest of the crate it touches no OS resource.
//!
//! Everything here fails loudly: a frame from the stack with a bad checksum, a host call on
//! a socket the stack already closed, or a stack that asks to be polled forever panics with
//! a message that says which contract was broken.

pub use frames::{
    echo_message, parse, parse_echo_message, try_parse, DhcpMessage, EchoMessage, Guest, GuestTcp,
    ParseError, Parsed, TcpSegment, GUEST_MAC,
};
pub use host::{HostCall, SimHost, SimSocket, SocketKind, SocketState};
pub use scenario::{complete_checksum, Scenario, START};

/// The in-memory host.
pub mod host {
    use crate::io::{
        CloseMode, Datagram, FlowId, HostError, HostEvent, HostIo, HostResult, IcmpReport,
        SourceAddr,
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

        /// The pinged host answers: an echo reply as the kernel hands it to a ping socket,
        /// carrying the socket's own identifier (not the guest's).
        pub fn ping_reply(&mut self, flow: FlowId, seq_no: u16, payload: &[u8]) -> HostEvent {
            let ident = self.expect_mut(flow).ping_ident;
            let message = super::frames::echo_message(true, ident, seq_no, payload);
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
            let ready = socket.send_blocked
                && socket.state == SocketState::Connected
                && socket.send_room() > 0;
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
        fn recv_icmp_error(
            &mut self,
            flow: FlowId,
            buf: &mut [u8],
        ) -> HostResult<Option<IcmpReport>> {
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

        fn udp_open(
            &mut self,
            flow: FlowId,
            remote: SocketAddr,
            source: SourceAddr,
        ) -> HostResult<()> {
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

        fn udp_recv_from(
            &mut self,
            forward: u64,
            buf: &mut [u8],
        ) -> HostResult<(usize, SocketAddr)> {
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
}

/// Guest-side frame builders and parsers, on smoltcp's wire types.
pub mod frames {
    use crate::config::{service_mac, VirtualNetwork};
    use core::fmt;
    use core::net::{Ipv4Addr, SocketAddrV4};
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
        EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Message, Icmpv4Packet, Icmpv4Repr,
        IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpOption, TcpPacket, TcpRepr,
        TcpSeqNumber, UdpPacket, UdpRepr, ETHERNET_HEADER_LEN,
    };

    /// The guest's MAC in scenarios (locally administered, like a tap's random one).
    pub const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);

    const GUEST_TTL: u8 = 64;
    /// What Linux puts in a SYN on Ethernet: MSS 1460, window 64240, window scale 7.
    const SYN_MSS: u16 = 1460;
    const SYN_WINDOW: u16 = 64240;
    const WINDOW_SCALE: u8 = 7;
    /// Window field after the handshake: 2048 << 7 = 256 KiB.
    const WINDOW: u16 = 2048;
    const DHCP_SERVER_PORT: u16 = 67;
    const DHCP_CLIENT_PORT: u16 = 68;
    /// DHCP option 26, the interface MTU, which smoltcp's `DhcpRepr` does not model.
    const DHCP_OPT_INTERFACE_MTU: u8 = 26;

    fn checksums() -> ChecksumCapabilities {
        ChecksumCapabilities::default()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// One TCP segment, owned, with every flag separately (a parsed segment keeps flag
    /// combinations smoltcp's `TcpRepr` cannot express, like FIN|PSH).
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct TcpSegment {
        pub src_port: u16,
        pub dst_port: u16,
        pub seq: u32,
        /// The acknowledgment number, present iff the ACK flag is set.
        pub ack: Option<u32>,
        pub syn: bool,
        pub fin: bool,
        pub rst: bool,
        pub psh: bool,
        /// The raw window field (unscaled).
        pub window: u16,
        pub mss: Option<u16>,
        pub window_scale: Option<u8>,
        pub sack_permitted: bool,
        pub payload: Vec<u8>,
    }

    impl TcpSegment {
        /// Sequence space the segment occupies (SYN and FIN count one each).
        pub fn seq_len(&self) -> u32 {
            self.payload.len() as u32 + u32::from(self.syn) + u32::from(self.fin)
        }

        /// SYN with ACK.
        pub fn is_syn_ack(&self) -> bool {
            self.syn && self.ack.is_some() && !self.rst && !self.fin
        }

        /// Flags as tcpdump prints them, e.g. `S.` or `FP.`.
        pub fn flags(&self) -> String {
            let mut text = String::new();
            for (set, letter) in [
                (self.syn, 'S'),
                (self.fin, 'F'),
                (self.rst, 'R'),
                (self.psh, 'P'),
                (self.ack.is_some(), '.'),
            ] {
                if set {
                    text.push(letter);
                }
            }
            text
        }
    }

    /// A frame the stack sent to the guest, decoded. Every checksum was verified.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Parsed {
        Arp(ArpRepr),
        Tcp {
            ip: Ipv4Repr,
            tcp: TcpSegment,
        },
        Udp {
            src: SocketAddrV4,
            dst: SocketAddrV4,
            payload: Vec<u8>,
        },
        IcmpEcho {
            src: Ipv4Addr,
            dst: Ipv4Addr,
            /// Echo reply (true) or echo request (false).
            reply: bool,
            ident: u16,
            seq_no: u16,
            payload: Vec<u8>,
        },
        IcmpUnreachable {
            src: Ipv4Addr,
            dst: Ipv4Addr,
            code: u8,
            /// The quoted original datagram: its IP header and at least 8 bytes after it.
            original: Vec<u8>,
        },
        /// A DHCP server message (UDP from port 67 to port 68).
        Dhcp {
            src: SocketAddrV4,
            dst: SocketAddrV4,
            message: DhcpMessage,
        },
        /// An IPv4 fragment (MF set or an offset): [`super::fragments::defragment`] puts
        /// a datagram's fragments back together first, as the guest's kernel does.
        Fragment {
            src: Ipv4Addr,
            dst: Ipv4Addr,
            protocol: IpProtocol,
            ident: u16,
            /// In bytes.
            offset: usize,
            more: bool,
            payload: Vec<u8>,
        },
        /// Anything else (IPv6, other ICMP types, other protocols), described.
        Other(String),
    }

    /// A DHCP message from the stack as a client reads it, decoded with smoltcp's
    /// `DhcpRepr` (owned, so that [`Parsed`] can keep it).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DhcpMessage {
        pub message_type: DhcpMessageType,
        pub transaction_id: u32,
        pub client_hardware_address: EthernetAddress,
        pub your_ip: Ipv4Addr,
        pub server_identifier: Option<Ipv4Addr>,
        pub router: Option<Ipv4Addr>,
        pub subnet_mask: Option<Ipv4Addr>,
        pub dns_servers: Option<Vec<Ipv4Addr>>,
        pub lease_duration: Option<u32>,
        /// Option 26, the interface MTU.
        pub mtu: Option<u16>,
        /// Option 119, the domain search list: the data of every such option in order,
        /// concatenated (RFC 3396). None without one.
        pub domain_search: Option<Vec<u8>>,
    }

    impl Parsed {
        pub fn tcp(&self) -> Option<(&Ipv4Repr, &TcpSegment)> {
            match self {
                Parsed::Tcp { ip, tcp } => Some((ip, tcp)),
                _ => None,
            }
        }
    }

    /// Why a frame could not be decoded.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ParseError {
        /// Too short, or a length field pointing past the end.
        Truncated(&'static str),
        BadChecksum(&'static str),
        /// Structurally wrong (bad version, bad header length, fragments...).
        Malformed(&'static str),
    }

    impl fmt::Display for ParseError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                ParseError::Truncated(what) => write!(f, "truncated {what}"),
                ParseError::BadChecksum(what) => write!(f, "bad {what} checksum"),
                ParseError::Malformed(what) => write!(f, "malformed {what}"),
            }
        }
    }

    /// Decodes a frame from the stack; panics (with the frame in hex) if it is not a
    /// well-formed frame with correct checksums.
    pub fn parse(frame: &[u8]) -> Parsed {
        try_parse(frame).unwrap_or_else(|error| {
            panic!("the stack emitted a bad frame ({error}): {}", hex(frame))
        })
    }

    pub fn try_parse(frame: &[u8]) -> Result<Parsed, ParseError> {
        let eth =
            EthernetFrame::new_checked(frame).map_err(|_| ParseError::Truncated("Ethernet"))?;
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                let packet = ArpPacket::new_checked(eth.payload())
                    .map_err(|_| ParseError::Truncated("ARP"))?;
                let repr = ArpRepr::parse(&packet).map_err(|_| ParseError::Malformed("ARP"))?;
                Ok(Parsed::Arp(repr))
            }
            EthernetProtocol::Ipv4 => parse_ipv4(eth.payload()),
            other => Ok(Parsed::Other(format!("ethertype {other}"))),
        }
    }

    fn parse_ipv4(bytes: &[u8]) -> Result<Parsed, ParseError> {
        let packet = Ipv4Packet::new_checked(bytes).map_err(|_| ParseError::Truncated("IPv4"))?;
        if packet.version() != 4 {
            return Err(ParseError::Malformed("IPv4 version"));
        }
        if !packet.verify_checksum() {
            return Err(ParseError::BadChecksum("IPv4"));
        }
        if packet.more_frags() || packet.frag_offset() != 0 {
            if packet.dont_frag() {
                return Err(ParseError::Malformed("IPv4 fragment with DF"));
            }
            if packet.more_frags() && packet.payload().len() % 8 != 0 {
                return Err(ParseError::Malformed("IPv4 fragment length"));
            }
            return Ok(Parsed::Fragment {
                src: packet.src_addr(),
                dst: packet.dst_addr(),
                protocol: packet.next_header(),
                ident: packet.ident(),
                offset: usize::from(packet.frag_offset()),
                more: packet.more_frags(),
                payload: packet.payload().to_vec(),
            });
        }
        let ip =
            Ipv4Repr::parse(&packet, &checksums()).map_err(|_| ParseError::Malformed("IPv4"))?;
        let payload = packet.payload();
        let (src, dst) = (IpAddress::from(ip.src_addr), IpAddress::from(ip.dst_addr));
        match ip.next_header {
            IpProtocol::Tcp => {
                let tcp =
                    TcpPacket::new_checked(payload).map_err(|_| ParseError::Truncated("TCP"))?;
                if !tcp.verify_checksum(&src, &dst) {
                    return Err(ParseError::BadChecksum("TCP"));
                }
                Ok(Parsed::Tcp {
                    ip,
                    tcp: tcp_segment(&tcp)?,
                })
            }
            IpProtocol::Udp => {
                let udp =
                    UdpPacket::new_checked(payload).map_err(|_| ParseError::Truncated("UDP"))?;
                // A zero checksum means "none" on IPv4; smoltcp's check accepts it.
                if !udp.verify_checksum(&src, &dst) {
                    return Err(ParseError::BadChecksum("UDP"));
                }
                let src = SocketAddrV4::new(ip.src_addr, udp.src_port());
                let dst = SocketAddrV4::new(ip.dst_addr, udp.dst_port());
                if (src.port(), dst.port()) == (DHCP_SERVER_PORT, DHCP_CLIENT_PORT) {
                    let message = parse_dhcp(udp.payload())?;
                    return Ok(Parsed::Dhcp { src, dst, message });
                }
                Ok(Parsed::Udp {
                    src,
                    dst,
                    payload: udp.payload().to_vec(),
                })
            }
            IpProtocol::Icmp => parse_icmp(&ip, payload),
            other => Ok(Parsed::Other(format!("IPv4 protocol {other}"))),
        }
    }

    fn tcp_segment(packet: &TcpPacket<&[u8]>) -> Result<TcpSegment, ParseError> {
        let mut segment = TcpSegment {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq: packet.seq_number().0 as u32,
            ack: packet.ack().then(|| packet.ack_number().0 as u32),
            syn: packet.syn(),
            fin: packet.fin(),
            rst: packet.rst(),
            psh: packet.psh(),
            window: packet.window_len(),
            payload: packet.payload().to_vec(),
            ..TcpSegment::default()
        };
        let mut options = packet.options();
        while !options.is_empty() {
            let (rest, option) =
                TcpOption::parse(options).map_err(|_| ParseError::Malformed("TCP options"))?;
            match option {
                TcpOption::EndOfList => break,
                TcpOption::MaxSegmentSize(mss) => segment.mss = Some(mss),
                TcpOption::WindowScale(scale) => segment.window_scale = Some(scale),
                TcpOption::SackPermitted => segment.sack_permitted = true,
                _ => {}
            }
            options = rest;
        }
        Ok(segment)
    }

    fn parse_dhcp(payload: &[u8]) -> Result<DhcpMessage, ParseError> {
        let packet = DhcpPacket::new_checked(payload).map_err(|_| ParseError::Truncated("DHCP"))?;
        let repr = DhcpRepr::parse(&packet).map_err(|_| ParseError::Malformed("DHCP"))?;
        let mtu = match packet
            .options()
            .find(|option| option.kind == DHCP_OPT_INTERFACE_MTU)
        {
            Some(option) => Some(u16::from_be_bytes(
                option
                    .data
                    .try_into()
                    .map_err(|_| ParseError::Malformed("DHCP MTU option"))?,
            )),
            None => None,
        };
        let search: Vec<u8> = packet
            .options()
            .filter(|option| option.kind == 119)
            .flat_map(|option| option.data.iter().copied())
            .collect();
        let has_search = packet.options().any(|option| option.kind == 119);
        Ok(DhcpMessage {
            domain_search: has_search.then_some(search),
            message_type: repr.message_type,
            transaction_id: repr.transaction_id,
            client_hardware_address: repr.client_hardware_address,
            your_ip: repr.your_ip,
            server_identifier: repr.server_identifier,
            router: repr.router,
            subnet_mask: repr.subnet_mask,
            dns_servers: repr.dns_servers.map(|servers| servers.to_vec()),
            lease_duration: repr.lease_duration,
            mtu,
        })
    }

    fn parse_icmp(ip: &Ipv4Repr, payload: &[u8]) -> Result<Parsed, ParseError> {
        let icmp = Icmpv4Packet::new_checked(payload).map_err(|_| ParseError::Truncated("ICMP"))?;
        if !icmp.verify_checksum() {
            return Err(ParseError::BadChecksum("ICMP"));
        }
        let (src, dst) = (ip.src_addr, ip.dst_addr);
        match icmp.msg_type() {
            Icmpv4Message::EchoRequest | Icmpv4Message::EchoReply => Ok(Parsed::IcmpEcho {
                src,
                dst,
                reply: icmp.msg_type() == Icmpv4Message::EchoReply,
                ident: icmp.echo_ident(),
                seq_no: icmp.echo_seq_no(),
                payload: icmp.data().to_vec(),
            }),
            Icmpv4Message::DstUnreachable => Ok(Parsed::IcmpUnreachable {
                src,
                dst,
                code: icmp.msg_code(),
                original: icmp.data().to_vec(),
            }),
            other => Ok(Parsed::Other(format!(
                "ICMP {other} code {}",
                icmp.msg_code()
            ))),
        }
    }

    /// An ICMP echo message as a ping socket carries it (header + payload).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct EchoMessage {
        pub reply: bool,
        pub ident: u16,
        pub seq_no: u16,
        pub payload: Vec<u8>,
    }

    /// Decodes a message the stack passed to `ping_send`. The checksum is not checked:
    /// the host kernel computes it for ping sockets.
    pub fn parse_echo_message(message: &[u8]) -> Result<EchoMessage, ParseError> {
        let icmp = Icmpv4Packet::new_checked(message).map_err(|_| ParseError::Truncated("ICMP"))?;
        let reply = match (icmp.msg_type(), icmp.msg_code()) {
            (Icmpv4Message::EchoRequest, 0) => false,
            (Icmpv4Message::EchoReply, 0) => true,
            _ => return Err(ParseError::Malformed("ICMP echo")),
        };
        Ok(EchoMessage {
            reply,
            ident: icmp.echo_ident(),
            seq_no: icmp.echo_seq_no(),
            payload: icmp.data().to_vec(),
        })
    }

    /// Builds an ICMP echo request or reply message (header + payload, checksummed).
    pub fn echo_message(reply: bool, ident: u16, seq_no: u16, payload: &[u8]) -> Vec<u8> {
        let repr = if reply {
            Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data: payload,
            }
        } else {
            Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data: payload,
            }
        };
        let mut message = vec![0; repr.buffer_len()];
        repr.emit(
            &mut Icmpv4Packet::new_unchecked(&mut message[..]),
            &checksums(),
        );
        message
    }

    /// The guest: builds the frames it sends. A `Guest` with the roles swapped (the
    /// gateway's MAC and a remote IP) builds frames "from the network" for unit tests.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Guest {
        pub mac: EthernetAddress,
        pub ip: Ipv4Addr,
        /// Where the guest sends everything not in its ARP table: the gateway.
        pub gateway_mac: EthernetAddress,
        /// The /64 its IPv6 address comes from (SLAAC from the stack's advertisements).
        pub ipv6_prefix: core::net::Ipv6Addr,
    }

    impl Default for Guest {
        fn default() -> Self {
            Guest::new(&VirtualNetwork::default())
        }
    }

    impl Guest {
        /// The guest of `network`: MAC [`GUEST_MAC`], address network+100.
        pub fn new(network: &VirtualNetwork) -> Guest {
            Guest {
                mac: GUEST_MAC,
                ip: network.guest(),
                gateway_mac: service_mac(network.gateway()),
                ipv6_prefix: network.ipv6_prefix().network(),
            }
        }

        /// "Who has `target`? Tell 10.0.2.100", broadcast.
        pub fn arp_request(&self, target: Ipv4Addr) -> Vec<u8> {
            let repr = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: self.mac,
                source_protocol_addr: self.ip,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: target,
            };
            self.ethernet(
                EthernetAddress::BROADCAST,
                EthernetProtocol::Arp,
                repr.buffer_len(),
                |buf| repr.emit(&mut ArpPacket::new_unchecked(buf)),
            )
        }

        /// A SYN as Linux sends it: MSS 1460, SACK permitted, window scale 7.
        pub fn tcp_syn(&self, src_port: u16, dst: SocketAddrV4, isn: u32) -> Vec<u8> {
            self.tcp_syn_mss(src_port, dst, isn, SYN_MSS)
        }

        /// [`Guest::tcp_syn`] announcing the MSS `mss`.
        pub fn tcp_syn_mss(&self, src_port: u16, dst: SocketAddrV4, isn: u32, mss: u16) -> Vec<u8> {
            self.tcp(
                *dst.ip(),
                &TcpSegment {
                    src_port,
                    dst_port: dst.port(),
                    seq: isn,
                    syn: true,
                    window: SYN_WINDOW,
                    mss: Some(mss),
                    window_scale: Some(WINDOW_SCALE),
                    sack_permitted: true,
                    ..TcpSegment::default()
                },
            )
        }

        /// Any segment without options: `flags` in tcpdump letters (`S`, `F`, `R`, `P`;
        /// the ACK flag follows `ack`), e.g. `tcp_segment(5000, dst, "FP", seq, Some(ack), b"")`.
        pub fn tcp_segment(
            &self,
            src_port: u16,
            dst: SocketAddrV4,
            flags: &str,
            seq: u32,
            ack: Option<u32>,
            payload: &[u8],
        ) -> Vec<u8> {
            self.tcp(
                *dst.ip(),
                &TcpSegment {
                    src_port,
                    dst_port: dst.port(),
                    seq,
                    ack,
                    syn: flags.contains('S'),
                    fin: flags.contains('F'),
                    rst: flags.contains('R'),
                    psh: flags.contains('P'),
                    window: WINDOW,
                    payload: payload.to_vec(),
                    ..TcpSegment::default()
                },
            )
        }

        /// The segment exactly as described, to `dst_ip`.
        pub fn tcp(&self, dst_ip: Ipv4Addr, segment: &TcpSegment) -> Vec<u8> {
            let repr = TcpRepr {
                src_port: segment.src_port,
                dst_port: segment.dst_port,
                control: TcpControl::None,
                seq_number: TcpSeqNumber(segment.seq as i32),
                ack_number: segment.ack.map(|ack| TcpSeqNumber(ack as i32)),
                window_len: segment.window,
                window_scale: segment.window_scale,
                max_seg_size: segment.mss,
                sack_permitted: segment.sack_permitted,
                sack_ranges: [None; 3],
                timestamp: None,
                payload: &segment.payload,
            };
            self.ipv4(
                dst_ip,
                IpProtocol::Tcp,
                repr.buffer_len(),
                |buf, src, dst| {
                    let mut packet = TcpPacket::new_unchecked(buf);
                    repr.emit(&mut packet, src, dst, &checksums());
                    // TcpRepr has one control flag; set them all, then checksum again.
                    packet.set_syn(segment.syn);
                    packet.set_fin(segment.fin);
                    packet.set_rst(segment.rst);
                    packet.set_psh(segment.psh);
                    packet.fill_checksum(src, dst);
                },
            )
        }

        pub fn udp(&self, src_port: u16, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
            let repr = UdpRepr {
                src_port,
                dst_port: dst.port(),
            };
            let len = repr.header_len() + payload.len();
            self.ipv4(*dst.ip(), IpProtocol::Udp, len, |buf, src, dst| {
                repr.emit(
                    &mut UdpPacket::new_unchecked(buf),
                    src,
                    dst,
                    payload.len(),
                    |out| out.copy_from_slice(payload),
                    &checksums(),
                )
            })
        }

        /// "`self.ip` is at `self.mac`", to whoever asked.
        pub fn arp_reply(&self, to_mac: EthernetAddress, to_ip: Ipv4Addr) -> Vec<u8> {
            let repr = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: self.mac,
                source_protocol_addr: self.ip,
                target_hardware_addr: to_mac,
                target_protocol_addr: to_ip,
            };
            self.ethernet(to_mac, EthernetProtocol::Arp, repr.buffer_len(), |buf| {
                repr.emit(&mut ArpPacket::new_unchecked(buf))
            })
        }

        /// A DHCP client message as a stock client sends it (chaddr and client id are the
        /// guest's MAC, the usual parameter request list); edit what the story needs and
        /// send it with [`Guest::dhcp`].
        pub fn dhcp_message(
            &self,
            message_type: DhcpMessageType,
            transaction_id: u32,
        ) -> DhcpRepr<'static> {
            DhcpRepr {
                message_type,
                transaction_id,
                secs: 0,
                client_hardware_address: self.mac,
                client_ip: Ipv4Addr::UNSPECIFIED,
                your_ip: Ipv4Addr::UNSPECIFIED,
                server_ip: Ipv4Addr::UNSPECIFIED,
                router: None,
                subnet_mask: None,
                relay_agent_ip: Ipv4Addr::UNSPECIFIED,
                broadcast: false,
                requested_ip: None,
                client_identifier: Some(self.mac),
                server_identifier: None,
                parameter_request_list: Some(&[1, 3, 6, 26, 51, 58, 59]),
                dns_servers: None,
                max_size: Some(1500),
                lease_duration: None,
                renew_duration: None,
                rebind_duration: None,
                additional_options: &[],
            }
        }

        /// A DHCP client message as a client without an address sends it: from 0.0.0.0:68
        /// to 255.255.255.255:67, Ethernet broadcast.
        pub fn dhcp(&self, message: &DhcpRepr<'_>) -> Vec<u8> {
            let mut payload = vec![0; message.buffer_len()];
            message
                .emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
                .expect("a DhcpRepr fits its own buffer_len");
            let unconfigured = Guest {
                ip: Ipv4Addr::UNSPECIFIED,
                gateway_mac: EthernetAddress::BROADCAST,
                ..*self
            };
            let server = SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_SERVER_PORT);
            unconfigured.udp(DHCP_CLIENT_PORT, server, &payload)
        }

        pub fn icmp_echo(&self, dst: Ipv4Addr, ident: u16, seq_no: u16, payload: &[u8]) -> Vec<u8> {
            let message = echo_message(false, ident, seq_no, payload);
            self.ipv4(dst, IpProtocol::Icmp, message.len(), |buf, _, _| {
                buf.copy_from_slice(&message)
            })
        }

        /// An IPv4 frame to `dst` (via the gateway's MAC); `fill` writes the payload given
        /// the pseudo-header addresses.
        pub fn ipv4(
            &self,
            dst: Ipv4Addr,
            protocol: IpProtocol,
            payload_len: usize,
            fill: impl FnOnce(&mut [u8], &IpAddress, &IpAddress),
        ) -> Vec<u8> {
            let repr = Ipv4Repr {
                src_addr: self.ip,
                dst_addr: dst,
                next_header: protocol,
                payload_len,
                hop_limit: GUEST_TTL,
            };
            self.ethernet(
                self.gateway_mac,
                EthernetProtocol::Ipv4,
                repr.buffer_len() + payload_len,
                |buf| {
                    let mut packet = Ipv4Packet::new_unchecked(buf);
                    repr.emit(&mut packet, &checksums());
                    let (src, dst) = (IpAddress::from(self.ip), IpAddress::from(dst));
                    fill(packet.payload_mut(), &src, &dst);
                },
            )
        }

        fn ethernet(
            &self,
            dst: EthernetAddress,
            ethertype: EthernetProtocol,
            payload_len: usize,
            fill: impl FnOnce(&mut [u8]),
        ) -> Vec<u8> {
            let repr = EthernetRepr {
                src_addr: self.mac,
                dst_addr: dst,
                ethertype,
            };
            let mut frame = vec![0; ETHERNET_HEADER_LEN + payload_len];
            let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
            repr.emit(&mut eth);
            fill(eth.payload_mut());
            frame
        }
    }

    /// One guest-side TCP connection: keeps seq/ack so tests need no arithmetic. It is a
    /// recorder, not a TCP: it accepts in-order data, counts anything out of order, and
    /// builds the next segment on request.
    #[derive(Debug, Clone)]
    pub struct GuestTcp {
        guest: Guest,
        pub local_port: u16,
        pub remote: SocketAddrV4,
        pub isn: u32,
        snd_nxt: u32,
        /// The remote's ISN, once its SYN-ACK arrived.
        pub peer_isn: Option<u32>,
        rcv_nxt: u32,
        /// Highest acknowledgment the remote sent.
        pub peer_ack: Option<u32>,
        pub peer_window: u16,
        pub peer_mss: Option<u16>,
        pub peer_window_scale: Option<u8>,
        /// The MSS this side announces in its SYN (1460 unless a test sets it).
        pub mss: u16,
        received: Vec<u8>,
        pub peer_fin: bool,
        pub reset: bool,
        /// Segments that started beyond the next expected byte (a gap).
        pub out_of_order: u32,
        /// The window this side announces; at 0 it takes no data (a zero-window probe is
        /// answered with an ACK that does not move).
        pub window: u16,
        needs_ack: bool,
    }

    impl GuestTcp {
        pub fn new(guest: &Guest, local_port: u16, remote: SocketAddrV4, isn: u32) -> GuestTcp {
            GuestTcp {
                guest: *guest,
                local_port,
                remote,
                isn,
                snd_nxt: isn,
                peer_isn: None,
                rcv_nxt: 0,
                peer_ack: None,
                peer_window: 0,
                peer_mss: None,
                peer_window_scale: None,
                mss: SYN_MSS,
                received: Vec::new(),
                peer_fin: false,
                reset: false,
                out_of_order: 0,
                window: WINDOW,
                needs_ack: false,
            }
        }

        /// The SYN (again, if called twice: a retransmission).
        pub fn syn(&mut self) -> Vec<u8> {
            self.snd_nxt = self.isn.wrapping_add(1);
            self.guest
                .tcp_syn_mss(self.local_port, self.remote, self.isn, self.mss)
        }

        /// Whether the frame is a segment of this connection (remote → guest).
        pub fn matches(&self, frame: &Parsed) -> bool {
            frame.tcp().is_some_and(|(ip, tcp)| {
                ip.src_addr == *self.remote.ip()
                    && ip.dst_addr == self.guest.ip
                    && tcp.src_port == self.remote.port()
                    && tcp.dst_port == self.local_port
            })
        }

        /// Learns from a frame of this connection; returns false (and ignores it) if the
        /// frame belongs to something else.
        pub fn on_frame(&mut self, frame: &Parsed) -> bool {
            if !self.matches(frame) {
                return false;
            }
            let Some((_, tcp)) = frame.tcp() else {
                return false;
            };
            if let Some(ack) = tcp.ack {
                let newer = match self.peer_ack {
                    Some(seen) => ack.wrapping_sub(seen) as i32 > 0,
                    None => true,
                };
                if newer {
                    self.peer_ack = Some(ack);
                }
            }
            self.peer_window = tcp.window;
            if tcp.rst {
                self.reset = true;
                return true;
            }
            if tcp.syn {
                self.on_syn(tcp);
            } else if self.peer_isn.is_some() {
                self.on_data(tcp);
            }
            true
        }

        fn on_syn(&mut self, tcp: &TcpSegment) {
            if tcp.ack != Some(self.isn.wrapping_add(1)) {
                return;
            }
            self.peer_isn = Some(tcp.seq);
            self.rcv_nxt = tcp.seq.wrapping_add(1);
            self.peer_mss = tcp.mss;
            self.peer_window_scale = tcp.window_scale;
            self.needs_ack = true;
        }

        fn on_data(&mut self, tcp: &TcpSegment) {
            if self.window == 0 && !tcp.payload.is_empty() {
                self.needs_ack = true;
                return;
            }
            let offset = tcp.seq.wrapping_sub(self.rcv_nxt) as i32;
            if offset > 0 {
                self.out_of_order += 1;
                self.needs_ack = true;
                return;
            }
            let already = offset.unsigned_abs() as usize;
            if tcp.payload.len() > already {
                let fresh = &tcp.payload[already..];
                self.received.extend_from_slice(fresh);
                self.rcv_nxt = self.rcv_nxt.wrapping_add(fresh.len() as u32);
            }
            if !tcp.payload.is_empty() {
                self.needs_ack = true;
            }
            if tcp.fin {
                let fin_seq = tcp.seq.wrapping_add(tcp.payload.len() as u32);
                if fin_seq == self.rcv_nxt && !self.peer_fin {
                    self.peer_fin = true;
                    self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
                }
                self.needs_ack = true;
            }
        }

        /// A pure ACK of everything received so far.
        pub fn ack(&mut self) -> Vec<u8> {
            self.needs_ack = false;
            self.segment("", &[])
        }

        /// Data with PSH|ACK.
        pub fn send(&mut self, data: &[u8]) -> Vec<u8> {
            let frame = self.segment("P", data);
            self.snd_nxt = self.snd_nxt.wrapping_add(data.len() as u32);
            self.needs_ack = false;
            frame
        }

        /// FIN|ACK.
        pub fn fin(&mut self) -> Vec<u8> {
            let frame = self.segment("F", &[]);
            self.snd_nxt = self.snd_nxt.wrapping_add(1);
            self.needs_ack = false;
            frame
        }

        /// RST|ACK.
        pub fn rst(&mut self) -> Vec<u8> {
            self.segment("R", &[])
        }

        fn segment(&self, flags: &str, payload: &[u8]) -> Vec<u8> {
            self.guest.tcp(
                *self.remote.ip(),
                &TcpSegment {
                    src_port: self.local_port,
                    dst_port: self.remote.port(),
                    seq: self.snd_nxt,
                    ack: self.peer_isn.map(|_| self.rcv_nxt),
                    syn: flags.contains('S'),
                    fin: flags.contains('F'),
                    rst: flags.contains('R'),
                    psh: flags.contains('P'),
                    window: self.window,
                    payload: payload.to_vec(),
                    ..TcpSegment::default()
                },
            )
        }

        /// The SYN-ACK arrived.
        pub fn established(&self) -> bool {
            self.peer_isn.is_some()
        }

        /// Something arrived that the guest should acknowledge.
        pub fn needs_ack(&self) -> bool {
            self.needs_ack
        }

        /// Next sequence number the guest sends.
        pub fn next_seq(&self) -> u32 {
            self.snd_nxt
        }

        /// Next sequence number the guest expects (what it acknowledges).
        pub fn rcv_nxt(&self) -> u32 {
            self.rcv_nxt
        }

        /// The remote acknowledged everything the guest sent (SYN, data and FIN).
        pub fn all_acked(&self) -> bool {
            self.peer_ack == Some(self.snd_nxt)
        }

        /// In-order bytes received from the remote so far.
        pub fn received(&self) -> &[u8] {
            &self.received
        }

        pub fn take_received(&mut self) -> Vec<u8> {
            std::mem::take(&mut self.received)
        }

        /// The guest's side of a connection the stack opens towards it (a port forward):
        /// the guest accepts the stack's `syn` with its own ISN `isn`. Returns the
        /// connection, established, and the SYN-ACK to send.
        pub fn accept(guest: &Guest, syn: &Parsed, isn: u32) -> (GuestTcp, Vec<u8>) {
            GuestTcp::accept_with_mss(guest, syn, isn, SYN_MSS)
        }

        /// [`GuestTcp::accept`] announcing the MSS `mss` in the SYN-ACK.
        pub fn accept_with_mss(
            guest: &Guest,
            syn: &Parsed,
            isn: u32,
            mss: u16,
        ) -> (GuestTcp, Vec<u8>) {
            let Some((ip, tcp)) = syn.tcp().filter(|(_, tcp)| tcp.syn && tcp.ack.is_none()) else {
                panic!("test bug: GuestTcp::accept needs the stack's SYN, got {syn:?}");
            };
            let remote = SocketAddrV4::new(ip.src_addr, tcp.src_port);
            let mut conn = GuestTcp::new(guest, tcp.dst_port, remote, isn);
            conn.snd_nxt = isn.wrapping_add(1);
            conn.peer_isn = Some(tcp.seq);
            conn.rcv_nxt = tcp.seq.wrapping_add(1);
            conn.peer_mss = tcp.mss;
            conn.peer_window_scale = tcp.window_scale;
            conn.mss = mss;
            let syn_ack = guest.tcp(
                *remote.ip(),
                &TcpSegment {
                    src_port: conn.local_port,
                    dst_port: remote.port(),
                    seq: isn,
                    ack: Some(conn.rcv_nxt),
                    syn: true,
                    window: SYN_WINDOW,
                    mss: Some(mss),
                    // RFC 7323: scale only if the SYN offered it.
                    window_scale: tcp.window_scale.map(|_| WINDOW_SCALE),
                    sack_permitted: tcp.sack_permitted,
                    ..TcpSegment::default()
                },
            );
            (conn, syn_ack)
        }
    }
}

/// The harness: a stack, a simulated host and a guest on a virtual clock.
pub mod scenario {
    use super::frames::{parse, Guest, GuestTcp, Parsed};
    use super::host::{SimHost, SocketKind};
    use crate::config::Config;
    use crate::io::{FlowId, HostError, HostEvent};
    use crate::stack::Stack;
    use crate::stats::Stats;
    use crate::Offload;
    use core::net::{SocketAddr, SocketAddrV4};
    use smoltcp::time::{Duration, Instant};
    use smoltcp::wire::{checksum, EthernetAddress, EthernetFrame, ETHERNET_HEADER_LEN};
    use std::collections::{HashMap, HashSet};

    /// What the guest's kernel does with a frame whose checksum was left partial: sum the
    /// bytes from the start the tap was given into the field.
    pub fn complete_checksum(frame: &mut [u8], offload: &Offload) {
        if let Some(partial) = offload.partial_checksum {
            let start = usize::from(partial.start);
            let at = start + usize::from(partial.offset);
            let sum = !checksum::data(&frame[start..]);
            frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
    }

    /// Where the virtual clock starts (not zero, so "time zero" bugs show).
    pub const START: Instant = Instant::from_millis_const(1_000_000);
    const SEED: u64 = 0x5eed_0f51_ab00;
    /// Polls in a row at one instant before we call it a busy loop.
    const MAX_POLLS_PER_INSTANT: usize = 64;
    /// Deadlines one `advance` may visit.
    const MAX_DEADLINES_PER_ADVANCE: usize = 1_000_000;
    /// Rounds of frames-in/ACKs-out one `exchange` may take.
    const MAX_EXCHANGE_ROUNDS: usize = 1_000;

    /// Plays the event loop around a [`Stack`]: every input is one loop iteration (handle
    /// the input, `poll(now)` until `poll_at` is in the future, write every queued frame to
    /// the "tap"); time moves only in [`Scenario::advance`], which polls exactly at the
    /// deadlines the stack reports, as the real loop sleeps until `poll_at`.
    pub struct Scenario {
        pub stack: Stack,
        pub host: SimHost,
        pub guest: Guest,
        config: Config,
        now: Instant,
        /// Frames the stack wrote to the tap, not yet drained by the test, with what the
        /// tap was told about each.
        tap: Vec<(Vec<u8>, Offload)>,
        /// Size and offload metadata of every frame drained so far (see
        /// [`Scenario::take_offload_log`]).
        offload_log: Vec<(usize, Offload)>,
        /// What the "tap" answers writes with: `Sent` (default), `Full` (the guest is not
        /// reading), `Dropped` (its link is down).
        pub tap_answer: crate::TapWrite,
    }

    impl Default for Scenario {
        fn default() -> Self {
            Scenario::new()
        }
    }

    impl Scenario {
        /// The default network (10.0.2.0/24).
        pub fn new() -> Scenario {
            Scenario::with_config(Config::default())
        }

        pub fn with_config(config: Config) -> Scenario {
            Scenario {
                stack: Stack::new(config.clone(), START, SEED),
                host: SimHost::new(),
                guest: Guest::new(&config.network),
                config,
                now: START,
                tap: Vec::new(),
                tap_answer: crate::TapWrite::Sent,
                offload_log: Vec::new(),
            }
        }

        pub fn now(&self) -> Instant {
            self.now
        }

        /// Time since the scenario started.
        pub fn elapsed(&self) -> Duration {
            self.now - START
        }

        pub fn config(&self) -> &Config {
            &self.config
        }

        /// A snapshot of the stack's counters.
        pub fn stats(&self) -> Stats {
            self.stack.stats()
        }

        /// The guest writes a frame to the tap.
        pub fn guest_sends(&mut self, frame: &[u8]) {
            self.stack.handle_frame(self.now, frame, &mut self.host);
            self.settle();
        }

        /// The host poller reports an event.
        pub fn host_event(&mut self, event: HostEvent) {
            self.stack
                .handle_host_event(self.now, event, &mut self.host);
            self.settle();
        }

        /// Moves the clock forward by `by`, polling at every deadline the stack reports on
        /// the way (and nowhere else).
        pub fn advance(&mut self, by: Duration) {
            let target = self.now + by;
            for _ in 0..MAX_DEADLINES_PER_ADVANCE {
                match self.stack.poll_at() {
                    Some(deadline) if deadline <= target => {
                        self.now = self.now.max(deadline);
                        self.settle();
                    }
                    _ => {
                        self.now = target;
                        return;
                    }
                }
            }
            panic!(
                "advance({by}) visited {MAX_DEADLINES_PER_ADVANCE} deadlines without reaching {target}"
            );
        }

        /// Frames the stack sent to the guest since the last drain, decoded. Panics if a
        /// frame is not addressed to the guest's MAC, exceeds the MTU or has a bad checksum.
        /// Fragments come reassembled, as the guest's kernel passes them on (each checked
        /// first); see [`Scenario::drain_raw`] for the frames themselves.
        pub fn drain(&mut self) -> Vec<Parsed> {
            let frames = self.drain_raw();
            for frame in &frames {
                parse(frame);
            }
            super::fragments::defragment(frames)
                .iter()
                .map(|frame| parse(frame))
                .collect()
        }

        /// Like [`Scenario::drain`], the raw frames (addressing and size still checked).
        /// Offloaded frames come as the guest's kernel takes them from the tap: checksum
        /// completed, a segment to be cut still whole.
        pub fn drain_raw(&mut self) -> Vec<Vec<u8>> {
            let frames = self.take_tap();
            for frame in &frames {
                self.check_link(frame);
            }
            frames
        }

        /// The frames exactly as the stack wrote them, with their offload metadata (checked
        /// for consistency, checksums left partial).
        pub fn drain_offloaded(&mut self) -> Vec<(Vec<u8>, Offload)> {
            let frames = std::mem::take(&mut self.tap);
            for (frame, offload) in &frames {
                self.check_offload(frame, offload);
                self.check_link(frame);
            }
            frames
        }

        /// Drain the tap the way the guest's kernel reads it: every frame's size and
        /// offload metadata checked, partial checksums completed.
        fn take_tap(&mut self) -> Vec<Vec<u8>> {
            let frames = std::mem::take(&mut self.tap);
            frames
                .into_iter()
                .map(|(mut frame, offload)| {
                    self.check_offload(&frame, &offload);
                    self.offload_log.push((frame.len(), offload));
                    complete_checksum(&mut frame, &offload);
                    frame
                })
                .collect()
        }

        /// Length and offload metadata of each frame drained (by any `drain*` but
        /// [`Scenario::drain_offloaded`]) since the last call, oldest first.
        pub fn take_offload_log(&mut self) -> Vec<(usize, Offload)> {
            std::mem::take(&mut self.offload_log)
        }

        /// What tun's `virtio_net_hdr_to_skb` and the guest's MTU demand of a frame.
        fn check_offload(&self, frame: &[u8], offload: &Offload) {
            let max = ETHERNET_HEADER_LEN + self.config.mtu;
            assert!(
                self.config.tap_offload || *offload == Offload::default(),
                "offload metadata without tap offloads: {offload:?}"
            );
            if let Some(partial) = offload.partial_checksum {
                let field = usize::from(partial.start) + usize::from(partial.offset);
                assert!(
                    field + 2 <= frame.len(),
                    "partial checksum field beyond the frame: {offload:?}"
                );
            }
            match offload.gso {
                None => assert!(
                    frame.len() <= max,
                    "frame of {} bytes exceeds the MTU ({max} with Ethernet header)",
                    frame.len()
                ),
                Some(gso) => {
                    assert!(
                        offload.partial_checksum.is_some(),
                        "a segment to cut must leave its checksum to the device"
                    );
                    let each = usize::from(gso.header_len) + usize::from(gso.segment_size);
                    assert!(
                        each <= max,
                        "segments of {each} bytes would exceed the MTU ({max} with Ethernet header)"
                    );
                    assert!(
                        frame.len() > each,
                        "a frame of {} bytes marked for segmentation into {each}",
                        frame.len()
                    );
                    assert!(frame.len() <= ETHERNET_HEADER_LEN + 65_535);
                }
            }
        }

        fn check_link(&self, frame: &[u8]) {
            let eth = EthernetFrame::new_checked(frame)
                .unwrap_or_else(|_| panic!("the stack emitted a runt frame: {frame:02x?}"));
            // IPv6 multicast (33:33:...) reaches every node, the guest included.
            let ipv6_multicast = eth.dst_addr().0[..2] == [0x33, 0x33];
            if !ipv6_multicast {
                assert_eq!(
                    eth.dst_addr(),
                    self.guest.mac,
                    "frame to the guest is not addressed to its MAC"
                );
            }
        }

        /// One loop iteration's output side: poll until the stack has nothing due now,
        /// then write every frame it has.
        fn settle(&mut self) {
            for _ in 0..MAX_POLLS_PER_INSTANT {
                self.stack.poll(self.now, &mut self.host);
                let (tap, answer) = (&mut self.tap, self.tap_answer);
                self.stack.poll_transmit(|frame, offload| {
                    if answer == crate::TapWrite::Sent {
                        tap.push((frame.to_vec(), offload));
                    }
                    answer
                });
                if !matches!(self.stack.poll_at(), Some(at) if at <= self.now) {
                    return;
                }
            }
            panic!(
                "busy loop: after {MAX_POLLS_PER_INSTANT} polls at {} the stack still reports poll_at <= now",
                self.now
            );
        }

        // ---- the host's side, told as a story: change the host, deliver the event ----

        pub fn complete_connect(&mut self, flow: FlowId) {
            let event = self.host.complete_connect(flow);
            self.host_event(event);
        }

        pub fn fail_connect(&mut self, flow: FlowId, error: HostError) {
            let event = self.host.fail_connect(flow, error);
            self.host_event(event);
        }

        pub fn peer_send(&mut self, flow: FlowId, data: &[u8]) {
            let event = self.host.peer_send(flow, data);
            self.host_event(event);
        }

        pub fn peer_close(&mut self, flow: FlowId) {
            let event = self.host.peer_close(flow);
            self.host_event(event);
        }

        pub fn peer_reset(&mut self, flow: FlowId) {
            let event = self.host.peer_reset(flow);
            self.host_event(event);
        }

        pub fn deliver_datagram(&mut self, flow: FlowId, payload: &[u8]) {
            let event = self.host.deliver_datagram(flow, payload);
            self.host_event(event);
        }

        pub fn ping_reply(&mut self, flow: FlowId, seq_no: u16, payload: &[u8]) {
            let event = self.host.ping_reply(flow, seq_no, payload);
            self.host_event(event);
        }

        /// See [`SimHost::icmp_error`].
        pub fn icmp_error(&mut self, flow: FlowId, report: crate::io::IcmpReport, quoted: &[u8]) {
            let event = self.host.icmp_error(flow, report, quoted);
            self.host_event(event);
        }

        /// The host peer reads what the stack wrote; if that unblocks the socket, the
        /// writable edge is delivered.
        pub fn take_sent(&mut self, flow: FlowId) -> Vec<u8> {
            let sent = self.host.take_sent(flow);
            if let Some(event) = self.host.writable_edge(flow) {
                self.host_event(event);
            }
            sent
        }

        // ---- the control socket and port forwards ----

        /// A control-socket client sends `request`; returns the reply.
        pub fn api(&mut self, request: &str) -> String {
            let reply = self
                .stack
                .handle_api_request(self.now, request.as_bytes(), &mut self.host);
            self.settle();
            String::from_utf8(reply).expect("API replies are UTF-8 JSON")
        }

        /// A forward added at start (`--publish`), by `Stack::add_hostfwd`.
        pub fn publish(
            &mut self,
            request: &crate::api::ForwardRequest,
        ) -> Result<u64, crate::forward::AddForwardError> {
            let added = self.stack.add_hostfwd(self.now, request, &mut self.host);
            self.settle();
            added
        }

        /// The poller reports a forward's listening socket readable.
        pub fn forward_event(&mut self, forward: u64) {
            self.stack
                .handle_forward_event(self.now, forward, &mut self.host);
            self.settle();
        }

        /// A host client connects to a TCP forward and the stack is told. Returns the flow
        /// the stack accepted the connection as (it may have closed it already).
        pub fn client_connects(&mut self, forward: u64, client: SocketAddr) -> FlowId {
            let before: HashSet<FlowId> = self.host.sockets().map(|(flow, _)| flow).collect();
            self.host.client_connects(forward, client);
            self.forward_event(forward);
            let accepted = self.host.sockets().find(|(flow, socket)| {
                !before.contains(flow) && socket.kind == SocketKind::Tcp && socket.remote == client
            });
            match accepted {
                Some((flow, _)) => flow,
                None => panic!("forward {forward}: the stack did not accept {client}"),
            }
        }

        /// A host client sends a datagram to a UDP forward and the stack is told.
        pub fn client_sends(&mut self, forward: u64, client: SocketAddr, payload: &[u8]) {
            self.host.client_sends(forward, client, payload);
            self.forward_event(forward);
        }

        /// Like [`Scenario::drain`], each frame with its Ethernet destination and without the
        /// check that it is the guest's MAC: for broadcasts (the stack's ARP requests, DHCP
        /// replies to a client without an address). Sizes and checksums are still checked.
        pub fn drain_addressed(&mut self) -> Vec<(EthernetAddress, Parsed)> {
            self.take_tap()
                .iter()
                .map(|frame| {
                    let eth = EthernetFrame::new_checked(&frame[..])
                        .unwrap_or_else(|_| panic!("the stack emitted a runt frame: {frame:02x?}"));
                    (eth.dst_addr(), parse(frame))
                })
                .collect()
        }

        // ---- TCP conveniences ----

        /// A guest connection from `local_port` to `remote` with a fixed, port-derived ISN
        /// (not sent yet).
        pub fn guest_tcp(&self, local_port: u16, remote: SocketAddrV4) -> GuestTcp {
            let isn = u32::from(local_port).wrapping_mul(0x9e37_79b9);
            GuestTcp::new(&self.guest, local_port, remote, isn)
        }

        /// The whole happy handshake: SYN, exactly one host connect, the connect completes,
        /// SYN-ACK, ACK. Returns the connection and its host flow.
        pub fn open_tcp(&mut self, local_port: u16, remote: SocketAddrV4) -> (GuestTcp, FlowId) {
            let mut conn = self.guest_tcp(local_port, remote);
            let connects_before = self.host.connects().len();
            self.guest_sends(&conn.syn());
            let connects = self.host.connects();
            assert_eq!(
                connects.len(),
                connects_before + 1,
                "a SYN to {remote} should start exactly one host connect"
            );
            let (flow, _) = connects[connects_before];
            self.complete_connect(flow);
            let others = self.exchange(std::slice::from_mut(&mut conn));
            assert!(
                conn.established(),
                "no SYN-ACK from {remote} after the host connect completed; other frames: {others:?}"
            );
            (conn, flow)
        }

        /// Delivers the stack's frames to the connections they belong to and lets each
        /// connection ACK what it received, until the stack has nothing more to say (the
        /// clock does not move). Returns the frames no connection claimed.
        pub fn exchange(&mut self, conns: &mut [GuestTcp]) -> Vec<Parsed> {
            let index: HashMap<(u16, SocketAddrV4), usize> = conns
                .iter()
                .enumerate()
                .map(|(i, conn)| ((conn.local_port, conn.remote), i))
                .collect();
            let mut unclaimed = Vec::new();
            for _ in 0..MAX_EXCHANGE_ROUNDS {
                let frames = self.drain();
                if frames.is_empty() {
                    return unclaimed;
                }
                for frame in frames {
                    let owner = frame.tcp().and_then(|(ip, tcp)| {
                        let remote = SocketAddrV4::new(ip.src_addr, tcp.src_port);
                        index.get(&(tcp.dst_port, remote)).copied()
                    });
                    match owner {
                        Some(i) if conns[i].on_frame(&frame) => {}
                        _ => unclaimed.push(frame),
                    }
                }
                for conn in conns.iter_mut().filter(|conn| conn.needs_ack()) {
                    let ack = conn.ack();
                    self.guest_sends(&ack);
                }
            }
            panic!("exchange did not settle after {MAX_EXCHANGE_ROUNDS} rounds");
        }
    }
}

/// IPv6 (`--enable-ipv6`): the guest's side of neighbour discovery, ICMPv6, TCP and UDP
/// over IPv6, a parser for the IPv6 frames the stack sends ([`Parsed6`]), and the
/// [`Scenario`](super::Scenario) conveniences that go with them.
///
/// The guest's addresses are what a Linux guest autoconfigures from its MAC (EUI-64):
/// [`GUEST_MAC`](super::GUEST_MAC) 02:00:00:00:00:01 gives fe80::ff:fe00:1 and
/// fd00::ff:fe00:1 (or the `--cidr6` prefix's ::ff:fe00:1).
pub mod ipv6 {
    use super::frames::{parse, Guest, GuestTcp, ParseError, Parsed, TcpSegment};
    use super::scenario::Scenario;
    use crate::io::FlowId;
    use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Message,
        Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol, Ipv4Repr, Ipv6FragmentHeader, Ipv6Packet,
        Ipv6Repr, NdiscRepr, RawHardwareAddress, TcpControl, TcpOption, TcpPacket, TcpRepr,
        TcpSeqNumber, UdpPacket, UdpRepr, ETHERNET_HEADER_LEN,
    };
    use std::collections::HashMap;

    /// ff02::1, every node on the link (where router advertisements go).
    pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    /// ff02::2, every router on the link (where router solicitations go).
    pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    /// What the guest's kernel puts in the hop limit of ordinary packets.
    const GUEST_HOP_LIMIT: u8 = 64;
    /// Neighbour discovery messages must carry 255 (RFC 4861), or receivers drop them.
    pub const NDP_HOP_LIMIT: u8 = 255;
    /// Rounds of frames-in/ACKs-out one [`Scenario::exchange_ipv6`] may take.
    const MAX_EXCHANGE_ROUNDS: usize = 1_000;

    fn checksums() -> ChecksumCapabilities {
        ChecksumCapabilities::default()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The Ethernet address of an IPv6 multicast group: 33:33 and its last 32 bits.
    pub fn multicast_mac(group: Ipv6Addr) -> EthernetAddress {
        let o = group.octets();
        EthernetAddress([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }

    /// The solicited-node multicast group of `addr` (ff02::1:ffXX:XXXX), where neighbour
    /// solicitations for it go.
    pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
        let o = addr.octets();
        Ipv6Addr::from([
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
        ])
    }

    /// The modified EUI-64 interface identifier of `mac` (RFC 4291 appendix A).
    fn interface_id(mac: EthernetAddress) -> [u8; 8] {
        let m = mac.0;
        [m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]
    }

    fn with_interface_id(prefix: Ipv6Addr, mac: EthernetAddress) -> Ipv6Addr {
        let mut octets = prefix.octets();
        octets[8..].copy_from_slice(&interface_id(mac));
        Ipv6Addr::from(octets)
    }

    impl Guest {
        /// The guest's SLAAC address in its prefix (fd00::/64 by default).
        pub fn ipv6_addr(&self) -> Ipv6Addr {
            with_interface_id(self.ipv6_prefix, self.mac)
        }

        /// The guest's link-local address (fe80::/64).
        pub fn link_local(&self) -> Ipv6Addr {
            with_interface_id(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), self.mac)
        }

        /// An IPv6 frame from `src` to `dst` (Ethernet destination `dst_mac`); `fill` writes
        /// the payload given the pseudo-header addresses.
        #[allow(clippy::too_many_arguments)]
        pub fn ipv6_frame(
            &self,
            src: Ipv6Addr,
            dst: Ipv6Addr,
            dst_mac: EthernetAddress,
            protocol: IpProtocol,
            hop_limit: u8,
            payload_len: usize,
            fill: impl FnOnce(&mut [u8], &IpAddress, &IpAddress),
        ) -> Vec<u8> {
            let ip = Ipv6Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: protocol,
                payload_len,
                hop_limit,
            };
            let eth = EthernetRepr {
                src_addr: self.mac,
                dst_addr: dst_mac,
                ethertype: EthernetProtocol::Ipv6,
            };
            let mut frame = vec![0; ETHERNET_HEADER_LEN + ip.buffer_len() + payload_len];
            let mut eth_frame = EthernetFrame::new_unchecked(&mut frame[..]);
            eth.emit(&mut eth_frame);
            let mut packet = Ipv6Packet::new_unchecked(eth_frame.payload_mut());
            ip.emit(&mut packet);
            fill(packet.payload_mut(), &src.into(), &dst.into());
            frame
        }

        /// An ICMPv6 message from `src` to `dst`, hop limit 255 (fine for NDP and others).
        pub fn icmpv6(
            &self,
            src: Ipv6Addr,
            dst: Ipv6Addr,
            dst_mac: EthernetAddress,
            message: &Icmpv6Repr<'_>,
        ) -> Vec<u8> {
            let len = message.buffer_len();
            self.ipv6_frame(
                src,
                dst,
                dst_mac,
                IpProtocol::Icmpv6,
                NDP_HOP_LIMIT,
                len,
                |buf, _, _| {
                    message.emit(
                        &src,
                        &dst,
                        &mut Icmpv6Packet::new_unchecked(buf),
                        &checksums(),
                    )
                },
            )
        }

        /// A router solicitation from the link-local address to ff02::2, with the guest's
        /// MAC as source link-layer address option (as Linux sends it at link up).
        pub fn router_solicit(&self) -> Vec<u8> {
            let message = Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit {
                lladdr: Some(RawHardwareAddress::from(self.mac)),
            });
            self.icmpv6(
                self.link_local(),
                ALL_ROUTERS,
                multicast_mac(ALL_ROUTERS),
                &message,
            )
        }

        /// "Who has `target`?" from `src` to the target's solicited-node group. From `::`
        /// (a duplicate address detection probe) without link-layer address option, as RFC
        /// 4861 requires.
        pub fn neighbor_solicit(&self, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
            let message = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
                target_addr: target,
                lladdr: (!src.is_unspecified()).then(|| RawHardwareAddress::from(self.mac)),
            });
            let group = solicited_node(target);
            self.icmpv6(src, group, multicast_mac(group), &message)
        }

        /// An echo request from the guest's global address to `dst`, via the gateway's MAC.
        pub fn icmpv6_echo(&self, dst: Ipv6Addr, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
            let message = Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            };
            self.icmpv6(self.ipv6_addr(), dst, self.gateway_mac, &message)
        }

        /// UDP from the guest's global address.
        pub fn udp6(&self, src_port: u16, dst: SocketAddrV6, payload: &[u8]) -> Vec<u8> {
            let repr = UdpRepr {
                src_port,
                dst_port: dst.port(),
            };
            let len = repr.header_len() + payload.len();
            self.ipv6_frame(
                self.ipv6_addr(),
                *dst.ip(),
                self.gateway_mac,
                IpProtocol::Udp,
                GUEST_HOP_LIMIT,
                len,
                |buf, src, dst| {
                    repr.emit(
                        &mut UdpPacket::new_unchecked(buf),
                        src,
                        dst,
                        payload.len(),
                        |out| out.copy_from_slice(payload),
                        &checksums(),
                    )
                },
            )
        }

        /// The TCP segment exactly as described, from the guest's global address to `dst_ip`.
        pub fn tcp6(&self, dst_ip: Ipv6Addr, segment: &TcpSegment) -> Vec<u8> {
            let repr = TcpRepr {
                src_port: segment.src_port,
                dst_port: segment.dst_port,
                control: TcpControl::None,
                seq_number: TcpSeqNumber(segment.seq as i32),
                ack_number: segment.ack.map(|ack| TcpSeqNumber(ack as i32)),
                window_len: segment.window,
                window_scale: segment.window_scale,
                max_seg_size: segment.mss,
                sack_permitted: segment.sack_permitted,
                sack_ranges: [None; 3],
                timestamp: None,
                payload: &segment.payload,
            };
            self.ipv6_frame(
                self.ipv6_addr(),
                dst_ip,
                self.gateway_mac,
                IpProtocol::Tcp,
                GUEST_HOP_LIMIT,
                repr.buffer_len(),
                |buf, src, dst| {
                    let mut packet = TcpPacket::new_unchecked(buf);
                    repr.emit(&mut packet, src, dst, &checksums());
                    // TcpRepr has one control flag; set them all, then checksum again.
                    packet.set_syn(segment.syn);
                    packet.set_fin(segment.fin);
                    packet.set_rst(segment.rst);
                    packet.set_psh(segment.psh);
                    packet.fill_checksum(src, dst);
                },
            )
        }
    }

    /// An IPv6 frame the stack sent, decoded. Every checksum was verified.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Parsed6 {
        /// Neighbour discovery. `options` are the raw option bytes after the fixed header
        /// (smoltcp's `NdiscRepr` keeps only the options it knows; RDNSS is not one).
        Ndisc {
            eth_dst: EthernetAddress,
            ip: Ipv6Repr,
            ndisc: NdiscRepr<'static>,
            options: Vec<u8>,
        },
        Echo {
            src: Ipv6Addr,
            dst: Ipv6Addr,
            /// Echo reply (true) or echo request (false).
            reply: bool,
            ident: u16,
            seq_no: u16,
            payload: Vec<u8>,
        },
        Unreachable {
            src: Ipv6Addr,
            dst: Ipv6Addr,
            code: u8,
            /// The quoted original packet (its IPv6 header and what followed).
            original: Vec<u8>,
        },
        Tcp {
            ip: Ipv6Repr,
            tcp: TcpSegment,
        },
        Udp {
            src: SocketAddrV6,
            dst: SocketAddrV6,
            payload: Vec<u8>,
        },
        /// A packet with a Fragment header (see [`Parsed::Fragment`]).
        Fragment {
            src: Ipv6Addr,
            dst: Ipv6Addr,
            next_header: IpProtocol,
            ident: u32,
            /// In bytes.
            offset: usize,
            more: bool,
            payload: Vec<u8>,
        },
        /// Anything else (IPv4, ARP, other ICMPv6 types), described.
        Other(String),
    }

    impl Parsed6 {
        pub fn tcp(&self) -> Option<(&Ipv6Repr, &TcpSegment)> {
            match self {
                Parsed6::Tcp { ip, tcp } => Some((ip, tcp)),
                _ => None,
            }
        }
    }

    /// Decodes a frame from the stack as IPv6; panics (with the frame in hex) if it is a
    /// malformed IPv6 frame or has a bad checksum.
    pub fn parse6(frame: &[u8]) -> Parsed6 {
        try_parse6(frame).unwrap_or_else(|error| {
            panic!(
                "the stack emitted a bad IPv6 frame ({error}): {}",
                hex(frame)
            )
        })
    }

    pub fn try_parse6(frame: &[u8]) -> Result<Parsed6, ParseError> {
        let eth =
            EthernetFrame::new_checked(frame).map_err(|_| ParseError::Truncated("Ethernet"))?;
        if eth.ethertype() != EthernetProtocol::Ipv6 {
            return Ok(Parsed6::Other(format!("ethertype {}", eth.ethertype())));
        }
        let packet =
            Ipv6Packet::new_checked(eth.payload()).map_err(|_| ParseError::Truncated("IPv6"))?;
        if packet.version() != 6 {
            return Err(ParseError::Malformed("IPv6 version"));
        }
        let ip = Ipv6Repr::parse(&packet).map_err(|_| ParseError::Malformed("IPv6"))?;
        let payload = &packet.payload()[..ip.payload_len];
        let (src, dst) = (IpAddress::from(ip.src_addr), IpAddress::from(ip.dst_addr));
        match ip.next_header {
            IpProtocol::Icmpv6 => parse_icmpv6(eth.dst_addr(), ip, payload),
            IpProtocol::Tcp => {
                let tcp =
                    TcpPacket::new_checked(payload).map_err(|_| ParseError::Truncated("TCP"))?;
                if !tcp.verify_checksum(&src, &dst) {
                    return Err(ParseError::BadChecksum("TCP"));
                }
                Ok(Parsed6::Tcp {
                    ip,
                    tcp: tcp_segment(&tcp)?,
                })
            }
            IpProtocol::Udp => {
                let udp =
                    UdpPacket::new_checked(payload).map_err(|_| ParseError::Truncated("UDP"))?;
                // RFC 8200: over IPv6 the UDP checksum is mandatory.
                if udp.checksum() == 0 || !udp.verify_checksum(&src, &dst) {
                    return Err(ParseError::BadChecksum("UDP"));
                }
                Ok(Parsed6::Udp {
                    src: SocketAddrV6::new(ip.src_addr, udp.src_port(), 0, 0),
                    dst: SocketAddrV6::new(ip.dst_addr, udp.dst_port(), 0, 0),
                    payload: udp.payload().to_vec(),
                })
            }
            IpProtocol::Ipv6Frag => {
                if payload.len() < 8 {
                    return Err(ParseError::Truncated("IPv6 Fragment header"));
                }
                let header = Ipv6FragmentHeader::new_checked(&payload[2..8])
                    .map_err(|_| ParseError::Truncated("IPv6 Fragment header"))?;
                let data = &payload[8..];
                if header.more_frags() && data.len() % 8 != 0 {
                    return Err(ParseError::Malformed("IPv6 fragment length"));
                }
                Ok(Parsed6::Fragment {
                    src: ip.src_addr,
                    dst: ip.dst_addr,
                    next_header: IpProtocol::from(payload[0]),
                    ident: header.ident(),
                    offset: usize::from(header.frag_offset()) * 8,
                    more: header.more_frags(),
                    payload: data.to_vec(),
                })
            }
            other => Ok(Parsed6::Other(format!("IPv6 next header {other}"))),
        }
    }

    fn parse_icmpv6(
        eth_dst: EthernetAddress,
        ip: Ipv6Repr,
        payload: &[u8],
    ) -> Result<Parsed6, ParseError> {
        let icmp =
            Icmpv6Packet::new_checked(payload).map_err(|_| ParseError::Truncated("ICMPv6"))?;
        if !icmp.verify_checksum(&ip.src_addr, &ip.dst_addr) {
            return Err(ParseError::BadChecksum("ICMPv6"));
        }
        let (src, dst) = (ip.src_addr, ip.dst_addr);
        match icmp.msg_type() {
            Icmpv6Message::EchoRequest | Icmpv6Message::EchoReply => Ok(Parsed6::Echo {
                src,
                dst,
                reply: icmp.msg_type() == Icmpv6Message::EchoReply,
                ident: icmp.echo_ident(),
                seq_no: icmp.echo_seq_no(),
                payload: icmp.payload().to_vec(),
            }),
            Icmpv6Message::DstUnreachable => Ok(Parsed6::Unreachable {
                src,
                dst,
                code: icmp.msg_code(),
                original: icmp.payload().to_vec(),
            }),
            Icmpv6Message::RouterSolicit
            | Icmpv6Message::RouterAdvert
            | Icmpv6Message::NeighborSolicit
            | Icmpv6Message::NeighborAdvert => {
                let repr = Icmpv6Repr::parse(&src, &dst, &icmp, &checksums())
                    .map_err(|_| ParseError::Malformed("NDP"))?;
                let Icmpv6Repr::Ndisc(ndisc) = repr else {
                    return Err(ParseError::Malformed("NDP"));
                };
                Ok(Parsed6::Ndisc {
                    eth_dst,
                    ip,
                    ndisc: owned_ndisc(ndisc).ok_or(ParseError::Malformed("NDP"))?,
                    options: icmp.payload().to_vec(),
                })
            }
            other => Ok(Parsed6::Other(format!(
                "ICMPv6 {other} code {}",
                icmp.msg_code()
            ))),
        }
    }

    /// The message without borrowed data (only a redirect borrows, and none is expected).
    fn owned_ndisc(repr: NdiscRepr<'_>) -> Option<NdiscRepr<'static>> {
        Some(match repr {
            NdiscRepr::RouterSolicit { lladdr } => NdiscRepr::RouterSolicit { lladdr },
            NdiscRepr::RouterAdvert {
                hop_limit,
                flags,
                router_lifetime,
                reachable_time,
                retrans_time,
                lladdr,
                mtu,
                prefix_info,
            } => NdiscRepr::RouterAdvert {
                hop_limit,
                flags,
                router_lifetime,
                reachable_time,
                retrans_time,
                lladdr,
                mtu,
                prefix_info,
            },
            NdiscRepr::NeighborSolicit {
                target_addr,
                lladdr,
            } => NdiscRepr::NeighborSolicit {
                target_addr,
                lladdr,
            },
            NdiscRepr::NeighborAdvert {
                flags,
                target_addr,
                lladdr,
            } => NdiscRepr::NeighborAdvert {
                flags,
                target_addr,
                lladdr,
            },
            NdiscRepr::Redirect { .. } => return None,
        })
    }

    fn tcp_segment(packet: &TcpPacket<&[u8]>) -> Result<TcpSegment, ParseError> {
        let mut segment = TcpSegment {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq: packet.seq_number().0 as u32,
            ack: packet.ack().then(|| packet.ack_number().0 as u32),
            syn: packet.syn(),
            fin: packet.fin(),
            rst: packet.rst(),
            psh: packet.psh(),
            window: packet.window_len(),
            payload: packet.payload().to_vec(),
            ..TcpSegment::default()
        };
        let mut options = packet.options();
        while !options.is_empty() {
            let (rest, option) =
                TcpOption::parse(options).map_err(|_| ParseError::Malformed("TCP options"))?;
            match option {
                TcpOption::EndOfList => break,
                TcpOption::MaxSegmentSize(mss) => segment.mss = Some(mss),
                TcpOption::WindowScale(scale) => segment.window_scale = Some(scale),
                TcpOption::SackPermitted => segment.sack_permitted = true,
                _ => {}
            }
            options = rest;
        }
        Ok(segment)
    }

    /// Decodes an ICMPv6 echo message the stack passed to `ping_send` (the host kernel
    /// computes the checksum of ping sockets, so it is not checked).
    pub fn parse_echo6_message(message: &[u8]) -> Result<super::EchoMessage, ParseError> {
        let icmp =
            Icmpv6Packet::new_checked(message).map_err(|_| ParseError::Truncated("ICMPv6"))?;
        let reply = match (icmp.msg_type(), icmp.msg_code()) {
            (Icmpv6Message::EchoRequest, 0) => false,
            (Icmpv6Message::EchoReply, 0) => true,
            _ => return Err(ParseError::Malformed("ICMPv6 echo")),
        };
        Ok(super::EchoMessage {
            reply,
            ident: icmp.echo_ident(),
            seq_no: icmp.echo_seq_no(),
            payload: icmp.payload().to_vec(),
        })
    }

    /// An ICMPv6 echo message as an IPv6 ping socket returns it (no checksum: the kernel
    /// checked it on receipt).
    pub fn echo6_message(reply: bool, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
        let repr = if reply {
            Icmpv6Repr::EchoReply {
                ident,
                seq_no,
                data,
            }
        } else {
            Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }
        };
        let mut message = vec![0; repr.buffer_len()];
        let unspecified = Ipv6Addr::UNSPECIFIED;
        repr.emit(
            &unspecified,
            &unspecified,
            &mut Icmpv6Packet::new_unchecked(&mut message[..]),
            &ChecksumCapabilities::ignored(),
        );
        message
    }

    /// Stand-in IPv4 addresses under which [`GuestTcp6`] lets a [`GuestTcp`] keep its books.
    const STAND_IN_GUEST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const STAND_IN_REMOTE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    /// One guest-side TCP connection over IPv6, from the guest's global address. The
    /// sequence bookkeeping is [`GuestTcp`]'s: it runs on stand-in IPv4 addresses, and
    /// segments are carried across unchanged (flags, numbers, options and payload).
    #[derive(Debug, Clone)]
    pub struct GuestTcp6 {
        inner: GuestTcp,
        guest: Guest,
        pub local_port: u16,
        pub remote: SocketAddrV6,
    }

    impl GuestTcp6 {
        pub fn new(guest: &Guest, local_port: u16, remote: SocketAddrV6, isn: u32) -> GuestTcp6 {
            let stand_in = Guest {
                ip: STAND_IN_GUEST,
                ..*guest
            };
            let stand_in_remote = SocketAddrV4::new(STAND_IN_REMOTE, remote.port());
            GuestTcp6 {
                inner: GuestTcp::new(&stand_in, local_port, stand_in_remote, isn),
                guest: *guest,
                local_port,
                remote,
            }
        }

        pub fn isn(&self) -> u32 {
            self.inner.isn
        }

        /// The MSS the remote announced in its SYN-ACK.
        pub fn peer_mss(&self) -> Option<u16> {
            self.inner.peer_mss
        }

        /// The SYN (again, if called twice: a retransmission).
        pub fn syn(&mut self) -> Vec<u8> {
            let frame = self.inner.syn();
            self.carry(&frame)
        }

        /// Whether the frame is a segment of this connection (remote → guest).
        pub fn matches(&self, frame: &Parsed6) -> bool {
            frame.tcp().is_some_and(|(ip, tcp)| {
                ip.src_addr == *self.remote.ip()
                    && ip.dst_addr == self.guest.ipv6_addr()
                    && tcp.src_port == self.remote.port()
                    && tcp.dst_port == self.local_port
            })
        }

        /// Learns from a frame of this connection; returns false (and ignores it) if the
        /// frame belongs to something else.
        pub fn on_frame(&mut self, frame: &Parsed6) -> bool {
            let Some((_, tcp)) = frame.tcp().filter(|_| self.matches(frame)) else {
                return false;
            };
            let stand_in = Parsed::Tcp {
                ip: Ipv4Repr {
                    src_addr: STAND_IN_REMOTE,
                    dst_addr: STAND_IN_GUEST,
                    next_header: IpProtocol::Tcp,
                    payload_len: 0,
                    hop_limit: GUEST_HOP_LIMIT,
                },
                tcp: tcp.clone(),
            };
            self.inner.on_frame(&stand_in)
        }

        /// A pure ACK of everything received so far.
        pub fn ack(&mut self) -> Vec<u8> {
            let frame = self.inner.ack();
            self.carry(&frame)
        }

        /// Data with PSH|ACK.
        pub fn send(&mut self, data: &[u8]) -> Vec<u8> {
            let frame = self.inner.send(data);
            self.carry(&frame)
        }

        /// FIN|ACK.
        pub fn fin(&mut self) -> Vec<u8> {
            let frame = self.inner.fin();
            self.carry(&frame)
        }

        /// RST|ACK.
        pub fn rst(&mut self) -> Vec<u8> {
            let frame = self.inner.rst();
            self.carry(&frame)
        }

        /// The stand-in IPv4 frame's segment, as an IPv6 frame.
        fn carry(&self, stand_in: &[u8]) -> Vec<u8> {
            let parsed = parse(stand_in);
            let (_, segment) = parsed.tcp().expect("GuestTcp builds TCP frames");
            self.guest.tcp6(*self.remote.ip(), segment)
        }

        /// The SYN-ACK arrived.
        pub fn established(&self) -> bool {
            self.inner.established()
        }

        pub fn needs_ack(&self) -> bool {
            self.inner.needs_ack()
        }

        /// The remote acknowledged everything the guest sent (SYN, data and FIN).
        pub fn all_acked(&self) -> bool {
            self.inner.all_acked()
        }

        /// In-order bytes received from the remote so far.
        pub fn received(&self) -> &[u8] {
            self.inner.received()
        }

        /// The remote's FIN arrived (in order).
        pub fn peer_fin(&self) -> bool {
            self.inner.peer_fin
        }

        /// A RST arrived.
        pub fn reset(&self) -> bool {
            self.inner.reset
        }
    }

    impl Scenario {
        /// Frames the stack sent since the last drain, decoded as IPv6 (see [`parse6`]);
        /// addressing and size are checked as by [`Scenario::drain`].
        pub fn drain_ipv6(&mut self) -> Vec<Parsed6> {
            let frames = self.drain_raw();
            for frame in &frames {
                parse6(frame);
            }
            crate::testing::fragments::defragment(frames)
                .iter()
                .map(|frame| parse6(frame))
                .collect()
        }

        /// A guest connection over IPv6 from `local_port` to `remote` with a fixed,
        /// port-derived ISN (not sent yet).
        pub fn guest_tcp6(&self, local_port: u16, remote: SocketAddrV6) -> GuestTcp6 {
            let isn = u32::from(local_port).wrapping_mul(0x9e37_79b9);
            GuestTcp6::new(&self.guest, local_port, remote, isn)
        }

        /// The whole happy handshake over IPv6: SYN, exactly one host connect, the connect
        /// completes, SYN-ACK, ACK. Returns the connection and its host flow.
        pub fn open_tcp6(&mut self, local_port: u16, remote: SocketAddrV6) -> (GuestTcp6, FlowId) {
            let mut conn = self.guest_tcp6(local_port, remote);
            let connects_before = self.host.connects().len();
            self.guest_sends(&conn.syn());
            let connects = self.host.connects();
            assert_eq!(
                connects.len(),
                connects_before + 1,
                "a SYN to {remote} should start exactly one host connect"
            );
            let (flow, _) = connects[connects_before];
            self.complete_connect(flow);
            let others = self.exchange_ipv6(std::slice::from_mut(&mut conn));
            assert!(
                conn.established(),
                "no SYN-ACK from {remote} after the host connect completed; other frames: {others:?}"
            );
            (conn, flow)
        }

        /// [`Scenario::exchange`] for IPv6 connections: delivers the stack's frames to the
        /// connections they belong to and lets each ACK what it received, until the stack
        /// has nothing more to say. Returns the frames no connection claimed.
        pub fn exchange_ipv6(&mut self, conns: &mut [GuestTcp6]) -> Vec<Parsed6> {
            let index: HashMap<(u16, SocketAddrV6), usize> = conns
                .iter()
                .enumerate()
                .map(|(i, conn)| ((conn.local_port, conn.remote), i))
                .collect();
            let mut unclaimed = Vec::new();
            for _ in 0..MAX_EXCHANGE_ROUNDS {
                let frames = self.drain_ipv6();
                if frames.is_empty() {
                    return unclaimed;
                }
                for frame in frames {
                    let owner = frame.tcp().and_then(|(ip, tcp)| {
                        let remote = SocketAddrV6::new(ip.src_addr, tcp.src_port, 0, 0);
                        index.get(&(tcp.dst_port, remote)).copied()
                    });
                    match owner {
                        Some(i) if conns[i].on_frame(&frame) => {}
                        _ => unclaimed.push(frame),
                    }
                }
                for conn in conns.iter_mut().filter(|conn| conn.needs_ack()) {
                    let ack = conn.ack();
                    self.guest_sends(&ack);
                }
            }
            panic!("exchange_ipv6 did not settle after {MAX_EXCHANGE_ROUNDS} rounds");
        }
    }
}

/// IP fragments on the guest's side, written independently of the stack's own code (so
/// that a test does not check the stack against itself): the guest's kernel reassembling
/// what the stack fragmented, and cutting its own large datagrams.
pub mod fragments {
    use smoltcp::wire::{
        EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6FragmentHeader, Ipv6Packet,
        ETHERNET_HEADER_LEN,
    };

    const IPV4_HEADER: usize = 20;
    const IPV6_HEADER: usize = 40;
    const FRAGMENT_HEADER: usize = 8;

    /// Which datagram a fragment belongs to: ethertype, addresses, identification,
    /// protocol (IPv4).
    type Key = (u16, Vec<u8>, u32, u8);

    struct Piece {
        offset: usize,
        more: bool,
        data: Vec<u8>,
        /// Ethernet and IP header of the whole packet (from the fragment at offset 0).
        header: Vec<u8>,
    }

    /// A fragment's key and piece, or `None` for a frame that is no fragment.
    fn fragment_of(frame: &[u8]) -> Option<(Key, Piece)> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        match eth.ethertype() {
            EthernetProtocol::Ipv4 => {
                let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
                if !ip.more_frags() && ip.frag_offset() == 0 {
                    return None;
                }
                let header_len = usize::from(ip.header_len());
                let mut header = frame[..ETHERNET_HEADER_LEN + header_len].to_vec();
                {
                    let mut whole = Ipv4Packet::new_unchecked(&mut header[ETHERNET_HEADER_LEN..]);
                    whole.set_more_frags(false);
                    whole.set_frag_offset(0);
                }
                let addrs = eth.payload()[12..20].to_vec();
                let key = (
                    0x0800,
                    addrs,
                    u32::from(ip.ident()),
                    ip.next_header().into(),
                );
                let piece = Piece {
                    offset: usize::from(ip.frag_offset()),
                    more: ip.more_frags(),
                    data: ip.payload().to_vec(),
                    header,
                };
                Some((key, piece))
            }
            EthernetProtocol::Ipv6 => {
                let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
                if ip.next_header() != IpProtocol::Ipv6Frag {
                    return None;
                }
                let payload = ip.payload();
                let fragment = Ipv6FragmentHeader::new_checked(payload.get(2..8)?).ok()?;
                let mut header = frame[..ETHERNET_HEADER_LEN + IPV6_HEADER].to_vec();
                Ipv6Packet::new_unchecked(&mut header[ETHERNET_HEADER_LEN..])
                    .set_next_header(IpProtocol::from(payload[0]));
                let addrs = eth.payload()[8..40].to_vec();
                let key = (0x86dd, addrs, fragment.ident(), 0);
                let piece = Piece {
                    offset: usize::from(fragment.frag_offset()) * 8,
                    more: fragment.more_frags(),
                    data: payload[FRAGMENT_HEADER..].to_vec(),
                    header,
                };
                Some((key, piece))
            }
            _ => None,
        }
    }

    /// The whole frame, once the pieces cover a datagram from 0 to a last fragment.
    /// Panics on overlapping pieces: the stack must never send those.
    fn whole(pieces: &mut [Piece]) -> Option<Vec<u8>> {
        pieces.sort_by_key(|p| p.offset);
        let mut end = 0;
        for piece in pieces.iter() {
            assert!(
                piece.offset >= end,
                "overlapping fragments from the stack at offset {}",
                piece.offset
            );
            if piece.offset != end {
                return None;
            }
            end += piece.data.len();
        }
        let last = pieces.last()?;
        if last.more || pieces[0].offset != 0 {
            return None;
        }
        let mut frame = pieces[0].header.clone();
        for piece in pieces.iter() {
            frame.extend_from_slice(&piece.data);
        }
        let ip = &mut frame[ETHERNET_HEADER_LEN..];
        if ip[0] >> 4 == 4 {
            let mut packet = Ipv4Packet::new_unchecked(ip);
            let total = packet.header_len() as usize + end;
            packet.set_total_len(u16::try_from(total).expect("an IPv4 datagram fits 64 KiB"));
            packet.fill_checksum();
        } else {
            Ipv6Packet::new_unchecked(ip)
                .set_payload_len(u16::try_from(end).expect("an IPv6 payload fits 64 KiB"));
        }
        Some(frame)
    }

    /// The frames as the guest's IP layer sees them: every complete datagram's fragments
    /// replaced by the whole frame (where its last fragment arrived); other frames, and
    /// the fragments of datagrams still incomplete, as they are.
    pub fn defragment(frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(frames.len());
        // Per datagram: its pieces and where its fragments are in `out`.
        let mut groups: Vec<(Key, Vec<Piece>, Vec<usize>)> = Vec::new();
        for frame in frames {
            let Some((key, piece)) = fragment_of(&frame) else {
                out.push(Some(frame));
                continue;
            };
            let index = match groups.iter().position(|g| g.0 == key) {
                Some(index) => index,
                None => {
                    groups.push((key, Vec::new(), Vec::new()));
                    groups.len() - 1
                }
            };
            out.push(Some(frame));
            let group = &mut groups[index];
            group.1.push(piece);
            group.2.push(out.len() - 1);
            if let Some(frame) = whole(&mut group.1) {
                let (_, _, slots) = groups.remove(index);
                for slot in slots {
                    out[slot] = None;
                }
                if let Some(last) = out.last_mut() {
                    *last = Some(frame);
                }
            }
        }
        out.into_iter().flatten().collect()
    }

    /// One fragment of the IPv4 `frame` (Ethernet, an IPv4 header without options, its
    /// payload): payload bytes [offset, offset + len), with MF set to `more`.
    pub fn ipv4_piece(frame: &[u8], offset: usize, len: usize, more: bool, ident: u16) -> Vec<u8> {
        let head = ETHERNET_HEADER_LEN + IPV4_HEADER;
        let mut out = frame[..head].to_vec();
        out.extend_from_slice(&frame[head + offset..head + offset + len]);
        let mut ip = Ipv4Packet::new_unchecked(&mut out[ETHERNET_HEADER_LEN..]);
        ip.set_total_len((IPV4_HEADER + len) as u16);
        ip.set_ident(ident);
        ip.set_dont_frag(false);
        ip.set_more_frags(more);
        ip.set_frag_offset(offset as u16);
        ip.fill_checksum();
        out
    }

    /// One fragment of the IPv6 `frame` (Ethernet, the fixed header, its payload), with a
    /// Fragment header.
    pub fn ipv6_piece(frame: &[u8], offset: usize, len: usize, more: bool, ident: u32) -> Vec<u8> {
        let head = ETHERNET_HEADER_LEN + IPV6_HEADER;
        let next_header = Ipv6Packet::new_unchecked(&frame[ETHERNET_HEADER_LEN..]).next_header();
        let mut out = frame[..head].to_vec();
        let offset_field = ((offset / 8) as u16) << 3 | u16::from(more);
        out.push(next_header.into());
        out.push(0);
        out.extend_from_slice(&offset_field.to_be_bytes());
        out.extend_from_slice(&ident.to_be_bytes());
        out.extend_from_slice(&frame[head + offset..head + offset + len]);
        let mut ip = Ipv6Packet::new_unchecked(&mut out[ETHERNET_HEADER_LEN..]);
        ip.set_next_header(IpProtocol::Ipv6Frag);
        ip.set_payload_len((FRAGMENT_HEADER + len) as u16);
        out
    }

    /// The payload length of an IPv4 or IPv6 frame (what its fragments carry).
    pub fn payload_len(frame: &[u8]) -> usize {
        let ip = &frame[ETHERNET_HEADER_LEN..];
        if ip[0] >> 4 == 4 {
            usize::from(Ipv4Packet::new_unchecked(ip).total_len()) - IPV4_HEADER
        } else {
            usize::from(Ipv6Packet::new_unchecked(ip).payload_len())
        }
    }

    /// The frame cut as a guest's kernel does for a link of `mtu` bytes, in order: IPv4
    /// fragments with DF clear, or IPv6 ones with a Fragment header.
    pub fn fragment(frame: &[u8], mtu: usize, ident: u32) -> Vec<Vec<u8>> {
        let ipv4 = frame[ETHERNET_HEADER_LEN] >> 4 == 4;
        let headers = if ipv4 {
            IPV4_HEADER
        } else {
            IPV6_HEADER + FRAGMENT_HEADER
        };
        let chunk = (mtu - headers) & !7;
        let len = payload_len(frame);
        (0..len)
            .step_by(chunk)
            .map(|offset| {
                let n = chunk.min(len - offset);
                let more = offset + n < len;
                if ipv4 {
                    ipv4_piece(frame, offset, n, more, ident as u16)
                } else {
                    ipv6_piece(frame, offset, n, more, ident)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{CloseMode, FlowId, HostError, HostIo, SourceAddr};
    use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use smoltcp::wire::{
        ArpOperation, ArpRepr, EthernetAddress, Icmpv4DstUnreachable, Icmpv4Repr, IpProtocol,
        Ipv4Repr,
    };

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const REMOTE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 80);

    fn flow(index: u32) -> FlowId {
        FlowId {
            index,
            generation: 1,
        }
    }

    /// The network's side of the wire: a "guest" with the roles swapped, sending from
    /// `ip` with the gateway's MAC to the guest.
    fn network_side(guest: &Guest, ip: Ipv4Addr) -> Guest {
        Guest {
            mac: guest.gateway_mac,
            ip,
            gateway_mac: guest.mac,
            ipv6_prefix: guest.ipv6_prefix,
        }
    }

    #[test]
    fn default_guest_is_the_spec_guest() {
        let guest = Guest::default();
        assert_eq!(guest.ip, Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(guest.mac, EthernetAddress([2, 0, 0, 0, 0, 1]));
        assert_eq!(
            guest.gateway_mac,
            EthernetAddress([0x52, 0x55, 10, 0, 2, 2])
        );
    }

    #[test]
    fn arp_request_round_trips() {
        let guest = Guest::default();
        let frame = guest.arp_request(GATEWAY);
        assert_eq!(&frame[..6], &[0xff; 6], "ARP requests are broadcast");
        assert_eq!(
            parse(&frame),
            Parsed::Arp(ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: guest.mac,
                source_protocol_addr: guest.ip,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: GATEWAY,
            })
        );
    }

    #[test]
    fn syn_carries_linux_options() {
        let guest = Guest::default();
        let parsed = parse(&guest.tcp_syn(40000, REMOTE, 0xfffffff0));
        let (ip, tcp) = parsed.tcp().expect("a TCP frame");
        assert_eq!((ip.src_addr, ip.dst_addr), (guest.ip, *REMOTE.ip()));
        assert_eq!((tcp.src_port, tcp.dst_port), (40000, 80));
        assert_eq!(tcp.flags(), "S");
        assert_eq!(tcp.seq, 0xfffffff0);
        assert_eq!(tcp.ack, None);
        assert_eq!(tcp.mss, Some(1460));
        assert_eq!(tcp.window_scale, Some(7));
        assert!(tcp.sack_permitted);
        assert_eq!(tcp.seq_len(), 1);
    }

    #[test]
    fn tcp_segments_round_trip_with_every_flag() {
        let guest = Guest::default();
        for flags in ["", "P", "F", "FP", "R", "S"] {
            let frame = guest.tcp_segment(40000, REMOTE, flags, 7, Some(9), b"data");
            let parsed = parse(&frame);
            let (_, tcp) = parsed.tcp().expect("a TCP frame");
            assert_eq!(tcp.flags(), format!("{flags}."));
            assert_eq!((tcp.seq, tcp.ack), (7, Some(9)));
            assert_eq!(tcp.payload, b"data");
        }
    }

    #[test]
    fn udp_and_icmp_round_trip() {
        let guest = Guest::default();
        let dst = SocketAddrV4::new(GATEWAY, 53);
        assert_eq!(
            parse(&guest.udp(5000, dst, b"query")),
            Parsed::Udp {
                src: SocketAddrV4::new(guest.ip, 5000),
                dst,
                payload: b"query".to_vec()
            }
        );
        assert_eq!(
            parse(&guest.icmp_echo(GATEWAY, 0x1234, 7, b"ping")),
            Parsed::IcmpEcho {
                src: guest.ip,
                dst: GATEWAY,
                reply: false,
                ident: 0x1234,
                seq_no: 7,
                payload: b"ping".to_vec()
            }
        );
    }

    #[test]
    fn icmp_unreachable_quotes_the_original() {
        let guest = Guest::default();
        let syn = guest.tcp_syn(40000, REMOTE, 1);
        let quoted = &syn[14..14 + 28];
        let repr = Icmpv4Repr::DstUnreachable {
            reason: Icmpv4DstUnreachable::HostUnreachable,
            header: Ipv4Repr {
                src_addr: guest.ip,
                dst_addr: *REMOTE.ip(),
                next_header: IpProtocol::Tcp,
                payload_len: 8,
                hop_limit: 64,
            },
            data: &quoted[20..],
        };
        let frame = network_side(&guest, GATEWAY).ipv4(
            guest.ip,
            IpProtocol::Icmp,
            repr.buffer_len(),
            |buf, _, _| {
                repr.emit(
                    &mut smoltcp::wire::Icmpv4Packet::new_unchecked(buf),
                    &Default::default(),
                )
            },
        );
        let Parsed::IcmpUnreachable {
            src,
            dst,
            code,
            original,
        } = parse(&frame)
        else {
            panic!("not an ICMP unreachable");
        };
        assert_eq!((src, dst, code), (GATEWAY, guest.ip, 1));
        assert_eq!(&original[12..20], &quoted[12..20], "quoted addresses");
        assert_eq!(&original[20..], &quoted[20..], "quoted ports and sequence");
    }

    #[test]
    fn corruption_is_caught_by_every_checksum() {
        let guest = Guest::default();
        let dst = SocketAddrV4::new(GATEWAY, 7);
        let cases: [(Vec<u8>, usize, &str); 4] = [
            (guest.udp(5000, dst, b"x"), 14 + 8, "IPv4"), // TTL
            (
                guest.tcp_segment(5000, dst, "P", 1, Some(1), b"abc"),
                14 + 20 + 20,
                "TCP",
            ),
            (guest.udp(5000, dst, b"abc"), 14 + 20 + 8, "UDP"),
            (guest.icmp_echo(GATEWAY, 1, 1, b"abc"), 14 + 20 + 8, "ICMP"),
        ];
        for (mut frame, offset, what) in cases {
            assert!(try_parse(&frame).is_ok(), "{what} frame parses intact");
            frame[offset] ^= 0x40;
            assert_eq!(try_parse(&frame), Err(ParseError::BadChecksum(what)));
        }
    }

    #[test]
    #[should_panic(expected = "bad TCP checksum")]
    fn parse_panics_on_a_bad_checksum() {
        let mut frame = Guest::default().tcp_segment(5000, REMOTE, "", 1, Some(1), b"abc");
        let last = frame.len() - 1;
        frame[last] ^= 1;
        parse(&frame);
    }

    #[test]
    fn truncation_is_an_error() {
        let frame = Guest::default().tcp_syn(5000, REMOTE, 1);
        assert_eq!(
            try_parse(&frame[..10]),
            Err(ParseError::Truncated("Ethernet"))
        );
        assert_eq!(try_parse(&frame[..30]), Err(ParseError::Truncated("IPv4")));
    }

    #[test]
    fn echo_messages_round_trip() {
        let message = echo_message(true, 9, 3, b"hi");
        assert_eq!(
            parse_echo_message(&message),
            Ok(EchoMessage {
                reply: true,
                ident: 9,
                seq_no: 3,
                payload: b"hi".to_vec()
            })
        );
    }

    /// A remote peer that answers a GuestTcp, for testing the tracker without a stack.
    fn from_remote(guest: &Guest, flags: &str, seq: u32, ack: u32, payload: &[u8]) -> Parsed {
        let remote = network_side(guest, *REMOTE.ip());
        let to_guest = SocketAddrV4::new(guest.ip, 40000);
        parse(&remote.tcp_segment(REMOTE.port(), to_guest, flags, seq, Some(ack), payload))
    }

    #[test]
    fn guest_tcp_tracks_a_connection() {
        let guest = Guest::default();
        let mut conn = GuestTcp::new(&guest, 40000, REMOTE, u32::MAX);
        let syn = parse(&conn.syn());
        assert_eq!(syn.tcp().map(|(_, t)| t.seq), Some(u32::MAX));

        assert!(conn.on_frame(&from_remote(&guest, "S", 500, 0, b"")));
        assert!(conn.established() && conn.needs_ack());
        let ack = parse(&conn.ack());
        assert_eq!(ack.tcp().map(|(_, t)| (t.seq, t.ack)), Some((0, Some(501))));

        let data = parse(&conn.send(b"hello"));
        assert_eq!(data.tcp().map(|(_, t)| t.flags()), Some("P.".to_string()));
        assert!(!conn.all_acked());
        conn.on_frame(&from_remote(&guest, "P", 501, 5, b"world"));
        assert!(conn.all_acked());
        // A retransmission overlapping what we have adds only the new tail.
        conn.on_frame(&from_remote(&guest, "P", 503, 5, b"rld!"));
        // A segment after a gap is counted, not accepted.
        conn.on_frame(&from_remote(&guest, "P", 600, 5, b"gap"));
        assert_eq!(conn.received(), b"world!");
        assert_eq!(conn.out_of_order, 1);

        conn.on_frame(&from_remote(&guest, "F", 507, 5, b""));
        assert!(conn.peer_fin);
        let fin = parse(&conn.fin());
        assert_eq!(
            fin.tcp().map(|(_, t)| (t.flags(), t.seq, t.ack)),
            Some(("F.".to_string(), 5, Some(508)))
        );
        assert_eq!(conn.next_seq(), 6);

        let other = from_remote(&Guest::default(), "", 1, 1, b"");
        let mut stranger = GuestTcp::new(&guest, 40001, REMOTE, 0);
        assert!(
            !stranger.on_frame(&other),
            "another port's segment is not ours"
        );
    }

    #[test]
    fn sim_host_connect_and_stream() {
        let mut host = SimHost::new();
        let remote = SocketAddr::V4(REMOTE);
        host.tcp_connect(flow(1), remote, SourceAddr::Outbound)
            .unwrap();
        assert_eq!(host.last_connect(), Some((flow(1), remote)));
        let mut buf = [0; 8];
        assert_eq!(host.tcp_recv(flow(1), &mut buf), Err(HostError::WouldBlock));

        let event = host.complete_connect(flow(1));
        assert!(event.writable && !event.error);
        assert_eq!(host.take_error(flow(1)), None);

        host.peer_send(flow(1), b"0123456789");
        assert_eq!(host.tcp_recv(flow(1), &mut buf), Ok(8));
        assert_eq!(&buf, b"01234567");
        assert_eq!(host.tcp_recv(flow(1), &mut buf), Ok(2));
        assert_eq!(host.tcp_recv(flow(1), &mut buf), Err(HostError::WouldBlock));
        host.peer_close(flow(1));
        assert_eq!(host.tcp_recv(flow(1), &mut buf), Ok(0));

        assert_eq!(host.tcp_send(flow(1), b"abc"), Ok(3));
        host.tcp_shutdown_write(flow(1));
        assert!(host.shutdown_write_called(flow(1)));
        assert_eq!(host.take_sent(flow(1)), b"abc");

        host.close(flow(1), CloseMode::Graceful);
        host.close(flow(1), CloseMode::Abort);
        assert_eq!(host.close_mode(flow(1)), Some(CloseMode::Graceful));
        assert_eq!(host.open_count(), 0);
    }

    #[test]
    fn sim_host_backpressure() {
        let mut host = SimHost::new();
        host.set_default_send_window(4);
        host.tcp_connect(flow(1), SocketAddr::V4(REMOTE), SourceAddr::Outbound)
            .unwrap();
        host.complete_connect(flow(1));
        assert_eq!(host.tcp_send(flow(1), b"abcdef"), Ok(4));
        assert_eq!(host.tcp_send(flow(1), b"ef"), Err(HostError::WouldBlock));
        assert_eq!(host.writable_edge(flow(1)), None, "still full");
        assert_eq!(host.take_sent(flow(1)), b"abcd");
        let edge = host.writable_edge(flow(1)).expect("room again");
        assert!(edge.writable);
        assert_eq!(
            host.writable_edge(flow(1)),
            None,
            "an edge is reported once"
        );
    }

    #[test]
    fn sim_host_errors_are_reported_once() {
        let mut host = SimHost::new();
        host.tcp_connect(flow(1), SocketAddr::V4(REMOTE), SourceAddr::Outbound)
            .unwrap();
        let event = host.fail_connect(flow(1), HostError::ConnectionRefused);
        assert!(event.error);
        assert_eq!(host.take_error(flow(1)), Some(HostError::ConnectionRefused));
        assert_eq!(host.take_error(flow(1)), None);

        host.tcp_connect(flow(2), SocketAddr::V4(REMOTE), SourceAddr::Outbound)
            .unwrap();
        host.complete_connect(flow(2));
        host.peer_send(flow(2), b"lost");
        host.peer_reset(flow(2));
        let mut buf = [0; 8];
        assert_eq!(
            host.tcp_recv(flow(2), &mut buf),
            Err(HostError::ConnectionReset)
        );
        assert_eq!(host.tcp_recv(flow(2), &mut buf), Ok(0));
    }

    #[test]
    fn sim_host_scripted_open_failures() {
        let mut host = SimHost::new();
        host.fail_next_open(HostError::Exhausted);
        let remote = SocketAddr::V4(REMOTE);
        assert_eq!(
            host.udp_open(flow(1), remote, SourceAddr::Outbound),
            Err(HostError::Exhausted)
        );
        assert!(host.socket(flow(1)).is_none());
        assert_eq!(host.udp_open(flow(2), remote, SourceAddr::Outbound), Ok(()));

        host.set_ping_allowed(false);
        let target = remote.ip();
        assert_eq!(
            host.ping_open(flow(3), target),
            Err(HostError::PermissionDenied)
        );
        assert_eq!(host.ping_opens(), vec![(flow(3), target)]);
    }

    #[test]
    fn sim_host_datagrams_and_pings() {
        let mut host = SimHost::new();
        host.udp_open(flow(1), SocketAddr::V4(REMOTE), SourceAddr::Outbound)
            .unwrap();
        host.udp_send(flow(1), b"one", 64).unwrap();
        host.udp_send(flow(1), b"two", 64).unwrap();
        assert_eq!(
            host.udp_sent(flow(1)),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        host.deliver_datagram(flow(1), b"reply");
        let mut small = [0; 3];
        assert_eq!(
            host.udp_recv(flow(1), &mut small),
            Ok(crate::io::Datagram { len: 3, last: true }),
            "truncated like recv(2); nothing else queued"
        );
        assert_eq!(
            host.udp_recv(flow(1), &mut small),
            Err(HostError::WouldBlock)
        );

        host.ping_open(flow(2), REMOTE.ip().to_owned().into())
            .unwrap();
        host.ping_send(flow(2), &echo_message(false, 77, 1, b"abc"), 64)
            .unwrap();
        let sent = parse_echo_message(&host.ping_sent(flow(2))[0]).unwrap();
        host.ping_reply(flow(2), sent.seq_no, &sent.payload);
        let mut buf = [0; 64];
        let n = host.ping_recv(flow(2), &mut buf).unwrap().len;
        let reply = parse_echo_message(&buf[..n]).unwrap();
        assert!(reply.reply);
        assert_ne!(reply.ident, 77, "the host kernel uses its own identifier");
        assert_eq!((reply.seq_no, reply.payload.as_slice()), (1, &b"abc"[..]));
    }

    #[test]
    #[should_panic(expected = "after closing it")]
    fn sim_host_rejects_use_after_close() {
        let mut host = SimHost::new();
        host.udp_open(flow(1), SocketAddr::V4(REMOTE), SourceAddr::Outbound)
            .unwrap();
        host.close(flow(1), CloseMode::Graceful);
        let _ = host.udp_send(flow(1), b"late", 64);
    }

    #[test]
    #[should_panic(expected = "opened flow#1.1 again")]
    fn sim_host_rejects_reopening_a_flow_id() {
        let mut host = SimHost::new();
        host.udp_open(flow(1), SocketAddr::V4(REMOTE), SourceAddr::Outbound)
            .unwrap();
        host.close(flow(1), CloseMode::Graceful);
        let _ = host.udp_open(flow(1), SocketAddr::V4(REMOTE), SourceAddr::Outbound);
    }

    #[test]
    fn scenario_clock_only_moves_in_advance() {
        let mut scenario = Scenario::new();
        assert_eq!(scenario.now(), START);
        scenario.guest_sends(&Guest::default().arp_request(Ipv4Addr::new(10, 0, 2, 77)));
        assert_eq!(scenario.now(), START);
        scenario.advance(smoltcp::time::Duration::from_secs(3));
        assert_eq!(scenario.elapsed(), smoltcp::time::Duration::from_secs(3));
    }
}

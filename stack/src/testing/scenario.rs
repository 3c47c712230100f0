//! The harness: a stack, a simulated host and a guest on a virtual clock.

use super::clock::{self, EventLoop};
use super::frames::{Guest, TcpSegment};
use super::guest_tcp::GuestTcp;
use super::host::{SimHost, SocketKind};
use super::parse::{parse, Parsed};
use crate::config::Config;
use crate::io::{FlowId, HostError, HostEvent};
use crate::stack::Stack;
use crate::stats::Stats;
use crate::Offload;
use core::net::{IpAddr, SocketAddr};
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

/// The one item of `items` (frames drained, host calls...); panics naming `what` unless
/// there is exactly one.
pub fn the_only<T: core::fmt::Debug>(mut items: Vec<T>, what: &str) -> T {
    assert_eq!(items.len(), 1, "expected exactly one {what}, got {items:?}");
    items.remove(0)
}

/// The one frame of `frames`, which must be a TCP segment.
pub fn the_only_segment(frames: Vec<Parsed>, what: &str) -> TcpSegment {
    match the_only(frames, what) {
        Parsed::Tcp { tcp, .. } => tcp,
        other => panic!("expected {what}, got {other:?}"),
    }
}

/// Where the virtual clock starts (not zero, so "time zero" bugs show).
pub const START: Instant = Instant::from_millis_const(1_000_000);
const SEED: u64 = 0x5eed_0f51_ab00;
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
        clock::advance(self, by);
    }

    /// Frames the stack sent to the guest since the last drain, decoded (IPv4 and IPv6
    /// alike, see [`parse`]). Panics if a
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
        clock::settle(self);
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

    /// The guest pings `target` (either family); the stack must answer with exactly one
    /// frame, the echo reply from `target` with the same identifier, sequence number and
    /// data.
    pub fn assert_echo_reply(
        &mut self,
        target: impl Into<IpAddr>,
        ident: u16,
        seq_no: u16,
        data: &[u8],
    ) {
        let target = target.into();
        let guest = self.guest;
        self.guest_sends(&guest.echo_request(target, ident, seq_no, data));
        let expected = Parsed::echo_reply(target, guest.addr_for(target), ident, seq_no, data);
        assert_eq!(
            self.drain(),
            [expected],
            "exactly one echo reply from {target}"
        );
    }

    // ---- TCP conveniences ----

    /// A guest connection from `local_port` to `remote` (IPv4 or IPv6) with a fixed,
    /// port-derived ISN (not sent yet).
    pub fn guest_tcp(&self, local_port: u16, remote: impl Into<SocketAddr>) -> GuestTcp {
        let isn = u32::from(local_port).wrapping_mul(0x9e37_79b9);
        GuestTcp::new(&self.guest, local_port, remote, isn)
    }

    /// The whole happy handshake: SYN, exactly one host connect, the connect completes,
    /// SYN-ACK, ACK. Returns the connection and its host flow.
    pub fn open_tcp(
        &mut self,
        local_port: u16,
        remote: impl Into<SocketAddr>,
    ) -> (GuestTcp, FlowId) {
        let remote = remote.into();
        let mut conn = self.guest_tcp(local_port, remote);
        let (flow, _) = self.syn_and_connect(&mut conn);
        self.complete_connect(flow);
        let others = self.exchange(std::slice::from_mut(&mut conn));
        assert!(
            conn.established(),
            "no SYN-ACK from {remote} after the host connect completed; other frames: {others:?}"
        );
        (conn, flow)
    }

    /// The guest sends `conn`'s SYN; the stack must ask the host for exactly one connect,
    /// whose flow and remote address this returns.
    pub fn syn_and_connect(&mut self, conn: &mut GuestTcp) -> (FlowId, SocketAddr) {
        let before = self.host.connects().len();
        self.guest_sends(&conn.syn());
        let connects = self.host.connects();
        assert_eq!(
            connects.len(),
            before + 1,
            "a SYN to {} should start exactly one host connect",
            conn.remote
        );
        connects[before]
    }

    /// Lets frames and time flow until `done`: each round an [`Scenario::exchange`] (no
    /// frame may go unclaimed) and 10 ms of virtual time, at most 30 virtual seconds;
    /// panics naming `what` if `done` never holds.
    pub fn run_until(
        &mut self,
        conns: &mut [GuestTcp],
        what: &str,
        done: impl Fn(&Scenario, &[GuestTcp]) -> bool,
    ) {
        // 10 ms each: 30 virtual seconds.
        const ROUNDS: usize = 3_000;
        for _ in 0..ROUNDS {
            let unclaimed = self.exchange(conns);
            assert!(
                unclaimed.is_empty(),
                "unexpected frames while waiting for {what}: {unclaimed:?}"
            );
            if done(self, conns) {
                return;
            }
            self.advance(Duration::from_millis(10));
        }
        panic!("{what} did not happen within 30 virtual seconds");
    }

    /// The host peer of `flow` sends `data` to `conn`; exchanges, with 10 ms of virtual
    /// time between rounds for retransmission and window timers, until `conn` received
    /// as many bytes or a second passed. Frames of others are ignored; the caller checks
    /// what arrived.
    pub fn download(&mut self, conn: &mut GuestTcp, flow: FlowId, data: &[u8]) {
        // 10 ms each: one virtual second.
        const ROUNDS: usize = 100;
        self.peer_send(flow, data);
        for _ in 0..ROUNDS {
            self.exchange(std::slice::from_mut(conn));
            if conn.received().len() >= data.len() {
                return;
            }
            self.advance(Duration::from_millis(10));
        }
    }

    /// Delivers the stack's frames to the connections they belong to and lets each
    /// connection ACK what it received, until the stack has nothing more to say (the
    /// clock does not move). Returns the frames no connection claimed.
    pub fn exchange(&mut self, conns: &mut [GuestTcp]) -> Vec<Parsed> {
        let index: HashMap<(u16, SocketAddr), usize> = conns
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
                    let remote = SocketAddr::new(ip.src_addr, tcp.src_port);
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

/// The scenario's clock is the one every simulation plays ([`clock`]), with the
/// trait's default bound on deadlines per advance.
impl EventLoop for Scenario {
    fn clock(&mut self) -> (&Stack, &mut Instant) {
        (&self.stack, &mut self.now)
    }

    /// Polls once and writes every frame to the tap, which answers with `tap_answer`
    /// (only a `Sent` frame reaches the guest).
    fn poll_once(&mut self) {
        self.stack.poll(self.now, &mut self.host);
        let (tap, answer) = (&mut self.tap, self.tap_answer);
        self.stack.poll_transmit(|frame, offload| {
            if answer == crate::TapWrite::Sent {
                tap.push((frame.to_vec(), offload));
            }
            answer
        });
    }
}

//! TCP NAT: each guest connection is terminated by its own smoltcp socket, and its bytes
//! are carried over a host TCP socket.
//!
//! smoltcp finds a socket by scanning its whole `SocketSet` and polls every socket of an
//! interface, so one interface for all flows would cost O(flows) per packet. Instead every
//! flow has a tiny `Interface` (medium IP, one address: the remote the guest dialled) with
//! a one-socket set; our own 4-tuple map picks the flow and the flow table's timer heap
//! decides when to poll it. Ethernet stays ours (link/), so no neighbour cache is used.
//!
//! Life of a flow: the guest's SYN creates the flow and a *paused* listening socket
//! (`pause_synack`), and asks the host for a non-blocking connect. Only when the host
//! connect succeeds is the SYN-ACK released; refusal becomes a RST, unreachability an ICMP
//! error. Then bytes are pumped both ways with backpressure (we read the host only while
//! the smoltcp send buffer has room, and the guest's window closes while the host is not
//! writable). FINs are carried independently in each direction (half-close).
//!
//! With tap offloads (`TcpParams::offload`) the flow's device segments and checksums for
//! the guest's kernel; how, and the detour IPv6 needs, is in [`super::device`].

use crate::io::{CloseMode, FlowId, HostError, HostEvent, HostIo};
use crate::link::TxQueue;
use crate::nat::device::{syn_mss, FlowDevice};
use crate::nat::{bare_segment, FlowCounters, FlowKey, Quote};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{Socket, SocketBuffer, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetProtocol, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint, TcpControl, TcpRepr,
    TcpSeqNumber,
};

/// How long a guest may leave a forwarded connection's SYN unanswered.
const GUEST_CONNECT_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(20);

/// What the stack should do with a flow after it was driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it; poll it again at `due` (if any).
    Keep { due: Option<Instant> },
    /// Tear it down and close the host socket this way.
    Remove(CloseMode),
    /// The host connect failed: tell the guest (see [`TcpFlow::syn_quote`]) and tear down.
    Refused(HostError),
    /// A lifetime ran out: the guest was sent a RST; abort the host side too.
    Expired(Lifetime),
}

/// The bounded lifetimes of a flow whose guest stopped answering (see [`TcpLifetimes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// The guest never acknowledged our SYN-ACK.
    SynReceived,
    /// Data (or our FIN) waited that long for the guest's acknowledgment, without a
    /// segment from the guest.
    User,
    /// FIN-WAIT-2: the guest acknowledged our FIN, then said nothing for that long.
    FinWait2,
}

/// How long a flow waits on a guest that stopped answering. Idle established flows have no
/// lifetime: only a flow that waits for the guest does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLifetimes {
    /// From the SYN-ACK's release (the host connect succeeded) to the guest's ACK.
    pub syn_received: Duration,
    /// Data or a FIN unacknowledged and no segment from the guest (TCP_USER_TIMEOUT).
    pub user: Duration,
    /// No segment from the guest in FIN-WAIT-2 (tcp_fin_timeout).
    pub fin_wait2: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the host connect; the SYN-ACK is held back.
    Connecting {
        deadline: Instant,
    },
    Open,
}

/// How long the ACK of a guest segment may wait for data of ours to ride on.
///
/// Why: in a request/response exchange the host's reply usually follows the request within
/// tens of microseconds; an ACK sent at once is a second frame (a second tap write, and a
/// wake-up of the guest) per round trip, where the reply would have carried it. As Linux
/// does, only a lone small segment is delayed: once more than one MSS is unacknowledged
/// (every bulk burst, any offloaded large segment; smoltcp, with our patch 0003 for a
/// single large segment) the ACK goes at once, so bulk transfers are not slowed.
/// The cost is bounded by this delay: a guest that holds back its next small segment until
/// the previous one is ACKed (Nagle) and a host that waits for it stall that long, as with
/// libslirp, whose delayed ACK waits for its 2 ms fast timer; Linux's minimum is 40 ms.
pub const ACK_DELAY: Duration = Duration::from_millis(1);

/// The MSS of a peer that announced none (RFC 9293; smoltcp assumes the same).
const DEFAULT_GUEST_MSS: usize = 536;

/// Sizes and knobs of a TCP flow.
#[derive(Debug, Clone, Copy)]
pub struct TcpParams {
    pub mtu: usize,
    /// The tap segments and checksums TCP for us (see the module comment).
    pub offload: bool,
    pub rx_buffer: usize,
    pub tx_buffer: usize,
    pub random_seed: u64,
    /// When the host connect is given up on.
    pub connect_deadline: Instant,
    pub lifetimes: TcpLifetimes,
}

pub struct TcpFlow {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    mtu: usize,
    offload: bool,
    /// What this connection has seen so far; a renewed flow starts a new one.
    conn: Connection,
    /// In TIME-WAIT and accounted as such by the stack: its buffers no longer count in
    /// the memory budget, and it may be evicted when the flow table is full.
    pub lingering: bool,
    pub counters: FlowCounters,
}

/// The state of one connection, apart from the flow's interface and socket (which a spare
/// flow keeps for the next connection): all of it starts afresh in [`Connection::new`], so
/// a renewed flow cannot carry anything over from its last connection.
struct Connection {
    phase: Phase,
    ethertype: EthernetProtocol,
    /// The MSS of the guest's SYN or SYN-ACK; kept only where smoltcp's is not enough.
    guest_mss: usize,
    /// The guest's SYN (passive flows only), quoted if the host connect fails.
    syn_quote: Option<Quote>,
    /// An active open towards the guest (port forward) has not been answered yet.
    guest_connect_pending: bool,
    /// Readiness we have seen and not yet used up (edge-triggered host events).
    host_readable: bool,
    host_writable: bool,
    /// The poller reported a hang-up or an error on the host socket: from now on reads go
    /// on until EOF, an error or `WouldBlock`, not only until a short read (see `pump`).
    host_read_closed: bool,
    /// The host peer sent EOF; a FIN is queued to the guest.
    host_eof: bool,
    /// The guest's FIN has been passed on as a host half-close.
    host_write_shut: bool,
    /// The host socket was already closed (e.g. while we linger in TIME-WAIT).
    host_closed: bool,
    /// The last drive wanted to send but the transmit queue was full.
    starved: bool,
    /// Bytes the guest sent (and smoltcp acknowledged) that the host has not taken yet,
    /// moved out of the socket when smoltcp could drop them (TIME-WAIT ends in a reset of
    /// the socket, buffers included). Empty except while such a flow drains.
    backlog: Vec<u8>,
    /// The guest's FIN arrived (sticky: smoltcp's state moves on to CLOSED).
    guest_fin: bool,
    /// When the guest last sent a segment of this flow.
    last_guest_segment: Instant,
    /// Since when data or our FIN has waited for the guest's acknowledgment.
    outstanding_since: Option<Instant>,
    /// A passive flow's SYN-ACK went out at this time and is not acknowledged yet.
    syn_ack_since: Option<Instant>,
    lifetimes: TcpLifetimes,
}

impl Connection {
    fn new(
        now: Instant,
        phase: Phase,
        ethertype: EthernetProtocol,
        lifetimes: TcpLifetimes,
    ) -> Self {
        Connection {
            phase,
            ethertype,
            guest_mss: DEFAULT_GUEST_MSS,
            syn_quote: None,
            guest_connect_pending: false,
            host_readable: false,
            host_writable: false,
            host_read_closed: false,
            host_eof: false,
            host_write_shut: false,
            host_closed: false,
            starved: false,
            backlog: Vec::new(),
            guest_fin: false,
            last_guest_segment: now,
            outstanding_since: None,
            syn_ack_since: None,
            lifetimes,
        }
    }
}

impl TcpFlow {
    /// A flow for a guest SYN `syn_packet` (the whole IP packet) on `key`: the socket
    /// listens as the remote the guest dialled with the SYN-ACK paused, and has seen the SYN.
    /// Returns `None` when smoltcp does not take the SYN (it then answered it itself).
    pub fn open(
        now: Instant,
        key: &FlowKey,
        syn_packet: &[u8],
        syn_quote: Quote,
        params: TcpParams,
        tx: &mut TxQueue,
        spare: Option<Box<TcpFlow>>,
    ) -> Option<Box<TcpFlow>> {
        let phase = Phase::Connecting {
            deadline: params.connect_deadline,
        };
        let guest = IpAddress::from(key.guest.ip());
        let remote = (IpAddress::from(key.remote.ip()), key.remote.port());
        let mut flow = TcpFlow::new(now, remote.0, guest, params, phase, tx, spare);
        flow.conn.syn_quote = Some(syn_quote);
        flow.learn_guest_mss(syn_packet);
        let socket = flow.sockets.get_mut::<Socket>(flow.handle);
        socket.pause_synack(true);
        let endpoint = IpListenEndpoint {
            addr: Some(remote.0),
            port: remote.1,
        };
        socket.listen(endpoint).ok()?;
        let mut device = flow.device(Some(syn_packet), tx);
        flow.iface.poll(now, &mut device, &mut flow.sockets);
        if flow.socket().state() != State::SynReceived {
            return None;
        }
        Some(flow)
    }

    /// A flow for a connection a host client made to a port forward: the socket connects to
    /// `guest` as if from `local` (how the guest sees the client). The host socket is
    /// already connected, so bytes flow as soon as the guest accepts.
    pub fn connect_to_guest(
        now: Instant,
        local: (IpAddress, u16),
        guest: (IpAddress, u16),
        params: TcpParams,
        tx: &mut TxQueue,
        spare: Option<Box<TcpFlow>>,
    ) -> Option<Box<TcpFlow>> {
        let mut flow = TcpFlow::new(now, local.0, guest.0, params, Phase::Open, tx, spare);
        flow.conn.host_writable = true;
        flow.conn.guest_connect_pending = true;
        let socket = flow.sockets.get_mut::<Socket>(flow.handle);
        // A guest that never answers (nothing listening, firewall drop) must not keep the
        // host client waiting forever; cleared once the guest answers.
        socket.set_timeout(Some(GUEST_CONNECT_TIMEOUT));
        socket.connect(flow.iface.context(), guest, local).ok()?;
        let mut device = flow.device(None, tx);
        flow.iface.poll(now, &mut device, &mut flow.sockets);
        Some(flow)
    }

    /// An interface answering as `local`, routing everything else to `guest`, with one
    /// socket (neither listening nor connected yet). A `spare` flow (see
    /// [`TcpFlow::is_reusable`]) is renewed instead of building one: a short connection then
    /// costs no allocation, and above all no mapping and unmapping of its two buffers.
    fn new(
        now: Instant,
        local: IpAddress,
        guest: IpAddress,
        params: TcpParams,
        phase: Phase,
        tx: &mut TxQueue,
        spare: Option<Box<TcpFlow>>,
    ) -> Box<TcpFlow> {
        let ethertype = match local {
            IpAddress::Ipv4(_) => EthernetProtocol::Ipv4,
            IpAddress::Ipv6(_) => EthernetProtocol::Ipv6,
        };
        // A spare's interface keeps the device capabilities it was built with, and with
        // offloads those differ by family (an IPv6 flow's interface has the largest MTU,
        // see the module comment): renewed for the other family, an IPv4 flow would send
        // segments of the guest's MSS, past our MTU, with no segment size for the tap.
        // Such a spare is dropped instead (found by the `frames` fuzz target).
        let detour = |ethertype| params.offload && ethertype == EthernetProtocol::Ipv6;
        if let Some(mut flow) =
            spare.filter(|flow| detour(flow.conn.ethertype) == detour(ethertype))
        {
            flow.renew(now, local, guest, params, phase, ethertype);
            return flow;
        }
        let mut device = FlowDevice::new(
            None,
            tx,
            params.mtu,
            params.offload,
            ethertype,
            DEFAULT_GUEST_MSS,
        );
        let mut config = IfaceConfig::new(HardwareAddress::Ip);
        config.random_seed = params.random_seed;
        let mut iface = Interface::new(config, &mut device, now);
        let prefix = match local {
            IpAddress::Ipv4(_) => 32,
            IpAddress::Ipv6(_) => 128,
        };
        iface.update_ip_addrs(|addrs| {
            // One address cannot overflow the interface's address list.
            let _ = addrs.push(IpCidr::new(local, prefix));
        });
        // Everything not ours goes back out of this one interface towards the guest.
        let routed = match guest {
            IpAddress::Ipv4(addr) => iface.routes_mut().add_default_ipv4_route(addr).is_ok(),
            IpAddress::Ipv6(addr) => iface.routes_mut().add_default_ipv6_route(addr).is_ok(),
        };
        debug_assert!(routed);

        let mut socket = Socket::new(
            SocketBuffer::new(vec![0u8; params.rx_buffer]),
            SocketBuffer::new(vec![0u8; params.tx_buffer]),
        );
        // The guest is on a virtual wire: batching small writes (Nagle) only adds latency.
        socket.set_nagle_enabled(false);
        // The ACK of a lone small segment waits a little for the host's reply to carry it
        // (see `ACK_DELAY`); more than one MSS unacknowledged is ACKed at once.
        socket.set_ack_delay(Some(ACK_DELAY));
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        Box::new(TcpFlow {
            iface,
            sockets,
            handle,
            mtu: params.mtu,
            offload: params.offload,
            conn: Connection::new(now, phase, ethertype, params.lifetimes),
            lingering: false,
            counters: FlowCounters::new(now),
        })
    }

    /// Can this (finished) flow be renewed for another connection with `params`? Only a
    /// socket that closed normally qualifies (one still in TIME-WAIT would need a RST).
    pub fn is_reusable(&self, params_rx: usize, params_tx: usize) -> bool {
        let socket = self.socket();
        socket.state() == State::Closed
            && socket.recv_capacity() == params_rx
            && socket.send_capacity() == params_tx
    }

    /// Make a finished flow as new: its interface answers as `local` towards `guest`, its
    /// socket has every setting a new one gets (smoltcp's `listen`/`connect` reset the
    /// rest, buffers included, when the caller opens it).
    fn renew(
        &mut self,
        now: Instant,
        local: IpAddress,
        guest: IpAddress,
        params: TcpParams,
        phase: Phase,
        ethertype: EthernetProtocol,
    ) {
        let prefix = match local {
            IpAddress::Ipv4(_) => 32,
            IpAddress::Ipv6(_) => 128,
        };
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            let _ = addrs.push(IpCidr::new(local, prefix));
        });
        self.iface.routes_mut().update(|routes| routes.clear());
        let routed = match guest {
            IpAddress::Ipv4(addr) => self.iface.routes_mut().add_default_ipv4_route(addr).is_ok(),
            IpAddress::Ipv6(addr) => self.iface.routes_mut().add_default_ipv6_route(addr).is_ok(),
        };
        debug_assert!(routed);
        let socket = self.sockets.get_mut::<Socket>(self.handle);
        socket.set_timeout(None);
        socket.pause_synack(false);
        // A fresh controller: the last connection's window says nothing about this one.
        let congestion = socket.congestion_control();
        socket.set_congestion_control(congestion);
        self.conn = Connection::new(now, phase, ethertype, params.lifetimes);
        // The interface keeps the device capabilities it was built with (MTU, offload);
        // both come from the stack's config, the same for every flow.
        debug_assert_eq!((self.mtu, self.offload), (params.mtu, params.offload));
        self.mtu = params.mtu;
        self.offload = params.offload;
        self.lingering = false;
        self.counters = FlowCounters::new(now);
    }

    fn device<'a>(&self, rx: Option<&'a [u8]>, tx: &'a mut TxQueue) -> FlowDevice<'a> {
        FlowDevice::new(
            rx,
            tx,
            self.mtu,
            self.offload,
            self.conn.ethertype,
            self.conn.guest_mss,
        )
    }

    /// Buffer capacity this flow reserves, both ways (for the stack's memory budget).
    pub fn buffer_bytes(&self) -> usize {
        let socket = self.socket();
        socket.recv_capacity() + socket.send_capacity()
    }

    /// Remember the MSS of the guest's SYN or SYN-ACK where we need it ourselves (IPv6
    /// with offloads, see the module comment).
    fn learn_guest_mss(&mut self, packet: &[u8]) {
        if self.offload && self.conn.ethertype == EthernetProtocol::Ipv6 {
            if let Some(mss) = syn_mss(packet) {
                self.conn.guest_mss = usize::from(mss);
            }
        }
    }

    fn socket(&self) -> &Socket<'static> {
        self.sockets.get::<Socket>(self.handle)
    }

    pub fn state(&self) -> State {
        self.socket().state()
    }

    pub fn is_connecting(&self) -> bool {
        matches!(self.conn.phase, Phase::Connecting { .. })
    }

    pub fn is_starved(&self) -> bool {
        self.conn.starved
    }

    /// The guest's SYN, for the refusal when the host connect fails.
    pub fn syn_quote(&self) -> Option<&Quote> {
        self.conn.syn_quote.as_ref()
    }

    /// The guest's SYN as a segment (ports and sequence number are in the quoted 8 bytes).
    pub fn syn_segment(&self) -> TcpRepr<'static> {
        let head = self
            .conn
            .syn_quote
            .as_ref()
            .map_or(&[][..], |quote| quote.head());
        let word = |at: usize| {
            head.get(at..at + 2)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
        };
        let seq = head
            .get(4..8)
            .map_or(0, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        bare_segment(word(0), word(2), TcpControl::Syn, TcpSeqNumber(seq), None)
    }

    /// Take in a later segment of this flow from the guest (the whole IP packet) without
    /// answering yet: moving its data to the host and sending the ACK wait for
    /// [`TcpFlow::handle_timer`], which the stack calls once after a whole batch of frames,
    /// so a burst of segments costs one host write and one cumulative ACK instead of one each. Immediate answers smoltcp gives
    /// while processing (a RST, a challenge ACK) still go out now.
    pub fn take_segment(&mut self, now: Instant, packet: &[u8], tx: &mut TxQueue) {
        self.learn_guest_mss(packet);
        self.conn.last_guest_segment = now;
        let mut device = self.device(Some(packet), tx);
        self.iface
            .poll_ingress_single(now, &mut device, &mut self.sockets);
    }

    /// The host socket became readable/writable or reported an error.
    pub fn handle_host_event(
        &mut self,
        now: Instant,
        event: HostEvent,
        tx: &mut TxQueue,
        host: &mut impl HostIo,
    ) -> Verdict {
        let HostEvent {
            flow: id,
            readable,
            writable,
            error,
            read_closed,
        } = event;
        if let Phase::Connecting { .. } = self.conn.phase {
            if !(writable || error) {
                return self.verdict(now, host, id);
            }
            // A failed connect always comes with an error (Linux sets EPOLLERR with the
            // socket error), so a plain writable event means connected: SO_ERROR is asked
            // only when there is one to read, sparing a system call per connection.
            if error {
                if let Some(err) = host.take_error(id) {
                    return Verdict::Refused(err);
                }
            }
            if !writable {
                return self.verdict(now, host, id);
            }
            self.conn.phase = Phase::Open;
            self.conn.syn_ack_since = Some(now);
            self.sockets
                .get_mut::<Socket>(self.handle)
                .pause_synack(false);
        }
        // An error or hang-up shows up as a failing (or EOF) read, which the pump handles.
        self.conn.host_readable |= readable || error || read_closed;
        self.conn.host_read_closed |= read_closed || error;
        self.conn.host_writable |= writable;
        self.drive(now, None, id, tx, host)
    }

    /// A timer of this flow expired, or the transmit queue has room again.
    pub fn handle_timer(
        &mut self,
        now: Instant,
        id: FlowId,
        tx: &mut TxQueue,
        host: &mut impl HostIo,
    ) -> Verdict {
        if let Phase::Connecting { deadline } = self.conn.phase {
            if now >= deadline {
                return Verdict::Refused(HostError::TimedOut);
            }
        }
        self.drive(now, None, id, tx, host)
    }

    fn drive(
        &mut self,
        now: Instant,
        rx: Option<&[u8]>,
        id: FlowId,
        tx: &mut TxQueue,
        host: &mut impl HostIo,
    ) -> Verdict {
        let mut device = self.device(rx, tx);
        if self.conn.phase == Phase::Open {
            if let Err(err) = self.pump(id, host) {
                log::debug!("{id:?}: host socket failed: {err}");
                self.sockets.get_mut::<Socket>(self.handle).abort();
                self.iface.poll(now, &mut device, &mut self.sockets);
                return Verdict::Remove(CloseMode::Abort);
            }
        }
        self.iface.poll(now, &mut device, &mut self.sockets);
        if self.conn.phase == Phase::Open {
            // What the guest just sent can go to the host now, and the window it frees
            // (or the host data just read) wants to go out in the same turn.
            let before = (self.socket().recv_queue(), self.socket().send_queue());
            if let Err(err) = self.pump(id, host) {
                log::debug!("{id:?}: host socket failed: {err}");
                self.sockets.get_mut::<Socket>(self.handle).abort();
                self.iface.poll(now, &mut device, &mut self.sockets);
                return Verdict::Remove(CloseMode::Abort);
            }
            if before != (self.socket().recv_queue(), self.socket().send_queue()) {
                self.iface.poll(now, &mut device, &mut self.sockets);
            }
            if let Some(lifetime) = self.expired(now) {
                log::debug!("{id:?}: {lifetime:?} lifetime over; resetting both sides");
                self.sockets.get_mut::<Socket>(self.handle).abort();
                self.iface.poll(now, &mut device, &mut self.sockets);
                return Verdict::Expired(lifetime);
            }
        }
        self.conn.starved = device.starved;
        self.verdict(now, host, id)
    }

    /// Note what the guest owes us, and say which lifetime ran out, if one did.
    fn expired(&mut self, now: Instant) -> Option<Lifetime> {
        let state = self.socket().state();
        if state != State::SynReceived {
            self.conn.syn_ack_since = None;
        }
        let outstanding = self.socket().send_queue() > 0
            || matches!(state, State::FinWait1 | State::Closing | State::LastAck);
        if !outstanding {
            self.conn.outstanding_since = None;
        } else if self.conn.outstanding_since.is_none() {
            self.conn.outstanding_since = Some(now);
        }
        let (deadline, lifetime) = self.lifetime_deadline(state)?;
        (now >= deadline).then_some(lifetime)
    }

    /// The next lifetime deadline of this flow in `state`, if it waits for the guest.
    fn lifetime_deadline(&self, state: State) -> Option<(Instant, Lifetime)> {
        let lifetimes = self.conn.lifetimes;
        if let Some(since) = self.conn.syn_ack_since {
            return Some((since + lifetimes.syn_received, Lifetime::SynReceived));
        }
        if let Some(since) = self.conn.outstanding_since {
            let since = since.max(self.conn.last_guest_segment);
            return Some((since + lifetimes.user, Lifetime::User));
        }
        (state == State::FinWait2).then_some((
            self.conn.last_guest_segment + lifetimes.fin_wait2,
            Lifetime::FinWait2,
        ))
    }

    /// Guest bytes still on their way to the host (in the socket or the backlog), while
    /// the host socket can take them.
    fn delivering(&self) -> bool {
        !self.conn.host_write_shut
            && !self.conn.host_closed
            && (!self.conn.backlog.is_empty() || self.socket().recv_queue() > 0)
    }

    /// In TIME-WAIT (or CLOSED) with nothing left for the host: only re-ACKs a lost final
    /// FIN from now on. A new SYN on its 4-tuple may replace it.
    pub fn is_finished(&self) -> bool {
        matches!(self.state(), State::TimeWait | State::Closed) && !self.delivering()
    }

    /// In TIME-WAIT with the host socket closed: the stack may account it as lingering.
    pub fn is_time_wait_only(&self) -> bool {
        self.state() == State::TimeWait && self.conn.host_closed
    }

    /// Move bytes between the smoltcp socket and the host socket until one side blocks.
    fn pump(&mut self, id: FlowId, host: &mut impl HostIo) -> Result<(), HostError> {
        let socket = self.sockets.get_mut::<Socket>(self.handle);
        let state = socket.state();
        if matches!(
            state,
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait
        ) {
            self.conn.guest_fin = true;
        }
        // Guest → host. Text after the guest's FIN has nowhere to go once the host side is
        // shut down for writing (RFC 9293, CLOSE-WAIT: "ignore the segment text").
        if self.conn.host_write_shut && socket.can_recv() {
            let _ = socket.recv(|buf| (buf.len(), ()));
        }
        // What smoltcp acknowledged must reach the host even when the socket itself ends
        // (TIME-WAIT's timer resets it, buffers and all): move it out first. Rare (the
        // host closed first and reads slowly), so a plain Vec does.
        if matches!(state, State::TimeWait | State::Closed) && socket.recv_queue() > 0 {
            while let Ok(moved) = socket.recv(|buf| {
                self.conn.backlog.extend_from_slice(buf);
                (buf.len(), buf.len())
            }) {
                if moved == 0 {
                    break;
                }
            }
        }
        while self.conn.host_writable && !self.conn.host_write_shut && !self.conn.backlog.is_empty()
        {
            match host.tcp_send(id, &self.conn.backlog) {
                Ok(n) => {
                    self.counters.from_guest += n as u64;
                    self.conn.backlog.drain(..n);
                }
                Err(HostError::WouldBlock) => self.conn.host_writable = false,
                Err(err) => return Err(err),
            }
        }
        while self.conn.host_writable
            && !self.conn.host_write_shut
            && self.conn.backlog.is_empty()
            && socket.can_recv()
        {
            let sent = socket.recv(|buf| match host.tcp_send(id, buf) {
                Ok(n) => (n, Ok(n)),
                Err(err) => (0, Err(err)),
            });
            match sent {
                Ok(Ok(n)) => self.counters.from_guest += n as u64,
                Ok(Err(HostError::WouldBlock)) => self.conn.host_writable = false,
                Ok(Err(err)) => return Err(err),
                Err(_) => break,
            }
        }
        // The guest's FIN goes on once everything before it has.
        let all_sent = socket.recv_queue() == 0 && self.conn.backlog.is_empty();
        if self.conn.guest_fin && !self.conn.host_write_shut && all_sent && !self.conn.host_closed {
            host.tcp_shutdown_write(id);
            self.conn.host_write_shut = true;
        }
        // Host → guest.
        //
        // A read that returns less than it was offered found the socket's receive queue
        // empty, and the edge-triggered poller reports every later arrival as a new event
        // (Linux wakes the poller on each segment queued, FIN included), so the read that
        // would only say `WouldBlock` is skipped: one `recv` per reply instead of two.
        // Not once the poller reported a hang-up or an error: EOF or the error may already
        // be queued behind the data just read, and no new event would announce them.
        while self.conn.host_readable && !self.conn.host_eof && socket.can_send() {
            let received = socket.send(|buf| match host.tcp_recv(id, buf) {
                Ok(n) => (n, Ok((n, buf.len()))),
                Err(err) => (0, Err(err)),
            });
            match received {
                Ok(Ok((0, _))) => {
                    self.conn.host_eof = true;
                    // Queues our FIN behind the data already buffered.
                    socket.close();
                }
                Ok(Ok((n, offered))) => {
                    self.counters.to_guest += n as u64;
                    if n < offered && !self.conn.host_read_closed {
                        self.conn.host_readable = false;
                    }
                }
                Ok(Err(HostError::WouldBlock)) => self.conn.host_readable = false,
                Ok(Err(err)) => return Err(err),
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn verdict(&mut self, now: Instant, host: &mut impl HostIo, id: FlowId) -> Verdict {
        let state = self.socket().state();
        if self.conn.guest_connect_pending && state != State::SynSent {
            self.conn.guest_connect_pending = false;
            self.sockets
                .get_mut::<Socket>(self.handle)
                .set_timeout(None);
        }
        match self.conn.phase {
            Phase::Connecting { deadline } => {
                if state != State::SynReceived {
                    // The guest gave up (RST) before the host answered.
                    return Verdict::Remove(CloseMode::Abort);
                }
                Verdict::Keep {
                    due: Some(deadline),
                }
            }
            Phase::Open if self.conn.guest_connect_pending && state == State::SynSent => {
                Verdict::Keep {
                    due: self.iface.poll_at(now, &self.sockets),
                }
            }
            Phase::Open => match state {
                // The guest finished (its FIN is acknowledged) but the host has not taken
                // all it sent: wait for the host to become writable.
                State::Closed if self.delivering() => Verdict::Keep { due: None },
                // Listen: a RST in SYN-RECEIVED sends a listening socket back to LISTEN.
                State::Closed | State::Listen => {
                    let graceful = self.conn.host_eof && self.conn.host_write_shut;
                    Verdict::Remove(if graceful {
                        CloseMode::Graceful
                    } else {
                        CloseMode::Abort
                    })
                }
                State::TimeWait => {
                    // Both directions are finished; only smoltcp's TIME-WAIT remains, to
                    // re-ACK a retransmitted FIN. The host socket is not needed for that,
                    // once it has taken everything the guest sent.
                    if !self.conn.host_closed && !self.delivering() {
                        host.close(id, CloseMode::Graceful);
                        self.conn.host_closed = true;
                    }
                    Verdict::Keep {
                        due: self.iface.poll_at(now, &self.sockets),
                    }
                }
                _ => {
                    let lifetime = self.lifetime_deadline(state).map(|(at, _)| at);
                    let smoltcp = self.iface.poll_at(now, &self.sockets);
                    Verdict::Keep {
                        due: [smoltcp, lifetime].into_iter().flatten().min(),
                    }
                }
            },
        }
    }
}

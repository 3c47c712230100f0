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
//! With tap offloads (`TcpParams::offload`) the flow's device tells smoltcp it can segment
//! TCP (smoltcp's `segmentation-offload`): smoltcp keeps the guest's MSS and our MTU as the
//! segment size, but may hand out one packet of up to 64 KiB with that size as
//! `PacketMeta::segmentation_offload_size`, and leaves the TCP checksum to the device. Our
//! device then writes the pseudo-header sum into the checksum field and describes the frame
//! ([`Offload`]): the guest's kernel completes the checksum and cuts the segment.
//!
//! IPv6 needs a detour: smoltcp 0.14 implements segmentation offload for IPv4 only (on
//! IPv6 it drops any packet larger than the interface's IP MTU and never passes the
//! segment size on). An IPv6 flow's interface therefore gets the largest MTU instead, so
//! smoltcp sends up to 64 KiB cut to nothing smaller than the guest's MSS; we remember the
//! MSS of the guest's SYN (or SYN-ACK) and derive the segment size from it and the real
//! MTU ([`V6Offload`]); and the MSS smoltcp announces from the large MTU in its own SYN is
//! cut back to the real MTU's on the way out ([`clamp_syn_mss`]).

use crate::io::{CloseMode, FlowId, HostError, HostEvent, HostIo};
use crate::link::tx::{Gso, Offload, PartialChecksum, ETHERNET_HEADER_LEN};
use crate::link::TxQueue;
use crate::nat::{checksum_caps, FlowCounters, Quote};
use core::num::NonZeroUsize;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{
    Checksum, Device, DeviceCapabilities, Medium, PacketMeta, RxToken, SegmentationCapabilities,
    TxToken,
};
use smoltcp::socket::tcp::{Socket, SocketBuffer, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    checksum, EthernetProtocol, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint, IpProtocol,
    IpVersion, Ipv4Packet, Ipv6Packet, TcpControl, TcpOption, TcpPacket, TcpRepr, TcpSeqNumber,
    IPV6_HEADER_LEN,
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

/// Largest IP packet we let smoltcp build for the guest's kernel to segment: the most an
/// IPv4 header's total length can say (IPv6 is held to the same for simplicity).
const MAX_OFFLOAD_PACKET: usize = 65_535;

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

/// Offset of the checksum field in a TCP header.
const TCP_CHECKSUM_OFFSET: u16 = 16;

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
    phase: Phase,
    mtu: usize,
    offload: bool,
    /// The MSS of the guest's SYN or SYN-ACK; kept only where smoltcp's is not enough.
    guest_mss: usize,
    ethertype: EthernetProtocol,
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
    /// In TIME-WAIT and accounted as such by the stack: its buffers no longer count in
    /// the memory budget, and it may be evicted when the flow table is full.
    pub lingering: bool,
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
    pub counters: FlowCounters,
}

/// The smoltcp device of one flow: at most one packet in (the one being handled), and
/// packets out go straight into the stack's transmit queue behind an Ethernet header.
struct FlowDevice<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut TxQueue,
    mtu: usize,
    offload: bool,
    /// Set for IPv6 flows with offloads (then `offload` is too).
    v6: Option<V6Offload>,
    ethertype: EthernetProtocol,
    starved: bool,
}

struct FlowRxToken<'a>(&'a [u8]);

impl RxToken for FlowRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

struct FlowTxToken<'a> {
    tx: &'a mut TxQueue,
    ethertype: EthernetProtocol,
    offload: bool,
    v6: Option<V6Offload>,
    meta: PacketMeta,
}

/// What an IPv6 flow with offloads needs to describe its frames itself (see the module
/// comment): its interface was given a larger MTU than the real one.
#[derive(Debug, Clone, Copy)]
struct V6Offload {
    mtu: usize,
    /// The guest's MSS (smoltcp's default when its SYN had none), at most what the MTU
    /// allows: segment payload plus TCP options.
    mss: usize,
}

impl TxToken for FlowTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if !self.offload {
            return self.tx.push_forced(self.ethertype, len, f);
        }
        let segment_size = self.meta.segmentation_offload_size;
        let v6 = self.v6;
        self.tx
            .push_forced_offload(self.ethertype, len, f, |packet| {
                describe_offload(packet, segment_size.map(|size| size.get()), v6)
            })
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.meta = meta;
    }
}

/// Finish a TCP packet smoltcp built without a checksum, for a tap with offloads: put the
/// pseudo-header sum in the checksum field (what a device with checksum offload expects)
/// and say where the sum goes and, for a packet smoltcp wants segmented, into what size.
/// Anything that is not a well-formed TCP packet (smoltcp only emits those here) is left
/// as it is, without metadata.
fn describe_offload(
    packet: &mut [u8],
    segment_size: Option<u16>,
    v6: Option<V6Offload>,
) -> Offload {
    let Some((ip_header_len, src, dst)) = ip_header(packet) else {
        return Offload::default();
    };
    let Some(segment) = packet.get_mut(ip_header_len..) else {
        return Offload::default();
    };
    let segment_len = segment.len();
    let Ok(mut tcp) = TcpPacket::new_checked(segment) else {
        return Offload::default();
    };
    let tcp_header_len = usize::from(tcp.header_len());
    let mut segment_size = segment_size;
    if let Some(v6) = v6 {
        if tcp.syn() {
            let mss = v6.mtu.saturating_sub(ip_header_len + 20);
            clamp_syn_mss(&mut tcp, u16::try_from(mss).unwrap_or(u16::MAX));
        }
        // What smoltcp would have asked for: the MSS less the options every segment
        // repeats, whenever the payload is larger.
        let size = v6.mss.saturating_sub(tcp_header_len - 20);
        let payload = segment_len - tcp_header_len;
        segment_size = (size > 0 && payload > size)
            .then(|| u16::try_from(size).ok())
            .flatten();
    }
    let pseudo = checksum::pseudo_header(&src, &dst, IpProtocol::Tcp, segment_len as u32);
    tcp.set_checksum(pseudo);
    let start = ETHERNET_HEADER_LEN + ip_header_len;
    let header_len = start + tcp_header_len;
    let gso = segment_size.and_then(|segment_size| {
        Some(Gso {
            ipv6: src.version() == IpVersion::Ipv6,
            segment_size,
            header_len: u16::try_from(header_len).ok()?,
        })
    });
    Offload {
        partial_checksum: u16::try_from(start).ok().map(|start| PartialChecksum {
            start,
            offset: TCP_CHECKSUM_OFFSET,
        }),
        gso,
    }
}

/// The IPv6 offload limits of a flow, or `None` where smoltcp's own segmentation applies.
fn v6_offload(
    offload: bool,
    ethertype: EthernetProtocol,
    mtu: usize,
    guest_mss: usize,
) -> Option<V6Offload> {
    let mss_for_mtu = mtu.saturating_sub(IPV6_HEADER_LEN + 20);
    (offload && ethertype == EthernetProtocol::Ipv6).then_some(V6Offload {
        mtu,
        mss: guest_mss.min(mss_for_mtu),
    })
}

/// The MSS option of a SYN (the whole IP packet), if it is one and has it.
fn syn_mss(packet: &[u8]) -> Option<u16> {
    let (ip_header_len, _, _) = ip_header(packet)?;
    let tcp = TcpPacket::new_checked(packet.get(ip_header_len..)?).ok()?;
    if !tcp.syn() {
        return None;
    }
    let mut options = tcp.options();
    while !options.is_empty() {
        let (rest, option) = TcpOption::parse(options).ok()?;
        match option {
            TcpOption::EndOfList => return None,
            TcpOption::MaxSegmentSize(mss) if mss > 0 => return Some(mss),
            _ => {}
        }
        options = rest;
    }
    None
}

/// Lower the MSS option of a SYN to `mss` if it says more. The checksum is set afterwards.
fn clamp_syn_mss(tcp: &mut TcpPacket<&mut [u8]>, mss: u16) {
    let options = tcp.options_mut();
    let mut at = 0;
    while at < options.len() {
        let Ok((rest, option)) = TcpOption::parse(&options[at..]) else {
            return;
        };
        let len = options.len() - at - rest.len();
        match option {
            TcpOption::EndOfList => return,
            TcpOption::MaxSegmentSize(value) if value > mss => {
                options[at + 2..at + 4].copy_from_slice(&mss.to_be_bytes());
                return;
            }
            _ => {}
        }
        at += len.max(1);
    }
}

/// Header length and addresses of a TCP packet smoltcp emitted (IPv6 without extension
/// headers: smoltcp adds none to TCP).
fn ip_header(packet: &[u8]) -> Option<(usize, IpAddress, IpAddress)> {
    match IpVersion::of_packet(packet).ok()? {
        IpVersion::Ipv4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            (ip.next_header() == IpProtocol::Tcp).then(|| {
                let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
                (usize::from(ip.header_len()), src, dst)
            })
        }
        IpVersion::Ipv6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            (ip.next_header() == IpProtocol::Tcp).then(|| {
                let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
                (ip.header_len(), src, dst)
            })
        }
    }
}

impl Device for FlowDevice<'_> {
    type RxToken<'b>
        = FlowRxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = FlowTxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // A reply to an incoming segment is always allowed past the queue limit (see
        // `TxQueue::push_forced`): refusing it would only make the guest retransmit.
        let packet = self.rx.take()?;
        Some((
            FlowRxToken(packet),
            FlowTxToken {
                tx: self.tx,
                ethertype: self.ethertype,
                offload: self.offload,
                v6: self.v6,
                meta: PacketMeta::default(),
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        // Until the guest's MAC is known (a forwarded connection before the guest spoke),
        // segments wait: a Linux guest drops TCP sent to the broadcast MAC.
        if !self.tx.has_room() || !self.tx.guest_mac().is_unicast() {
            self.starved = true;
            return None;
        }
        Some(FlowTxToken {
            tx: self.tx,
            ethertype: self.ethertype,
            offload: self.offload,
            v6: self.v6,
            meta: PacketMeta::default(),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        // The MTU stays the guest's even with offloads (but see the module comment on
        // IPv6): smoltcp derives the MSS it advertises and the segment size it asks for
        // from it. Received packets are not held to it (smoltcp checks no size on
        // ingress), so the guest's 64 KiB segments pass.
        caps.max_transmission_unit = match self.v6 {
            Some(_) => MAX_OFFLOAD_PACKET,
            None => self.mtu,
        };
        caps.checksum = checksum_caps();
        if self.offload {
            // smoltcp requires it: a segmenting device computes the TCP checksum.
            caps.checksum.tcp = Checksum::None;
            caps.segmentation = SegmentationCapabilities::default();
            let max = NonZeroUsize::new(MAX_OFFLOAD_PACKET);
            caps.segmentation.tcpv4 = max;
            caps.segmentation.tcpv6 = max;
        }
        caps
    }
}

impl TcpFlow {
    /// A flow for a guest SYN `syn_packet` (the whole IP packet) from `guest` to `remote`:
    /// the socket listens as `remote` with the SYN-ACK paused, and has seen the SYN.
    /// Returns `None` when smoltcp does not take the SYN (it then answered it itself).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        now: Instant,
        guest: IpAddress,
        remote: (IpAddress, u16),
        syn_packet: &[u8],
        syn_quote: Quote,
        params: TcpParams,
        tx: &mut TxQueue,
        spare: Option<Box<TcpFlow>>,
    ) -> Option<Box<TcpFlow>> {
        let phase = Phase::Connecting {
            deadline: params.connect_deadline,
        };
        let mut flow = TcpFlow::new(now, remote.0, guest, params, phase, tx, spare);
        flow.syn_quote = Some(syn_quote);
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
        flow.host_writable = true;
        flow.guest_connect_pending = true;
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
        if let Some(mut flow) = spare.filter(|flow| detour(flow.ethertype) == detour(ethertype)) {
            flow.renew(now, local, guest, params, phase, ethertype);
            return flow;
        }
        let mut device = FlowDevice {
            rx: None,
            tx,
            mtu: params.mtu,
            offload: params.offload,
            v6: v6_offload(params.offload, ethertype, params.mtu, DEFAULT_GUEST_MSS),
            ethertype,
            starved: false,
        };
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
            phase,
            mtu: params.mtu,
            offload: params.offload,
            guest_mss: DEFAULT_GUEST_MSS,
            ethertype,
            syn_quote: None,
            guest_connect_pending: false,
            host_readable: false,
            host_writable: false,
            host_read_closed: false,
            host_eof: false,
            host_write_shut: false,
            host_closed: false,
            starved: false,
            lingering: false,
            backlog: Vec::new(),
            guest_fin: false,
            last_guest_segment: now,
            outstanding_since: None,
            syn_ack_since: None,
            lifetimes: params.lifetimes,
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
        self.phase = phase;
        // The interface keeps the device capabilities it was built with (MTU, offload);
        // both come from the stack's config, the same for every flow.
        debug_assert_eq!((self.mtu, self.offload), (params.mtu, params.offload));
        self.mtu = params.mtu;
        self.offload = params.offload;
        self.guest_mss = DEFAULT_GUEST_MSS;
        self.ethertype = ethertype;
        self.syn_quote = None;
        self.guest_connect_pending = false;
        self.host_readable = false;
        self.host_writable = false;
        self.host_read_closed = false;
        self.host_eof = false;
        self.host_write_shut = false;
        self.host_closed = false;
        self.starved = false;
        self.lingering = false;
        self.backlog = Vec::new();
        self.guest_fin = false;
        self.last_guest_segment = now;
        self.outstanding_since = None;
        self.syn_ack_since = None;
        self.lifetimes = params.lifetimes;
        self.counters = FlowCounters::new(now);
    }

    fn device<'a>(&self, rx: Option<&'a [u8]>, tx: &'a mut TxQueue) -> FlowDevice<'a> {
        FlowDevice {
            rx,
            tx,
            mtu: self.mtu,
            offload: self.offload,
            v6: v6_offload(self.offload, self.ethertype, self.mtu, self.guest_mss),
            ethertype: self.ethertype,
            starved: false,
        }
    }

    /// Buffer capacity this flow reserves, both ways (for the stack's memory budget).
    pub fn buffer_bytes(&self) -> usize {
        let socket = self.socket();
        socket.recv_capacity() + socket.send_capacity()
    }

    /// Remember the MSS of the guest's SYN or SYN-ACK where we need it ourselves (IPv6
    /// with offloads, see the module comment).
    fn learn_guest_mss(&mut self, packet: &[u8]) {
        if self.offload && self.ethertype == EthernetProtocol::Ipv6 {
            if let Some(mss) = syn_mss(packet) {
                self.guest_mss = usize::from(mss);
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
        matches!(self.phase, Phase::Connecting { .. })
    }

    pub fn is_starved(&self) -> bool {
        self.starved
    }

    /// The guest's SYN, for the refusal when the host connect fails.
    pub fn syn_quote(&self) -> Option<&Quote> {
        self.syn_quote.as_ref()
    }

    /// The guest's SYN as a segment (ports and sequence number are in the quoted 8 bytes).
    pub fn syn_segment(&self) -> TcpRepr<'static> {
        let head = self
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
        TcpRepr {
            src_port: word(0),
            dst_port: word(2),
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(seq),
            ack_number: None,
            window_len: 0,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
        }
    }

    /// Take in a later segment of this flow from the guest (the whole IP packet) without
    /// answering yet: moving its data to the host and sending the ACK wait for
    /// [`TcpFlow::handle_timer`], which the stack calls once after a whole batch of frames,
    /// so a burst of segments costs one host write and one cumulative ACK instead of one each. Immediate answers smoltcp gives
    /// while processing (a RST, a challenge ACK) still go out now.
    pub fn take_segment(&mut self, now: Instant, packet: &[u8], tx: &mut TxQueue) {
        self.learn_guest_mss(packet);
        self.last_guest_segment = now;
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
        if let Phase::Connecting { .. } = self.phase {
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
            self.phase = Phase::Open;
            self.syn_ack_since = Some(now);
            self.sockets
                .get_mut::<Socket>(self.handle)
                .pause_synack(false);
        }
        // An error or hang-up shows up as a failing (or EOF) read, which the pump handles.
        self.host_readable |= readable || error || read_closed;
        self.host_read_closed |= read_closed || error;
        self.host_writable |= writable;
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
        if let Phase::Connecting { deadline } = self.phase {
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
        if self.phase == Phase::Open {
            if let Err(err) = self.pump(id, host) {
                log::debug!("{id:?}: host socket failed: {err}");
                self.sockets.get_mut::<Socket>(self.handle).abort();
                self.iface.poll(now, &mut device, &mut self.sockets);
                return Verdict::Remove(CloseMode::Abort);
            }
        }
        self.iface.poll(now, &mut device, &mut self.sockets);
        if self.phase == Phase::Open {
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
        self.starved = device.starved;
        self.verdict(now, host, id)
    }

    /// Note what the guest owes us, and say which lifetime ran out, if one did.
    fn expired(&mut self, now: Instant) -> Option<Lifetime> {
        let state = self.socket().state();
        if state != State::SynReceived {
            self.syn_ack_since = None;
        }
        let outstanding = self.socket().send_queue() > 0
            || matches!(state, State::FinWait1 | State::Closing | State::LastAck);
        if !outstanding {
            self.outstanding_since = None;
        } else if self.outstanding_since.is_none() {
            self.outstanding_since = Some(now);
        }
        let (deadline, lifetime) = self.lifetime_deadline(state)?;
        (now >= deadline).then_some(lifetime)
    }

    /// The next lifetime deadline of this flow in `state`, if it waits for the guest.
    fn lifetime_deadline(&self, state: State) -> Option<(Instant, Lifetime)> {
        let lifetimes = self.lifetimes;
        if let Some(since) = self.syn_ack_since {
            return Some((since + lifetimes.syn_received, Lifetime::SynReceived));
        }
        if let Some(since) = self.outstanding_since {
            let since = since.max(self.last_guest_segment);
            return Some((since + lifetimes.user, Lifetime::User));
        }
        (state == State::FinWait2).then_some((
            self.last_guest_segment + lifetimes.fin_wait2,
            Lifetime::FinWait2,
        ))
    }

    /// Guest bytes still on their way to the host (in the socket or the backlog), while
    /// the host socket can take them.
    fn delivering(&self) -> bool {
        !self.host_write_shut
            && !self.host_closed
            && (!self.backlog.is_empty() || self.socket().recv_queue() > 0)
    }

    /// In TIME-WAIT (or CLOSED) with nothing left for the host: only re-ACKs a lost final
    /// FIN from now on. A new SYN on its 4-tuple may replace it.
    pub fn is_finished(&self) -> bool {
        matches!(self.state(), State::TimeWait | State::Closed) && !self.delivering()
    }

    /// In TIME-WAIT with the host socket closed: the stack may account it as lingering.
    pub fn is_time_wait_only(&self) -> bool {
        self.state() == State::TimeWait && self.host_closed
    }

    /// Move bytes between the smoltcp socket and the host socket until one side blocks.
    fn pump(&mut self, id: FlowId, host: &mut impl HostIo) -> Result<(), HostError> {
        let socket = self.sockets.get_mut::<Socket>(self.handle);
        let state = socket.state();
        if matches!(
            state,
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait
        ) {
            self.guest_fin = true;
        }
        // Guest → host. Text after the guest's FIN has nowhere to go once the host side is
        // shut down for writing (RFC 9293, CLOSE-WAIT: "ignore the segment text").
        if self.host_write_shut && socket.can_recv() {
            let _ = socket.recv(|buf| (buf.len(), ()));
        }
        // What smoltcp acknowledged must reach the host even when the socket itself ends
        // (TIME-WAIT's timer resets it, buffers and all): move it out first. Rare (the
        // host closed first and reads slowly), so a plain Vec does.
        if matches!(state, State::TimeWait | State::Closed) && socket.recv_queue() > 0 {
            while let Ok(moved) = socket.recv(|buf| {
                self.backlog.extend_from_slice(buf);
                (buf.len(), buf.len())
            }) {
                if moved == 0 {
                    break;
                }
            }
        }
        while self.host_writable && !self.host_write_shut && !self.backlog.is_empty() {
            match host.tcp_send(id, &self.backlog) {
                Ok(n) => {
                    self.counters.from_guest += n as u64;
                    self.backlog.drain(..n);
                }
                Err(HostError::WouldBlock) => self.host_writable = false,
                Err(err) => return Err(err),
            }
        }
        while self.host_writable
            && !self.host_write_shut
            && self.backlog.is_empty()
            && socket.can_recv()
        {
            let sent = socket.recv(|buf| match host.tcp_send(id, buf) {
                Ok(n) => (n, Ok(n)),
                Err(err) => (0, Err(err)),
            });
            match sent {
                Ok(Ok(n)) => self.counters.from_guest += n as u64,
                Ok(Err(HostError::WouldBlock)) => self.host_writable = false,
                Ok(Err(err)) => return Err(err),
                Err(_) => break,
            }
        }
        // The guest's FIN goes on once everything before it has.
        let all_sent = socket.recv_queue() == 0 && self.backlog.is_empty();
        if self.guest_fin && !self.host_write_shut && all_sent && !self.host_closed {
            host.tcp_shutdown_write(id);
            self.host_write_shut = true;
        }
        // Host → guest.
        //
        // A read that returns less than it was offered found the socket's receive queue
        // empty, and the edge-triggered poller reports every later arrival as a new event
        // (Linux wakes the poller on each segment queued, FIN included), so the read that
        // would only say `WouldBlock` is skipped: one `recv` per reply instead of two.
        // Not once the poller reported a hang-up or an error: EOF or the error may already
        // be queued behind the data just read, and no new event would announce them.
        while self.host_readable && !self.host_eof && socket.can_send() {
            let received = socket.send(|buf| match host.tcp_recv(id, buf) {
                Ok(n) => (n, Ok((n, buf.len()))),
                Err(err) => (0, Err(err)),
            });
            match received {
                Ok(Ok((0, _))) => {
                    self.host_eof = true;
                    // Queues our FIN behind the data already buffered.
                    socket.close();
                }
                Ok(Ok((n, offered))) => {
                    self.counters.to_guest += n as u64;
                    if n < offered && !self.host_read_closed {
                        self.host_readable = false;
                    }
                }
                Ok(Err(HostError::WouldBlock)) => self.host_readable = false,
                Ok(Err(err)) => return Err(err),
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn verdict(&mut self, now: Instant, host: &mut impl HostIo, id: FlowId) -> Verdict {
        let state = self.socket().state();
        if self.guest_connect_pending && state != State::SynSent {
            self.guest_connect_pending = false;
            self.sockets
                .get_mut::<Socket>(self.handle)
                .set_timeout(None);
        }
        match self.phase {
            Phase::Connecting { deadline } => {
                if state != State::SynReceived {
                    // The guest gave up (RST) before the host answered.
                    return Verdict::Remove(CloseMode::Abort);
                }
                Verdict::Keep {
                    due: Some(deadline),
                }
            }
            Phase::Open if self.guest_connect_pending && state == State::SynSent => Verdict::Keep {
                due: self.iface.poll_at(now, &self.sockets),
            },
            Phase::Open => match state {
                // The guest finished (its FIN is acknowledged) but the host has not taken
                // all it sent: wait for the host to become writable.
                State::Closed if self.delivering() => Verdict::Keep { due: None },
                // Listen: a RST in SYN-RECEIVED sends a listening socket back to LISTEN.
                State::Closed | State::Listen => {
                    let graceful = self.host_eof && self.host_write_shut;
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
                    if !self.host_closed && !self.delivering() {
                        host.close(id, CloseMode::Graceful);
                        self.host_closed = true;
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

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Ipv6Address, Ipv6Repr};

    const GUEST: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0xff, 0xfe00, 1);
    const GATEWAY: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    /// An IPv6 TCP packet as smoltcp emits it for an offloading device (checksum 0).
    fn packet(syn: bool, mss: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 8080,
            dst_port: 40000,
            control: if syn {
                TcpControl::Syn
            } else {
                TcpControl::None
            },
            seq_number: TcpSeqNumber(1),
            ack_number: Some(TcpSeqNumber(1)),
            window_len: 1024,
            window_scale: syn.then_some(5),
            max_seg_size: mss,
            sack_permitted: syn,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv6Repr {
            src_addr: GATEWAY,
            dst_addr: GUEST,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut bytes = vec![0; ip.buffer_len() + tcp.buffer_len()];
        let mut packet = Ipv6Packet::new_unchecked(&mut bytes[..]);
        ip.emit(&mut packet);
        tcp.emit(
            &mut TcpPacket::new_unchecked(packet.payload_mut()),
            &GATEWAY.into(),
            &GUEST.into(),
            &ChecksumCapabilities::ignored(),
        );
        bytes
    }

    #[test]
    fn syn_mss_reads_the_option_of_syns_only() {
        assert_eq!(syn_mss(&packet(true, Some(1440), &[])), Some(1440));
        assert_eq!(syn_mss(&packet(true, None, &[])), None);
        assert_eq!(syn_mss(&packet(false, None, b"data")), None);
        assert_eq!(syn_mss(&[0x60, 0, 0]), None);
    }

    #[test]
    fn ipv6_syn_announces_the_real_mtus_mss_and_big_segments_are_cut_to_the_guests() {
        let v6 = v6_offload(true, EthernetProtocol::Ipv6, 1500, 1400);
        let mut syn = packet(true, Some(65_475), &[]);
        let offload = describe_offload(&mut syn, None, v6);
        assert_eq!(syn_mss(&syn), Some(1440));
        assert_eq!(offload.gso, None);
        assert_eq!(
            offload.partial_checksum,
            Some(PartialChecksum {
                start: 14 + 40,
                offset: 16
            })
        );

        let mut segment = packet(false, None, &[7; 5000]);
        let offload = describe_offload(&mut segment, None, v6);
        let gso = offload.gso.expect("segmentation");
        assert_eq!(
            (gso.segment_size, gso.header_len, gso.ipv6),
            (1400, 74, true)
        );
        // The checksum field holds the pseudo-header sum for the whole segment.
        let tcp_len = segment.len() - 40;
        let expected = checksum::pseudo_header(
            &GATEWAY.into(),
            &GUEST.into(),
            IpProtocol::Tcp,
            tcp_len as u32,
        );
        assert_eq!(
            TcpPacket::new_checked(&segment[40..]).unwrap().checksum(),
            expected
        );

        // Small enough for one segment: no segmentation asked for.
        let mut small = packet(false, None, &[7; 1400]);
        assert_eq!(describe_offload(&mut small, None, v6).gso, None);
    }

    #[test]
    fn only_ipv6_flows_with_offloads_take_the_detour() {
        assert!(v6_offload(false, EthernetProtocol::Ipv6, 1500, 1440).is_none());
        assert!(v6_offload(true, EthernetProtocol::Ipv4, 1500, 1460).is_none());
        // A guest announcing more than the MTU allows gets the MTU's.
        let v6 = v6_offload(true, EthernetProtocol::Ipv6, 1500, 9000).unwrap();
        assert_eq!(v6.mss, 1440);
    }
}

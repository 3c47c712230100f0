//! NAT of guest flows onto host sockets: TCP through one small smoltcp interface per flow,
//! UDP and ICMP echo by rewriting datagrams. Shared here: the context a datagram flow's
//! reader gets, and the frames we send when we refuse something (RST, ICMP destination
//! unreachable).

pub mod datagram;
mod device;
pub mod icmp;
pub mod icmp_error;
pub mod idle;
pub mod rate;
pub mod table;
pub mod target;
pub mod tcp;
pub mod udp;

use crate::link::{IpPush, TxQueue};
use crate::stats::Stats;
use core::net::IpAddr;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetProtocol, Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable,
    Icmpv6Packet, Icmpv6Repr, IpProtocol, IpRepr, Ipv4Address, Ipv4Repr, Ipv6Address, Ipv6Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

pub use table::{FlowKey, FlowTable, Proto};

/// Everything a datagram flow's host reader may touch besides its own flow.
pub struct Ctx<'a, H> {
    pub now: Instant,
    pub tx: &'a mut TxQueue,
    pub host: &'a mut H,
    pub stats: &'a mut Stats,
    /// Room for one datagram read from the host.
    pub scratch: &'a mut [u8],
}

/// What `list_flows` reports about a flow besides its key and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowCounters {
    pub created: Instant,
    /// The host-side peer: the address connected to, or the forward's client.
    pub host: Option<core::net::SocketAddr>,
    /// Payload bytes from the guest and to the guest.
    pub from_guest: u64,
    pub to_guest: u64,
}

impl FlowCounters {
    pub fn new(created: Instant) -> FlowCounters {
        FlowCounters {
            created,
            host: None,
            from_guest: 0,
            to_guest: 0,
        }
    }
}

/// TTL of packets we originate towards the guest.
pub const HOP_LIMIT: u8 = 64;
/// Hop limit of IPv6 packets we originate: NDP messages must carry 255 (RFC 4861 checks it
/// to know they come from the link), and using it for all is harmless on a point-to-point link.
pub const NDP_HOP_LIMIT: u8 = 255;

/// How the network should refuse a guest's attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// TCP: RST. UDP: ICMP port unreachable.
    Reset,
    NetUnreachable,
    HostUnreachable,
    /// Say nothing (e.g. broadcast or reserved destinations).
    Silent,
}

impl Refusal {
    pub fn from_host_error(err: crate::io::HostError) -> Refusal {
        use crate::io::HostError;
        match err {
            HostError::NetworkUnreachable => Refusal::NetUnreachable,
            HostError::HostUnreachable | HostError::TimedOut => Refusal::HostUnreachable,
            _ => Refusal::Reset,
        }
    }

    /// How a host error on a UDP flow's socket reaches the guest: ECONNREFUSED (the port
    /// unreachable the kernel got for an earlier datagram) as port unreachable, routing
    /// errors as theirs, anything else silently (a datagram may be lost on the way).
    pub fn for_datagram(err: crate::io::HostError) -> Refusal {
        match Refusal::from_host_error(err) {
            Refusal::Reset if err != crate::io::HostError::ConnectionRefused => Refusal::Silent,
            refusal => refusal,
        }
    }
}

/// Checksums we compute on transmit; on receive we trust the kernel, which hands the tap
/// complete checksums (no offloads are negotiated), and the guest only hurts itself if not.
pub fn checksum_caps() -> ChecksumCapabilities {
    let mut caps = ChecksumCapabilities::ignored();
    caps.ipv4 = smoltcp::phy::Checksum::Tx;
    caps.tcp = smoltcp::phy::Checksum::Tx;
    caps.udp = smoltcp::phy::Checksum::Tx;
    caps.icmpv4 = smoltcp::phy::Checksum::Tx;
    caps.icmpv6 = smoltcp::phy::Checksum::Tx;
    caps
}

/// Queue an IP packet (either family) to the guest; `fill` writes the `payload_len` bytes
/// after the header. Larger than the MTU, it goes in fragments (counted in
/// `ip_frag_fragmented`). Mixed families are a bug of the caller and are dropped.
pub fn send_ip(
    tx: &mut TxQueue,
    stats: &mut Stats,
    src: IpAddr,
    dst: IpAddr,
    protocol: IpProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) {
    let (repr, ethertype) = match (src, dst) {
        (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => {
            let repr = Ipv4Repr {
                src_addr,
                dst_addr,
                next_header: protocol,
                payload_len,
                hop_limit: HOP_LIMIT,
            };
            (IpRepr::Ipv4(repr), EthernetProtocol::Ipv4)
        }
        (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => {
            let repr = Ipv6Repr {
                src_addr,
                dst_addr,
                next_header: protocol,
                payload_len,
                hop_limit: NDP_HOP_LIMIT,
            };
            (IpRepr::Ipv6(repr), EthernetProtocol::Ipv6)
        }
        _ => {
            stats.tx_errors += 1;
            return;
        }
    };
    let header_len = repr.header_len();
    let pushed = tx.push_ip(ethertype, header_len + payload_len, |buf| {
        repr.emit(&mut buf[..], &checksum_caps());
        fill(&mut buf[header_len..]);
    });
    count_push(stats, pushed);
}

/// Count what became of a packet for the guest.
fn count_push(stats: &mut Stats, pushed: IpPush) {
    match pushed {
        IpPush::Queued => {}
        IpPush::Fragmented => stats.ip_frag_fragmented += 1,
        IpPush::Full => stats.tx_dropped += 1,
        IpPush::TooBig => {
            log::debug!("dropping a packet for the guest larger than IP allows");
            stats.tx_dropped += 1;
        }
    }
}

/// The start of a guest packet (its IP header and the first 8 bytes of its payload), kept
/// so that a later refusal can quote it in an ICMP error as RFC 792 / RFC 4443 require.
#[derive(Debug, Clone)]
pub struct Quote {
    header: QuotedHeader,
    head: [u8; 8],
    head_len: u8,
}

#[derive(Debug, Clone, Copy)]
enum QuotedHeader {
    V4(Ipv4Repr),
    V6(Ipv6Repr),
}

impl Quote {
    pub fn new(header: &Ipv4Repr, payload: &[u8]) -> Quote {
        Quote::with_header(QuotedHeader::V4(*header), payload)
    }

    pub fn new_v6(header: &Ipv6Repr, payload: &[u8]) -> Quote {
        Quote::with_header(QuotedHeader::V6(*header), payload)
    }

    fn with_header(header: QuotedHeader, payload: &[u8]) -> Quote {
        let mut head = [0u8; 8];
        let n = payload.len().min(8);
        head[..n].copy_from_slice(&payload[..n]);
        Quote {
            header,
            head,
            head_len: n as u8,
        }
    }

    /// The guest's address (the quoted packet's source).
    pub fn src(&self) -> IpAddr {
        match self.header {
            QuotedHeader::V4(h) => IpAddr::V4(h.src_addr),
            QuotedHeader::V6(h) => IpAddr::V6(h.src_addr),
        }
    }

    /// Where the guest sent it.
    pub fn dst(&self) -> IpAddr {
        match self.header {
            QuotedHeader::V4(h) => IpAddr::V4(h.dst_addr),
            QuotedHeader::V6(h) => IpAddr::V6(h.dst_addr),
        }
    }

    /// The TTL / hop limit the guest sent the packet with.
    pub fn hop_limit(&self) -> u8 {
        match self.header {
            QuotedHeader::V4(h) => h.hop_limit,
            QuotedHeader::V6(h) => h.hop_limit,
        }
    }

    pub fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }
}

/// Queue an ICMP message from `from` to the guest at `to`.
pub fn send_icmpv4(
    tx: &mut TxQueue,
    stats: &mut Stats,
    from: Ipv4Address,
    to: Ipv4Address,
    icmp: &Icmpv4Repr<'_>,
) {
    send_ip(
        tx,
        stats,
        from.into(),
        to.into(),
        IpProtocol::Icmp,
        icmp.buffer_len(),
        |buf| icmp.emit(&mut Icmpv4Packet::new_unchecked(buf), &checksum_caps()),
    );
}

/// Queue an ICMPv6 message from `from` to the guest at `to` (its checksum covers both).
pub fn send_icmpv6(
    tx: &mut TxQueue,
    stats: &mut Stats,
    from: Ipv6Address,
    to: Ipv6Address,
    icmp: &Icmpv6Repr<'_>,
) {
    send_ip(
        tx,
        stats,
        from.into(),
        to.into(),
        IpProtocol::Icmpv6,
        icmp.buffer_len(),
        |buf| {
            icmp.emit(
                &from,
                &to,
                &mut Icmpv6Packet::new_unchecked(buf),
                &checksum_caps(),
            )
        },
    );
}

/// Why a destination is unreachable, in either ICMP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    Net,
    Host,
    Port,
}

/// ICMP destination unreachable about `quote`, sent from `from` (the router for routing
/// errors, the destination itself for port unreachable).
pub fn send_icmp_unreachable(
    tx: &mut TxQueue,
    stats: &mut Stats,
    from: IpAddr,
    why: Unreachable,
    quote: &Quote,
) {
    match (quote.header, from) {
        (QuotedHeader::V4(header), IpAddr::V4(from)) => {
            let reason = match why {
                Unreachable::Net => Icmpv4DstUnreachable::NetUnreachable,
                Unreachable::Host => Icmpv4DstUnreachable::HostUnreachable,
                Unreachable::Port => Icmpv4DstUnreachable::PortUnreachable,
            };
            let icmp = Icmpv4Repr::DstUnreachable {
                reason,
                header,
                data: quote.head(),
            };
            send_icmpv4(tx, stats, from, header.src_addr, &icmp);
        }
        (QuotedHeader::V6(header), IpAddr::V6(from)) => {
            let reason = match why {
                Unreachable::Net => Icmpv6DstUnreachable::NoRoute,
                Unreachable::Host => Icmpv6DstUnreachable::AddrUnreachable,
                Unreachable::Port => Icmpv6DstUnreachable::PortUnreachable,
            };
            let icmp = Icmpv6Repr::DstUnreachable {
                reason,
                header,
                data: quote.head(),
            };
            send_icmpv6(tx, stats, from, header.src_addr, &icmp);
        }
        _ => stats.tx_errors += 1,
    }
}

/// A TCP segment with no options, no payload and a zero window: a RST we send, or the
/// guest's SYN as a quote keeps it.
pub(crate) fn bare_segment(
    src_port: u16,
    dst_port: u16,
    control: TcpControl,
    seq_number: TcpSeqNumber,
    ack_number: Option<TcpSeqNumber>,
) -> TcpRepr<'static> {
    TcpRepr {
        src_port,
        dst_port,
        control,
        seq_number,
        ack_number,
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    }
}

/// Answer a guest TCP segment that has no connection (or is refused) with RST, per RFC 793:
/// if it carried an ACK the RST takes that sequence number, else RST|ACK acknowledging it.
/// `src`/`dst` are the segment's addresses as the guest sent it.
pub fn send_tcp_reset(
    tx: &mut TxQueue,
    stats: &mut Stats,
    src: IpAddr,
    dst: IpAddr,
    segment: &TcpRepr<'_>,
) {
    if segment.control == TcpControl::Rst {
        return;
    }
    let (seq_number, ack_number) = match segment.ack_number {
        Some(ack) => (ack, None),
        None => (
            TcpSeqNumber(0),
            Some(segment.seq_number + segment.segment_len()),
        ),
    };
    let reply = bare_segment(
        segment.dst_port,
        segment.src_port,
        TcpControl::Rst,
        seq_number,
        ack_number,
    );
    let (from, to) = (dst, src);
    send_ip(
        tx,
        stats,
        from,
        to,
        IpProtocol::Tcp,
        reply.buffer_len(),
        |buf| {
            reply.emit(
                &mut TcpPacket::new_unchecked(buf),
                &from.into(),
                &to.into(),
                &checksum_caps(),
            )
        },
    );
}

/// Refuse a guest packet described by `quote` in the way `refusal` says. `tcp` is the
/// segment when it was TCP (a reset needs it); UDP resets become ICMP port unreachable.
/// Routing errors come from the gateway of the quoted packet's family.
pub fn refuse(
    tx: &mut TxQueue,
    stats: &mut Stats,
    network: crate::config::VirtualNetwork,
    refusal: Refusal,
    quote: &Quote,
    tcp: Option<&TcpRepr<'_>>,
) {
    let router = match quote.src() {
        IpAddr::V4(_) => IpAddr::V4(network.gateway()),
        IpAddr::V6(_) => IpAddr::V6(network.gateway6()),
    };
    match (refusal, tcp) {
        (Refusal::Silent, _) => {}
        (Refusal::Reset, Some(segment)) => {
            send_tcp_reset(tx, stats, quote.src(), quote.dst(), segment)
        }
        (Refusal::Reset, None) => {
            send_icmp_unreachable(tx, stats, quote.dst(), Unreachable::Port, quote)
        }
        (Refusal::NetUnreachable, _) => {
            send_icmp_unreachable(tx, stats, router, Unreachable::Net, quote)
        }
        (Refusal::HostUnreachable, _) => {
            send_icmp_unreachable(tx, stats, router, Unreachable::Host, quote)
        }
    }
}

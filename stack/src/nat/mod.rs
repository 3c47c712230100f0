//! NAT of guest flows onto host sockets: TCP through one small smoltcp interface per flow,
//! UDP and ICMP echo by rewriting datagrams. Shared here: the context every handler gets,
//! and the frames we send when we refuse something (RST, ICMP destination unreachable).

pub mod icmp;
pub mod table;
pub mod tcp;
pub mod udp;

use crate::config::Config;
use crate::link::TxQueue;
use crate::stats::Stats;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetProtocol, Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Address,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

pub use table::{FlowKey, FlowTable, Proto};

/// Everything a flow handler may touch besides its own flow.
pub struct Ctx<'a, H> {
    pub now: Instant,
    pub config: &'a Config,
    pub tx: &'a mut TxQueue,
    pub host: &'a mut H,
    pub stats: &'a mut Stats,
}

/// TTL of packets we originate towards the guest.
pub const HOP_LIMIT: u8 = 64;

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

/// Queue an IPv4 packet to the guest; `fill` writes the `payload_len` bytes after the header.
pub fn send_ipv4(
    tx: &mut TxQueue,
    stats: &mut Stats,
    src: Ipv4Address,
    dst: Ipv4Address,
    protocol: IpProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: protocol,
        payload_len,
        hop_limit: HOP_LIMIT,
    };
    let total = repr.buffer_len() + payload_len;
    let queued = tx.push(EthernetProtocol::Ipv4, total, |buf| {
        let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut packet, &checksum_caps());
        fill(packet.payload_mut());
    });
    if !queued {
        stats.tx_dropped += 1;
    }
}

/// The start of a guest packet (IP header and the first 8 bytes of its payload), kept so
/// that a later refusal can quote it in an ICMP error as RFC 792 requires.
#[derive(Debug, Clone)]
pub struct Quote {
    header: Ipv4Repr,
    head: [u8; 8],
    head_len: u8,
}

impl Quote {
    pub fn new(header: &Ipv4Repr, payload: &[u8]) -> Quote {
        let mut head = [0u8; 8];
        let n = payload.len().min(8);
        head[..n].copy_from_slice(&payload[..n]);
        Quote {
            header: *header,
            head,
            head_len: n as u8,
        }
    }

    pub fn header(&self) -> &Ipv4Repr {
        &self.header
    }

    pub fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }
}

/// ICMP destination unreachable about `quote`, sent from `from` (the gateway for routing
/// errors, the destination itself for port unreachable).
pub fn send_icmp_unreachable(
    tx: &mut TxQueue,
    stats: &mut Stats,
    from: Ipv4Address,
    reason: Icmpv4DstUnreachable,
    quote: &Quote,
) {
    let icmp = Icmpv4Repr::DstUnreachable {
        reason,
        header: quote.header,
        data: quote.head(),
    };
    send_ipv4(
        tx,
        stats,
        from,
        quote.header.src_addr,
        IpProtocol::Icmp,
        icmp.buffer_len(),
        |buf| icmp.emit(&mut Icmpv4Packet::new_unchecked(buf), &checksum_caps()),
    );
}

/// Answer a guest TCP segment that has no connection (or is refused) with RST, per RFC 793:
/// if it carried an ACK the RST takes that sequence number, else RST|ACK acknowledging it.
pub fn send_tcp_reset(tx: &mut TxQueue, stats: &mut Stats, ip: &Ipv4Repr, segment: &TcpRepr<'_>) {
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
    let reply = TcpRepr {
        src_port: segment.dst_port,
        dst_port: segment.src_port,
        control: TcpControl::Rst,
        seq_number,
        ack_number,
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let (src, dst) = (ip.dst_addr, ip.src_addr);
    send_ipv4(
        tx,
        stats,
        src,
        dst,
        IpProtocol::Tcp,
        reply.buffer_len(),
        |buf| {
            reply.emit(
                &mut TcpPacket::new_unchecked(buf),
                &src.into(),
                &dst.into(),
                &checksum_caps(),
            )
        },
    );
}

/// Refuse a guest packet described by `quote` in the way `refusal` says. `tcp` is the
/// segment when it was TCP (a reset needs it); UDP resets become ICMP port unreachable.
pub fn refuse(
    tx: &mut TxQueue,
    stats: &mut Stats,
    gateway: Ipv4Address,
    refusal: Refusal,
    quote: &Quote,
    tcp: Option<&TcpRepr<'_>>,
) {
    match (refusal, tcp) {
        (Refusal::Silent, _) => {}
        (Refusal::Reset, Some(segment)) => send_tcp_reset(tx, stats, quote.header(), segment),
        (Refusal::Reset, None) => {
            let from = quote.header().dst_addr;
            send_icmp_unreachable(
                tx,
                stats,
                from,
                Icmpv4DstUnreachable::PortUnreachable,
                quote,
            )
        }
        (Refusal::NetUnreachable, _) => send_icmp_unreachable(
            tx,
            stats,
            gateway,
            Icmpv4DstUnreachable::NetUnreachable,
            quote,
        ),
        (Refusal::HostUnreachable, _) => send_icmp_unreachable(
            tx,
            stats,
            gateway,
            Icmpv4DstUnreachable::HostUnreachable,
            quote,
        ),
    }
}

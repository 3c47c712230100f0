//! ICMP errors from the host's network relayed to the guest: when a router on the path (or
//! the remote itself) refuses a datagram a UDP or ping flow sent, the host kernel queues
//! the error on the flow's socket (IP_RECVERR / IPV6_RECVERR) and the host hands it over as
//! an [`IcmpReport`]. The guest gets the same error about its own datagram, so traceroute,
//! `ping -t`, path MTU discovery and port-unreachable detection work through the NAT.
//!
//! The error quotes the guest's datagram as the guest sent it: its IP header (from the
//! flow's [`Quote`]), then its transport header with the guest's ports (or echo identifier),
//! then what the router quoted of the payload, within the 576 bytes (IPv4, RFC 1812 4.3.2.3)
//! or 1280 bytes (IPv6, RFC 4443 2.4) an error may take.

use crate::io::IcmpReport;
use crate::link::TxQueue;
use crate::nat::{checksum_caps, send_icmpv6, send_ip, Quote, QuotedHeader};
use crate::stats::Stats;
use core::net::IpAddr;
use smoltcp::wire::{
    checksum, Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv4TimeExceeded,
    Icmpv6DstUnreachable, Icmpv6Repr, Icmpv6TimeExceeded, IpProtocol,
};

/// ICMP types as the kernel reports them (`ee_type`).
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
const ICMPV6_PORT_UNREACH: u8 = 4;

/// Largest ICMP error we send: RFC 1812 4.3.2.3 (IPv4), RFC 4443 2.4 (c) (IPv6, the
/// minimum MTU). Both are whole packets, our own IP header included.
const MAX_ERROR_V4: usize = 576;
const MAX_ERROR_V6: usize = 1280;
/// Our IP header and the ICMP header before the quoted packet.
const OVERHEAD_V4: usize = 20 + 8;
const OVERHEAD_V6: usize = 40 + 8;

/// Does the report say nothing listens at the remote port (the only error a DNS flow
/// answers by trying the next nameserver)?
pub fn is_port_unreachable(report: &IcmpReport) -> bool {
    if report.v6 {
        (report.icmp_type, report.code) == (ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH)
    } else {
        (report.icmp_type, report.code) == (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH)
    }
}

/// The transport part to quote for a UDP flow: the guest's own UDP header (ports, length
/// and checksum of its datagram) and the payload bytes the router quoted.
pub fn udp_transport(quote: &Quote, quoted_payload: &[u8]) -> Vec<u8> {
    let mut transport = quote.head().to_vec();
    transport.extend_from_slice(quoted_payload);
    transport
}

/// The transport part to quote for an echo flow: the echo request the router quoted, its
/// identifier (the host ping socket's) put back to the guest's and the checksum adjusted
/// for that (RFC 1624), so the guest's ping finds its own request. For ICMP that restores
/// the guest's checksum exactly; an ICMPv6 checksum also covers the source address, which
/// was the host's, so there it stays off by that difference (no receiver checks a quoted
/// checksum). Shorter than an echo header (a broken router), the guest's latest request
/// header is used instead.
pub fn echo_transport(quote: &Quote, quoted_message: &[u8], guest_ident: u16) -> Vec<u8> {
    let mut message = quoted_message.to_vec();
    let Some(header) = message.get_mut(..8) else {
        return quote.head().to_vec();
    };
    let old_ident = u16::from_be_bytes([header[4], header[5]]);
    let old_checksum = u16::from_be_bytes([header[2], header[3]]);
    let new_checksum = !checksum::combine(&[!old_checksum, !old_ident, guest_ident]);
    header[2..4].copy_from_slice(&new_checksum.to_be_bytes());
    header[4..6].copy_from_slice(&guest_ident.to_be_bytes());
    message
}

/// Queue to the guest the ICMP error `report` describes, about its datagram whose IP
/// header `quote` keeps and whose transport part begins with `transport`, sent from
/// `from`. False (nothing sent) if ICMP of the quote's family has no such error for the
/// guest, or the report's family is not the quote's.
pub fn send_icmp_error(
    tx: &mut TxQueue,
    stats: &mut Stats,
    from: IpAddr,
    report: &IcmpReport,
    quote: &Quote,
    transport: &[u8],
) -> bool {
    match (quote.header, from) {
        (QuotedHeader::V4(header), IpAddr::V4(from)) if !report.v6 => {
            let data = &transport[..transport.len().min(MAX_ERROR_V4 - OVERHEAD_V4 - 20)];
            // The next-hop MTU goes in the second half of the unused word (RFC 1191).
            let mut mtu = None;
            let icmp = match (report.icmp_type, report.code) {
                (ICMP_DEST_UNREACH, code) => {
                    if code == ICMP_FRAG_NEEDED {
                        mtu = Some(u16::try_from(report.info).unwrap_or(u16::MAX));
                    }
                    Icmpv4Repr::DstUnreachable {
                        reason: Icmpv4DstUnreachable::from(code),
                        header,
                        data,
                    }
                }
                (ICMP_TIME_EXCEEDED, code @ 0..=1) => Icmpv4Repr::TimeExceeded {
                    reason: Icmpv4TimeExceeded::from(code),
                    header,
                    data,
                },
                _ => return false,
            };
            send_ip(
                tx,
                stats,
                from.into(),
                header.src_addr.into(),
                IpProtocol::Icmp,
                icmp.buffer_len(),
                |buf| {
                    icmp.emit(
                        &mut Icmpv4Packet::new_unchecked(&mut *buf),
                        &checksum_caps(),
                    );
                    let mut unused = [0u8; 4];
                    if let Some(mtu) = mtu {
                        unused[2..].copy_from_slice(&mtu.to_be_bytes());
                    }
                    // smoltcp leaves the unused word as it found the buffer.
                    buf[4..8].copy_from_slice(&unused);
                    Icmpv4Packet::new_unchecked(buf).fill_checksum();
                },
            );
            true
        }
        (QuotedHeader::V6(header), IpAddr::V6(from)) if report.v6 => {
            let data = &transport[..transport.len().min(MAX_ERROR_V6 - OVERHEAD_V6 - 40)];
            let icmp = match (report.icmp_type, report.code) {
                (ICMPV6_DEST_UNREACH, code) => Icmpv6Repr::DstUnreachable {
                    reason: Icmpv6DstUnreachable::from(code),
                    header,
                    data,
                },
                (ICMPV6_PKT_TOOBIG, 0) => Icmpv6Repr::PktTooBig {
                    mtu: report.info,
                    header,
                    data,
                },
                (ICMPV6_TIME_EXCEED, code @ 0..=1) => Icmpv6Repr::TimeExceeded {
                    reason: Icmpv6TimeExceeded::from(code),
                    header,
                    data,
                },
                _ => return false,
            };
            send_icmpv6(tx, stats, from, header.src_addr, &icmp);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{Ipv4Address, Ipv4Repr};

    /// The identifier swap keeps the quoted echo request's checksum valid.
    #[test]
    fn echo_ident_swap_keeps_the_checksum_valid() {
        let request = Icmpv4Repr::EchoRequest {
            ident: 0xa000,
            seq_no: 7,
            data: b"some payload",
        };
        let mut message = vec![0u8; request.buffer_len()];
        request.emit(
            &mut Icmpv4Packet::new_unchecked(&mut message[..]),
            &checksum_caps(),
        );
        let quote = Quote::new(
            &Ipv4Repr {
                src_addr: Ipv4Address::new(10, 0, 2, 100),
                dst_addr: Ipv4Address::new(10, 99, 0, 1),
                next_header: IpProtocol::Icmp,
                payload_len: message.len(),
                hop_limit: 1,
            },
            &message,
        );
        let swapped = echo_transport(&quote, &message, 0x1234);
        let packet = Icmpv4Packet::new_checked(&swapped[..]).expect("an echo request");
        assert_eq!(packet.echo_ident(), 0x1234);
        assert_eq!(packet.echo_seq_no(), 7);
        assert!(packet.verify_checksum());
    }
}

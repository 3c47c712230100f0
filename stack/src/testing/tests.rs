//! Tests of the test kit itself: frames round-trip through builder and parser, checksums
//! catch corruption, and [`SimHost`] keeps the contracts it enforces on the stack.

use super::*;
use crate::io::{CloseMode, FlowId, HostError, HostIo, SourceAddr};
use core::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use smoltcp::wire::{
    ArpOperation, ArpRepr, EthernetAddress, Icmpv4DstUnreachable, Icmpv4Repr, IpProtocol,
    IpVersion, Ipv4Repr,
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
    assert_eq!(
        (ip.src_addr, ip.dst_addr),
        (IpAddr::from(guest.ip), IpAddr::from(*REMOTE.ip()))
    );
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
            src: SocketAddrV4::new(guest.ip, 5000).into(),
            dst: dst.into(),
            payload: b"query".to_vec()
        }
    );
    assert_eq!(
        parse(&guest.icmp_echo(GATEWAY, 0x1234, 7, b"ping")),
        Parsed::IcmpEcho {
            src: guest.ip.into(),
            dst: GATEWAY.into(),
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
    assert_eq!(
        (src, dst, code),
        (IpAddr::from(GATEWAY), IpAddr::from(guest.ip), 1)
    );
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
    let message = echo_message(IpVersion::Ipv4, true, 9, 3, b"hi");
    assert_eq!(
        parse_echo_message(IpVersion::Ipv4, &message),
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
    host.ping_send(
        flow(2),
        &echo_message(IpVersion::Ipv4, false, 77, 1, b"abc"),
        64,
    )
    .unwrap();
    let sent = parse_echo_message(IpVersion::Ipv4, &host.ping_sent(flow(2))[0]).unwrap();
    host.ping_reply(flow(2), sent.seq_no, &sent.payload);
    let mut buf = [0; 64];
    let n = host.ping_recv(flow(2), &mut buf).unwrap().len;
    let reply = parse_echo_message(IpVersion::Ipv4, &buf[..n]).unwrap();
    assert!(reply.reply);
    assert_ne!(reply.ident, 77, "the host kernel uses its own identifier");
    assert_eq!((reply.seq_no, reply.payload.as_slice()), (1, &b"abc"[..]));
}

/// A host on which the stack opened flow 1 as a UDP socket and closed it.
fn host_with_closed_udp_flow() -> SimHost {
    let mut host = SimHost::new();
    host.udp_open(flow(1), SocketAddr::V4(REMOTE), SourceAddr::Outbound)
        .unwrap();
    host.close(flow(1), CloseMode::Graceful);
    host
}

#[test]
#[should_panic(expected = "after closing it")]
fn sim_host_rejects_use_after_close() {
    let mut host = host_with_closed_udp_flow();
    let _ = host.udp_send(flow(1), b"late", 64);
}

#[test]
#[should_panic(expected = "opened flow#1.1 again")]
fn sim_host_rejects_reopening_a_flow_id() {
    let mut host = host_with_closed_udp_flow();
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

//! IP fragments both ways, told as scenarios on the virtual clock: the guest's fragmented
//! UDP datagrams and pings reach the host whole (IPv4, and IPv6's Fragment header), large
//! answers reach the guest in fragments that reassemble to the original, and the
//! reassembly table keeps its bounds under a flood, times out and drops overlaps.
//! The guest side (cutting and reassembling) is `testing::fragments`, written apart from
//! the stack's own code.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use rslirp_stack::testing::fragments::{defragment, fragment, ipv4_piece, payload_len};
use rslirp_stack::testing::{parse, Parsed, Scenario};
use rslirp_stack::{Config, Duration, Limits};
use smoltcp::wire::IpVersion;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const MTU: usize = 1500;

/// `len` bytes that show where each byte came from.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
        .collect()
}

/// The guest sends `frame` in fragments of at most [`MTU`] bytes, identification `ident`.
fn send_fragmented(s: &mut Scenario, frame: &[u8], ident: u32) {
    for piece in fragment(frame, MTU, ident) {
        s.guest_sends(&piece);
    }
}

fn with_ipv6() -> Scenario {
    Scenario::with_config(Config {
        enable_ipv6: true,
        ..Config::default()
    })
}

/// `frames` are `count` frames (fragments), put back together and decoded.
fn reassembled(frames: Vec<Vec<u8>>, count: usize) -> Vec<Parsed> {
    assert_eq!(frames.len(), count);
    defragment(frames).iter().map(|f| parse(f)).collect()
}

/// What the stack sent since the last drain is `count` fragments (`what`), each within
/// the MTU, that reassemble to `datagram` alone; the stack counts one datagram fragmented.
fn assert_arrives_in_fragments(s: &mut Scenario, datagram: Parsed, count: usize, what: &str) {
    let frames = s.drain_raw();
    assert_eq!(frames.len(), count, "{what}");
    for frame in &frames {
        assert!(frame.len() <= 14 + MTU);
        assert!(matches!(parse(frame), Parsed::Fragment { .. }));
    }
    let whole: Vec<Parsed> = defragment(frames).iter().map(|f| parse(f)).collect();
    assert_eq!(whole, vec![datagram]);
    assert_eq!(s.stats().ip_frag_fragmented, 1);
}

/// The guest's 8,000-byte datagram to the gateway's port 7 goes out in six fragments
/// (`order` says in which order) and must reach the host whole; the host's 8,000-byte
/// echo must reach the guest in fragments that reassemble to it.
fn udp_echo_v4(order: &[usize]) {
    let mut s = Scenario::new();
    let guest = s.guest;
    let data = pattern(8000, 1);
    let frame = guest.udp(40000, SocketAddrV4::new(GATEWAY, 7), &data);
    let pieces = fragment(&frame, MTU, 0x4242);
    assert_eq!(pieces.len(), 6);
    for &i in order {
        s.guest_sends(&pieces[i]);
    }
    let (flow, target) = s.host.udp_opens()[0];
    assert_eq!(target, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7));
    assert_eq!(
        s.host.udp_sent(flow),
        vec![data.clone()],
        "the datagram, whole"
    );
    assert_eq!(s.stats().ip_frag_reassembled, 1);
    assert_eq!((s.stats().ip_frag_pending, s.stats().ip_frag_bytes), (0, 0));

    let echo = pattern(8000, 2);
    s.deliver_datagram(flow, &echo);
    let to_guest = SocketAddrV4::new(guest.ip, 40000);
    let datagram = Parsed::Udp {
        src: SocketAddrV4::new(GATEWAY, 7).into(),
        dst: to_guest.into(),
        payload: echo,
    };
    assert_arrives_in_fragments(
        &mut s,
        datagram,
        6,
        "8,008 bytes of UDP in 1,480-byte pieces",
    );
}

#[test]
fn udp_8000_bytes_v4_in_order() {
    udp_echo_v4(&[0, 1, 2, 3, 4, 5]);
}

#[test]
fn udp_8000_bytes_v4_out_of_order_with_duplicates() {
    udp_echo_v4(&[5, 3, 3, 0, 4, 1, 2]);
}

#[test]
fn udp_8000_bytes_v6() {
    let mut s = with_ipv6();
    let guest = s.guest;
    let data = pattern(8000, 3);
    let frame = guest.udp6(40000, SocketAddrV6::new(GATEWAY6, 7, 0, 0), &data);
    let pieces = fragment(&frame, MTU, 0xdead_beef);
    assert_eq!(pieces.len(), 6);
    for piece in pieces.iter().rev() {
        s.guest_sends(piece);
    }
    let (flow, target) = s.host.udp_opens()[0];
    assert_eq!(target, SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 7));
    assert_eq!(s.host.udp_sent(flow), vec![data]);
    assert_eq!(s.stats().ip_frag_reassembled, 1);

    let echo = pattern(8000, 4);
    s.drain_raw();
    s.deliver_datagram(flow, &echo);
    let to_guest = SocketAddrV6::new(guest.ipv6_addr(), 40000, 0, 0);
    let datagram = Parsed::Udp {
        src: SocketAddrV6::new(GATEWAY6, 7, 0, 0).into(),
        dst: to_guest.into(),
        payload: echo,
    };
    assert_arrives_in_fragments(&mut s, datagram, 6, "8,008 bytes in 1,448-byte pieces");
}

/// `ping -s 4000 10.0.2.2`: the gateway answers itself, in fragments.
#[test]
fn ping_4000_bytes_to_the_gateway() {
    let mut s = Scenario::new();
    let guest = s.guest;
    let data = pattern(4000, 5);
    let request = guest.icmp_echo(GATEWAY, 77, 1, &data);
    send_fragmented(&mut s, &request, 9);
    let echo = Parsed::echo_reply(GATEWAY, guest.ip, 77, 1, &data);
    assert_eq!(reassembled(s.drain_raw(), 3), vec![echo]);
    let stats = s.stats();
    assert_eq!(
        (stats.ip_frag_reassembled, stats.ip_frag_fragmented),
        (1, 1)
    );
}

/// A large echo to the outside goes through the ping socket whole, and its reply comes
/// back in fragments.
#[test]
fn ping_4000_bytes_through_a_ping_socket() {
    let mut s = Scenario::new();
    let guest = s.guest;
    let remote = Ipv4Addr::new(192, 0, 2, 1);
    let data = pattern(4000, 6);
    send_fragmented(&mut s, &guest.icmp_echo(remote, 78, 1, &data), 10);
    let (flow, _) = s.host.ping_opens()[0];
    let sent = s.host.ping_sent(flow);
    assert_eq!(sent.len(), 1);
    let message = rslirp_stack::testing::parse_echo_message(IpVersion::Ipv4, &sent[0]).unwrap();
    assert_eq!(message.payload, data);
    s.ping_reply(flow, 1, &data);
    match &reassembled(s.drain_raw(), 3)[..] {
        [Parsed::IcmpEcho {
            reply: true,
            payload,
            ident: 78,
            ..
        }] => assert_eq!(payload, &data),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ping6_4000_bytes_to_the_gateway() {
    let mut s = with_ipv6();
    let guest = s.guest;
    let data = pattern(4000, 7);
    send_fragmented(&mut s, &guest.icmpv6_echo(GATEWAY6, 5, 1, &data), 11);
    let frames: Vec<Vec<u8>> = s
        .drain_raw()
        .into_iter()
        .filter(|f| !matches!(parse(f), Parsed::Ndisc { .. }))
        .collect();
    match &reassembled(frames, 3)[..] {
        [Parsed::IcmpEcho {
            reply: true,
            payload,
            src,
            ..
        }] => {
            assert_eq!(*src, GATEWAY6);
            assert_eq!(payload, &data);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_incomplete_datagram_times_out_on_the_clock() {
    let mut s = Scenario::new();
    let guest = s.guest;
    let frame = guest.udp(40000, SocketAddrV4::new(GATEWAY, 7), &pattern(3000, 8));
    let pieces = fragment(&frame, MTU, 1);
    s.guest_sends(&pieces[0]);
    assert_eq!(s.stats().ip_frag_pending, 1);
    assert!(s.stats().ip_frag_bytes > 1480);
    // poll_at includes the reassembly deadline, 30 s after the first fragment.
    assert_eq!(s.stack.poll_at(), Some(s.now() + Duration::from_secs(30)));
    s.advance(Duration::from_secs(29));
    assert_eq!(s.stats().ip_frag_pending, 1);
    s.advance(Duration::from_secs(1));
    let stats = s.stats();
    assert_eq!((stats.ip_frag_pending, stats.ip_frag_bytes), (0, 0));
    assert_eq!(stats.ip_frag_timeouts, 1);
    // The rest, late, completes nothing; no host socket was ever opened.
    s.guest_sends(&pieces[1]);
    s.guest_sends(&pieces[2]);
    assert!(s.host.udp_opens().is_empty());
    assert_eq!(s.stats().ip_frag_reassembled, 0);
}

#[test]
fn overlapping_fragments_drop_the_datagram() {
    let mut s = Scenario::new();
    let guest = s.guest;
    let data = pattern(3000, 9);
    let frame = guest.udp(40000, SocketAddrV4::new(GATEWAY, 7), &data);
    assert_eq!(payload_len(&frame), 3008);
    s.guest_sends(&ipv4_piece(&frame, 0, 1480, true, 5));
    // Starts 8 bytes inside the first.
    s.guest_sends(&ipv4_piece(&frame, 1472, 1480, true, 5));
    s.guest_sends(&ipv4_piece(&frame, 1480, 1480, true, 5));
    s.guest_sends(&ipv4_piece(&frame, 2960, 48, false, 5));
    assert!(s.host.udp_opens().is_empty(), "nothing reaches the host");
    assert_eq!(s.stats().ip_frag_overlaps, 1);
    assert_eq!(s.stats().ip_frag_reassembled, 0);
    // Another identification goes through.
    send_fragmented(&mut s, &frame, 6);
    let (flow, _) = s.host.udp_opens()[0];
    assert_eq!(s.host.udp_sent(flow), vec![data]);
}

/// Thousands of first fragments never completed: the table keeps its bounds, counts
/// what it dropped, and a datagram sent afterwards is still reassembled.
#[test]
fn a_flood_of_first_fragments_keeps_the_bounds() {
    let limits = Limits::default();
    let mut s = Scenario::new();
    let guest = s.guest;
    let frame = guest.udp(40000, SocketAddrV4::new(GATEWAY, 9), &pattern(3000, 10));
    let first = fragment(&frame, MTU, 0).remove(0);
    let mut peak = 0;
    for ident in 0..5000u16 {
        let mut piece = first.clone();
        // A distinct identification each (bytes 18..20 of the IPv4 header), checksum anew.
        let mut ip = smoltcp::wire::Ipv4Packet::new_unchecked(&mut piece[14..]);
        ip.set_ident(ident);
        ip.fill_checksum();
        s.guest_sends(&piece);
        let stats = s.stats();
        assert!(stats.ip_frag_pending as usize <= limits.max_reassembly_datagrams);
        assert!(stats.ip_frag_bytes as usize <= limits.max_reassembly_bytes);
        peak = peak.max(stats.ip_frag_bytes);
    }
    let stats = s.stats();
    assert_eq!(stats.ip_frag_pending, 64);
    assert_eq!(
        stats.ip_frag_datagram_evictions + stats.ip_frag_byte_evictions,
        5000 - 64
    );
    assert!(peak > 0);
    assert!(s.host.udp_opens().is_empty());
    // Still serving.
    let data = pattern(8000, 11);
    let frame = guest.udp(40001, SocketAddrV4::new(GATEWAY, 7), &data);
    send_fragmented(&mut s, &frame, 0xffff_0001);
    let (flow, _) = s.host.udp_opens()[0];
    assert_eq!(s.host.udp_sent(flow), vec![data]);
    // get_stats shows the counters.
    let reply = s.api(r#"{"execute":"get_stats"}"#);
    assert!(reply.contains(r#""ip_frag_reassembled":1"#), "{reply}");
    assert!(
        reply.contains(r#""ip_frag_datagram_evictions":"#),
        "{reply}"
    );
}

/// With IPv6 off, a packet with a Fragment header is not for us, as any IPv6.
#[test]
fn ipv6_fragments_are_ignored_without_ipv6() {
    let mut s = Scenario::new();
    let guest = s.guest;
    let frame = guest.udp6(
        40000,
        SocketAddrV6::new(GATEWAY6, 7, 0, 0),
        &pattern(3000, 12),
    );
    send_fragmented(&mut s, &frame, 1);
    assert!(s.host.udp_opens().is_empty());
    assert_eq!(s.stats().ip_frag_pending, 0);
}

/// The reassembled datagram takes the same path as an unfragmented one: refusals quote
/// it as usual (a fragmented UDP datagram to a closed port of the gateway gets port
/// unreachable when the host says so).
#[test]
fn a_reassembled_datagram_to_a_refused_destination_is_refused() {
    let mut s = Scenario::new();
    let guest = s.guest;
    // 10.0.2.50 is inside the virtual network, not a service: host unreachable.
    let frame = guest.udp(
        40000,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 50), 7),
        &pattern(3000, 13),
    );
    send_fragmented(&mut s, &frame, 77);
    match &s.drain()[..] {
        [Parsed::IcmpUnreachable { src, code: 1, .. }] => assert_eq!(*src, GATEWAY),
        other => panic!("{other:?}"),
    }
}

/// IPv6: an overlap drops the datagram; an atomic fragment (offset 0, no more: RFC 6946)
/// is a whole packet; an incomplete datagram times out.
#[test]
fn ipv6_overlap_atomic_fragment_and_timeout() {
    use rslirp_stack::testing::fragments::ipv6_piece;
    let mut s = with_ipv6();
    let guest = s.guest;
    let data = pattern(3000, 14);
    let frame = guest.udp6(40000, SocketAddrV6::new(GATEWAY6, 7, 0, 0), &data);
    assert_eq!(payload_len(&frame), 3008);
    s.guest_sends(&ipv6_piece(&frame, 0, 1448, true, 1));
    s.guest_sends(&ipv6_piece(&frame, 1440, 1448, true, 1));
    s.guest_sends(&ipv6_piece(&frame, 1448, 1560, false, 1));
    assert!(s.host.udp_opens().is_empty());
    assert_eq!(s.stats().ip_frag_overlaps, 1);

    let small = guest.udp6(40001, SocketAddrV6::new(GATEWAY6, 7, 0, 0), b"atomic");
    s.guest_sends(&ipv6_piece(&small, 0, payload_len(&small), false, 2));
    let (flow, _) = s.host.udp_opens()[0];
    assert_eq!(s.host.udp_sent(flow), vec![b"atomic".to_vec()]);

    s.guest_sends(&ipv6_piece(&frame, 0, 1448, true, 3));
    assert_eq!(
        s.stats().ip_frag_pending,
        2,
        "the dropped one keeps its slot"
    );
    s.advance(Duration::from_secs(30));
    let stats = s.stats();
    assert_eq!((stats.ip_frag_pending, stats.ip_frag_bytes), (0, 0));
    assert_eq!(
        stats.ip_frag_timeouts, 1,
        "the overlapped one is not counted again"
    );
}

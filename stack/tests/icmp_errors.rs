//! ICMP errors from the host's network relayed to the guest (issue #15 §2), as scenarios on
//! the virtual clock: the host reports an error on a UDP or ping flow's socket (as Linux
//! does with IP_RECVERR: `SimHost::icmp_error`), and the guest must get the matching
//! ICMP/ICMPv6 error about its own datagram, from the right address.
//! Default network 10.0.2.0/24 (gateway 10.0.2.2, guest 10.0.2.100); with IPv6 fd00::/64.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use rslirp_stack::testing::{echo_message, Scenario};
use rslirp_stack::{Config, Duration, FlowId, HostError, IcmpReport, Limits};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv6Packet, IpProtocol, IpVersion, Ipv4Packet,
    Ipv6Packet, UdpPacket,
};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// The far host, and a router on the way to it.
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
const ETH: usize = 14;

fn the_only<T: core::fmt::Debug>(mut items: Vec<T>, what: &str) -> T {
    assert_eq!(items.len(), 1, "expected exactly one {what}, got {items:?}");
    items.remove(0)
}

/// The guest's `frame` goes out; returns the one UDP flow the host opened for it.
fn send_opening(s: &mut Scenario, frame: &[u8]) -> FlowId {
    s.guest_sends(frame);
    the_only(s.host.udp_opens(), "udp_open").0
}

/// The guest sends `payload` from port 40000 to `REMOTE:port`; returns the host's one UDP
/// flow for it.
fn udp_to_remote(s: &mut Scenario, port: u16, payload: &[u8]) -> FlowId {
    let frame = s.guest.udp(40000, SocketAddrV4::new(REMOTE, port), payload);
    send_opening(s, &frame)
}

fn report(v6: bool, icmp_type: u8, code: u8, info: u32, offender: IpAddr) -> IcmpReport {
    IcmpReport {
        v6,
        icmp_type,
        code,
        info,
        offender: Some(offender),
        len: 0, // SimHost fills it in
    }
}

/// A guest frame (Ethernet + IPv4) with its TTL changed, header checksum redone.
fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[ETH..]);
    ip.set_hop_limit(ttl);
    ip.fill_checksum();
    frame
}

/// A guest frame (Ethernet + IPv6) with its hop limit changed.
fn with_hop_limit(mut frame: Vec<u8>, hop_limit: u8) -> Vec<u8> {
    Ipv6Packet::new_unchecked(&mut frame[ETH..]).set_hop_limit(hop_limit);
    frame
}

/// An ICMP error the guest got: who sent it, type, code, the word after the checksum, and
/// the quoted packet.
#[derive(Debug)]
struct Error4 {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    quoted: Vec<u8>,
}

fn icmp_errors(frames: Vec<Vec<u8>>) -> Vec<Error4> {
    frames
        .into_iter()
        .map(|frame| {
            let eth = EthernetFrame::new_checked(&frame[..]).expect("Ethernet");
            assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
            let ip = Ipv4Packet::new_checked(eth.payload()).expect("IPv4");
            assert!(ip.verify_checksum());
            assert_eq!(ip.next_header(), IpProtocol::Icmp, "an ICMP message");
            let icmp = Icmpv4Packet::new_checked(ip.payload()).expect("ICMP");
            assert!(icmp.verify_checksum(), "ICMP checksum");
            let bytes = ip.payload();
            Error4 {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
                icmp_type: bytes[0],
                code: bytes[1],
                rest: bytes[4..8].try_into().unwrap(),
                quoted: bytes[8..].to_vec(),
            }
        })
        .collect()
}

mod udp {
    use super::*;

    /// traceroute's second probe: TTL 2 (1 past the gateway) expires at the first router; the guest hears time
    /// exceeded from that router, quoting its own probe (its addresses, TTL and ports).
    #[test]
    fn time_exceeded_quotes_the_guests_probe_from_the_router() {
        let mut s = Scenario::new();
        let guest = s.guest;
        let probe = with_ttl(
            guest.udp(40000, SocketAddrV4::new(REMOTE, 33434), b"probe"),
            2,
        );
        let flow = send_opening(&mut s, &probe);
        assert_eq!(s.host.udp_sent(flow), vec![b"probe".to_vec()]);

        s.icmp_error(flow, report(false, 11, 0, 0, ROUTER.into()), b"probe");
        let error = the_only(icmp_errors(s.drain_raw()), "ICMP error");
        assert_eq!((error.src, error.dst), (ROUTER, GUEST));
        assert_eq!(
            (error.icmp_type, error.code),
            (11, 0),
            "time exceeded in transit"
        );
        // The guest's own datagram, IP header and UDP header and payload, byte for byte.
        assert_eq!(error.quoted, probe[ETH..].to_vec());
        let quoted_ip = Ipv4Packet::new_checked(&error.quoted[..]).expect("quoted IPv4");
        assert_eq!(quoted_ip.hop_limit(), 2);
        let quoted_udp = UdpPacket::new_checked(quoted_ip.payload()).expect("quoted UDP");
        assert_eq!(
            (quoted_udp.src_port(), quoted_udp.dst_port()),
            (40000, 33434)
        );
        assert_eq!(s.stats().icmp_errors_relayed, 1);

        // The flow lives on: the next probe goes out, an answer comes back.
        s.guest_sends(&with_ttl(
            guest.udp(40000, SocketAddrV4::new(REMOTE, 33434), b"again"),
            8,
        ));
        assert_eq!(s.host.udp_sent(flow), vec![b"again".to_vec()]);
        s.deliver_datagram(flow, b"answer");
        assert_eq!(s.drain().len(), 1, "the answer reaches the guest");
    }

    /// The far host's port unreachable comes from the address the guest sent to, also
    /// when the NAT chose another target (the gateway is host loopback).
    #[test]
    fn port_unreachable_comes_from_the_address_the_guest_sent_to() {
        let mut s = Scenario::new();
        let guest = s.guest;
        s.guest_sends(&guest.udp(40000, SocketAddrV4::new(REMOTE, 9), b"x"));
        s.guest_sends(&guest.udp(40001, SocketAddrV4::new(GATEWAY, 9), b"y"));
        let opens = s.host.udp_opens();
        assert_eq!(opens.len(), 2);
        let (remote_flow, gateway_flow) = (opens[0].0, opens[1].0);

        s.icmp_error(remote_flow, report(false, 3, 3, 0, REMOTE.into()), b"x");
        s.icmp_error(
            gateway_flow,
            report(false, 3, 3, 0, Ipv4Addr::LOCALHOST.into()),
            b"y",
        );
        let errors = icmp_errors(s.drain_raw());
        let from: Vec<_> = errors
            .iter()
            .map(|e| (e.src, e.icmp_type, e.code))
            .collect();
        assert_eq!(from, vec![(REMOTE, 3, 3), (GATEWAY, 3, 3)]);
    }

    /// Fragmentation needed carries the next-hop MTU (RFC 1191) for the guest's path MTU
    /// discovery.
    #[test]
    fn fragmentation_needed_carries_the_mtu() {
        let mut s = Scenario::new();
        let payload = vec![7u8; 1400];
        let flow = udp_to_remote(&mut s, 5000, &payload);

        s.icmp_error(
            flow,
            report(false, 3, 4, 1280, ROUTER.into()),
            &payload[..100],
        );
        let error = the_only(icmp_errors(s.drain_raw()), "ICMP error");
        assert_eq!((error.src, error.icmp_type, error.code), (ROUTER, 3, 4));
        assert_eq!(error.rest, [0, 0, 0x05, 0x00], "next-hop MTU 1280");
        // The quote: IP header (20) + UDP header (8) + what the router quoted (100).
        assert_eq!(error.quoted.len(), 20 + 8 + 100);
    }

    /// A long quote is cut so that the error stays within 576 bytes (RFC 1812).
    #[test]
    fn the_error_stays_within_576_bytes() {
        let mut s = Scenario::new();
        let payload = vec![1u8; 1400];
        let flow = udp_to_remote(&mut s, 5000, &payload);
        s.icmp_error(flow, report(false, 11, 0, 0, ROUTER.into()), &payload);
        let frame = the_only(s.drain_raw(), "ICMP error");
        assert_eq!(frame.len() - ETH, 576);
    }

    /// With IP_RECVERR the error also fails the flow's next send once (Linux reports the
    /// socket error there): the error is relayed and the guest's datagram still goes out.
    #[test]
    fn an_error_met_on_send_is_relayed_and_the_datagram_sent() {
        let mut s = Scenario::new();
        let guest = s.guest;
        let flow = udp_to_remote(&mut s, 33434, b"one");
        // The error arrives, but the guest's next datagram is handled before its event.
        let _event = s
            .host
            .icmp_error(flow, report(false, 11, 0, 0, ROUTER.into()), b"one");
        s.guest_sends(&guest.udp(40000, SocketAddrV4::new(REMOTE, 33434), b"two"));
        assert_eq!(
            s.host.udp_sent(flow),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        let error = the_only(icmp_errors(s.drain_raw()), "ICMP error");
        assert_eq!((error.src, error.icmp_type), (ROUTER, 11));
    }

    /// An error recv meets first (the socket error) is relayed as the queued report says,
    /// not guessed from the errno (which for time exceeded is EHOSTUNREACH).
    #[test]
    fn an_error_met_on_recv_is_relayed_as_reported() {
        let mut s = Scenario::new();
        let flow = udp_to_remote(&mut s, 33434, b"one");
        let _event = s
            .host
            .icmp_error(flow, report(false, 11, 0, 0, ROUTER.into()), b"one");
        // A readable event without the error bit: recv meets the socket error first.
        s.deliver_datagram(flow, b"late answer");
        let frames = s.drain_raw();
        assert_eq!(frames.len(), 2, "the error and the answer");
        let error = icmp_errors(vec![frames[0].clone()]).remove(0);
        assert_eq!((error.src, error.icmp_type, error.code), (ROUTER, 11, 0));
        assert_eq!(s.stats().icmp_errors_relayed, 1);
    }

    /// Errors beyond `max_icmp_error_rate` are dropped and counted.
    #[test]
    fn errors_beyond_the_rate_are_dropped_and_counted() {
        let mut s = Scenario::with_config(Config {
            limits: Limits {
                max_icmp_error_rate: 10,
                icmp_error_burst: 2,
                ..Limits::default()
            },
            ..Config::default()
        });
        let flow = udp_to_remote(&mut s, 33434, b"p");
        for _ in 0..3 {
            let _ = s
                .host
                .icmp_error(flow, report(false, 11, 0, 0, ROUTER.into()), b"p");
        }
        s.host_event(s.host.event(flow));
        assert_eq!(icmp_errors(s.drain_raw()).len(), 2, "the burst");
        let stats = s.stats();
        assert_eq!(
            (stats.icmp_errors_relayed, stats.icmp_error_rate_drops),
            (2, 1)
        );

        // A token every 100 ms.
        s.advance(Duration::from_millis(100));
        s.icmp_error(flow, report(false, 11, 0, 0, ROUTER.into()), b"p");
        assert_eq!(icmp_errors(s.drain_raw()).len(), 1);
    }

    /// ICMP has nothing to tell the guest for some reports (parameter problem): counted,
    /// and the flow goes on.
    #[test]
    fn errors_without_a_guest_message_are_counted() {
        let mut s = Scenario::new();
        let flow = udp_to_remote(&mut s, 33434, b"p");
        s.icmp_error(flow, report(false, 12, 0, 0, ROUTER.into()), b"p");
        assert_eq!(s.drain_raw(), Vec::<Vec<u8>>::new());
        assert_eq!(s.stats().icmp_errors_unrelayed, 1);
        s.deliver_datagram(flow, b"answer");
        assert_eq!(s.drain().len(), 1);
    }

    /// A DNS query whose nameserver does not listen goes to the next nameserver, as on
    /// ECONNREFUSED; the guest hears nothing of the first.
    #[test]
    fn dns_port_unreachable_tries_the_next_nameserver() {
        let mut s = Scenario::new();
        let first = IpAddr::V4(Ipv4Addr::new(10, 97, 0, 1));
        let second = IpAddr::V4(Ipv4Addr::new(10, 97, 0, 2));
        s.stack.set_dns_upstreams(vec![first, second]);
        let guest = s.guest;
        const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01";
        let dns = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53);
        s.guest_sends(&guest.udp(40000, dns, QUERY));
        let (flow, target) = the_only(s.host.udp_opens(), "udp_open");
        assert_eq!(target.ip(), first);
        s.icmp_error(flow, report(false, 3, 3, 0, first), &QUERY[..8]);
        let (_, retried) = the_only(s.host.udp_reconnects(), "udp_reconnect");
        assert_eq!(retried.ip(), second);
        assert_eq!(s.host.udp_sent(flow), vec![QUERY.to_vec(), QUERY.to_vec()]);
        assert_eq!(s.drain_raw(), Vec::<Vec<u8>>::new());
        assert_eq!(s.stats().dns_retries, 1);
    }

    /// An errno without a queued report (a host without IP_RECVERR) keeps the old answer.
    #[test]
    fn a_bare_connection_refused_still_means_port_unreachable() {
        let mut s = Scenario::new();
        let flow = udp_to_remote(&mut s, 9, b"x");
        let event = s.host.set_error(flow, HostError::ConnectionRefused);
        s.host_event(event);
        let error = the_only(icmp_errors(s.drain_raw()), "ICMP error");
        assert_eq!((error.src, error.icmp_type, error.code), (REMOTE, 3, 3));
        assert_eq!(s.stats().icmp_errors_relayed, 0);
    }
}

mod echo {
    use super::*;

    /// `ping -t 1`: time exceeded quoting the guest's echo request with the guest's own
    /// identifier (not the host ping socket's) and a checksum that matches it.
    #[test]
    fn time_exceeded_quotes_the_guests_identifier() {
        let mut s = Scenario::new();
        let guest = s.guest;
        let request = with_ttl(guest.icmp_echo(REMOTE, 0x1234, 5, b"ping data"), 2);
        s.guest_sends(&request);
        let (flow, _) = the_only(s.host.ping_opens(), "ping_open");
        let socket_ident = s.host.socket(flow).expect("a ping socket").ping_ident;
        assert_ne!(socket_ident, 0x1234);

        // The router quotes the request as the host sent it: the socket's identifier.
        let sent = echo_message(IpVersion::Ipv4, false, socket_ident, 5, b"ping data");
        s.icmp_error(flow, report(false, 11, 0, 0, ROUTER.into()), &sent);
        let error = the_only(icmp_errors(s.drain_raw()), "ICMP error");
        assert_eq!((error.src, error.dst, error.icmp_type), (ROUTER, GUEST, 11));
        assert_eq!(error.quoted, request[ETH..].to_vec(), "the guest's request");
        let quoted = Ipv4Packet::new_checked(&error.quoted[..]).expect("quoted IPv4");
        let echo = Icmpv4Packet::new_checked(quoted.payload()).expect("quoted echo");
        assert_eq!((echo.echo_ident(), echo.echo_seq_no()), (0x1234, 5));
        assert!(echo.verify_checksum());
    }
}

mod ipv6 {
    use super::*;

    /// An IPv6 network whose guest is up (the first router advertisement came and went).
    fn guest_up() -> Scenario {
        let mut s = Scenario::with_config(Config {
            enable_ipv6: true,
            ..Config::default()
        });
        s.advance(Duration::from_secs(1));
        s.drain_raw();
        s
    }

    /// An ICMPv6 error the guest got: source, type, code, the word after the checksum,
    /// and the quoted packet.
    fn icmpv6_error(frame: &[u8], guest: Ipv6Addr) -> (Ipv6Addr, u8, u8, [u8; 4], Vec<u8>) {
        let eth = EthernetFrame::new_checked(frame).expect("Ethernet");
        assert_eq!(eth.ethertype(), EthernetProtocol::Ipv6);
        let ip = Ipv6Packet::new_checked(eth.payload()).expect("IPv6");
        assert_eq!(ip.dst_addr(), guest);
        assert_eq!(ip.next_header(), IpProtocol::Icmpv6);
        let icmp = Icmpv6Packet::new_checked(ip.payload()).expect("ICMPv6");
        assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
        let bytes = ip.payload();
        (
            ip.src_addr(),
            bytes[0],
            bytes[1],
            bytes[4..8].try_into().unwrap(),
            bytes[8..].to_vec(),
        )
    }

    #[test]
    fn hop_limit_2_hears_time_exceeded_from_the_first_router() {
        let mut s = guest_up();
        let guest = s.guest;
        let probe = with_hop_limit(
            guest.udp6(40000, SocketAddrV6::new(REMOTE6, 33434, 0, 0), b"probe"),
            2,
        );
        let flow = send_opening(&mut s, &probe);
        s.icmp_error(flow, report(true, 3, 0, 0, ROUTER6.into()), b"probe");
        let frame = the_only(s.drain_raw(), "ICMPv6 error");
        let (src, icmp_type, code, _, quoted) = icmpv6_error(&frame, guest.ipv6_addr());
        assert_eq!((src, icmp_type, code), (ROUTER6, 3, 0));
        assert_eq!(quoted, probe[ETH..].to_vec(), "the guest's probe");
    }

    #[test]
    fn packet_too_big_carries_the_mtu() {
        let mut s = guest_up();
        let guest = s.guest;
        let payload = vec![3u8; 1400];
        let flow = send_opening(
            &mut s,
            &guest.udp6(40000, SocketAddrV6::new(REMOTE6, 5000, 0, 0), &payload),
        );
        s.icmp_error(flow, report(true, 2, 0, 1280, ROUTER6.into()), &payload);
        let frame = the_only(s.drain_raw(), "ICMPv6 error");
        assert_eq!(frame.len() - ETH, 1280, "within the minimum MTU");
        let (src, icmp_type, code, mtu, _) = icmpv6_error(&frame, guest.ipv6_addr());
        assert_eq!((src, icmp_type, code), (ROUTER6, 2, 0));
        assert_eq!(u32::from_be_bytes(mtu), 1280);
    }

    #[test]
    fn port_unreachable_from_host_loopback_comes_from_the_gateway() {
        let mut s = guest_up();
        let guest = s.guest;
        let gateway = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
        let flow = send_opening(
            &mut s,
            &guest.udp6(40000, SocketAddrV6::new(gateway, 9, 0, 0), b"x"),
        );
        s.icmp_error(
            flow,
            report(true, 1, 4, 0, Ipv6Addr::LOCALHOST.into()),
            b"x",
        );
        let frame = the_only(s.drain_raw(), "ICMPv6 error");
        let (src, icmp_type, code, _, _) = icmpv6_error(&frame, guest.ipv6_addr());
        assert_eq!((src, icmp_type, code), (gateway, 1, 4));
    }
}

//! The network as the guest sees it (SPEC.md section 2), told as scenarios: frames in from
//! the guest, frames and host calls out, on a virtual clock. Default network 10.0.2.0/24:
//! gateway 10.0.2.2 (MAC 52:55:0a:00:02:02), DNS 10.0.2.3, guest 10.0.2.100.

use core::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use rslirp_stack::testing::{
    the_only, the_only_segment, the_unreachable, GuestTcp, HostCall, Parsed, Scenario,
};
use rslirp_stack::{CloseMode, Config, Duration, FlowId, HostError};
use smoltcp::wire::{
    ArpOperation, ArpRepr, EthernetAddress, Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet,
    TcpPacket,
};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// Somewhere on the internet, reached through host sockets.
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

/// Ethernet header, then the IPv4 header of the frames our guest builds (no options).
const ETH: usize = 14;
const IP_HEADER: usize = 20;

fn remote(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(REMOTE, port)
}

fn gateway(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(GATEWAY, port)
}

fn host_loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Deterministic, distinct test data.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 + seed * 7 + i / 251) as u8)
        .collect()
}

mod arp {
    use super::*;

    #[test]
    fn gateway_and_dns_are_answered_to_the_requester() {
        let mut s = Scenario::new();
        let guest = s.guest;
        for (ip, last_octet) in [(GATEWAY, 2), (DNS, 3)] {
            s.guest_sends(&guest.arp_request(ip));
            // drain() also checks that the frame is addressed to the guest's MAC.
            let reply = the_only(s.drain(), "ARP reply");
            assert_eq!(
                reply,
                Parsed::Arp(ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Reply,
                    source_hardware_addr: EthernetAddress([0x52, 0x55, 10, 0, 2, last_octet]),
                    source_protocol_addr: ip,
                    target_hardware_addr: guest.mac,
                    target_protocol_addr: GUEST,
                }),
                "ARP reply for {ip}"
            );
        }
    }

    #[test]
    fn nobody_else_answers() {
        let mut s = Scenario::new();
        let guest = s.guest;
        for ip in [
            Ipv4Addr::new(10, 0, 2, 1),
            Ipv4Addr::new(10, 0, 2, 4),
            GUEST,
            Ipv4Addr::new(8, 8, 8, 8),
        ] {
            s.guest_sends(&guest.arp_request(ip));
            assert_eq!(s.drain(), vec![], "no ARP reply for {ip}");
        }
        assert!(s.host.calls().is_empty());
    }
}

mod icmp {
    use super::*;

    #[test]
    fn gateway_and_dns_answer_ping_themselves() {
        let mut s = Scenario::new();
        s.assert_services_answer_ping([GATEWAY.into(), DNS.into()], 0x1234, b"are you there?");
    }

    #[test]
    fn remote_ping_goes_through_a_host_ping_socket_and_back() {
        let mut s = Scenario::new();
        let payload = pattern(1, 56);
        s.assert_ping_through_host(REMOTE, 0x1234, 7, &payload);
    }

    #[test]
    fn ping_is_dropped_silently_when_the_host_forbids_ping_sockets() {
        let mut s = Scenario::new();
        let guest = s.guest;
        s.host.set_ping_allowed(false);
        s.guest_sends(&guest.icmp_echo(REMOTE, 0x1234, 1, b"ping"));
        assert_eq!(s.host.ping_opens().len(), 1, "the stack tried the host");
        s.guest_sends(&guest.icmp_echo(REMOTE, 0x1234, 2, b"ping"));
        s.advance(secs(5));
        assert_eq!(s.drain(), vec![], "no reply and no ICMP error");
        assert_eq!(s.stats().icmp_flows, 0);
        assert_eq!(s.host.open_count(), 0);
    }
}

mod tcp {
    use super::*;

    #[test]
    fn syn_ack_waits_for_the_host_connect() {
        let mut s = Scenario::new();
        let mut conn = s.guest_tcp(40000, remote(80));
        let (flow, target) = s.syn_and_connect(&mut conn);
        assert_eq!(target, SocketAddr::V4(remote(80)));
        // The guest retransmits its SYN after 2 s; still one connect, still no answer.
        // 1460: what fits the 1500-byte MTU.
        s.syn_ack_after_connect(&mut conn, flow, secs(2), 1460);
    }

    #[test]
    fn gateway_ports_are_host_loopback_ports() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, gateway(8080));
        assert!(conn.established());
        let socket = s.host.socket(flow).expect("a host socket");
        assert_eq!(socket.remote, host_loopback(8080));
    }

    #[test]
    fn without_host_loopback_the_gateway_is_net_unreachable() {
        let mut s = Scenario::with_config(Config {
            disable_host_loopback: true,
            ..Config::default()
        });
        let guest = s.guest;
        let syn = guest.tcp_syn(40000, gateway(8080), 1000);
        s.guest_sends(&syn);
        assert_eq!(s.host.connects(), vec![], "no host connect");
        let error = the_unreachable(s.drain(), "ICMP destination unreachable");
        assert_eq!(error.dst, GUEST);
        assert_eq!(error.code, 0, "net unreachable");
        assert_quotes(&error.original, &syn);
    }

    /// RFC 792: the ICMP error carries the original IP header and its first 8 data bytes.
    fn assert_quotes(original: &[u8], frame: &[u8]) {
        let header_and_8 = &frame[ETH..ETH + IP_HEADER + 8];
        assert!(
            original.len() >= header_and_8.len(),
            "quote of {} bytes is too short",
            original.len()
        );
        assert_eq!(
            &original[..IP_HEADER],
            &header_and_8[..IP_HEADER],
            "quoted IP header"
        );
        assert_eq!(
            &original[IP_HEADER..IP_HEADER + 8],
            &header_and_8[IP_HEADER..],
            "quoted ports and sequence number"
        );
    }

    #[test]
    fn refused_connect_resets_the_guest() {
        let mut s = Scenario::new();
        let mut conn = s.guest_tcp(40000, remote(81));
        s.assert_refused_connect_resets(&mut conn);
    }

    #[test]
    fn unreachable_host_is_icmp_host_unreachable() {
        let mut s = Scenario::new();
        let mut conn = s.guest_tcp(40000, remote(80));
        let syn = conn.syn();
        let (flow, _) = s.syn_and_connect(&mut conn);
        s.fail_connect(flow, HostError::HostUnreachable);
        let error = the_unreachable(s.drain(), "ICMP destination unreachable");
        assert_eq!(error.dst, GUEST);
        assert_eq!(error.code, 1, "host unreachable");
        assert_quotes(&error.original, &syn);
        assert!(s.host.close_mode(flow).is_some(), "host socket closed");
        assert_eq!(s.stats().tcp_flows, 0);
    }

    #[test]
    fn data_flows_both_ways_in_order() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let mut conns = [conn];

        let request = b"GET / HTTP/1.0\r\n\r\n";
        let frame = conns[0].send(request);
        s.guest_sends(&frame);
        s.run_until(&mut conns, "the ACK of the request", |_, c| {
            c[0].all_acked()
        });
        assert_eq!(s.take_sent(flow), request);

        let response = pattern(2, 200_000);
        s.peer_send(flow, &response);
        s.run_until(&mut conns, "the whole response", |_, c| {
            c[0].received().len() >= response.len()
        });
        assert!(
            conns[0].received() == response,
            "response arrived intact and in order"
        );
        assert_eq!(conns[0].out_of_order, 0);

        // Guest to host in MSS-sized segments; the stack's ACKs keep up.
        let upload = pattern(3, 100_000);
        for chunk in upload.chunks(1460) {
            let frame = conns[0].send(chunk);
            s.guest_sends(&frame);
        }
        s.run_until(&mut conns, "the ACK of the upload", |_, c| c[0].all_acked());
        assert!(s.take_sent(flow) == upload, "upload arrived intact");
    }

    #[test]
    fn guest_data_waits_for_room_in_the_host_socket() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let mut conns = [conn];
        assert_eq!(s.host.set_send_window(flow, 1000), None);

        let upload = pattern(4, 10_000);
        for chunk in upload.chunks(1000) {
            let frame = conns[0].send(chunk);
            s.guest_sends(&frame);
        }
        let mut delivered = Vec::new();
        for _ in 0..100 {
            s.exchange(&mut conns);
            assert!(
                s.host
                    .socket(flow)
                    .is_some_and(|sock| sock.outbound.len() <= 1000),
                "the stack never writes past a WouldBlock"
            );
            delivered.extend(s.take_sent(flow));
            if delivered.len() >= upload.len() {
                break;
            }
            s.advance(Duration::from_millis(10));
        }
        assert!(delivered == upload, "every byte arrived once, in order");
    }

    #[test]
    fn guest_half_close_keeps_the_other_direction_open() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let mut conns = [conn];

        let frame = conns[0].send(b"request, then FIN");
        s.guest_sends(&frame);
        let fin = conns[0].fin();
        s.guest_sends(&fin);
        s.run_until(&mut conns, "the ACK of the guest's FIN", |_, c| {
            c[0].all_acked()
        });
        assert_eq!(s.take_sent(flow), b"request, then FIN");
        assert!(
            s.host.shutdown_write_called(flow),
            "FIN became a half-close"
        );
        assert_eq!(s.host.close_mode(flow), None, "the host socket stays open");

        let reply = pattern(5, 5_000);
        s.peer_send(flow, &reply);
        s.run_until(&mut conns, "the reply after the FIN", |_, c| {
            c[0].received().len() >= reply.len()
        });
        assert!(conns[0].received() == reply, "the reply arrived intact");
        assert!(!conns[0].peer_fin);

        s.peer_close(flow);
        s.run_until(&mut conns, "the FIN to the guest", |_, c| c[0].peer_fin);
        s.advance(secs(1));
        assert_eq!(s.host.close_mode(flow), Some(CloseMode::Graceful));
        assert_eq!(s.stats().tcp_flows, 0);
        assert_eq!(s.host.open_count(), 0);
    }

    #[test]
    fn peer_half_close_keeps_the_other_direction_open() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let mut conns = [conn];

        s.peer_send(flow, b"banner, then EOF");
        s.peer_close(flow);
        s.run_until(&mut conns, "the FIN to the guest", |_, c| c[0].peer_fin);
        assert_eq!(conns[0].received(), b"banner, then EOF");

        let frame = conns[0].send(b"still talking");
        s.guest_sends(&frame);
        s.run_until(&mut conns, "the ACK of the late data", |_, c| {
            c[0].all_acked()
        });
        assert_eq!(s.take_sent(flow), b"still talking");
        assert_eq!(s.host.close_mode(flow), None, "the host socket stays open");

        let fin = conns[0].fin();
        s.guest_sends(&fin);
        s.run_until(&mut conns, "the ACK of the guest's FIN", |_, c| {
            c[0].all_acked()
        });
        // Both directions are done, so a half-close or an orderly close both carry the FIN.
        assert!(s.host.shutdown_write_called(flow) || s.host.close_mode(flow).is_some());
        // Allow for TIME-WAIT: the stack closed first, so it may linger a while.
        s.advance(secs(120));
        assert_eq!(s.host.close_mode(flow), Some(CloseMode::Graceful));
        assert_eq!(s.stats().tcp_flows, 0);
    }

    #[test]
    fn guest_reset_aborts_the_host_socket() {
        let mut s = Scenario::new();
        let (mut conn, flow) = s.open_tcp(40000, remote(80));
        s.guest_sends(&conn.rst());
        assert_eq!(s.host.close_mode(flow), Some(CloseMode::Abort));
        assert_eq!(s.stats().tcp_flows, 0);
        assert_eq!(s.drain(), vec![], "a RST is not answered");
    }

    #[test]
    fn peer_reset_resets_the_guest() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let expected_seq = conn.rcv_nxt();
        s.peer_reset(flow);
        let rst = the_only_segment(s.drain(), "RST");
        assert!(rst.rst, "got {}", rst.flags());
        assert_eq!((rst.src_port, rst.dst_port), (80, 40000));
        assert_eq!(rst.seq, expected_seq, "the RST is in the guest's window");
        assert!(s.host.close_mode(flow).is_some(), "host socket closed");
        assert_eq!(s.stats().tcp_flows, 0);
    }
}

mod udp {
    use super::*;

    /// A guest frame (Ethernet + IPv4) with its TTL changed, header checksum redone.
    fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
        ip.set_hop_limit(ttl);
        ip.fill_checksum();
        frame
    }

    /// The guest's TTL goes with each datagram (and echo request) to the host socket, one
    /// less as a router forwards it (as libslirp does), so traceroute's probes expire where
    /// they should and the gateway is the first hop.
    #[test]
    fn the_guests_ttl_less_one_is_carried_to_the_host_socket() {
        let mut s = Scenario::new();
        let guest = s.guest;
        s.guest_sends(&with_ttl(guest.udp(5000, remote(33434), b"probe"), 2));
        s.guest_sends(&with_ttl(guest.udp(5000, remote(33434), b"probe"), 8));
        s.guest_sends(&guest.udp(5000, remote(33434), b"plain"));
        let (flow, _) = the_only(s.host.udp_opens(), "udp_open");
        let socket = s.host.socket(flow).expect("a host socket");
        assert_eq!(socket.sent_hop_limits, vec![1, 7, 63]);

        s.guest_sends(&with_ttl(guest.icmp_echo(REMOTE, 7, 1, b"ping"), 2));
        let (ping, _) = the_only(s.host.ping_opens(), "ping_open");
        let socket = s.host.socket(ping).expect("a ping socket");
        assert_eq!(socket.sent_hop_limits, vec![1]);
    }

    /// A probe with TTL 1 expires at the gateway: time exceeded from 10.0.2.2 quoting it,
    /// and no host socket for it (traceroute's first hop, as with slirp4netns).
    #[test]
    fn ttl_1_expires_at_the_gateway() {
        let mut s = Scenario::new();
        let guest = s.guest;
        let probe = with_ttl(guest.udp(5000, remote(33434), b"probe"), 1);
        s.guest_sends(&probe);
        assert!(
            s.host.udp_opens().is_empty(),
            "no host socket for an expired probe"
        );
        let frame = the_only(s.drain_raw(), "time exceeded");
        let ip = Ipv4Packet::new_checked(&frame[14..]).expect("IPv4");
        assert_eq!(ip.src_addr(), GATEWAY);
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).expect("ICMP");
        assert!(icmp.verify_checksum());
        assert_eq!(
            (icmp.msg_type(), icmp.msg_code()),
            (Icmpv4Message::TimeExceeded, 0)
        );
        assert_eq!(&ip.payload()[8..], &probe[14..], "the probe, quoted whole");

        let echo = with_ttl(guest.icmp_echo(REMOTE, 7, 1, b"ping"), 1);
        s.guest_sends(&echo);
        assert!(
            s.host.ping_opens().is_empty(),
            "no ping socket for an expired request"
        );
        assert_eq!(s.drain_raw().len(), 1, "time exceeded for the echo request");
    }

    /// To the gateway itself (the host's loopback) nothing is forwarded: the TTL is kept.
    #[test]
    fn ttl_to_the_gateway_is_kept() {
        let mut s = Scenario::new();
        let guest = s.guest;
        let gateway = core::net::SocketAddrV4::new(GATEWAY, 7777);
        s.guest_sends(&with_ttl(guest.udp(5000, gateway, b"local"), 1));
        let (flow, _) = the_only(s.host.udp_opens(), "udp_open");
        let socket = s.host.socket(flow).expect("a host socket");
        assert_eq!(socket.sent_hop_limits, vec![1]);
    }

    #[test]
    fn gateway_port_reaches_host_loopback_and_replies_come_back() {
        let mut s = Scenario::new();
        let guest = s.guest;
        s.guest_sends(&guest.udp(5000, gateway(7), b"first"));
        let (flow, target) = the_only(s.host.udp_opens(), "udp_open");
        assert_eq!(target, host_loopback(7));
        assert_eq!(s.host.udp_sent(flow), vec![b"first".to_vec()]);

        s.guest_sends(&guest.udp(5000, gateway(7), b"second"));
        assert_eq!(
            s.host.udp_opens().len(),
            1,
            "the 4-tuple's socket is reused"
        );
        assert_eq!(s.host.udp_sent(flow), vec![b"second".to_vec()]);

        s.deliver_datagram(flow, b"echo");
        assert_eq!(
            the_only(s.drain(), "UDP reply"),
            Parsed::Udp {
                src: gateway(7).into(),
                dst: SocketAddrV4::new(GUEST, 5000).into(),
                payload: b"echo".to_vec(),
            }
        );
    }

    #[test]
    fn idle_flows_expire_after_240_seconds() {
        let mut s = Scenario::new();
        let guest = s.guest;
        s.guest_sends(&guest.udp(5000, remote(9999), b"hello"));
        let (flow, _) = the_only(s.host.udp_opens(), "udp_open");

        s.assert_udp_flow_expires(flow, secs(240));
        assert_eq!(s.host.open_count(), 0);
    }

    #[test]
    fn traffic_keeps_a_flow_alive() {
        let mut s = Scenario::new();
        let guest = s.guest;
        s.guest_sends(&guest.udp(5000, remote(9999), b"one"));
        let (flow, _) = the_only(s.host.udp_opens(), "udp_open");
        s.advance(secs(200));
        s.guest_sends(&guest.udp(5000, remote(9999), b"two"));
        s.advance(secs(200));
        assert_eq!(s.host.close_mode(flow), None, "idle for 200 s only");
        s.advance(secs(41));
        assert!(s.host.close_mode(flow).is_some(), "idle for 241 s");
    }

    #[test]
    fn port_53_flows_expire_after_10_seconds() {
        let mut s = Scenario::new();
        let guest = s.guest;
        s.guest_sends(&guest.udp(5353, remote(53), b"query"));
        let (flow, _) = the_only(s.host.udp_opens(), "udp_open");

        s.assert_udp_flow_expires(flow, secs(10));
    }
}

mod scale {
    use super::*;

    /// Issue #8: SYNs to a black hole filled the half-open table, and every new connect was
    /// refused until they timed out (60 s). Now the oldest half-open connect gives way.
    #[test]
    fn a_full_half_open_table_gives_up_its_oldest_connect() {
        let mut config = Config::default();
        config.limits.max_half_open = 2;
        let mut s = Scenario::with_config(config);
        let mut oldest = s.guest_tcp(40000, remote(80));
        let (oldest_flow, _) = s.syn_and_connect(&mut oldest);
        let mut second = s.guest_tcp(40001, remote(81));
        s.syn_and_connect(&mut second);
        assert_eq!(s.drain(), vec![], "both connects still pending");

        // A third connect, to a host that answers, is admitted...
        let mut third = s.guest_tcp(40002, gateway(8080));
        let (third_flow, _) = s.syn_and_connect(&mut third);
        // ...and the oldest is given up as timed out: host socket closed, guest told.
        assert_eq!(s.host.close_mode(oldest_flow), Some(CloseMode::Abort));
        let Parsed::IcmpUnreachable { code, .. } = the_only(s.drain(), "ICMP for the oldest")
        else {
            panic!("expected ICMP destination unreachable for the given-up connect");
        };
        assert_eq!(code, 1, "host unreachable, as for a connect timeout");

        s.complete_connect(third_flow);
        let syn_ack = the_only_segment(s.drain(), "SYN-ACK");
        assert!(syn_ack.is_syn_ack(), "got {}", syn_ack.flags());
        assert_eq!(syn_ack.dst_port, 40002);
        let stats = s.stats();
        assert_eq!(stats.tcp_half_open_limit_hits, 1);
        assert_eq!(stats.tcp_flow_limit_hits, 0, "the flow table is not full");
        assert_eq!(stats.tcp_flows, 2);
    }

    const FLOWS: usize = 1000;

    fn upload(i: usize) -> Vec<u8> {
        format!("guest {i} says hello; ")
            .repeat(i % 7 + 1)
            .into_bytes()
    }

    fn download(i: usize) -> Vec<u8> {
        format!("host answers {i}. ").repeat(i % 5 + 1).into_bytes()
    }

    #[test]
    fn a_thousand_concurrent_connections() {
        let mut s = Scenario::new();
        let mut conns: Vec<GuestTcp> = (0..FLOWS)
            .map(|i| s.guest_tcp(10_000 + i as u16, remote(80)))
            .collect();

        // All SYNs first: a thousand host connects in flight at once.
        let flows: Vec<FlowId> = conns
            .iter_mut()
            .map(|conn| s.syn_and_connect(conn).0)
            .collect();
        let distinct: std::collections::HashSet<_> = flows.iter().collect();
        assert_eq!(distinct.len(), FLOWS, "every connection has its own flow");
        assert_eq!(s.stats().tcp_flows, FLOWS as u64);
        assert_eq!(s.drain(), vec![], "no SYN-ACK before the connects complete");

        for &flow in &flows {
            s.complete_connect(flow);
        }
        s.run_until(&mut conns, "every handshake", |_, c| {
            c.iter().all(GuestTcp::established)
        });

        for (i, conn) in conns.iter_mut().enumerate() {
            let frame = conn.send(&upload(i));
            s.guest_sends(&frame);
        }
        for (i, &flow) in flows.iter().enumerate() {
            s.peer_send(flow, &download(i));
        }
        s.run_until(&mut conns, "every transfer", |_, c| {
            c.iter()
                .enumerate()
                .all(|(i, conn)| conn.all_acked() && conn.received().len() >= download(i).len())
        });
        for (i, (conn, &flow)) in conns.iter().zip(&flows).enumerate() {
            assert_eq!(s.take_sent(flow), upload(i), "upload of connection {i}");
            assert_eq!(conn.received(), download(i), "download of connection {i}");
        }
        assert_eq!(s.stats().tcp_flows, FLOWS as u64);
        assert_eq!(s.host.open_count(), FLOWS);

        for conn in conns.iter_mut() {
            let fin = conn.fin();
            s.guest_sends(&fin);
        }
        for &flow in &flows {
            s.peer_close(flow);
        }
        s.run_until(&mut conns, "every close", |_, c| {
            c.iter().all(|conn| conn.peer_fin && conn.all_acked())
        });
        s.advance(secs(120));
        assert_eq!(s.stats().tcp_flows, 0);
        assert_eq!(s.host.open_count(), 0);
        for &flow in &flows {
            assert_eq!(s.host.close_mode(flow), Some(CloseMode::Graceful));
        }
    }
}

mod short_connections {
    use super::*;

    /// One whole short connection: data both ways, the guest closes first (so the stack's
    /// socket ends CLOSED and the flow may be renewed for the next one).
    fn one_connection(s: &mut Scenario, i: usize) {
        let (mut conn, flow) = s.open_tcp(20_000 + i as u16, remote(80));
        let (up, down) = (pattern(i, 100 + i), pattern(i + 1000, 3000 + 7 * i));
        let frame = conn.send(&up);
        s.guest_sends(&frame);
        s.peer_send(flow, &down);
        let conns = std::slice::from_mut(&mut conn);
        s.run_until(conns, "the exchange", |_, c| {
            c[0].all_acked() && c[0].received().len() >= down.len()
        });
        assert_eq!(s.take_sent(flow), up, "upload of connection {i}");
        assert_eq!(conn.received(), down, "download of connection {i}");
        let fin = conn.fin();
        s.guest_sends(&fin);
        s.peer_close(flow);
        let conns = std::slice::from_mut(&mut conn);
        s.run_until(conns, "the close", |s, c| {
            c[0].peer_fin && c[0].all_acked() && s.stats().tcp_flows == 0
        });
        assert_eq!(s.host.close_mode(flow), Some(CloseMode::Graceful));
    }

    /// Finished flows are renewed for the next connections (no new buffers): every one of
    /// them must behave as a new flow, with its own sequence numbers and data.
    #[test]
    fn a_hundred_in_a_row_each_as_good_as_the_first() {
        let mut s = Scenario::new();
        for i in 0..100 {
            one_connection(&mut s, i);
        }
        assert_eq!(s.stats().tcp_flows_opened, 100);
        assert_eq!(s.stats().tcp_buffer_bytes, 0);
        assert_eq!(s.host.open_count(), 0);
    }
}

mod malformed {
    use super::*;

    /// A SYN that would open a connection if it were intact.
    fn good_syn(s: &Scenario) -> Vec<u8> {
        s.guest.tcp_syn(40000, remote(80), 1000)
    }

    fn refill_ip_checksum(frame: &mut [u8]) {
        Ipv4Packet::new_unchecked(&mut frame[ETH..]).fill_checksum();
    }

    fn with_tcp_data_offset(mut frame: Vec<u8>, words: u8) -> Vec<u8> {
        let mut tcp = TcpPacket::new_unchecked(&mut frame[ETH + IP_HEADER..]);
        tcp.set_header_len(words * 4);
        tcp.fill_checksum(&GUEST.into(), &REMOTE.into());
        frame
    }

    fn malformed_frames(s: &Scenario) -> Vec<(&'static str, Vec<u8>)> {
        let syn = good_syn(s);
        let mut bad_checksum = syn.clone();
        bad_checksum[ETH + 8] -= 1; // TTL, checksum left alone
        let mut version_5 = syn.clone();
        version_5[ETH] = 0x55;
        refill_ip_checksum(&mut version_5);
        let mut long_total_length = syn.clone();
        long_total_length[ETH + 2..ETH + 4].copy_from_slice(&1400u16.to_be_bytes());
        refill_ip_checksum(&mut long_total_length);
        vec![
            ("truncated Ethernet header", syn[..10].to_vec()),
            ("truncated IP header", syn[..ETH + 12].to_vec()),
            ("IP total length beyond the frame", long_total_length),
            ("bad IP checksum", bad_checksum),
            ("IP version 5", version_5),
            (
                "TCP data offset below 5",
                with_tcp_data_offset(syn.clone(), 3),
            ),
            (
                "TCP data offset past the segment",
                with_tcp_data_offset(syn, 15),
            ),
        ]
    }

    #[test]
    fn malformed_frames_are_counted_and_dropped() {
        let mut s = Scenario::new();
        for (what, frame) in malformed_frames(&s) {
            let before = s.stats();
            s.guest_sends(&frame);
            let after = s.stats();
            let counted =
                (after.rx_errors + after.rx_dropped) - (before.rx_errors + before.rx_dropped);
            assert_eq!(counted, 1, "{what}: counted once as an error or a drop");
            assert_eq!(s.drain(), vec![], "{what}: no answer");
            assert_eq!(s.host.calls(), &[], "{what}: no host call");
        }
        assert_eq!(s.stats().tcp_flows, 0);

        // The same SYN intact does open a connection: the damage was the only reason.
        let syn = good_syn(&s);
        s.guest_sends(&syn);
        assert_eq!(s.host.connects().len(), 1);
    }
}

/// No byte the stack acknowledged to the guest is lost, whichever side closes first and
/// however slowly the host peer reads (issue #16 §1), and no flow is held forever by a
/// guest that stops answering (§2).
mod close_orders {
    use super::*;

    /// The host peer reads `per_read` bytes every `every` until it has `want` bytes or
    /// `limit` virtual time passed; returns what it read.
    fn slow_reader(
        s: &mut Scenario,
        conns: &mut [GuestTcp],
        flow: FlowId,
        want: usize,
        (per_read, every, limit): (usize, Duration, Duration),
    ) -> Vec<u8> {
        let mut delivered = Vec::new();
        let deadline = s.elapsed() + limit;
        while delivered.len() < want && s.elapsed() < deadline {
            let unclaimed = s.exchange(conns);
            assert!(unclaimed.is_empty(), "unexpected frames: {unclaimed:?}");
            delivered.extend(s.take_sent(flow));
            if let Some(event) = s.host.set_send_window(flow, per_read) {
                s.host_event(event);
            }
            s.advance(every);
        }
        delivered.extend(s.take_sent(flow));
        delivered
    }

    /// Guest data, then its FIN, all acknowledged by the stack while the host peer has
    /// room for only 1,000 bytes.
    fn upload_then_fin(s: &mut Scenario, conns: &mut [GuestTcp], upload: &[u8]) {
        for chunk in upload.chunks(1400) {
            let frame = conns[0].send(chunk);
            s.guest_sends(&frame);
        }
        let fin = conns[0].fin();
        s.guest_sends(&fin);
        s.run_until(conns, "the ACK of the upload and the FIN", |_, c| {
            c[0].all_acked()
        });
    }

    #[test]
    fn host_closes_first_then_a_slow_reader_gets_the_whole_upload() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let mut conns = [conn];
        // The host peer shuts its write side: the guest sees EOF and starts its upload.
        s.peer_close(flow);
        s.run_until(&mut conns, "the FIN to the guest", |_, c| c[0].peer_fin);
        assert_eq!(s.host.set_send_window(flow, 1_000), None);

        let upload = pattern(21, 200_000);
        upload_then_fin(&mut s, &mut conns, &upload);
        assert_eq!(
            s.host.close_mode(flow),
            None,
            "the host socket stays open while the upload waits in the flow"
        );
        // Slower than TIME-WAIT lasts: 1,000 bytes a second for 200 s of virtual time.
        let reading = (1_000, secs(1), secs(400));
        let delivered = slow_reader(&mut s, &mut conns, flow, upload.len(), reading);
        assert_eq!(delivered.len(), upload.len(), "every acknowledged byte");
        assert!(delivered == upload, "in order and intact");
        s.advance(secs(30));
        assert_eq!(s.host.close_mode(flow), Some(CloseMode::Graceful));
        assert_eq!(s.stats().tcp_flows, 0);
    }

    #[test]
    fn guest_closes_first_then_the_host_eof_does_not_reset_queued_data() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let mut conns = [conn];
        assert_eq!(s.host.set_send_window(flow, 1_000), None);

        let upload = pattern(22, 200_000);
        upload_then_fin(&mut s, &mut conns, &upload);
        // The host peer closes its side before it read the upload: FIN to the guest,
        // the guest ACKs it, the stack's socket is CLOSED with the upload still queued.
        s.peer_close(flow);
        s.run_until(&mut conns, "the FIN to the guest", |_, c| c[0].peer_fin);
        assert_eq!(s.host.close_mode(flow), None, "not reset, not closed");
        let reading = (1_000, secs(1), secs(400));
        let delivered = slow_reader(&mut s, &mut conns, flow, upload.len(), reading);
        assert_eq!(delivered.len(), upload.len(), "every acknowledged byte");
        assert!(delivered == upload, "in order and intact");
        s.advance(secs(1));
        assert!(s.host.shutdown_write_called(flow) || s.host.close_mode(flow).is_some());
        assert_eq!(s.host.close_mode(flow), Some(CloseMode::Graceful));
        assert_eq!(s.stats().tcp_flows, 0);
    }

    #[test]
    fn a_guest_that_never_acks_the_syn_ack_releases_the_host_connection() {
        let mut s = Scenario::new();
        let mut conn = s.guest_tcp(40000, remote(80));
        s.guest_sends(&conn.syn());
        let (flow, _) = the_only(s.host.connects(), "host connect");
        s.complete_connect(flow);
        let syn_acks = s.drain();
        assert!(syn_acks
            .iter()
            .any(|f| f.tcp().is_some_and(|(_, t)| t.is_syn_ack())));
        // The guest stays silent: SYN-ACKs are retransmitted for a while, like a kernel's
        // tcp_synack_retries, then the host connection is given up.
        s.advance(secs(30));
        assert_eq!(s.host.close_mode(flow), None, "still trying at 30 s");
        s.advance(secs(60));
        assert_eq!(s.host.close_mode(flow), Some(CloseMode::Abort));
        assert_eq!(s.stats().tcp_flows, 0);
        assert_eq!(s.stats().tcp_syn_received_timeouts, 1);
        let _ = conn.ack();
    }

    #[test]
    fn a_guest_that_stops_acknowledging_data_is_reset_after_the_user_timeout() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let mut conns = [conn];
        // The guest freezes: the stack's data is never acknowledged.
        s.peer_send(flow, &pattern(23, 10_000));
        let user_timeout = s.config().timeouts.tcp_user;
        s.advance(user_timeout - secs(5));
        assert_eq!(s.host.close_mode(flow), None, "retransmitting, not yet");
        s.advance(secs(10) + secs(60));
        assert_eq!(s.host.close_mode(flow), Some(CloseMode::Abort));
        assert_eq!(s.stats().tcp_user_timeouts, 1);
        assert_eq!(s.stats().tcp_flows, 0);
        let frames = s.drain();
        assert!(
            frames
                .iter()
                .any(|f| f.tcp().is_some_and(|(_, t)| t.flags().contains('R'))),
            "the guest is told with a RST"
        );
        let _ = &mut conns;
    }

    #[test]
    fn an_idle_established_flow_is_never_timed_out() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let mut conns = [conn];
        s.advance(secs(3 * 3600));
        assert_eq!(s.host.close_mode(flow), None);
        s.peer_send(flow, b"still here");
        s.run_until(&mut conns, "data after hours of silence", |_, c| {
            c[0].received() == b"still here"
        });
    }

    #[test]
    fn a_zero_window_guest_that_answers_probes_is_kept() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let mut conns = [conn];
        conns[0].window = 0;
        let ack = conns[0].ack();
        s.guest_sends(&ack);
        s.peer_send(flow, &pattern(24, 5_000));
        // The guest answers every probe with a zero window for longer than the user
        // timeout: alive, just not reading.
        let user_timeout = s.config().timeouts.tcp_user;
        let until = s.elapsed() + user_timeout + secs(120);
        while s.elapsed() < until {
            let _ = s.exchange(&mut conns);
            s.advance(secs(1));
        }
        assert_eq!(s.host.close_mode(flow), None);
        conns[0].window = 65_535;
        let ack = conns[0].ack();
        s.guest_sends(&ack);
        s.run_until(&mut conns, "the data once the window opens", |_, c| {
            c[0].received().len() == 5_000
        });
    }

    #[test]
    fn fin_wait_2_without_the_guests_fin_ends_after_the_fin_timeout() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let mut conns = [conn];
        s.peer_close(flow);
        s.run_until(&mut conns, "the FIN to the guest", |_, c| c[0].peer_fin);
        // The guest ACKed our FIN (FIN-WAIT-2) and then goes silent for good.
        let fin_timeout = s.config().timeouts.tcp_fin_wait2;
        s.advance(fin_timeout - secs(5));
        assert_eq!(s.host.close_mode(flow), None);
        s.advance(secs(10));
        assert!(s.host.close_mode(flow).is_some());
        assert_eq!(s.stats().tcp_fin_wait2_timeouts, 1);
        assert_eq!(s.stats().tcp_flows, 0);
    }

    #[test]
    fn fin_wait_2_with_the_guest_still_sending_is_not_timed_out() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let mut conns = [conn];
        s.peer_close(flow);
        s.run_until(&mut conns, "the FIN to the guest", |_, c| c[0].peer_fin);
        let fin_timeout = s.config().timeouts.tcp_fin_wait2;
        let mut sent = Vec::new();
        for i in 0..4u8 {
            s.advance(fin_timeout / 2);
            let frame = conns[0].send(&[i; 100]);
            s.guest_sends(&frame);
            sent.extend_from_slice(&[i; 100]);
        }
        s.run_until(&mut conns, "the ACKs", |_, c| c[0].all_acked());
        assert_eq!(s.host.close_mode(flow), None);
        assert_eq!(s.take_sent(flow), sent);
    }
}

/// The path of one round trip: how few frames and host calls a lone request and its reply
/// take (issue #17), and that the shortcuts never leave data or EOF behind.
mod round_trip {
    use super::*;
    use rslirp_stack::nat::tcp::ACK_DELAY;
    use rslirp_stack::testing::HostCall;

    fn tcp_recvs(s: &Scenario, flow: FlowId) -> Vec<HostCall> {
        s.host
            .calls()
            .iter()
            .filter(|call| matches!(call, HostCall::TcpRecv { flow: f, .. } if *f == flow))
            .cloned()
            .collect()
    }

    #[test]
    fn the_reply_carries_the_ack_of_a_lone_request() {
        let mut s = Scenario::new();
        let (mut conn, flow) = s.open_tcp(40000, remote(80));
        let frame = conn.send(b"?");
        s.guest_sends(&frame);
        assert_eq!(s.take_sent(flow), b"?", "the request went on at once");
        assert_eq!(
            s.drain(),
            vec![],
            "no pure ACK before the host had time to reply"
        );

        s.advance(ACK_DELAY / 2);
        s.peer_send(flow, b"!");
        let reply = the_only_segment(s.drain(), "the reply");
        assert_eq!(reply.payload, b"!");
        assert_eq!(
            reply.ack,
            Some(conn.next_seq()),
            "the reply ACKs the request"
        );
        s.advance(ACK_DELAY * 2);
        assert_eq!(s.drain(), vec![], "nothing more: the ACK rode on the reply");
    }

    #[test]
    fn without_a_reply_the_ack_follows_after_the_delay() {
        let mut s = Scenario::new();
        let (mut conn, flow) = s.open_tcp(40000, remote(80));
        let frame = conn.send(b"log line\n");
        s.guest_sends(&frame);
        assert_eq!(s.take_sent(flow), b"log line\n");
        assert_eq!(s.drain(), vec![]);
        s.advance(ACK_DELAY);
        let ack = the_only_segment(s.drain(), "the delayed ACK");
        assert!(ack.payload.is_empty());
        assert_eq!(ack.ack, Some(conn.next_seq()));
    }

    #[test]
    fn more_than_one_mss_is_acked_at_once() {
        let mut s = Scenario::new();
        let (mut conn, flow) = s.open_tcp(40000, remote(80));
        // One segment larger than the MSS, as a guest with segmentation offload sends.
        let upload = pattern(9, 3_000);
        let frame = conn.send(&upload);
        s.guest_sends(&frame);
        assert!(s.take_sent(flow) == upload);
        let ack = the_only_segment(s.drain(), "the immediate ACK");
        assert_eq!(ack.ack, Some(conn.next_seq()));

        // Two full segments in a row: ACKed without waiting either.
        for chunk in pattern(10, 2 * 1460).chunks(1460) {
            let frame = conn.send(chunk);
            s.guest_sends(&frame);
        }
        let acks = s.drain();
        assert!(!acks.is_empty(), "two full segments are ACKed at once");
    }

    #[test]
    fn a_short_read_ends_reading_without_a_wouldblock_read() {
        let mut s = Scenario::new();
        let (_conn, flow) = s.open_tcp(40000, remote(80));
        let before = tcp_recvs(&s, flow).len();
        s.peer_send(flow, b"reply");
        let recvs = tcp_recvs(&s, flow)[before..].to_vec();
        assert_eq!(
            recvs,
            vec![HostCall::TcpRecv {
                flow,
                result: Ok(5)
            }],
            "one read of the reply, no read that only says WouldBlock"
        );
        let segment = the_only_segment(s.drain(), "the reply");
        assert_eq!(segment.payload, b"reply");
    }

    #[test]
    fn eof_queued_behind_the_data_of_one_event_still_reaches_the_guest() {
        // Data and the peer's FIN both arrived before the poller looked: one event, which
        // Linux reports with EPOLLRDHUP. The short read of the data must not end reading.
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let mut conns = [conn];
        let _ = s.host.peer_send(flow, b"last words");
        let _ = s.host.peer_close(flow);
        let event = s.host.event(flow);
        assert!(event.read_closed);
        s.host_event(event);
        s.run_until(&mut conns, "the data and the FIN", |_, c| c[0].peer_fin);
        assert_eq!(conns[0].received(), b"last words");
    }

    #[test]
    fn many_exchanges_never_stall() {
        let mut s = Scenario::new();
        let (conn, flow) = s.open_tcp(40000, remote(80));
        let mut conns = [conn];
        for i in 0..200usize {
            let request = pattern(i, 1 + i % 7);
            let frame = conns[0].send(&request);
            s.guest_sends(&frame);
            assert!(s.take_sent(flow) == request, "request {i} went on");
            let reply = pattern(i + 1000, 1 + (i * 13) % 3000);
            s.peer_send(flow, &reply);
            s.run_until(&mut conns, "the reply", |_, c| {
                c[0].received().len() >= reply.len()
            });
            assert!(conns[0].take_received() == reply, "reply {i} arrived whole");
        }
    }
}

/// How many datagram reads the stack made on `flow`'s socket, and how many said WouldBlock.
fn datagram_reads(s: &Scenario, flow: FlowId) -> (usize, usize) {
    let reads: Vec<_> = s
        .host
        .calls()
        .iter()
        .filter_map(|call| match call {
            HostCall::UdpRecv { flow: f, result } | HostCall::PingRecv { flow: f, result }
                if *f == flow =>
            {
                Some(*result)
            }
            _ => None,
        })
        .collect();
    let would_block = reads
        .iter()
        .filter(|r| **r == Err(HostError::WouldBlock))
        .count();
    (reads.len(), would_block)
}

/// A lone answer (the DNS-like round trip) costs one read of the host socket when the host
/// says it was the last one queued: no read that would only say WouldBlock. Two queued
/// behind one readable event are both read, and reading stops after the one the host
/// calls the last.
#[test]
fn a_lone_datagram_is_read_once() {
    let remote = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 53);
    let mut s = Scenario::new();
    let guest = s.guest;
    s.guest_sends(&guest.udp(40000, remote, b"query"));
    let (flow, _) = s.host.udp_opens()[0];
    s.deliver_datagram(flow, b"answer");
    let replies = s.drain();
    assert_eq!(replies.len(), 1);
    assert!(matches!(&replies[0], Parsed::Udp { payload, .. } if payload == b"answer"));
    assert_eq!(datagram_reads(&s, flow), (1, 0), "one read, none in vain");

    // Two at once: the host cannot say the first is the last.
    let first = s.host.deliver_datagram(flow, b"one");
    s.host.deliver_datagram(flow, b"two");
    s.host_event(first);
    let payloads: Vec<_> = s
        .drain()
        .into_iter()
        .map(|frame| match frame {
            Parsed::Udp { payload, .. } => payload,
            other => panic!("expected UDP, got {other:?}"),
        })
        .collect();
    assert_eq!(payloads, vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(datagram_reads(&s, flow), (3, 0), "the second was the last");
}

/// A datagram to the subnet's broadcast address goes nowhere and draws no ICMP error
/// (RFC 1122 3.2.2: none may answer a datagram sent to a broadcast address), as one to
/// 255.255.255.255 does; one to another address of the subnet is answered host
/// unreachable.
#[test]
fn a_datagram_to_the_subnet_broadcast_draws_no_icmp_error() {
    let mut s = Scenario::new();
    let guest = s.guest;
    for dst in [Ipv4Addr::new(10, 0, 2, 255), Ipv4Addr::BROADCAST] {
        s.guest_sends(&guest.udp(40000, SocketAddrV4::new(dst, 137), b"who is there"));
        assert_eq!(s.drain(), vec![], "to {dst}: nothing comes back");
    }
    assert!(
        s.host.udp_opens().is_empty(),
        "and nothing reaches the host"
    );

    s.guest_sends(&guest.udp(
        40000,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 50), 137),
        b"x",
    ));
    let reply = the_only(s.drain(), "ICMP error");
    assert!(
        matches!(reply, Parsed::IcmpUnreachable { code: 1, .. }),
        "another address of the subnet: host unreachable, got {reply:?}"
    );
}

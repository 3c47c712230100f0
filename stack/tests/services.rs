//! The services of the virtual network (SPEC.md section 2), told as scenarios through the
//! whole stack: the DHCP server (frames in, frames out) and the DNS forwarder at network+3
//! (frames in, host sockets out, and back). Default network 10.0.2.0/24.

use core::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use rslirp_stack::testing::{DhcpMessage, Guest, Parsed, Scenario};
use rslirp_stack::{Config, Duration, FlowId, VirtualNetwork};
use smoltcp::wire::{DhcpMessageType, DhcpPacket, EthernetAddress};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn the_only<T: core::fmt::Debug>(mut items: Vec<T>, what: &str) -> T {
    assert_eq!(items.len(), 1, "expected exactly one {what}, got {items:?}");
    items.remove(0)
}

mod dhcp {
    use super::*;

    const XID: u32 = 0x1234_5678;

    /// The guest broadcasts a DHCP message; returns the one reply, which must come from
    /// gateway:67 and, as the client has no address yet, be broadcast to port 68.
    fn ask(s: &mut Scenario, message: &smoltcp::wire::DhcpRepr<'_>) -> DhcpMessage {
        let guest = s.guest;
        s.guest_sends(&guest.dhcp(message));
        let gateway = s.config().network.gateway();
        match the_only(s.drain_addressed(), "DHCP reply") {
            (
                EthernetAddress::BROADCAST,
                Parsed::Dhcp {
                    src,
                    dst,
                    message: reply,
                },
            ) => {
                assert_eq!(src, SocketAddrV4::new(gateway, 67));
                assert_eq!(dst, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
                assert_eq!(reply.transaction_id, message.transaction_id);
                assert_eq!(reply.client_hardware_address, guest.mac);
                reply
            }
            other => panic!("expected a broadcast DHCP reply, got {other:?}"),
        }
    }

    fn discover(s: &mut Scenario) -> DhcpMessage {
        let message = s.guest.dhcp_message(DhcpMessageType::Discover, XID);
        ask(s, &message)
    }

    /// The SELECTING state's REQUEST: the server's id and the offered address.
    fn request(s: &mut Scenario, server: Ipv4Addr, address: Ipv4Addr) -> DhcpMessage {
        let mut message = s.guest.dhcp_message(DhcpMessageType::Request, XID);
        message.server_identifier = Some(server);
        message.requested_ip = Some(address);
        ask(s, &message)
    }

    #[test]
    fn discover_gets_an_offer_of_network_plus_15() {
        let mut s = Scenario::new();
        let offer = discover(&mut s);
        assert_eq!(
            offer,
            DhcpMessage {
                message_type: DhcpMessageType::Offer,
                transaction_id: XID,
                client_hardware_address: s.guest.mac,
                your_ip: Ipv4Addr::new(10, 0, 2, 15),
                server_identifier: Some(GATEWAY),
                router: Some(GATEWAY),
                subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
                dns_servers: Some(vec![DNS]),
                lease_duration: Some(24 * 60 * 60),
                mtu: Some(1500),
                domain_search: None,
            }
        );
        assert_eq!(s.host.calls(), &[], "DHCP never reaches the host");
        assert_eq!(s.stats().udp_flows, 0, "nor the NAT");
    }

    #[test]
    fn request_gets_an_ack() {
        let mut s = Scenario::new();
        let offer = discover(&mut s);
        let ack = request(&mut s, GATEWAY, offer.your_ip);
        assert_eq!(ack.message_type, DhcpMessageType::Ack);
        assert_eq!(ack.your_ip, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(ack.router, Some(GATEWAY));
        assert_eq!(ack.dns_servers, Some(vec![DNS]));
        assert_eq!(ack.lease_duration, Some(86_400));
        assert_eq!(ack.mtu, Some(1500));
    }

    #[test]
    fn renewal_from_the_bound_address_is_answered_by_unicast() {
        let mut s = Scenario::new();
        let offer = discover(&mut s);
        let address = offer.your_ip;
        request(&mut s, GATEWAY, address);

        // RENEWING (RFC 2131 4.4.5): unicast from the leased address to the server.
        let bound = Guest {
            ip: address,
            ..s.guest
        };
        let mut renew = bound.dhcp_message(DhcpMessageType::Request, XID + 1);
        renew.client_ip = address;
        let mut payload = vec![0; renew.buffer_len()];
        renew
            .emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
            .expect("the message fits");
        s.guest_sends(&bound.udp(68, SocketAddrV4::new(GATEWAY, 67), &payload));
        // drain() checks that the reply is addressed to the guest's MAC.
        match the_only(s.drain(), "DHCP reply") {
            Parsed::Dhcp { src, dst, message } => {
                assert_eq!(src, SocketAddrV4::new(GATEWAY, 67));
                assert_eq!(dst, SocketAddrV4::new(address, 68));
                assert_eq!(message.message_type, DhcpMessageType::Ack);
                assert_eq!(message.your_ip, address);
                assert_eq!(message.transaction_id, XID + 1);
            }
            other => panic!("expected a DHCP ACK, got {other:?}"),
        }
    }

    #[test]
    fn mtu_option_is_the_configured_mtu() {
        let mut s = Scenario::with_config(Config {
            mtu: 65520,
            ..Config::default()
        });
        assert_eq!(discover(&mut s).mtu, Some(65520));
    }

    #[test]
    fn custom_cidr_moves_the_pool_and_the_services() {
        let network = VirtualNetwork::parse("10.0.135.128/25").expect("a valid CIDR");
        let mut s = Scenario::with_config(Config {
            network,
            ..Config::default()
        });
        let router = Ipv4Addr::new(10, 0, 135, 130);
        let offer = discover(&mut s);
        assert_eq!(offer.message_type, DhcpMessageType::Offer);
        assert_eq!(offer.your_ip, Ipv4Addr::new(10, 0, 135, 143));
        assert_eq!(offer.router, Some(router));
        assert_eq!(offer.server_identifier, Some(router));
        assert_eq!(
            offer.dns_servers,
            Some(vec![Ipv4Addr::new(10, 0, 135, 131)])
        );
        assert_eq!(offer.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 128)));

        let ack = request(&mut s, router, offer.your_ip);
        assert_eq!(ack.message_type, DhcpMessageType::Ack);
        assert_eq!(ack.your_ip, Ipv4Addr::new(10, 0, 135, 143));
    }

    #[test]
    fn disabled_dns_offers_no_name_server() {
        let mut s = Scenario::with_config(Config {
            disable_dns: true,
            ..Config::default()
        });
        let offer = discover(&mut s);
        assert_eq!(offer.dns_servers, None);
        assert_eq!(offer.router, Some(GATEWAY));
        let ack = request(&mut s, GATEWAY, offer.your_ip);
        assert_eq!(ack.message_type, DhcpMessageType::Ack);
        assert_eq!(ack.dns_servers, None);
    }

    fn domains(list: &[&str]) -> Vec<String> {
        list.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn search_domains_go_in_option_119_compressed_and_follow_changes() {
        let mut s = Scenario::new();
        assert_eq!(discover(&mut s).domain_search, None, "none by default");
        s.stack
            .set_dns_search(&domains(&["eng.apple.com.", "marketing.apple.com."]));
        let offer = discover(&mut s);
        // RFC 3397 §2's example, byte for byte.
        let expected = b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04";
        assert_eq!(offer.domain_search.as_deref(), Some(&expected[..]));
        let ack = request(&mut s, GATEWAY, offer.your_ip);
        assert_eq!(ack.domain_search.as_deref(), Some(&expected[..]));

        // resolv.conf changed: the next reply has the new list; an emptied one, none.
        s.stack.set_dns_search(&domains(&["corp.example"]));
        let ack = request(&mut s, GATEWAY, offer.your_ip);
        assert_eq!(
            ack.domain_search.as_deref(),
            Some(&b"\x04corp\x07example\x00"[..])
        );
        s.stack.set_dns_search(&[]);
        assert_eq!(request(&mut s, GATEWAY, offer.your_ip).domain_search, None);
    }

    #[test]
    fn a_list_over_255_octets_is_split_and_one_over_the_limits_cut() {
        let mut s = Scenario::new();
        // Six domains of 42 characters (43 with the separator): 258 > 256, so the sixth is
        // cut (max_search_len).
        let long: Vec<String> = (0..6).map(|i| format!("{}.t{i}", "x".repeat(39))).collect();
        s.stack.set_dns_search(&long);
        assert_eq!(s.stack.dns_search().len(), 5, "cut at max_search_len");
        let offer = discover(&mut s);
        let data = offer.domain_search.expect("option 119");
        // Uncompressible (every top label differs): 5 × (1 + 39 + 1 + 2 + 1) octets.
        assert_eq!(data.len(), 5 * 44);

        // Five of 50 characters: 255 < 256 octets of list, 5 × 52 = 260 of data: two
        // options, which the parser concatenates back.
        let five: Vec<String> = (0..5).map(|i| format!("{}.t{i}", "y".repeat(47))).collect();
        s.stack.set_dns_search(&five);
        assert_eq!(s.stack.dns_search().len(), 5);
        let data = discover(&mut s).domain_search.expect("option 119");
        assert_eq!(data.len(), 5 * 52);
        let expected: Vec<u8> = (0..5u8)
            .flat_map(|i| [&[47u8][..], &[b'y'; 47][..], &[2, b't', b'0' + i, 0][..]].concat())
            .collect();
        assert_eq!(
            data, expected,
            "the two options' data concatenated is the whole list"
        );

        // Seven short domains: six kept (max_search_domains).
        let seven = domains(&[
            "a.example",
            "b.example",
            "c.example",
            "d.example",
            "e.example",
            "f.example",
            "g.example",
        ]);
        s.stack.set_dns_search(&seven);
        assert_eq!(s.stack.dns_search(), &seven[..6]);
    }

    #[test]
    fn the_search_list_is_cut_to_the_clients_message_size() {
        let mut s = Scenario::new();
        let five: Vec<String> = (0..5).map(|i| format!("{}.t{i}", "z".repeat(47))).collect();
        s.stack.set_dns_search(&five);
        let guest = s.guest;
        // A client that announces no maximum takes 576-octet datagrams: 548 octets of DHCP,
        // of which the header and the other options (290) leave 258 for option 119: four
        // of these 52-octet domains, not five (260 + two option headers).
        let mut message = guest.dhcp_message(DhcpMessageType::Discover, XID);
        message.max_size = None;
        s.guest_sends(&guest.dhcp(&message));
        let (_, reply) = the_only(s.drain_addressed(), "DHCP reply");
        let Parsed::Dhcp { message: offer, .. } = reply else {
            panic!("expected a DHCP offer, got {reply:?}");
        };
        let data = offer.domain_search.expect("option 119");
        assert_eq!(data.len(), 4 * 52);
    }
}

mod dns {
    use super::*;

    const QUERY: &[u8] =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01";
    const ANSWER: &[u8] = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00";

    fn dns(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(DNS, port)
    }

    fn resolver(ip: [u8; 4]) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), 53)
    }

    /// A scenario whose host resolver is `upstream` (as the loop sets it from resolv.conf).
    fn with_upstream(upstream: [u8; 4]) -> Scenario {
        let mut s = Scenario::new();
        s.stack
            .set_dns_upstream(Some(IpAddr::V4(Ipv4Addr::from(upstream))));
        s
    }

    /// The guest sends `QUERY` from port 33333; returns the one UDP flow the host opened for
    /// it and where that flow goes.
    fn first_query(s: &mut Scenario) -> (FlowId, SocketAddr) {
        let guest = s.guest;
        s.guest_sends(&guest.udp(33333, dns(53), QUERY));
        the_only(s.host.udp_opens(), "udp_open")
    }

    /// The host's `ANSWER` on `flow` reaches the guest's port 33333 from the DNS address.
    fn assert_answer_reaches_the_guest(s: &mut Scenario, flow: FlowId) {
        s.deliver_datagram(flow, ANSWER);
        assert_eq!(
            the_only(s.drain(), "DNS answer"),
            Parsed::Udp {
                src: dns(53).into(),
                dst: SocketAddrV4::new(GUEST, 33333).into(),
                payload: ANSWER.to_vec(),
            }
        );
    }

    /// The first upstream gave up on `flow`: nothing reached the guest (`why`), and the
    /// query went once more, to the second upstream.
    fn assert_retried_at_the_second(s: &mut Scenario, flow: FlowId, why: &str) {
        assert_eq!(s.drain(), vec![], "{why}");
        assert_eq!(
            s.host.udp_reconnects(),
            vec![(flow, resolver([127, 0, 0, 2]))]
        );
        assert_eq!(s.host.udp_sent(flow), vec![QUERY.to_vec()]);
    }

    #[test]
    fn udp_query_goes_to_the_host_resolver_and_the_answer_comes_from_the_dns_address() {
        let mut s = with_upstream([127, 0, 0, 1]);
        let (flow, target) = first_query(&mut s);
        assert_eq!(target, resolver([127, 0, 0, 1]));
        assert_eq!(s.host.udp_sent(flow), vec![QUERY.to_vec()]);

        assert_answer_reaches_the_guest(&mut s, flow);
    }

    #[test]
    fn a_resolver_that_is_down_is_port_unreachable_from_the_dns_address() {
        let mut s = with_upstream([127, 0, 0, 53]);
        let (flow, _) = first_query(&mut s);
        // Nothing listens on 127.0.0.53:53: the host kernel reports ECONNREFUSED.
        let event = s
            .host
            .set_error(flow, rslirp_stack::HostError::ConnectionRefused);
        s.host_event(event);
        port_unreachable_from_dns(&mut s);
    }

    /// An answer that does not fit the MTU reaches the guest in IP fragments (as
    /// slirp4netns fragments it), never truncated.
    #[test]
    fn answers_larger_than_the_mtu_reach_the_guest_in_fragments() {
        let mut s = with_upstream([127, 0, 0, 1]);
        let (flow, _) = first_query(&mut s);
        s.deliver_datagram(flow, &[0xab; 1472]);
        assert_eq!(s.drain_raw().len(), 1, "1472 bytes fit a 1500-byte MTU");
        let answer: Vec<u8> = (0..4000).map(|i| (i % 199) as u8).collect();
        s.deliver_datagram(flow, &answer);
        let frames = s.drain_raw();
        assert_eq!(frames.len(), 3, "4,028 bytes of UDP in three fragments");
        let whole = rslirp_stack::testing::fragments::defragment(frames);
        assert_eq!(whole.len(), 1);
        match rslirp_stack::testing::parse(&whole[0]) {
            Parsed::Udp { src, payload, .. } => {
                assert_eq!(src, SocketAddr::from(dns(53)));
                assert_eq!(payload, answer);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.stats().ip_frag_fragmented, 1);
    }

    #[test]
    fn tcp_to_port_53_connects_the_host_resolver() {
        let mut s = with_upstream([127, 0, 0, 1]);
        let (conn, flow) = s.open_tcp(40000, dns(53));
        let mut conns = [conn];
        let socket = s.host.socket(flow).expect("a host socket");
        assert_eq!(socket.remote, resolver([127, 0, 0, 1]));

        // DNS over TCP: a two-byte length, then the message.
        let mut framed = (QUERY.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(QUERY);
        let frame = conns[0].send(&framed);
        s.guest_sends(&frame);
        assert_eq!(s.exchange(&mut conns), vec![]);
        assert_eq!(s.take_sent(flow), framed);

        let mut answer = (ANSWER.len() as u16).to_be_bytes().to_vec();
        answer.extend_from_slice(ANSWER);
        s.peer_send(flow, &answer);
        assert_eq!(s.exchange(&mut conns), vec![]);
        assert_eq!(conns[0].received(), answer);
    }

    #[test]
    fn a_new_upstream_takes_new_queries_and_open_flows_finish_with_the_old() {
        let mut s = with_upstream([127, 0, 0, 1]);
        let (old_flow, _) = first_query(&mut s);
        let guest = s.guest;

        // resolv.conf changed.
        s.stack
            .set_dns_upstream(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        s.guest_sends(&guest.udp(33333, dns(53), QUERY));
        assert_eq!(
            s.host.udp_opens().len(),
            1,
            "the open flow keeps its socket"
        );
        assert_eq!(s.host.udp_sent(old_flow).len(), 2);

        s.guest_sends(&guest.udp(33334, dns(53), QUERY));
        let opens = s.host.udp_opens();
        assert_eq!(opens.len(), 2);
        assert_eq!(
            opens[1].1,
            resolver([127, 0, 0, 2]),
            "a new query, the new upstream"
        );

        let (_, tcp_flow) = s.open_tcp(40000, dns(53));
        let socket = s.host.socket(tcp_flow).expect("a host socket");
        assert_eq!(socket.remote, resolver([127, 0, 0, 2]));
    }

    /// `--outbound-addr` binds every host socket, host loopback included (as slirp4netns),
    /// except the DNS forwarder's sockets to a resolver on loopback: a local stub resolver
    /// (127.0.0.53) answers only loopback clients.
    #[test]
    fn only_the_forwarders_loopback_resolver_keeps_the_kernels_source() {
        use rslirp_stack::SourceAddr;
        let source = |s: &Scenario, flow| s.host.socket(flow).expect("a host socket").source;
        let mut s = with_upstream([127, 0, 0, 53]);
        let (dns_udp, _) = first_query(&mut s);
        let guest = s.guest;
        assert_eq!(source(&s, dns_udp), SourceAddr::Kernel);
        let (_, dns_tcp) = s.open_tcp(40000, dns(53));
        assert_eq!(source(&s, dns_tcp), SourceAddr::Kernel);

        // The gateway is host loopback too, but that is the guest's own traffic.
        s.guest_sends(&guest.udp(33334, SocketAddrV4::new(GATEWAY, 53), QUERY));
        let (gw_udp, target) = s.host.udp_opens()[1];
        assert_eq!(target, resolver([127, 0, 0, 1]));
        assert_eq!(source(&s, gw_udp), SourceAddr::Outbound);
        let (_, gw_tcp) = s.open_tcp(40001, SocketAddrV4::new(GATEWAY, 80));
        assert_eq!(source(&s, gw_tcp), SourceAddr::Outbound);

        // A resolver on a real address is reached from the outbound address.
        s.stack
            .set_dns_upstream(Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53))));
        s.guest_sends(&guest.udp(33335, dns(53), QUERY));
        let (real, _) = s.host.udp_opens()[2];
        assert_eq!(source(&s, real), SourceAddr::Outbound);
    }

    /// resolv.conf names two nameservers: 127.0.0.1 first, 127.0.0.2 second.
    fn with_two_upstreams() -> Scenario {
        let mut s = Scenario::new();
        s.stack.set_dns_upstreams(vec![
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        ]);
        s
    }

    fn answer_with_rcode(rcode: u8) -> Vec<u8> {
        let mut msg = ANSWER.to_vec();
        msg[3] = (msg[3] & 0xf0) | rcode;
        msg
    }

    /// Beyond libslirp: a silent first nameserver costs one retry timeout (1 s), the query
    /// is sent again to the second, its answer reaches the guest, and new queries go
    /// straight to the second.
    #[test]
    fn a_silent_first_upstream_is_skipped_after_a_second_and_the_answering_one_preferred() {
        let mut s = with_two_upstreams();
        let (flow, target) = first_query(&mut s);
        let guest = s.guest;
        assert_eq!(target, resolver([127, 0, 0, 1]));
        assert_eq!(s.host.udp_sent(flow), vec![QUERY.to_vec()]);
        s.advance(Duration::from_millis(900));
        assert_eq!(s.host.udp_reconnects(), vec![], "no retry before 1 s");
        s.advance(Duration::from_millis(200));
        assert_eq!(
            s.host.udp_reconnects(),
            vec![(flow, resolver([127, 0, 0, 2]))]
        );
        assert_eq!(s.host.udp_sent(flow), vec![QUERY.to_vec()], "sent again");
        assert_eq!(s.stats().dns_retries, 1);

        assert_answer_reaches_the_guest(&mut s, flow);
        // A new query (new source port): straight to the one that answered.
        s.guest_sends(&guest.udp(33334, dns(53), QUERY));
        assert_eq!(s.host.udp_opens()[1].1, resolver([127, 0, 0, 2]));
        // Answered at once: no retry timer is left running.
        let second = s.host.udp_opens()[1].0;
        s.deliver_datagram(second, ANSWER);
        assert_eq!(s.drain().len(), 1);
        s.advance(secs(3));
        assert_eq!(s.host.udp_reconnects().len(), 1);
        assert_eq!(s.stats().dns_retries, 1);
    }

    #[test]
    fn refused_or_servfail_goes_to_the_next_upstream_and_the_last_answer_is_passed_on() {
        let mut s = with_two_upstreams();
        let (flow, _) = first_query(&mut s);
        let guest = s.guest;
        s.host.udp_sent(flow);
        s.deliver_datagram(flow, &answer_with_rcode(5));
        assert_retried_at_the_second(
            &mut s,
            flow,
            "REFUSED is not passed on while another may answer",
        );
        // The second fails too: nobody is left, so the guest gets that answer.
        s.deliver_datagram(flow, &answer_with_rcode(2));
        match the_only(s.drain(), "SERVFAIL answer") {
            Parsed::Udp { payload, .. } => assert_eq!(payload, answer_with_rcode(2)),
            other => panic!("expected the answer, got {other:?}"),
        }
        s.advance(secs(3));
        assert_eq!(s.host.udp_reconnects().len(), 1, "no endless round");
        // No server answered for real: the first stays preferred.
        s.guest_sends(&guest.udp(33334, dns(53), QUERY));
        assert_eq!(s.host.udp_opens()[1].1, resolver([127, 0, 0, 1]));
    }

    #[test]
    fn port_unreachable_at_the_first_upstream_goes_to_the_next() {
        let mut s = with_two_upstreams();
        let (flow, _) = first_query(&mut s);
        s.host.udp_sent(flow);
        let event = s
            .host
            .set_error(flow, rslirp_stack::HostError::ConnectionRefused);
        s.host_event(event);
        assert_retried_at_the_second(
            &mut s,
            flow,
            "no ICMP error while another server may answer",
        );
    }

    #[test]
    fn when_no_upstream_answers_each_gets_the_query_once() {
        let mut s = with_two_upstreams();
        let (flow, _) = first_query(&mut s);
        s.advance(secs(9));
        assert_eq!(s.host.udp_reconnects().len(), 1);
        assert_eq!(s.host.udp_sent(flow).len(), 2, "once to each");
        s.advance(secs(2));
        assert!(s.host.close_mode(flow).is_some(), "expired as usual");
    }

    #[test]
    fn with_one_upstream_nothing_is_retried() {
        let mut s = with_upstream([127, 0, 0, 1]);
        let (flow, _) = first_query(&mut s);
        s.advance(secs(5));
        assert_eq!(s.host.udp_reconnects(), vec![]);
        assert_eq!(s.host.udp_sent(flow).len(), 1);
    }

    #[test]
    fn dns_flows_expire_after_10_seconds() {
        let mut s = with_upstream([127, 0, 0, 1]);
        let (flow, _) = first_query(&mut s);
        s.assert_udp_flow_expires(flow, secs(10));
    }

    /// The one frame to the guest is an ICMP port unreachable from the DNS address (10.0.2.3)
    /// to the guest; returns the datagram it quotes.
    fn port_unreachable_from_dns(s: &mut Scenario) -> Vec<u8> {
        match the_only(s.drain(), "ICMP error") {
            Parsed::IcmpUnreachable {
                src,
                dst,
                code,
                original,
            } => {
                assert_eq!(
                    (src, dst, code),
                    (IpAddr::from(DNS), IpAddr::from(GUEST), 3),
                    "port unreachable"
                );
                original
            }
            other => panic!("expected ICMP port unreachable, got {other:?}"),
        }
    }

    /// The guest's SYN from port 40000 to `to` draws a RST from `to` that acknowledges it.
    fn assert_syn_reset(s: &mut Scenario, to: SocketAddrV4) {
        let mut conn = s.guest_tcp(40000, to);
        s.guest_sends(&conn.syn());
        let reset = the_only(s.drain(), "RST");
        let (ip, rst) = reset.tcp().expect("a TCP segment");
        assert_eq!(ip.src_addr, *to.ip());
        assert!(rst.rst, "got {}", rst.flags());
        assert_eq!((rst.src_port, rst.dst_port), (to.port(), 40000));
        assert_eq!(rst.ack, Some(conn.isn.wrapping_add(1)));
    }

    #[test]
    fn without_an_upstream_queries_are_refused() {
        let mut s = Scenario::new();
        let guest = s.guest;
        let query = guest.udp(33333, dns(53), QUERY);
        s.guest_sends(&query);
        let original = port_unreachable_from_dns(&mut s);
        assert_eq!(&original[..28], &query[14..14 + 28], "the query is quoted");

        assert_syn_reset(&mut s, dns(53));

        assert_eq!(s.host.calls(), &[], "nothing reaches the host");
        assert_eq!(s.stats().udp_flows + s.stats().tcp_flows, 0);
    }

    #[test]
    fn other_ports_at_the_dns_address_are_refused() {
        let mut s = with_upstream([127, 0, 0, 1]);
        let guest = s.guest;
        s.guest_sends(&guest.udp(33333, dns(123), b"ntp?"));
        port_unreachable_from_dns(&mut s);
        assert_syn_reset(&mut s, dns(80));
        assert_eq!(s.host.calls(), &[]);
    }

    #[test]
    fn with_dns_disabled_the_address_is_nated_like_any_other() {
        let mut s = Scenario::with_config(Config {
            disable_dns: true,
            ..Config::default()
        });
        s.stack
            .set_dns_upstream(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let (flow, target) = first_query(&mut s);
        let guest = s.guest;
        assert_eq!(
            target,
            SocketAddr::V4(dns(53)),
            "host 10.0.2.3, not the resolver"
        );
        assert_eq!(s.host.udp_sent(flow), vec![QUERY.to_vec()]);

        let (_, tcp_flow) = s.open_tcp(40000, dns(53));
        let socket = s.host.socket(tcp_flow).expect("a host socket");
        assert_eq!(socket.remote, SocketAddr::V4(dns(53)));

        // Other ports too, and pings go to the host rather than being answered locally.
        s.guest_sends(&guest.udp(33334, dns(123), b"ntp?"));
        assert_eq!(s.host.udp_opens()[1].1, SocketAddr::V4(dns(123)));
        s.guest_sends(&guest.icmp_echo(DNS, 7, 1, b"ping"));
        assert_eq!(s.drain(), vec![], "no local echo reply");
        assert_eq!(
            the_only(s.host.ping_opens(), "ping_open").1,
            IpAddr::V4(DNS)
        );
    }
}

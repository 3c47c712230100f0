//! IPv6 (`--enable-ipv6`) as the guest sees it, told as scenarios on the virtual clock:
//! router advertisements for fd00::/64, neighbour discovery for the gateway fd00::2 /
//! fe80::2 (MAC 52:55:0a:00:02:02) and the DNS forwarder fd00::3 / fe80::3 (…:03), ICMPv6
//! echo, and TCP/UDP NAT over IPv6 ([fd00::2]:p is host [::1]:p).
//! The guest is fd00::ff:fe00:1 / fe80::ff:fe00:1 (EUI-64 of 02:00:00:00:00:01).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use rslirp_stack::testing::ipv6::{
    host_loopback6, multicast_mac, ndp_options, solicited_node, v6, ALL_NODES, RDNSS_TYPE,
};
use rslirp_stack::testing::{
    the_only, the_unreachable, Parsed, Scenario, DNS_MAC, GATEWAY_MAC, START,
};
use rslirp_stack::{Config, Duration};
use smoltcp::wire::{
    EthernetAddress, NdiscNeighborFlags, NdiscPrefixInfoFlags, NdiscPrefixInformation, NdiscRepr,
    NdiscRouterFlags, RawHardwareAddress,
};

const GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const DNS: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
const GATEWAY_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
const DNS_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 3);
const PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0);
/// Somewhere on the IPv6 internet (documentation prefix), reached through host sockets.
const REMOTE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// How often unsolicited router advertisements come.
const RA_INTERVAL: Duration = Duration::from_secs(120);
/// Length (in 8-byte units) of the RDNSS option with one server (RFC 8106).
const RDNSS_LEN_ONE_SERVER: u8 = 3;
/// DNS Search List option (RFC 8106 §5.2).
const DNSSL_TYPE: u8 = 31;
/// The IPv6 header in the frames our guest builds (no extension headers).
const ETH: usize = 14;
const IPV6_HEADER: usize = 40;

fn with_ipv6() -> Scenario {
    ipv6_with(Config::default())
}

/// A scenario with IPv6 on and otherwise `config`.
fn ipv6_with(config: Config) -> Scenario {
    Scenario::with_config(Config {
        enable_ipv6: true,
        ..config
    })
}

/// An IPv6 network whose guest is up: the first unsolicited advertisement (at 1 s) came
/// and went, so the next is two minutes away and only the frames a test provokes arrive.
fn guest_up() -> Scenario {
    let mut s = with_ipv6();
    s.advance(secs(1));
    assert_full_router_advert(the_only(s.drain(), "advertisement at 1 s"));
    s
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The router advertisement the guest must see: from fe80::2 (hop limit 255) to all nodes,
/// router lifetime 30 min, source link-layer address 52:55:0a:00:02:02, MTU 1500, prefix
/// fd00::/64 on-link and for SLAAC (valid 1 day, preferred 4 h); `flags`: the O flag
/// (stateless DHCPv6) unless the DNS forwarder is disabled.
fn assert_router_advert(frame: Parsed, flags: NdiscRouterFlags) -> Vec<u8> {
    let Parsed::Ndisc {
        eth_dst,
        ip,
        ndisc,
        options,
    } = frame
    else {
        panic!("expected a router advertisement, got {frame:?}");
    };
    assert_eq!(eth_dst, multicast_mac(ALL_NODES), "Ethernet destination");
    assert_eq!(eth_dst, EthernetAddress([0x33, 0x33, 0, 0, 0, 1]));
    assert_eq!((ip.src_addr, ip.dst_addr), (GATEWAY_LINK_LOCAL, ALL_NODES));
    assert_eq!(ip.hop_limit, 255, "NDP needs hop limit 255");
    assert_eq!(
        ndisc,
        NdiscRepr::RouterAdvert {
            hop_limit: 64,
            flags,
            router_lifetime: secs(1800),
            reachable_time: Duration::from_millis(0),
            retrans_time: Duration::from_millis(0),
            lladdr: Some(RawHardwareAddress::from(GATEWAY_MAC)),
            mtu: Some(1500),
            prefix_info: Some(NdiscPrefixInformation {
                prefix_len: 64,
                flags: NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF,
                valid_lifetime: secs(86_400),
                preferred_lifetime: secs(14_400),
                prefix: PREFIX,
            }),
        }
    );
    options
}

/// RDNSS (RFC 8106): type 25, length 3, reserved, lifetime, fd00::3. Returns the lifetime.
fn assert_rdnss_is_fd00_3(options: &[u8]) -> u32 {
    let rdnss: Vec<Vec<u8>> = ndp_options(options)
        .into_iter()
        .filter(|(kind, _)| *kind == RDNSS_TYPE)
        .map(|(_, bytes)| bytes)
        .collect();
    let rdnss = the_only(rdnss, "RDNSS option");
    assert_eq!(rdnss[1], RDNSS_LEN_ONE_SERVER, "one server: 3 × 8 bytes");
    assert_eq!(&rdnss[2..4], &[0, 0], "reserved");
    let server = Ipv6Addr::from(<[u8; 16]>::try_from(&rdnss[8..24]).unwrap());
    assert_eq!(server, DNS, "the DNS forwarder");
    u32::from_be_bytes(rdnss[4..8].try_into().unwrap())
}

fn assert_full_router_advert(frame: Parsed) {
    let options = assert_router_advert(frame, NdiscRouterFlags::OTHER);
    let lifetime = assert_rdnss_is_fd00_3(&options);
    // RFC 8106 §5.1: at least the maximum interval between advertisements.
    assert!(
        lifetime >= 120,
        "RDNSS lifetime {lifetime} s outlives the 120 s advertisement interval"
    );
}

mod router_advertisements {
    use super::*;

    #[test]
    fn router_solicitation_gets_the_full_advertisement() {
        let mut s = with_ipv6();
        let guest = s.guest;
        s.guest_sends(&guest.router_solicit());
        assert_full_router_advert(the_only(s.drain(), "router advertisement"));
        assert_eq!(s.host.calls(), &[], "NDP never reaches the host");
    }

    #[test]
    fn the_mtu_option_follows_the_configured_mtu() {
        let mut s = ipv6_with(Config {
            mtu: 65520,
            ..Config::default()
        });
        let guest = s.guest;
        s.guest_sends(&guest.router_solicit());
        let Parsed::Ndisc {
            ndisc: NdiscRepr::RouterAdvert { mtu, .. },
            ..
        } = the_only(s.drain(), "router advertisement")
        else {
            panic!("expected a router advertisement");
        };
        assert_eq!(mtu, Some(65520));
    }

    #[test]
    fn without_the_dns_forwarder_no_dns_server_is_advertised() {
        let mut s = ipv6_with(Config {
            disable_dns: true,
            ..Config::default()
        });
        let guest = s.guest;
        s.guest_sends(&guest.router_solicit());
        let options = assert_router_advert(
            the_only(s.drain(), "router advertisement"),
            NdiscRouterFlags::empty(),
        );
        let kinds: Vec<u8> = ndp_options(&options)
            .iter()
            .map(|(kind, _)| *kind)
            .collect();
        assert!(
            !kinds.contains(&RDNSS_TYPE),
            "fd00::3 is no DNS server with --disable-dns; options {kinds:?}"
        );
    }

    fn domains(list: &[&str]) -> Vec<String> {
        list.iter().map(|d| d.to_string()).collect()
    }

    fn dnssl_options(options: &[u8]) -> Vec<Vec<u8>> {
        ndp_options(options)
            .into_iter()
            .filter(|(kind, _)| *kind == DNSSL_TYPE)
            .map(|(_, bytes)| bytes)
            .collect()
    }

    #[test]
    fn search_domains_are_advertised_as_dnssl_next_to_rdnss() {
        let mut s = with_ipv6();
        let guest = s.guest;
        s.guest_sends(&guest.router_solicit());
        let options = assert_router_advert(
            the_only(s.drain(), "router advertisement"),
            NdiscRouterFlags::OTHER,
        );
        assert_eq!(
            dnssl_options(&options),
            Vec::<Vec<u8>>::new(),
            "no list, no DNSSL"
        );

        s.stack
            .set_dns_search(&domains(&["example.com", "corp.example.net."]));
        s.guest_sends(&guest.router_solicit());
        let frame = the_only(s.drain(), "router advertisement");
        let Parsed::Ndisc { options, .. } = &frame else {
            panic!("expected a router advertisement, got {frame:?}");
        };
        assert_eq!(assert_rdnss_is_fd00_3(options), 360);
        let dnssl = the_only(dnssl_options(options), "DNSSL option");
        // RFC 8106 §5.2: type 31, length 5 (8 + 13 + 18 = 39 octets padded to 40),
        // reserved, the RDNSS lifetime, the names uncompressed, zero padding.
        let mut expected = vec![31, 5, 0, 0, 0, 0, 1, 104];
        expected.extend_from_slice(b"\x07example\x03com\x00\x04corp\x07example\x03net\x00");
        expected.push(0);
        assert_eq!(dnssl, expected);

        // A change reaches the next advertisement, the periodic one too.
        s.stack.set_dns_search(&domains(&["new.example"]));
        s.advance(secs(1));
        let Parsed::Ndisc { options, .. } = the_only(s.drain(), "advertisement at 1 s") else {
            panic!("expected a router advertisement");
        };
        let dnssl = the_only(dnssl_options(&options), "DNSSL option");
        assert_eq!(&dnssl[8..21], b"\x03new\x07example\x00");
        assert_eq!(dnssl.len(), 24);
    }

    #[test]
    fn unsolicited_one_second_after_start_then_every_120_seconds() {
        let mut s = with_ipv6();
        assert_eq!(
            s.stack.poll_at(),
            Some(START + secs(1)),
            "the first advertisement is the next thing due"
        );
        s.advance(Duration::from_millis(999));
        assert_eq!(s.drain(), vec![], "nothing before 1 s");
        s.advance(Duration::from_millis(1));
        assert_full_router_advert(the_only(s.drain(), "advertisement at 1 s"));

        assert_eq!(s.stack.poll_at(), Some(START + secs(1) + RA_INTERVAL));
        s.advance(RA_INTERVAL - Duration::from_millis(1));
        assert_eq!(s.drain(), vec![], "nothing before 121 s");
        s.advance(Duration::from_millis(1));
        assert_full_router_advert(the_only(s.drain(), "advertisement at 121 s"));

        s.advance(RA_INTERVAL);
        assert_eq!(s.drain().len(), 1, "and one more at 241 s");
    }

    #[test]
    fn a_solicitation_does_not_disturb_the_schedule() {
        let mut s = with_ipv6();
        let guest = s.guest;
        s.advance(secs(1));
        assert_eq!(s.drain().len(), 1, "the advertisement at 1 s");
        s.advance(secs(10));
        s.guest_sends(&guest.router_solicit());
        assert_eq!(s.drain().len(), 1, "the answer to the solicitation");
        assert_eq!(s.stack.poll_at(), Some(START + secs(1) + RA_INTERVAL));
    }
}

mod neighbor_discovery {
    use super::*;

    /// The guest asks for `target` from its link-local address; the stack must advertise it
    /// with `mac`, as a router, solicited, overriding any cached entry.
    fn assert_advertised(target: Ipv6Addr, mac: EthernetAddress) {
        let mut s = guest_up();
        let guest = s.guest;
        s.guest_sends(&guest.neighbor_solicit(guest.link_local(), target));
        let Parsed::Ndisc {
            eth_dst, ip, ndisc, ..
        } = the_only(s.drain(), "neighbour advertisement")
        else {
            panic!("expected a neighbour advertisement for {target}");
        };
        assert_eq!(eth_dst, guest.mac, "unicast back to the requester");
        assert_eq!(
            (ip.src_addr, ip.dst_addr, ip.hop_limit),
            (target, guest.link_local(), 255)
        );
        assert_eq!(
            ndisc,
            NdiscRepr::NeighborAdvert {
                flags: NdiscNeighborFlags::ROUTER
                    | NdiscNeighborFlags::SOLICITED
                    | NdiscNeighborFlags::OVERRIDE,
                target_addr: target,
                lladdr: Some(RawHardwareAddress::from(mac)),
            },
            "advertisement for {target}"
        );
    }

    #[test]
    fn gateway_is_advertised_with_its_mac() {
        assert_advertised(GATEWAY, GATEWAY_MAC);
    }

    #[test]
    fn gateway_link_local_is_advertised_with_its_mac() {
        assert_advertised(GATEWAY_LINK_LOCAL, GATEWAY_MAC);
    }

    #[test]
    fn dns_is_advertised_with_its_mac() {
        assert_advertised(DNS, DNS_MAC);
    }

    #[test]
    fn dns_link_local_is_advertised_with_its_mac() {
        assert_advertised(DNS_LINK_LOCAL, DNS_MAC);
    }

    #[test]
    fn the_answer_goes_to_a_global_requester_too() {
        let mut s = guest_up();
        let guest = s.guest;
        s.guest_sends(&guest.neighbor_solicit(guest.ipv6_addr(), GATEWAY));
        let Parsed::Ndisc { ip, .. } = the_only(s.drain(), "neighbour advertisement") else {
            panic!("expected a neighbour advertisement");
        };
        assert_eq!((ip.src_addr, ip.dst_addr), (GATEWAY, guest.ipv6_addr()));
    }

    #[test]
    fn nobody_else_answers() {
        let mut s = guest_up();
        let guest = s.guest;
        for target in [
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 4),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
            guest.ipv6_addr(),
            REMOTE,
        ] {
            s.guest_sends(&guest.neighbor_solicit(guest.link_local(), target));
            assert_eq!(s.drain(), vec![], "no advertisement for {target}");
        }
        assert_eq!(s.host.calls(), &[]);
    }

    #[test]
    fn duplicate_address_detection_is_not_disturbed() {
        let mut s = guest_up();
        let guest = s.guest;
        for tentative in [guest.link_local(), guest.ipv6_addr()] {
            let probe = guest.neighbor_solicit(Ipv6Addr::UNSPECIFIED, tentative);
            s.guest_sends(&probe);
            assert_eq!(
                s.drain(),
                vec![],
                "the guest's DAD probe for {tentative} gets no answer"
            );
        }
    }

    #[test]
    fn solicitations_go_to_the_solicited_node_group() {
        // The builder itself, so the tests above send what a kernel sends.
        let guest = with_ipv6().guest;
        let frame = guest.neighbor_solicit(guest.link_local(), GATEWAY);
        assert_eq!(&frame[..6], &[0x33, 0x33, 0xff, 0, 0, 2]);
        assert_eq!(
            solicited_node(GATEWAY),
            "ff02::1:ff00:2".parse::<Ipv6Addr>().unwrap()
        );
    }
}

mod echo {
    use super::*;

    #[test]
    fn gateway_and_dns_answer_ping_themselves() {
        let mut s = guest_up();
        s.assert_services_answer_ping([GATEWAY.into(), DNS.into()], 0x1234, b"are you there?");
    }

    #[test]
    fn remote_ping_goes_through_a_host_ping_socket_and_back() {
        let mut s = guest_up();
        s.assert_ping_through_host(REMOTE, 0x1234, 7, b"hello, world");
    }
}

mod tcp {
    use super::*;

    #[test]
    fn gateway_port_is_host_loopback_and_syn_ack_waits_for_the_connect() {
        let mut s = guest_up();
        let mut conn = s.guest_tcp(40000, v6(GATEWAY, 8080));
        let (flow, target) = s.syn_and_connect(&mut conn);
        assert_eq!(
            target,
            host_loopback6(8080),
            "[fd00::2]:8080 is host [::1]:8080"
        );
        // 1440: what fits a 1500-byte MTU with a 40-byte IPv6 header.
        let frame = s.syn_ack_after_connect(&mut conn, flow, secs(1), 1440);
        let (ip, _) = frame.tcp().expect("a TCP segment");
        assert_eq!(
            (ip.src_addr, ip.dst_addr),
            (IpAddr::from(GATEWAY), IpAddr::from(s.guest.ipv6_addr()))
        );
    }

    #[test]
    fn data_flows_both_ways() {
        let mut s = guest_up();
        let (mut conn, flow) = s.open_tcp(40000, v6(GATEWAY, 8080));

        let request = b"GET / HTTP/1.0\r\n\r\n";
        let frame = conn.send(request);
        s.guest_sends(&frame);
        s.run_until(
            std::slice::from_mut(&mut conn),
            "the ACK of the request",
            |_, c| c[0].all_acked(),
        );
        assert_eq!(s.take_sent(flow), request);

        let response: Vec<u8> = (0..100_000).map(|i| (i * 7 + i / 253) as u8).collect();
        s.peer_send(flow, &response);
        s.run_until(
            std::slice::from_mut(&mut conn),
            "the whole response",
            |_, c| c[0].received().len() >= response.len(),
        );
        assert!(
            conn.received() == response,
            "response arrived intact and in order"
        );

        s.peer_close(flow);
        s.run_until(std::slice::from_mut(&mut conn), "the FIN", |_, c| {
            c[0].peer_fin
        });
        let fin = conn.fin();
        s.guest_sends(&fin);
        s.run_until(
            std::slice::from_mut(&mut conn),
            "the ACK of the guest's FIN",
            |_, c| c[0].all_acked(),
        );
        s.advance(secs(120));
        assert!(s.host.close_mode(flow).is_some(), "host socket closed");
        assert_eq!(s.stats().tcp_flows, 0);
    }

    #[test]
    fn refused_connect_resets_the_guest() {
        let mut s = guest_up();
        let mut conn = s.guest_tcp(40000, v6(GATEWAY, 81));
        s.assert_refused_connect_resets(&mut conn);
    }

    #[test]
    fn remote_addresses_are_connected_as_they_are() {
        let mut s = guest_up();
        let (conn, flow) = s.open_tcp(40000, v6(REMOTE, 443));
        assert!(conn.established());
        let socket = s.host.socket(flow).expect("a host socket");
        assert_eq!(socket.remote, SocketAddr::V6(v6(REMOTE, 443)));
    }

    #[test]
    fn without_host_loopback_the_gateway_is_no_route() {
        let mut s = ipv6_with(Config {
            disable_host_loopback: true,
            ..Config::default()
        });
        let mut conn = s.guest_tcp(40000, v6(GATEWAY, 8080));
        let syn = conn.syn();
        s.guest_sends(&syn);
        assert_eq!(s.host.connects(), vec![], "no host connect");
        let error = the_unreachable(s.drain(), "ICMPv6 destination unreachable");
        assert_eq!(
            (error.src, error.dst),
            (IpAddr::from(GATEWAY), IpAddr::from(s.guest.ipv6_addr()))
        );
        assert_eq!(error.code, 0, "no route to destination");
        let original = error.original;
        // RFC 4443: as much of the invoking packet as fits; at least header and ports.
        let header_and_8 = &syn[ETH..ETH + IPV6_HEADER + 8];
        assert!(
            original.starts_with(header_and_8),
            "the error quotes the SYN's IPv6 header and ports"
        );
    }
}

mod udp {
    use super::*;

    #[test]
    fn gateway_port_reaches_host_loopback_and_replies_come_back() {
        let mut s = guest_up();
        let gateway = (v6(GATEWAY, 7).into(), host_loopback6(7));
        s.assert_udp_round_trip(5000, gateway, (b"first", b"echo"), "UDP reply");
    }

    #[test]
    fn dns_queries_go_to_the_upstream_and_answers_come_from_fd00_3() {
        for upstream in [
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ] {
            let mut s = guest_up();
            s.stack.set_dns_upstream(Some(upstream));
            let guest = s.guest;
            s.guest_sends(&guest.udp6(5353, v6(DNS, 53), b"query"));
            let (flow, target) = the_only(s.host.udp_opens(), "udp_open");
            assert_eq!(target, SocketAddr::new(upstream, 53), "upstream {upstream}");
            assert_eq!(s.host.udp_sent(flow), vec![b"query".to_vec()]);

            s.deliver_datagram(flow, b"answer");
            assert_eq!(
                the_only(s.drain(), "DNS answer"),
                Parsed::Udp {
                    src: v6(DNS, 53).into(),
                    dst: v6(guest.ipv6_addr(), 5353).into(),
                    payload: b"answer".to_vec(),
                },
                "upstream {upstream}"
            );
        }
    }
}

mod dhcpv6 {
    use super::*;
    use rslirp_stack::service::dhcpv6::{
        build, Message, MSG_INFORMATION_REQUEST, MSG_REPLY, MSG_SOLICIT, OPT_CLIENT_ID,
        OPT_DNS_SERVERS, OPT_DOMAIN_LIST, OPT_ORO, OPT_SERVER_ID,
    };

    const ALL_DHCP_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
    const CLIENT_DUID: &[u8] = &[0, 3, 0, 1, 2, 0, 0, 0, 0, 1];

    /// A DHCPv6 client message from the guest's link-local address, port 546, to
    /// ff02::1:2 port 547, as a stateless client sends it.
    fn client_message(s: &Scenario, payload: &[u8]) -> Vec<u8> {
        client_message_from(s, 546, payload)
    }

    fn client_message_from(s: &Scenario, src_port: u16, payload: &[u8]) -> Vec<u8> {
        let guest = s.guest;
        guest.udp6_from(
            SocketAddrV6::new(guest.link_local(), src_port, 0, 0),
            SocketAddrV6::new(ALL_DHCP_SERVERS, 547, 0, 0),
            multicast_mac(ALL_DHCP_SERVERS),
            1,
            payload,
        )
    }

    fn information_request(xid: [u8; 3]) -> Vec<u8> {
        build(
            MSG_INFORMATION_REQUEST,
            xid,
            &[(OPT_CLIENT_ID, CLIENT_DUID), (OPT_ORO, &[0, 23, 0, 24])],
        )
    }

    /// The one Reply: from [fe80::2]:547 to the guest's [link-local]:546.
    fn reply(s: &mut Scenario) -> Vec<u8> {
        let guest = s.guest;
        match the_only(s.drain(), "DHCPv6 reply") {
            Parsed::Udp { src, dst, payload } => {
                assert_eq!(src, SocketAddr::from(v6(GATEWAY_LINK_LOCAL, 547)));
                assert_eq!(dst, SocketAddr::from(v6(guest.link_local(), 546)));
                payload
            }
            other => panic!("expected a DHCPv6 reply, got {other:?}"),
        }
    }

    #[test]
    fn information_request_gets_dns_server_and_search_list() {
        let mut s = guest_up();
        s.stack
            .set_dns_search(&["example.com".to_string(), "corp.example.net".to_string()]);
        let request = client_message(&s, &information_request([1, 2, 3]));
        s.guest_sends(&request);
        let payload = reply(&mut s);
        let message = Message::parse(&payload).expect("a well-formed reply");
        assert_eq!(message.msg_type, MSG_REPLY);
        assert_eq!(message.transaction_id, [1, 2, 3]);
        assert_eq!(
            message.option(OPT_SERVER_ID),
            Some(&[0, 3, 0, 1, 0x52, 0x55, 10, 0, 2, 2][..]),
            "DUID-LL of the gateway's MAC"
        );
        assert_eq!(message.option(OPT_CLIENT_ID), Some(CLIENT_DUID));
        assert_eq!(message.option(OPT_DNS_SERVERS), Some(&DNS.octets()[..]));
        assert_eq!(
            message.option(OPT_DOMAIN_LIST),
            Some(&b"\x07example\x03com\x00\x04corp\x07example\x03net\x00"[..])
        );
        assert_eq!(s.host.calls(), &[], "DHCPv6 never reaches the host");

        // resolv.conf changed: the next reply carries the new list, or none.
        s.stack.set_dns_search(&[]);
        s.guest_sends(&client_message(&s, &information_request([4, 5, 6])));
        let payload = reply(&mut s);
        let message = Message::parse(&payload).unwrap();
        assert_eq!(message.option(OPT_DOMAIN_LIST), None);
        assert_eq!(message.option(OPT_DNS_SERVERS), Some(&DNS.octets()[..]));
    }

    #[test]
    fn the_reply_goes_to_the_port_the_request_came_from() {
        let mut s = guest_up();
        let guest = s.guest;
        s.guest_sends(&client_message_from(
            &s,
            40_000,
            &information_request([9, 9, 9]),
        ));
        match the_only(s.drain(), "DHCPv6 reply") {
            Parsed::Udp { src, dst, payload } => {
                assert_eq!(src, SocketAddr::from(v6(GATEWAY_LINK_LOCAL, 547)));
                assert_eq!(dst, SocketAddr::from(v6(guest.link_local(), 40_000)));
                assert_eq!(Message::parse(&payload).unwrap().msg_type, MSG_REPLY);
            }
            other => panic!("expected a DHCPv6 reply, got {other:?}"),
        }
    }

    #[test]
    fn stateful_and_malformed_messages_are_dropped_and_counted() {
        let mut s = guest_up();
        let before = s.stats();
        let solicit = build(MSG_SOLICIT, [1, 1, 1], &[(OPT_CLIENT_ID, CLIENT_DUID)]);
        s.guest_sends(&client_message(&s, &solicit));
        assert_eq!(
            s.drain(),
            vec![],
            "no addresses by DHCPv6: Solicit unanswered"
        );
        assert_eq!(s.stats().rx_dropped, before.rx_dropped + 1);
        // An option that claims more than the message holds.
        s.guest_sends(&client_message(&s, &[11, 0, 0, 1, 0, 1, 0, 40, 0]));
        assert_eq!(s.drain(), vec![]);
        assert_eq!(s.stats().rx_errors, before.rx_errors + 1);
        // And a well-formed one is still answered.
        s.guest_sends(&client_message(&s, &information_request([7, 7, 7])));
        assert_eq!(Message::parse(&reply(&mut s)).unwrap().msg_type, MSG_REPLY);
    }

    /// With `--cidr6`, the DNS server offered is the prefix's ::3, as in the RDNSS option.
    #[test]
    fn with_cidr6_the_dns_server_is_the_prefixs() {
        let prefix = rslirp_stack::Ipv6Prefix::parse("fd42:1:2:3::/64").unwrap();
        let mut s = ipv6_with(Config {
            network: rslirp_stack::VirtualNetwork::default().with_ipv6_prefix(prefix),
            ..Config::default()
        });
        s.advance(secs(1));
        s.drain();
        s.guest_sends(&client_message(&s, &information_request([3, 2, 1])));
        let payload = reply(&mut s);
        let message = Message::parse(&payload).unwrap();
        let dns = Ipv6Addr::new(0xfd42, 1, 2, 3, 0, 0, 0, 3);
        assert_eq!(message.option(OPT_DNS_SERVERS), Some(&dns.octets()[..]));
    }

    #[test]
    fn without_enable_ipv6_there_is_no_dhcpv6_server() {
        let mut s = Scenario::new();
        let before = s.stats();
        s.guest_sends(&client_message(&s, &information_request([1, 2, 3])));
        assert_eq!(s.drain(), vec![]);
        assert_eq!(s.stats().rx_dropped, before.rx_dropped + 1);
    }
}

mod disabled {
    use super::*;

    #[test]
    fn without_enable_ipv6_frames_are_dropped_quietly_and_counted() {
        let mut s = Scenario::new();
        let guest = s.guest;
        assert_eq!(s.stack.poll_at(), None, "no advertisements are scheduled");
        let frames = [
            guest.router_solicit(),
            guest.neighbor_solicit(guest.link_local(), GATEWAY),
            guest.icmpv6_echo(GATEWAY, 1, 1, b"ping"),
            guest.udp6(5000, v6(GATEWAY, 7), b"udp"),
        ];
        for (i, frame) in frames.iter().enumerate() {
            s.guest_sends(frame);
            assert_eq!(
                s.stats().rx_dropped,
                i as u64 + 1,
                "frame {i} counted as dropped"
            );
        }
        s.advance(secs(300));
        assert_eq!(
            s.drain_raw(),
            Vec::<Vec<u8>>::new(),
            "not a single frame out"
        );
        assert_eq!(s.host.calls(), &[], "nothing reached the host");
        assert_eq!(s.stats().rx_errors, 0, "dropped, not malformed");
    }
}

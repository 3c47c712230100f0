//! `--cidr6`: the IPv6 side of the virtual network on a prefix other than fd00::/64, told as
//! scenarios on the virtual clock. Everything the guest sees follows the prefix: the router
//! advertisement's prefix (SLAAC) and RDNSS, neighbour advertisements for prefix::2 and
//! prefix::3, echo replies, [prefix::2]:p as host [::1]:p, the DNS forwarder on prefix::3,
//! and port forwards to the guest's address in the prefix. fd00:: then means nothing
//! special. Without `--cidr6`, fd00::/64 as before.

use core::net::{IpAddr, Ipv6Addr, SocketAddr};
use rslirp_stack::config::{IPV6_DNS, IPV6_GATEWAY, IPV6_PREFIX};
use rslirp_stack::testing::ipv6::{host_loopback6, ndp_options, v6, RDNSS_TYPE};
use rslirp_stack::testing::{the_only, Parsed, Scenario, DNS_MAC, GATEWAY_MAC};
use rslirp_stack::{Config, Duration, Ipv6Prefix, VirtualNetwork};
use smoltcp::wire::{NdiscRepr, RawHardwareAddress};

const PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd42, 1, 2, 3, 0, 0, 0, 0);
const GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfd42, 1, 2, 3, 0, 0, 0, 2);
const DNS: Ipv6Addr = Ipv6Addr::new(0xfd42, 1, 2, 3, 0, 0, 0, 3);
/// The guest's SLAAC address: EUI-64 of 02:00:00:00:00:01 in the prefix.
const GUEST: Ipv6Addr = Ipv6Addr::new(0xfd42, 1, 2, 3, 0, 0xff, 0xfe00, 1);
/// The old default addresses, now ordinary remote addresses.
const OLD_GATEWAY: Ipv6Addr = IPV6_GATEWAY;
const OLD_DNS: Ipv6Addr = IPV6_DNS;

fn config(prefix: &str) -> Config {
    Config {
        enable_ipv6: true,
        network: VirtualNetwork::default()
            .with_ipv6_prefix(Ipv6Prefix::parse(prefix).expect("a valid prefix")),
        ..Config::default()
    }
}

/// A guest on fd42:1:2:3::/64 that asked for a router advertisement (so the stack knows its
/// MAC); the advertisement is checked and gone.
fn guest_up() -> Scenario {
    let mut s = Scenario::with_config(config("fd42:1:2:3::/64"));
    assert_eq!(
        s.guest.ipv6_addr(),
        GUEST,
        "the test guest takes the prefix"
    );
    let guest = s.guest;
    s.guest_sends(&guest.router_solicit());
    let (prefix, rdnss) = advertised(the_only(s.drain(), "router advertisement"));
    assert_eq!(prefix, PREFIX);
    assert_eq!(rdnss, Some(DNS));
    s
}

/// The prefix and the RDNSS server of a router advertisement.
fn advertised(frame: Parsed) -> (Ipv6Addr, Option<Ipv6Addr>) {
    let Parsed::Ndisc {
        ndisc: NdiscRepr::RouterAdvert { prefix_info, .. },
        options,
        ..
    } = frame
    else {
        panic!("expected a router advertisement, got {frame:?}");
    };
    let info = prefix_info.expect("a prefix information option");
    assert_eq!(info.prefix_len, 64);
    let rdnss = ndp_options(&options)
        .into_iter()
        .filter(|(kind, _)| *kind == RDNSS_TYPE)
        .map(|(_, bytes)| Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[8..24]).expect("one server")))
        .next_back();
    (info.prefix, rdnss)
}

#[test]
fn the_default_is_still_fd00() {
    let network = VirtualNetwork::default();
    assert_eq!(network.ipv6_prefix(), Ipv6Prefix::DEFAULT);
    assert_eq!(network.ipv6_prefix().to_string(), "fd00::/64");
    assert_eq!(
        (network.gateway6(), network.dns6()),
        (IPV6_GATEWAY, IPV6_DNS)
    );
    let mut s = Scenario::with_config(Config {
        enable_ipv6: true,
        ..Config::default()
    });
    let guest = s.guest;
    assert_eq!(
        guest.ipv6_addr(),
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0xff, 0xfe00, 1)
    );
    s.guest_sends(&guest.router_solicit());
    let (prefix, rdnss) = advertised(the_only(s.drain(), "router advertisement"));
    assert_eq!((prefix, rdnss), (IPV6_PREFIX, Some(IPV6_DNS)));
}

#[test]
fn advertisements_carry_the_configured_prefix_and_dns() {
    let mut s = Scenario::with_config(config("2001:db8:aa:bb::/64"));
    s.advance(Duration::from_secs(1));
    let (prefix, rdnss) = advertised(the_only(s.drain(), "unsolicited advertisement"));
    assert_eq!(prefix, Ipv6Addr::new(0x2001, 0xdb8, 0xaa, 0xbb, 0, 0, 0, 0));
    assert_eq!(
        rdnss,
        Some(Ipv6Addr::new(0x2001, 0xdb8, 0xaa, 0xbb, 0, 0, 0, 3))
    );
}

#[test]
fn gateway_and_dns_answer_neighbour_solicitations_at_their_new_addresses() {
    let mut s = guest_up();
    let guest = s.guest;
    for (target, mac) in [(GATEWAY, GATEWAY_MAC), (DNS, DNS_MAC)] {
        s.guest_sends(&guest.neighbor_solicit(guest.link_local(), target));
        let Parsed::Ndisc { ip, ndisc, .. } = the_only(s.drain(), "neighbour advert") else {
            panic!("expected a neighbour advertisement for {target}");
        };
        assert_eq!((ip.src_addr, ip.dst_addr), (target, guest.link_local()));
        let NdiscRepr::NeighborAdvert {
            target_addr,
            lladdr,
            ..
        } = ndisc
        else {
            panic!("expected a neighbour advertisement, got {ndisc:?}");
        };
        assert_eq!(target_addr, target);
        assert_eq!(lladdr, Some(RawHardwareAddress::from(mac)));
    }
    // The old default addresses are nobody's now.
    for target in [OLD_GATEWAY, OLD_DNS] {
        s.guest_sends(&guest.neighbor_solicit(guest.link_local(), target));
        assert_eq!(s.drain(), vec![], "no advertisement for {target}");
    }
}

#[test]
fn gateway_and_dns_answer_ping_at_their_new_addresses() {
    let mut s = guest_up();
    s.assert_services_answer_ping([GATEWAY.into(), DNS.into()], 7, b"ping");
    // fd00::2 is a remote address now: its echo goes out through a host ping socket.
    let guest = s.guest;
    s.guest_sends(&guest.icmpv6_echo(OLD_GATEWAY, 7, 3, b"ping"));
    let (_, target) = the_only(s.host.ping_opens(), "ping_open");
    assert_eq!(target, IpAddr::V6(OLD_GATEWAY));
}

#[test]
fn the_new_gateway_is_host_loopback_and_fd00_2_is_remote() {
    let mut s = guest_up();
    let (_, flow) = s.open_tcp(40000, v6(GATEWAY, 8080));
    let socket = s.host.socket(flow).expect("a host socket");
    assert_eq!(socket.remote, host_loopback6(8080));
    let (_, flow) = s.open_tcp(40001, v6(OLD_GATEWAY, 8080));
    let socket = s.host.socket(flow).expect("a host socket");
    assert_eq!(socket.remote, SocketAddr::V6(v6(OLD_GATEWAY, 8080)));
}

#[test]
fn other_addresses_in_the_prefix_are_unreachable() {
    let mut s = guest_up();
    let guest = s.guest;
    let neighbour = Ipv6Addr::new(0xfd42, 1, 2, 3, 0, 0, 0, 0x99);
    s.guest_sends(&guest.udp6(5000, v6(neighbour, 7), b"anyone?"));
    assert_eq!(s.host.udp_opens(), vec![], "nothing leaves for the host");
    let Parsed::IcmpUnreachable { src, dst, code, .. } = the_only(s.drain(), "ICMPv6 error") else {
        panic!("expected destination unreachable");
    };
    assert_eq!(
        (src, dst, code),
        (IpAddr::from(GATEWAY), IpAddr::from(GUEST), 3),
        "address unreachable"
    );
}

#[test]
fn dns_forwarder_answers_on_prefix_3() {
    let mut s = guest_up();
    let upstream = IpAddr::V6(Ipv6Addr::LOCALHOST);
    s.stack.set_dns_upstream(Some(upstream));
    let dns = (v6(DNS, 53).into(), SocketAddr::new(upstream, 53));
    s.assert_udp_round_trip(5353, dns, (b"query", b"answer"), "DNS answer");
    assert_eq!(
        s.guest.ipv6_addr(),
        GUEST,
        "the answer went to the guest in the prefix"
    );
    let guest = s.guest;
    // fd00::3 is an ordinary address now: UDP to it goes to fd00::3 itself.
    s.guest_sends(&guest.udp6(5354, v6(OLD_DNS, 53), b"query"));
    let opens = s.host.udp_opens();
    assert_eq!(opens.len(), 2, "one more host socket: {opens:?}");
    assert_eq!(opens[1].1, SocketAddr::V6(v6(OLD_DNS, 53)));
}

#[test]
fn a_forward_reaches_the_guest_in_the_prefix_from_the_new_gateway() {
    let mut s = guest_up();
    let request = format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"::1","host_port":8080,"guest_addr":"{GUEST}","guest_port":80}}}}"#
    );
    assert_eq!(s.api(&request), r#"{"return":{"id":1}}"#);
    assert_eq!(
        s.api(r#"{"execute":"list_hostfwd"}"#),
        r#"{"entries":[{"id":1,"proto":"tcp","host_addr":"::1","host_port":8080,"guest_addr":"fd42:1:2:3:0:ff:fe00:1","guest_port":80}]}"#
    );
    // A loopback client appears to the guest as the gateway, prefix::2.
    s.client_connects(1, host_loopback6(50000));
    let syn = the_only(s.drain(), "SYN to the guest");
    let (ip, tcp) = syn.tcp().expect("a TCP segment");
    assert!(tcp.syn && tcp.ack.is_none(), "got {}", tcp.flags());
    assert_eq!(
        (ip.src_addr, ip.dst_addr),
        (IpAddr::from(GATEWAY), IpAddr::from(GUEST))
    );
    assert_eq!((tcp.src_port, tcp.dst_port), (50000, 80));
    // An IPv6 client outside the prefix keeps its address; one inside it (which the guest
    // could not route back to) appears as the gateway.
    let outside = SocketAddr::V6(v6(OLD_GATEWAY, 50001));
    s.client_connects(1, outside);
    let syn = the_only(s.drain(), "SYN");
    let (ip, _) = syn.tcp().expect("a TCP segment");
    assert_eq!(ip.src_addr, OLD_GATEWAY);
    let inside = SocketAddr::V6(v6(Ipv6Addr::new(0xfd42, 1, 2, 3, 0, 0, 0, 0x99), 50002));
    s.client_connects(1, inside);
    let syn = the_only(s.drain(), "SYN");
    let (ip, _) = syn.tcp().expect("a TCP segment");
    assert_eq!(ip.src_addr, GATEWAY);
}

#[test]
fn prefix_parsing_accepts_network_addresses_of_64_bits_only() {
    for good in [
        "fd42:1:2:3::/64",
        "2001:db8::/64",
        "fd00::/64",
        "FD42:0001:0:0::/64",
    ] {
        let prefix = Ipv6Prefix::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(prefix.network().segments()[4..], [0, 0, 0, 0]);
    }
    assert_eq!(
        Ipv6Prefix::parse("fd42:1:2:3::/64").unwrap().host(0x100),
        Ipv6Addr::new(0xfd42, 1, 2, 3, 0, 0, 0, 0x100)
    );
    let err = |s: &str| Ipv6Prefix::parse(s).unwrap_err().to_string();
    for syntax in [
        "fd42::",
        "fd42::/",
        "fd42::/x",
        "fd42::/+64",
        "fd42::/0064",
        "[fd42::]/64",
        "fd42::%eth0/64",
        "10.0.2.0/24",
        "/64",
        "fd42::/64/64",
        "fd42:::/64",
    ] {
        assert_eq!(
            err(syntax),
            format!("invalid IPv6 prefix: {syntax} (expected PREFIX/64, like fd00::/64)")
        );
    }
    for length in [
        "fd42::/48",
        "fd42::/0",
        "fd42::/128",
        "fd42::/65",
        "fd42::/999",
    ] {
        assert_eq!(
            err(length),
            format!("IPv6 prefix length needs to be 64: {length}")
        );
    }
    for kind in [
        "::/64",
        "::1/64",
        "ff02::/64",
        "fe80::/64",
        "febf:1::/64",
        "::ffff:10.0.2.0/64",
    ] {
        assert_eq!(
            err(kind),
            format!(
                "IPv6 prefix needs to be unicast (not multicast, link-local, loopback, \
                 unspecified or IPv4-mapped): {kind}"
            )
        );
    }
    for host_bits in ["fd42:1:2:3::100/64", "fd42::1/64", "fd42:0:0:0:8000::/64"] {
        assert_eq!(
            err(host_bits),
            format!(
                "IPv6 prefix needs to be a network address like fd00::/64, not like \
                 fd00::100/64: {host_bits}"
            )
        );
    }
}

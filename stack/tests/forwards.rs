//! The control socket (SPEC.md section 3) and the port forwards it publishes, told as
//! scenarios: JSON requests in, exact JSON replies out; host clients connecting to a
//! forward's listener, frames to and from the guest, and what the host clients get back.
//! Default network 10.0.2.0/24: gateway 10.0.2.2, guest 10.0.2.100.

use core::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use rslirp_stack::testing::{GuestTcp, Parsed, Scenario, TcpSegment};
use rslirp_stack::{CloseMode, Duration, FlowId, HostError};
use smoltcp::wire::{ArpOperation, ArpRepr, EthernetAddress};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// A host client that is not on loopback (another machine, or the host's LAN address).
const LAN_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 5);

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn loopback(port: u16) -> SocketAddr {
    addr(Ipv4Addr::LOCALHOST, port)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn the_only<T: core::fmt::Debug>(mut items: Vec<T>, what: &str) -> T {
    assert_eq!(items.len(), 1, "expected exactly one {what}, got {items:?}");
    items.remove(0)
}

fn add_request(proto: &str, host_addr: &str, host_port: u16, guest_port: u16) -> String {
    format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{proto}","host_addr":"{host_addr}","host_port":{host_port},"guest_addr":"10.0.2.100","guest_port":{guest_port}}}}}"#
    )
}

fn remove_request(id: u64) -> String {
    format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#)
}

/// `list_hostfwd` answers with exactly `entries`, in this order.
fn assert_listed(s: &mut Scenario, entries: &[&str]) {
    let expected = format!(r#"{{"entries":[{}]}}"#, entries.join(","));
    assert_eq!(s.api(LIST), expected);
}

const LIST: &str = r#"{"execute":"list_hostfwd"}"#;
const ADD_FAILED: &str =
    r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#;
const BAD_ID: &str = r#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#;

/// Publishes a forward on every host address and checks that it got `id`.
fn add(s: &mut Scenario, proto: &str, host_port: u16, guest_port: u16, id: u64) {
    add_at(s, proto, "0.0.0.0", host_port, guest_port, id);
}

/// Publishes a forward on `host_addr` and checks that it got `id`.
fn add_at(
    s: &mut Scenario,
    proto: &str,
    host_addr: &str,
    host_port: u16,
    guest_port: u16,
    id: u64,
) {
    let reply = s.api(&add_request(proto, host_addr, host_port, guest_port));
    assert_eq!(reply, format!(r#"{{"return":{{"id":{id}}}}}"#));
}

/// A scenario whose guest has already said something (an ARP request for its gateway), so
/// the stack knows its MAC, as it does once a guest is up.
fn guest_is_up() -> Scenario {
    let mut s = Scenario::new();
    let guest = s.guest;
    s.guest_sends(&guest.arp_request(GATEWAY));
    let reply = the_only(s.drain(), "ARP reply");
    assert!(matches!(reply, Parsed::Arp(_)), "got {reply:?}");
    s
}

fn segment(frame: &Parsed) -> &TcpSegment {
    match frame.tcp() {
        Some((_, tcp)) => tcp,
        None => panic!("expected a TCP segment, got {frame:?}"),
    }
}

/// The stack's SYN towards the guest for a new forwarded connection: the only frame.
fn the_syn(s: &mut Scenario) -> Parsed {
    let syn = the_only(s.drain(), "SYN to the guest");
    let tcp = segment(&syn);
    assert!(tcp.syn && tcp.ack.is_none(), "got {}", tcp.flags());
    syn
}

/// A guest that is up, TCP forward 1 from host port 8080 to its port 80, and a loopback
/// client from port 40000 connecting to it; returns the client's flow and the stack's SYN.
fn client_connecting() -> (Scenario, FlowId, Parsed) {
    let mut s = guest_is_up();
    add(&mut s, "tcp", 8080, 80, 1);
    let flow = s.client_connects(1, loopback(40000));
    let syn = the_syn(&mut s);
    (s, flow, syn)
}

/// The guest accepts `syn` with initial sequence number `isn` (its SYN-ACK goes out);
/// returns its side of the connection.
fn guest_accepts(s: &mut Scenario, syn: &Parsed, isn: u32) -> GuestTcp {
    let guest = s.guest;
    let (conn, syn_ack) = GuestTcp::accept(&guest, syn, isn);
    s.guest_sends(&syn_ack);
    conn
}

/// The stack's ARP request for the guest's MAC (who has 10.0.2.100?), broadcast.
fn who_has_the_guest(s: &Scenario) -> (EthernetAddress, Parsed) {
    (
        EthernetAddress::BROADCAST,
        Parsed::Arp(ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: s.guest.gateway_mac,
            source_protocol_addr: GATEWAY,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: GUEST,
        }),
    )
}

mod control_socket {
    use super::*;

    #[test]
    fn ids_count_from_one() {
        let mut s = Scenario::new();
        add(&mut s, "tcp", 8080, 80, 1);
        add(&mut s, "udp", 5353, 53, 2);
        let tcp = s.host.forward(1).expect("forward 1 has a host listener");
        assert!(!tcp.udp && !tcp.closed);
        assert_eq!(tcp.addr, Some(addr(Ipv4Addr::UNSPECIFIED, 8080)));
        let udp = s.host.forward(2).expect("forward 2 has a host socket");
        assert!(udp.udp && !udp.closed);
        assert_eq!(udp.addr, Some(addr(Ipv4Addr::UNSPECIFIED, 5353)));
    }

    #[test]
    fn list_shows_every_entry_exactly() {
        let mut s = Scenario::new();
        assert_eq!(s.api(LIST), r#"{"entries":[]}"#);
        add(&mut s, "tcp", 8080, 80, 1);
        // Empty addresses mean the defaults: every host address, the guest.
        let defaults = r#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"","host_port":5353,"guest_port":53}}"#;
        assert_eq!(s.api(defaults), r#"{"return":{"id":2}}"#);
        add_at(&mut s, "tcp", "127.0.0.1", 2222, 22, 3);
        assert_listed(
            &mut s,
            &[
                r#"{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}"#,
                r#"{"id":2,"proto":"udp","host_addr":"0.0.0.0","host_port":5353,"guest_addr":"10.0.2.100","guest_port":53}"#,
                r#"{"id":3,"proto":"tcp","host_addr":"127.0.0.1","host_port":2222,"guest_addr":"10.0.2.100","guest_port":22}"#,
            ],
        );
    }

    #[test]
    fn remove_closes_the_listener_and_ids_are_never_reused() {
        let mut s = Scenario::new();
        add(&mut s, "tcp", 8080, 80, 1);
        add(&mut s, "tcp", 8081, 81, 2);

        assert_eq!(s.api(&remove_request(1)), r#"{"return":{}}"#);
        assert!(
            s.host.forward(1).is_some_and(|fwd| fwd.closed),
            "the host listener of forward 1 is closed"
        );
        assert!(s.host.forward(2).is_some_and(|fwd| !fwd.closed));
        assert_eq!(
            s.api(LIST),
            r#"{"entries":[{"id":2,"proto":"tcp","host_addr":"0.0.0.0","host_port":8081,"guest_addr":"10.0.2.100","guest_port":81}]}"#
        );

        // The same spec again gets a fresh id, not the freed 1.
        add(&mut s, "tcp", 8080, 80, 3);
        assert!(s.host.forward(3).is_some_and(|fwd| !fwd.closed));
    }

    #[test]
    fn removing_a_missing_id_is_a_bad_id() {
        let mut s = Scenario::new();
        assert_eq!(s.api(&remove_request(1)), BAD_ID, "nothing added yet");
        add(&mut s, "tcp", 8080, 80, 1);
        assert_eq!(s.api(&remove_request(2)), BAD_ID, "never existed");
        assert_eq!(s.api(&remove_request(1)), r#"{"return":{}}"#);
        assert_eq!(s.api(&remove_request(1)), BAD_ID, "already removed");
        assert_eq!(s.api(LIST), r#"{"entries":[]}"#);
    }

    #[test]
    fn host_bind_failure_is_reported_and_nothing_is_listed() {
        let mut s = Scenario::new();
        // EADDRINUSE: some other program has the port.
        s.host.fail_next_listen(HostError::Other(98));
        assert_eq!(s.api(&add_request("tcp", "0.0.0.0", 8080, 80)), ADD_FAILED);
        assert_eq!(s.api(LIST), r#"{"entries":[]}"#);
        s.host.fail_next_listen(HostError::PermissionDenied);
        assert_eq!(s.api(&add_request("udp", "0.0.0.0", 53, 53)), ADD_FAILED);
        assert_eq!(s.api(LIST), r#"{"entries":[]}"#);

        // No id was handed out for the failures.
        add(&mut s, "tcp", 8080, 80, 1);
    }

    #[test]
    fn overlapping_forwards_fail_like_a_taken_port() {
        let mut s = Scenario::new();
        add(&mut s, "tcp", 8080, 80, 1);
        for host_addr in ["127.0.0.1", "0.0.0.0"] {
            assert_eq!(
                s.api(&add_request("tcp", host_addr, 8080, 81)),
                ADD_FAILED,
                "tcp {host_addr}:8080 overlaps tcp 0.0.0.0:8080"
            );
        }
        // Another protocol, or another port, is another socket.
        add_at(&mut s, "udp", "127.0.0.1", 8080, 80, 2);
        add_at(&mut s, "tcp", "127.0.0.1", 8081, 80, 3);
        // And the other way round: a specific address first, then the wildcard.
        assert_eq!(s.api(&add_request("udp", "0.0.0.0", 8080, 80)), ADD_FAILED);

        let listed: serde_json::Value =
            serde_json::from_str(&s.api(LIST)).expect("list_hostfwd replies JSON");
        let ids: Vec<u64> = listed["entries"]
            .as_array()
            .expect("an entries array")
            .iter()
            .filter_map(|entry| entry["id"].as_u64())
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }
}

/// Forwards published at start (`--publish`) through `Stack::add_hostfwd`: the same table,
/// ids, listing and removal as `add_hostfwd` requests, with the cause of a failure.
mod published_at_start {
    use super::*;
    use core::net::IpAddr;
    use rslirp_stack::api::ForwardRequest;
    use rslirp_stack::forward::{AddForwardError, ForwardError, ForwardProto};

    fn request(proto: ForwardProto, host_addr: Option<IpAddr>, port: u16) -> ForwardRequest {
        ForwardRequest {
            proto,
            host_addr,
            host_port: port,
            guest_addr: None,
            guest_port: port - 8000,
        }
    }

    #[test]
    fn share_ids_listing_and_removal_with_the_api() {
        let mut s = Scenario::new();
        assert_eq!(s.publish(&request(ForwardProto::Tcp, None, 8080)), Ok(1));
        let localhost = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            s.publish(&request(ForwardProto::Udp, localhost, 8053)),
            Ok(2)
        );
        assert!(s.host.forward(1).is_some_and(|fwd| !fwd.udp && !fwd.closed));
        assert!(s.host.forward(2).is_some_and(|fwd| fwd.udp && !fwd.closed));
        // The next API forward continues the count.
        add(&mut s, "tcp", 9090, 90, 3);
        assert_listed(
            &mut s,
            &[
                r#"{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}"#,
                r#"{"id":2,"proto":"udp","host_addr":"127.0.0.1","host_port":8053,"guest_addr":"10.0.2.100","guest_port":53}"#,
                r#"{"id":3,"proto":"tcp","host_addr":"0.0.0.0","host_port":9090,"guest_addr":"10.0.2.100","guest_port":90}"#,
            ],
        );
        assert_eq!(s.api(&remove_request(1)), r#"{"return":{}}"#);
        assert!(s.host.forward(1).is_some_and(|fwd| fwd.closed));
    }

    #[test]
    fn failures_name_their_cause_and_take_no_id() {
        let mut s = Scenario::new();
        s.host.fail_next_listen(HostError::Other(98));
        assert_eq!(
            s.publish(&request(ForwardProto::Tcp, None, 8080)),
            Err(AddForwardError::Listen {
                proto: ForwardProto::Tcp,
                addr: addr(Ipv4Addr::UNSPECIFIED, 8080),
                error: HostError::Other(98),
            })
        );
        assert_eq!(s.publish(&request(ForwardProto::Tcp, None, 8080)), Ok(1));
        assert_eq!(
            s.publish(&request(ForwardProto::Tcp, None, 8080)),
            Err(AddForwardError::Table(ForwardError::Conflict {
                id: 1,
                proto: ForwardProto::Tcp,
                host_port: 8080,
            }))
        );
        let v6_guest = ForwardRequest {
            guest_addr: Some("fd00::100".parse().expect("address")),
            ..request(ForwardProto::Tcp, None, 8081)
        };
        assert!(matches!(
            s.publish(&v6_guest),
            Err(AddForwardError::Ipv6Disabled(_))
        ));
        // Nothing failed took an id, and the API still says what it always said.
        add(&mut s, "tcp", 9090, 90, 2);
        assert_eq!(s.api(&add_request("tcp", "0.0.0.0", 8080, 80)), ADD_FAILED);
    }
}

mod tcp_forward {
    use super::*;

    #[test]
    fn loopback_client_appears_as_the_gateway() {
        let (s, flow, syn) = client_connecting();

        let (ip, tcp) = syn.tcp().expect("a TCP frame");
        assert_eq!((ip.src_addr, tcp.src_port), (IpAddr::from(GATEWAY), 40000));
        assert_eq!((ip.dst_addr, tcp.dst_port), (IpAddr::from(GUEST), 80));
        assert!(tcp.mss.is_some(), "the SYN carries an MSS");
        assert_eq!(s.host.close_mode(flow), None, "the client waits");
        assert_eq!(s.stats().tcp_flows, 1);
    }

    #[test]
    fn other_clients_appear_with_their_own_address() {
        let mut s = guest_is_up();
        add(&mut s, "tcp", 8080, 80, 1);
        s.client_connects(1, addr(LAN_CLIENT, 40001));

        let syn = the_syn(&mut s);
        let (ip, tcp) = syn.tcp().expect("a TCP frame");
        assert_eq!(
            (ip.src_addr, tcp.src_port),
            (IpAddr::from(LAN_CLIENT), 40001)
        );
        assert_eq!((ip.dst_addr, tcp.dst_port), (IpAddr::from(GUEST), 80));
    }

    #[test]
    fn every_pending_client_is_accepted_on_one_event() {
        let mut s = guest_is_up();
        add(&mut s, "tcp", 8080, 80, 1);
        for port in [40000, 40001, 40002] {
            s.host.client_connects(1, loopback(port));
        }
        // Edge-triggered readiness: one event must drain the whole accept queue.
        s.forward_event(1);
        let mut ports: Vec<u16> = s.drain().iter().map(|f| segment(f).src_port).collect();
        ports.sort_unstable();
        assert_eq!(ports, vec![40000, 40001, 40002]);
        assert_eq!(s.stats().tcp_flows, 3);
    }

    #[test]
    fn guest_accepts_and_data_flows_both_ways() {
        let (mut s, flow, syn) = client_connecting();

        let conn = guest_accepts(&mut s, &syn, 7_000_000);
        assert_eq!(conn.remote, SocketAddr::from((GATEWAY, 40000)));
        let mut conns = [conn];
        let ack = the_only(s.drain(), "ACK of the SYN-ACK");
        assert!(conns[0].on_frame(&ack));
        assert!(conns[0].all_acked(), "the stack acknowledged the SYN-ACK");

        // Host client → guest.
        s.peer_send(flow, b"GET / HTTP/1.0\r\n\r\n");
        let unclaimed = s.exchange(&mut conns);
        assert_eq!(unclaimed, vec![]);
        assert_eq!(conns[0].take_received(), b"GET / HTTP/1.0\r\n\r\n");

        // Guest → host client.
        let frame = conns[0].send(b"HTTP/1.0 200 OK\r\n\r\nhello");
        s.guest_sends(&frame);
        assert_eq!(s.take_sent(flow), b"HTTP/1.0 200 OK\r\n\r\nhello");
        // A lone small segment's ACK waits for a reply to ride on, at most ACK_DELAY.
        s.advance(rslirp_stack::nat::tcp::ACK_DELAY);
        assert_eq!(s.exchange(&mut conns), vec![]);
        assert!(conns[0].all_acked());

        // The guest closes; the client sees EOF and closes too.
        let fin = conns[0].fin();
        s.guest_sends(&fin);
        assert_eq!(s.exchange(&mut conns), vec![]);
        assert!(s.host.shutdown_write_called(flow), "the client got EOF");
        s.peer_close(flow);
        assert_eq!(s.exchange(&mut conns), vec![]);
        assert!(conns[0].peer_fin && conns[0].all_acked());
        s.advance(secs(120));
        assert_eq!(s.host.close_mode(flow), Some(CloseMode::Graceful));
        assert_eq!(s.stats().tcp_flows, 0);
    }

    #[test]
    fn client_data_and_eof_before_the_guest_accepts_wait_for_it() {
        let (mut s, flow, syn) = client_connecting();

        // `echo hello | nc 127.0.0.1 8080`: the client writes and shuts down at once.
        s.peer_send(flow, b"hello");
        s.peer_close(flow);
        assert_eq!(s.drain(), vec![], "nothing for the guest before it accepts");

        let conn = guest_accepts(&mut s, &syn, 1);
        let mut conns = [conn];
        assert_eq!(s.exchange(&mut conns), vec![]);
        assert_eq!(conns[0].received(), b"hello");
        assert!(conns[0].peer_fin, "the client's EOF follows its data");
    }

    #[test]
    fn removing_the_forward_keeps_accepted_connections() {
        let (mut s, flow, syn) = client_connecting();
        let conn = guest_accepts(&mut s, &syn, 1);
        let mut conns = [conn];
        s.exchange(&mut conns);

        assert_eq!(s.api(&remove_request(1)), r#"{"return":{}}"#);
        assert!(s.host.forward(1).is_some_and(|fwd| fwd.closed));
        assert_eq!(s.host.close_mode(flow), None);

        s.peer_send(flow, b"still here");
        assert_eq!(s.exchange(&mut conns), vec![]);
        assert_eq!(conns[0].received(), b"still here");
        let frame = conns[0].send(b"me too");
        s.guest_sends(&frame);
        assert_eq!(s.exchange(&mut conns), vec![]);
        assert_eq!(s.take_sent(flow), b"me too");
    }

    #[test]
    fn guest_refusing_resets_the_client() {
        let (mut s, flow, syn) = client_connecting();

        // Nothing listens on the guest's port 80: its kernel answers RST|ACK.
        let guest = s.guest;
        let tcp = segment(&syn);
        let rst = guest.tcp_segment(
            80,
            SocketAddrV4::new(GATEWAY, 40000),
            "R",
            0,
            Some(tcp.seq.wrapping_add(1)),
            b"",
        );
        s.guest_sends(&rst);
        assert_eq!(s.host.close_mode(flow), Some(CloseMode::Abort));
        assert_eq!(s.stats().tcp_flows, 0);
        assert_eq!(s.drain(), vec![], "a RST is not answered");
    }

    #[test]
    fn silent_guest_resets_the_client_after_20_seconds() {
        let (mut s, flow, _) = client_connecting();

        s.advance(secs(19));
        assert_eq!(s.host.close_mode(flow), None, "still trying after 19 s");
        for frame in s.drain() {
            let tcp = segment(&frame);
            assert!(tcp.syn && tcp.ack.is_none(), "only SYN retransmissions");
        }
        s.advance(secs(2));
        assert_eq!(
            s.host.close_mode(flow),
            Some(CloseMode::Abort),
            "given up after 21 s: the client is reset"
        );
        assert_eq!(s.stats().tcp_flows, 0);
    }

    /// Frames before the guest has ever sent one: the stack must ask for its MAC.
    fn before_the_guest_speaks(s: &mut Scenario) -> Vec<(EthernetAddress, Parsed)> {
        add(s, "tcp", 8080, 80, 1);
        s.client_connects(1, loopback(40000));
        s.drain_addressed()
    }

    #[test]
    fn unknown_guest_mac_is_asked_for_before_any_tcp() {
        let mut s = Scenario::new();
        let frames = before_the_guest_speaks(&mut s);
        assert_eq!(
            frames.first(),
            Some(&who_has_the_guest(&s)),
            "first, who has 10.0.2.100?"
        );
        let guest_mac = s.guest.mac;
        for (dst, frame) in &frames {
            assert!(
                frame.tcp().is_none() || *dst == guest_mac,
                "TCP to {dst} before the guest's MAC is known: {frame:?}"
            );
        }
    }

    #[test]
    fn guest_answering_the_arp_request_gets_the_syn_at_its_mac() {
        let mut s = Scenario::new();
        let guest = s.guest;
        let frames = before_the_guest_speaks(&mut s);
        assert!(
            frames.contains(&who_has_the_guest(&s)),
            "who has 10.0.2.100? in {frames:?}"
        );

        s.guest_sends(&guest.arp_reply(guest.gateway_mac, GATEWAY));
        let mut syn = None;
        for _ in 0..30 {
            // drain() checks that every frame is addressed to the guest's MAC.
            syn = s.drain().into_iter().find(|f| f.tcp().is_some());
            if syn.is_some() {
                break;
            }
            s.advance(Duration::from_millis(100));
        }
        let syn = syn.expect("a SYN at the guest's MAC within 3 s of the ARP reply");
        let conn = guest_accepts(&mut s, &syn, 1);
        let mut conns = [conn];
        assert_eq!(s.exchange(&mut conns), vec![]);
        assert!(conns[0].all_acked(), "the handshake completed");
    }

    #[test]
    fn any_frame_from_the_guest_teaches_its_mac() {
        let mut s = Scenario::new();
        let guest = s.guest;
        before_the_guest_speaks(&mut s);

        // Not an answer to the ARP request, just the guest pinging its gateway.
        s.guest_sends(&guest.icmp_echo(GATEWAY, 1, 1, b"hi"));
        let mut syns = Vec::new();
        for _ in 0..5 {
            for frame in s.drain() {
                if frame.tcp().is_some() {
                    syns.push(frame);
                }
            }
            if !syns.is_empty() {
                break;
            }
            s.advance(secs(1));
        }
        assert!(
            !syns.is_empty(),
            "the SYN is retransmitted to the guest's MAC"
        );
    }

    #[test]
    fn a_second_client_on_the_same_visible_port_is_refused_not_mixed_up() {
        let (mut s, first, _) = client_connecting();
        // 127.0.0.2:40000 would also appear as 10.0.2.2:40000: the same 4-tuple.
        let second = s.client_connects(1, addr(Ipv4Addr::new(127, 0, 0, 2), 40000));
        assert_eq!(s.host.close_mode(second), Some(CloseMode::Abort));
        assert_eq!(s.host.close_mode(first), None);
        assert_eq!(s.drain(), vec![]);
        assert_eq!(s.stats().tcp_flows, 1);
    }
}

mod udp_forward {
    use super::*;

    const GUEST_PORT: u16 = 9000;

    fn to_guest(from: SocketAddrV4, payload: &[u8]) -> Parsed {
        Parsed::Udp {
            src: from.into(),
            dst: SocketAddrV4::new(GUEST, GUEST_PORT).into(),
            payload: payload.to_vec(),
        }
    }

    /// A guest that is up, with UDP forward 1 from host port 19000 to its `GUEST_PORT`.
    fn forwarding() -> Scenario {
        let mut s = guest_is_up();
        add(&mut s, "udp", 19000, GUEST_PORT, 1);
        s
    }

    /// The guest answers from `GUEST_PORT` to `to`.
    fn guest_replies(s: &mut Scenario, to: SocketAddrV4, payload: &[u8]) {
        let guest = s.guest;
        s.guest_sends(&guest.udp(GUEST_PORT, to, payload));
    }

    /// The one frame for the guest is `payload` from `from` to its `GUEST_PORT`.
    fn assert_reaches_the_guest(s: &mut Scenario, from: SocketAddrV4, payload: &[u8]) {
        assert_eq!(
            the_only(s.drain(), "datagram to the guest"),
            to_guest(from, payload)
        );
    }

    #[test]
    fn datagram_arrives_from_the_gateway_and_the_reply_goes_back_to_the_client() {
        let mut s = forwarding();

        s.client_sends(1, loopback(5000), b"ping");
        assert_reaches_the_guest(&mut s, SocketAddrV4::new(GATEWAY, 5000), b"ping");

        guest_replies(&mut s, SocketAddrV4::new(GATEWAY, 5000), b"pong");
        assert_eq!(
            s.host.forward_sent(1),
            vec![(loopback(5000), b"pong".to_vec())]
        );
        assert_eq!(
            s.host.udp_opens(),
            vec![],
            "replies leave by the forward's socket"
        );
        assert_eq!(s.stats().udp_flows, 1);
    }

    #[test]
    fn unknown_guest_mac_is_asked_for_first() {
        let mut s = Scenario::new();
        add(&mut s, "udp", 19000, GUEST_PORT, 1);
        s.client_sends(1, loopback(5000), b"ping");
        let frames = s.drain_addressed();
        assert_eq!(frames.len(), 2, "ARP request and datagram: {frames:?}");
        assert_eq!(frames[0], who_has_the_guest(&s));
        assert_eq!(
            frames[1].1,
            to_guest(SocketAddrV4::new(GATEWAY, 5000), b"ping")
        );
    }

    #[test]
    fn lan_client_appears_with_its_own_address() {
        let mut s = forwarding();
        s.client_sends(1, addr(LAN_CLIENT, 5001), b"ping");
        assert_reaches_the_guest(&mut s, SocketAddrV4::new(LAN_CLIENT, 5001), b"ping");
        guest_replies(&mut s, SocketAddrV4::new(LAN_CLIENT, 5001), b"pong");
        assert_eq!(
            s.host.forward_sent(1),
            vec![(addr(LAN_CLIENT, 5001), b"pong".to_vec())]
        );
    }

    #[test]
    fn two_clients_get_separate_flows() {
        let mut s = forwarding();

        s.client_sends(1, loopback(5000), b"from A");
        s.client_sends(1, loopback(5001), b"from B");
        assert_eq!(
            s.drain(),
            vec![
                to_guest(SocketAddrV4::new(GATEWAY, 5000), b"from A"),
                to_guest(SocketAddrV4::new(GATEWAY, 5001), b"from B"),
            ]
        );
        assert_eq!(s.stats().udp_flows, 2);

        guest_replies(&mut s, SocketAddrV4::new(GATEWAY, 5001), b"to B");
        guest_replies(&mut s, SocketAddrV4::new(GATEWAY, 5000), b"to A");
        assert_eq!(
            s.host.forward_sent(1),
            vec![
                (loopback(5001), b"to B".to_vec()),
                (loopback(5000), b"to A".to_vec()),
            ]
        );
    }

    #[test]
    fn idle_flows_expire_after_240_seconds() {
        let mut s = forwarding();
        s.client_sends(1, loopback(5000), b"ping");
        s.drain();

        s.advance(secs(200));
        // A reply keeps the flow alive.
        guest_replies(&mut s, SocketAddrV4::new(GATEWAY, 5000), b"pong");
        assert_eq!(s.host.forward_sent(1).len(), 1);
        s.advance(secs(239));
        assert_eq!(s.stats().udp_flows, 1, "idle for 239 s only");
        s.advance(secs(2));
        assert_eq!(s.stats().udp_flows, 0, "idle for 241 s");

        // The next datagram starts a new flow and still gets through.
        s.client_sends(1, loopback(5000), b"again");
        assert_reaches_the_guest(&mut s, SocketAddrV4::new(GATEWAY, 5000), b"again");
        assert_eq!(s.stats().udp_flows, 1);
        assert_eq!(s.stats().udp_flows_opened, 2);
    }

    #[test]
    fn datagrams_beyond_the_mtu_reach_the_guest_in_fragments() {
        let mut s = forwarding();
        // 1500 bytes of IP: 20 of IPv4 header, 8 of UDP header, 1472 of payload.
        let fits = vec![7u8; 1472];
        s.client_sends(1, loopback(5000), &fits);
        assert_reaches_the_guest(&mut s, SocketAddrV4::new(GATEWAY, 5000), &fits);
        assert_eq!(s.stats().ip_frag_fragmented, 0);
        // One byte more: two fragments, whole again at the guest.
        let big: Vec<u8> = (0..1473).map(|i| i as u8).collect();
        s.client_sends(1, loopback(5000), &big);
        let frames = s.drain_raw();
        assert_eq!(frames.len(), 2, "two fragments");
        let whole = rslirp_stack::testing::fragments::defragment(frames);
        assert_eq!(
            whole
                .iter()
                .map(|f| rslirp_stack::testing::parse(f))
                .collect::<Vec<_>>(),
            vec![to_guest(SocketAddrV4::new(GATEWAY, 5000), &big)]
        );
        assert_eq!(s.stats().ip_frag_fragmented, 1);
    }

    #[test]
    fn re_added_forward_carries_replies_for_a_client_of_the_old_one() {
        let mut s = forwarding();
        let reply = |s: &mut Scenario| guest_replies(s, SocketAddrV4::new(GATEWAY, 5000), b"pong");
        s.client_sends(1, loopback(5000), b"ping");
        s.drain();
        reply(&mut s);
        assert_eq!(s.host.forward_sent(1).len(), 1);

        // The forward is published again (say the container's ports were re-applied); the
        // same client keeps talking, now through forward 2.
        assert_eq!(s.api(&remove_request(1)), r#"{"return":{}}"#);
        add(&mut s, "udp", 19000, GUEST_PORT, 2);
        s.client_sends(2, loopback(5000), b"ping again");
        assert_reaches_the_guest(&mut s, SocketAddrV4::new(GATEWAY, 5000), b"ping again");
        let dropped = s.stats().rx_dropped;
        reply(&mut s);
        assert_eq!(
            s.host.forward_sent(2),
            vec![(loopback(5000), b"pong".to_vec())],
            "the reply leaves by the forward the client talks to"
        );
        assert_eq!(s.stats().rx_dropped, dropped, "nothing dropped");
    }

    #[test]
    fn removed_forward_carries_nothing_more() {
        let mut s = forwarding();
        s.client_sends(1, loopback(5000), b"ping");
        s.drain();
        assert_eq!(s.api(&remove_request(1)), r#"{"return":{}}"#);
        assert!(s.host.forward(1).is_some_and(|fwd| fwd.closed));
        // A late readiness event for the removed forward is ignored.
        s.forward_event(1);
        assert_eq!(s.drain(), vec![]);
    }
}

mod stats {
    use super::*;
    use serde_json::Value;

    fn get_stats(s: &mut Scenario) -> Value {
        let reply = s.api(r#"{"execute":"get_stats"}"#);
        let parsed: Value = serde_json::from_str(&reply).expect("get_stats replies JSON");
        parsed
            .get("return")
            .cloned()
            .unwrap_or_else(|| panic!("no return member in {reply}"))
    }

    fn count(stats: &Value, path: &[&str]) -> u64 {
        let mut value = stats;
        for key in path {
            value = &value[*key];
        }
        value
            .as_u64()
            .unwrap_or_else(|| panic!("{} is not a count in {stats}", path.join(".")))
    }

    #[test]
    fn counters_match_what_happened() {
        let mut s = guest_is_up();
        let before = get_stats(&mut s);
        assert_eq!(count(&before, &["flows", "tcp"]), 0);
        assert_eq!(count(&before, &["interfaces", "tap", "rx_packets"]), 1);
        assert_eq!(count(&before, &["interfaces", "tap", "tx_packets"]), 1);

        add(&mut s, "tcp", 8080, 80, 1);
        add(&mut s, "udp", 19000, 9000, 2);
        let tcp_flow = s.client_connects(1, loopback(40000));
        let syn = the_syn(&mut s);
        let conn = guest_accepts(&mut s, &syn, 1);
        let mut conns = [conn];
        s.exchange(&mut conns);
        s.client_sends(2, loopback(5000), b"ping");
        s.client_sends(2, loopback(5001), b"ping");
        s.drain();

        let during = get_stats(&mut s);
        assert_eq!(count(&during, &["flows", "tcp"]), 1);
        assert_eq!(count(&during, &["flows", "udp"]), 2);
        assert_eq!(count(&during, &["flows", "icmp"]), 0);
        assert_eq!(count(&during, &["counters", "tcp_flows_opened"]), 1);
        assert_eq!(count(&during, &["counters", "udp_flows_opened"]), 2);
        let stats = s.stats();
        let tap = ["interfaces", "tap"];
        for (field, expected) in [
            ("rx_packets", stats.rx_packets),
            ("rx_bytes", stats.rx_bytes),
            ("tx_packets", stats.tx_packets),
            ("tx_bytes", stats.tx_bytes),
        ] {
            assert_eq!(
                count(&during, &[tap[0], tap[1], field]),
                expected,
                "{field}"
            );
        }
        // In: ARP request, SYN-ACK. Out: ARP reply, SYN, ACK, two datagrams.
        assert_eq!(stats.rx_packets, 2);
        assert_eq!(stats.tx_packets, 5);

        s.peer_reset(tcp_flow);
        let after = get_stats(&mut s);
        assert_eq!(
            count(&after, &["flows", "tcp"]),
            0,
            "the reset flow is gone"
        );
        assert_eq!(count(&after, &["counters", "tcp_flows_opened"]), 1);
    }
}

mod flows {
    use super::*;
    use serde_json::Value;

    #[test]
    fn list_flows_shows_endpoints_state_and_bytes() {
        let mut s = Scenario::new();
        let remote = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
        let (mut conn, flow) = s.open_tcp(40000, remote);
        let frame = conn.send(b"hello");
        s.guest_sends(&frame);
        s.exchange(std::slice::from_mut(&mut conn));
        assert_eq!(s.take_sent(flow), b"hello");
        s.peer_send(flow, b"world!");
        s.exchange(std::slice::from_mut(&mut conn));
        s.advance(Duration::from_secs(2));

        let reply = s.api(r#"{"execute":"list_flows"}"#);
        let parsed: Value = serde_json::from_str(&reply).expect("list_flows replies JSON");
        let flows = parsed["return"]["flows"]
            .as_array()
            .unwrap_or_else(|| panic!("no flows array in {reply}"));
        assert_eq!(flows.len(), 1, "{reply}");
        let entry = &flows[0];
        assert_eq!(entry["proto"], "tcp");
        assert_eq!(entry["guest"], "10.0.2.100:40000");
        assert_eq!(entry["remote"], "10.0.2.2:8080");
        assert_eq!(entry["host"], "127.0.0.1:8080");
        assert_eq!(entry["state"], "Established");
        assert_eq!(entry["rx_bytes"], 5);
        assert_eq!(entry["tx_bytes"], 6);
        assert!(
            entry["age_ms"].as_u64().is_some_and(|ms| ms >= 2000),
            "{reply}"
        );
    }
}

/// The guest's MAC is learned only from frames that prove to be the guest's: a malformed
/// or foreign frame must not redirect what the stack sends (issue #8: after garbage on the
/// tap, a forward's SYN to the silent guest went to the garbage's source MAC and died).
mod guest_mac {
    use super::*;

    const FOREIGN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];

    /// An Ethernet frame from `src` to the gateway's MAC with `payload` after `ethertype`.
    fn frame_from(src: [u8; 6], ethertype: [u8; 2], payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x52, 0x55, 10, 0, 2, 2];
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&ethertype);
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn garbage_from_another_mac_does_not_redirect_a_forward() {
        let mut s = guest_is_up();
        add(&mut s, "tcp", 8080, 80, 1);
        let before = s.stats();
        // A truncated IPv4 header, a truncated ARP packet, an unknown ethertype.
        s.guest_sends(&frame_from(FOREIGN_MAC, [0x08, 0x00], &[0x45, 0x00]));
        s.guest_sends(&frame_from(FOREIGN_MAC, [0x08, 0x06], &[0x00, 0x01, 0x08]));
        s.guest_sends(&frame_from(FOREIGN_MAC, [0x88, 0xb5], &[1, 2, 3, 4]));
        let after = s.stats();
        assert_eq!(after.rx_errors - before.rx_errors, 2);
        assert_eq!(after.rx_dropped - before.rx_dropped, 1);

        s.client_connects(1, loopback(40000));
        // `drain` checks that the SYN is addressed to the guest's own MAC.
        the_syn(&mut s);
    }

    #[test]
    fn a_valid_packet_from_a_new_mac_is_followed() {
        let mut s = guest_is_up();
        add(&mut s, "tcp", 8080, 80, 1);
        // The guest changed its MAC (ip link set tap0 address ...) and speaks again.
        s.guest.mac = EthernetAddress(FOREIGN_MAC);
        let guest = s.guest;
        s.guest_sends(&guest.arp_request(GATEWAY));
        the_only(s.drain(), "ARP reply");

        s.client_connects(1, loopback(40000));
        the_syn(&mut s);
    }
}

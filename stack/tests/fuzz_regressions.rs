//! What the fuzz targets (fuzz/, run by scripts/fuzz.sh) found, each as the smallest
//! scenario that shows it, with the frames and requests inline. A test marked `ignore`
//! describes a bug not fixed yet; whoever fixes it removes the mark (and, where the fuzz
//! harness works around the bug, the workaround it names).
//! Default network 10.0.2.0/24: gateway 10.0.2.2, guest 10.0.2.100.

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use rslirp_stack::testing::{GuestTcp, Parsed, Scenario};
use rslirp_stack::{CloseMode, FlowId};
use std::collections::HashSet;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// A host on the outside the guest connects to.
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

const ADD_TCP_FORWARD: &str = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}}"#;

/// A scenario whose guest has announced itself (an ARP request for its gateway), so the
/// stack knows its MAC, and a TCP forward 127.0.0.1:8080 -> guest:80 (id 1).
fn guest_with_forward() -> Scenario {
    let mut s = Scenario::new();
    let guest = s.guest;
    s.guest_sends(&guest.arp_request(GATEWAY));
    assert!(matches!(s.drain()[..], [Parsed::Arp(_)]));
    assert_eq!(s.api(ADD_TCP_FORWARD), r#"{"return":{"id":1}}"#);
    s
}

/// Every host socket the stack opened, by the id it named it with.
fn socket_ids(s: &Scenario) -> HashSet<FlowId> {
    s.host.sockets().map(|(flow, _)| flow).collect()
}

/// Found by the `frames` target (input `00 17 00 00 00 00 19 a5 17 c3 00 00 50 00 bc 00
/// 00 20`). Two loopback clients that the guest would see as the same peer (both appear
/// as gateway:5000) connect to a forward; the stack must refuse the second, since its
/// 4-tuple is taken. It accepts it under `FlowTable::next_id()`, closes it, and never
/// consumes that id: the next socket it opens, here the third client's, gets the same id
/// with the same generation. That breaks the `HostIo` contract ("ids are reused only with
/// a new generation", io.rs): a late event for the refused socket would be taken for the
/// new one. The same happens when the TCP flow limit refuses a client, and when the
/// connection towards the guest cannot be set up (`TcpFlow::connect_to_guest` fails, e.g.
/// for a client port 0; see the next test). SimHost panics on it ("stack opened flow#1.0
/// again"), and so does the fuzz harness that found it.
#[test]
fn forward_refusal_reuses_flow_id() {
    let mut s = guest_with_forward();
    let first = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 5000));
    let same_tuple = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 5000));
    let third = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 3), 5001));
    for client in [first, same_tuple, third] {
        s.host.client_connects(1, client);
    }
    s.forward_event(1);

    let sockets: Vec<(FlowId, SocketAddr, Option<CloseMode>)> = s
        .host
        .sockets()
        .map(|(flow, socket)| (flow, socket.remote, socket.close_mode()))
        .collect();
    assert_eq!(sockets.len(), 3, "one host socket per client: {sockets:?}");
    let refused: Vec<_> = sockets
        .iter()
        .filter(|(_, remote, _)| *remote == same_tuple)
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].2,
        Some(CloseMode::Abort),
        "the second client is refused"
    );
}

/// The fuzz input of the test above, as found: a client from port 0 (which Linux never
/// reports, but the stack must not trust the host with its ids) cannot be connected to
/// the guest, so the stack closes its socket; the forward is removed; then the guest
/// connects out, and that flow's host socket gets the refused socket's id.
#[test]
fn forward_refusal_then_guest_connect() {
    let mut s = guest_with_forward();
    let client = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7), 0));
    s.host.client_connects(1, client);
    s.forward_event(1);
    let before = socket_ids(&s);
    assert_eq!(before.len(), 1, "the client was accepted (then refused)");
    assert_eq!(
        s.api(r#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#),
        r#"{"return":{}}"#
    );

    // SYN from 10.0.2.100:40000 to 10.0.2.2:40000, as the fuzzer sent it.
    let guest = s.guest;
    s.guest_sends(&guest.tcp_syn(40000, SocketAddrV4::new(GATEWAY, 40000), 0));
    let (flow, _) = s.host.last_connect().expect("a host connect for the SYN");
    assert!(
        !before.contains(&flow),
        "the guest's flow got the id {flow:?} of the refused socket"
    );
}

/// Found by the `frames` target: after its FIN, a guest sends more data (sequence numbers
/// past the FIN). smoltcp puts that data in the receive buffer even in CLOSE-WAIT, and
/// `TcpFlow::pump` writes it to the host socket it already shut down for writing: a
/// `tcp_send` after `tcp_shutdown_write`, which the `HostIo` contract forbids (SimHost
/// panics; Linux answers EPIPE, on which the stack aborts the flow and cuts off the host's
/// direction too). RFC 9293 (3.10.7.4, CLOSE-WAIT): "ignore the segment text".
#[test]
fn guest_data_after_its_fin_is_dropped() {
    let mut s = Scenario::new();
    let (mut conn, flow) = s.open_tcp(40000, SocketAddrV4::new(REMOTE, 80));
    s.guest_sends(&conn.fin());
    s.exchange(std::slice::from_mut(&mut conn));
    assert!(s.host.shutdown_write_called(flow));

    s.guest_sends(&conn.send(b"after the FIN"));
    s.exchange(std::slice::from_mut(&mut conn));
    assert!(
        s.take_sent(flow).is_empty(),
        "data after the FIN reached the host"
    );

    // The host's direction is still open, as in any half-close.
    s.peer_send(flow, b"still flowing");
    s.exchange(std::slice::from_mut(&mut conn));
    assert_eq!(conn.received(), b"still flowing");
    assert_eq!(s.host.close_mode(flow), None, "the flow was cut off");
}

/// Found by the `frames` target (crash-96b49a3e): a client connects to a forward while the
/// flow table is full, with one flow in TIME-WAIT. The stack named the accepted socket by
/// `FlowTable::next_id()`, then dropped the TIME-WAIT flow to make room, which freed a slot
/// and changed the id the insert gave the new flow: host socket and flow had different ids
/// (a debug assertion, and events of the socket lost). Room is now made before the id is
/// chosen.
#[test]
fn forward_accept_under_a_full_table_keeps_its_id() {
    let mut config = rslirp_stack::Config::default();
    config.limits.max_tcp_flows = 1;
    let mut s = Scenario::with_config(config);
    let (mut conn, flow) = s.open_tcp(40000, SocketAddrV4::new(REMOTE, 80));
    // The host closes first: the flow lingers in TIME-WAIT and fills the table.
    s.peer_close(flow);
    s.exchange(std::slice::from_mut(&mut conn));
    let fin = conn.fin();
    s.guest_sends(&fin);
    s.exchange(std::slice::from_mut(&mut conn));
    assert_eq!(s.stats().tcp_flows, 1);
    assert_eq!(s.api(ADD_TCP_FORWARD), r#"{"return":{"id":1}}"#);

    let client = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 5000));
    let accepted = s.client_connects(1, client);
    let stats = s.stats();
    assert_eq!((stats.tcp_flows, stats.tcp_time_wait_evictions), (1, 1));
    // The guest accepts; the host client's bytes must reach it: the stack's flow and the
    // host socket must go by the same id.
    let syn = s
        .drain()
        .into_iter()
        .find(|f| matches!(f, Parsed::Tcp { tcp, .. } if tcp.syn))
        .expect("a SYN towards the guest");
    let guest = s.guest;
    let (accepting, syn_ack) = GuestTcp::accept(&guest, &syn, 1);
    s.guest_sends(&syn_ack);
    let mut conns = [accepting];
    s.exchange(&mut conns);
    s.peer_send(accepted, b"hello");
    s.exchange(&mut conns);
    assert_eq!(conns[0].received(), b"hello");
}

/// Found by the `frames` target (crash-9998a93a): a host ping socket returned an echo reply
/// bigger than the guest's MTU (a remote may answer with more than it was asked), and the
/// stack queued it whole: a frame the tap cannot carry. It was then dropped and counted; now
/// it goes in fragments, none larger than the MTU (Scenario checks every frame's size).
#[test]
fn echo_reply_larger_than_the_mtu_goes_in_fragments() {
    let mut s = Scenario::new();
    let guest = s.guest;
    s.guest_sends(&guest.icmp_echo(REMOTE, 7, 1, b"abcdefgh"));
    let (flow, _) = s.host.ping_opens()[0];
    s.ping_reply(flow, 1, &[0x55; 2000]);
    let frames = s.drain_raw();
    assert_eq!(frames.len(), 2, "two fragments, each within the MTU");
    let whole = rslirp_stack::testing::fragments::defragment(frames);
    match &whole[..] {
        [frame] => match rslirp_stack::testing::parse(frame) {
            Parsed::IcmpEcho { reply, payload, .. } => {
                assert!(reply);
                assert_eq!(payload, vec![0x55; 2000]);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{} frames after reassembly", other.len()),
    }
    assert_eq!(s.stats().ip_frag_fragmented, 1);
    // A reply that fits still goes in one frame.
    s.ping_reply(flow, 2, b"abcdefgh");
    assert_eq!(s.drain_raw().len(), 1);
}

/// Found by the `frames` target with tap offloads (input kept as
/// `fuzz/corpus/frames/regression-offload-renewed-v6-flow`). A finished TCP flow is
/// renewed for the next connection, and its smoltcp interface keeps the device
/// capabilities it was built with; with offloads an IPv6 flow's interface has the largest
/// MTU (smoltcp offloads segmentation for IPv4 only, see nat/tcp.rs). Renewed for an IPv4
/// connection whose guest announced an MSS above our MTU's, it sent segments of the guest's
/// MSS as plain frames, past the MTU and with no segment size for the tap (a 2,102-byte
/// frame on MTU 1500). Such a spare is no longer renewed for the other family.
#[test]
fn an_ipv6_flow_renewed_for_ipv4_keeps_its_segments_within_the_mtu() {
    use core::net::SocketAddrV6;
    let mut s = Scenario::with_config(rslirp_stack::Config {
        tap_offload: true,
        enable_ipv6: true,
        ..rslirp_stack::Config::default()
    });
    // An IPv6 connection the guest closes first: the stack's socket ends CLOSED and the
    // flow is kept for renewal.
    let gateway6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    let (mut conn6, flow6) = s.open_tcp(40000, SocketAddrV6::new(gateway6, 8080, 0, 0));
    let fin = conn6.fin();
    s.guest_sends(&fin);
    s.peer_close(flow6);
    for _ in 0..100 {
        s.exchange(std::slice::from_mut(&mut conn6));
        if s.stats().tcp_flows == 0 {
            break;
        }
        s.advance(rslirp_stack::Duration::from_millis(10));
    }
    assert_eq!(s.stats().tcp_flows, 0, "the IPv6 connection closed");
    assert_eq!(s.host.close_mode(flow6), Some(CloseMode::Graceful));

    // An IPv4 connection from a guest announcing MSS 9000, then a download: every frame
    // must fit the MTU or carry a segment size that does (the scenario's tap checks each
    // frame as tun and the guest's kernel would), and the data must arrive whole.
    let mut conn = s.guest_tcp(40001, SocketAddrV4::new(REMOTE, 80));
    conn.mss = 9000;
    let (flow, _) = s.syn_and_connect(&mut conn);
    s.complete_connect(flow);
    s.exchange(std::slice::from_mut(&mut conn));
    assert!(conn.established());
    s.take_offload_log();
    let data: Vec<u8> = (0..40_000).map(|i| (i * 7 + i / 253) as u8).collect();
    s.download(&mut conn, flow, &data);
    assert!(conn.received() == &data[..], "the download arrived whole");
    for (len, offload) in s.take_offload_log() {
        match offload.gso {
            None => assert!(
                len <= 14 + 1500,
                "a {len}-byte frame without a segment size"
            ),
            Some(gso) => assert!(usize::from(gso.header_len + gso.segment_size) <= 14 + 1500),
        }
    }
}

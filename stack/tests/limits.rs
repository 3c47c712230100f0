//! Every named limit of docs/limits.md, and the faults of issue #8, on the virtual clock:
//! what the guest sees when a limit is hit, the counter `get_stats` shows, and that the
//! table recovers once there is room again.

use core::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use rslirp_stack::testing::{GuestTcp, Parsed, Scenario, TcpSegment};
use rslirp_stack::{CloseMode, Config, Duration, FlowId, HostError, Limits, TapWrite};

const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

fn remote(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(REMOTE, port)
}

fn with_limits(change: impl FnOnce(&mut Limits)) -> Scenario {
    let mut config = Config::default();
    change(&mut config.limits);
    Scenario::with_config(config)
}

fn the_only_segment(frames: Vec<Parsed>, what: &str) -> TcpSegment {
    assert_eq!(frames.len(), 1, "expected one {what}, got {frames:?}");
    match frames.into_iter().next() {
        Some(Parsed::Tcp { tcp, .. }) => tcp,
        other => panic!("expected {what}, got {other:?}"),
    }
}

/// The guest's SYN from `port` is refused with a RST and no host connect.
fn assert_syn_refused(s: &mut Scenario, port: u16) {
    let connects = s.host.connects().len();
    let syn = s.guest.tcp_syn(port, remote(80), 1000);
    s.guest_sends(&syn);
    assert_eq!(s.host.connects().len(), connects, "no host connect");
    let rst = the_only_segment(s.drain(), "RST");
    assert!(rst.rst, "refused with RST, got {}", rst.flags());
    assert_eq!(rst.dst_port, port);
}

mod tcp {
    use super::*;

    #[test]
    fn max_tcp_flows_refuses_with_rst_and_recovers() {
        let mut s = with_limits(|l| l.max_tcp_flows = 3);
        let flows: Vec<_> = (0..3)
            .map(|i| s.open_tcp(40000 + i, remote(80)).1)
            .collect();
        assert_syn_refused(&mut s, 40010);
        let stats = s.stats();
        assert_eq!((stats.tcp_flows, stats.tcp_flow_limit_hits), (3, 1));

        // One goes away (the host resets it): the next SYN gets a flow.
        s.peer_reset(flows[0]);
        s.drain();
        assert_eq!(s.stats().tcp_flows, 2);
        let (conn, _) = s.open_tcp(40011, remote(80));
        assert!(conn.established());
        assert_eq!(s.stats().tcp_flow_limit_hits, 1);
    }

    /// Two connections to remote:80 under `change`d limits, the first closed by the host
    /// (it lingers in TIME-WAIT); returns the scenario and the second, still open.
    fn one_lingering_one_open(change: impl FnOnce(&mut Limits)) -> (Scenario, GuestTcp, FlowId) {
        let mut s = with_limits(change);
        let (mut a, flow_a) = s.open_tcp(40000, remote(80));
        let (b, flow_b) = s.open_tcp(40001, remote(80));
        close_from_the_host(&mut s, &mut a, flow_a);
        (s, b, flow_b)
    }

    /// The host closes first, so the stack's side ends in TIME-WAIT.
    fn close_from_the_host(s: &mut Scenario, conn: &mut GuestTcp, flow: FlowId) {
        s.peer_close(flow);
        s.exchange(std::slice::from_mut(conn));
        assert!(conn.peer_fin, "the host's FIN reached the guest");
        let fin = conn.fin();
        s.guest_sends(&fin);
        s.exchange(std::slice::from_mut(conn));
        assert!(conn.all_acked());
    }

    #[test]
    fn a_full_table_evicts_time_wait_before_refusing() {
        let (mut s, mut b, flow_b) = one_lingering_one_open(|l| l.max_tcp_flows = 2);
        let stats = s.stats();
        assert_eq!(stats.tcp_flows, 2, "flow a lingers in TIME-WAIT");
        let per_flow = stats.tcp_buffer_bytes;
        assert!(per_flow > 0, "only flow b still counts in the budget");

        // The table is full, but flow a only lingers: it makes room.
        let (c, _) = s.open_tcp(40002, remote(80));
        assert!(c.established());
        let stats = s.stats();
        assert_eq!(
            (stats.tcp_time_wait_evictions, stats.tcp_flow_limit_hits),
            (1, 0)
        );
        assert_eq!(stats.tcp_buffer_bytes, 2 * per_flow);

        // Flows b and c are in use: no room without a refusal.
        assert_syn_refused(&mut s, 40003);
        assert_eq!(s.stats().tcp_flow_limit_hits, 1);
        close_from_the_host(&mut s, &mut b, flow_b);
        s.advance(Duration::from_secs(30));
        assert_eq!(s.stats().tcp_flows, 1, "TIME-WAIT ends by itself too");
    }

    #[test]
    fn max_time_wait_drops_the_oldest_lingering_flow() {
        let (mut s, mut b, flow_b) = one_lingering_one_open(|l| l.max_time_wait = 1);
        assert_eq!(s.stats().tcp_flows, 2, "a lingers");
        close_from_the_host(&mut s, &mut b, flow_b);
        let stats = s.stats();
        assert_eq!(stats.tcp_flows, 1, "only b lingers");
        assert_eq!(stats.tcp_time_wait_evictions, 1);
        // A retransmitted FIN of the dropped flow gets a RST, which a guest in LAST-ACK
        // takes as the end of the connection it already considers closed.
        s.advance(Duration::from_secs(30));
        assert_eq!(s.stats().tcp_flows, 0);
    }

    // `max_half_open`: scenarios.rs, `a_full_half_open_table_gives_up_its_oldest_connect`.

    #[test]
    fn black_holed_connects_time_out_and_free_their_slot() {
        let mut s = with_limits(|l| l.max_half_open = 1);
        let syn = s.guest.tcp_syn(40000, remote(80), 1000);
        s.guest_sends(&syn);
        let (flow, _) = s.host.last_connect().expect("a connect");
        // Nothing ever answers the host connect.
        let timeout = s.config().timeouts.tcp_connect;
        s.advance(timeout + Duration::from_secs(1));
        assert_eq!(s.host.close_mode(flow), Some(CloseMode::Abort));
        let stats = s.stats();
        assert_eq!((stats.tcp_flows, stats.tcp_connect_failures), (0, 1));
        s.drain();
        let syn = s.guest.tcp_syn(40001, remote(80), 1000);
        s.guest_sends(&syn);
        assert_eq!(s.host.connects().len(), 2, "the slot is free again");
    }

    #[test]
    fn host_peer_vanishing_mid_transfer_resets_the_guest() {
        let mut s = Scenario::new();
        let (mut conn, flow) = s.open_tcp(40000, remote(80));
        s.peer_send(flow, &[7u8; 3000]);
        let unclaimed = s.exchange(std::slice::from_mut(&mut conn));
        assert!(unclaimed.is_empty(), "{unclaimed:?}");
        assert_eq!(conn.received().len(), 3000);
        s.peer_reset(flow);
        let rst = the_only_segment(s.drain(), "RST");
        assert!(rst.rst, "got {}", rst.flags());
        assert_eq!(s.stats().tcp_flows, 0);
    }

    #[test]
    fn a_guest_that_stops_reading_pushes_back_on_the_host() {
        let (rx, tx) = (64 << 10, 64 << 10);
        let mut s = with_limits(|l| {
            l.tcp_rx_buffer = rx;
            l.tcp_tx_buffer = tx;
        });
        let (_conn, flow) = s.open_tcp(40000, remote(80));
        // The host offers 4 MiB; the guest takes nothing (never ACKs).
        for _ in 0..64 {
            s.peer_send(flow, &[1u8; 64 << 10]);
            s.drain();
        }
        s.advance(Duration::from_secs(5));
        s.drain();
        let unread = s.host.socket(flow).expect("socket").inbound.len();
        let taken = (4 << 20) - unread;
        assert!(
            taken <= tx,
            "the stack buffered {taken} bytes for a guest that does not read (limit {tx})"
        );
    }
}

mod budget {
    use super::*;

    const BIG: usize = 64 << 10;
    const SMALL: usize = 8 << 10;
    const MIN: usize = 4 << 10;
    const FLOWS: usize = 40;
    /// A quarter of it holds one flow with big buffers; the minimum for the 39 others
    /// (312 KiB) is kept, which leaves room for 9 flows with small buffers.
    const BUDGET: usize = 8 * BIG;

    fn scenario() -> Scenario {
        with_limits(|l| {
            l.tcp_rx_buffer = BIG;
            l.tcp_tx_buffer = BIG;
            l.tcp_small_buffer = SMALL;
            l.tcp_min_buffer = MIN;
            l.tcp_buffer_budget = BUDGET;
            l.max_tcp_flows = FLOWS;
        })
    }

    #[test]
    fn big_buffers_then_small_ones_then_the_minimum_for_every_flow_the_table_allows() {
        let mut s = scenario();
        let mut flows = vec![s.open_tcp(40000, remote(80)).1];
        assert_eq!(s.stats().tcp_buffer_bytes, 2 * BIG as u64);
        assert_eq!(s.stats().tcp_buffer_reductions, 0);
        for i in 1..10 {
            flows.push(s.open_tcp(40000 + i, remote(80)).1);
        }
        assert_eq!(
            s.stats().tcp_buffer_bytes,
            (2 * BIG + 9 * 2 * SMALL) as u64,
            "then small buffers"
        );
        for i in 10..FLOWS as u16 {
            flows.push(s.open_tcp(40000 + i, remote(80)).1);
        }
        let stats = s.stats();
        assert_eq!(stats.tcp_buffer_reductions, FLOWS as u64 - 1);
        assert_eq!(
            stats.tcp_buffer_bytes, BUDGET as u64,
            "the budget is used up, and never passed"
        );
        assert_eq!(stats.tcp_buffer_budget_hits, 0, "the budget refused nobody");
        // The next SYN meets the table's limit, not the budget's.
        assert_syn_refused(&mut s, 40100);
        let stats = s.stats();
        assert_eq!(
            (stats.tcp_flow_limit_hits, stats.tcp_buffer_budget_hits),
            (1, 0)
        );

        // Closing flows gives their buffers back to the budget.
        for flow in flows {
            s.peer_reset(flow);
        }
        s.drain();
        assert_eq!(s.stats().tcp_buffer_bytes, 0);
        assert_eq!(s.stats().tcp_flows, 0);
        s.open_tcp(40200, remote(80));
        assert_eq!(
            s.stats().tcp_buffer_bytes,
            2 * BIG as u64,
            "big buffers again"
        );
    }

    /// A budget too small for `max_tcp_flows` flows of minimum buffers refuses with RST
    /// once even those do not fit (and counts it).
    #[test]
    fn a_budget_too_small_for_the_table_refuses_with_rst() {
        let mut s = with_limits(|l| {
            l.tcp_min_buffer = MIN;
            l.tcp_buffer_budget = 4 * 2 * MIN;
        });
        for i in 0..4 {
            s.open_tcp(40000 + i, remote(80));
        }
        assert_eq!(s.stats().tcp_buffer_bytes, (4 * 2 * MIN) as u64);
        assert_syn_refused(&mut s, 40100);
        assert_eq!(s.stats().tcp_buffer_budget_hits, 1);
    }

    #[test]
    fn a_flow_with_small_buffers_offers_a_small_window() {
        let mut s = scenario();
        s.open_tcp(40000, remote(80));
        let syn = s.guest.tcp_syn(40002, remote(80), 1000);
        s.guest_sends(&syn);
        let (flow, _) = s.host.last_connect().expect("a connect");
        s.complete_connect(flow);
        let syn_ack = the_only_segment(s.drain(), "SYN-ACK");
        let window = usize::from(syn_ack.window) << syn_ack.window_scale.unwrap_or(0);
        assert!(window <= SMALL, "window {window} of a small-buffer flow");
    }
}

mod datagrams {
    use super::*;

    #[test]
    fn max_udp_flows_evicts_the_longest_idle() {
        let mut s = with_limits(|l| l.max_udp_flows = 2);
        let guest = s.guest;
        s.guest_sends(&guest.udp(5000, remote(9000), b"a"));
        s.advance(Duration::from_secs(1));
        s.guest_sends(&guest.udp(5001, remote(9000), b"b"));
        s.advance(Duration::from_secs(1));
        // Flow 5000 was idle longest, although 5001 was opened later: touch 5000 first.
        s.guest_sends(&guest.udp(5000, remote(9000), b"a again"));
        s.guest_sends(&guest.udp(5002, remote(9000), b"c"));
        let opens = s.host.udp_opens();
        assert_eq!(opens.len(), 3);
        assert_eq!(s.host.close_mode(opens[0].0), None, "recently used");
        assert!(
            s.host.close_mode(opens[1].0).is_some(),
            "longest idle: evicted"
        );
        let stats = s.stats();
        assert_eq!((stats.udp_flows, stats.udp_flow_evictions), (2, 1));
    }

    /// A full table of 4,096 flows: each new flow evicts exactly the flow idle the longest
    /// (from an ordered structure, not a scan of the table), whatever order the flows were
    /// opened and used in.
    #[test]
    fn a_full_table_of_4096_flows_evicts_in_idle_order() {
        const FLOWS: u16 = 4096;
        let mut s = with_limits(|l| l.max_udp_flows = usize::from(FLOWS));
        let guest = s.guest;
        for i in 0..FLOWS {
            s.guest_sends(&guest.udp(10_000 + i, remote(9000), b"open"));
            s.advance(Duration::from_millis(1));
        }
        // The first 100 are used again (from the guest, or from the host for odd ones): the
        // longest idle are now 100, 101, ...
        let opens = s.host.udp_opens();
        for i in 0..100u16 {
            if i % 2 == 0 {
                s.guest_sends(&guest.udp(10_000 + i, remote(9000), b"again"));
            } else {
                s.deliver_datagram(opens[usize::from(i)].0, b"reply");
            }
            s.advance(Duration::from_millis(1));
        }
        s.drain();
        for i in 0..200u16 {
            s.guest_sends(&guest.udp(30_000 + i, remote(9000), b"new"));
        }
        let stats = s.stats();
        assert_eq!(
            (stats.udp_flows, stats.udp_flow_evictions),
            (u64::from(FLOWS), 200)
        );
        for (i, (flow, _)) in opens.iter().enumerate() {
            let evicted = s.host.close_mode(*flow).is_some();
            assert_eq!(evicted, (100..300).contains(&i), "flow {i}");
        }
    }

    #[test]
    fn max_icmp_flows_evicts_the_longest_idle() {
        let mut s = with_limits(|l| l.max_icmp_flows = 1);
        let guest = s.guest;
        s.guest_sends(&guest.icmp_echo(REMOTE, 1, 1, b"ping"));
        s.advance(Duration::from_secs(1));
        s.guest_sends(&guest.icmp_echo(REMOTE, 2, 1, b"ping"));
        let opens = s.host.ping_opens();
        assert_eq!(opens.len(), 2);
        assert!(s.host.close_mode(opens[0].0).is_some());
        let stats = s.stats();
        assert_eq!((stats.icmp_flows, stats.icmp_flow_evictions), (1, 1));
    }

    #[test]
    fn max_dns_flows_evicts_the_oldest_query_only() {
        let mut s = with_limits(|l| l.max_dns_flows = 2);
        s.stack
            .set_dns_upstream(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53))));
        let guest = s.guest;
        s.guest_sends(&guest.udp(6000, remote(9000), b"not DNS"));
        for port in [5000, 5001, 5002] {
            s.guest_sends(&guest.udp(port, SocketAddrV4::new(DNS, 53), b"query"));
            s.advance(Duration::from_millis(100));
        }
        let opens = s.host.udp_opens();
        assert_eq!(opens.len(), 4);
        assert_eq!(
            s.host.close_mode(opens[0].0),
            None,
            "other UDP is untouched"
        );
        assert!(
            s.host.close_mode(opens[1].0).is_some(),
            "oldest query evicted"
        );
        assert_eq!(s.host.close_mode(opens[3].0), None);
        let stats = s.stats();
        assert_eq!((stats.udp_flows, stats.dns_flow_evictions), (3, 1));
        assert_eq!(stats.udp_flow_evictions, 0);
    }
}

mod tap {
    use super::*;

    #[test]
    fn a_full_queue_drops_datagrams_and_counts_them_but_holds_tcp() {
        let mut s = with_limits(|l| l.max_tx_queue_frames = 4);
        let (_conn, flow) = s.open_tcp(40000, remote(80));
        s.tap_answer = TapWrite::Full;
        let guest = s.guest;
        for seq in 0..10 {
            s.guest_sends(&guest.icmp_echo(Ipv4Addr::new(10, 0, 2, 2), 1, seq, b"ping"));
        }
        assert!(s.stats().tx_dropped >= 6, "{:?}", s.stats());
        // TCP data from the host waits in the flow instead of being dropped.
        s.peer_send(flow, &[5u8; 20_000]);
        let dropped = s.stats().tx_dropped;
        s.tap_answer = TapWrite::Sent;
        s.advance(Duration::from_millis(200));
        let frames = s.drain();
        assert_eq!(s.stats().tx_dropped, dropped, "TCP is held, not dropped");
        let tcp_bytes: usize = frames
            .iter()
            .map(|f| match f {
                Parsed::Tcp { tcp, .. } => tcp.payload.len(),
                _ => 0,
            })
            .sum();
        assert!(tcp_bytes > 0, "the flow resumed once the tap took frames");
    }

    #[test]
    fn frames_a_down_link_refuses_count_as_dropped_not_sent() {
        let mut s = Scenario::new();
        let guest = s.guest;
        s.guest_sends(&guest.icmp_echo(Ipv4Addr::new(10, 0, 2, 2), 1, 1, b"ping"));
        s.drain();
        let before = s.stats();
        s.tap_answer = TapWrite::Dropped;
        s.guest_sends(&guest.icmp_echo(Ipv4Addr::new(10, 0, 2, 2), 1, 2, b"ping"));
        let after = s.stats();
        assert_eq!(after.tx_packets, before.tx_packets, "not counted as sent");
        assert_eq!(after.tx_dropped, before.tx_dropped + 1);
        s.tap_answer = TapWrite::Failed;
        s.guest_sends(&guest.icmp_echo(Ipv4Addr::new(10, 0, 2, 2), 1, 3, b"ping"));
        assert_eq!(s.stats().tx_errors, before.tx_errors + 1);
    }
}

mod control {
    use super::*;

    #[test]
    fn max_forwards_refuses_add_hostfwd_and_counts_it() {
        let mut s = with_limits(|l| l.max_forwards = 1);
        let add = |port: u16| {
            format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{port},"guest_port":80}}}}"#
            )
        };
        assert_eq!(s.api(&add(8080)), r#"{"return":{"id":1}}"#);
        assert_eq!(
            s.api(&add(8081)),
            r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#
        );
        assert_eq!(s.stats().forward_limit_hits, 1);
        // The first forward is untouched and still listed.
        assert!(s
            .api(r#"{"execute":"list_hostfwd"}"#)
            .contains(r#""host_port":8080"#));
    }

    #[test]
    fn get_stats_shows_the_limit_counters() {
        let mut s = with_limits(|l| l.max_tcp_flows = 0);
        let syn = s.guest.tcp_syn(40000, remote(80), 1000);
        s.guest_sends(&syn);
        let reply = s.api(r#"{"execute":"get_stats"}"#);
        assert!(reply.contains(r#""tcp_flow_limit_hits":1"#), "{reply}");
        for counter in [
            "tcp_half_open_limit_hits",
            "dns_flow_evictions",
            "tcp_buffer_budget_hits",
            "tcp_buffer_bytes",
            "forward_limit_hits",
            "forward_flow_limit_hits",
            "host_exhausted",
            "api_clients_rejected",
        ] {
            assert!(reply.contains(counter), "{counter} in {reply}");
        }
    }
}

mod forward_share {
    use super::*;
    use core::net::SocketAddr;
    use core::ops::Range;

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    /// Loopback clients from `ports` connect to `forward`, all announced by one readiness
    /// event; returns the TCP flows and the forward limit hits after.
    fn clients_connect(s: &mut Scenario, forward: u64, ports: Range<u16>) -> (u64, u64) {
        for port in ports {
            s.host.client_connects(forward, loopback(port));
        }
        s.forward_event(forward);
        let stats = s.stats();
        (stats.tcp_flows, stats.forward_flow_limit_hits)
    }

    /// max_tcp_flows 8: forwards' clients may hold 4 (3 for one forward), the guest's own
    /// connections leave 2 free.
    fn scenario() -> Scenario {
        let mut s = with_limits(|l| {
            l.max_tcp_flows = 8;
            l.max_forward_flows = 4;
            l.max_flows_per_forward = 3;
            l.tcp_forward_reserve = 2;
        });
        let guest = s.guest;
        s.guest_sends(&guest.arp_request(Ipv4Addr::new(10, 0, 2, 2)));
        s.drain();
        for port in [8080, 8081] {
            let reply = s.api(&format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{port},"guest_port":80}}}}"#
            ));
            assert!(reply.starts_with(r#"{"return":{"id":"#), "{reply}");
        }
        s
    }

    /// One busy forward takes at most its own limit, all forwards together at most their
    /// share: the refused clients are closed and counted, and the guest's own connections
    /// still find room.
    #[test]
    fn forwards_clients_stay_within_their_share() {
        let mut s = scenario();
        assert_eq!(
            clients_connect(&mut s, 1, 40000..40004),
            (3, 1),
            "forward 1 holds its 3"
        );
        assert_eq!(
            clients_connect(&mut s, 2, 40010..40012),
            (4, 2),
            "the forwards' share is 4"
        );
        s.drain();
        // The container's own connections take the rest of the table.
        for port in 0..4 {
            let (conn, _) = s.open_tcp(50000 + port, remote(80));
            assert!(conn.established());
        }
        assert_eq!(s.stats().tcp_flows, 8);
        assert_eq!(s.stats().tcp_flow_limit_hits, 0);
    }

    /// The guest's own connections leave `tcp_forward_reserve` flows free: a published port
    /// stays reachable however many connections the container opens.
    #[test]
    fn the_guest_leaves_a_reserve_for_forwards_clients() {
        let mut s = scenario();
        for port in 0..6 {
            s.open_tcp(50000 + port, remote(80));
        }
        assert_syn_refused(&mut s, 50010);
        let stats = s.stats();
        assert_eq!((stats.tcp_flows, stats.tcp_flow_limit_hits), (6, 1));
        s.client_connects(1, loopback(40000));
        s.client_connects(2, loopback(40001));
        let stats = s.stats();
        assert_eq!((stats.tcp_flows, stats.forward_flow_limit_hits), (8, 0));
    }
}

#[test]
fn a_host_socket_that_cannot_be_opened_is_counted_and_answered() {
    let mut s = Scenario::new();
    s.host.fail_next_open(HostError::Exhausted);
    let syn = s.guest.tcp_syn(40000, remote(80), 1000);
    s.guest_sends(&syn);
    let stats = s.stats();
    assert_eq!(stats.host_socket_errors, 1);
    assert_eq!(stats.tcp_flows, 0);
    assert_eq!(stats.host_exhausted, 1);
    let rst = the_only_segment(s.drain(), "RST");
    assert!(rst.rst, "the SYN is answered with RST, got {}", rst.flags());
}

/// Out of fds for a UDP flow: the guest hears ICMP port unreachable (not silence), the
/// refusal is counted, and the next datagram, once fds are back, opens its flow.
#[test]
fn a_udp_flow_the_host_has_no_fd_for_is_refused_with_icmp() {
    let mut s = Scenario::new();
    let guest = s.guest;
    s.host.fail_next_open(HostError::Exhausted);
    s.guest_sends(&guest.udp(5000, remote(9000), b"a"));
    let stats = s.stats();
    assert_eq!((stats.udp_flows, stats.host_exhausted), (0, 1));
    let answer = s.drain();
    assert_eq!(answer.len(), 1, "one ICMP error: {answer:?}");
    assert!(
        matches!(&answer[0], Parsed::IcmpUnreachable { code: 3, .. }),
        "ICMP port unreachable, got {answer:?}"
    );
    s.guest_sends(&guest.udp(5000, remote(9000), b"again"));
    assert_eq!(s.stats().udp_flows, 1);
}

/// accept(2) of a port forward failing with EMFILE leaves the client in the backlog, and
/// the listener is edge-triggered: the stack must try again by itself, or the client (and
/// every later one) would wait until yet another client arrives.
#[test]
fn a_forward_accept_out_of_fds_is_retried() {
    let mut s = Scenario::new();
    // The guest has spoken (its MAC is known), as once it is up.
    let guest = s.guest;
    s.guest_sends(&guest.arp_request(Ipv4Addr::new(10, 0, 2, 2)));
    s.drain();
    let reply = s.api(
        r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_port":80}}"#,
    );
    assert_eq!(reply, r#"{"return":{"id":1}}"#);
    s.host.fail_next_accept(HostError::Exhausted);
    s.host
        .client_connects(1, "127.0.0.1:40000".parse().expect("address"));
    s.forward_event(1);
    assert_eq!(s.stats().tcp_flows, 0, "the accept failed");
    assert_eq!(s.stats().host_exhausted, 1);
    // No new event comes; the stack's own timer brings the client in.
    s.advance(Duration::from_millis(200));
    assert_eq!(s.stats().tcp_flows, 1, "accepted on the retry");
    let syn = s
        .drain()
        .into_iter()
        .find_map(|frame| match frame {
            Parsed::Tcp { tcp, .. } if tcp.syn => Some(tcp),
            _ => None,
        })
        .expect("a SYN to the guest");
    assert_eq!(syn.dst_port, 80);
}

mod syn_rate {
    use super::*;

    /// A burst of SYNs beyond `syn_burst` costs no host connect each: the surplus is
    /// dropped and counted, and a SYN the guest retransmits a second later is admitted.
    #[test]
    fn syns_beyond_the_rate_are_dropped_and_a_retransmission_gets_in() {
        let mut s = with_limits(|l| {
            l.max_syn_rate = 100;
            l.syn_burst = 10;
        });
        for port in 0..50u16 {
            let syn = s.guest.tcp_syn(20_000 + port, remote(80), 1000);
            s.guest_sends(&syn);
        }
        assert_eq!(s.host.connects().len(), 10, "the burst, no more");
        assert_eq!(s.stats().tcp_syn_rate_drops, 40);
        assert!(s.drain().is_empty(), "dropped SYNs get no answer");

        s.advance(Duration::from_secs(1));
        let retransmitted = s.guest.tcp_syn(20_049, remote(80), 1000);
        s.guest_sends(&retransmitted);
        assert_eq!(s.host.connects().len(), 11);
        assert_eq!(s.stats().tcp_syn_rate_drops, 40);
    }
}

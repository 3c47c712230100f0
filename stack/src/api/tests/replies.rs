//! Replies, byte for byte.

use super::*;
use serde_json::Value;

// Every error text, byte for byte.

#[test]
fn error_reply_bytes_for_every_error() {
    let cases: [(ApiError, &[u8]); 13] = [
        (
            ApiError::CannotParseJson,
            br#"{"error":{"desc":"bad request: cannot parse JSON"}}"#,
        ),
        (
            ApiError::NotAnObject,
            br#"{"error":{"desc":"bad request: json_object() failed"}}"#,
        ),
        (
            ApiError::NoExecute,
            br#"{"error":{"desc":"bad request: no execute found"}}"#,
        ),
        (
            ApiError::UnknownExecute,
            br#"{"error":{"desc":"bad request: unknown execute"}}"#,
        ),
        (
            ApiError::BadProto,
            br#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}"#,
        ),
        (
            ApiError::BadHostAddr,
            br#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_addr"}}"#,
        ),
        (
            ApiError::BadHostPort,
            br#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}"#,
        ),
        (
            ApiError::BadGuestAddr,
            br#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_addr"}}"#,
        ),
        (
            ApiError::BadGuestPort,
            br#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_port"}}"#,
        ),
        (
            ApiError::AddFailed,
            br#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#,
        ),
        (
            ApiError::BadId,
            br#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#,
        ),
        (
            ApiError::RemoveFailed,
            br#"{"error":{"desc":"bad request: remove_hostfwd: slirp_remove_hostfwd failed"}}"#,
        ),
        (
            ApiError::TooLarge,
            br#"{"error":{"desc":"bad request: too large message"}}"#,
        ),
    ];
    for (err, expected) in cases {
        assert_eq!(
            String::from_utf8_lossy(&error_reply(&err)),
            String::from_utf8_lossy(expected),
            "{err:?}"
        );
    }
}
#[test]
fn add_and_remove_reply_bytes() {
    assert_eq!(add_reply(1), br#"{"return":{"id":1}}"#);
    assert_eq!(add_reply(4242), br#"{"return":{"id":4242}}"#);
    assert_eq!(remove_reply(), br#"{"return":{}}"#);
}

#[test]
fn list_reply_bytes() {
    assert_eq!(list_reply(&[]), br#"{"entries":[]}"#);
    let one = Forward {
        id: 1,
        spec: spec("0.0.0.0", 8080, "10.0.2.100", 80),
    };
    assert_eq!(
        list_reply(std::slice::from_ref(&one)),
        br#"{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}]}"#
    );
    let mut udp6 = spec("::1", 5353, "10.0.2.100", 53);
    udp6.proto = ForwardProto::Udp;
    let two = [one, Forward { id: 3, spec: udp6 }];
    assert_eq!(
        String::from_utf8_lossy(&list_reply(&two)),
        concat!(
            r#"{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},"#,
            r#"{"id":3,"proto":"udp","host_addr":"::1","host_port":5353,"guest_addr":"10.0.2.100","guest_port":53}]}"#
        )
    );
}

#[test]
fn ipv6_addresses_are_listed_compressed() {
    let fwd = Forward {
        id: 2,
        spec: spec("2001:db8:0:0:0:0:0:1", 80, "fd00:0::0100", 8080),
    };
    assert_eq!(
        String::from_utf8_lossy(&list_reply(&[fwd])),
        r#"{"entries":[{"id":2,"proto":"tcp","host_addr":"2001:db8::1","host_port":80,"guest_addr":"fd00::100","guest_port":8080}]}"#
    );
}

#[test]
fn flows_reply_bytes() {
    let flow = FlowEntry {
        id: 7,
        proto: "tcp",
        guest: "10.0.2.100:40000".into(),
        remote: "10.0.2.2:80".into(),
        host: "127.0.0.1:80".into(),
        state: "Established".into(),
        rx_bytes: 1,
        tx_bytes: 2,
        age_ms: 3,
    };
    assert_eq!(
        String::from_utf8(flows_reply(&[flow])).unwrap(),
        r#"{"return":{"flows":[{"id":7,"proto":"tcp","guest":"10.0.2.100:40000","remote":"10.0.2.2:80","host":"127.0.0.1:80","state":"Established","rx_bytes":1,"tx_bytes":2,"age_ms":3}]}}"#
    );
    assert_eq!(
        String::from_utf8(flows_reply(&[])).unwrap(),
        r#"{"return":{"flows":[]}}"#
    );
}

#[test]
fn stats_reply_bytes() {
    let stats = Stats {
        rx_bytes: 1,
        rx_packets: 2,
        rx_errors: 3,
        rx_dropped: 4,
        tx_bytes: 5,
        tx_packets: 6,
        tx_errors: 7,
        tx_dropped: 8,
        tcp_flows: 9,
        udp_flows: 10,
        icmp_flows: 11,
        tcp_flows_opened: 12,
        udp_flows_opened: 13,
        icmp_flows_opened: 14,
        tcp_flow_limit_hits: 15,
        tcp_time_wait_evictions: 16,
        tcp_half_open_limit_hits: 17,
        udp_flow_evictions: 18,
        icmp_flow_evictions: 19,
        dns_flow_evictions: 20,
        tcp_buffer_reductions: 21,
        tcp_buffer_budget_hits: 22,
        tcp_buffer_bytes: 23,
        forward_limit_hits: 24,
        forward_flow_limit_hits: 41,
        api_clients_rejected: 25,
        tcp_connect_failures: 26,
        host_socket_errors: 27,
        tcp_syn_received_timeouts: 28,
        tcp_user_timeouts: 29,
        tcp_fin_wait2_timeouts: 30,
        tcp_syn_rate_drops: 39,
        ip_frag_reassembled: 31,
        ip_frag_timeouts: 32,
        ip_frag_overlaps: 33,
        ip_frag_datagram_evictions: 34,
        ip_frag_byte_evictions: 35,
        ip_frag_fragmented: 36,
        ip_frag_pending: 37,
        ip_frag_bytes: 38,
        host_exhausted: 40,
        dns_retries: 42,
        dns_retry_forgotten: 43,
        icmp_errors_relayed: 44,
        icmp_error_rate_drops: 45,
        icmp_errors_unrelayed: 46,
    };
    assert_eq!(
        String::from_utf8_lossy(&stats_reply(&stats)),
        concat!(
            r#"{"return":{"interfaces":{"tap":{"rx_bytes":1,"rx_packets":2,"rx_errors":3,"rx_dropped":4,"#,
            r#""tx_bytes":5,"tx_packets":6,"tx_errors":7,"tx_dropped":8}},"#,
            r#""flows":{"tcp":9,"udp":10,"icmp":11},"#,
            r#""counters":{"tcp_flows_opened":12,"udp_flows_opened":13,"icmp_flows_opened":14,"#,
            r#""tcp_flow_limit_hits":15,"tcp_time_wait_evictions":16,"#,
            r#""tcp_half_open_limit_hits":17,"#,
            r#""udp_flow_evictions":18,"icmp_flow_evictions":19,"dns_flow_evictions":20,"#,
            r#""tcp_buffer_reductions":21,"tcp_buffer_budget_hits":22,"tcp_buffer_bytes":23,"#,
            r#""forward_limit_hits":24,"forward_flow_limit_hits":41,"api_clients_rejected":25,"#,
            r#""tcp_connect_failures":26,"host_socket_errors":27,"#,
            r#""tcp_syn_received_timeouts":28,"tcp_user_timeouts":29,"tcp_fin_wait2_timeouts":30,"tcp_syn_rate_drops":39,"#,
            r#""ip_frag_reassembled":31,"ip_frag_timeouts":32,"ip_frag_overlaps":33,"#,
            r#""ip_frag_datagram_evictions":34,"ip_frag_byte_evictions":35,"#,
            r#""ip_frag_fragmented":36,"ip_frag_pending":37,"ip_frag_bytes":38,"host_exhausted":40,"#,
            r#""dns_retries":42,"dns_retry_forgotten":43,"#,
            r#""icmp_errors_relayed":44,"icmp_error_rate_drops":45,"icmp_errors_unrelayed":46}}}"#
        )
    );
}

/// Every field of `Stats` must reach the reply. `Stats`' `Debug` lists its fields, so a
/// counter added to `Stats` but not to `stats_reply` fails here, not silently.
#[test]
fn stats_reply_covers_every_stats_field() {
    let debug = format!("{:?}", Stats::default());
    let fields: Vec<&str> = debug
        .trim_start_matches("Stats {")
        .trim_end_matches('}')
        .split(',')
        .filter_map(|field| field.split(':').next())
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    assert!(fields.len() >= 27, "{debug}");
    let reply: Value = serde_json::from_slice(&stats_reply(&Stats::default())).expect("valid JSON");
    let body = &reply["return"];
    for field in fields {
        let present = body["interfaces"]["tap"].get(field).is_some()
            || body["counters"].get(field).is_some()
            || field
                .strip_suffix("_flows")
                .is_some_and(|kind| body["flows"].get(kind).is_some());
        assert!(present, "Stats::{field} is missing from stats_reply");
    }
}

// The table's errors as the client sees them.

#[test]
fn table_errors_map_to_reference_texts() {
    let mut table = ForwardTable::new(1);
    let spec = spec("0.0.0.0", 8080, "10.0.2.100", 80);
    let id = table.insert(spec.clone()).map_err(ApiError::from);
    assert_eq!(id.map(add_reply), Ok(br#"{"return":{"id":1}}"#.to_vec()));
    // Same spec again: conflict. Another port: the table is full. Both as a failed bind.
    let again = table.check(&spec).map_err(ApiError::from);
    assert_eq!(
        again.map_err(|err| error_reply(&err)),
        Err(br#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#.to_vec())
    );
    let mut other = spec.clone();
    other.host_port = 8081;
    assert_eq!(
        table.insert(other).map_err(ApiError::from),
        Err(ApiError::AddFailed)
    );
    // Removing an id that is not there (never was, or already removed) is a bad id.
    assert_eq!(
        table.remove(2).map_err(ApiError::from).map(|_| ()),
        Err(ApiError::BadId)
    );
    assert!(table.remove(1).is_ok());
    let gone = table
        .remove(1)
        .map_err(ApiError::from)
        .map(|_| remove_reply());
    assert_eq!(
        gone.map_err(|err| error_reply(&err)),
        Err(br#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#.to_vec())
    );
}

#[test]
fn add_list_remove_round_trip() {
    let mut table = ForwardTable::new(10);
    let requests = [
        br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":18080,"guest_port":80}}"#.as_slice(),
        br#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"::","host_port":5353,"guest_addr":"10.0.2.100","guest_port":53}}"#,
    ];
    for (expected_id, request) in (1..).zip(requests) {
        let Ok(Request::AddHostfwd(request)) = parse(request) else {
            panic!("did not parse");
        };
        assert_eq!(table.insert(request.resolve(GUEST)), Ok(expected_id));
    }
    assert!(matches!(
        parse(br#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#),
        Ok(Request::RemoveHostfwd { id: 1 })
    ));
    assert!(table.remove(1).is_ok());
    let listed: Vec<Forward> = table.list().cloned().collect();
    assert_eq!(
        String::from_utf8_lossy(&list_reply(&listed)),
        r#"{"entries":[{"id":2,"proto":"udp","host_addr":"::","host_port":5353,"guest_addr":"10.0.2.100","guest_port":53}]}"#
    );
}

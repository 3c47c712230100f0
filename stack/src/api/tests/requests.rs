//! Requests: what parses, what is refused and with which text, the size limit, framing.

use super::*;

/// Each of `requests` parses to `expected`.
fn assert_parse_each(requests: &[&[u8]], expected: Result<Request, ApiError>) {
    for bytes in requests {
        assert_eq!(
            parse(bytes),
            expected,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// `request_complete` says `complete` for each of `requests`.
fn assert_complete_each(requests: &[&[u8]], complete: bool) {
    for bytes in requests {
        assert_eq!(
            request_complete(bytes),
            complete,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn not_json_cannot_parse() {
    let expected = br#"{"error":{"desc":"bad request: cannot parse JSON"}}"#;
    assert_eq!(error_reply(&parse_request(b"{").unwrap_err()), expected);
    assert_parse_each(
        &[
            b"",
            b" \n",
            b"hello",
            b"{execute:\"list_hostfwd\"}",
            b"{\"execute\":\"list_hostfwd\",}",
            b"{'execute':'list_hostfwd'}",
            b"{\"execute\":\"list_hostfwd\"",
            b"\xff\xfe",
            b"{\"execute\":\"\xff\"}",
            // Duplicate keys, at the top or deeper: the reference's parser refuses them.
            br#"{"execute":"list_hostfwd","execute":"list_hostfwd"}"#,
            br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","proto":"udp"}}"#,
        ],
        Err(ApiError::CannotParseJson),
    );
}

#[test]
fn json_that_is_not_an_object() {
    assert_refused(
        &[
            b"[]",
            b"1",
            b"\"list_hostfwd\"",
            b"null",
            b"true",
            b"[{\"execute\":\"list_hostfwd\"}]",
        ],
        "json_object() failed",
    );
}

#[test]
fn execute_missing_or_not_a_string() {
    assert_refused(
        &[
            b"{}",
            br#"{"arguments":{}}"#,
            br#"{"execute":1}"#,
            br#"{"execute":null}"#,
            br#"{"execute":["list_hostfwd"]}"#,
            br#"{"Execute":"list_hostfwd"}"#,
        ],
        "no execute found",
    );
}

#[test]
fn unknown_execute() {
    assert_refused(
        &[
            br#"{"execute":"add_hostfwds"}"#,
            br#"{"execute":"LIST_HOSTFWD"}"#,
            br#"{"execute":""}"#,
            br#"{"execute":"list_flow"}"#,
        ],
        "unknown execute",
    );
}

// Framing-related leniency.

#[test]
fn whitespace_newline_and_bom_around_the_request() {
    assert_parse_each(
        &[
            b"{\"execute\":\"list_hostfwd\"}\n",
            b"{\"execute\":\"list_hostfwd\"}\r\n",
            b"  \t\n{ \"execute\" : \"list_hostfwd\" }  \n\n",
            b"\xEF\xBB\xBF{\"execute\":\"list_hostfwd\"}",
        ],
        Ok(Request::ListHostfwd),
    );
}

#[test]
fn bytes_after_the_first_value_are_ignored() {
    // As in the reference, which parses the first value of what it read.
    assert_eq!(
        parse(b"{\"execute\":\"list_hostfwd\"}{\"execute\":\"x\"}"),
        Ok(Request::ListHostfwd)
    );
    assert_eq!(
        parse(b"{\"execute\":\"list_hostfwd\"} garbage"),
        Ok(Request::ListHostfwd)
    );
}

#[test]
fn size_limit_4095_ok_4096_too_large() {
    let request = br#"{"execute":"list_hostfwd"}"#;
    let mut bytes = request.to_vec();
    bytes.resize(MAX_REQUEST, b' ');
    assert_eq!(bytes.len(), 4095);
    assert_eq!(parse(&bytes), Ok(Request::ListHostfwd));
    assert!(request_complete(&bytes));

    bytes.push(b' ');
    assert_eq!(bytes.len(), 4096);
    assert_eq!(reply_to(&bytes), error_text("too large message"));
    assert!(request_complete(&bytes));

    // Too large wins over everything else, as the reference checks the length first.
    assert_eq!(parse(&[b'x'; 10_000]), Err(ApiError::TooLarge));
}

#[test]
fn request_complete_tells_when_to_answer() {
    assert_complete_each(
        &[
            b"",
            b"  \n",
            b"{",
            b"{\"execute\":\"list_",
            b"{\"execute\":\"list_hostfwd\"",
            b"[1,",
        ],
        false,
    );
    assert_complete_each(
        &[
            b"{\"execute\":\"list_hostfwd\"}",
            b"{\"execute\":\"list_hostfwd\"}\n",
            b"{}",
            b"[]",
            // Can never become JSON: answer "cannot parse JSON" at once.
            b"hello",
            b"{execute",
        ],
        true,
    );
}

// Requests that parse.

#[test]
fn list_get_stats_and_remove() {
    assert_eq!(
        parse(br#"{"execute":"list_hostfwd"}"#),
        Ok(Request::ListHostfwd)
    );
    // Extra members are ignored, as in the reference.
    assert_eq!(
        parse(br#"{"execute":"list_hostfwd","arguments":{"x":1},"id":"abc"}"#),
        Ok(Request::ListHostfwd)
    );
    assert_eq!(parse(br#"{"execute":"get_stats"}"#), Ok(Request::GetStats));
    assert_eq!(
        parse(br#"{"execute":"list_flows"}"#),
        Ok(Request::ListFlows)
    );
    assert_eq!(
        parse(br#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#),
        Ok(Request::RemoveHostfwd { id: 1 })
    );
    assert_eq!(
        parse(br#"{"execute":"remove_hostfwd","arguments":{"id":4294967296}}"#),
        Ok(Request::RemoveHostfwd { id: 1 << 32 })
    );
    assert_eq!(
        parse(br#"{"execute":"remove_hostfwd","arguments":{"id":7.0}}"#),
        Ok(Request::RemoveHostfwd { id: 7 })
    );
}

#[test]
fn add_hostfwd_full_request() {
    assert_eq!(
        added(
            r#"{"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}"#
        ),
        spec("0.0.0.0", 8080, "10.0.2.100", 80)
    );
    let udp = added(
        r#"{"proto":"udp","host_addr":"127.0.0.1","host_port":5353,"guest_addr":"10.0.2.15","guest_port":53}"#,
    );
    assert_eq!(udp.proto, ForwardProto::Udp);
    assert_eq!(udp.host_addr, IpAddr::from([127, 0, 0, 1]));
    assert_eq!(udp.guest_addr, IpAddr::from([10, 0, 2, 15]));
    assert_eq!((udp.host_port, udp.guest_port), (5353, 53));
}

#[test]
fn add_hostfwd_defaults_for_missing_empty_or_null_addresses() {
    let expected = spec("0.0.0.0", 8080, "10.0.2.100", 80);
    for arguments in [
        r#"{"proto":"tcp","host_port":8080,"guest_port":80}"#,
        r#"{"proto":"tcp","host_addr":"","host_port":8080,"guest_addr":"","guest_port":80}"#,
        r#"{"proto":"tcp","host_addr":null,"host_port":8080,"guest_addr":null,"guest_port":80}"#,
    ] {
        assert_eq!(added(arguments), expected, "{arguments}");
    }
    // The guest default is whatever the caller's network makes it.
    let Ok(Request::AddHostfwd(request)) = parse_request(
        br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_port":2}}"#,
    ) else {
        panic!("did not parse");
    };
    assert_eq!(
        request.resolve(Ipv4Addr::new(192, 168, 7, 100)),
        spec("0.0.0.0", 1, "192.168.7.100", 2)
    );
}

#[test]
fn add_hostfwd_ipv6_addresses() {
    assert_eq!(
        added(r#"{"proto":"tcp","host_addr":"::","host_port":8080,"guest_port":80}"#),
        spec("::", 8080, "10.0.2.100", 80)
    );
    assert_eq!(
        added(r#"{"proto":"tcp","host_addr":"::1","host_port":8080,"guest_port":80}"#),
        spec("::1", 8080, "10.0.2.100", 80)
    );
    assert_eq!(
        added(
            r#"{"proto":"tcp","host_addr":"::1","host_port":8080,"guest_addr":"fd00::100","guest_port":80}"#
        ),
        spec("::1", 8080, "fd00::100", 80)
    );
}

#[test]
fn add_hostfwd_bad_proto() {
    for arguments in [
        r#"{"host_port":8080,"guest_port":80}"#,
        r#"{"proto":"sctp","host_port":8080,"guest_port":80}"#,
        r#"{"proto":"TCP","host_port":8080,"guest_port":80}"#,
        r#"{"proto":"tcp4","host_port":8080,"guest_port":80}"#,
        r#"{"proto":"","host_port":8080,"guest_port":80}"#,
        r#"{"proto":6,"host_port":8080,"guest_port":80}"#,
        r#"{"proto":null,"host_port":8080,"guest_port":80}"#,
    ] {
        assert_eq!(add(arguments), Err(ApiError::BadProto), "{arguments}");
    }
    // No arguments at all, or arguments that are not an object: proto is the first miss.
    assert_refused(
        &[
            br#"{"execute":"add_hostfwd"}"#,
            br#"{"execute":"add_hostfwd","arguments":[]}"#,
            br#"{"execute":"add_hostfwd","arguments":"tcp"}"#,
        ],
        "add_hostfwd: bad arguments.proto",
    );
}

#[test]
fn add_hostfwd_bad_host_addr() {
    for host_addr in [
        r#""localhost""#,
        r#""1.2.3""#,
        r#""1.2.3.256""#,
        r#""01.2.3.4""#,
        r#"" 127.0.0.1""#,
        r#""127.0.0.1:80""#,
        r#""[::1]""#,
        r#""fe80::1%eth0""#,
        "1",
        "[]",
        "{}",
        "true",
    ] {
        let arguments = format!(
            r#"{{"proto":"tcp","host_addr":{host_addr},"host_port":8080,"guest_port":80}}"#
        );
        assert_eq!(add(&arguments), Err(ApiError::BadHostAddr), "{arguments}");
    }
}

#[test]
fn add_hostfwd_bad_ports() {
    for port in [
        "0",
        "65536",
        "-1",
        "80.5",
        r#""80""#,
        "null",
        "true",
        "[80]",
        "1e10",
        "18446744073709551616",
    ] {
        let arguments = format!(r#"{{"proto":"tcp","host_port":{port},"guest_port":80}}"#);
        assert_eq!(add(&arguments), Err(ApiError::BadHostPort), "{arguments}");
        let arguments = format!(r#"{{"proto":"tcp","host_port":80,"guest_port":{port}}}"#);
        assert_eq!(add(&arguments), Err(ApiError::BadGuestPort), "{arguments}");
    }
    assert_eq!(
        add(r#"{"proto":"tcp","guest_port":80}"#),
        Err(ApiError::BadHostPort)
    );
    assert_eq!(
        add(r#"{"proto":"tcp","host_port":80}"#),
        Err(ApiError::BadGuestPort)
    );
    assert_eq!(
        reply_to(br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":0,"guest_port":80}}"#),
        error_text("add_hostfwd: bad arguments.host_port")
    );
    assert_eq!(
        reply_to(br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":80,"guest_port":65536}}"#),
        error_text("add_hostfwd: bad arguments.guest_port")
    );
}

#[test]
fn add_hostfwd_port_bounds_and_integral_floats() {
    let ports = |arguments: &str| {
        let spec = added(arguments);
        (spec.host_port, spec.guest_port)
    };
    assert_eq!(
        ports(r#"{"proto":"tcp","host_port":1,"guest_port":65535}"#),
        (1, 65535)
    );
    assert_eq!(
        ports(r#"{"proto":"tcp","host_port":65535,"guest_port":1}"#),
        (65535, 1)
    );
    assert_eq!(
        ports(r#"{"proto":"tcp","host_port":8080.0,"guest_port":8e1}"#),
        (8080, 80)
    );
}

#[test]
fn add_hostfwd_bad_guest_addr() {
    for guest_addr in [
        r#""guest""#,
        r#""10.0.2""#,
        r#""10.0.2.100/24""#,
        "100",
        "false",
    ] {
        let arguments = format!(
            r#"{{"proto":"udp","host_port":8080,"guest_addr":{guest_addr},"guest_port":80}}"#
        );
        assert_eq!(add(&arguments), Err(ApiError::BadGuestAddr), "{arguments}");
    }
    assert_eq!(
        reply_to(br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_addr":"x","guest_port":2}}"#),
        error_text("add_hostfwd: bad arguments.guest_addr")
    );
}

#[test]
fn add_hostfwd_reports_the_first_bad_argument_in_reference_order() {
    // Everything wrong: proto is reported.
    assert_eq!(
        add(r#"{"proto":"x","host_addr":"x","host_port":0,"guest_addr":"x","guest_port":0}"#),
        Err(ApiError::BadProto)
    );
    assert_eq!(
        add(r#"{"proto":"tcp","host_addr":"x","host_port":0,"guest_addr":"x","guest_port":0}"#),
        Err(ApiError::BadHostAddr)
    );
    assert_eq!(
        add(r#"{"proto":"tcp","host_port":0,"guest_addr":"x","guest_port":0}"#),
        Err(ApiError::BadHostPort)
    );
    assert_eq!(
        add(r#"{"proto":"tcp","host_port":1,"guest_addr":"x","guest_port":0}"#),
        Err(ApiError::BadGuestAddr)
    );
    assert_eq!(
        add(r#"{"proto":"tcp","host_port":1,"guest_port":0}"#),
        Err(ApiError::BadGuestPort)
    );
}

#[test]
fn remove_hostfwd_bad_id() {
    assert_refused(
        &[
            br#"{"execute":"remove_hostfwd"}"#,
            br#"{"execute":"remove_hostfwd","arguments":{}}"#,
            br#"{"execute":"remove_hostfwd","arguments":[1]}"#,
            br#"{"execute":"remove_hostfwd","arguments":{"id":0}}"#,
            br#"{"execute":"remove_hostfwd","arguments":{"id":-1}}"#,
            br#"{"execute":"remove_hostfwd","arguments":{"id":1.5}}"#,
            br#"{"execute":"remove_hostfwd","arguments":{"id":"1"}}"#,
            br#"{"execute":"remove_hostfwd","arguments":{"id":null}}"#,
            br#"{"execute":"remove_hostfwd","id":1}"#,
        ],
        "remove_hostfwd: bad arguments.id",
    );
}

// Replies, byte for byte.

/// What a client writes with `to_json` parses back to the same request, and looks as
/// slirp4netns's documentation writes it.
#[test]
fn requests_round_trip_through_the_wire_format() {
    let forward = |host_addr: Option<&str>, guest_addr: Option<&str>| ForwardRequest {
        proto: ForwardProto::Udp,
        host_addr: host_addr.map(|a| a.parse().expect("test address")),
        host_port: 5353,
        guest_addr: guest_addr.map(|a| a.parse().expect("test address")),
        guest_port: 53,
    };
    let requests = [
        Request::AddHostfwd(forward(None, None)),
        Request::AddHostfwd(forward(Some("127.0.0.1"), Some("10.0.2.15"))),
        Request::AddHostfwd(forward(Some("::1"), Some("fd00::100"))),
        Request::ListHostfwd,
        Request::RemoveHostfwd { id: 1 << 40 },
        Request::GetStats,
        Request::ListFlows,
    ];
    for request in requests {
        let bytes = request.to_json();
        assert_eq!(
            parse(&bytes),
            Ok(request.clone()),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
    assert_eq!(
        String::from_utf8(Request::AddHostfwd(forward(Some("0.0.0.0"), None)).to_json()).unwrap(),
        r#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"0.0.0.0","host_port":5353,"guest_port":53}}"#
    );
    assert_eq!(
        String::from_utf8(Request::RemoveHostfwd { id: 3 }.to_json()).unwrap(),
        r#"{"execute":"remove_hostfwd","arguments":{"id":3}}"#
    );
}

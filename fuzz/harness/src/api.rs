//! Target `api`: control-socket requests into [`rslirp_stack::Stack::handle_api_request`].
//!
//! Input: a flags byte (bit 0: IPv6 enabled; bit 1: room for only 2 forwards), then steps:
//! a raw request, an `add_hostfwd` built from fields, `remove_hostfwd`, host listen
//! failures, and traffic on the forwards, so that add/remove sequences meet live flows.
//! Every reply must be one JSON object ([`Sim::api`]); `request_complete` (which the socket
//! side calls on partial requests) must not panic either.

use crate::frames::{add_forward_request, live_forward};
use crate::sim::Sim;
use crate::{clock_step, run_steps, Encoder, Input, Step, HOST_ERRORS};
use rslirp_stack::api::request_complete;
use rslirp_stack::Config;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const MAX_STEPS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `bytes`: a request as the client wrote it.
    Request,
    /// fields of [`add_forward_request`].
    Add,
    /// id byte.
    Remove,
    List,
    Stats,
    /// error: the next listen/bind fails (port taken, no permission).
    FailNextListen,
    /// forward, port u16, `bytes`: a client connects to (TCP) or sends to (UDP) a forward.
    Client,
    /// forward id byte: a readiness event for any forward id, live or not.
    ForwardEvent,
    /// clock step.
    Advance,
}

impl Step for Op {
    const ALL: &'static [Op] = &[
        Op::Request,
        Op::Add,
        Op::Remove,
        Op::List,
        Op::Stats,
        Op::FailNextListen,
        Op::Client,
        Op::ForwardEvent,
        Op::Advance,
    ];
}

pub fn run(data: &[u8]) {
    let (flags, mut input) = Input::with_flags(data);
    let mut config = Config {
        enable_ipv6: flags & 1 != 0,
        ..Config::default()
    };
    if flags & 2 != 0 {
        config.limits.max_forwards = 2;
    }
    let mut sim = Sim::new(config);
    run_steps(&mut input, MAX_STEPS, |input, op| {
        match op {
            Op::Request => {
                let request = input.bytes();
                request_complete(request);
                sim.api(request);
            }
            Op::Add => {
                let request = add_forward_request(input);
                sim.api(request.as_bytes());
            }
            Op::Remove => {
                let id = input.byte();
                let request =
                    format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#);
                sim.api(request.as_bytes());
            }
            Op::List => {
                sim.api(br#"{"execute":"list_hostfwd"}"#);
            }
            Op::Stats => {
                sim.api(br#"{"execute":"get_stats"}"#);
            }
            Op::FailNextListen => {
                let error = input.pick(&HOST_ERRORS);
                sim.host.fail_next_listen(error);
            }
            Op::Client => {
                let udp = input.bool();
                let pick = input.byte();
                let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), input.u16());
                let payload = input.bytes();
                if let Some(forward) = live_forward(&sim, pick, udp) {
                    if udp {
                        sim.host.client_sends(forward, client, payload);
                    } else {
                        sim.host.client_connects(forward, client);
                    }
                    sim.forward_event(forward);
                }
            }
            Op::ForwardEvent => {
                // A late or spurious event, for a forward removed or never added: the
                // stack must not touch a listener it closed (SimHost panics if it does).
                let forward = u64::from(input.byte());
                sim.forward_event(forward);
            }
            Op::Advance => {
                let by = clock_step(input);
                sim.advance(by);
            }
        }
        sim.check_limits();
        sim.check_no_leaks();
    });
}

pub fn seeds() -> crate::Seeds {
    let request = |e: &mut Encoder, text: &str| {
        e.step(Op::Request).bytes(text.as_bytes());
    };
    let mut seeds = Vec::new();

    // The reference's own examples, in its exact spelling.
    let mut e = Encoder::with_flags(0);
    request(
        &mut e,
        r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8080, "guest_addr": "10.0.2.100", "guest_port": 80}}"#,
    );
    request(&mut e, r#"{"execute": "list_hostfwd"}"#);
    request(
        &mut e,
        r#"{"execute": "remove_hostfwd", "arguments": {"id": 1}}"#,
    );
    request(&mut e, r#"{"execute": "get_stats"}"#);
    seeds.push(("reference-examples", e.finish()));

    // Add, traffic, remove, add again (ids are not reused), with IPv6.
    let mut e = Encoder::with_flags(1);
    e.step(Op::Add).fields(&[0, 0, 2, 3, 0]);
    e.step(Op::Client).fields(&[0, 0]).u16(50000).bytes(b"");
    e.step(Op::Add).fields(&[1, 1, 0, 0, 2]);
    e.step(Op::Client)
        .fields(&[1, 0])
        .u16(50001)
        .bytes(b"query");
    e.step(Op::Remove).byte(1);
    e.step(Op::ForwardEvent).byte(1);
    e.step(Op::FailNextListen).byte(0);
    e.step(Op::Add).fields(&[0, 0, 0, 0, 0]);
    e.step(Op::List);
    e.step(Op::Stats);
    seeds.push(("add-remove-v6", e.finish()));

    // Requests the reference refuses, one per error text.
    let mut e = Encoder::with_flags(2);
    for text in [
        "",
        "{",
        "[]",
        r#"{"execute": 1}"#,
        r#"{"execute": "nope"}"#,
        r#"{"execute": "add_hostfwd"}"#,
        r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "x"}}"#,
        r#"{"execute": "add_hostfwd", "arguments": {"proto": "udp", "host_port": 8080.0, "guest_port": 70000}}"#,
        r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_port": 1, "guest_addr": "fd00::1", "guest_port": 1}}"#,
        r#"{"execute": "remove_hostfwd", "arguments": {"id": -1}}"#,
        r#"{"execute": "remove_hostfwd", "arguments": {"id": 7}}"#,
        "\u{feff}{\"execute\": \"list_hostfwd\", \"execute\": \"get_stats\"}",
        r#"{"execute": "list_hostfwd"} trailing garbage"#,
    ] {
        request(&mut e, text);
    }
    seeds.push(("errors", e.finish()));

    seeds
}

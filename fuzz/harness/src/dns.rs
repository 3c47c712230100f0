//! Target `dns`: the DNS forwarder. Guest queries (any bytes) go as UDP to 10.0.2.3:53 or
//! [fd00::3]:53 through the stack to the upstream set with `set_dns_upstream`; any
//! datagrams come back from the upstream, errors too, while the upstream changes and the
//! clock runs past the 10 s DNS flow timeout.
//!
//! Input: a flags byte (bit 0: IPv6; bit 1: `--disable-dns`), then steps. Besides the
//! frame checks of [`Sim`], every answer the guest gets from port 53 must come from the
//! DNS address it asked.

use crate::sim::Sim;
use crate::{clock_step, run_steps, Encoder, Input, Step, HOST_ERRORS};
use rslirp_stack::config::IPV6_DNS;
use rslirp_stack::testing::frames::Guest;
use rslirp_stack::testing::SocketKind;
use rslirp_stack::testing::{try_parse, Parsed};
use rslirp_stack::{Config, Duration};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

const MAX_STEPS: usize = 300;

const UPSTREAMS: [Option<IpAddr>; 5] = [
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53))),
    Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53))),
    Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    None,
    Some(IpAddr::V6(Ipv6Addr::new(
        0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53,
    ))),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// family, source port, `bytes`: a query from the guest.
    Query,
    /// socket, `bytes`: a datagram from the upstream.
    Reply,
    /// socket, error: the upstream socket fails (e.g. ICMP port unreachable).
    Error,
    /// upstream pick: the host's resolv.conf changed.
    SetUpstream,
    /// clock step.
    Advance,
}

impl Step for Op {
    const ALL: &'static [Op] = &[
        Op::Query,
        Op::Reply,
        Op::Error,
        Op::SetUpstream,
        Op::Advance,
    ];
}

pub fn run(data: &[u8]) {
    let (flags, mut input) = Input::with_flags(data);
    let config = Config {
        enable_ipv6: flags & 1 != 0,
        disable_dns: flags & 2 != 0,
        ..Config::default()
    };
    let guest = Guest::new(&config.network);
    let dns = config.network.dns();
    let mut sim = Sim::new(config);
    sim.keep_frames = true;
    sim.stack.set_dns_upstream(UPSTREAMS[0]);
    run_steps(&mut input, MAX_STEPS, |input, op| {
        match op {
            Op::Query => {
                let ipv6 = input.bool();
                // A few ports, so that queries share flows, or any.
                let port = match input.byte() {
                    byte @ 0..=249 => 40000 + u16::from(byte % 4),
                    _ => input.u16(),
                };
                let query = input.bytes();
                let frame = if ipv6 {
                    udp6_query(&guest, port, query)
                } else {
                    guest.udp(port, SocketAddrV4::new(dns, 53), query)
                };
                sim.guest_sends(&frame);
            }
            Op::Reply => {
                let pick = input.byte();
                let reply = input.bytes();
                if let Some(flow) = sim.socket(pick, |s| s.kind == SocketKind::Udp) {
                    let event = sim.host.deliver_datagram(flow, reply);
                    sim.host_event(event);
                }
            }
            Op::Error => {
                let pick = input.byte();
                let error = input.pick(&HOST_ERRORS);
                if let Some(flow) = sim.socket(pick, |s| s.kind == SocketKind::Udp) {
                    let event = sim.host.set_error(flow, error);
                    sim.host_event(event);
                }
            }
            Op::SetUpstream => {
                let upstream = input.pick(&UPSTREAMS);
                sim.stack.set_dns_upstream(upstream);
            }
            Op::Advance => {
                let by = clock_step(input);
                sim.advance(by);
            }
        }
        for frame in sim.frames.drain(..) {
            check_answer(&frame, dns);
        }
        sim.check_no_leaks();
    });
    sim.advance(Duration::from_secs(30));
}

fn udp6_query(guest: &Guest, port: u16, query: &[u8]) -> Vec<u8> {
    guest.udp6(port, SocketAddrV6::new(IPV6_DNS, 53, 0, 0), query)
}

/// Frames the guest gets from port 53 come from the DNS address of their family.
fn check_answer(frame: &[u8], dns: Ipv4Addr) {
    if let Ok(Parsed::Udp { src, .. }) = try_parse(frame) {
        if src.port() == 53 {
            let expected = match src.ip() {
                IpAddr::V4(_) => IpAddr::V4(dns),
                IpAddr::V6(_) => IpAddr::V6(IPV6_DNS),
            };
            assert_eq!(src.ip(), expected, "a DNS answer from another address");
        }
    }
}

pub fn seeds() -> crate::Seeds {
    // A query for example.com A, as glibc sends it.
    const QUERY: &[u8] =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01";
    const ANSWER: &[u8] = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\x5d\xb8\xd7\x0e";
    let mut seeds = Vec::new();

    let mut e = Encoder::with_flags(0);
    e.step(Op::Query).fields(&[0, 0]).bytes(QUERY);
    e.step(Op::Reply).byte(0).bytes(ANSWER);
    e.step(Op::Query).fields(&[0, 1]).bytes(QUERY);
    e.step(Op::Error).fields(&[0, 0]);
    e.step(Op::Advance).byte(7);
    e.step(Op::Query).fields(&[0, 0]).bytes(QUERY);
    seeds.push(("query-answer", e.finish()));

    let mut e = Encoder::with_flags(1);
    e.step(Op::SetUpstream).byte(2);
    e.step(Op::Query).fields(&[1, 0]).bytes(QUERY);
    e.step(Op::Reply).byte(0).bytes(ANSWER);
    e.step(Op::SetUpstream).byte(3);
    e.step(Op::Query).fields(&[1, 2]).bytes(QUERY);
    e.step(Op::Query).fields(&[0, 2]).bytes(QUERY);
    seeds.push(("ipv6-upstream-change", e.finish()));

    seeds
}

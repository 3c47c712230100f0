//! IPv6 in the guest: its SLAAC address, and a server that tells each client the address
//! it sees (the e2e tests of `-6` and `--cidr6`).

use super::dns::{Dnsmasq, Record};
use super::net::{self, Pattern, Server};
use super::process::wait_for;
use super::{Env, STEP_TIMEOUT, TAP};
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpStream};
use std::time::Duration;

/// From rslirp's start: its first advertisement comes after 1 s, then the guest's duplicate
/// address detection takes about another second.
pub const SLAAC_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn v6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
}

/// The tap's global IPv6 addresses as `ip -6 -o addr` lists them, one a line, e.g.
/// `2: tap0    inet6 fd00::8c3b:1ff:fe2a:9d4e/64 scope global dynamic mngtmpaddr \
/// valid_lft 86398sec preferred_lft 14398sec`.
pub fn guest_global_addrs(env: &Env) -> String {
    env.guest_ok(&[
        "ip", "-6", "-o", "addr", "show", "dev", TAP, "scope", "global",
    ])
}

/// The global /64 addresses in [`guest_global_addrs`] output, with whether they are
/// tentative (duplicate address detection not finished).
pub fn listed_addrs(ip_output: &str) -> Vec<(Ipv6Addr, bool)> {
    ip_output
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|word| *word == "inet6")?;
            let (addr, prefix_len) = words.get(at + 1)?.split_once('/')?;
            let addr: Ipv6Addr = addr.parse().ok()?;
            (prefix_len == "64").then_some((addr, line.contains("tentative")))
        })
        .collect()
}

/// Waits until the guest has a usable (not tentative) SLAAC address in `prefix` (its first
/// four segments) and a default route via fe80::2 learnt from an advertisement; returns
/// the address.
pub fn await_slaac(env: &Env, prefix: [u16; 4]) -> Ipv6Addr {
    let what = format!(
        "a SLAAC address in {}::/64 on the tap",
        Ipv6Addr::from([prefix[0], prefix[1], prefix[2], prefix[3], 0, 0, 0, 0],)
    );
    let addr = wait_for(&what, SLAAC_TIMEOUT, || {
        listed_addrs(&guest_global_addrs(env))
            .into_iter()
            .find(|(addr, tentative)| !tentative && addr.segments()[..4] == prefix)
            .map(|(addr, _)| addr)
    });
    let route = wait_for("a default route via fe80::2", SLAAC_TIMEOUT, || {
        let routes = env.guest_ok(&["ip", "-6", "route", "show", "default"]);
        routes
            .lines()
            .find(|line| line.starts_with(&format!("default via fe80::2 dev {TAP} ")))
            .map(str::to_string)
    });
    assert!(
        route.contains("proto ra"),
        "learnt from an advertisement: {route}"
    );
    addr
}

/// A TCP server in the guest on [::]:`port`: to each client it first writes
/// `peer <address it sees>\n`, then echoes everything until EOF.
pub fn guest_peer_echo_server(env: &Env, port: u16) -> Server {
    let listener = env.guest_tcp_listener_at((Ipv6Addr::UNSPECIFIED, port));
    net::tcp_server(listener, |mut stream| {
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        if writeln!(stream, "peer {}", peer.ip()).is_ok() {
            net::echo(stream);
        }
    })
}

/// A client in the host namespace sends 100,000 bytes to `to` (a forward to a
/// [`guest_peer_echo_server`]) and checks what comes back: the server's `peer` line naming
/// `expected_peer` (the address the guest sees the client as), then the same bytes.
pub fn assert_forward_echo(env: &Env, to: SocketAddr, expected_peer: Ipv6Addr, seed: u64) {
    let payload = Pattern::bytes(seed, 100_000);
    let sent = payload.clone();
    let reply = env
        .in_host(
            "host client of the forward",
            move || -> io::Result<Vec<u8>> {
                let stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
                net::set_timeouts(&stream);
                net::exchange(&stream, &sent)
            },
        )
        .wait(STEP_TIMEOUT)
        .unwrap_or_else(|e| panic!("through the forward at {to}: {e}"));
    let expected_head = format!("peer {expected_peer}\n");
    assert!(
        reply.starts_with(expected_head.as_bytes()),
        "the guest must see the loopback client as {expected_peer}; it said {:?}",
        String::from_utf8_lossy(&reply[..reply.len().min(60)])
    );
    assert_eq!(
        net::digest(&reply[expected_head.len()..]),
        net::digest(&payload),
        "data both ways through the forward"
    );
}

/// DNS through rslirp's IPv6 forwarder at `dns`: the test's DNS server starts with one A
/// record, `name` → `address`, then rslirp by `start`; the guest's UDP query for `name`
/// (ids from `first_id`) must get `address` back. Returns the server (to ask what it saw)
/// and what `start` returned (rslirp, kept running).
///
/// The server is a dnsmasq on the host namespace's 127.0.0.1, which the test's resolv.conf
/// names (see common::resolv): only it can answer, and nothing leaves the machine.
pub fn assert_dns_via_forwarder<R>(
    env: &Env,
    start: impl FnOnce(&Env) -> R,
    dns: Ipv6Addr,
    name: &'static str,
    address: Ipv4Addr,
    first_id: u16,
) -> (Dnsmasq, R) {
    let server = Dnsmasq::start(env, Ipv4Addr::LOCALHOST, &[Record::A(name, address)]);
    let started = start(env);
    assert_eq!(
        env.guest_dns_a_retried(dns, name, first_id),
        [address],
        "UDP answer from the test's server via {dns}"
    );
    (server, started)
}

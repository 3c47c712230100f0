//! End-to-end: IPv6 with `-c -6`. The guest autoconfigures from rslirp's router
//! advertisements (an fd00::/64 SLAAC address, a default route via fe80::2), pings the
//! gateway fd00::2, reaches the host namespace's [::1] through it over TCP and UDP, asks the
//! test's DNS server through fd00::3, and serves a host client through an IPv6 port forward.

#[macro_use]
mod common;

use common::api::{id_reply, Api};
use common::dns::{self, TYPE_A};
use common::ipv6::{
    assert_dns_via_forwarder, assert_forward_echo, await_slaac, guest_global_addrs,
    guest_peer_echo_server, v6,
};
use common::net::{self, Server};
use common::{Env, Mode, Rslirp, STEP_TIMEOUT};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::mpsc;
use std::time::Duration;

both_modes!(
    guest_autoconfigures_address_and_default_route,
    ping_gateway,
    tcp_via_gateway_reaches_host_loopback,
    udp_echo_via_gateway_to_host_loopback,
    dns_via_fd00_3,
    port_forward_to_the_guest_ipv6_address,
    outbound_addr6_binds_host_loopback_traffic_too,
);

const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const DNS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// UDP payload sizes up to the largest that fits a 1500-byte MTU behind 48 header bytes.
const UDP_SIZES: [usize; 4] = [1, 100, 1400, 1452];

/// rslirp with `-c -6`, and the guest's SLAAC address once it is usable.
fn start_with_ipv6(env: &Env) -> (Rslirp, Ipv6Addr) {
    let rslirp = env.rslirp().arg("-6").start();
    let addr = await_slaac(env, [0xfd00, 0, 0, 0]);
    (rslirp, addr)
}

fn guest_autoconfigures_address_and_default_route(mode: Mode) {
    let env = Env::new(mode);
    let (_rslirp, addr) = start_with_ipv6(&env);
    assert!(
        !addr.is_unspecified() && addr != GATEWAY6 && addr != DNS6,
        "a guest address of its own: {addr}"
    );
    // The prefix's lifetimes (1 day valid, 4 h preferred), a few seconds used up.
    let addrs = guest_global_addrs(&env);
    let line = addrs
        .lines()
        .find(|line| line.contains(&format!(" {addr}/64 ")))
        .unwrap_or_else(|| panic!("{addr} not listed: {addrs}"));
    let lifetime = |name: &str| -> u32 {
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .iter()
            .position(|word| *word == name)
            .and_then(|at| words.get(at + 1)?.strip_suffix("sec")?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    assert!(
        (86_300..=86_400).contains(&lifetime("valid_lft")),
        "valid lifetime from the advertised prefix: {line}"
    );
    assert!(
        (14_300..=14_400).contains(&lifetime("preferred_lft")),
        "preferred lifetime from the advertised prefix: {line}"
    );
}

fn ping_gateway(mode: Mode) {
    let env = Env::new(mode);
    let (_rslirp, _) = start_with_ipv6(&env);
    let out = env.guest_ok(&["ping", "-6", "-c", "3", "-W", "2", &GATEWAY6.to_string()]);
    assert!(
        out.contains("3 packets transmitted, 3 received"),
        "every ping answered: {out}"
    );
}

/// A TCP echo server on [::1] in the host namespace that reports each client's address.
fn host_loopback6_echo_server(env: &Env) -> (Server, mpsc::Receiver<SocketAddr>) {
    let listener = env.host_tcp_listener(Ipv6Addr::LOCALHOST);
    let (peers, peers_seen) = mpsc::channel();
    let server = net::tcp_server(listener, move |stream| {
        if let Ok(peer) = stream.peer_addr() {
            let _ = peers.send(peer);
        }
        net::echo(stream);
    });
    (server, peers_seen)
}

fn tcp_via_gateway_reaches_host_loopback(mode: Mode) {
    let env = Env::new(mode);
    let (_rslirp, _) = start_with_ipv6(&env);
    let (server, peers_seen) = host_loopback6_echo_server(&env);
    env.assert_guest_echo(v6(GATEWAY6, server.port()), CONNECT_TIMEOUT, 6, 1_000_000);
    let peer = peers_seen
        .recv_timeout(STEP_TIMEOUT)
        .expect("the server saw a connection");
    assert_eq!(
        peer.ip(),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        "rslirp connects from host loopback"
    );
}

/// `--outbound-addr6` as slirp4netns: host sockets are bound to it whatever the
/// destination, host loopback included; a server on [::1] sees it as the peer (TCP and UDP).
fn outbound_addr6_binds_host_loopback_traffic_too(mode: Mode) {
    let outbound: Ipv6Addr = "fd99::7".parse().unwrap();
    let env = Env::new(mode);
    env.host
        .ip(&["-6", "addr", "add", "fd99::7/64", "dev", "d0", "nodad"]);
    let rslirp = env
        .rslirp()
        .arg("-6")
        .arg("--outbound-addr6=fd99::7")
        .start();
    let _ = await_slaac(&env, [0xfd00, 0, 0, 0]);
    let (server, peers_seen) = host_loopback6_echo_server(&env);
    let to = v6(GATEWAY6, server.port());
    let stream = env
        .guest_connect(to, CONNECT_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    let reply = net::exchange(&stream, b"hello").expect("echo over IPv6");
    assert_eq!(reply, b"hello");
    let peer = peers_seen
        .recv_timeout(STEP_TIMEOUT)
        .expect("the server saw a connection");
    assert_eq!(peer.ip(), IpAddr::V6(outbound), "TCP from --outbound-addr6");

    assert_eq!(
        env.udp_peer_seen_by_host(Ipv6Addr::LOCALHOST, GATEWAY6),
        IpAddr::V6(outbound),
        "UDP from --outbound-addr6"
    );
    drop(rslirp);
}

fn udp_echo_via_gateway_to_host_loopback(mode: Mode) {
    let env = Env::new(mode);
    let (_rslirp, _) = start_with_ipv6(&env);
    let server = env.host_udp_echo_server(Ipv6Addr::LOCALHOST);
    let socket = env.guest_udp_socket_at((Ipv6Addr::UNSPECIFIED, 0));
    net::assert_udp_echoes(&socket, v6(GATEWAY6, server.port()), &UDP_SIZES);
}

fn dns_via_fd00_3(mode: Mode) {
    const NAME: &str = "over-ipv6.rslirp.test";
    const ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
    let env = Env::new(mode);
    let (server, _rslirp) =
        assert_dns_via_forwarder(&env, start_with_ipv6, DNS6, NAME, ADDRESS, 0x600);

    let to = v6(DNS6, 53);
    let mut stream = env
        .guest_connect(to, CONNECT_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    let answers = dns::tcp_exchange(&mut stream, &[dns::query(0x700, NAME, TYPE_A, None)])
        .unwrap_or_else(|e| panic!("DNS over TCP via {to}: {e}"));
    let answer = dns::parse(&answers[0]).expect("a DNS answer");
    assert_eq!(answer.a(), [ADDRESS], "TCP answer from the test's server");
    assert!(
        server.queries_for(NAME) >= 2,
        "the test's server answered both:\n{}",
        server.log()
    );
}

fn port_forward_to_the_guest_ipv6_address(mode: Mode) {
    const HOST_PORT: u16 = 8086;
    const GUEST_PORT: u16 = 80;
    let env = Env::new(mode);
    let api = Api::new(&env);
    let _rslirp = api.launch(&env).arg("-6").start();
    let guest_addr = await_slaac(&env, [0xfd00, 0, 0, 0]);
    let _server = guest_peer_echo_server(&env, GUEST_PORT);

    let add = format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"::1","host_port":{HOST_PORT},"guest_addr":"{guest_addr}","guest_port":{GUEST_PORT}}}}}"#
    );
    assert_eq!(api.request(&add), id_reply(1), "add_hostfwd {add}");

    assert_forward_echo(&env, v6(Ipv6Addr::LOCALHOST, HOST_PORT), GATEWAY6, 86);
}

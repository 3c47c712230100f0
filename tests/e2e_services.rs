//! End-to-end: the guest services and the options that shape them — DHCP (also with
//! `--cidr`), the DNS forwarder over UDP and TCP with a test DNS server (dnsmasq) on the
//! host namespace's loopback, resolv.conf changes without restart, `--disable-dns`,
//! `--outbound-addr` and `--macaddress`.
//!
//! No DNS query ever leaves the test's namespaces: the binary under test always sees a
//! resolv.conf of the test's own (see common::resolv), naming servers on the host
//! namespace's loopback.

#[macro_use]
mod common;

use common::dhcp::{create_tap_up, udhcpc, Lease};
use common::dns::{self, Answer, Dnsmasq, Record, DNS, TYPE_A, TYPE_TXT};
use common::net;
use common::{assert_gateway_answers_ping, assert_traffic_works, Env, Mode, GATEWAY, TAP};
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::thread;
use std::time::Duration;

both_modes!(
    dhcp_default_network,
    dhcp_with_cidr,
    configure_with_cidr,
    dns_udp,
    dns_tcp_several_queries_per_connection,
    dns_large_answers,
    dns_follows_resolv_conf_symlink_write_and_rename,
    dns_falls_back_to_the_next_nameserver,
    dns_follows_bind_mounted_resolv_conf_write,
    disable_dns_n3_goes_to_the_host_network,
    disable_dns_n3_is_forwarded_like_any_address,
    outbound_addr_address,
    outbound_addr_loopback,
    ttl_is_carried_to_the_host,
    outbound_addr_keeps_a_loopback_resolver_working,
    outbound_addr_interface,
    macaddress_sets_tap_mac,
);

/// A positive DNS answer must come well within this.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// A resolv.conf change must be in effect for new queries within this (acceptance list).
const SWITCH_WITHIN: Duration = Duration::from_secs(2);
/// How long a query that must not be answered is given.
const SILENCE: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const ONE: &str = "one.test";
const TWO: &str = "two.test";
/// TXT records of 250 bytes each: 5 make an answer of about 1.3 kB (more than 512 bytes,
/// but one unfragmented datagram at MTU 1500), 40 one of about 10 kB (TCP only).
const BIG: &str = "big.test";
const BIG_RECORDS: usize = 5;
const HUGE: &str = "huge.test";
const HUGE_RECORDS: usize = 40;
/// Answers of the first server (resolv.conf's default 127.0.0.1) and of the second one.
const FIRST_ONE: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 1);
const FIRST_TWO: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 2);
const SECOND_ONE: Ipv4Addr = Ipv4Addr::new(10, 2, 2, 2);
const SECOND_SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

// ---------------------------------------------------------------------------------------
// DHCP

/// The lease is usable: with its address on the tap, the router answers ping.
fn assert_lease_works(env: &Env, lease: &Lease) {
    let cidr = format!("{}/{}", lease.get("ip"), lease.prefix_len());
    env.guest_ok(&["ip", "addr", "add", &cidr, "dev", TAP]);
    env.guest_ok(&["ping", "-c", "1", "-W", "2", lease.get("router")]);
}

/// rslirp without -c, with `args`, and the tap up without an address: udhcpc's lease (the
/// MTU option asked for too) has `expected` and works.
fn assert_dhcp_lease(mode: Mode, args: &[&str], expected: &[(&str, &str)]) {
    let env = Env::new(mode);
    create_tap_up(&env);
    let mut launch = env.rslirp().no_configure();
    for arg in args {
        launch = launch.arg(arg);
    }
    let _rslirp = launch.start();
    let lease = udhcpc(&env, &["-O", "mtu"]);
    lease.assert(expected);
    assert_lease_works(&env, &lease);
}

fn dhcp_default_network(mode: Mode) {
    let expected = [
        ("ip", "10.0.2.15"),
        ("subnet", "255.255.255.0"),
        ("router", "10.0.2.2"),
        ("dns", "10.0.2.3"),
        ("serverid", "10.0.2.2"),
        ("mtu", "1400"),
        ("lease", "86400"),
    ];
    assert_dhcp_lease(mode, &["--mtu=1400"], &expected);
}

fn dhcp_with_cidr(mode: Mode) {
    let expected = [
        ("ip", "10.0.135.143"),
        ("subnet", "255.255.255.128"),
        ("router", "10.0.135.130"),
        ("dns", "10.0.135.131"),
        ("mtu", "1500"),
    ];
    assert_dhcp_lease(mode, &["--cidr=10.0.135.128/25"], &expected);
}

/// `-c --cidr`: guest N+100, default route via N+2, and the DNS forwarder at N+3.
fn configure_with_cidr(mode: Mode) {
    let env = Env::new(mode);
    let _server = first_server(&env);
    let _rslirp = env.rslirp().arg("--cidr").arg("10.0.135.128/25").start();
    env.assert_guest_configured("10.0.135.228/25", Ipv4Addr::new(10, 0, 135, 130));
    env.guest_ok(&["ping", "-c", "1", "-W", "2", "10.0.135.130"]);
    let dns = Ipv4Addr::new(10, 0, 135, 131);
    let answer = guest_udp_query(&env, dns, 7, ONE, TYPE_A);
    assert_eq!(answer.a(), [FIRST_ONE], "{ONE} via {dns}");
}

// ---------------------------------------------------------------------------------------
// DNS

/// 250 bytes of text, different for each record (letters and digits only: dnsmasq's
/// command line gives commas and quotes a meaning).
fn txt_text(name: &str, i: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut text = format!("{}{i:03}", name.split('.').next().unwrap_or(name));
    text.extend((0..250 - text.len()).map(|j| char::from(ALPHABET[(i * 7 + j) % ALPHABET.len()])));
    text
}

fn txt_texts(name: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| txt_text(name, i)).collect()
}

/// The server resolv.conf names by default (127.0.0.1 of the host namespace).
fn first_server(env: &Env) -> Dnsmasq {
    let mut records = vec![Record::A(ONE, FIRST_ONE), Record::A(TWO, FIRST_TWO)];
    for (name, count) in [(BIG, BIG_RECORDS), (HUGE, HUGE_RECORDS)] {
        records.extend(
            txt_texts(name, count)
                .into_iter()
                .map(|t| Record::Txt(name, t)),
        );
    }
    Dnsmasq::start(env, Ipv4Addr::LOCALHOST, &records)
}

/// Another server, on 127.0.0.2, with another answer for ONE.
fn second_server(env: &Env) -> Dnsmasq {
    dns::add_loopback_addr(env, SECOND_SERVER);
    Dnsmasq::start(env, SECOND_SERVER, &[Record::A(ONE, SECOND_ONE)])
}

/// A UDP query from the guest that must be answered, with its id and without error.
fn guest_udp_query(env: &Env, to: Ipv4Addr, id: u16, name: &str, qtype: u16) -> Answer {
    let answer = env
        .guest_dns_udp(to, dns::query(id, name, qtype, None), ANSWER_TIMEOUT)
        .unwrap_or_else(|e| panic!("UDP query for {name} to {to}: {e}"));
    assert_eq!((answer.id, answer.rcode), (id, 0), "answer for {name}");
    answer
}

/// Queries over one TCP connection from the guest to `to`:53, all sent before any answer
/// is read; checks the ids and returns the answers.
fn guest_tcp_queries(env: &Env, to: Ipv4Addr, queries: &[(u16, &str, u16)]) -> Vec<Answer> {
    let mut stream = env
        .guest_connect(SocketAddrV4::new(to, 53), CONNECT_TIMEOUT)
        .unwrap_or_else(|e| panic!("TCP connect to {to}:53: {e}"));
    guest_tcp_exchange(&mut stream, queries)
}

fn guest_tcp_exchange(
    stream: &mut std::net::TcpStream,
    queries: &[(u16, &str, u16)],
) -> Vec<Answer> {
    let messages: Vec<Vec<u8>> = queries
        .iter()
        .map(|(id, name, qtype)| dns::query(*id, name, *qtype, None))
        .collect();
    let answers = dns::tcp_exchange(stream, &messages).expect("DNS over TCP");
    answers
        .iter()
        .zip(queries)
        .map(|(msg, (id, name, _))| {
            let answer = dns::parse(msg).unwrap_or_else(|e| panic!("answer for {name}: {e}"));
            assert_eq!((answer.id, answer.rcode), (*id, 0), "answer for {name}");
            answer
        })
        .collect()
}

fn sorted(mut texts: Vec<String>) -> Vec<String> {
    texts.sort();
    texts
}

/// A query to N+3 is answered by the server resolv.conf names; N+3 answers ping itself.
fn dns_udp(mode: Mode) {
    let env = Env::new(mode);
    let server = first_server(&env);
    let _rslirp = env.rslirp().start();
    let answer = guest_udp_query(&env, DNS, 0x1234, ONE, TYPE_A);
    assert_eq!(answer.a(), [FIRST_ONE]);
    assert_eq!(server.queries_for(ONE), 1, "the test server saw the query");
    env.guest_ok(&["ping", "-c", "1", "-W", "2", &DNS.to_string()]);
}

fn dns_tcp_several_queries_per_connection(mode: Mode) {
    let env = Env::new(mode);
    let _server = first_server(&env);
    let _rslirp = env.rslirp().start();
    let mut stream = env
        .guest_connect(SocketAddrV4::new(DNS, 53), CONNECT_TIMEOUT)
        .expect("TCP connect to the DNS forwarder");
    // Two queries sent together, then one more after their answers, on the same connection.
    let answers = guest_tcp_exchange(&mut stream, &[(1, ONE, TYPE_A), (2, TWO, TYPE_A)]);
    assert_eq!(answers[0].a(), [FIRST_ONE]);
    assert_eq!(answers[1].a(), [FIRST_TWO]);
    let answers = guest_tcp_exchange(&mut stream, &[(3, ONE, TYPE_A)]);
    assert_eq!(answers[0].a(), [FIRST_ONE]);
}

/// An answer larger than 512 bytes: over plain UDP it comes truncated (TC, the client's cue
/// to use TCP); over UDP with EDNS0 and over TCP it arrives complete, also at 10 kB.
fn dns_large_answers(mode: Mode) {
    let env = Env::new(mode);
    let _server = first_server(&env);
    let _rslirp = env.rslirp().start();
    let big = sorted(txt_texts(BIG, BIG_RECORDS));

    let plain = guest_udp_query(&env, DNS, 10, BIG, TYPE_TXT);
    assert!(plain.truncated && plain.len <= 512, "plain UDP: {plain:?}");

    let query = dns::query(11, BIG, TYPE_TXT, Some(4096));
    let edns = env
        .guest_dns_udp(DNS, query, ANSWER_TIMEOUT)
        .expect("UDP query with EDNS0");
    assert!(!edns.truncated && edns.len > 1000, "EDNS0 answer: {edns:?}");
    assert_eq!(sorted(edns.txt()), big, "EDNS0 answer over UDP");

    let answers = guest_tcp_queries(&env, DNS, &[(12, BIG, TYPE_TXT), (13, HUGE, TYPE_TXT)]);
    assert!(!answers[0].truncated && answers[0].len > 1000);
    assert_eq!(sorted(answers[0].txt()), big, "{BIG} over TCP");
    assert!(answers[1].len > 10_000, "{HUGE}: {} bytes", answers[1].len);
    assert_eq!(
        sorted(answers[1].txt()),
        sorted(txt_texts(HUGE, HUGE_RECORDS)),
        "{HUGE} over TCP"
    );
}

/// resolv.conf as a symlink (systemd-resolved style): rewritten in place to name another
/// server, then replaced by rename to name the first again. Each change must hold for new
/// queries within 2 s, without restarting rslirp.
fn dns_follows_resolv_conf_symlink_write_and_rename(mode: Mode) {
    let env = Env::new(mode);
    let _first = first_server(&env);
    let second = second_server(&env);
    let mut rslirp = env.rslirp().start();
    env.await_guest_dns_a(DNS, ONE, FIRST_ONE, ANSWER_TIMEOUT);

    env.write_resolv_conf_in_place(&format!("nameserver {SECOND_SERVER}\n"));
    env.await_guest_dns_a(DNS, ONE, SECOND_ONE, SWITCH_WITHIN);
    let over_tcp = guest_tcp_queries(&env, DNS, &[(1, ONE, TYPE_A)]);
    assert_eq!(over_tcp[0].a(), [SECOND_ONE], "TCP after the change");
    assert!(
        second.queries_for(ONE) >= 2,
        "the second server saw UDP and TCP"
    );

    env.replace_resolv_conf_by_rename("nameserver 127.0.0.1\n");
    env.await_guest_dns_a(DNS, ONE, FIRST_ONE, SWITCH_WITHIN);
    rslirp.assert_running();
}

/// resolv.conf bind-mounted (as container engines and `ip netns exec` do): an in-place
/// write through the mount must be noticed too.
fn dns_follows_bind_mounted_resolv_conf_write(mode: Mode) {
    let env = Env::new(mode);
    let _first = first_server(&env);
    let _second = second_server(&env);
    let _rslirp = env.rslirp().resolv_conf_bind_mounted().start();
    env.await_guest_dns_a(DNS, ONE, FIRST_ONE, ANSWER_TIMEOUT);
    env.write_resolv_conf_in_place(&format!("nameserver {SECOND_SERVER}\n"));
    env.await_guest_dns_a(DNS, ONE, SECOND_ONE, SWITCH_WITHIN);
    env.write_resolv_conf_in_place("nameserver 127.0.0.1\n");
    env.await_guest_dns_a(DNS, ONE, FIRST_ONE, SWITCH_WITHIN);
}

/// Beyond libslirp (which only ever asks the first nameserver): resolv.conf names a silent
/// server first (a UDP socket on 127.0.0.1:53 that never answers) and dnsmasq second. A
/// guest query is answered after about one retry timeout (1 s), and the next query goes
/// straight to the server that answered.
fn dns_falls_back_to_the_next_nameserver(mode: Mode) {
    let env = Env::new(mode);
    let silent = env.host_udp_socket_at((Ipv4Addr::LOCALHOST, 53));
    let server = second_server(&env);
    env.write_resolv_conf_in_place(&format!(
        "nameserver 127.0.0.1\nnameserver {SECOND_SERVER}\n"
    ));
    let _rslirp = env.rslirp().start();

    let started = std::time::Instant::now();
    let answer = guest_udp_query(&env, DNS, 0x0a01, ONE, TYPE_A);
    let first = started.elapsed();
    assert_eq!(answer.a(), [SECOND_ONE], "answered by the second server");
    assert!(
        first >= Duration::from_millis(800) && first < Duration::from_secs(3),
        "answered after one retry timeout, took {first:?}"
    );
    let started = std::time::Instant::now();
    let answer = guest_udp_query(&env, DNS, 0x0a02, ONE, TYPE_A);
    let second = started.elapsed();
    assert_eq!(answer.a(), [SECOND_ONE]);
    assert!(
        second < Duration::from_millis(700),
        "the second query goes straight to the answering server, took {second:?}"
    );
    println!("DNS fallback: first query {first:?}, second {second:?}");
    assert_eq!(server.queries_for(ONE), 2);
    silent.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 512];
    let mut heard = 0;
    while silent.recv_from(&mut buf).is_ok() {
        heard += 1;
    }
    assert_eq!(heard, 1, "the silent server got only the first query");
}

/// The interface the harness gives the host namespace (see setup_host_netns): a dummy,
/// where routed packets vanish without an answer.
const HOST_SINK: &str = "d0";

/// `--disable-dns`: N+3 is no service any more. With the host namespace routing 10.0.2.3
/// into a sink, a query to it is never answered, the resolv.conf server never sees it,
/// and N+3 no longer answers ping itself.
fn disable_dns_n3_goes_to_the_host_network(mode: Mode) {
    let env = Env::new(mode);
    let server = first_server(&env);
    env.host
        .ip(&["route", "add", &format!("{DNS}/32"), "dev", HOST_SINK]);
    let _rslirp = env.rslirp().arg("--disable-dns").start();
    // So that silence below cannot come from a guest without a working network.
    assert_gateway_answers_ping(&env);
    match env.guest_dns_udp(DNS, dns::query(1, ONE, TYPE_A, None), SILENCE) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a query to {DNS} with --disable-dns must go unanswered: {other:?}"),
    }
    assert_eq!(
        server.queries_for(ONE),
        0,
        "the resolv.conf server was asked"
    );
    let ping = env.guest_cmd(&["ping", "-c", "1", "-W", "2", &DNS.to_string()]);
    assert!(
        !ping.status.success(),
        "{DNS} still answers ping with --disable-dns: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
}

/// `--disable-dns`: N+3 is forwarded like any other address. Here the host namespace has
/// 10.0.2.3 itself, with UDP and TCP echo servers on port 53: the guest's query comes back
/// as sent, not answered.
fn disable_dns_n3_is_forwarded_like_any_address(mode: Mode) {
    let env = Env::new(mode);
    env.host
        .ip(&["addr", "add", &format!("{DNS}/32"), "dev", HOST_SINK]);
    let to = SocketAddrV4::new(DNS, 53);
    let udp = env.host_udp_socket_at(to);
    let _udp_echo = net::udp_echo_server(udp);
    let tcp = env.host_tcp_listener_at(to);
    let _tcp_echo = net::tcp_server(tcp, net::echo);
    let _rslirp = env.rslirp().arg("--disable-dns").start();

    let query = dns::query(1, ONE, TYPE_A, None);
    let socket = env.guest_udp_socket();
    let reply =
        net::udp_roundtrip(&socket, SocketAddr::V4(to), &query).expect("UDP to 10.0.2.3:53");
    assert_eq!(reply, query, "the host's UDP echo on 10.0.2.3:53");
    let stream = env
        .guest_connect(to, CONNECT_TIMEOUT)
        .expect("TCP to 10.0.2.3:53");
    let reply = net::exchange(&stream, &query).expect("TCP echo");
    assert_eq!(reply, query, "the host's TCP echo on 10.0.2.3:53");
}

// ---------------------------------------------------------------------------------------
// --outbound-addr

/// The host namespace's address with the last octet replaced (same /24, on its sink).
fn host_neighbour(env: &Env, last: u8) -> Ipv4Addr {
    let [a, b, c, _] = env.host_addr.octets();
    Ipv4Addr::new(a, b, c, last)
}

/// The source address of the guest's ping to `dest_ip` as the host namespace sees it: a
/// raw ICMP socket there gets a copy of every echo request delivered locally.
fn ping_source_seen_by_host(env: &Env, dest_ip: Ipv4Addr) -> Ipv4Addr {
    let target = dest_ip.to_string();
    packet_seen_by_host(env, libc::IPPROTO_ICMP, dest_ip, || {
        env.guest_ok(&["ping", "-c", "1", "-W", "5", &target]);
    })
    .0
}

/// Source address and TTL of the first packet of `protocol` (for ICMP: an echo request)
/// to `dest_ip` that reaches the host namespace while `send` runs, as a raw socket there
/// sees it (it gets a copy of every packet delivered locally).
fn packet_seen_by_host(
    env: &Env,
    protocol: libc::c_int,
    dest_ip: Ipv4Addr,
    send: impl FnOnce(),
) -> (Ipv4Addr, u8) {
    let raw = env
        .in_host("raw socket", move || {
            // SAFETY: plain socket(2); the descriptor is owned by the File made just below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, protocol) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd is a fresh descriptor nobody else owns.
            let file = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            // Reads give up after 5 s, so the reader below always ends.
            let timeout = libc::timeval {
                tv_sec: 5,
                tv_usec: 0,
            };
            // SAFETY: fd is open; the option value is a timeval of the size passed.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&timeout as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(file)
        })
        .wait(CONNECT_TIMEOUT)
        .expect("raw socket in the host namespace");
    let reader = thread::spawn(move || {
        let mut raw = raw;
        let mut buf = [0u8; 2048];
        // Bounded: a few packets at most are expected, and each read times out.
        for _ in 0..64 {
            let Ok(n) = io::Read::read(&mut raw, &mut buf) else {
                return None;
            };
            if n < 28 {
                continue;
            }
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            let dst = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
            let echo_request = protocol != libc::IPPROTO_ICMP || buf[ihl] == 8;
            if n > ihl && echo_request && dst == dest_ip {
                return Some((Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]), buf[8]));
            }
        }
        None
    });
    send();
    reader
        .join()
        .expect("raw reader")
        .expect("the host saw the packet")
}

/// The guest's TTL travels with its UDP datagrams and echo requests, one less as through a
/// router (traceroute and `ping -t` work through rslirp, the gateway being the first hop, as
/// with slirp4netns): local delivery in the host namespace does not decrement it again, so
/// a raw socket there sees the guest's TTL less one.
fn ttl_is_carried_to_the_host(mode: Mode) {
    let env = Env::new(mode);
    env.allow_ping_sockets();
    let _rslirp = env.rslirp().start();
    let host_addr = env.host_addr;
    for ttl in [9u8, 3] {
        let (_, seen) = packet_seen_by_host(&env, libc::IPPROTO_UDP, host_addr, || {
            let socket = env.guest_udp_socket();
            socket.set_ttl(u32::from(ttl)).expect("IP_TTL");
            socket
                .send_to(b"probe", (host_addr, 33434))
                .expect("send from the guest");
        });
        assert_eq!(seen, ttl - 1, "UDP TTL seen by the host");
    }
    let target = host_addr.to_string();
    let (_, seen) = packet_seen_by_host(&env, libc::IPPROTO_ICMP, host_addr, || {
        env.guest_ok(&["ping", "-c", "1", "-W", "5", "-t", "7", &target]);
    });
    assert_eq!(seen, 6, "ICMP echo TTL seen by the host");
}

/// As slirp4netns (its tests/test-slirp4netns-outbound-addr.sh): every host socket is bound
/// to `--outbound-addr`, host loopback (reached through the gateway) included, so a server
/// sees that address instead of the kernel's choice; TCP, UDP and ping alike.
fn outbound_addr_address(mode: Mode) {
    let env = Env::new(mode);
    let outbound = host_neighbour(&env, 7);
    env.host
        .ip(&["addr", "add", &format!("{outbound}/24"), "dev", HOST_SINK]);
    env.allow_ping_sockets();
    let _rslirp = env
        .rslirp()
        .arg(&format!("--outbound-addr={outbound}"))
        .start();
    let host_addr = env.host_addr;
    assert_eq!(env.tcp_peer_seen_by_host(host_addr, host_addr), outbound);
    assert_eq!(env.udp_peer_seen_by_host(host_addr, host_addr), outbound);
    assert_eq!(ping_source_seen_by_host(&env, host_addr), outbound);
    let loopback = Ipv4Addr::LOCALHOST;
    let bound = "connections to host loopback are bound to --outbound-addr too";
    assert_eq!(
        env.tcp_peer_seen_by_host(loopback, GATEWAY),
        outbound,
        "{bound}"
    );
    assert_eq!(
        env.udp_peer_seen_by_host(loopback, GATEWAY),
        outbound,
        "{bound}"
    );
}

/// The reference test's first case: `--outbound-addr=127.0.0.1`. A server on the host
/// namespace's address then sees 127.0.0.1 (the kernel would choose that address itself).
fn outbound_addr_loopback(mode: Mode) {
    let env = Env::new(mode);
    let loopback = Ipv4Addr::LOCALHOST;
    let _rslirp = env.rslirp().arg("--outbound-addr=127.0.0.1").start();
    let host_addr = env.host_addr;
    assert_eq!(env.tcp_peer_seen_by_host(host_addr, host_addr), loopback);
    assert_eq!(env.udp_peer_seen_by_host(host_addr, host_addr), loopback);
    assert_eq!(env.tcp_peer_seen_by_host(loopback, GATEWAY), loopback);
    assert_eq!(env.udp_peer_seen_by_host(loopback, GATEWAY), loopback);
}

/// Where slirp4netns breaks: with `--outbound-addr` a NIC address, its DNS queries to a
/// local stub resolver (127.0.0.53) come from that address, which stub resolvers do not
/// answer. rslirp's forwarder keeps a loopback source for a loopback resolver (over UDP and
/// TCP), while the guest's own traffic to host loopback is still bound.
fn outbound_addr_keeps_a_loopback_resolver_working(mode: Mode) {
    const STUB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);
    let env = Env::new(mode);
    dns::add_loopback_addr(&env, STUB);
    let server = Dnsmasq::start(&env, STUB, &[Record::A(ONE, FIRST_ONE)]);
    env.write_resolv_conf_in_place(&format!("nameserver {STUB}\n"));
    let outbound = host_neighbour(&env, 7);
    env.host
        .ip(&["addr", "add", &format!("{outbound}/24"), "dev", HOST_SINK]);
    let _rslirp = env
        .rslirp()
        .arg(&format!("--outbound-addr={outbound}"))
        .start();
    let answer = guest_udp_query(&env, DNS, 0x5353, ONE, TYPE_A);
    assert_eq!(answer.a(), [FIRST_ONE]);
    let answers = guest_tcp_queries(&env, DNS, &[(0x5354, ONE, TYPE_A)]);
    assert_eq!(answers[0].a(), [FIRST_ONE]);
    let log = server.log();
    let sources: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("query[") && line.contains(&format!("] {ONE} from ")))
        .filter_map(|line| line.rsplit(" from ").next())
        .collect();
    assert_eq!(sources.len(), 2, "both queries reached the resolver: {log}");
    for source in sources {
        let ip: Ipv4Addr = source.trim().parse().expect("source address");
        assert!(ip.is_loopback(), "the resolver saw the query from {ip}");
    }
    // The guest's own traffic to host loopback is bound as usual.
    assert_eq!(
        env.tcp_peer_seen_by_host(Ipv4Addr::LOCALHOST, GATEWAY),
        outbound
    );
}

/// `--outbound-addr=IFNAME`: the interface's first IPv4 address is used.
fn outbound_addr_interface(mode: Mode) {
    const IFNAME: &str = "ob0";
    let env = Env::new(mode);
    if !env.host.try_ip(&["link", "add", IFNAME, "type", "dummy"]) {
        env.host.ip(&["link", "add", IFNAME, "type", "bridge"]);
    }
    let first = Ipv4Addr::new(10, 98, 0, 7);
    for addr in [first, Ipv4Addr::new(10, 98, 0, 8)] {
        env.host
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", IFNAME]);
    }
    env.host.ip(&["link", "set", IFNAME, "up"]);
    let _rslirp = env.rslirp().arg("--outbound-addr").arg(IFNAME).start();
    let host_addr = env.host_addr;
    assert_eq!(env.tcp_peer_seen_by_host(host_addr, host_addr), first);
    assert_eq!(env.udp_peer_seen_by_host(host_addr, host_addr), first);
}

// ---------------------------------------------------------------------------------------
// --macaddress

fn macaddress_sets_tap_mac(mode: Mode) {
    const MAC: &str = "02:11:22:33:44:55";
    let env = Env::new(mode);
    let _rslirp = env.rslirp().arg(&format!("--macaddress={MAC}")).start();
    let link = env.guest_ok(&["ip", "-o", "link", "show", "dev", TAP]);
    assert!(
        link.contains(&format!("link/ether {MAC} ")),
        "tap MAC: {link}"
    );
    // rslirp learns the guest's MAC from its frames: traffic works with this one.
    assert_traffic_works(&env);
}

//! End-to-end: ICMP errors from the host's network reach the guest (issue #15 §2). Two
//! routers stand between the host namespace (where rslirp runs) and a far host, all in
//! namespaces this test creates:
//!
//! ```text
//! host ns 172.16.1.1 ── r1 172.16.1.2 | 172.16.2.1 ── r2 172.16.2.2 | 172.16.3.1 ── far 172.16.3.2
//!         fd01:1::1        fd01:1::2  | fd01:2::1        fd01:2::2  | fd01:3::1        fd01:3::2
//! ```
//!
//! rslirp forwards like a router, as slirp4netns does: a probe with TTL 1 expires at the
//! gateway (time exceeded from 10.0.2.2 / fd00::2); a probe with TTL 2 leaves the host
//! socket with TTL 1 and expires at r1: the kernel queues r1's time exceeded on rslirp's
//! socket (IP_RECVERR) and rslirp sends the guest the same error about its own datagram,
//! from r1's address. traceroute from the guest then names the gateway, both routers, and
//! the far host as the last hop — the lines slirp4netns gives.

#[macro_use]
mod common;

use common::api::{stat, Api};
use common::net::{self, Server};
use common::ns::{spawn_in_netns, Netns};
use common::process::wait_for;
use common::{bind_in, Env, Mode, Rslirp, STEP_TIMEOUT, TAP};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use smoltcp::wire::{Icmpv4DstUnreachable, Icmpv4Message, Icmpv6Message};
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

both_modes!(
    udp_probes_expire_at_the_gateway_then_at_the_first_router,
    ping_with_ttl_1_and_2_hears_time_exceeded,
    udp_to_a_closed_port_hears_port_unreachable_from_the_far_host,
    traceroute_names_both_routers,
    ipv6_probes_expire_at_the_gateway_then_at_the_first_router,
    confined_rslirp_relays_errors_too,
);

/// A place on the path, by its IPv4 and its IPv6 address.
struct Hop {
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

/// rslirp's gateway as the guest sees it: the first hop.
const GATEWAY: Hop = Hop {
    v4: Ipv4Addr::new(10, 0, 2, 2),
    v6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
};
/// r1, r2 and the far host: the far ends of links 1, 2 and 3 of the diagram above.
const R1: Hop = far_end_of_link(1);
const R2: Hop = far_end_of_link(2);
const FAR: Hop = far_end_of_link(3);
/// How long the guest waits for an ICMP error or an echo.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The far end of link `n` of the diagram: 172.16.n.2 and fd01:n::2.
const fn far_end_of_link(n: u8) -> Hop {
    Hop {
        v4: Ipv4Addr::new(172, 16, n, 2),
        v6: Ipv6Addr::new(0xfd01, n as u16, 0, 0, 0, 0, 0, 2),
    }
}

/// The routers and the far host; their namespaces go with it.
struct FarNetwork {
    _r1: Netns,
    _r2: Netns,
    far: Netns,
}

/// One veth pair between two namespaces, with an IPv4 and an IPv6 address on each end.
fn link(a: &Netns, a_if: &str, a_addrs: [&str; 2], b: &Netns, b_if: &str, b_addrs: [&str; 2]) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        ns.ip(&["addr", "add", addrs[0], "dev", ifname]);
        // No duplicate address detection: the addresses are usable at once.
        ns.ip(&["-6", "addr", "add", addrs[1], "dev", ifname, "nodad"]);
        ns.ip(&["link", "set", ifname, "up"]);
    }
}

/// Builds the path host ns → r1 → r2 → far. Routers forward, and nobody rate-limits the
/// ICMP errors it sends (traceroute's burst of probes would otherwise lose answers).
fn far_network(env: &Env) -> FarNetwork {
    let r1 = Netns::create(format!("rse2e-h-{}-r1", env.id));
    let r2 = Netns::create(format!("rse2e-h-{}-r2", env.id));
    let far = Netns::create(format!("rse2e-h-{}-far", env.id));
    for ns in [&r1, &r2, &far] {
        ns.ip(&["link", "set", "lo", "up"]);
        for sysctl in [
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv6.icmp.ratelimit=0",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ] {
            ns.ip_netns_exec(&["sysctl", "-qw", sysctl]);
        }
    }
    let host = &env.host;
    link(
        host,
        "to-r1",
        ["172.16.1.1/24", "fd01:1::1/64"],
        &r1,
        "to-host",
        ["172.16.1.2/24", "fd01:1::2/64"],
    );
    link(
        &r1,
        "to-r2",
        ["172.16.2.1/24", "fd01:2::1/64"],
        &r2,
        "to-r1",
        ["172.16.2.2/24", "fd01:2::2/64"],
    );
    link(
        &r2,
        "to-far",
        ["172.16.3.1/24", "fd01:3::1/64"],
        &far,
        "to-r2",
        ["172.16.3.2/24", "fd01:3::2/64"],
    );
    let routes: [(&Netns, &str, &str); 8] = [
        (host, "172.16.0.0/16", "172.16.1.2"),
        (host, "fd01::/16", "fd01:1::2"),
        (&r1, "172.16.3.0/24", "172.16.2.2"),
        (&r1, "fd01:3::/64", "fd01:2::2"),
        (&r2, "172.16.1.0/24", "172.16.2.1"),
        (&r2, "fd01:1::/64", "fd01:2::1"),
        (&far, "default", "172.16.3.1"),
        (&far, "default", "fd01:3::1"),
    ];
    for (ns, to, via) in routes {
        if via.contains(':') {
            ns.ip(&["-6", "route", "add", to, "via", via]);
        } else {
            ns.ip(&["route", "add", to, "via", via]);
        }
    }
    FarNetwork {
        _r1: r1,
        _r2: r2,
        far,
    }
}

/// A UDP echo server on the far host.
fn far_udp_echo(network: &FarNetwork, ip: IpAddr) -> Server {
    let socket = bind_in(
        network.far.path(),
        "far UDP socket",
        (ip, 0),
        UdpSocket::bind,
    );
    net::udp_echo_server(socket)
}

/// An ICMP error as the guest's kernel reported it on the guest's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GuestError {
    icmp_type: u8,
    code: u8,
    offender: Option<IpAddr>,
}

impl GuestError {
    /// The error of `icmp_type` and `code` from `offender`.
    fn new(icmp_type: u8, code: u8, offender: impl Into<IpAddr>) -> GuestError {
        GuestError {
            icmp_type,
            code,
            offender: Some(offender.into()),
        }
    }
}

/// Waits up to `timeout` for an entry in the socket's error queue (IP_RECVERR) and returns
/// it; `None` if none came.
fn wait_error_queue(socket: &UdpSocket, timeout: Duration) -> Option<GuestError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        // No events asked for: POLLERR is always reported.
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::empty())];
        let wait = PollTimeout::try_from(left.min(Duration::from_secs(1))).expect("1 s at most");
        let ready = poll(&mut fds, wait).unwrap_or(0);
        let errored = fds[0]
            .revents()
            .is_some_and(|revents| revents.contains(PollFlags::POLLERR));
        if ready == 0 || !errored {
            continue;
        }
        if let Some(error) = recv_error(socket) {
            return Some(error);
        }
    }
}

/// One entry of the socket's error queue, if it is an ICMP error. Read through nix's
/// recvmsg and control-message parser, not rslirp's own (src/host.rs), so that a fault in
/// rslirp's parser cannot hide from this test.
fn recv_error(socket: &UdpSocket) -> Option<GuestError> {
    let mut data = [0u8; 2048];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut control = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
    let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
    let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut control), flags).ok()?;
    for cmsg in msg.cmsgs().ok()? {
        let (error, offender, icmp_origin) = match cmsg {
            ControlMessageOwned::Ipv4RecvErr(error, offender) => {
                let offender = offender
                    .filter(|addr| i32::from(addr.sin_family) == libc::AF_INET)
                    .map(|addr| IpAddr::V4(Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr))));
                (error, offender, libc::SO_EE_ORIGIN_ICMP)
            }
            ControlMessageOwned::Ipv6RecvErr(error, offender) => {
                let offender = offender
                    .filter(|addr| i32::from(addr.sin6_family) == libc::AF_INET6)
                    .map(|addr| IpAddr::V6(Ipv6Addr::from(addr.sin6_addr.s6_addr)));
                (error, offender, libc::SO_EE_ORIGIN_ICMP6)
            }
            _ => continue,
        };
        if error.ee_origin != icmp_origin {
            return None;
        }
        return Some(GuestError {
            icmp_type: error.ee_type,
            code: error.ee_code,
            offender,
        });
    }
    None
}

/// From a guest UDP socket with IP_RECVERR: one probe with `hop_limit` to `to`; the error
/// it got, or the echo it got back (`Ok`).
fn guest_probe(env: &Env, to: SocketAddr, hop_limit: u32) -> Result<Vec<u8>, GuestError> {
    env.in_guest("guest probe", move || {
        let socket =
            UdpSocket::bind((net::unspecified_for(to.ip()), 0)).expect("bind a guest UDP socket");
        socket.connect(to).expect("connect");
        if to.is_ipv6() {
            setsockopt(&socket, sockopt::Ipv6RecvErr, &true).expect("IPV6_RECVERR");
            let hops = hop_limit as libc::c_int;
            setsockopt(&socket, sockopt::Ipv6Ttl, &hops).expect("IPV6_UNICAST_HOPS");
        } else {
            setsockopt(&socket, sockopt::Ipv4RecvErr, &true).expect("IP_RECVERR");
            socket.set_ttl(hop_limit).expect("IP_TTL");
        }
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let probe = b"rslirp probe";
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        // A probe every second: the first may go before the guest's ARP/NDP settled.
        while Instant::now() < deadline {
            let _ = socket.send(probe);
            if let Some(error) = wait_error_queue(&socket, Duration::from_millis(800)) {
                return Err(error);
            }
            let mut buf = [0u8; 1500];
            match socket.recv(&mut buf) {
                Ok(n) => return Ok(buf[..n].to_vec()),
                // The error queue is read above; the errno it also set comes here first.
                Err(_) => {
                    if let Some(error) = recv_error(&socket) {
                        return Err(error);
                    }
                }
            }
        }
        panic!("neither an answer nor an ICMP error for a probe to {to} (hop limit {hop_limit})");
    })
    .wait(ANSWER_TIMEOUT + STEP_TIMEOUT)
}

/// The output of one `ping -n -c 1 -W 3 -t TTL` from the guest to `to` (`-6` for IPv6),
/// whatever its exit status (an ICMP error is no answer).
fn guest_ping_once(env: &Env, to: IpAddr, ttl: &str) -> String {
    let dest = to.to_string();
    let mut args = vec!["ping"];
    if to.is_ipv6() {
        args.push("-6");
    }
    args.extend(["-n", "-c", "1", "-W", "3", "-t", ttl, &dest]);
    String::from_utf8_lossy(&env.guest_cmd(&args).stdout).into_owned()
}

/// rslirp (with a control socket, for its counters) and the far network.
fn start(env: &Env) -> (Rslirp, FarNetwork, Api) {
    let network = far_network(env);
    env.allow_ping_sockets();
    let api = Api::new(env);
    (api.launch(env).start(), network, api)
}

/// How many ICMP errors rslirp relayed to the guest so far (get_stats).
fn relayed(api: &Api) -> u64 {
    stat(&api.stats(), &["counters", "icmp_errors_relayed"])
}

fn udp_probes_expire_at_the_gateway_then_at_the_first_router(mode: Mode) {
    let env = Env::new(mode);
    let (_rslirp, network, api) = start(&env);
    let server = far_udp_echo(&network, FAR.v4.into());
    let to = SocketAddr::new(FAR.v4.into(), server.port());

    let error = guest_probe(&env, to, 1).expect_err("TTL 1 ends at the gateway");
    assert_eq!(
        error,
        GuestError::new(Icmpv4Message::TimeExceeded.into(), 0, GATEWAY.v4)
    );
    assert_eq!(relayed(&api), 0, "rslirp answered that one itself");
    let error = guest_probe(&env, to, 2).expect_err("TTL 2 ends at the first router");
    assert_eq!(
        error,
        GuestError::new(Icmpv4Message::TimeExceeded.into(), 0, R1.v4)
    );
    assert_eq!(relayed(&api), 1, "rslirp relayed r1's");
    let echo = guest_probe(&env, to, 8).expect("TTL 8 reaches the far host's echo server");
    assert_eq!(echo, b"rslirp probe");
}

fn ping_with_ttl_1_and_2_hears_time_exceeded(mode: Mode) {
    let env = Env::new(mode);
    let (_rslirp, _network, _api) = start(&env);
    let far = FAR.v4.to_string();
    for (ttl, from) in [("1", GATEWAY.v4), ("2", R1.v4)] {
        let out = env.guest_cmd(&[
            "ping", "-n", "-c", "2", "-i", "0.5", "-W", "3", "-t", ttl, &far,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        println!("ping -t {ttl} from the guest:\n{text}");
        assert!(
            text.contains(&format!("From {from} icmp_seq=1 Time to live exceeded")),
            "ping -t {ttl}: {text}"
        );
    }
    let out = env.guest_ok(&["ping", "-n", "-c", "1", "-W", "3", "-t", "8", &far]);
    assert!(out.contains("1 received"), "ping -t 8: {out}");
}

fn udp_to_a_closed_port_hears_port_unreachable_from_the_far_host(mode: Mode) {
    let env = Env::new(mode);
    let (_rslirp, network, _api) = start(&env);
    // A port nothing listens on: bound and closed again.
    let port = spawn_in_netns(network.far.path(), "far port", || {
        UdpSocket::bind((FAR.v4, 0)).map(|s| s.local_addr().expect("addr").port())
    })
    .wait(STEP_TIMEOUT)
    .expect("a free port");
    let error = guest_probe(&env, SocketAddr::new(FAR.v4.into(), port), 64)
        .expect_err("nothing listens there");
    assert_eq!(
        error,
        GuestError::new(
            Icmpv4Message::DstUnreachable.into(),
            Icmpv4DstUnreachable::PortUnreachable.into(),
            FAR.v4
        )
    );
}

/// `traceroute -n -w 3 -m 6` from the guest to `to` (with `-6` for IPv6), which must
/// succeed: its output.
fn guest_traceroute(env: &Env, to: IpAddr) -> String {
    let command = if to.is_ipv6() {
        "traceroute -6"
    } else {
        "traceroute"
    };
    let to = to.to_string();
    let mut args: Vec<&str> = command.split(' ').collect();
    args.extend(["-n", "-w", "3", "-m", "6", &to]);
    let out = env.guest_cmd(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{command} from the guest:\n{text}");
    assert!(out.status.success(), "{command} failed: {out:?}");
    text
}

fn traceroute_names_both_routers(mode: Mode) {
    let env = Env::new(mode);
    let (_rslirp, _network, api) = start(&env);
    let text = guest_traceroute(&env, FAR.v4.into());
    let hop = |n: usize| -> String {
        text.lines()
            .find(|line| line.trim_start().starts_with(&format!("{n} ")))
            .unwrap_or_else(|| panic!("no hop {n} in:\n{text}"))
            .to_string()
    };
    assert!(
        hop(1).contains(&GATEWAY.v4.to_string()),
        "hop 1 is the gateway:\n{text}"
    );
    assert!(hop(2).contains(&R1.v4.to_string()), "hop 2 is r1:\n{text}");
    assert!(hop(3).contains(&R2.v4.to_string()), "hop 3 is r2:\n{text}");
    assert!(
        hop(4).contains(&FAR.v4.to_string()),
        "hop 4 is the far host:\n{text}"
    );
    assert!(
        !text.lines().any(|line| line.trim_start().starts_with("5 ")),
        "the far host is the last hop (its port unreachable ends the trace):\n{text}"
    );
    // Three probes for each of the three hops at least (traceroute sends more at once).
    let relayed = relayed(&api);
    println!("ICMP errors relayed: {relayed}");
    assert!(relayed >= 9, "{relayed} ICMP errors relayed");
}

/// `-6`: a UDP probe with hop limit 1 hears ICMPv6 time exceeded from the gateway, with 2
/// from r1, with 8 it reaches the far host; `ping -6 -t 1`/`-t 2` and `traceroute -6` too.
fn ipv6_probes_expire_at_the_gateway_then_at_the_first_router(mode: Mode) {
    let env = Env::new(mode);
    let network = far_network(&env);
    env.allow_ping_sockets();
    let _rslirp = env.rslirp().arg("-6").start();
    // The guest's SLAAC address and its default route via fe80::2 (rslirp's first router
    // advertisement comes after a second).
    wait_for("an IPv6 default route in the guest", STEP_TIMEOUT, || {
        let routes = env.guest_ok(&["ip", "-6", "route", "show", "default"]);
        let addrs = env.guest_ok(&[
            "ip", "-6", "-o", "addr", "show", "dev", TAP, "scope", "global",
        ]);
        let ready = routes.contains("via fe80::2")
            && addrs.contains("fd00::")
            && !addrs.contains("tentative");
        ready.then_some(())
    });
    let server = far_udp_echo(&network, FAR.v6.into());
    let to = SocketAddr::new(FAR.v6.into(), server.port());
    for (hop_limit, from) in [(1, GATEWAY.v6), (2, R1.v6)] {
        let error = guest_probe(&env, to, hop_limit).expect_err("the hop limit runs out");
        assert_eq!(
            error,
            GuestError::new(Icmpv6Message::TimeExceeded.into(), 0, from),
            "hop limit {hop_limit}"
        );
    }
    let echo = guest_probe(&env, to, 8).expect("hop limit 8 reaches the far host");
    assert_eq!(echo, b"rslirp probe");

    for (hop_limit, from) in [("1", GATEWAY.v6), ("2", R1.v6)] {
        let text = guest_ping_once(&env, FAR.v6.into(), hop_limit);
        println!("ping -6 -t {hop_limit} from the guest:\n{text}");
        assert!(
            text.contains(&format!("From {from} icmp_seq=1 Time exceeded: Hop limit")),
            "ping -6 -t {hop_limit}: {text}"
        );
    }

    let text = guest_traceroute(&env, FAR.v6.into());
    let hops: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(hops.len(), 4, "the gateway, r1, r2, the far host:\n{text}");
    for (hop, addr) in hops.iter().zip([GATEWAY.v6, R1.v6, R2.v6, FAR.v6]) {
        assert!(
            hop.contains(&format!(" {addr} ")),
            "{addr} in {hop:?}:\n{text}"
        );
    }
}

/// `--enable-sandbox --enable-seccomp`: the error queue is read with recvmsg, which the
/// seccomp allow-list must let through (a refused call would lose every error quietly).
fn confined_rslirp_relays_errors_too(mode: Mode) {
    let env = Env::new(mode);
    let network = far_network(&env);
    env.allow_ping_sockets();
    let api = Api::new(&env);
    let caller = env.caller_namespace();
    let _rslirp = api
        .launch(&env)
        .arg("--enable-sandbox")
        .arg("--enable-seccomp")
        .start_in(&caller);
    let server = far_udp_echo(&network, FAR.v4.into());
    let to = SocketAddr::new(FAR.v4.into(), server.port());
    let error = guest_probe(&env, to, 2).expect_err("TTL 2 ends at the first router");
    assert_eq!(
        (error.icmp_type, error.offender),
        (u8::from(Icmpv4Message::TimeExceeded), Some(R1.v4.into()))
    );
    let text = guest_ping_once(&env, FAR.v4.into(), "2");
    assert!(
        text.contains(&format!("From {} icmp_seq=1 Time to live exceeded", R1.v4)),
        "ping -t 2: {text}"
    );
    assert_eq!(relayed(&api), 2);
}

//! End-to-end: `--outbound-if` / `--outbound-if6` (rslirp's own options), host sockets of
//! outbound flows bound to an interface (SO_BINDTODEVICE).
//!
//! The host namespace gets a veth `va` to a "far" namespace of the test's own, holding
//! servers on 192.0.2.2 and 2001:db8:1::2 (TEST-NET and documentation addresses, in
//! namespaces the test creates). The main table routes those over `va`, but a policy rule
//! sends them to table 100 first, which routes them into the harness's dummy `d0` (a sink):
//! so a flow reaches the far servers only when its socket is bound to `va`, where the
//! kernel skips routes through other devices. Each test also shows the sink works: without
//! the option the same flow goes nowhere.

#[macro_use]
mod common;

use common::ipv6::await_slaac;
use common::net::{self, Pattern, Server};
use common::ns::Netns;
use common::{bind_in, Env, Mode, Rslirp, EXIT_TIMEOUT, GATEWAY, STEP_TIMEOUT};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

both_modes!(
    tcp_and_udp_follow_the_interface_and_loopback_still_works,
    ipv6_follows_the_interface,
    missing_interface_is_fatal_at_start,
);

const FAR4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const FAR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// Long enough for a connect that works (one round trip through rslirp), short enough
/// for the one that must not.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const VETH: &str = "va";

/// The far namespace and its servers; dropped (and with it the veth) at the end.
struct Far {
    tcp: Server,
    udp: Server,
    tcp6: Server,
    udp6: Server,
    _netns: Netns,
}

/// Builds the topology described at the top, with echo servers in the far namespace.
fn far_side(env: &Env) -> Far {
    let far = Netns::create(format!("rse2e-g-{}-far", env.id));
    far.ip(&["link", "set", "lo", "up"]);
    env.host.ip(&[
        "link", "add", VETH, "type", "veth", "peer", "name", "vb", "netns", &far.name,
    ]);
    env.host.ip(&["addr", "add", "192.0.2.1/24", "dev", VETH]);
    env.host.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        VETH,
        "nodad",
    ]);
    env.host.ip(&["link", "set", VETH, "up"]);
    far.ip(&["addr", "add", "192.0.2.2/24", "dev", "vb"]);
    far.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:1::2/64",
        "dev",
        "vb",
        "nodad",
    ]);
    far.ip(&["link", "set", "vb", "up"]);
    // The detour: table 100, consulted first, sends the far addresses into the sink.
    env.host
        .ip(&["route", "add", "192.0.2.2/32", "dev", "d0", "table", "100"]);
    env.host.ip(&[
        "rule",
        "add",
        "to",
        "192.0.2.2",
        "lookup",
        "100",
        "pref",
        "100",
    ]);
    env.host.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:1::2/128",
        "dev",
        "d0",
        "table",
        "100",
    ]);
    env.host.ip(&[
        "-6",
        "rule",
        "add",
        "to",
        "2001:db8:1::2",
        "lookup",
        "100",
        "pref",
        "100",
    ]);
    // The answers come in on `va` although the tables route their source elsewhere.
    env.host.ip_netns_exec(&[
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.va.rp_filter=0",
    ]);
    let tcp_echo = |what: &str, ip: IpAddr| {
        net::tcp_server(
            bind_in(far.path(), what, (ip, 0), TcpListener::bind),
            net::echo,
        )
    };
    let udp_echo = |what: &str, ip: IpAddr| {
        net::udp_echo_server(bind_in(far.path(), what, (ip, 0), UdpSocket::bind))
    };
    let tcp = tcp_echo("far tcp", FAR4.into());
    let tcp6 = tcp_echo("far tcp6", FAR6.into());
    let udp = udp_echo("far udp", FAR4.into());
    let udp6 = udp_echo("far udp6", FAR6.into());
    Far {
        tcp,
        udp,
        tcp6,
        udp6,
        _netns: far,
    }
}

fn assert_echo(env: &Env, to: SocketAddr) {
    env.assert_guest_echo(to, CONNECT_TIMEOUT, u64::from(to.port()), 100_000);
}

fn assert_unreachable(env: &Env, to: SocketAddr) {
    let result = env.guest_connect(to, CONNECT_TIMEOUT);
    assert!(
        result.is_err(),
        "{to} reachable without the option: the test's detour does not work"
    );
}

/// A UDP round trip from the guest, or the error (a timeout when nothing comes back).
fn guest_udp(env: &Env, to: SocketAddr, payload: Vec<u8>) -> io::Result<Vec<u8>> {
    env.in_guest("guest udp", move || {
        let any: SocketAddr = if to.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(any)?;
        socket.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        socket.send_to(&payload, to)?;
        let mut buf = vec![0u8; 2048];
        let (len, _) = socket.recv_from(&mut buf)?;
        buf.truncate(len);
        Ok(buf)
    })
    .wait(CONNECT_TIMEOUT + STEP_TIMEOUT)
}

fn tcp_and_udp_follow_the_interface_and_loopback_still_works(mode: Mode) {
    let env = Env::new(mode);
    env.allow_ping_sockets();
    let far = far_side(&env);
    let tcp = SocketAddr::new(FAR4.into(), far.tcp.port());
    let udp = SocketAddr::new(FAR4.into(), far.udp.port());
    {
        let _plain = env.rslirp().start();
        assert_unreachable(&env, tcp);
        assert!(
            guest_udp(&env, udp, b"x".to_vec()).is_err(),
            "UDP answered without the option"
        );
        assert!(!guest_pings_far(&env), "ping answered without the option");
    }
    // Confined as rootlesskit and podman run it: SO_BINDTODEVICE on a fresh socket needs
    // no capability (Linux 5.7+), and setsockopt is in the seccomp filter.
    let _bound = env
        .rslirp()
        .arg("--outbound-if")
        .arg(VETH)
        .arg("--enable-sandbox")
        .arg("--enable-seccomp")
        .start();
    assert_echo(&env, tcp);
    let payload = Pattern::bytes(4, 1400);
    assert_eq!(
        guest_udp(&env, udp, payload.clone()).unwrap_or_else(|e| panic!("udp to {udp}: {e}")),
        payload
    );
    assert!(guest_pings_far(&env), "ping (a ping socket) through {VETH}");
    // Host loopback (10.0.2.2 → 127.0.0.1) is left to `lo`.
    let local = env.host_echo_server(Ipv4Addr::LOCALHOST);
    assert_echo(&env, SocketAddr::new(GATEWAY.into(), local.port()));
}

/// One echo request from the guest to the far address, answered within 2 s or not.
fn guest_pings_far(env: &Env) -> bool {
    env.guest_cmd(&["ping", "-c", "1", "-W", "2", &FAR4.to_string()])
        .status
        .success()
}

/// `-6 --outbound-if6 va`: the same over IPv6, once the guest has its SLAAC address.
fn ipv6_follows_the_interface(mode: Mode) {
    let env = Env::new(mode);
    let far = far_side(&env);
    let tcp6 = SocketAddr::new(FAR6.into(), far.tcp6.port());
    let udp6 = SocketAddr::new(FAR6.into(), far.udp6.port());
    {
        let _plain = start_ipv6(&env, &[]);
        assert_unreachable(&env, tcp6);
        assert!(
            guest_udp(&env, udp6, b"x".to_vec()).is_err(),
            "UDP over IPv6 answered without the option"
        );
    }
    let _bound = start_ipv6(&env, &["--outbound-if6", VETH]);
    assert_echo(&env, tcp6);
    let payload = Pattern::bytes(6, 1400);
    assert_eq!(
        guest_udp(&env, udp6, payload.clone()).unwrap_or_else(|e| panic!("udp to {udp6}: {e}")),
        payload
    );
    // Host loopback over IPv6 (fd00::2 → ::1) still works.
    let local = env.host_echo_server(Ipv6Addr::LOCALHOST);
    let gateway6: Ipv6Addr = "fd00::2".parse().expect("address");
    assert_echo(&env, SocketAddr::new(gateway6.into(), local.port()));
}

/// rslirp with `-6` and `args`, once the guest has a usable SLAAC address and its route.
fn start_ipv6(env: &Env, args: &[&str]) -> Rslirp {
    let mut launch = env.rslirp().arg("-6");
    for arg in args {
        launch = launch.arg(arg);
    }
    let rslirp = launch.start();
    await_slaac(env, [0xfd00, 0, 0, 0]);
    rslirp
}

fn missing_interface_is_fatal_at_start(mode: Mode) {
    let env = Env::new(mode);
    for option in ["--outbound-if", "--outbound-if6"] {
        let (status, output) = env
            .rslirp()
            .arg(option)
            .arg("nosuchif0")
            .start_expecting_exit(EXIT_TIMEOUT);
        assert_eq!(status.code(), Some(1), "{output}");
        assert!(
            output.contains(&format!(
                "rslirp: {option} nosuchif0: no such interface in rslirp's network namespace"
            )),
            "{output}"
        );
    }
    // The interface is looked up where rslirp runs, not in the container: the guest's own
    // `tap0` does not exist on the host side.
    let (status, output) = env
        .rslirp()
        .arg("--outbound-if=tap0")
        .start_expecting_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("no such interface"), "{output}");
}

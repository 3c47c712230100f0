//! End-to-end: `-c -6 --cidr6 fd42:1:2:3::/64` (rslirp's own option). The guest autoconfigures
//! its SLAAC address in that prefix from rslirp's advertisements (and none in fd00::/64),
//! pings the gateway fd42:1:2:3::2 and the DNS forwarder fd42:1:2:3::3, reaches the host
//! namespace's [::1] through the gateway, asks the test's DNS server through ::3, and serves
//! a host client of [::1]:PORT through a port forward to its address in the prefix, where it
//! sees the client as fd42:1:2:3::2. A prefix rslirp cannot use stops it at start.

#[macro_use]
mod common;

use common::api::{id_reply, Api};
use common::ipv6::{
    assert_dns_via_forwarder, assert_forward_echo, await_slaac, guest_global_addrs,
    guest_peer_echo_server, listed_addrs, v6,
};
use common::{Env, Mode, Rslirp, STEP_TIMEOUT, TAP};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

both_modes!(
    guest_gets_its_address_in_the_prefix_and_pings_gateway_and_dns,
    tcp_via_the_prefix_gateway_reaches_host_loopback,
    dns_via_the_prefix_dns_forwarder,
    port_forward_from_host_loopback_to_the_guest_in_the_prefix,
    a_prefix_other_than_a_64_stops_rslirp_at_start,
);

const CIDR6: &str = "--cidr6=fd42:1:2:3::/64";
const PREFIX: [u16; 4] = [0xfd42, 1, 2, 3];
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd42, 1, 2, 3, 0, 0, 0, 2);
const DNS6: Ipv6Addr = Ipv6Addr::new(0xfd42, 1, 2, 3, 0, 0, 0, 3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// rslirp with `-c -6 --cidr6=fd42:1:2:3::/64`, and the guest's SLAAC address once usable.
fn start(env: &Env) -> (Rslirp, Ipv6Addr) {
    let rslirp = env.rslirp().arg("-6").arg(CIDR6).start();
    let addr = await_slaac(env, PREFIX);
    let all = guest_global_addrs(env);
    assert!(
        listed_addrs(&all)
            .iter()
            .all(|(addr, _)| addr.segments()[..4] == PREFIX),
        "every global address is in the configured prefix, none in fd00::/64: {all}"
    );
    (rslirp, addr)
}

fn guest_gets_its_address_in_the_prefix_and_pings_gateway_and_dns(mode: Mode) {
    let env = Env::new(mode);
    let (_rslirp, addr) = start(&env);
    assert!(
        addr != GATEWAY6 && addr != DNS6,
        "a guest address of its own: {addr}"
    );
    let routes = env.guest_ok(&["ip", "-6", "route", "show", "dev", TAP]);
    assert!(
        routes.lines().any(|l| l.starts_with("fd42:1:2:3::/64 ")),
        "the prefix is on-link: {routes}"
    );
    for target in [GATEWAY6, DNS6] {
        let out = env.guest_ok(&["ping", "-6", "-c", "3", "-W", "2", &target.to_string()]);
        assert!(
            out.contains("3 packets transmitted, 3 received"),
            "every ping to {target} answered: {out}"
        );
    }
}

fn tcp_via_the_prefix_gateway_reaches_host_loopback(mode: Mode) {
    let env = Env::new(mode);
    let (_rslirp, _) = start(&env);
    let server = env.host_echo_server(Ipv6Addr::LOCALHOST);
    env.assert_guest_echo(v6(GATEWAY6, server.port()), CONNECT_TIMEOUT, 42, 200_000);
}

fn dns_via_the_prefix_dns_forwarder(mode: Mode) {
    const NAME: &str = "cidr6.rslirp.test";
    const ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 42);
    let env = Env::new(mode);
    let (server, _rslirp) = assert_dns_via_forwarder(&env, start, DNS6, NAME, ADDRESS, 0x420);
    assert!(server.queries_for(NAME) >= 1, "{}", server.log());
}

fn port_forward_from_host_loopback_to_the_guest_in_the_prefix(mode: Mode) {
    const HOST_PORT: u16 = 8642;
    const GUEST_PORT: u16 = 80;
    let env = Env::new(mode);
    let api = Api::new(&env);
    let _rslirp = api.launch(&env).arg("-6").arg(CIDR6).start();
    let guest_addr = await_slaac(&env, PREFIX);
    let _server = guest_peer_echo_server(&env, GUEST_PORT);

    let add = format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"::1","host_port":{HOST_PORT},"guest_addr":"{guest_addr}","guest_port":{GUEST_PORT}}}}}"#
    );
    assert_eq!(api.request(&add), id_reply(1), "add_hostfwd {add}");
    assert_eq!(
        api.request(r#"{"execute":"list_hostfwd"}"#),
        format!(
            r#"{{"entries":[{{"id":1,"proto":"tcp","host_addr":"::1","host_port":{HOST_PORT},"guest_addr":"{guest_addr}","guest_port":{GUEST_PORT}}}]}}"#
        ),
        "list_hostfwd shows the guest's address in the prefix"
    );

    assert_forward_echo(&env, v6(Ipv6Addr::LOCALHOST, HOST_PORT), GATEWAY6, 642);
}

fn a_prefix_other_than_a_64_stops_rslirp_at_start(mode: Mode) {
    let env = Env::new(mode);
    for (args, message) in [
        (
            &["-6", "--cidr6=fd42:1:2:3::/48"][..],
            "--cidr6: IPv6 prefix length needs to be 64: fd42:1:2:3::/48",
        ),
        (
            &["-6", "--cidr6=fd42:1:2:3::100/64"],
            "--cidr6: IPv6 prefix needs to be a network address like fd00::/64, not like \
             fd00::100/64: fd42:1:2:3::100/64",
        ),
        (&[CIDR6], "--cidr6 needs --enable-ipv6 (-6)"),
    ] {
        let mut launch = env.rslirp();
        for arg in args {
            launch = launch.arg(arg);
        }
        let (status, output) = launch.start_expecting_exit(STEP_TIMEOUT);
        assert_eq!(status.code(), Some(1), "{args:?}: {output}");
        assert!(
            output.lines().any(|line| line == message),
            "{args:?}: expected {message:?} in {output:?}"
        );
    }
}

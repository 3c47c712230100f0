//! End-to-end: UDP through the NAT.

#[macro_use]
mod common;

use common::net::{self};
use common::{Env, Mode, GATEWAY};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

both_modes!(
    udp_echo_via_gateway_to_host_loopback,
    udp_to_host_namespace_address
);

/// Datagram sizes from tiny to the largest that fits a 1500-byte MTU unfragmented.
const SIZES: [usize; 4] = [1, 100, 1400, 1472];

fn assert_udp_echo(env: &Env, server_ip: Ipv4Addr, dest_ip: Ipv4Addr) {
    let _rslirp = env.rslirp().start();
    let server = env.host_udp_echo_server(server_ip);
    let socket = env.guest_udp_socket();
    let to = SocketAddr::V4(SocketAddrV4::new(dest_ip, server.port()));
    net::assert_udp_echoes(&socket, to, &SIZES);
}

fn udp_echo_via_gateway_to_host_loopback(mode: Mode) {
    assert_udp_echo(&Env::new(mode), Ipv4Addr::LOCALHOST, GATEWAY);
}

fn udp_to_host_namespace_address(mode: Mode) {
    let env = Env::new(mode);
    let host_addr = env.host_addr;
    assert_udp_echo(&env, host_addr, host_addr);
}

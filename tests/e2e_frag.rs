//! End-to-end: IP fragments at `--mtu 1500`. The guest's kernel fragments an 8,000-byte
//! UDP datagram (IPv4 with DF clear, IPv6 with a Fragment header); rslirp reassembles it
//! for the host socket and fragments the 8,000-byte echo back. `ping -s 4000` of the
//! gateway gets its replies. A flood of first fragments never completed leaves rslirp
//! serving, its memory within the documented reassembly bound.

#[macro_use]
mod common;

use common::api::{stat, Api};
use common::ipv6::await_slaac;
use common::net::{self, Pattern};
use common::process::wait_for;
use common::{Env, Mode, GATEWAY, STEP_TIMEOUT};
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::time::Duration;

both_modes!(
    udp_8000_bytes_v4_both_ways,
    udp_8000_bytes_v6_both_ways,
    ping_4000_bytes_of_the_gateway,
    first_fragment_flood_keeps_memory_bounded,
);

const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const SIZE: usize = 8000;
/// `max_reassembly_bytes`' default (docs/limits.md): what the reassembly may hold.
const REASSEMBLY_BOUND_KIB: u64 = 1024;
/// First fragments in the flood.
const FLOOD: usize = 5000;

/// One 8,000-byte datagram each way through a UDP echo server, checked byte for byte, and
/// the counters that say it was reassembled and fragmented.
fn assert_big_echo(api: &Api, socket: &UdpSocket, to: SocketAddr) {
    let before = api.stats();
    let payload = Pattern::bytes(8, SIZE);
    let reply = net::udp_roundtrip(socket, to, &payload)
        .unwrap_or_else(|e| panic!("no echo of {SIZE} bytes from {to}: {e}"));
    assert_eq!(reply.len(), SIZE, "the echo arrived whole");
    assert!(reply == payload, "echo of {SIZE} bytes differs");
    let after = api.stats();
    let grew = |name: &str| stat(&after, &["counters", name]) - stat(&before, &["counters", name]);
    assert!(grew("ip_frag_reassembled") >= 1, "{after}");
    assert!(grew("ip_frag_fragmented") >= 1, "{after}");
    println!(
        "{to}: {SIZE}-byte echo ok; get_stats counters: {}",
        after["return"]["counters"]
    );
}

fn udp_8000_bytes_v4_both_ways(mode: Mode) {
    let env = Env::new(mode);
    let api = Api::new(&env);
    let _rslirp = api.launch(&env).arg("--mtu=1500").start();
    let server = env.host_udp_echo_server(Ipv4Addr::LOCALHOST);
    let socket = env.guest_udp_socket();
    let to = SocketAddr::V4(SocketAddrV4::new(GATEWAY, server.port()));
    assert_big_echo(&api, &socket, to);
}

fn udp_8000_bytes_v6_both_ways(mode: Mode) {
    let env = Env::new(mode);
    let api = Api::new(&env);
    let _rslirp = api.launch(&env).arg("--mtu=1500").arg("-6").start();
    await_slaac(&env, [0xfd00, 0, 0, 0]);
    let server = env.host_udp_echo_server(Ipv6Addr::LOCALHOST);
    let socket = env.guest_udp_socket_at((Ipv6Addr::UNSPECIFIED, 0));
    let to = SocketAddr::V6(SocketAddrV6::new(GATEWAY6, server.port(), 0, 0));
    assert_big_echo(&api, &socket, to);
}

fn ping_4000_bytes_of_the_gateway(mode: Mode) {
    let env = Env::new(mode);
    let _rslirp = env.rslirp().arg("--mtu=1500").start();
    let out = env.guest_ok(&[
        "ping",
        "-c",
        "3",
        "-W",
        "2",
        "-s",
        "4000",
        &GATEWAY.to_string(),
    ]);
    assert!(
        out.contains("3 packets transmitted, 3 received"),
        "every 4,000-byte ping answered: {out}"
    );
    assert!(out.contains("4008 bytes from 10.0.2.2"), "{out}");
}

/// Sends `count` first fragments (MF set, offset 0, 1,480 bytes each, a distinct
/// identification each, never completed) from the guest to the gateway through a raw
/// socket; prints and returns how many went and how fast.
const FLOOD_SCRIPT: &str = r#"
import socket, struct, sys, time
count = int(sys.argv[1])
src, dst = socket.inet_aton(sys.argv[2]), socket.inet_aton(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_IP, socket.IP_HDRINCL, 1)
udp = struct.pack('!HHHH', 40000, 9, 8 + 3000, 0) + bytes(1472)
start = time.monotonic()
sent = 0
for ident in range(count):
    # version/IHL, TOS, total length, id, flags (MF) and offset 0, TTL, UDP, checksum 0
    # (the kernel fills it and the length), addresses.
    header = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), (ident + 1) & 0xffff,
                         0x2000, 64, 17, 0, src, dst)
    while True:
        try:
            s.sendto(header + udp, (sys.argv[3], 0))
            break
        except BlockingIOError:
            time.sleep(0.001)
        except OSError as e:
            if e.errno != 105:  # ENOBUFS: the tap's queue is full, try again
                raise
            time.sleep(0.001)
    sent += 1
elapsed = time.monotonic() - start
print(f"sent {sent} first fragments in {elapsed:.3f} s: {sent / elapsed:.0f} frames/s")
"#;

fn kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

fn first_fragment_flood_keeps_memory_bounded(mode: Mode) {
    let env = Env::new(mode);
    let api = Api::new(&env);
    let mut rslirp = api.launch(&env).arg("--mtu=1500").start();
    let server = env.host_udp_echo_server(Ipv4Addr::LOCALHOST);
    let socket = env.guest_udp_socket();
    let to = SocketAddr::V4(SocketAddrV4::new(GATEWAY, server.port()));
    // Warm up: the paths the flood takes and a big echo, so that the baseline includes
    // the buffers ordinary traffic keeps.
    assert_big_echo(&api, &socket, to);
    let pid = rslirp.pid();
    let rss_before = kib(pid, "VmRSS:");
    let out = env.guest_ok(&[
        "python3",
        "-c",
        FLOOD_SCRIPT,
        &FLOOD.to_string(),
        &common::GUEST_ADDR.to_string(),
        &GATEWAY.to_string(),
    ]);
    // The frames are in the tap's queue (the tap drops what does not fit it): wait until
    // rslirp has taken all it will get, i.e. its counters stand still for a second.
    let seen = |stats: &serde_json::Value| {
        stat(stats, &["counters", "ip_frag_datagram_evictions"])
            + stat(stats, &["counters", "ip_frag_byte_evictions"])
            + stat(stats, &["counters", "ip_frag_pending"])
    };
    let mut last = None;
    let stats = wait_for("rslirp to take the flood", STEP_TIMEOUT, || {
        std::thread::sleep(Duration::from_secs(1));
        let stats = api.stats();
        let now = seen(&stats);
        let done = last == Some(now);
        last = Some(now);
        done.then_some(stats)
    });
    let taken = seen(&stats);
    println!(
        "rslirp took {taken} of the {FLOOD} first fragments (the tap drops what overflows it)"
    );
    assert!(taken > 1000, "most of the flood reached rslirp: {stats}");
    assert!(
        stat(&stats, &["counters", "ip_frag_datagram_evictions"]) > 0,
        "the datagram limit was hit: {stats}"
    );
    let peak = kib(pid, "VmHWM:");
    let rss_after = kib(pid, "VmRSS:");
    let counters = &stats["return"]["counters"];
    println!("flood: {}", out.trim());
    println!(
        "rslirp VmRSS {rss_before} KiB before, {rss_after} KiB after, peak (VmHWM) {peak} KiB; \
         counters {counters}"
    );
    assert!(stat(&stats, &["counters", "ip_frag_pending"]) <= 64);
    assert!(stat(&stats, &["counters", "ip_frag_bytes"]) <= REASSEMBLY_BOUND_KIB * 1024);
    assert_eq!(stat(&stats, &["counters", "ip_frag_reassembled"]), 1);
    // The reassembly holds at most its bound; allow as much again for the allocator's
    // slack (freed buffers it keeps) and the frames in flight.
    assert!(
        rss_after <= rss_before + 2 * REASSEMBLY_BOUND_KIB,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    // Still serving: a ping, and a big datagram both ways.
    common::assert_gateway_answers_ping(&env);
    assert_big_echo(&api, &socket, to);
    rslirp.assert_running();
}

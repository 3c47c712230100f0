//! End-to-end robustness (issue #8): a SYN flood beside a bulk transfer, 100,000 short
//! connections against a memory bound, garbage frames, a host peer killed mid-transfer, and
//! the container taken away under a running rslirp; (issue #16) more UDP flows than file
//! descriptors.
//!
//! Every connect the NAT makes stays in the test's own host namespace (its loopback, or a
//! black-holed address on its dummy subnet); every wait has a deadline.

#[macro_use]
mod common;

use common::api::{self, stat, Api, ApiProbe, Fwd};
use common::net::{self, Pattern};
use common::{
    assert_gateway_answers_ping, assert_traffic_works, Env, Mode, Rslirp, GATEWAY, GUEST_ADDR,
    STEP_TIMEOUT, TAP,
};
use socket2::{Domain, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

both_modes!(
    garbage_frames_are_counted_and_survived,
    killed_host_server_resets_the_guest,
    killed_host_client_ends_the_guest_connection,
    container_gone_ends_rslirp,
    tap_deleted_ends_rslirp,
    udp_flood_within_1024_fds_leaves_api_and_tcp_working,
    udp_flood_with_fd_limit_raised_leaves_api_and_tcp_working,
);

// The two heavy tests run rootful only: the data path they load is the same in both
// modes, and running them twice would double the file's minutes for nothing new.
rootful_only!(
    syn_flood_leaves_bulk_and_api_responsive,
    short_connections_do_not_grow_memory,
);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

// ---- SYN flood -------------------------------------------------------------------------

const FLOOD_SYNS: usize = 20_000;
/// The flood is paced over this long (2,500 SYNs/s) so that it surrounds the loaded
/// transfer. At 5,000/s on a 2-core machine the flood's own sender and rslirp's per-SYN
/// work (a host socket opened, the oldest half-open one closed) take so much CPU that the
/// transfer drops to a third; see the issue.
const FLOOD_DURATION: Duration = Duration::from_secs(8);
/// The transfer starts once this much of the flood has gone out.
const FLOOD_HEAD_START: usize = FLOOD_SYNS / 10;
/// Large enough (about a second) that a moment of noise on a busy machine does not decide.
const UPLOAD_BYTES: u64 = 300_000_000;
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Issue #8: the control socket must answer within this during the flood.
const API_LATENCY_BOUND: Duration = Duration::from_millis(100);
/// `Limits::default().max_half_open`.
const MAX_HALF_OPEN: u64 = 1_024;

/// 20,000 SYNs from the guest towards an address that never answers (each one a half-open
/// flow in rslirp whose host connect goes nowhere) while a bulk upload runs: the upload
/// keeps at least half its unloaded rate, the control socket answers every request within
/// 100 ms, and the half-open limit holds and is counted.
fn syn_flood_leaves_bulk_and_api_responsive(mode: Mode) {
    let env = Env::new(mode);
    let api = Api::new(&env);
    let mut rslirp = api.launch(&env).start();
    let fwd = Fwd::tcp(Ipv4Addr::LOCALHOST, 8080, 80);
    api.add(&fwd);

    let unloaded = timed_upload(&env, UPLOAD_BYTES);

    let sent = Arc::new(AtomicUsize::new(0));
    let target = SocketAddrV4::new(env.black_hole_addr(), 80);
    let flood = {
        let sent = sent.clone();
        env.in_guest("syn flood", move || {
            syn_flood(target, FLOOD_SYNS, FLOOD_DURATION, &sent)
        })
    };
    let probe = ApiProbe::start(&api);
    common::process::wait_for("the flood's head start", STEP_TIMEOUT, || {
        (sent.load(Ordering::SeqCst) >= FLOOD_HEAD_START).then_some(())
    });
    let loaded = timed_upload(&env, UPLOAD_BYTES);
    let sent_by_upload_end = sent.load(Ordering::SeqCst);
    flood
        .wait(FLOOD_DURATION + STEP_TIMEOUT)
        .expect("the guest's flood");
    let latencies = probe.stop();
    let stats = api.stats();
    rslirp.assert_running();

    let rate = |took: Duration| UPLOAD_BYTES as f64 * 8.0 / took.as_secs_f64() / 1e6;
    let max_latency = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "upload {UPLOAD_BYTES} bytes: unloaded {unloaded:.2?} ({:.0} Mbit/s), during the \
         flood {loaded:.2?} ({:.0} Mbit/s); {sent_by_upload_end} of {FLOOD_SYNS} SYNs out \
         when it ended; {} API requests, max {max_latency:.1?}; stats {stats}",
        rate(unloaded),
        rate(loaded),
        latencies.len(),
    );
    assert!(
        sent_by_upload_end < FLOOD_SYNS,
        "the flood ended before the upload did: part of the upload ran unloaded"
    );
    // The share of the rate kept and the API's latency are measured, not asserted (a
    // timed assertion on a shared 2-core machine fails on noise: the rule of the brief);
    // the benchmark's `syn-flood` case compares them with slirp4netns. What is asserted:
    // the upload completed under the flood and every API request was answered (ApiProbe
    // panics on a failed one).
    if loaded > unloaded * 2 || max_latency >= API_LATENCY_BOUND {
        eprintln!(
            "NOTE: below the issue's goal this run (upload kept {:.0}% of its rate, slowest API reply {max_latency:.1?}; goal >= 50% and < {API_LATENCY_BOUND:?})",
            unloaded.as_secs_f64() / loaded.as_secs_f64() * 100.0
        );
    }
    assert!(
        latencies.len() >= 10,
        "too few API requests during the flood ({})",
        latencies.len()
    );
    // Beyond the half-open limit each SYN gives up the oldest half-open connect (a limit
    // hit, and a failed connect for the guest): every flow opened is now either given up
    // or failed, still half-open, or one of the two uploads.
    let limit_hits = stat(&stats, &["counters", "tcp_half_open_limit_hits"]);
    let failures = stat(&stats, &["counters", "tcp_connect_failures"]);
    let opened = stat(&stats, &["counters", "tcp_flows_opened"]);
    let open_now = stat(&stats, &["flows", "tcp"]);
    assert!(
        limit_hits > 0 && limit_hits <= failures,
        "SYNs beyond the half-open limit not counted: {stats}"
    );
    assert_eq!(
        failures + open_now + 2,
        opened,
        "flows unaccounted for: {stats}"
    );
    assert!(
        stat(&stats, &["flows", "tcp"]) <= MAX_HALF_OPEN,
        "more half-open flows than the limit: {stats}"
    );
    // The guest's kernel may lose SYNs to a full tap queue, never add any.
    assert!(
        opened <= FLOOD_SYNS as u64 + 2,
        "more flows than SYNs sent: {stats}"
    );
    assert!(
        api.list().contains(&fwd.entry(1)),
        "the forward is gone after the flood"
    );
}

/// Opens `count` non-blocking connects to `target`, each closed (linger 0) right after its
/// SYN left: one SYN per socket, no retransmissions, no port held in the guest. Paced
/// evenly over `over`; `sent` counts them.
fn syn_flood(
    target: SocketAddrV4,
    count: usize,
    over: Duration,
    sent: &AtomicUsize,
) -> io::Result<()> {
    let started = Instant::now();
    for i in 0..count {
        let due = started + over.mul_f64(i as f64 / count as f64);
        if let Some(ahead) = due.checked_duration_since(Instant::now()) {
            thread::sleep(ahead);
        }
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.set_linger(Some(Duration::ZERO))?;
        match socket.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        sent.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// Sends `bytes` from the guest through the gateway to a counting sink on the host
/// namespace's loopback; returns the time from the first byte written to the sink's EOF.
fn timed_upload(env: &Env, bytes: u64) -> Duration {
    let (received_tx, received_rx) = mpsc::channel();
    let sink = net::tcp_server(
        env.host_tcp_listener(Ipv4Addr::LOCALHOST),
        move |mut stream| {
            let _ = received_tx.send(count_to_eof(&mut stream).map_err(|e| e.to_string()));
        },
    );
    let mut stream = env
        .guest_connect(SocketAddrV4::new(GATEWAY, sink.port()), CONNECT_TIMEOUT)
        .expect("connect to the sink");
    let started = Instant::now();
    let sender = thread::spawn(move || -> io::Result<()> {
        let chunk = Pattern::bytes(1, 256 * 1024);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            stream.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        stream.shutdown(Shutdown::Write)
    });
    let received = received_rx
        .recv_timeout(UPLOAD_TIMEOUT)
        .expect("the sink did not reach EOF in time")
        .expect("the sink's read");
    let took = started.elapsed();
    sender.join().expect("sender").expect("the guest's send");
    assert_eq!(received, bytes, "the sink got a different length");
    took
}

/// Reads to EOF, returning the byte count (no hashing: this is for timing).
fn count_to_eof(stream: &mut impl Read) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buf)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

// ---- 100,000 short connections -----------------------------------------------------------

const SHORT_CONNECTIONS: usize = 100_000;
const FIRST_CONNECTIONS: usize = 1_000;
/// Guest threads sharing the connections (sequential would take minutes).
const WORKERS: usize = 4;
const SHORT_CONNECTIONS_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest the flows of finished connections may linger (smoltcp's TIME-WAIT is 10 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// 100,000 connections through the gateway, each one byte each way, closed by the server
/// first (as HTTP/1.0 does, so every flow passes through TIME-WAIT in rslirp). Resident
/// memory once the first 1,000 have drained and once all have drained must agree within
/// 10%: a flow must leave nothing behind.
fn short_connections_do_not_grow_memory(mode: Mode) {
    let env = Env::new(mode);
    let api = Api::new(&env);
    let rslirp = api.launch(&env).start();
    let _server = one_byte_server(&env);
    let to = SocketAddrV4::new(GATEWAY, ONE_BYTE_PORT);

    let started = Instant::now();
    short_connections(&env, to, FIRST_CONNECTIONS);
    wait_flows_drained(&api);
    let rss_first = rslirp.vm_rss_kib();
    short_connections(&env, to, SHORT_CONNECTIONS - FIRST_CONNECTIONS);
    let took = started.elapsed();
    let stats_at_end = api.stats();
    wait_flows_drained(&api);
    let rss_end = rslirp.vm_rss_kib();
    let stats = api.stats();
    eprintln!(
        "{SHORT_CONNECTIONS} connections in {took:.1?}; VmRSS after {FIRST_CONNECTIONS}: \
         {rss_first} KiB, after all: {rss_end} KiB; stats right after: {stats_at_end}; \
         drained: {stats}"
    );
    assert!(
        rss_end * 10 <= rss_first * 11,
        "VmRSS grew from {rss_first} KiB to {rss_end} KiB over {SHORT_CONNECTIONS} connections"
    );
    assert_eq!(
        stat(&stats, &["counters", "tcp_flows_opened"]),
        SHORT_CONNECTIONS as u64,
        "{stats}"
    );
}

const ONE_BYTE_PORT: u16 = 7000;

/// A server on the host namespace's loopback that, per connection, reads one byte, answers
/// one byte and closes first. A few acceptor threads, each serving inline (a thread per
/// connection would cost more than the connection).
fn one_byte_server(env: &Env) -> Vec<net::Server> {
    let listener = env.host_tcp_listener_at((Ipv4Addr::LOCALHOST, ONE_BYTE_PORT));
    (0..WORKERS)
        .map(|_| {
            let listener = listener.try_clone().expect("clone listener");
            net::tcp_server_inline(listener, |mut stream| {
                let mut byte = [0u8; 1];
                if stream.read_exact(&mut byte).is_ok() {
                    let _ = stream.write_all(&byte);
                }
            })
        })
        .collect()
}

/// `count` connections to `to` from `WORKERS` guest threads; each sends a byte, reads it
/// back and reads to the server's EOF. Panics with the first failures if any fails.
fn short_connections(env: &Env, to: SocketAddrV4, count: usize) {
    let failures = env
        .in_guest("short connections", move || {
            let next = AtomicUsize::new(0);
            thread::scope(|scope| {
                let workers: Vec<_> = (0..WORKERS)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut failures = Vec::new();
                            while next.fetch_add(1, Ordering::SeqCst) < count {
                                if let Err(e) = one_byte_exchange(to) {
                                    failures.push(e.to_string());
                                }
                            }
                            failures
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|worker| worker.join().expect("worker"))
                    .collect::<Vec<String>>()
            })
        })
        .wait(SHORT_CONNECTIONS_TIMEOUT);
    assert!(
        failures.is_empty(),
        "{} of {count} connections failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

fn one_byte_exchange(to: SocketAddrV4) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&to.into(), CONNECT_TIMEOUT)?;
    net::set_timeouts(&stream);
    stream.write_all(b"x")?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    if reply != b"x" {
        return Err(io::Error::other(format!("got {reply:?}")));
    }
    Ok(())
}

/// Waits until rslirp holds no TCP flow (TIME-WAIT included).
fn wait_flows_drained(api: &Api) {
    common::process::wait_for("TCP flows to drain", DRAIN_TIMEOUT, || {
        (stat(&api.stats(), &["flows", "tcp"]) == 0).then_some(())
    });
    // rslirp hands freed memory back at most every 10 s, after a large drop in flows
    // (event_loop.rs, TRIM_INTERVAL): what is resident is measured after that.
    thread::sleep(MEMORY_SETTLE);
}

/// rslirp's TRIM_INTERVAL plus a margin.
const MEMORY_SETTLE: Duration = Duration::from_secs(11);

// ---- garbage frames -----------------------------------------------------------------------

const GARBAGE_FRAMES: usize = 50_000;
const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];

/// 50,000 frames of garbage into the tap from the guest's side: random lengths and bytes
/// (random source MACs too), and Ethernet frames from the guest to the gateway with
/// truncated or malformed IPv4, TCP, UDP and ARP inside; last, a broken frame from a foreign
/// MAC. rslirp stays up, counts them as errors, and still carries traffic: first through a
/// forward to the (meanwhile silent) guest, whose MAC the garbage must not have replaced,
/// then from the guest.
fn garbage_frames_are_counted_and_survived(mode: Mode) {
    let env = Env::new(mode);
    let api = Api::new(&env);
    let mut rslirp = api.launch(&env).start();
    let _http = api::guest_peer_http_server(&env, 80);
    let fwd = Fwd::tcp(Ipv4Addr::LOCALHOST, 8080, 80);
    api.add(&fwd);
    // No IPv6 chatter (DAD, MLD reports) from the guest: it stays silent unless asked.
    let no_ipv6 = format!("net.ipv6.conf.{TAP}.disable_ipv6=1");
    env.guest_ok(&["sysctl", "-q", "-w", &no_ipv6]);
    assert_gateway_answers_ping(&env);
    api::peer_seen_by_guest(&env, fwd.host_target());
    let before = api.stats();

    let guest_mac = guest_tap_mac(&env);
    let (sent, refused) = env
        .in_guest("garbage sender", move || {
            send_garbage(guest_mac, GARBAGE_FRAMES)
        })
        .wait(STEP_TIMEOUT)
        .expect("the garbage sender");
    // Let rslirp read what is still queued on the tap before counting.
    thread::sleep(Duration::from_millis(300));
    let after = api.stats();
    rslirp.assert_running();
    let delta = |name: &str| {
        stat(&after, &["interfaces", "tap", name]) - stat(&before, &["interfaces", "tap", name])
    };
    eprintln!(
        "garbage: {sent} frames sent, {refused} refused by the guest's kernel; rx_packets \
         +{}, rx_errors +{}, rx_dropped +{}",
        delta("rx_packets"),
        delta("rx_errors"),
        delta("rx_dropped")
    );
    assert!(
        sent >= GARBAGE_FRAMES / 2,
        "only {sent} frames left the guest"
    );
    // The tap drops what rslirp has no time to read; of what it read, the broken part
    // (about half) must be counted as errors.
    assert!(
        delta("rx_packets") >= 1_000 && delta("rx_errors") >= delta("rx_packets") / 4,
        "too few errors counted for {sent} garbage frames: {after}"
    );
    assert!(
        delta("rx_errors") + delta("rx_dropped") <= delta("rx_packets") + 10,
        "more errors than frames: {after}"
    );
    assert!(
        api.list().contains(&fwd.entry(1)),
        "the forward is gone after the garbage"
    );
    // The guest has not sent a frame since the garbage: the forward's SYN must still find
    // its MAC.
    api::peer_seen_by_guest(&env, fwd.host_target());
    assert_traffic_works(&env);
}

/// The guest tap's MAC, as `ip link` shows it in the guest.
fn guest_tap_mac(env: &Env) -> [u8; 6] {
    let link = env.guest_ok(&["ip", "-o", "link", "show", TAP]);
    let text = link
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {link:?}"));
    let mut mac = [0u8; 6];
    for (byte, hex) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(hex, 16).expect("hex MAC");
    }
    mac
}

/// Writes `count` garbage frames to the tap through an AF_PACKET socket (this thread must
/// be in the guest's namespace). Returns (frames sent, frames the kernel refused: too short
/// for an Ethernet header or longer than the MTU).
fn send_garbage(guest_mac: [u8; 6], count: usize) -> io::Result<(usize, usize)> {
    let socket = PacketSocket::open(TAP)?;
    let mut noise = Noise(Pattern::new(8));
    let (mut sent, mut refused) = (0, 0);
    for i in 0..count {
        let frame = garbage_frame(i, guest_mac, &mut noise);
        match socket.send(&frame) {
            Ok(()) => sent += 1,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EMSGSIZE)) => {
                refused += 1
            }
            // The tap's queue is full: give rslirp a moment to read.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e),
        }
    }
    // The tap may have dropped the burst's tail; one last malformed frame from the foreign
    // MAC, after a pause, surely reaches rslirp.
    thread::sleep(Duration::from_millis(100));
    let mut last = GATEWAY_MAC.to_vec();
    last.extend_from_slice(&FOREIGN_MAC);
    last.extend_from_slice(&[0x08, 0x00, 0x45, 0x00]);
    socket.send(&last)?;
    Ok((sent + 1, refused))
}

/// Not the guest's MAC.
const FOREIGN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];

/// Deterministic random numbers and bytes for the garbage.
struct Noise(Pattern);

impl Noise {
    fn below(&mut self, n: u64) -> usize {
        let mut bytes = [0u8; 8];
        self.0.fill(&mut bytes);
        (u64::from_le_bytes(bytes) % n) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.0.fill(&mut bytes);
        bytes
    }

    /// Random bytes of a random length below `n`.
    fn bytes_below(&mut self, n: u64) -> Vec<u8> {
        let len = self.below(n);
        self.bytes(len)
    }
}

/// The `i`-th garbage frame: a third pure noise, the rest a valid Ethernet header from the
/// guest to the gateway around a broken packet of some kind.
fn garbage_frame(i: usize, guest_mac: [u8; 6], noise: &mut Noise) -> Vec<u8> {
    if i.is_multiple_of(3) {
        return noise.bytes_below(2000);
    }
    let (ethertype, payload): ([u8; 2], Vec<u8>) = match noise.below(7) {
        // Truncated IPv4 header (shorter than its 20 bytes).
        0 => ([0x08, 0x00], {
            let mut p = noise.bytes_below(20);
            if let Some(b) = p.first_mut() {
                *b = 0x45;
            }
            p
        }),
        // IPv4 header whose lengths lie (IHL or total length beyond the frame).
        1 => ([0x08, 0x00], {
            let mut p = ipv4_header(noise.below(256) as u8, noise.below(40));
            p[0] = 0x40 | noise.below(16) as u8;
            p[2..4].copy_from_slice(&(noise.below(65536) as u16).to_be_bytes());
            p.extend(noise.bytes_below(40));
            p
        }),
        // TCP shorter than its header, or with a data offset beyond the segment.
        2 => ([0x08, 0x00], {
            let tcp = noise.bytes_below(40);
            let mut p = ipv4_header(6, tcp.len());
            p.extend(tcp);
            p
        }),
        // UDP shorter than its header, or with a length field that lies.
        3 => ([0x08, 0x00], {
            let udp = noise.bytes_below(16);
            let mut p = ipv4_header(17, udp.len());
            p.extend(udp);
            p
        }),
        // ARP truncated or with nonsense sizes.
        4 => ([0x08, 0x06], noise.bytes_below(40)),
        // IPv6 truncated or lying about its payload length.
        5 => ([0x86, 0xdd], {
            let mut p = noise.bytes_below(60);
            if let Some(b) = p.first_mut() {
                *b = 0x60;
            }
            p
        }),
        // An ethertype nobody speaks.
        _ => ([0x88, 0xb5], noise.bytes_below(100)),
    };
    let mut frame = GATEWAY_MAC.to_vec();
    frame.extend_from_slice(&guest_mac);
    frame.extend_from_slice(&ethertype);
    frame.extend(payload);
    frame
}

/// A 20-byte IPv4 header from the guest to the gateway (so nothing is NATed anywhere),
/// claiming `payload_len` bytes of protocol `proto`. The checksum is left wrong on purpose
/// half the time.
fn ipv4_header(proto: u8, payload_len: usize) -> Vec<u8> {
    let total = (20 + payload_len) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&GUEST_ADDR.octets());
    h.extend_from_slice(&GATEWAY.octets());
    if payload_len.is_multiple_of(2) {
        let sum = h
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum::<u32>();
        let folded = (sum & 0xffff) + (sum >> 16);
        let checksum = !(((folded & 0xffff) + (folded >> 16)) as u16);
        h[10..12].copy_from_slice(&checksum.to_be_bytes());
    }
    h
}

/// An AF_PACKET socket that sends whole Ethernet frames out of one interface.
struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn open(ifname: &str) -> io::Result<PacketSocket> {
        let name = std::ffi::CString::new(ifname).expect("interface name");
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain socket(2) call; protocol 0 means this socket receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket {
            // SAFETY: a fresh fd that nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            ifindex: ifindex as i32,
        })
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to fill in.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        // SAFETY: `frame` is valid for its length and `addr` for the size passed.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

// ---- a host peer killed mid-transfer --------------------------------------------------------

/// Bytes that must have flowed before the peer is killed (the transfer is well under way).
const BEFORE_KILL: u64 = 10_000_000;
/// A killed peer must end the guest's connection this fast (no hang until an I/O timeout).
const RESET_BOUND: Duration = Duration::from_secs(3);
const KILL_PORT: u16 = 5201;

/// The guest streams to a host server process (ncat) through the gateway; the server is
/// killed (SIGKILL) mid-transfer; the guest's writes must fail soon after.
fn killed_host_server_resets_the_guest(mode: Mode) {
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();
    let port = KILL_PORT.to_string();
    let server = env.host_process(
        "ncat server",
        &["ncat", "--recv-only", "-l", "127.0.0.1", &port],
    );
    env.wait_host_tcp_listening(KILL_PORT);
    let mut stream = env
        .guest_connect(SocketAddrV4::new(GATEWAY, KILL_PORT), CONNECT_TIMEOUT)
        .expect("connect to the ncat server");
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let written = written.clone();
        thread::spawn(move || -> (io::Error, Instant) {
            let chunk = vec![0x5a; 64 * 1024];
            loop {
                if let Err(e) = stream.write_all(&chunk) {
                    return (e, Instant::now());
                }
                written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        })
    };
    common::process::wait_for("the transfer to get going", STEP_TIMEOUT, || {
        (written.load(Ordering::SeqCst) >= BEFORE_KILL).then_some(())
    });
    let mut server = server;
    server.signal(libc::SIGKILL);
    let killed = Instant::now();
    let ended = wait_thread(writer, RESET_BOUND + Duration::from_secs(2));
    let (error, at) = ended.unwrap_or_else(|| {
        panic!("the guest still writes {RESET_BOUND:?} after the server was killed")
    });
    let after = at.saturating_duration_since(killed);
    eprintln!("server killed: the guest's write failed after {after:.2?}: {error}");
    assert!(after < RESET_BOUND, "the reset took {after:?}");
    assert!(
        matches!(
            error.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        "expected a reset, got: {error}"
    );
    assert!(server.wait_timeout(STEP_TIMEOUT).is_some(), "ncat survived");
}

/// A host client (ncat) streams into a guest server through a port forward and is killed
/// mid-transfer; the guest's reads must end (EOF or reset) soon after.
fn killed_host_client_ends_the_guest_connection(mode: Mode) {
    let env = Env::new(mode);
    let api = Api::new(&env);
    let _rslirp = api.launch(&env).start();
    let fwd = Fwd::tcp(Ipv4Addr::LOCALHOST, KILL_PORT, 80);
    api.add(&fwd);
    let listener = env.guest_tcp_listener_at((GUEST_ADDR, 80));
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let received = received.clone();
        thread::spawn(move || -> (io::Result<()>, Instant) {
            let result = (|| {
                let (mut stream, _) = listener.accept()?;
                net::set_timeouts(&stream);
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match stream.read(&mut buf)? {
                        0 => return Ok(()),
                        n => received.fetch_add(n as u64, Ordering::SeqCst),
                    };
                }
            })();
            (result, Instant::now())
        })
    };
    let client = env.host_process(
        "ncat client",
        &[
            "sh",
            "-c",
            &format!("exec ncat --send-only 127.0.0.1 {KILL_PORT} < /dev/zero"),
        ],
    );
    common::process::wait_for("the transfer to get going", STEP_TIMEOUT, || {
        (received.load(Ordering::SeqCst) >= BEFORE_KILL).then_some(())
    });
    let mut client = client;
    client.signal(libc::SIGKILL);
    let killed = Instant::now();
    let (result, at) =
        wait_thread(reader, RESET_BOUND + Duration::from_secs(2)).unwrap_or_else(|| {
            panic!("the guest still reads {RESET_BOUND:?} after the client was killed")
        });
    let after = at.saturating_duration_since(killed);
    eprintln!("client killed: the guest's read ended after {after:.2?}: {result:?}");
    assert!(after < RESET_BOUND, "the end took {after:?}");
    if let Err(e) = result {
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    }
    assert!(client.wait_timeout(STEP_TIMEOUT).is_some(), "ncat survived");
}

/// The thread's result if it ends within `timeout` (else it is left behind: its socket
/// has I/O timeouts, so it ends on its own).
fn wait_thread<T: Send + 'static>(handle: thread::JoinHandle<T>, timeout: Duration) -> Option<T> {
    let deadline = Instant::now() + timeout;
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
    Some(handle.join().expect("thread panicked"))
}

// ---- the container taken away ---------------------------------------------------------------

/// rslirp must notice a vanished container within this. It reacts at once (the tap
/// reports an error, the pidfd becomes readable); the bound leaves room for a machine busy
/// with this file's parallel floods (3 s was once exceeded in a full run on 2 cores, while
/// the test alone takes 0.2 s; printed below as "exited after").
const GONE_BOUND: Duration = Duration::from_secs(10);

/// The container's last process dies (and, rootful, its `ip netns` name is removed). The
/// tap rslirp holds keeps the namespace alive, so the tap never fails; rslirp must still
/// end, with a clear message and status 0 (the container's end is a normal end, as the exit
/// fd's), instead of idling forever.
fn container_gone_ends_rslirp(mode: Mode) {
    let mut env = Env::new(mode);
    let mut rslirp = env.rslirp().start();
    assert_gateway_answers_ping(&env);
    let pid = env.guest_pid();
    env.destroy_guest();
    let (status, output) = wait_exit(&mut rslirp);
    assert!(status.success(), "exit status {status}: {output}");
    assert!(
        output.contains(&format!("target process {pid} exited")) && output.contains(TAP),
        "unclear message: {output}"
    );
}

/// The tap is deleted under a running rslirp: reads on it fail, and rslirp ends with a
/// clear message and a failure status.
fn tap_deleted_ends_rslirp(mode: Mode) {
    let env = Env::new(mode);
    let mut rslirp = env.rslirp().start();
    assert_gateway_answers_ping(&env);
    env.guest_ok(&["ip", "link", "del", TAP]);
    let output = assert_exits_with_error(&mut rslirp);
    assert!(
        output.contains("tap device failed") && output.contains("network namespace"),
        "unclear message: {output}"
    );
}

/// Waits (at most `GONE_BOUND`) for rslirp to exit with a failure; returns its output.
fn assert_exits_with_error(rslirp: &mut Rslirp) -> String {
    let (status, output) = wait_exit(rslirp);
    assert!(!status.success(), "exit status {status}: {output}");
    output
}

/// Waits (at most `GONE_BOUND`) for rslirp to exit; its status and output.
fn wait_exit(rslirp: &mut Rslirp) -> (std::process::ExitStatus, String) {
    let started = Instant::now();
    let status = rslirp.wait_exit(GONE_BOUND);
    let output = rslirp.output();
    eprintln!(
        "rslirp exited after {:.2?} ({status}): {}",
        started.elapsed(),
        output.lines().last().unwrap_or_default()
    );
    (status, output)
}

// ---- more flows than file descriptors (issue #16) ------------------------------------------

/// UDP flows the guest opens, each from a port of its own: more than `ulimit -n 1024`.
const FD_FLOOD_FLOWS: u16 = 1_500;
const FD_FLOOD_FIRST_PORT: u16 = 20_000;
/// Issue #16: after the flood the control socket and a new TCP connect answer within this.
const AFTER_FLOOD_BOUND: Duration = Duration::from_secs(1);

/// `ulimit -n 1024` with the hard limit at 1024 too: nothing to raise, so the reserve must
/// keep the control socket's descriptors from the guest's flows.
fn udp_flood_within_1024_fds_leaves_api_and_tcp_working(mode: Mode) {
    udp_flood_leaves_api_and_tcp_working(mode, 1024, 1024);
}

/// `ulimit -n 1024` under a hard limit of 4096: rslirp raises its soft limit to 4096.
fn udp_flood_with_fd_limit_raised_leaves_api_and_tcp_working(mode: Mode) {
    udp_flood_leaves_api_and_tcp_working(mode, 1024, 4096);
}

/// rslirp started with RLIMIT_NOFILE (soft, hard); the guest opens 1,500 UDP flows (one
/// datagram each, from distinct ports) to a host echo server; then `add_hostfwd` must
/// answer, and a new TCP connect from the guest succeed, each within a second. The UDP
/// table must have stayed within the limit rslirp logged at start (it evicts instead).
fn udp_flood_leaves_api_and_tcp_working(mode: Mode, soft: u64, hard: u64) {
    let env = Env::new(mode);
    let api = Api::new(&env);
    let mut rslirp = api.launch(&env).nofile(soft, hard).start();
    assert_eq!(
        nofile_soft_limit(rslirp.pid()),
        hard,
        "rslirp raises its soft limit to the hard one"
    );
    let max_udp_flows = logged_limit(&rslirp.output(), "max_udp_flows");
    assert!(
        max_udp_flows + 64 < soft.max(hard),
        "the UDP table leaves descriptors to the rest: max_udp_flows {max_udp_flows}"
    );
    let echo = env.host_udp_echo_server(Ipv4Addr::LOCALHOST);
    let target = SocketAddrV4::new(GATEWAY, echo.port());
    env.in_guest("UDP flow flood", move || udp_flows(target))
        .wait(STEP_TIMEOUT)
        .expect("guest UDP flood");
    // Let rslirp take in the last datagrams (it reads the tap in batches).
    thread::sleep(Duration::from_millis(300));

    let fwd = Fwd::tcp(Ipv4Addr::LOCALHOST, 8080, 80);
    let started = Instant::now();
    let reply = api.try_request(fwd.add_request().as_bytes(), api::Framing::HalfClose);
    let took = started.elapsed();
    let reply =
        reply.unwrap_or_else(|e| panic!("add_hostfwd after the flood: {e}\n{}", rslirp.output()));
    assert_eq!(String::from_utf8_lossy(&reply), api::id_reply(1));
    assert!(took <= AFTER_FLOOD_BOUND, "add_hostfwd took {took:?}");

    let tcp_echo = env.host_echo_server(Ipv4Addr::LOCALHOST);
    let started = Instant::now();
    let stream = env
        .guest_connect(
            SocketAddrV4::new(GATEWAY, tcp_echo.port()),
            AFTER_FLOOD_BOUND,
        )
        .unwrap_or_else(|e| panic!("a new TCP connect after the flood: {e}"));
    let took = started.elapsed();
    assert!(took <= AFTER_FLOOD_BOUND, "the TCP connect took {took:?}");
    let payload = Pattern::bytes(16, 1000);
    assert!(net::exchange(&stream, &payload).expect("echo") == payload);

    let stats = api.stats();
    let udp_flows = stat(&stats, &["flows", "udp"]);
    let opened = stat(&stats, &["counters", "udp_flows_opened"]);
    let evicted = stat(&stats, &["counters", "udp_flow_evictions"]);
    assert!(udp_flows <= max_udp_flows, "{stats}");
    assert!(
        opened > max_udp_flows && evicted > 0,
        "the flood went beyond the UDP table, which evicted: {stats}"
    );
    assert_eq!(
        stat(&stats, &["counters", "host_exhausted"]),
        0,
        "no host call ran out of descriptors: {stats}"
    );
    rslirp.assert_running();
}

/// One datagram from each of `FD_FLOOD_FLOWS` guest ports to `target`, paced in bursts of
/// 50 so that the guest's tap queue (500 frames) does not overflow.
fn udp_flows(target: SocketAddrV4) -> io::Result<()> {
    for i in 0..FD_FLOOD_FLOWS {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, FD_FLOOD_FIRST_PORT + i))?;
        socket.send_to(b"one flow", target)?;
        if i % 50 == 49 {
            thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// The soft "Max open files" of /proc/PID/limits.
fn nofile_soft_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
        .unwrap_or_else(|| panic!("no Max open files in {limits}"))
}

/// The value rslirp logged at start for `name` ("file descriptors: ... NAME N, ...").
fn logged_limit(output: &str, name: &str) -> u64 {
    output
        .lines()
        .filter(|line| line.contains("file descriptors:"))
        .find_map(|line| {
            let rest = &line[line.find(&format!("{name} "))? + name.len() + 1..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {name} in rslirp's start log:\n{output}"))
}

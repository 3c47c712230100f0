//! Micro-benchmarks of the pure stack on a virtual clock: what one core can push through
//! `Stack` when the host costs nothing.
//!
//! - `guest_to_host`: bulk TCP segments from the guest through `handle_frame` for an
//!   established flow, including the ACK each one produces (`poll_transmit`).
//! - `host_to_guest`: host peer data (`handle_host_event`) out as frames, with the guest's
//!   ACKs (one per two segments, as Linux sends them) fed back in.
//! - `per_packet`: one small segment with 10 and 10,000 established flows; the cost must
//!   not grow with the number of flows.
//! - `api`: control-socket requests through `handle_api_request`.
//! - `udp_eviction`: a datagram opening a new flow in a full UDP table (256 and 4,096
//!   flows), which evicts the longest idle one; the cost must not grow with the table.
//!
//! Only the stack's calls are timed (`iter_custom`): building the guest's frames and its
//! ACKs happens outside the clock. The host is [`BenchHost`], not `testing::SimHost`:
//! SimHost logs every call and copies every byte, which would be most of what we measured
//! (and its log grows without bound over millions of iterations).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration as StdDuration, Instant as StdInstant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rslirp_stack::testing::{parse, Guest, GuestTcp, TcpSegment, START};
use rslirp_stack::{
    CloseMode, Config, Datagram, Duration, FlowId, HostError, HostEvent, HostIo, HostResult,
    Instant, SourceAddr, Stack,
};

/// The gateway: TCP to it reaches the host's loopback, as iperf3 to 10.0.2.2 does.
const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 5201);
/// Guest frames built (outside the clock) per timed batch.
const BATCH: usize = 256;
/// Host data handed to the stack per `host_to_guest` iteration.
const HOST_CHUNK: usize = 64 * 1024;
/// Payload of the `per_packet` segments: small, so that per-packet overhead dominates.
const SMALL_PAYLOAD: usize = 64;
/// Virtual time per guest frame: about one full-size frame at 1 Gbit/s. It keeps smoltcp's
/// clock moving like a real one would without making timers fire.
const TICK: Duration = Duration::from_micros(10);
/// Rounds of data out / ACKs in before a `host_to_guest` iteration counts as stuck.
const MAX_ROUNDS: usize = 10_000;

/// A host whose sockets cost nothing: sends are taken whole, and reads return whatever
/// `readable` allows without copying. Everything the benchmarks do not use fails.
#[derive(Default)]
struct BenchHost {
    /// The flow of the last `tcp_connect` (how a handshake learns its flow id).
    last_connect: Option<FlowId>,
    /// Bytes the host peer has "sent" and the stack has not read yet (any flow).
    readable: usize,
    /// Bytes the stack wrote to host sockets.
    sent: u64,
}

impl HostIo for BenchHost {
    fn tcp_connect(
        &mut self,
        flow: FlowId,
        _remote: SocketAddr,
        _source: SourceAddr,
    ) -> HostResult<()> {
        self.last_connect = Some(flow);
        Ok(())
    }

    fn tcp_recv(&mut self, _flow: FlowId, buf: &mut [u8]) -> HostResult<usize> {
        let n = self.readable.min(buf.len());
        if n == 0 {
            return Err(HostError::WouldBlock);
        }
        self.readable -= n;
        Ok(n)
    }

    fn tcp_send(&mut self, _flow: FlowId, data: &[u8]) -> HostResult<usize> {
        self.sent += data.len() as u64;
        Ok(data.len())
    }

    fn tcp_shutdown_write(&mut self, _flow: FlowId) {}

    fn take_error(&mut self, _flow: FlowId) -> Option<HostError> {
        None
    }

    fn udp_open(&mut self, _: FlowId, _: SocketAddr, _: SourceAddr) -> HostResult<()> {
        Ok(())
    }

    fn udp_reconnect(&mut self, _: FlowId, _: SocketAddr, _: SourceAddr) -> HostResult<()> {
        Ok(())
    }

    fn udp_send(&mut self, _flow: FlowId, _data: &[u8], _hop_limit: u8) -> HostResult<()> {
        Ok(())
    }

    fn udp_recv(&mut self, _flow: FlowId, _buf: &mut [u8]) -> HostResult<Datagram> {
        Err(HostError::WouldBlock)
    }

    fn ping_open(&mut self, _flow: FlowId, _remote: IpAddr) -> HostResult<()> {
        Err(HostError::PermissionDenied)
    }

    fn ping_send(&mut self, _flow: FlowId, _message: &[u8], _hop_limit: u8) -> HostResult<()> {
        Err(HostError::PermissionDenied)
    }

    fn ping_recv(&mut self, _flow: FlowId, _buf: &mut [u8]) -> HostResult<Datagram> {
        Err(HostError::WouldBlock)
    }

    fn close(&mut self, _flow: FlowId, _mode: CloseMode) {}

    fn tcp_listen(&mut self, _forward: u64, _addr: SocketAddr) -> HostResult<()> {
        Ok(())
    }

    fn tcp_accept(&mut self, _forward: u64, _flow: FlowId) -> HostResult<SocketAddr> {
        Err(HostError::WouldBlock)
    }

    fn udp_bind(&mut self, _forward: u64, _addr: SocketAddr) -> HostResult<()> {
        Ok(())
    }

    fn udp_recv_from(&mut self, _forward: u64, _buf: &mut [u8]) -> HostResult<(usize, SocketAddr)> {
        Err(HostError::WouldBlock)
    }

    fn udp_send_to(&mut self, _forward: u64, _peer: SocketAddr, _data: &[u8]) -> HostResult<()> {
        Ok(())
    }

    fn forward_close(&mut self, _forward: u64) {}
}

/// A stack, its free host and the guest's established connections, on a virtual clock.
struct Bench {
    stack: Stack,
    host: BenchHost,
    guest: Guest,
    conns: Vec<(GuestTcp, FlowId)>,
    mtu: usize,
    now: Instant,
}

impl Bench {
    /// `flows` established connections from the guest to [`SERVER`], at IP MTU `mtu`.
    fn new(mtu: usize, flows: usize) -> Bench {
        let config = Config {
            mtu,
            ..Config::default()
        };
        let mut bench = Bench {
            stack: Stack::new(config.clone(), START, 1),
            host: BenchHost::default(),
            guest: Guest::new(&config.network),
            conns: Vec::with_capacity(flows),
            mtu,
            now: START,
        };
        for i in 0..flows {
            let port = 20_000 + u16::try_from(i).expect("at most 45,000 flows");
            let conn = bench.handshake(port);
            bench.conns.push(conn);
        }
        bench
    }

    /// SYN, host connect completes, SYN-ACK, ACK.
    fn handshake(&mut self, local_port: u16) -> (GuestTcp, FlowId) {
        let isn = u32::from(local_port).wrapping_mul(0x9e37_79b9);
        let mut conn = GuestTcp::new(&self.guest, local_port, SERVER, isn);
        // GuestTcp's SYN says MSS 1460 (Linux on Ethernet); a guest on a bigger tap
        // announces its MTU less 40, and the stack's segments grow with it. Our SYN, with
        // the connection's sequence moved past it as its own SYN would.
        let _ = conn.syn();
        let syn = TcpSegment {
            src_port: local_port,
            dst_port: SERVER.port(),
            seq: isn,
            syn: true,
            window: u16::MAX,
            mss: Some(u16::try_from(self.mtu - 40).unwrap_or(u16::MAX)),
            window_scale: Some(7),
            sack_permitted: true,
            ..TcpSegment::default()
        };
        self.guest_sends(&self.guest.tcp(*SERVER.ip(), &syn));
        let flow = self
            .host
            .last_connect
            .take()
            .expect("a SYN starts a connect");
        self.host_event(flow, false, true);
        for frame in self.drain() {
            conn.on_frame(&parse(&frame));
        }
        assert!(conn.established(), "no SYN-ACK for port {local_port}");
        self.guest_sends(&conn.ack());
        self.drain();
        (conn, flow)
    }

    /// One guest frame, as the event loop handles it: into the stack, then whatever is due
    /// and whatever that produced out to the "tap".
    fn guest_sends(&mut self, frame: &[u8]) {
        self.now += TICK;
        self.stack.handle_frame(self.now, frame, &mut self.host);
        self.settle(|frame| {
            black_box(frame);
        });
    }

    fn host_event(&mut self, flow: FlowId, readable: bool, writable: bool) {
        let event = HostEvent {
            flow,
            readable,
            writable,
            error: false,
            read_closed: false,
        };
        self.stack
            .handle_host_event(self.now, event, &mut self.host);
    }

    /// Poll if a timer is due, then hand every queued frame to `tap`.
    fn settle(&mut self, mut tap: impl FnMut(&[u8])) {
        if self.stack.poll_at().is_some_and(|at| at <= self.now) {
            self.stack.poll(self.now, &mut self.host);
        }
        self.stack.poll_transmit(|frame, _offload| {
            tap(frame);
            rslirp_stack::TapWrite::Sent
        });
    }

    fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        self.settle(|frame| frames.push(frame.to_vec()));
        frames
    }

    /// Times the stack handling `frames` (each followed by its output, as in the loop).
    fn timed_guest_frames(&mut self, frames: &[Vec<u8>]) -> StdDuration {
        let start = StdInstant::now();
        for frame in frames {
            self.guest_sends(frame);
        }
        start.elapsed()
    }
}

/// A [`Bench`] built on first use: criterion calls every group function even when a
/// filter skips its benchmarks, and 10,000 handshakes are not free.
struct LazyBench {
    mtu: usize,
    flows: usize,
    bench: Option<Bench>,
}

impl LazyBench {
    fn new(mtu: usize, flows: usize) -> LazyBench {
        LazyBench {
            mtu,
            flows,
            bench: None,
        }
    }

    fn get(&mut self) -> &mut Bench {
        let (mtu, flows) = (self.mtu, self.flows);
        self.bench.get_or_insert_with(|| Bench::new(mtu, flows))
    }
}

/// Runs `iters` timed guest frames, built `BATCH` at a time by `build` outside the clock.
fn guest_frames_loop(
    bench: &mut Bench,
    iters: u64,
    mut build: impl FnMut(&mut Bench, usize) -> Vec<u8>,
) -> StdDuration {
    let mut total = StdDuration::ZERO;
    let mut left = iters;
    let mut next = 0usize;
    while left > 0 {
        let n = left.min(BATCH as u64) as usize;
        let frames: Vec<Vec<u8>> = (0..n).map(|i| build(bench, next.wrapping_add(i))).collect();
        next = next.wrapping_add(n);
        total += bench.timed_guest_frames(&frames);
        left -= n as u64;
    }
    total
}

/// Bulk data from the guest: full-size segments on one flow; throughput in segments.
fn guest_to_host(c: &mut Criterion) {
    let mut group = c.benchmark_group("guest_to_host");
    group.throughput(Throughput::Elements(1));
    for mtu in [1500, 65520] {
        // IPv4 and TCP headers without options, as GuestTcp builds them.
        let payload = vec![0x5a; mtu - 40];
        let mut lazy = LazyBench::new(mtu, 1);
        group.bench_function(BenchmarkId::new("segment", format!("mtu{mtu}")), |b| {
            b.iter_custom(|iters| {
                let bench = lazy.get();
                let sent_before = bench.host.sent;
                let timed =
                    guest_frames_loop(bench, iters, |bench, _| bench.conns[0].0.send(&payload));
                // The guest's data must really go through, or we timed the drop path.
                let expected = iters * payload.len() as u64;
                assert_eq!(
                    bench.host.sent - sent_before,
                    expected,
                    "data did not reach the host"
                );
                timed
            })
        });
    }
    group.finish();
}

/// Where a frame's TCP sequence number and payload length are, for the guest's ACKs.
/// Frames from the stack are Ethernet + IPv4 (no options) + TCP.
fn tcp_data_end(frame: &[u8]) -> Option<u32> {
    const IP: usize = 14;
    const TCP: usize = IP + 20;
    let ip_total = usize::from(u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]));
    let seq = u32::from_be_bytes(frame.get(TCP + 4..TCP + 8)?.try_into().ok()?);
    let tcp_header = usize::from(frame.get(TCP + 12)? >> 4) * 4;
    let payload = ip_total.checked_sub(20 + tcp_header)?;
    (payload > 0).then(|| seq.wrapping_add(payload as u32))
}

/// The guest's receiving side for `host_to_guest`: ACKs every second data segment, as
/// Linux does (each ACK acknowledges up to the end of its second segment).
struct GuestReceiver {
    guest: Guest,
    local_port: u16,
    /// The guest's own next sequence number (it sends no data).
    seq: u32,
    /// Where each data segment received since the last ACKs ended.
    unacked_ends: Vec<u32>,
}

impl GuestReceiver {
    fn new(guest: Guest, conn: &GuestTcp) -> GuestReceiver {
        GuestReceiver {
            guest,
            local_port: conn.local_port,
            seq: conn.next_seq(),
            unacked_ends: Vec::new(),
        }
    }

    /// Notes a data segment (only its end matters: the stack sends in order).
    fn on_data(&mut self, end: u32) {
        self.unacked_ends.push(end);
    }

    /// The ACKs the guest owes after a burst: one per two segments, and one for an odd
    /// last segment (Linux's delayed-ACK timer would send it).
    fn acks(&mut self) -> Vec<Vec<u8>> {
        let acks = self
            .unacked_ends
            .chunks(2)
            .filter_map(|pair| pair.last())
            .map(|&ack| {
                self.guest
                    .tcp_segment(self.local_port, SERVER, "", self.seq, Some(ack), &[])
            })
            .collect();
        self.unacked_ends.clear();
        acks
    }
}

/// One `host_to_guest` iteration: HOST_CHUNK bytes from the host peer until the guest has
/// them all. Returns the time spent in the stack.
fn host_chunk_to_guest(bench: &mut Bench, receiver: &mut GuestReceiver) -> StdDuration {
    let flow = bench.conns[0].1;
    bench.host.readable += HOST_CHUNK;
    let mut timed = StdDuration::ZERO;
    let start = StdInstant::now();
    bench.now += TICK;
    bench.host_event(flow, true, false);
    bench.settle(|frame| {
        if let Some(end) = tcp_data_end(frame) {
            receiver.on_data(end);
        }
    });
    timed += start.elapsed();
    for _ in 0..MAX_ROUNDS {
        let acks = receiver.acks();
        if acks.is_empty() && bench.host.readable == 0 {
            return timed;
        }
        let start = StdInstant::now();
        for ack in &acks {
            bench.now += TICK;
            bench.stack.handle_frame(bench.now, ack, &mut bench.host);
            bench.settle(|frame| {
                if let Some(end) = tcp_data_end(frame) {
                    receiver.on_data(end);
                }
            });
        }
        timed += start.elapsed();
    }
    panic!("host_to_guest: the stack stopped sending with data left");
}

/// Bulk data from the host peer to the guest; throughput in bytes.
fn host_to_guest(c: &mut Criterion) {
    let mut group = c.benchmark_group("host_to_guest");
    group.throughput(Throughput::Bytes(HOST_CHUNK as u64));
    for mtu in [1500, 65520] {
        let mut lazy = LazyBench::new(mtu, 1);
        let mut receiver = None;
        group.bench_function(BenchmarkId::new("64KiB", format!("mtu{mtu}")), |b| {
            b.iter_custom(|iters| {
                let bench = lazy.get();
                let receiver = receiver
                    .get_or_insert_with(|| GuestReceiver::new(bench.guest, &bench.conns[0].0));
                (0..iters)
                    .map(|_| host_chunk_to_guest(bench, receiver))
                    .sum()
            })
        });
    }
    group.finish();
}

/// One small segment (and its ACK) per iteration, with 10 and 10,000 established flows:
/// always to the same flow, and round-robin over all of them (which adds cache misses but
/// must not add a scan).
fn per_packet(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_packet");
    group.throughput(Throughput::Elements(1));
    let payload = [0x5a; SMALL_PAYLOAD];
    for flows in [10, 10_000] {
        let mut lazy = LazyBench::new(1500, flows);
        group.bench_function(BenchmarkId::new("one_flow", flows), |b| {
            b.iter_custom(|iters| {
                guest_frames_loop(lazy.get(), iters, |bench, _| {
                    bench.conns[0].0.send(&payload)
                })
            })
        });
        group.bench_function(BenchmarkId::new("round_robin", flows), |b| {
            b.iter_custom(|iters| {
                guest_frames_loop(lazy.get(), iters, |bench, i| {
                    let n = bench.conns.len();
                    bench.conns[i % n].0.send(&payload)
                })
            })
        });
    }
    group.finish();
}

/// Control-socket requests: listing ten forwards, and adding then removing one.
fn api(c: &mut Criterion) {
    let mut group = c.benchmark_group("api");
    let mut bench = Bench::new(1500, 0);
    for port in 0..10 {
        let request = add_request(8000 + port);
        let reply = bench
            .stack
            .handle_api_request(bench.now, request.as_bytes(), &mut bench.host);
        assert!(reply.starts_with(b"{\"return\":{\"id\""), "add failed");
    }
    let list = br#"{"execute":"list_hostfwd"}"#;
    group.bench_function("list_hostfwd_10", |b| {
        b.iter(|| {
            bench
                .stack
                .handle_api_request(bench.now, black_box(list), &mut bench.host)
        })
    });
    let add = add_request(9000);
    // Ids count up and are never reused: the removal names the id just added.
    let mut next_id = 11u64;
    group.bench_function("add_remove_hostfwd", |b| {
        b.iter(|| {
            let stack = &mut bench.stack;
            let added = stack.handle_api_request(bench.now, add.as_bytes(), &mut bench.host);
            let remove =
                format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{next_id}}}}}"#);
            let removed = stack.handle_api_request(bench.now, remove.as_bytes(), &mut bench.host);
            next_id += 1;
            (added, removed)
        })
    });
    assert_eq!(
        bench.stack.forwards().count(),
        10,
        "add/remove lost a forward"
    );
    group.finish();
}

fn add_request(host_port: u16) -> String {
    format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"0.0.0.0","host_port":{host_port},"guest_port":80}}}}"#
    )
}

/// A full UDP table: every datagram comes from a new guest port, so it opens a flow and
/// the flow idle the longest is evicted. This was a scan of every flow (O(n) per datagram).
fn udp_eviction(c: &mut Criterion) {
    let mut group = c.benchmark_group("udp_eviction");
    group.throughput(Throughput::Elements(1));
    for flows in [256usize, 4096] {
        let mut config = Config::default();
        config.limits.max_udp_flows = flows;
        let guest = Guest::new(&config.network);
        let mut stack = Stack::new(config, START, 1);
        let mut host = BenchHost::default();
        let mut now = START;
        let mut next = 0u32;
        // A new (guest port, remote port) pair for each datagram.
        let frame = |n: u32| {
            let port = 1024 + u16::try_from(n % 60_000).expect("below 60,000");
            let remote = 9000 + u16::try_from(n / 60_000 % 50_000).expect("below 50,000");
            guest.udp(
                port,
                SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), remote),
                b"x",
            )
        };
        for _ in 0..flows {
            stack.handle_frame(now, &frame(next), &mut host);
            next += 1;
            now += TICK;
        }
        assert_eq!(stack.stats().udp_flows, flows as u64, "the table is full");
        group.bench_function(BenchmarkId::new("new_flow", flows), |b| {
            b.iter_custom(|iters| {
                let frames: Vec<Vec<u8>> = (0..iters)
                    .map(|_| {
                        next = next.wrapping_add(1);
                        frame(next)
                    })
                    .collect();
                let started = StdInstant::now();
                for f in &frames {
                    stack.handle_frame(now, f, &mut host);
                    now += TICK;
                }
                started.elapsed()
            })
        });
        assert_eq!(stack.stats().udp_flows, flows as u64);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the whole suite stays at about a minute on two shared cores.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(StdDuration::from_secs(1))
        .measurement_time(StdDuration::from_secs(3));
    targets = guest_to_host, host_to_guest, per_packet, api, udp_eviction
}
criterion_main!(benches);

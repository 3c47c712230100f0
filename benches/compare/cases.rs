//! What is measured, and how. Each case gets a freshly started helper in a fresh world;
//! iperf3 does the bulk transfers, the rest is small clients and servers on threads here
//! (no interpreter between the sockets, so the latency is the helper's, not ours).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use socket2::{Domain, SockRef, Socket, Type};

use crate::helper::{Forward, Options, Proto, Running};
use crate::sys;
use crate::syscalls::{self, Gate};
use crate::world::World;

/// The gateway as the container sees it; it reaches the host namespace's 127.0.0.1.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const IPERF_PORT: u16 = 5201;
/// Host→guest: this host port is published to the container's iperf3 port.
const FORWARD: Forward = Forward {
    proto: Proto::Tcp,
    host_port: 15201,
    guest_port: IPERF_PORT,
};
/// Host→guest UDP: the same ports, published for UDP.
const UDP_FORWARD: Forward = Forward {
    proto: Proto::Udp,
    ..FORWARD
};
/// The MTU of the cases that are not about bulk throughput (slirp4netns's default).
const DEFAULT_MTU: usize = 1500;
/// Round trips before the measured ones (connection warm-up, caches, CPU clocks).
const WARMUP_ROUND_TRIPS: usize = 100;
/// Time for memory to settle before VmRSS is read.
const RSS_SETTLE: Duration = Duration::from_millis(500);
/// No single socket operation of a client or server waits longer than this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection failures tolerated in the connection-rate loop before the case fails.
const MAX_CONNECT_ERRORS: u32 = 10;
/// A UDP request without an answer within this long counts as lost (and is not a sample).
const UDP_REPLY_TIMEOUT: Duration = Duration::from_millis(500);
/// Lost UDP round trips tolerated before the case fails.
const MAX_UDP_LOSSES: u32 = 10;
/// Connections before the counted ones in the syscall pass.
const WARMUP_CONNECTIONS: usize = 20;

/// Sizes of the run, from the environment (see main.rs).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub iperf_secs: u32,
    pub round_trips: usize,
    pub conn_rate_secs: u32,
    pub flows: usize,
    /// Round trips and connections of each syscall-counting pass.
    pub syscall_ops: usize,
}

/// One row of the result table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    GuestToHost1500,
    GuestToHost65520,
    HostToGuest1500,
    HostToGuest65520,
    LatencyP50,
    LatencyP99,
    LatencyH2gP50,
    LatencyH2gP99,
    UdpP50,
    UdpP99,
    UdpH2gP50,
    UdpH2gP99,
    ConnRate,
    ConnRateH2g,
    CpuPerConnection,
    CpuPerConnectionH2g,
    CpuPerRoundTrip,
    Ready,
    IdleRss,
    FlowsRss,
    RssPerFlow,
    SyscallsTcpRoundTrip,
    SyscallsUdpRoundTrip,
    SyscallsConnection,
    FloodBulkShare,
    FloodApiMax,
    FloodSynRate,
}

impl Metric {
    pub const ALL: [Metric; 27] = [
        Metric::GuestToHost1500,
        Metric::GuestToHost65520,
        Metric::HostToGuest1500,
        Metric::HostToGuest65520,
        Metric::LatencyP50,
        Metric::LatencyP99,
        Metric::LatencyH2gP50,
        Metric::LatencyH2gP99,
        Metric::UdpP50,
        Metric::UdpP99,
        Metric::UdpH2gP50,
        Metric::UdpH2gP99,
        Metric::ConnRate,
        Metric::ConnRateH2g,
        Metric::CpuPerConnection,
        Metric::CpuPerConnectionH2g,
        Metric::CpuPerRoundTrip,
        Metric::Ready,
        Metric::IdleRss,
        Metric::FlowsRss,
        Metric::RssPerFlow,
        Metric::SyscallsTcpRoundTrip,
        Metric::SyscallsUdpRoundTrip,
        Metric::SyscallsConnection,
        Metric::FloodBulkShare,
        Metric::FloodApiMax,
        Metric::FloodSynRate,
    ];

    pub fn label(self, settings: &Settings) -> String {
        match self {
            Metric::GuestToHost1500 => "iperf3 guest→host, MTU 1500 (Gbit/s)".into(),
            Metric::GuestToHost65520 => "iperf3 guest→host, MTU 65520 (Gbit/s)".into(),
            Metric::HostToGuest1500 => "iperf3 host→guest via forward, MTU 1500 (Gbit/s)".into(),
            Metric::HostToGuest65520 => "iperf3 host→guest via forward, MTU 65520 (Gbit/s)".into(),
            Metric::LatencyP50 => "TCP 1-byte round trip p50 (µs)".into(),
            Metric::LatencyP99 => "TCP 1-byte round trip p99 (µs)".into(),
            Metric::LatencyH2gP50 => "TCP 1-byte round trip host→guest via forward p50 (µs)".into(),
            Metric::LatencyH2gP99 => "TCP 1-byte round trip host→guest via forward p99 (µs)".into(),
            Metric::UdpP50 => "UDP 1-byte round trip guest→host p50 (µs)".into(),
            Metric::UdpP99 => "UDP 1-byte round trip guest→host p99 (µs)".into(),
            Metric::UdpH2gP50 => "UDP 1-byte round trip host→guest via forward p50 (µs)".into(),
            Metric::UdpH2gP99 => "UDP 1-byte round trip host→guest via forward p99 (µs)".into(),
            Metric::ConnRate => "TCP connections/s (connect, 1 byte each way, close)".into(),
            Metric::ConnRateH2g => "TCP connections/s host→guest via forward".into(),
            Metric::CpuPerConnection => "helper CPU per TCP connection guest→host (µs)".into(),
            Metric::CpuPerConnectionH2g => {
                "helper CPU per TCP connection host→guest via forward (µs)".into()
            }
            Metric::CpuPerRoundTrip => {
                "helper CPU per TCP 1-byte round trip guest→host (µs)".into()
            }
            Metric::Ready => "start to ready signal (ms)".into(),
            Metric::IdleRss => "RSS idle (KiB)".into(),
            Metric::FlowsRss => format!("RSS with {} open TCP flows (KiB)", settings.flows),
            Metric::RssPerFlow => "RSS per open idle TCP flow (KiB)".into(),
            Metric::SyscallsTcpRoundTrip => {
                "helper syscalls per TCP 1-byte round trip guest→host".into()
            }
            Metric::SyscallsUdpRoundTrip => {
                "helper syscalls per UDP 1-byte round trip guest→host".into()
            }
            Metric::SyscallsConnection => "helper syscalls per TCP connection guest→host".into(),
            Metric::FloodBulkShare => {
                "SYN flood to an answering port: bulk guest→host kept (% of unflooded)".into()
            }
            Metric::FloodApiMax => "SYN flood: slowest control-socket reply (ms)".into(),
            Metric::FloodSynRate => "SYN flood: SYNs the guest sent (per s)".into(),
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::GuestToHost1500
                | Metric::GuestToHost65520
                | Metric::HostToGuest1500
                | Metric::HostToGuest65520
                | Metric::ConnRate
                | Metric::ConnRateH2g
                | Metric::FloodBulkShare
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The container's iperf3 client to a server on the host's 127.0.0.1 via 10.0.2.2.
    GuestToHost,
    /// A host iperf3 client to the container's server through a published port.
    HostToGuest,
}

#[derive(Debug, Clone, Copy)]
pub enum Case {
    Throughput {
        direction: Direction,
        mtu: usize,
    },
    Latency,
    /// TCP 1-byte round trips from the host namespace to the container through a forward.
    LatencyHostToGuest,
    UdpLatency,
    UdpLatencyHostToGuest,
    ConnRate,
    ConnRateHostToGuest,
    Memory,
    /// The helper's system calls per round trip and per connection (strace, untimed).
    Syscalls,
    /// A SYN flood from the container to an answering host port while a bulk upload runs
    /// and the control socket is polled (issue #16 §5).
    SynFlood,
}

impl Case {
    pub const ALL: [Case; 13] = [
        Case::Throughput {
            direction: Direction::GuestToHost,
            mtu: 1500,
        },
        Case::Throughput {
            direction: Direction::GuestToHost,
            mtu: 65520,
        },
        Case::Throughput {
            direction: Direction::HostToGuest,
            mtu: 1500,
        },
        Case::Throughput {
            direction: Direction::HostToGuest,
            mtu: 65520,
        },
        Case::Latency,
        Case::LatencyHostToGuest,
        Case::UdpLatency,
        Case::UdpLatencyHostToGuest,
        Case::ConnRate,
        Case::ConnRateHostToGuest,
        Case::Memory,
        Case::Syscalls,
        Case::SynFlood,
    ];

    pub fn name(&self) -> String {
        match self {
            Case::Throughput {
                direction: Direction::GuestToHost,
                mtu,
            } => format!("guest-to-host-{mtu}"),
            Case::Throughput {
                direction: Direction::HostToGuest,
                mtu,
            } => format!("host-to-guest-{mtu}"),
            Case::Latency => "latency".into(),
            Case::LatencyHostToGuest => "latency-host-to-guest".into(),
            Case::UdpLatency => "udp-latency".into(),
            Case::UdpLatencyHostToGuest => "udp-host-to-guest".into(),
            Case::ConnRate => "conn-rate".into(),
            Case::ConnRateHostToGuest => "conn-rate-host-to-guest".into(),
            Case::Memory => "memory".into(),
            Case::Syscalls => "syscalls".into(),
            Case::SynFlood => "syn-flood".into(),
        }
    }

    /// How the helper must be started for this case.
    pub fn options(&self) -> Options {
        match *self {
            Case::Throughput { direction, mtu } => Options {
                mtu,
                forward: (direction == Direction::HostToGuest).then_some(FORWARD),
                api: false,
            },
            _ => Options {
                mtu: DEFAULT_MTU,
                forward: match self {
                    Case::LatencyHostToGuest | Case::ConnRateHostToGuest => Some(FORWARD),
                    Case::UdpLatencyHostToGuest => Some(UDP_FORWARD),
                    _ => None,
                },
                api: matches!(self, Case::SynFlood),
            },
        }
    }

    /// Runs the case against a started helper; returns what it measured. `scratch` is a
    /// directory for files of the run (strace's summaries).
    pub fn run(
        &self,
        world: &World,
        helper: &mut Running,
        settings: &Settings,
        scratch: &Path,
    ) -> Result<Measured, String> {
        let g2h = Route::new(world, Direction::GuestToHost);
        let h2g = Route::new(world, Direction::HostToGuest);
        let mut details = Vec::new();
        let samples = match *self {
            Case::Throughput { direction, mtu } => {
                let metric = match (direction, mtu) {
                    (Direction::GuestToHost, 1500) => Metric::GuestToHost1500,
                    (Direction::GuestToHost, _) => Metric::GuestToHost65520,
                    (Direction::HostToGuest, 1500) => Metric::HostToGuest1500,
                    (Direction::HostToGuest, _) => Metric::HostToGuest65520,
                };
                vec![(metric, iperf3(world, direction, settings.iperf_secs)?)]
            }
            Case::Latency => {
                let cpu = sys::CpuClock::start(helper.pid());
                let (p50, p99) = tcp_round_trips(&g2h, settings.round_trips, Gate::open())?;
                let per_trip = cpu.per_op_us(WARMUP_ROUND_TRIPS + settings.round_trips);
                vec![
                    (Metric::LatencyP50, p50),
                    (Metric::LatencyP99, p99),
                    (Metric::CpuPerRoundTrip, per_trip?),
                ]
            }
            Case::LatencyHostToGuest => {
                let (p50, p99) = tcp_round_trips(&h2g, settings.round_trips, Gate::open())?;
                vec![(Metric::LatencyH2gP50, p50), (Metric::LatencyH2gP99, p99)]
            }
            Case::UdpLatency => {
                let (p50, p99) = udp_round_trips(&g2h, settings.round_trips, Gate::open())?;
                vec![(Metric::UdpP50, p50), (Metric::UdpP99, p99)]
            }
            Case::UdpLatencyHostToGuest => {
                let (p50, p99) = udp_round_trips(&h2g, settings.round_trips, Gate::open())?;
                vec![(Metric::UdpH2gP50, p50), (Metric::UdpH2gP99, p99)]
            }
            Case::ConnRate | Case::ConnRateHostToGuest => {
                let (route, rate_metric, cpu_metric) = match *self {
                    Case::ConnRate => (&g2h, Metric::ConnRate, Metric::CpuPerConnection),
                    _ => (&h2g, Metric::ConnRateH2g, Metric::CpuPerConnectionH2g),
                };
                let amount = Amount::For(Duration::from_secs(settings.conn_rate_secs.into()));
                let cpu = sys::CpuClock::start(helper.pid());
                let conns = conn_rate(route, amount, Gate::open())?;
                let per_conn = cpu.per_op_us(conns.count)?;
                vec![(rate_metric, conns.rate), (cpu_metric, per_conn)]
            }
            Case::Memory => memory(world, helper.pid(), settings.flows, &mut details)?,
            Case::Syscalls => count_syscalls(&g2h, helper.pid(), settings, scratch, &mut details)?,
            Case::SynFlood => syn_flood(world, helper.api_socket.clone(), settings)?,
        };
        // A helper that crashed during the case would make its numbers meaningless.
        helper.check_alive()?;
        Ok(Measured { samples, details })
    }
}

/// What one case measured against one helper.
pub struct Measured {
    pub samples: Vec<(Metric, f64)>,
    /// Lines for the detailed output (the syscall breakdowns).
    pub details: Vec<String>,
}

/// Which way a request/response case goes, and where its two ends live: guest→host is a
/// client in the container dialling 10.0.2.2 to a server on the host namespace's 127.0.0.1;
/// host→guest is a client in the host namespace dialling its own non-loopback address at
/// the forward's host port, to a server on the forward's port in the container.
#[derive(Clone)]
struct Route {
    direction: Direction,
    host_netns: PathBuf,
    guest_netns: PathBuf,
    host_addr: Ipv4Addr,
}

impl Route {
    fn new(world: &World, direction: Direction) -> Route {
        Route {
            direction,
            host_netns: world.host.path(),
            guest_netns: world.guest_netns(),
            host_addr: world.host_addr,
        }
    }

    /// The server's namespace and the address it binds.
    fn server(&self) -> (PathBuf, SocketAddrV4) {
        match self.direction {
            Direction::GuestToHost => (
                self.host_netns.clone(),
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            ),
            Direction::HostToGuest => (
                self.guest_netns.clone(),
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, FORWARD.guest_port),
            ),
        }
    }

    /// Where the client dials, given the port the server got.
    fn target(&self, server_port: u16) -> SocketAddrV4 {
        match self.direction {
            Direction::GuestToHost => SocketAddrV4::new(GATEWAY, server_port),
            Direction::HostToGuest => SocketAddrV4::new(self.host_addr, FORWARD.host_port),
        }
    }

    /// Runs `client` on a thread in the client's namespace.
    fn client<T: Send + 'static>(
        &self,
        what: &str,
        timeout: Duration,
        client: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let netns = match self.direction {
            Direction::GuestToHost => self.guest_netns.clone(),
            Direction::HostToGuest => self.host_netns.clone(),
        };
        sys::in_netns(netns, what, client).wait(timeout)
    }
}

/// Where a command runs: the host namespace or the container's.
#[derive(Clone, Copy)]
enum Side {
    Host,
    Guest,
}

fn cmd_in(world: &World, side: Side, args: &[&str]) -> Command {
    match side {
        Side::Host => world.host_cmd(args),
        Side::Guest => world.guest_cmd(args),
    }
}

/// Throughput in Gbit/s as iperf3's receiver counted it.
fn iperf3(world: &World, direction: Direction, secs: u32) -> Result<f64, String> {
    let (server_side, client_side, target, port) = match direction {
        Direction::GuestToHost => (Side::Host, Side::Guest, GATEWAY, IPERF_PORT),
        Direction::HostToGuest => (Side::Guest, Side::Host, world.host_addr, FORWARD.host_port),
    };
    let port_arg = IPERF_PORT.to_string();
    let mut server_args = vec!["iperf3", "--server", "--port", &port_arg];
    if let Side::Host = server_side {
        server_args.extend(["--bind", "127.0.0.1"]);
    }
    let mut server = cmd_in(world, server_side, &server_args);
    server
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = sys::spawn(&mut server).map_err(|e| format!("start iperf3 server: {e}"))?;
    wait_listening(world, server_side, IPERF_PORT)?;

    let timeout = Duration::from_secs(u64::from(secs) + 30);
    let (target, port, secs) = (target.to_string(), port.to_string(), secs.to_string());
    #[rustfmt::skip]
    let mut client = cmd_in(world, client_side, &[
        "iperf3", "--client", &target, "--port", &port,
        "--time", &secs, "--omit", "1", "--json",
    ]);
    // With --json, iperf3 reports its errors in the JSON too (and exits non-zero).
    let out = sys::run(&mut client, timeout)?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        format!(
            "iperf3 ({}) gave no JSON ({e}): {}",
            out.status,
            stderr.trim()
        )
    })?;
    if let Some(error) = report.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {error}"));
    }
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .ok_or_else(|| "iperf3 JSON without end.sum_received.bits_per_second".to_string())
}

/// Waits until something listens on TCP `port` on `side` (the server is up).
fn wait_listening(world: &World, side: Side, port: u16) -> Result<(), String> {
    let filter = format!("sport = :{port}");
    sys::wait_for("the iperf3 server", Duration::from_secs(10), || {
        let mut ss = cmd_in(world, side, &["ss", "-Hltn", &filter]);
        let out = sys::run(&mut ss, Duration::from_secs(5)).ok()?;
        (!out.stdout.is_empty()).then_some(())
    })
}

/// A server thread on the host namespace's 127.0.0.1 (or, with `start_at`, anywhere);
/// `serve` gets the listener and returns what the case needs back.
struct HostServer<T> {
    port: u16,
    /// A second handle on the listening socket, to wake a blocked `accept` when done.
    listener: TcpListener,
    thread: JoinHandle<T>,
}

impl<T: Send + 'static> HostServer<T> {
    fn start(
        world: &World,
        serve: impl FnOnce(TcpListener) -> T + Send + 'static,
    ) -> Result<HostServer<T>, String> {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        HostServer::start_at(world.host.path(), addr, serve)
    }

    /// A server listening on `addr` in the network namespace at `netns`.
    fn start_at(
        netns: PathBuf,
        addr: SocketAddrV4,
        serve: impl FnOnce(TcpListener) -> T + Send + 'static,
    ) -> Result<HostServer<T>, String> {
        let listener = sys::in_netns(netns, "listener", move || {
            TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))
        })
        .wait(IO_TIMEOUT)?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let handle = listener.try_clone().map_err(|e| e.to_string())?;
        let thread = thread::spawn(move || serve(listener));
        Ok(HostServer {
            port,
            listener: handle,
            thread,
        })
    }

    /// Gives the thread `grace` to end by itself, then stops accepting (shutdown(2) on a
    /// listening socket makes a blocked `accept` fail, which ends every serve loop) and
    /// returns the thread's result.
    fn finish(self, grace: Duration) -> Result<T, String> {
        let ended = |deadline: Instant| {
            while !self.thread.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            self.thread.is_finished()
        };
        if !ended(Instant::now() + grace) {
            let _ = SockRef::from(&self.listener).shutdown(std::net::Shutdown::Both);
            if !ended(Instant::now() + IO_TIMEOUT) {
                return Err("host server thread did not stop".into());
            }
        }
        self.thread
            .join()
            .map_err(|_| "host server thread panicked".to_string())
    }
}

fn accept(listener: &TcpListener) -> Option<TcpStream> {
    let (stream, _) = listener.accept().ok()?;
    stream.set_nodelay(true).ok()?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
    Some(stream)
}

/// A client connection from the container through the gateway to the host's `port`.
fn connect_via_gateway(port: u16) -> Result<TcpStream, String> {
    connect(SocketAddrV4::new(GATEWAY, port))
}

/// A client connection to `target`, from the namespace of the calling thread.
fn connect(target: SocketAddrV4) -> Result<TcpStream, String> {
    let addr = SocketAddr::V4(target);
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Runs `client` on a thread in the container's network namespace.
fn in_guest<T: Send + 'static>(
    world: &World,
    what: &str,
    timeout: Duration,
    client: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    sys::in_netns(world.guest_netns(), what, client).wait(timeout)
}

/// 1-byte ping-pong over one TCP connection along `route`; p50 and p99 of the round trip
/// in µs. The gate is passed before the measured round trips and after them.
fn tcp_round_trips(route: &Route, round_trips: usize, gate: Gate) -> Result<(f64, f64), String> {
    let (netns, bind) = route.server();
    let server = HostServer::start_at(netns, bind, |listener| {
        let Some(mut stream) = accept(&listener) else {
            return;
        };
        let mut byte = [0u8; 1];
        while stream.read_exact(&mut byte).is_ok() && stream.write_all(&byte).is_ok() {}
    })?;
    let target = route.target(server.port);
    let rtts = route.client("latency client", Duration::from_secs(120), move || {
        let mut stream = connect(target)?;
        let mut byte = [7u8; 1];
        let mut rtts = Vec::with_capacity(round_trips);
        for i in 0..WARMUP_ROUND_TRIPS + round_trips {
            if i == WARMUP_ROUND_TRIPS {
                gate.pass()?;
            }
            let start = Instant::now();
            stream.write_all(&byte).map_err(|e| e.to_string())?;
            stream.read_exact(&mut byte).map_err(|e| e.to_string())?;
            if i >= WARMUP_ROUND_TRIPS {
                rtts.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
        gate.pass()?;
        Ok(rtts)
    });
    // The server ends at the client's EOF.
    server.finish(IO_TIMEOUT)?;
    percentiles(rtts?)
}

/// p50 and p99 of the samples.
fn percentiles(mut samples: Vec<f64>) -> Result<(f64, f64), String> {
    if samples.is_empty() {
        return Err("no samples".into());
    }
    samples.sort_by(f64::total_cmp);
    Ok((percentile(&samples, 50.0), percentile(&samples, 99.0)))
}

/// A UDP echo server on a thread: every datagram goes back to its sender.
struct UdpEcho {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(), String>>,
}

impl UdpEcho {
    /// How often the server looks at its stop flag.
    const STOP_POLL: Duration = Duration::from_millis(50);

    fn start(netns: PathBuf, addr: SocketAddrV4) -> Result<UdpEcho, String> {
        let socket = sys::in_netns(netns, "UDP echo socket", move || {
            UdpSocket::bind(addr).map_err(|e| format!("bind UDP {addr}: {e}"))
        })
        .wait(IO_TIMEOUT)?;
        socket
            .set_read_timeout(Some(UdpEcho::STOP_POLL))
            .map_err(|e| e.to_string())?;
        let port = socket.local_addr().map_err(|e| e.to_string())?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    match socket.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            socket
                                .send_to(&buf[..n], from)
                                .map_err(|e| format!("UDP echo to {from}: {e}"))?;
                        }
                        Err(e) if is_timeout(&e) => {}
                        Err(e) => return Err(format!("UDP echo: {e}")),
                    }
                }
                Ok(())
            })
        };
        Ok(UdpEcho { port, stop, thread })
    }

    fn finish(self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "UDP echo thread panicked".to_string())?
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// 1-byte UDP request/response along `route` (DNS-like: one datagram each way); p50 and
/// p99 of the round trip in µs. A request without an answer within `UDP_REPLY_TIMEOUT` is
/// lost: not a sample, and tolerated `MAX_UDP_LOSSES` times. Each request carries a
/// sequence byte, so that a late answer is not taken for the next one's.
fn udp_round_trips(route: &Route, round_trips: usize, gate: Gate) -> Result<(f64, f64), String> {
    let (netns, bind) = route.server();
    let echo = UdpEcho::start(netns, bind)?;
    let target = route.target(echo.port);
    let rtts = route.client("UDP client", Duration::from_secs(120), move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| e.to_string())?;
        socket.connect(target).map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(UDP_REPLY_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut rtts = Vec::with_capacity(round_trips);
        let (mut answered, mut lost, mut seq, mut measuring) = (0usize, 0u32, 0u8, false);
        while answered < WARMUP_ROUND_TRIPS + round_trips {
            if answered == WARMUP_ROUND_TRIPS && !measuring {
                gate.pass()?;
                measuring = true;
            }
            seq = seq.wrapping_add(1);
            let start = Instant::now();
            socket.send(&[seq]).map_err(|e| format!("UDP send: {e}"))?;
            let mut reply = [0u8; 16];
            let got = loop {
                match socket.recv(&mut reply) {
                    Ok(1) if reply[0] == seq => break true,
                    // A late answer to a lost request.
                    Ok(_) => {}
                    Err(e) if is_timeout(&e) => break false,
                    // An ICMP error for an earlier datagram (the helper not ready yet).
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break false,
                    Err(e) => return Err(format!("UDP receive: {e}")),
                }
            };
            if got {
                if measuring {
                    rtts.push(start.elapsed().as_secs_f64() * 1e6);
                }
                answered += 1;
            } else {
                lost += 1;
                if lost > MAX_UDP_LOSSES {
                    return Err(format!("{lost} UDP requests without an answer"));
                }
            }
        }
        gate.pass()?;
        Ok(rtts)
    });
    echo.finish()?;
    percentiles(rtts?)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How long a connection-rate client runs.
#[derive(Clone, Copy)]
enum Amount {
    /// As many connections as fit in this time (the timed case).
    For(Duration),
    /// `warmup` connections, the gate, `count` connections, the gate (the syscall pass).
    Count { warmup: usize, count: usize },
}

/// What a connection-rate client did.
struct Connections {
    /// Per second, over the measured ones.
    rate: f64,
    /// All of them, warm-up included (what the helper's CPU time covers).
    count: usize,
}

/// Short connections per second along `route`: connect, send a byte, read the reply,
/// close; one at a time.
fn conn_rate(route: &Route, amount: Amount, gate: Gate) -> Result<Connections, String> {
    let (netns, bind) = route.server();
    let server = HostServer::start_at(netns, bind, |listener| {
        while let Some(mut stream) = accept(&listener) {
            let mut byte = [0u8; 1];
            if stream.read_exact(&mut byte).is_ok() && stream.write_all(&byte).is_ok() {
                // Until the client's close, so that the client's side ends first.
                let _ = stream.read(&mut byte);
            }
        }
    })?;
    let target = route.target(server.port);
    let timeout = match amount {
        Amount::For(duration) => duration + IO_TIMEOUT * 2,
        Amount::Count { .. } => Duration::from_secs(300),
    };
    let rate = route.client("connection client", timeout, move || {
        let mut errors = 0u32;
        let mut exchange = || -> Result<bool, String> {
            let attempt = || -> Result<(), String> {
                let mut stream = connect(target)?;
                let mut byte = [1u8; 1];
                stream.write_all(&byte).map_err(|e| e.to_string())?;
                stream.read_exact(&mut byte).map_err(|e| e.to_string())
            };
            match attempt() {
                Ok(()) => Ok(true),
                Err(e) if errors >= MAX_CONNECT_ERRORS => {
                    Err(format!("{errors} failed connections, the last: {e}"))
                }
                Err(_) => {
                    errors += 1;
                    Ok(false)
                }
            }
        };
        let mut done = 0usize;
        let mut warm = 0;
        let start = match amount {
            Amount::For(duration) => {
                let start = Instant::now();
                while start.elapsed() < duration {
                    done += usize::from(exchange()?);
                }
                start
            }
            Amount::Count { warmup, count } => {
                while warm < warmup {
                    warm += usize::from(exchange()?);
                }
                gate.pass()?;
                let start = Instant::now();
                while done < count {
                    done += usize::from(exchange()?);
                }
                gate.pass()?;
                start
            }
        };
        Ok(Connections {
            rate: done as f64 / start.elapsed().as_secs_f64(),
            count: warm + done,
        })
    });
    server.finish(Duration::ZERO)?;
    rate
}

/// The syscall pass (untimed): the helper's system calls over `syscall_ops` TCP round
/// trips, UDP round trips and TCP connections, each guest→host, each counted by strace
/// attached for the measured part only (after a warm-up, before the client closes).
fn count_syscalls(
    g2h: &Route,
    pid: u32,
    settings: &Settings,
    scratch: &Path,
    details: &mut Vec<String>,
) -> Result<Vec<(Metric, f64)>, String> {
    let n = settings.syscall_ops;
    let summary = |what: &str| scratch.join(format!("strace-{pid}-{what}.txt"));
    let route = g2h.clone();
    let (_, tcp) = syscalls::count(pid, summary("tcp"), n, move |gate| {
        tcp_round_trips(&route, n, gate)
    })?;
    let route = g2h.clone();
    let (_, udp) = syscalls::count(pid, summary("udp"), n, move |gate| {
        udp_round_trips(&route, n, gate)
    })?;
    let route = g2h.clone();
    let amount = Amount::Count {
        warmup: WARMUP_CONNECTIONS,
        count: n,
    };
    let (_, conn) = syscalls::count(pid, summary("conn"), n, move |gate| {
        conn_rate(&route, amount, gate)
    })?;
    let mut samples = Vec::new();
    for (metric, what, count) in [
        (Metric::SyscallsTcpRoundTrip, "per TCP round trip", tcp),
        (Metric::SyscallsUdpRoundTrip, "per UDP round trip", udp),
        (Metric::SyscallsConnection, "per TCP connection", conn),
    ] {
        samples.push((metric, count.per_op()));
        details.push(format!(
            "{what} ({n}): {:.2}: {}",
            count.per_op(),
            count.breakdown()
        ));
    }
    Ok(samples)
}

/// VmRSS of the helper right after start, and with `flows` TCP connections from the
/// container to the host held open.
/// Also notes where the memory is (smaps_rollup and the number of mappings), idle and with
/// the flows, in `details`.
fn memory(
    world: &World,
    pid: u32,
    flows: usize,
    details: &mut Vec<String>,
) -> Result<Vec<(Metric, f64)>, String> {
    thread::sleep(RSS_SETTLE);
    let idle = sys::rss_kib(pid).ok_or("the helper is gone")?;
    details.push(format!("memory idle: {}", sys::memory_map(pid)));
    let server = HostServer::start(world, move |listener| {
        let mut held = Vec::with_capacity(flows);
        while held.len() < flows {
            match accept(&listener) {
                Some(stream) => held.push(stream),
                None => break,
            }
        }
        held
    })?;
    let port = server.port;
    let clients = in_guest(world, "flow opener", Duration::from_secs(120), move || {
        (0..flows)
            .map(|_| connect_via_gateway(port))
            .collect::<Result<Vec<_>, _>>()
    });
    // Once all are accepted the server ends by itself (the helper may still be passing the
    // last ones on when the client is done); if the clients failed, it is woken.
    let grace = if clients.is_ok() {
        IO_TIMEOUT
    } else {
        Duration::ZERO
    };
    let accepted = server.finish(grace)?;
    let clients = clients?;
    if accepted.len() != flows {
        return Err(format!("{} of {flows} flows accepted", accepted.len()));
    }
    thread::sleep(RSS_SETTLE);
    let with_flows = sys::rss_kib(pid).ok_or("the helper is gone")?;
    details.push(format!(
        "memory with {flows} flows: {}",
        sys::memory_map(pid)
    ));
    drop((clients, accepted));
    Ok(vec![
        (Metric::IdleRss, idle as f64),
        (Metric::FlowsRss, with_flows as f64),
        (
            Metric::RssPerFlow,
            (with_flows as f64 - idle as f64) / flows as f64,
        ),
    ])
}

/// Pause between two control-socket requests of the flood case.
const API_PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// The SYNs of the flood (issue #16: "20,000 SYNs at the fastest rate the guest can send").
const FLOOD_SYNS: u64 = 20_000;
/// The bulk runs this long before it is measured (slow start, buffers filling).
const BULK_WARMUP: Duration = Duration::from_secs(1);
/// The bulk's rate while the flood is sent is measured over at least this long from the
/// first SYN: the helper's work on the flood (connects, SYN-ACKs, the guest's RSTs) goes on
/// after the guest's last SYN, and a window as short as the flood itself (a few hundred
/// milliseconds) would be mostly noise.
const FLOOD_WINDOW: Duration = Duration::from_secs(1);
/// Bytes per write of the bulk sender.
const BULK_CHUNK: usize = 128 * 1024;

/// A bulk upload from the container to the host runs; its rate is measured alone, then
/// over the window of a SYN flood: the container sends `FLOOD_SYNS` SYNs to an answering
/// host port as fast as one thread can (non-blocking connects, each closed at once with
/// linger 0: one SYN per socket; the helper's SYN-ACK meets the guest kernel's RST) while
/// the control socket is asked `list_hostfwd` every 10 ms. Gives the share of the bulk's
/// rate kept during the flood window, the slowest control-socket reply, and the SYNs per
/// second the guest got out. The bulk is our own sender and receiver (not iperf3): the
/// receiver's byte count read at the window's edges gives the rate over exactly the flood.
fn syn_flood(
    world: &World,
    api_socket: Option<PathBuf>,
    settings: &Settings,
) -> Result<Vec<(Metric, f64)>, String> {
    let answering = HostServer::start(world, |listener| {
        while let Some(stream) = accept(&listener) {
            drop(stream);
        }
    })?;
    let received = Arc::new(AtomicU64::new(0));
    let sink = {
        let received = received.clone();
        HostServer::start(world, move |listener| {
            let mut stream = accept(&listener)?;
            let mut buf = vec![0u8; BULK_CHUNK];
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
            Some(())
        })?
    };
    let stop = Arc::new(AtomicBool::new(false));
    let bulk = {
        let (stop, port) = (stop.clone(), sink.port);
        sys::in_netns(world.guest_netns(), "bulk sender", move || {
            let mut stream = connect_via_gateway(port)?;
            let chunk = vec![0x5au8; BULK_CHUNK];
            while !stop.load(Ordering::Relaxed) {
                stream
                    .write_all(&chunk)
                    .map_err(|e| format!("bulk write: {e}"))?;
            }
            Ok::<(), String>(())
        })
    };
    let rate_over = |span: Duration| {
        let (bytes, started) = (received.load(Ordering::Relaxed), Instant::now());
        thread::sleep(span);
        let bytes = received.load(Ordering::Relaxed) - bytes;
        bytes as f64 / started.elapsed().as_secs_f64()
    };
    thread::sleep(BULK_WARMUP);
    let unflooded = rate_over(Duration::from_secs(settings.iperf_secs.into()));

    let probe = api_socket.map(|path| {
        let stop = stop.clone();
        thread::spawn(move || probe_api(&path, &stop))
    });
    let target = SocketAddrV4::new(GATEWAY, answering.port);
    let flood = sys::in_netns(world.guest_netns(), "syn flood", move || flood(target));
    let flooded = rate_over(FLOOD_WINDOW);
    let (syns, flood_time) = flood.wait(IO_TIMEOUT * 2)?;
    let flooded = if flood_time > FLOOD_WINDOW {
        // The flood outlasted the window: measure on until it is over.
        let extra = rate_over(flood_time - FLOOD_WINDOW);
        (flooded * FLOOD_WINDOW.as_secs_f64() + extra * (flood_time - FLOOD_WINDOW).as_secs_f64())
            / flood_time.as_secs_f64()
    } else {
        flooded
    };
    stop.store(true, Ordering::SeqCst);
    bulk.wait(IO_TIMEOUT * 2)?;
    let slowest = probe
        .map(|p| p.join().map_err(|_| "API probe panicked".to_string()))
        .transpose()?
        .transpose()?;
    sink.finish(IO_TIMEOUT)?;
    answering.finish(Duration::ZERO)?;
    let mut samples = vec![
        (Metric::FloodBulkShare, flooded / unflooded * 100.0),
        (Metric::FloodSynRate, syns as f64 / flood_time.as_secs_f64()),
    ];
    if let Some(slowest) = slowest {
        samples.push((Metric::FloodApiMax, slowest.as_secs_f64() * 1e3));
    }
    Ok(samples)
}

/// `FLOOD_SYNS` non-blocking connects to `target`, each closed at once; how many got out
/// and how long that took.
fn flood(target: SocketAddrV4) -> Result<(u64, Duration), String> {
    let started = Instant::now();
    let (mut sent, mut failed) = (0u64, 0u64);
    while sent < FLOOD_SYNS && failed < FLOOD_SYNS {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        socket
            .set_linger(Some(Duration::ZERO))
            .map_err(|e| e.to_string())?;
        match socket.connect(&target.into()) {
            Ok(()) => sent += 1,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => sent += 1,
            // The guest's own limits (ports, buffers): the flood goes on, boundedly.
            Err(_) => failed += 1,
        }
    }
    Ok((sent, started.elapsed()))
}

/// Asks `list_hostfwd` every `API_PROBE_INTERVAL` until `stop`; the slowest reply.
fn probe_api(path: &Path, stop: &AtomicBool) -> Result<Duration, String> {
    let mut slowest = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut stream = UnixStream::connect(path).map_err(|e| format!("API connect: {e}"))?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(br#"{"execute":"list_hostfwd"}"#)
            .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
            .map_err(|e| format!("API request: {e}"))?;
        let mut reply = Vec::new();
        stream
            .read_to_end(&mut reply)
            .map_err(|e| format!("API reply: {e}"))?;
        if !reply.starts_with(b"{") {
            return Err(format!("API replied {:?}", String::from_utf8_lossy(&reply)));
        }
        slowest = slowest.max(started.elapsed());
        thread::sleep(API_PROBE_INTERVAL);
    }
    Ok(slowest)
}

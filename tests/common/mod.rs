//! End-to-end harness: real network namespaces, a real tap, rslirp (or any slirp4netns
//! compatible binary, via `RSLIRP_BIN`) in between.
//!
//! Isolation is the first rule here: the "host" side where rslirp runs is a network
//! namespace of the test's own (loopback plus one interface with 10.99.X.1/24 and no
//! default route), so NAT towards any other address ends in "network unreachable" there
//! instead of on the machine's network, and the machine's resolver is never reached.
//! The "container" is a second namespace: `ip netns add` (rootful) or `unshare -rn` run by
//! an unprivileged user (rootless). Everything is torn down by drop guards, also on panic.

// Each tests/e2e_*.rs compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod api;
pub mod ctl;
pub mod dhcp;
pub mod dns;
pub mod ipv6;
pub mod net;
pub mod ns;
pub mod pcap;
pub mod process;
// The process helpers' one implementation, shared with benches/compare (sys.rs).
mod process_core;
pub mod resolv;
pub mod sandbox;
pub mod tap;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use net::Server;
use ns::{Netns, Task, TempDir};
use process::{command, run, run_ok, wait_for, Proc};

pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
pub const TAP: &str = "tap0";
/// The unprivileged account that plays the rootless container user.
pub const TEST_USER: &str = "rslirp-e2e";

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit for commands and helper threads in the guest or host namespace.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest we wait for rslirp to exit after being asked to.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who runs rslirp and owns the container's namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// root, container netns from `ip netns add`
    Rootful,
    /// an unprivileged user, container netns (and user ns) from `unshare -rn`
    Rootless,
}

/// Declares `rootful::NAME` and `rootless::NAME` tests for each `fn NAME(mode: Mode)`.
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod rootful {
            $( #[test] fn $name() { super::$name($crate::common::Mode::Rootful) } )*
        }
        mod rootless {
            $( #[test] fn $name() { super::$name($crate::common::Mode::Rootless) } )*
        }
    };
}

/// Declares a `rootful_only::NAME` test for each `fn NAME(mode: Mode)`: for tests whose
/// subject is the same in both modes and that are too slow to run twice (say why where it
/// is used).
#[allow(unused_macros)] // not every test binary has such tests
macro_rules! rootful_only {
    ($($name:ident),* $(,)?) => {
        mod rootful_only {
            $( #[test] fn $name() { super::$name($crate::common::Mode::Rootful) } )*
        }
    };
}

/// The binary under test: `RSLIRP_BIN` (e.g. /usr/bin/slirp4netns to check the tests
/// against the reference) or the one cargo built.
pub fn binary_under_test() -> PathBuf {
    match std::env::var_os("RSLIRP_BIN") {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_rslirp")),
    }
}

struct Prereqs {
    /// Whether TEST_USER can execute the binary where it is (else each test copies it).
    user_can_exec_binary: bool,
}

/// Checks and fixes, once per test binary, what every test needs. Failing loudly: a test
/// that silently skips itself would report a green run that tested nothing.
fn prereqs() -> &'static Prereqs {
    static PREREQS: OnceLock<Prereqs> = OnceLock::new();
    PREREQS.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the end-to-end tests must run as root (they create network namespaces and a \
             test user); run them with sudo or via scripts/test.sh"
        );
        let missing: Vec<&str> = ["ip", "nsenter", "setpriv", "unshare", "ping", "useradd"]
            .into_iter()
            .filter(|tool| find_in_path(tool).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "missing tools {missing:?}; scripts/test.sh installs everything the tests need"
        );
        ensure_test_user();
        remove_leftovers_of_killed_runs();
        // Rootless rslirp opens /dev/net/tun as TEST_USER inside its user namespace.
        fs::set_permissions("/dev/net/tun", fs::Permissions::from_mode(0o666))
            .expect("chmod 666 /dev/net/tun");
        let bin = binary_under_test();
        assert!(
            bin.is_file(),
            "binary under test {} not found",
            bin.display()
        );
        Prereqs {
            user_can_exec_binary: user_can_exec(&bin),
        }
    })
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

fn ensure_test_user() {
    let exists = || {
        run(&mut command("id", &["-u", TEST_USER]), SETUP_TIMEOUT)
            .status
            .success()
    };
    if exists() {
        return;
    }
    let out = run(
        &mut command(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                TEST_USER,
            ],
        ),
        SETUP_TIMEOUT,
    );
    // Another test run may have created it in the meantime; only its absence is an error.
    assert!(
        exists(),
        "cannot create user {TEST_USER}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The command prefix that drops from root to TEST_USER. setpriv execs in place (runuser
/// would fork and stay in between), so the pid we spawn is the pid of the program itself:
/// signals reach it and its exit status is ours to check. Changing the uid clears the
/// parent-death signal Proc::spawn set, so setpriv sets it again afterwards.
pub const AS_TEST_USER: [&str; 9] = [
    "setpriv",
    "--reuid",
    TEST_USER,
    "--regid",
    TEST_USER,
    "--clear-groups",
    "--pdeathsig",
    "KILL",
    "--",
];

fn user_can_exec(bin: &Path) -> bool {
    let mut cmd = command(AS_TEST_USER[0], &AS_TEST_USER[1..]);
    cmd.arg("test").arg("-x").arg(bin);
    run(&mut cmd, SETUP_TIMEOUT).status.success()
}

/// Namespaces and temp dirs carry the pid of the test process that made them. A run killed
/// before its guards ran (SIGKILL, a crash) leaves them behind; its processes died with it
/// (see Proc::spawn). Remove what belongs to pids that no longer exist.
fn remove_leftovers_of_killed_runs() {
    let owner_is_gone = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let entries = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|list| {
                list.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    for name in entries(Path::new("/run/netns")) {
        if owner_is_gone(&name, "rse2e-h-") || owner_is_gone(&name, "rse2e-g-") {
            drop(Netns { name });
        }
    }
    let tmp = std::env::temp_dir();
    for name in entries(&tmp) {
        if owner_is_gone(&name, "rse2e-") {
            drop(TempDir {
                path: tmp.join(name),
            });
        }
    }
}

fn unique_id() -> (u32, String) {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    (n, format!("{}-{n}", std::process::id()))
}

/// One test's world: a host namespace where rslirp runs, and a guest (container) namespace.
/// Fields drop in order: the guest's process, then the namespaces, then the temp dir.
pub struct Env {
    pub mode: Mode,
    guest: Proc,
    guest_netns: Option<Netns>,
    pub host: Netns,
    /// The host namespace's non-loopback address (10.99.X.1/24).
    pub host_addr: Ipv4Addr,
    pub tmp: TempDir,
    pub id: String,
    launches: AtomicU32,
}

impl Env {
    pub fn new(mode: Mode) -> Env {
        prereqs();
        let (n, id) = unique_id();
        let tmp = TempDir::create(&format!("rse2e-{id}"));
        let host = Netns::create(format!("rse2e-h-{id}"));
        let host_addr = Ipv4Addr::new(10, 99, (n % 250 + 1) as u8, 1);
        setup_host_netns(&host, host_addr);
        let (guest_netns, guest) = match mode {
            Mode::Rootful => {
                let netns = Netns::create(format!("rse2e-g-{id}"));
                let mut cmd = command("ip", &["netns", "exec", &netns.name]);
                cmd.args(["sleep", "600"]);
                (Some(netns), spawn_guest(cmd, &tmp))
            }
            Mode::Rootless => {
                let mut cmd = command("ip", &["netns", "exec", &host.name]);
                cmd.args(AS_TEST_USER);
                cmd.args(["unshare", "-rn", "sleep", "600"]);
                (None, spawn_guest(cmd, &tmp))
            }
        };
        Env {
            mode,
            guest,
            guest_netns,
            host,
            host_addr,
            tmp,
            id,
            launches: AtomicU32::new(0),
        }
    }

    /// The pid whose network namespace is the container's (a `sleep` inside it).
    pub fn guest_pid(&self) -> u32 {
        self.guest.pid()
    }

    pub fn guest_netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.guest_pid()))
    }

    pub fn guest_userns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/user", self.guest_pid()))
    }

    /// The `ip netns add` file of the guest (rootful only).
    pub fn guest_named_netns(&self) -> &Netns {
        self.guest_netns
            .as_ref()
            .expect("only rootful guests have a named netns")
    }

    /// Lets every group open ping sockets in the host namespace (a new namespace allows
    /// none), so rslirp can carry the guest's ICMP echo.
    pub fn allow_ping_sockets(&self) {
        let mut cmd = command("ip", &["netns", "exec", &self.host.name]);
        cmd.args(["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
        run_ok(&mut cmd, STEP_TIMEOUT);
    }

    /// An address on the host namespace's dummy subnet that nobody answers: a connect to it
    /// from the host namespace goes nowhere (a dummy drops everything it is given, a
    /// port-less bridge finds no neighbour), never off the machine.
    pub fn black_hole_addr(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.host_addr.octets();
        Ipv4Addr::new(a, b, c, 77)
    }

    /// Takes the container away: kills the process that holds its namespace (the `sleep`,
    /// or the rootless `unshare`'s) and, when rootful, removes the `ip netns add` name too.
    pub fn destroy_guest(&mut self) {
        self.guest.signal(libc::SIGKILL);
        assert!(
            self.guest.wait_timeout(SETUP_TIMEOUT).is_some(),
            "the guest process survived SIGKILL"
        );
        drop(self.guest_netns.take());
    }

    /// Starts `args` as a process of its own in the host namespace (as root); killed on drop.
    pub fn host_process(&self, what: &str, args: &[&str]) -> Proc {
        let mut cmd = command("ip", &["netns", "exec", &self.host.name]);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
        Proc::spawn(&mut cmd, what)
    }

    /// Waits until something listens on TCP `port` in the host namespace (without
    /// connecting to it: a one-shot server would take the probe for its client).
    pub fn wait_host_tcp_listening(&self, port: u16) {
        let filter = format!("sport = :{port}");
        wait_for(&format!("a listener on port {port}"), SETUP_TIMEOUT, || {
            let out = self.host.ip_netns_exec(&["ss", "-Hltn", &filter]);
            (!out.trim().is_empty()).then_some(())
        });
    }

    /// `-c`'s work in the guest: `addr` (e.g. `10.0.2.100/24`) on the tap and the default
    /// route via `gateway` there.
    pub fn assert_guest_configured(&self, addr: &str, gateway: Ipv4Addr) {
        let addrs = self.guest_ok(&["ip", "-o", "-4", "addr", "show", "dev", TAP]);
        assert!(
            addrs.contains(&format!("inet {addr} ")),
            "guest address {addr} missing: {addrs}"
        );
        let routes = self.guest_ok(&["ip", "-4", "route", "show", "default"]);
        assert!(
            routes.contains(&format!("default via {gateway} dev {TAP}")),
            "default route via {gateway} missing: {routes}"
        );
    }

    /// Runs a command as root inside the guest's network namespace.
    pub fn guest_cmd(&self, args: &[&str]) -> Output {
        run(&mut nsenter(self.guest_pid(), "-n", args), STEP_TIMEOUT)
    }

    /// Like [`Env::guest_cmd`], but the command must succeed; returns its stdout.
    pub fn guest_ok(&self, args: &[&str]) -> String {
        run_ok(&mut nsenter(self.guest_pid(), "-n", args), STEP_TIMEOUT)
    }

    /// Runs `f` on a thread inside the guest's network namespace.
    pub fn in_guest<T, F>(&self, what: &str, f: F) -> Task<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        ns::spawn_in_netns(self.guest_netns_path(), what, f)
    }

    /// Runs `f` on a thread inside the host namespace (where rslirp's sockets live).
    pub fn in_host<T, F>(&self, what: &str, f: F) -> Task<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        ns::spawn_in_netns(self.host.path(), what, f)
    }

    /// A TCP listener on `addr` in the host namespace (port 0: an ephemeral one).
    pub fn host_tcp_listener_at(&self, addr: impl Into<SocketAddr>) -> TcpListener {
        bind_in(
            self.host.path(),
            "host TCP listener",
            addr,
            TcpListener::bind,
        )
    }

    /// A UDP socket on `addr` in the host namespace (port 0: an ephemeral one).
    pub fn host_udp_socket_at(&self, addr: impl Into<SocketAddr>) -> UdpSocket {
        bind_in(self.host.path(), "host UDP socket", addr, UdpSocket::bind)
    }

    /// A TCP listener on `addr` in the guest (port 0: an ephemeral one).
    pub fn guest_tcp_listener_at(&self, addr: impl Into<SocketAddr>) -> TcpListener {
        bind_in(
            self.guest_netns_path(),
            "guest TCP listener",
            addr,
            TcpListener::bind,
        )
    }

    /// A UDP socket on `addr` in the guest (port 0: an ephemeral one).
    pub fn guest_udp_socket_at(&self, addr: impl Into<SocketAddr>) -> UdpSocket {
        bind_in(
            self.guest_netns_path(),
            "guest UDP socket",
            addr,
            UdpSocket::bind,
        )
    }

    /// A TCP listener on an ephemeral port of `ip` in the host namespace.
    pub fn host_tcp_listener(&self, ip: impl Into<IpAddr>) -> TcpListener {
        self.host_tcp_listener_at((ip, 0))
    }

    /// A TCP echo server on `ip` in the host namespace.
    pub fn host_echo_server(&self, ip: impl Into<IpAddr>) -> Server {
        net::tcp_server(self.host_tcp_listener(ip), net::echo)
    }

    /// A UDP echo server on `ip` in the host namespace.
    pub fn host_udp_echo_server(&self, ip: impl Into<IpAddr>) -> Server {
        net::udp_echo_server(self.host_udp_socket_at((ip, 0)))
    }

    /// The address a TCP server on `server_ip` (host namespace) sees when the guest connects
    /// to it at `dest_ip`.
    pub fn tcp_peer_seen_by_host(
        &self,
        server_ip: impl Into<IpAddr>,
        dest_ip: impl Into<IpAddr>,
    ) -> IpAddr {
        let server = net::tcp_server(self.host_tcp_listener(server_ip), |mut stream| {
            if let Ok(peer) = stream.peer_addr() {
                let _ = stream.write_all(peer.ip().to_string().as_bytes());
            }
        });
        let to = SocketAddr::new(dest_ip.into(), server.port());
        let mut stream = self
            .guest_connect(to, SETUP_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
        let mut seen = String::new();
        stream.read_to_string(&mut seen).expect("read peer address");
        seen.parse()
            .unwrap_or_else(|_| panic!("server sent {seen:?}"))
    }

    /// The address a UDP server on `server_ip` (host namespace) sees a guest datagram to
    /// `dest_ip` come from.
    pub fn udp_peer_seen_by_host(
        &self,
        server_ip: impl Into<IpAddr>,
        dest_ip: impl Into<IpAddr>,
    ) -> IpAddr {
        let server = self.host_udp_socket_at((server_ip, 0));
        let port = server.local_addr().expect("local_addr").port();
        // Answers every datagram with its source address; ends after 3 s without one.
        thread::spawn(move || {
            server
                .set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let mut buf = [0u8; 1500];
            while let Ok((_, peer)) = server.recv_from(&mut buf) {
                let _ = server.send_to(peer.ip().to_string().as_bytes(), peer);
            }
        });
        let to = SocketAddr::new(dest_ip.into(), port);
        let socket = self.guest_udp_socket_at((net::unspecified_for(to.ip()), 0));
        let reply = net::udp_roundtrip(&socket, to, b"who am I").expect("UDP peer server");
        let seen = String::from_utf8_lossy(&reply);
        seen.parse()
            .unwrap_or_else(|_| panic!("server sent {seen:?}"))
    }

    /// A TCP connection from the guest, with I/O timeouts set, or the connect error.
    pub fn guest_connect(
        &self,
        addr: impl Into<SocketAddr>,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        let addr = addr.into();
        self.in_guest("guest connect", move || {
            let stream = TcpStream::connect_timeout(&addr, timeout)?;
            net::set_timeouts(&stream);
            Ok(stream)
        })
        .wait(timeout + SETUP_TIMEOUT)
    }

    /// Connects from the guest to the echo server at `to` (within `connect_timeout`) and
    /// checks that `len` bytes of the pattern `seed` come back intact.
    pub fn assert_guest_echo(
        &self,
        to: impl Into<SocketAddr>,
        connect_timeout: Duration,
        seed: u64,
        len: usize,
    ) {
        let to = to.into();
        let stream = self
            .guest_connect(to, connect_timeout)
            .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
        let payload = net::Pattern::bytes(seed, len);
        let reply =
            net::exchange(&stream, &payload).unwrap_or_else(|e| panic!("echo via {to}: {e}"));
        assert!(
            reply == payload,
            "echo via {to} differs: {:?} back for {:?}",
            net::digest(&reply),
            net::digest(&payload)
        );
    }

    /// A UDP socket in the guest on an ephemeral port.
    pub fn guest_udp_socket(&self) -> UdpSocket {
        self.guest_udp_socket_at((Ipv4Addr::UNSPECIFIED, 0))
    }

    /// Prepares an rslirp start: `-c -r 3 <guest pid> tap0` plus whatever is added.
    pub fn rslirp(&self) -> Launch<'_> {
        Launch {
            env: self,
            args: Vec::new(),
            target: None,
            configure: true,
            exit_fd: false,
            resolv: resolv::Layout::default(),
            operands: None,
            fds: Vec::new(),
            nofile: None,
        }
    }

    /// The binary under test as this mode runs it (a world-executable copy if needed).
    pub fn binary_for_mode(&self) -> PathBuf {
        let bin = binary_under_test();
        if self.mode == Mode::Rootful || prereqs().user_can_exec_binary {
            return bin;
        }
        // The build directory is not reachable by TEST_USER: run a world-executable copy.
        let copy = self.tmp.path.join("rslirp");
        if !copy.exists() {
            fs::copy(&bin, &copy).expect("copy binary under test");
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        copy
    }
}

/// A socket made by `bind` on `addr` in the network namespace at `netns` (`what` names it in
/// a failure).
pub fn bind_in<S: Send + 'static>(
    netns: PathBuf,
    what: &str,
    addr: impl Into<SocketAddr>,
    bind: fn(SocketAddr) -> io::Result<S>,
) -> S {
    let addr = addr.into();
    ns::spawn_in_netns(netns, what, move || bind(addr))
        .wait(SETUP_TIMEOUT)
        .unwrap_or_else(|e| panic!("bind {what} on {addr}: {e}"))
}

/// `nsenter -t PID NAMESPACES -- ARGS...`: `args` as root in the namespaces (`namespaces`,
/// e.g. `-n` for the network's, `-m` for the mounts') of the process `pid`.
fn nsenter(pid: u32, namespaces: &str, args: &[&str]) -> Command {
    let pid = pid.to_string();
    let mut cmd = command("nsenter", &["-t", &pid, namespaces, "--"]);
    cmd.args(args);
    cmd
}

fn setup_host_netns(host: &Netns, addr: Ipv4Addr) {
    host.ip(&["link", "set", "lo", "up"]);
    // A dummy interface is the natural sink; kernels built without it get a port-less
    // bridge, which behaves the same for us (local address, on-link subnet, no peer).
    if !host.try_ip(&["link", "add", "d0", "type", "dummy"]) {
        host.ip(&["link", "add", "d0", "type", "bridge"]);
    }
    host.ip(&["addr", "add", &format!("{addr}/24"), "dev", "d0"]);
    host.ip(&["link", "set", "d0", "up"]);
}

/// Starts the guest's `sleep` and waits until it really is `sleep`: before that exec the
/// process may still be in the host namespace (unshare/ip netns exec not done yet).
fn spawn_guest(mut cmd: Command, tmp: &TempDir) -> Proc {
    let log_path = tmp.path.join("guest.log");
    let log = File::create(&log_path).expect("guest log");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    let mut guest = Proc::spawn(&mut cmd, "guest sleep");
    let comm = format!("/proc/{}/comm", guest.pid());
    wait_for("the guest namespace", SETUP_TIMEOUT, || {
        if let Some(status) = guest.try_status() {
            panic!(
                "guest process exited ({status}): {}",
                fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        let name = fs::read_to_string(&comm).unwrap_or_default();
        (name.trim() == "sleep").then_some(())
    });
    guest
}

/// A pending rslirp start; see [`Env::rslirp`].
pub struct Launch<'a> {
    env: &'a Env,
    args: Vec<String>,
    target: Option<String>,
    configure: bool,
    exit_fd: bool,
    /// How the test's resolv.conf replaces /etc/resolv.conf (see [`resolv`]).
    resolv: resolv::Layout,
    /// The operands instead of `TARGET tap0` (see [`Launch::operands`]).
    operands: Option<Vec<String>>,
    /// Further fds the child inherits: (ours, its number in the child).
    fds: Vec<(OwnedFd, RawFd)>,
    /// RLIMIT_NOFILE (soft, hard) rslirp starts with.
    nofile: Option<(u64, u64)>,
}

impl Launch<'_> {
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// The operand instead of the guest pid (e.g. a netns path with `--netns-type=path`).
    pub fn target(mut self, target: &Path) -> Self {
        self.target = Some(target.to_string_lossy().into_owned());
        self
    }

    /// Exactly these operands instead of `TARGET tap0` (a tap fd number with
    /// `--netns-type=tapfd`, a socket path with `--target-type=bess`).
    pub fn operands(mut self, operands: &[&str]) -> Self {
        self.operands = Some(operands.iter().map(|o| o.to_string()).collect());
        self
    }

    /// The child inherits `fd` as fd `number` (5 or more: 3 and 4 are the ready and exit fds).
    pub fn pass_fd(mut self, fd: OwnedFd, number: RawFd) -> Self {
        assert!(
            (5..10).contains(&number),
            "fd {number} would clash with the harness's"
        );
        self.fds.push((process::high_fd(fd), number));
        self
    }

    /// Without `-c`.
    pub fn no_configure(mut self) -> Self {
        self.configure = false;
        self
    }

    /// Starts rslirp with this RLIMIT_NOFILE (soft, hard), as a shell's `ulimit -n` would.
    pub fn nofile(mut self, soft: u64, hard: u64) -> Self {
        self.nofile = Some((soft, hard));
        self
    }

    /// Adds `-e 4` with a pipe whose write end the test holds (see [`Rslirp::close_exit_fd`]).
    pub fn exit_fd(mut self) -> Self {
        self.exit_fd = true;
        self
    }

    /// Starts rslirp in the host namespace (as TEST_USER when rootless) and waits for the
    /// ready byte on fd 3. Panics, with rslirp's output, if it is not `1` within 10 s.
    pub fn start(self) -> Rslirp {
        let mut rslirp = self.spawn();
        rslirp.await_ready_byte();
        rslirp
    }

    /// Starts rslirp expecting it to fail at start-up: waits for it to exit and returns its
    /// status and output. Panics if it becomes ready or is still running after `timeout`.
    pub fn start_expecting_exit(self, timeout: Duration) -> (ExitStatus, String) {
        let mut rslirp = self.spawn();
        let status = rslirp.wait_exit(timeout);
        let mut byte = [0u8; 1];
        assert_eq!(
            rslirp.ready.read(&mut byte).ok(),
            Some(0),
            "rslirp wrote a ready byte before exiting ({status})"
        );
        (status, rslirp.output())
    }

    /// Spawns rslirp as [`Launch::start`] describes, without waiting (then
    /// [`Rslirp::await_ready_byte`]).
    pub fn spawn(self) -> Rslirp {
        let env = self.env;
        let mut enter = command("ip", &["netns", "exec", &env.host.name]);
        // Never the machine's resolver: the test's own resolv.conf, in a mount namespace.
        resolv::private_resolv_conf(&mut enter, env, self.resolv);
        self.spawn_entering(enter)
    }

    /// Spawns rslirp with `enter` (a command that enters rslirp's namespaces and runs its
    /// arguments, e.g. `ip netns exec HOST`) as `enter [setpriv ...] BIN [-c] ARGS... -r 3
    /// [-e 4] TARGET tap0`, its output to a log file of the test's.
    fn spawn_entering(self, mut cmd: Command) -> Rslirp {
        let env = self.env;
        let n = env.launches.fetch_add(1, Ordering::SeqCst);
        let log_path = env.tmp.path.join(format!("rslirp-{n}.log"));
        let log = File::create(&log_path).expect("rslirp log");

        let (ready_read, ready_write) = process::pipe();
        let (exit_read, exit_write) = if self.exit_fd {
            let (read, write) = process::pipe();
            (Some(read), Some(write))
        } else {
            (None, None)
        };
        self.add_rslirp_args(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        // Our pipe ends and `pass_fd`'s copies are >= 10, the targets 3..=9: `-r 3`, `-e 4`,
        // then the extra fds.
        let mut fds = vec![(ready_write.as_raw_fd(), 3)];
        fds.extend(exit_read.as_ref().map(|exit| (exit.as_raw_fd(), 4)));
        fds.extend(
            self.fds
                .iter()
                .map(|(fd, number)| (fd.as_raw_fd(), *number)),
        );
        process::dup_onto(&mut cmd, fds);
        if let Some((soft, hard)) = self.nofile {
            set_nofile(&mut cmd, soft, hard);
        }
        let proc = Proc::spawn(&mut cmd, "rslirp");
        // Our copies must go, or EOF on the ready pipe (rslirp died) would never be seen.
        drop(ready_write);
        drop(exit_read);
        drop(self.fds);
        Rslirp {
            proc,
            log_path,
            ready: ready_read,
            exit_write,
        }
    }

    /// Appends `[setpriv ...] BIN [-c] ARGS... -r 3 [-e 4] TARGET tap0` (or the operands).
    fn add_rslirp_args(&self, cmd: &mut Command) {
        let env = self.env;
        if env.mode == Mode::Rootless {
            cmd.args(AS_TEST_USER);
        }
        cmd.arg(env.binary_for_mode());
        if self.configure {
            cmd.arg("-c");
        }
        cmd.args(&self.args).args(["-r", "3"]);
        if self.exit_fd {
            cmd.args(["-e", "4"]);
        }
        if let Some(operands) = &self.operands {
            cmd.args(operands);
            return;
        }
        let target = match &self.target {
            Some(target) => target.clone(),
            None => env.guest_pid().to_string(),
        };
        cmd.arg(target).arg(TAP);
    }
}

/// The child starts with RLIMIT_NOFILE (soft, hard); exec and setpriv keep it.
fn set_nofile(cmd: &mut Command, soft: u64, hard: u64) {
    // SAFETY: the closure runs between fork and exec and only calls setrlimit, which is
    // async-signal-safe, on a limit value built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A running rslirp; killed on drop. Its stdout+stderr are printed if the test panics.
pub struct Rslirp {
    proc: Proc,
    log_path: PathBuf,
    ready: File,
    exit_write: Option<File>,
}

impl Rslirp {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Resident memory (VmRSS of /proc/PID/status) in KiB.
    pub fn vm_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("rslirp's /proc status: {e}\n{}", self.output()));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {status}"))
    }

    /// What rslirp wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the ready fd has something to read (a byte, or EOF) within `timeout`.
    pub fn ready_fd_readable_within(&self, timeout: Duration) -> bool {
        process::wait_readable(&self.ready, timeout)
    }

    /// Waits for the ready byte `1` (see [`Launch::start`]).
    pub fn await_ready_byte(&mut self) {
        if !process::wait_readable(&self.ready, READY_TIMEOUT) {
            panic!(
                "no ready byte within {READY_TIMEOUT:?}; output:\n{}",
                self.output()
            );
        }
        let mut byte = [0u8; 1];
        let n = self.ready.read(&mut byte).expect("read ready fd");
        if n == 0 {
            // EOF: give a crashed process a moment so its status and output are complete.
            let status = self.proc.wait_timeout(Duration::from_secs(1));
            panic!(
                "ready fd closed without a byte (exit status {status:?}); output:\n{}",
                self.output()
            );
        }
        assert_eq!(byte[0], b'1', "ready byte must be '1'");
    }

    /// After the `1`, the ready fd must be closed: the next read sees EOF.
    pub fn assert_ready_fd_closed(&mut self) {
        assert!(
            process::wait_readable(&self.ready, Duration::from_secs(2)),
            "ready fd still open 2 s after the ready byte"
        );
        let mut rest = Vec::new();
        self.ready.read_to_end(&mut rest).expect("read ready fd");
        assert!(
            rest.is_empty(),
            "extra bytes after the ready byte: {rest:?}"
        );
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.proc.try_status() {
            panic!("rslirp exited ({status}); output:\n{}", self.output());
        }
    }

    /// Closes the write end of the `-e` pipe: rslirp must see hang-up and exit.
    pub fn close_exit_fd(&mut self) {
        drop(self.exit_write.take().expect("started without exit_fd()"));
    }

    pub fn signal(&self, signal: libc::c_int) {
        self.proc.signal(signal);
    }

    /// Waits for rslirp to exit; panics (with its output) if it does not within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.proc.wait_timeout(timeout) {
            Some(status) => status,
            None => panic!(
                "rslirp still running after {timeout:?}; output:\n{}",
                self.output()
            ),
        }
    }
}

impl Drop for Rslirp {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- output of the binary under test ---\n{}", self.output());
        }
    }
}

pub fn assert_gateway_answers_ping(env: &Env) {
    env.guest_ok(&["ping", "-c", "1", "-W", "2", &GATEWAY.to_string()]);
}

/// The basic proof that the guest is connected: ping the gateway and echo over TCP through
/// it to a server on the host namespace's loopback.
pub fn assert_traffic_works(env: &Env) {
    assert_gateway_answers_ping(env);
    let server = env.host_echo_server(Ipv4Addr::LOCALHOST);
    let payload = net::Pattern::bytes(7, 10_000);
    let stream = env
        .guest_connect(SocketAddrV4::new(GATEWAY, server.port()), SETUP_TIMEOUT)
        .expect("connect to the host's loopback via the gateway");
    let reply = net::exchange(&stream, &payload).expect("echo");
    assert!(reply == payload, "echo returned different bytes");
}

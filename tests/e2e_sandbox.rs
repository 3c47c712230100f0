//! End-to-end: `--enable-sandbox --enable-seccomp` confine rslirp without breaking it.
//!
//! rslirp is started in a caller's mount namespace built like a real host's (a shared /run
//! with a mount below it, a resolv.conf symlink out of /etc: see common/sandbox.rs), so a
//! sandbox that leaked an unmount to its caller, or lost the resolver, would show here.
//!
//! That a call outside the seccomp allow-list is refused is shown on the running process
//! itself, without adding anything to rslirp: the test (root) attaches with ptrace while
//! rslirp waits in epoll_wait, points it at the `syscall` instruction it stopped after,
//! lets it make one call of the test's choosing, and restores it. Filters apply to such a
//! call like to any other. A run with the sandbox alone is the control: the same calls
//! succeed there, so the EPERM comes from the filter and from nothing else.

#[macro_use]
mod common;

use common::net;
use common::process::{command, run_ok, wait_for};
use common::sandbox::{mount_point_listed, CallerNs, INNER_RUN_MOUNT};
use common::{assert_traffic_works, Env, Mode, Rslirp, GATEWAY, STEP_TIMEOUT, TAP};
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

both_modes!(
    confined_rslirp_still_serves_everything,
    confinement_shows_in_proc_and_leaves_the_caller_alone,
    syscalls_outside_the_list_are_refused,
    each_flag_works_alone,
);

const CONFINED: [&str; 2] = ["--enable-sandbox", "--enable-seccomp"];
const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// CAP_NET_BIND_SERVICE, bit 10 of the capability sets.
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A directory for the control socket that the rootless user can create it in.
fn api_socket_path(env: &Env) -> PathBuf {
    let dir = env.tmp.path.join("api");
    fs::create_dir_all(&dir).expect("mkdir api");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod api");
    dir.join("sock")
}

fn start(env: &Env, caller: &CallerNs, flags: &[&str], api: &Path) -> Rslirp {
    let mut launch = env.rslirp().arg("-a").arg(&api.to_string_lossy());
    for flag in flags {
        launch = launch.arg(flag);
    }
    launch.start_in(caller)
}

/// One request over the control socket, as rootlesskit sends it; returns the reply.
fn api(path: &Path, request: &str) -> String {
    let mut stream = UnixStream::connect(path).expect("connect to the API socket");
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send request");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read reply");
    reply
}

fn add_forward(api_path: &Path, proto: &str, host_port: u16, guest_port: u16) -> String {
    api(
        api_path,
        &format!(
            r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{proto}","host_addr":"0.0.0.0","host_port":{host_port},"guest_addr":"10.0.2.100","guest_port":{guest_port}}}}}"#
        ),
    )
}

fn allow_ping_sockets(env: &Env) {
    let mut cmd = command("ip", &["netns", "exec", &env.host.name]);
    cmd.args(["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
    run_ok(&mut cmd, STEP_TIMEOUT);
}

fn host_udp_echo(env: &Env, ip: Ipv4Addr, port: u16) -> net::Server {
    net::udp_echo_server(env.host_udp_socket_at((ip, port)))
}

/// 10.0.2.3:53 reaches `first_resolver` (a UDP echo on 127.0.0.1:53); once the caller's
/// resolv.conf names 127.0.0.2 instead and the first one is gone, a new query must reach
/// the new resolver there.
fn assert_dns_follows_resolv_conf(env: &Env, caller: &CallerNs, first_resolver: net::Server) {
    let reply = guest_udp_roundtrip(env, SocketAddrV4::new(DNS, 53), b"query 1")
        .expect("DNS via the first resolver");
    assert_eq!(reply, b"query 1");
    caller.write_resolv_conf("nameserver 127.0.0.2\n");
    drop(first_resolver);
    let _second_resolver = host_udp_echo(env, Ipv4Addr::new(127, 0, 0, 2), 53);
    wait_for("queries to reach the new resolver", STEP_TIMEOUT, || {
        guest_udp_roundtrip(env, SocketAddrV4::new(DNS, 53), b"query 2")
            .ok()
            .filter(|reply| reply == b"query 2")
    });
}

fn guest_udp_roundtrip(env: &Env, to: SocketAddrV4, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let socket = env.guest_udp_socket();
    net::udp_roundtrip(&socket, SocketAddr::V4(to), payload)
}

/// TCP (bulk too), UDP, ping through ping sockets, DNS (following a resolv.conf change),
/// DHCP and port forwards (below 1024 when root), all under both flags.
fn confined_rslirp_still_serves_everything(mode: Mode) {
    let env = Env::new(mode);
    allow_ping_sockets(&env);
    let caller = env.caller_namespace();
    let api_path = api_socket_path(&env);
    let first_resolver = host_udp_echo(&env, Ipv4Addr::LOCALHOST, 53);
    let mut rslirp = start(&env, &caller, &CONFINED, &api_path);

    assert_traffic_works(&env);
    let server = env.host_echo_server(Ipv4Addr::LOCALHOST);
    env.assert_guest_echo((GATEWAY, server.port()), CONNECT_TIMEOUT, 11, 8 << 20);

    let udp = env.host_udp_echo_server(Ipv4Addr::LOCALHOST);
    let reply = guest_udp_roundtrip(&env, SocketAddrV4::new(GATEWAY, udp.port()), b"udp")
        .expect("UDP echo via the gateway");
    assert_eq!(reply, b"udp");

    // Not the gateway (answered by rslirp itself): this goes out through a ping socket.
    env.guest_ok(&["ping", "-c", "1", "-W", "2", &env.host_addr.to_string()]);

    // DNS: 10.0.2.3:53 is NATed to resolv.conf's nameserver. After the caller replaces its
    // resolv.conf, a new query must reach the new resolver, the old one being gone.
    assert_dns_follows_resolv_conf(&env, &caller, first_resolver);

    // DHCP: busybox udhcpc gets the first lease of the pool (-s /bin/true: leave the
    // interface as -c configured it).
    let out = env.guest_cmd(&[
        "udhcpc",
        "-i",
        TAP,
        "-f",
        "-q",
        "-n",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        "/bin/true",
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("lease of 10.0.2.15 obtained"),
        "udhcpc under the sandbox: {text}"
    );

    assert_port_forwards_work(&env, &api_path);
    rslirp.assert_running();
}

fn assert_port_forwards_work(env: &Env, api_path: &Path) {
    let guest_tcp = env.guest_tcp_listener_at((Ipv4Addr::UNSPECIFIED, 8080));
    let _guest_tcp = net::tcp_server(guest_tcp, net::echo);
    let guest_udp = env.guest_udp_socket_at((Ipv4Addr::UNSPECIFIED, 5353));
    let _guest_udp = net::udp_echo_server(guest_udp);

    // Root keeps CAP_NET_BIND_SERVICE for exactly this; a rootless rslirp never had it.
    let tcp_port = match env.mode {
        Mode::Rootful => 80,
        Mode::Rootless => {
            assert_eq!(
                add_forward(api_path, "tcp", 80, 8080),
                r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#,
                "a rootless rslirp cannot listen on port 80"
            );
            18080
        }
    };
    let tcp_reply = add_forward(api_path, "tcp", tcp_port, 8080);
    let udp_reply = add_forward(api_path, "udp", 15353, 5353);
    // A refused add takes no id.
    let (tcp_id, udp_id) = (1, 2);
    assert_eq!(tcp_reply, format!(r#"{{"return":{{"id":{tcp_id}}}}}"#));
    assert_eq!(udp_reply, format!(r#"{{"return":{{"id":{udp_id}}}}}"#));
    let list = api(api_path, r#"{"execute":"list_hostfwd"}"#);
    assert!(
        list.contains(&format!(r#""host_port":{tcp_port}"#))
            && list.contains(r#""host_port":15353"#),
        "{list}"
    );

    let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, tcp_port);
    let reply = env
        .in_host("forward client", move || {
            let stream = TcpStream::connect_timeout(&to.into(), CONNECT_TIMEOUT)?;
            net::set_timeouts(&stream);
            net::exchange(&stream, b"through the forward")
        })
        .wait(STEP_TIMEOUT)
        .expect("TCP through the forward");
    assert_eq!(reply, b"through the forward");
    let reply = env
        .in_host("forward client", || {
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            net::udp_roundtrip(&socket, "127.0.0.1:15353".parse().unwrap(), b"udp forward")
        })
        .wait(STEP_TIMEOUT)
        .expect("UDP through the forward");
    assert_eq!(reply, b"udp forward");

    for id in [tcp_id, udp_id] {
        let request = format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#);
        assert_eq!(api(api_path, &request), r#"{"return":{}}"#);
    }
    assert_eq!(
        api(api_path, r#"{"execute":"list_hostfwd"}"#),
        r#"{"entries":[]}"#
    );
    let refused = env
        .in_host("connect after remove", move || {
            TcpStream::connect_timeout(&to.into(), CONNECT_TIMEOUT)
        })
        .wait(STEP_TIMEOUT);
    assert!(
        refused.is_err(),
        "port {tcp_port} still listens after remove"
    );
}

/// A field of /proc/PID/status, e.g. `CapEff`, as a number (hex for the capability sets).
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:\t")))
        .unwrap_or_else(|| panic!("no {name} in /proc/PID/status:\n{status}"))
        .to_string()
}

/// The mount points of a mountinfo text, less those that other tests running at the same
/// time add and remove on the machine and that reach the caller's namespace (a slave of the
/// machine's) on their own: network namespace files and other tests' temporary directories.
fn mount_points(mountinfo: &str) -> BTreeSet<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| !point.starts_with("/run/netns/") && !point.starts_with("/tmp/rse2e-"))
        .map(str::to_string)
        .collect()
}

fn confinement_shows_in_proc_and_leaves_the_caller_alone(mode: Mode) {
    let env = Env::new(mode);
    let caller = env.caller_namespace();
    let before = mount_points(&caller.mountinfo());
    let api_path = api_socket_path(&env);
    let mut rslirp = start(&env, &caller, &CONFINED, &api_path);
    let pid = rslirp.pid();
    // The helper that removes the socket file at exit holds no copy of the ready fd.
    rslirp.assert_ready_fd_closed();

    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert_eq!(status_field(&status, "Seccomp"), "2", "filter mode");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    // Root keeps CAP_NET_BIND_SERVICE (in the initial user namespace: it binds host ports
    // below 1024). Rootless, the process never had it; its capabilities in the user
    // namespace the sandbox creates are all dropped, so every set is empty.
    let kept = match mode {
        Mode::Rootful => CAP_NET_BIND_SERVICE,
        Mode::Rootless => 0,
    };
    for (set, expected) in [
        ("CapEff", kept),
        ("CapPrm", kept),
        ("CapBnd", kept),
        ("CapInh", 0),
        ("CapAmb", 0),
    ] {
        let value = u64::from_str_radix(&status_field(&status, set), 16).expect("hex");
        assert_eq!(value, expected, "{set} is {value:#x}");
    }

    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let names: BTreeSet<String> = fs::read_dir(&root)
        .expect("list /proc/PID/root")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for present in ["etc", "run"] {
        assert!(
            names.contains(present),
            "no {present} in the new root: {names:?}"
        );
    }
    for absent in ["home", "root", "var", "usr", "proc", "dev"] {
        assert!(
            !names.contains(absent),
            "{absent} in the new root: {names:?}"
        );
    }
    // Read-only even for the test's root, in every kept tree.
    for dir in ["", "etc", "run", "run/rse2e-inner"] {
        let probe = root.join(dir).join("rse2e-probe");
        let err = fs::write(&probe, "x").expect_err("the sandbox's root is writable");
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EROFS),
            "{}: {err}",
            probe.display()
        );
    }

    // The caller's mounts: the one below its shared /run is still mounted, and nothing
    // of rslirp's (its tmpfs, binds, pivot) appeared or vanished.
    let after = caller.mountinfo();
    assert!(
        mount_point_listed(&after, INNER_RUN_MOUNT),
        "{INNER_RUN_MOUNT} gone:\n{after}"
    );
    assert_eq!(mount_points(&after), before, "the caller's mounts changed");
    // And the other way: rslirp's /run follows the caller's as a slave.
    caller.run_ok(&["mkdir", "/run/rse2e-later"]);
    caller.run_ok(&["mount", "-t", "tmpfs", "tmpfs", "/run/rse2e-later"]);
    wait_for(
        "the caller's new mount to reach the sandbox",
        STEP_TIMEOUT,
        || {
            let theirs = fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
            mount_point_listed(&theirs, "/run/rse2e-later").then_some(())
        },
    );
    rslirp.assert_running();

    // SIGTERM: status 0, and the control socket's file is gone by then, though neither the
    // sandbox nor the filter lets rslirp remove it itself.
    rslirp.signal(libc::SIGTERM);
    assert!(rslirp.wait_exit(common::EXIT_TIMEOUT).success());
    assert!(!api_path.exists(), "{} left behind", api_path.display());
}

fn syscalls_outside_the_list_are_refused(mode: Mode) {
    let env = Env::new(mode);
    let caller = env.caller_namespace();
    let api_path = api_socket_path(&env);

    // Control: the same calls from a sandboxed rslirp without the filter succeed.
    let mut control = start(&env, &caller, &["--enable-sandbox"], &api_path);
    assert!(
        inject::syscall(control.pid(), libc::SYS_getppid, &[]) > 0,
        "getppid without the filter"
    );
    assert_eq!(
        inject::syscall(control.pid(), libc::SYS_unshare, &[0]),
        0,
        "unshare(0)"
    );
    control.assert_running();
    control.signal(libc::SIGTERM);
    assert!(control.wait_exit(common::EXIT_TIMEOUT).success());

    let mut rslirp = start(&env, &caller, &CONFINED, &api_path);
    let pid = rslirp.pid();
    let eperm = -(libc::EPERM as i64);
    assert_eq!(
        inject::syscall(pid, libc::SYS_getppid, &[]),
        eperm,
        "getppid"
    );
    assert_eq!(
        inject::syscall(pid, libc::SYS_unshare, &[0]),
        eperm,
        "unshare(0)"
    );
    // An allowed call still runs (and fails on its own terms).
    let ebadf = -(libc::EBADF as i64);
    assert_eq!(
        inject::syscall(pid, libc::SYS_close, &[u64::MAX]),
        ebadf,
        "close(-1)"
    );
    // The refusals cost rslirp nothing.
    assert_traffic_works(&env);
    rslirp.assert_running();
}

/// Either flag without the other: the filter alone leaves the file system and the
/// capabilities as they were; the sandbox alone installs no filter.
fn each_flag_works_alone(mode: Mode) {
    let env = Env::new(mode);
    let caller = env.caller_namespace();
    let api_path = api_socket_path(&env);
    let first_resolver = host_udp_echo(&env, Ipv4Addr::LOCALHOST, 53);

    let mut rslirp = start(&env, &caller, &["--enable-seccomp"], &api_path);
    let status = fs::read_to_string(format!("/proc/{}/status", rslirp.pid())).expect("status");
    assert_eq!(status_field(&status, "Seccomp"), "2");
    let caller_status =
        fs::read_to_string(format!("/proc/{}/status", caller.pid())).expect("status");
    let own_caps = match mode {
        Mode::Rootful => status_field(&caller_status, "CapEff"),
        Mode::Rootless => "0000000000000000".to_string(),
    };
    assert_eq!(status_field(&status, "CapEff"), own_caps);
    assert!(fs::metadata(format!("/proc/{}/root/usr", rslirp.pid())).is_ok());
    assert_traffic_works(&env);
    // resolv.conf is re-read through the filter (open read-only, statx, read).
    assert_dns_follows_resolv_conf(&env, &caller, first_resolver);
    rslirp.signal(libc::SIGTERM);
    assert!(rslirp.wait_exit(common::EXIT_TIMEOUT).success());
    assert!(!api_path.exists(), "{} left behind", api_path.display());

    let mut rslirp = start(&env, &caller, &["--enable-sandbox"], &api_path);
    let status = fs::read_to_string(format!("/proc/{}/status", rslirp.pid())).expect("status");
    assert_eq!(status_field(&status, "Seccomp"), "0");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert!(fs::metadata(format!("/proc/{}/root/usr", rslirp.pid())).is_err());
    assert_traffic_works(&env);
    rslirp.assert_running();
}

/// Elsewhere the test fails loudly rather than pass without looking.
#[cfg(not(target_arch = "x86_64"))]
mod inject {
    pub fn syscall(_pid: u32, _nr: libc::c_long, _args: &[u64]) -> i64 {
        panic!("the system call injection of this test is written for x86_64 only")
    }
}

/// One system call made by a stopped process on the test's behalf (x86_64).
#[cfg(target_arch = "x86_64")]
mod inject {
    use std::thread;
    use std::time::Duration;

    const ATTEMPTS: usize = 100;
    /// The two bytes of x86_64's `syscall` instruction (0f 05), as a little-endian word.
    const SYSCALL_INSN: u64 = 0x050f;

    fn ptrace(request: libc::c_uint, pid: libc::pid_t, addr: u64, data: u64) -> i64 {
        // SAFETY: each request used here either takes plain integers or, for GETREGS and
        // SETREGS, a pointer to a user_regs_struct the caller owns for the call.
        unsafe { libc::ptrace(request, pid, addr, data) }
    }

    fn wait_stop(pid: libc::pid_t) -> libc::c_int {
        let mut status = 0;
        // SAFETY: waitpid writes one int into `status`.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
        assert!(libc::WIFSTOPPED(status), "tracee did not stop: {status:#x}");
        status
    }

    fn get_regs(pid: libc::pid_t) -> libc::user_regs_struct {
        // SAFETY: user_regs_struct is plain integers; all zeroes is a valid value.
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        let rc = ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs as *mut _ as u64);
        assert_eq!(rc, 0, "PTRACE_GETREGS: {}", std::io::Error::last_os_error());
        regs
    }

    fn set_regs(pid: libc::pid_t, regs: &libc::user_regs_struct) {
        let rc = ptrace(libc::PTRACE_SETREGS, pid, 0, regs as *const _ as u64);
        assert_eq!(rc, 0, "PTRACE_SETREGS: {}", std::io::Error::last_os_error());
    }

    /// Makes `pid` (idle in epoll_wait) execute syscall `nr` with `args`; returns its raw
    /// result (-errno on failure). The process resumes where it was, seeing at most an
    /// EINTR from its epoll_wait, which the event loop retries.
    pub fn syscall(pid: u32, nr: libc::c_long, args: &[u64]) -> i64 {
        let pid = pid as libc::pid_t;
        let rc = ptrace(libc::PTRACE_SEIZE, pid, 0, 0);
        assert_eq!(rc, 0, "PTRACE_SEIZE: {}", std::io::Error::last_os_error());
        let result = (0..ATTEMPTS).find_map(|_| {
            assert_eq!(
                ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0),
                0,
                "PTRACE_INTERRUPT"
            );
            wait_stop(pid);
            let saved = get_regs(pid);
            // Stopped inside a system call, the process sits right after its `syscall`.
            let entry = saved.rip.wrapping_sub(2);
            let word = ptrace(libc::PTRACE_PEEKTEXT, pid, entry, 0) as u64;
            if saved.orig_rax == u64::MAX || word & 0xffff != SYSCALL_INSN {
                // Busy in user space just now: let it run and try again.
                assert_eq!(ptrace(libc::PTRACE_CONT, pid, 0, 0), 0, "PTRACE_CONT");
                thread::sleep(Duration::from_millis(20));
                return None;
            }
            let mut call = saved;
            call.rip = entry;
            call.rax = nr as u64;
            // Not "in a system call" any more: no restart of the interrupted one now.
            call.orig_rax = u64::MAX;
            let mut registers = [0u64; 6];
            registers[..args.len()].copy_from_slice(args);
            call.rdi = registers[0];
            call.rsi = registers[1];
            call.rdx = registers[2];
            call.r10 = registers[3];
            call.r8 = registers[4];
            call.r9 = registers[5];
            set_regs(pid, &call);
            assert_eq!(
                ptrace(libc::PTRACE_SINGLESTEP, pid, 0, 0),
                0,
                "PTRACE_SINGLESTEP"
            );
            let status = wait_stop(pid);
            assert_eq!(libc::WSTOPSIG(status), libc::SIGTRAP, "single step");
            let result = get_regs(pid).rax as i64;
            set_regs(pid, &saved);
            Some(result)
        });
        assert_eq!(ptrace(libc::PTRACE_DETACH, pid, 0, 0), 0, "PTRACE_DETACH");
        result.expect("the process never stopped inside a system call")
    }
}

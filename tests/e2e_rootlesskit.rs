//! End-to-end: rootlesskit (the Debian package, 1.1) as a real client of rslirp. It starts
//! rslirp as its slirp4netns (`--mtu 65520 -r 3 --api-socket STATE/.s4nn.sock PID tap0`,
//! after probing `--help` for features) and publishes ports through rslirp's control socket
//! with its `slirp4netns` port driver, driven by `rootlessctl`.
//!
//! Everything runs as the unprivileged test user inside the test's host namespace, in a PID
//! namespace of its own (with its own /proc) so that killing it takes rootlesskit, its child
//! and rslirp down together, also when the test fails.

// One test, so the harness's both_modes! goes unused here.
#[allow(unused_macros)]
mod common;

use common::api::{self, Api, Fwd};
use common::process::{command, run, wait_for, Proc};
use common::{Env, Mode, AS_TEST_USER, STEP_TIMEOUT, TEST_USER};
use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const PARENT_PORT: u16 = 18080;
const CHILD_PORT: u16 = 80;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const TOOLS: [&str; 5] = [
    "rootlesskit",
    "rootlessctl",
    "busybox",
    "newuidmap",
    "usermod",
];

/// rootlesskit maps the user's subordinate ids into its namespace and refuses to start
/// without them. Give TEST_USER a range after every range already assigned (once).
fn ensure_subordinate_ids() {
    const FILES: [&str; 2] = ["/etc/subuid", "/etc/subgid"];
    const COUNT: u64 = 65536;
    // Lines of the form `name:start:count`.
    let ranges = |file: &str| -> Vec<(String, u64, u64)> {
        let text = fs::read_to_string(file).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?.to_string();
                let start = fields.next()?.parse().ok()?;
                let count = fields.next()?.parse().ok()?;
                Some((name, start, count))
            })
            .collect()
    };
    let has_range = |file: &str| ranges(file).iter().any(|(name, _, _)| name == TEST_USER);
    if FILES.into_iter().all(has_range) {
        return;
    }
    let end_of_ranges = FILES
        .into_iter()
        .flat_map(ranges)
        .map(|(_, start, count)| start + count)
        .max()
        .unwrap_or(0);
    let start = end_of_ranges.max(100_000).div_ceil(COUNT) * COUNT;
    let range = format!("{start}-{}", start + COUNT - 1);
    let out = run(
        &mut command(
            "usermod",
            &["--add-subuids", &range, "--add-subgids", &range, TEST_USER],
        ),
        STEP_TIMEOUT,
    );
    assert!(
        FILES.into_iter().all(has_range),
        "cannot give {TEST_USER} subordinate ids {range}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_tools_installed() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = TOOLS
        .into_iter()
        .filter(|tool| {
            !std::env::split_paths(&path)
                .chain(["/usr/sbin".into(), "/sbin".into()])
                .any(|dir| dir.join(tool).is_file())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?}: scripts/test.sh installs rootlesskit, uidmap and busybox"
    );
}

/// A running rootlesskit; the whole PID namespace dies with it on drop.
struct Rootlesskit {
    proc: Proc,
    log: PathBuf,
    state_dir: PathBuf,
}

impl Rootlesskit {
    /// `rootlesskit --net=slirp4netns --slirp4netns-binary=RSLIRP --port-driver=slirp4netns
    /// --state-dir=STATE EXTRA... busybox httpd -f -p 80 -h WWW`, as TEST_USER in the host
    /// namespace.
    fn start(env: &Env, www: &Path, extra: &[&str]) -> Rootlesskit {
        let dir = env.tmp.path.join("rootlesskit");
        fs::create_dir(&dir).expect("mkdir rootlesskit");
        // rootlesskit (TEST_USER) creates the state dir itself.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let state_dir = dir.join("state");
        let log = env.tmp.path.join("rootlesskit.log");
        let mut cmd = command("ip", &["netns", "exec", &env.host.name]);
        // --kill-child: when this unshare dies, so does the namespace's init (rootlesskit),
        // and with it every process in the namespace.
        cmd.args(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]);
        cmd.args(AS_TEST_USER);
        cmd.arg("rootlesskit")
            .arg("--debug")
            .arg("--net=slirp4netns")
            .arg(format!(
                "--slirp4netns-binary={}",
                env.binary_for_mode().display()
            ))
            .arg("--port-driver=slirp4netns")
            .arg(format!("--state-dir={}", state_dir.display()))
            .args(extra)
            .args([
                "busybox",
                "httpd",
                "-f",
                "-v",
                "-p",
                &CHILD_PORT.to_string(),
                "-h",
            ])
            .arg(www);
        let file = File::create(&log).expect("rootlesskit log");
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file);
        let proc = Proc::spawn(&mut cmd, "rootlesskit");
        let mut rootlesskit = Rootlesskit {
            proc,
            log,
            state_dir,
        };
        rootlesskit.await_api_socket();
        rootlesskit
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn api_socket(&self) -> PathBuf {
        self.state_dir.join("api.sock")
    }

    /// The control socket rootlesskit gives rslirp.
    fn rslirp_api(&self) -> Api {
        Api {
            path: self.state_dir.join(".s4nn.sock"),
        }
    }

    /// rootlesskit opens its API socket once the network (rslirp) is up.
    fn await_api_socket(&mut self) {
        let socket = self.api_socket();
        wait_for("rootlesskit's api.sock", STARTUP_TIMEOUT, || {
            if let Some(status) = self.proc.try_status() {
                panic!("rootlesskit exited ({status}):\n{}", self.output());
            }
            api::socket_file_exists(&socket).then_some(())
        });
    }

    /// `rootlessctl --socket STATE/api.sock ARGS...` as TEST_USER; its stdout.
    fn ctl(&self, env: &Env, args: &[&str]) -> String {
        let mut cmd: Command = command("ip", &["netns", "exec", &env.host.name]);
        cmd.args(AS_TEST_USER).arg("rootlessctl").arg("--socket");
        cmd.arg(self.api_socket()).args(args);
        let out = run(&mut cmd, STEP_TIMEOUT);
        assert!(
            out.status.success(),
            "rootlessctl {args:?} failed ({}): {}\nrootlesskit's output:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.output()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `list-ports --json`: one JSON object a line.
    fn ports(&self, env: &Env) -> Vec<serde_json::Value> {
        self.ctl(env, &["list-ports", "--json"])
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("list-ports {line:?}: {e}"))
            })
            .collect()
    }
}

impl Drop for Rootlesskit {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- rootlesskit's output ---\n{}", self.output());
        }
    }
}

/// GETs `to` from the host namespace until the server inside answers (it may start after
/// rootlesskit's API socket appears); panics with the last error after `timeout`.
fn get_until_served(env: &Env, to: SocketAddrV4, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        match api::host_http_get(env, to) {
            Ok(body) => return body,
            Err(e) if Instant::now() < deadline => {
                eprintln!("GET {to}: {e}; retrying");
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("GET {to} failed for {timeout:?}, last: {e}"),
        }
    }
}

#[test]
fn rootless_rootlesskit_publishes_ports_through_rslirp() {
    publish_a_port_through_rootlesskit(&[]);
}

/// As rootless Docker runs it. rootlesskit turns sandbox and seccomp on only after finding
/// `--enable-sandbox` and `--enable-seccomp` in rslirp's `--help` (else it refuses to
/// start); a published port still reaches the guest with host loopback disabled.
#[test]
fn rootless_rootlesskit_with_sandbox_seccomp_and_disable_host_loopback() {
    publish_a_port_through_rootlesskit(&[
        "--slirp4netns-sandbox=true",
        "--slirp4netns-seccomp=true",
        "--disable-host-loopback",
    ]);
}

/// `rootlessctl add-ports 127.0.0.1:18080:80/tcp`, a GET to the server inside through it,
/// `list-ports`, `remove-ports`: with `extra` rootlesskit options.
fn publish_a_port_through_rootlesskit(extra: &[&str]) {
    assert_tools_installed();
    // For its host namespace, test user and world-executable binary; its guest goes unused.
    let env = Env::new(Mode::Rootless);
    ensure_subordinate_ids();
    let www = env.tmp.path.join("www");
    fs::create_dir(&www).expect("mkdir www");
    let marker = format!("served inside rootlesskit {}\n", env.id);
    fs::write(www.join("index.html"), &marker).expect("index.html");
    fs::set_permissions(www.join("index.html"), fs::Permissions::from_mode(0o644)).expect("chmod");

    let rootlesskit = Rootlesskit::start(&env, &www, extra);
    let spec = format!("127.0.0.1:{PARENT_PORT}:{CHILD_PORT}/tcp");
    let id: u64 = rootlesskit
        .ctl(&env, &["add-ports", &spec])
        .trim()
        .parse()
        .expect("add-ports prints the new id");

    let published = SocketAddrV4::new(Ipv4Addr::LOCALHOST, PARENT_PORT);
    assert_eq!(
        get_until_served(&env, published, Duration::from_secs(10)),
        marker
    );

    let ports = rootlesskit.ports(&env);
    assert_eq!(ports.len(), 1, "list-ports: {ports:?}");
    let port = &ports[0];
    assert_eq!(port["id"].as_u64(), Some(id), "{port}");
    assert_eq!(port["spec"]["proto"], "tcp", "{port}");
    assert_eq!(port["spec"]["parentIP"], "127.0.0.1", "{port}");
    assert_eq!(
        port["spec"]["parentPort"].as_u64(),
        Some(u64::from(PARENT_PORT)),
        "{port}"
    );
    assert_eq!(
        port["spec"]["childPort"].as_u64(),
        Some(u64::from(CHILD_PORT)),
        "{port}"
    );
    // What rootlesskit asked rslirp for, as rslirp lists it.
    // (rootlesskit passes the child IP it was told, 10.0.2.100, as guest_addr.)
    let fwd = Fwd::tcp(Ipv4Addr::LOCALHOST, PARENT_PORT, CHILD_PORT);
    assert_eq!(
        rootlesskit.rslirp_api().list(),
        api::list_reply(&[(id, &fwd)])
    );

    rootlesskit.ctl(&env, &["remove-ports", &id.to_string()]);
    assert!(
        rootlesskit.ports(&env).is_empty(),
        "list-ports after remove-ports"
    );
    assert_eq!(rootlesskit.rslirp_api().list(), r#"{"entries":[]}"#);
    let refused = env
        .in_host("host connect", move || {
            TcpStream::connect_timeout(&SocketAddr::V4(published), Duration::from_secs(2)).map(drop)
        })
        .wait(STEP_TIMEOUT)
        .expect_err("the removed port must refuse connections");
    assert_eq!(
        refused.kind(),
        io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
}

//! The three network helpers, started the same way for every case: rootless, in the
//! world's host namespace, configuring `tap0` in the container with 10.0.2.100/24 and a
//! default route via 10.0.2.2, which reaches the host namespace's 127.0.0.1.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use crate::sys::{self, run_ok, Proc};
use crate::world::World;

/// How long a helper may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often pasta's pid file is looked for: fine enough for a time to ready in ms.
const PID_FILE_POLL: Duration = Duration::from_micros(200);
const API_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Slirp4netns,
    Pasta,
    Rslirp,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Slirp4netns => "slirp4netns",
            Kind::Pasta => "pasta",
            Kind::Rslirp => "rslirp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A host port published to a container port.
#[derive(Debug, Clone, Copy)]
pub struct Forward {
    pub proto: Proto,
    pub host_port: u16,
    pub guest_port: u16,
}

/// How a case wants the helper started.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub mtu: usize,
    pub forward: Option<Forward>,
    /// Start with a control socket even without a forward (for cases that poll it).
    pub api: bool,
}

pub struct Helper {
    pub kind: Kind,
    /// An executable [`crate::world::USER`] can run.
    pub bin: PathBuf,
}

/// A helper that said it is ready; stopped on drop.
pub struct Running {
    proc: Proc,
    /// From spawning the command to the ready signal.
    pub ready: Duration,
    log: PathBuf,
    /// The control socket, when the helper was started with one.
    pub api_socket: Option<PathBuf>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Fails (with the end of its log) if the helper has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        if self.proc.running() {
            Ok(())
        } else {
            Err(format!("the helper exited; log: {}", log_tail(&self.log)))
        }
    }
}

impl Helper {
    /// Starts the helper for `world` (start number `n`, for file names) and waits for
    /// its ready signal: the `1` on fd 3 for slirp4netns and rslirp, the pid file for
    /// pasta (it writes it once the namespace is set up and it enters its loop).
    pub fn start(
        &self,
        world: &World,
        dir: &Path,
        n: u32,
        opts: &Options,
    ) -> Result<Running, String> {
        let log = dir.join(format!("{}-{n}.log", self.kind.name()));
        let api_socket = dir.join(format!("api-{n}.sock"));
        let pid_file = dir.join(format!("pasta-{n}.pid"));
        let mut cmd = world.host_user_cmd(&self.bin);
        let guest_pid = world.guest_pid().to_string();
        match self.kind {
            Kind::Slirp4netns | Kind::Rslirp => {
                cmd.args([
                    "--configure",
                    &format!("--mtu={}", opts.mtu),
                    "--ready-fd=3",
                ]);
                if opts.forward.is_some() || opts.api {
                    cmd.arg(format!("--api-socket={}", api_socket.display()));
                }
                if self.kind == Kind::Rslirp {
                    // RSLIRP_BENCH_RSLIRP_ARGS: extra options for a look inside (e.g.
                    // `--pcap /tmp/x.pcap`), never for the figures to quote.
                    let extra = std::env::var("RSLIRP_BENCH_RSLIRP_ARGS").unwrap_or_default();
                    cmd.args(extra.split_whitespace());
                }
                cmd.args([guest_pid.as_str(), "tap0"]);
            }
            Kind::Pasta => {
                let ports = |proto: Proto| match opts.forward {
                    Some(f) if f.proto == proto => format!("{}:{}", f.host_port, f.guest_port),
                    _ => "none".to_string(),
                };
                let (tcp_ports, udp_ports) = (ports(Proto::Tcp), ports(Proto::Udp));
                #[rustfmt::skip]
                cmd.args([
                    "--foreground", "--quiet", "--config-net",
                    "--ns-ifname", "tap0",
                    "--address", "10.0.2.100", "--netmask", "24", "--gateway", "10.0.2.2",
                    // No default route in the host namespace: name the template interface.
                    "--interface", world.host_ifname,
                    "--mtu", &opts.mtu.to_string(),
                    "--tcp-ports", &tcp_ports, "--udp-ports", &udp_ports,
                    "--tcp-ns", "none", "--udp-ns", "none",
                ]);
                cmd.arg("--pid").arg(&pid_file).arg(&guest_pid);
            }
        }
        let out = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("dup log: {e}"))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);

        let (ready_read, ready_write) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
        if self.kind != Kind::Pasta {
            sys::pass_as_fd3(&mut cmd, &ready_write);
        }
        let start = Instant::now();
        let proc = sys::spawn(&mut cmd).map_err(|e| format!("start {}: {e}", self.kind.name()))?;
        // Our copy must go, or EOF (the helper died) would never show on the read end.
        drop(ready_write);
        let with_api = self.kind != Kind::Pasta && (opts.forward.is_some() || opts.api);
        let mut running = Running {
            proc,
            ready: Duration::ZERO,
            log,
            api_socket: with_api.then(|| api_socket.clone()),
        };
        match self.kind {
            Kind::Pasta => await_pid_file(&mut running, &pid_file)?,
            _ => await_ready_byte(&running, ready_read)?,
        }
        running.ready = start.elapsed();
        check_configured(world)?;
        if let (Some(forward), Kind::Slirp4netns | Kind::Rslirp) = (opts.forward, self.kind) {
            add_hostfwd(&api_socket, forward)?;
        }
        Ok(running)
    }
}

fn await_ready_byte(running: &Running, mut ready: File) -> Result<(), String> {
    if !sys::wait_readable(&ready, READY_TIMEOUT) {
        return Err(format!(
            "no ready byte within {READY_TIMEOUT:?}; log: {}",
            log_tail(&running.log)
        ));
    }
    let mut byte = [0u8; 1];
    match ready.read(&mut byte) {
        Ok(1) if byte[0] == b'1' => Ok(()),
        _ => Err(format!(
            "ready fd closed without a '1'; log: {}",
            log_tail(&running.log)
        )),
    }
}

fn await_pid_file(running: &mut Running, pid_file: &Path) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        let written =
            fs::read_to_string(pid_file).is_ok_and(|pid| pid.trim().parse::<u32>().is_ok());
        if written {
            return Ok(());
        }
        running.check_alive()?;
        thread::sleep(PID_FILE_POLL);
    }
    Err(format!(
        "no pid file within {READY_TIMEOUT:?}; log: {}",
        log_tail(&running.log)
    ))
}

/// The helper must have given the container its address; otherwise every measurement
/// after this would fail in a less telling way.
fn check_configured(world: &World) -> Result<(), String> {
    let addrs = run_ok(
        &mut world.guest_cmd(&["ip", "-4", "-o", "addr", "show", "dev", "tap0"]),
        Duration::from_secs(5),
    )?;
    if addrs.contains("10.0.2.100/24") {
        Ok(())
    } else {
        Err(format!(
            "tap0 in the container is not configured: {addrs:?}"
        ))
    }
}

/// Publishes `forward` through the control socket (slirp4netns's API, which rslirp keeps).
fn add_hostfwd(api_socket: &Path, forward: Forward) -> Result<(), String> {
    let request = format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{}","host_addr":"0.0.0.0","host_port":{},"guest_port":{}}}}}"#,
        forward.proto.name(),
        forward.host_port,
        forward.guest_port
    );
    let talk = || -> std::io::Result<String> {
        let mut stream = UnixStream::connect(api_socket)?;
        stream.set_read_timeout(Some(API_TIMEOUT))?;
        stream.write_all(request.as_bytes())?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    };
    let reply = talk().map_err(|e| format!("add_hostfwd via {}: {e}", api_socket.display()))?;
    if reply.starts_with(r#"{"return":{"id":"#) {
        Ok(())
    } else {
        Err(format!("add_hostfwd refused: {reply}"))
    }
}

/// The last lines of a helper's log, for error messages.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with("Failed to send") && !line.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

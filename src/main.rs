//! rslirp: parse the command line, set up the tap, run the loop, exit with the right code.
//!
//! Exit codes: 0 after SIGTERM/SIGINT or when the exit fd hangs up (and for --help and
//! --version); 1 for bad usage and for any fatal setup or runtime error, with one line on
//! stderr saying what failed.

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rslirp::api_socket::ApiServer;
use rslirp::bess::{self, Accepted};
use rslirp::cli::{self, Command, NetnsType, Options, TargetType};
use rslirp::event_loop::{Clock, EventLoop, Exit, Sources, TargetWatch};
use rslirp::host::{Outbound, RealHost};
use rslirp::netns::{self, NetnsTarget, TapConfig, TapRequest};
use rslirp::pcap::PcapWriter;
use rslirp::resolv::{self, ResolvWatch};
use rslirp::tap::{self, LinkKind, Tap};
use rslirp_stack::api::ForwardRequest;
use rslirp_stack::forward::AddForwardError;
use rslirp_stack::{HostError, Stack};
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;

/// Large blocks (the TCP flows' buffers) as mappings of their own: untouched, they cost no
/// memory (see `rslirp::alloc`).
#[global_allocator]
static ALLOCATOR: rslirp::alloc::Allocator = rslirp::alloc::Allocator;

fn main() -> ExitCode {
    let started = StartClock(std::time::Instant::now());
    let mut args = std::env::args_os();
    let argv0 = args
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rslirp".to_string());
    let options = match cli::parse(&argv0, args) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help(text)) | Ok(Command::Version(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("{}", err.message);
            if err.show_usage {
                eprint!("{}", cli::usage(&argv0));
            }
            return ExitCode::FAILURE;
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    let what = match (options.target_type, &options.netns_type) {
        (TargetType::Bess, _) => format!("bess socket {}", options.target),
        (TargetType::Netns, NetnsType::TapFd) => format!("tapfd {}", options.target),
        (TargetType::Netns, netns_type) => format!(
            "{} {}, tap {}",
            netns_type.name(),
            options.target,
            options.tap_name
        ),
    };
    log::info!("rslirp {} starting: {what}", env!("CARGO_PKG_VERSION"));
    match run(options, &started) {
        Ok(exit) => {
            log::info!("exiting ({exit:?})");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("rslirp: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Everything after parsing; any `Err` is fatal and becomes one line on stderr.
/// Time since `main` began, logged at `debug` after each step of the start (where the time
/// to the ready byte goes: `RUST_LOG=debug`).
struct StartClock(std::time::Instant);

impl StartClock {
    fn mark(&self, step: &str) {
        log::debug!(
            "start: {step} after {:.3} ms",
            self.0.elapsed().as_secs_f64() * 1e3
        );
    }
}

fn run(options: Options, started: &StartClock) -> Result<Exit, String> {
    started.mark("options and logger");
    // Every flow holds a host socket: take all the descriptors we may (see `fds`).
    let nofile = rslirp::fds::raise_nofile_limit();
    // Checked before any side effect.
    let budget = tcp_buffer_budget()?;
    // Block the exit signals before anything else so they queue for the signalfd; the
    // forked setup child inherits the mask and never needs them.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))?;

    // Take ownership of the inherited fds first, so they are closed on every path.
    // SAFETY: the caller passed these numbers as open fds for us alone (-r/-e); nothing
    // else in this process owns them, and the CLI rejected negative values.
    let ready_fd = options
        .ready_fd
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: as above.
    let exit_fd = options
        .exit_fd
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    if let Some(fd) = &exit_fd {
        rslirp::set_nonblocking(fd).map_err(|e| format!("exit-fd: {e}"))?;
    }

    // Before the tap, so that a bad path fails before any side effect, and long before the
    // sandbox hides the file system.
    let pcap = options
        .pcap
        .as_deref()
        .map(|path| PcapWriter::create(path, options.pcap_size))
        .transpose()
        .map_err(|e| e.to_string())?;
    // Ours: the interfaces outbound flows are bound to, checked where rslirp's host sockets
    // live (this process's network namespace, never the container's) and before the tap,
    // so that a missing interface or a kernel that forbids the binding fails the start.
    if let Some(name) = &options.outbound_if {
        rslirp::host::check_outbound_device(name, false)?;
    }
    if let Some(name) = &options.outbound_if6 {
        rslirp::host::check_outbound_device(name, true)?;
    }
    // Before the tap: the process watched is then the one whose namespace we join (had the
    // pid been recycled in between, the pidfd reports an exit at once, which is the truth).
    let target = match (&options.netns_type, options.pid) {
        (NetnsType::Pid, Some(pid)) => TargetWatch::open(pid, &options.tap_name)?,
        _ => None,
    };
    let tap = match options.target_type {
        TargetType::Netns => open_tap(&options)?,
        TargetType::Bess => {
            let path = options
                .bess_socket
                .as_deref()
                .ok_or("no BESS socket path")?;
            match bess::accept_peer(path, &signals, exit_fd.as_ref()).map_err(|e| e.to_string())? {
                Accepted::Peer(fd) => Tap {
                    fd,
                    vnet_hdr: false,
                    offload: false,
                    kind: LinkKind::Socket,
                },
                // Asked to stop before anyone connected: nothing was set up, nothing to undo.
                Accepted::Exit(exit) => return Ok(exit),
            }
        }
    };
    started.mark("tap open (child: namespaces, tap, configure) or BESS peer accepted");
    let mut config = options.stack_config();
    config.tap_offload = tap.offload;
    if let Some(budget) = budget {
        config.limits.tcp_buffer_budget = budget;
    }
    log::info!(
        "TCP buffers: at most {} MiB in all (set with {BUDGET_ENV}=MiB)",
        config.limits.tcp_buffer_budget >> 20
    );
    // The flow tables fit the descriptors left once the reserve is kept back, so a guest
    // can never take the ones the control socket and the forwards need.
    let fd_plan = rslirp::fds::plan(
        &config.limits,
        usize::try_from(nofile.soft).unwrap_or(usize::MAX),
        rslirp::fds::open_fds(),
    );
    log::info!(
        "{}",
        rslirp::fds::describe(&nofile, &fd_plan, &config.limits)
    );
    config.limits = fd_plan.limits;
    let clock = Clock::new();
    let mut stack = Stack::new(config.clone(), clock.now(), rslirp::random_seed());
    let resolv = (!config.disable_dns).then(|| {
        let path = Path::new(resolv::RESOLV_CONF);
        resolv::ResolvConf::read(path).apply(&mut stack);
        ResolvWatch::new(path)
            .map_err(|e| log::warn!("cannot watch {}: {e}", path.display()))
            .ok()
    });
    let poll = mio::Poll::new().map_err(|e| format!("epoll: {e}"))?;
    let registry = poll
        .registry()
        .try_clone()
        .map_err(|e| format!("epoll: {e}"))?;
    let outbound = Outbound {
        v4: match &options.outbound_addr {
            Some(spec) => Some(outbound_v4(spec)?),
            None => None,
        },
        v6: match &options.outbound_addr6 {
            Some(spec) => Some(outbound_v6(spec)?),
            None => None,
        },
        if4: options.outbound_if.clone(),
        if6: options.outbound_if6.clone(),
    };
    let host = RealHost::new(registry, outbound);
    let api = match &options.api_socket {
        Some(path) => Some(
            ApiServer::bind(path, poll.registry(), config.limits.max_api_clients)
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let sources = Sources {
        tap: tap.fd,
        link: tap.kind,
        vnet_hdr: tap.vnet_hdr,
        signals,
        exit_fd,
        api,
        resolv: resolv.flatten(),
        pcap,
        target,
    };
    let mut event_loop = EventLoop::new(poll, clock, sources, stack, host)
        .map_err(|e| format!("event loop: {e}"))?;
    started.mark("stack, host sockets and event loop");
    // Ours: forwards asked for on the command line, through the path add_hostfwd requests
    // take (same ids, listed and removable through the API). Before the ready byte, so a
    // caller may connect as soon as it reads it; a port we cannot listen on is fatal.
    for publish in &options.publish {
        for request in publish.requests() {
            event_loop
                .add_forward(&request)
                .map_err(|err| publish_error(&request, &err))?;
        }
    }

    // Last step before ready: from here on only the running loop's needs are allowed.
    // Held to the end of the run: dropping it removes the control socket's file.
    let _confinement = rslirp::sandbox::apply(
        options.enable_sandbox,
        options.enable_seccomp,
        options.api_socket.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    started.mark("forwards and sandbox");
    log::info!(
        "ready: network {}, gateway {}, guest {}, MTU {}, tap offloads {}",
        config.network,
        config.network.gateway(),
        config.network.guest(),
        config.mtu,
        if config.tap_offload { "on" } else { "off" }
    );
    if let Some(fd) = ready_fd {
        let mut file = File::from(fd);
        file.write_all(b"1")
            .map_err(|e| format!("cannot write to ready-fd: {e}"))?;
        // Dropping `file` closes the fd, which is part of the ready signal.
    }
    event_loop.run().map_err(|e| e.to_string())
}

/// Set to `0` to open the tap as before the offloads (no virtio-net header, every frame at
/// most the MTU): a switch for comparing the two paths and a way out should a kernel
/// mishandle them.
const OFFLOAD_ENV: &str = "RSLIRP_TAP_OFFLOAD";

/// The TCP buffer budget in MiB (`Limits::tcp_buffer_budget`): the most buffer memory a
/// guest can make rslirp hold. Raise it for big windows on many flows at once.
const BUDGET_ENV: &str = "RSLIRP_TCP_BUFFER_BUDGET";

fn tcp_buffer_budget() -> Result<Option<usize>, String> {
    let Some(value) = std::env::var_os(BUDGET_ENV) else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    match text.trim().parse::<usize>() {
        Ok(mib) if (1..=1 << 20).contains(&mib) => Ok(Some(mib << 20)),
        _ => Err(format!(
            "{BUDGET_ENV} must be a number of MiB from 1 to 1048576, not \"{text}\""
        )),
    }
}

fn open_tap(options: &Options) -> Result<Tap, String> {
    let offload = std::env::var_os(OFFLOAD_ENV).is_none_or(|value| value != "0");
    let target = match options.netns_type {
        NetnsType::Pid => NetnsTarget::Pid(options.pid.ok_or("PID must be a positive integer")?),
        NetnsType::Path => NetnsTarget::Path(options.target.clone().into()),
        NetnsType::TapFd => {
            let fd = options.tap_fd.ok_or("TAPFD must a file descriptor")?;
            // As slirp4netns, these are accepted and have no effect: no namespace is
            // entered, the caller set the interface up.
            if options.configure {
                log::warn!("--configure has no effect with --netns-type=tapfd");
            }
            if options.userns_path.is_some() {
                log::warn!("--userns-path has no effect with --netns-type=tapfd");
            }
            // SAFETY: the caller passed this number as an fd for us alone; nothing else in
            // this process owns it (the CLI refused it if it is also the ready or exit fd,
            // which we own too).
            return unsafe { tap::adopt_tap_fd(fd, offload) }.map_err(|e| e.to_string());
        }
    };
    let network = options.network;
    let configure = options.configure.then(|| TapConfig {
        mtu: options.mtu,
        address: network.guest(),
        prefix_len: network.prefix_len(),
        gateway: network.gateway(),
        mac: options.mac_address,
    });
    let request = TapRequest {
        target,
        userns_path: options.userns_path.clone(),
        tap_name: options.tap_name.clone(),
        configure,
        offload,
    };
    netns::open_tap(&request).map_err(|e| e.to_string())
}

/// A `--publish` forward that could not be set up, naming its port and the cause.
fn publish_error(request: &ForwardRequest, err: &AddForwardError) -> String {
    let port = format!("{} port {}", request.proto, request.host_port);
    match err {
        AddForwardError::Listen { addr, error, .. } => {
            let cause = match error {
                HostError::Other(errno) => Errno::from_raw(*errno).desc().to_string(),
                // EADDRNOTAVAIL lands here too: the address is not one of the host's.
                HostError::Exhausted => {
                    "address not available, or out of descriptors or memory".to_string()
                }
                other => other.to_string(),
            };
            format!("--publish: cannot listen on {port} ({addr}): {cause}")
        }
        other => format!("--publish: cannot publish {port}: {other}"),
    }
}

/// `--outbound-addr`: an IPv4 address, or an interface whose first IPv4 address is used.
fn outbound_v4(spec: &str) -> Result<Ipv4Addr, String> {
    let v4 = |ip| match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    };
    outbound_addr(spec, v4, "IPv4 address (--outbound-addr)")
}

/// `--outbound-addr6`: an IPv6 address, or an interface whose first IPv6 address is used.
fn outbound_v6(spec: &str) -> Result<Ipv6Addr, String> {
    let global_v6 = |ip| match ip {
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) != 0xfe80 => Some(v6),
        _ => None,
    };
    outbound_addr(spec, global_v6, "global IPv6 address (--outbound-addr6)")
}

/// `spec` as an address, or else the first address of the interface `spec` that `pick`
/// takes; `missing` names what the interface lacks in the error.
fn outbound_addr<A: std::str::FromStr>(
    spec: &str,
    pick: impl Fn(IpAddr) -> Option<A>,
    missing: &str,
) -> Result<A, String> {
    if let Ok(addr) = spec.parse() {
        return Ok(addr);
    }
    interface_addresses(spec)?
        .into_iter()
        .find_map(pick)
        .ok_or_else(|| format!("interface {spec} has no {missing}"))
}

fn interface_addresses(name: &str) -> Result<Vec<IpAddr>, String> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))?;
    Ok(addrs
        .filter(|ifa| ifa.interface_name == name)
        .filter_map(|ifa| {
            let addr = ifa.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .collect())
}

//! rslirp: parse the command line, set up the tap, run the loop, exit with the right code.
//!
//! Exit codes: 0 after SIGTERM/SIGINT or when the exit fd hangs up (and for --help and
//! --version); 1 for bad usage and for any fatal setup or runtime error, with one line on
//! stderr saying what failed.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rslirp::api_socket::ApiServer;
use rslirp::cli::{self, Command, NetnsType, Options};
use rslirp::event_loop::{Clock, EventLoop, Exit, Sources};
use rslirp::host::{Outbound, RealHost};
use rslirp::netns::{self, NetnsTarget, TapConfig, TapRequest};
use rslirp_stack::Stack;
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

fn main() -> ExitCode {
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
    match run(options) {
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
fn run(options: Options) -> Result<Exit, String> {
    rslirp::tune_allocator();
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

    let tap = open_tap(&options)?;
    let config = options.stack_config();
    let clock = Clock::new();
    let stack = Stack::new(config.clone(), clock.now(), rslirp::random_seed());
    let poll = mio::Poll::new().map_err(|e| format!("epoll: {e}"))?;
    let registry = poll
        .registry()
        .try_clone()
        .map_err(|e| format!("epoll: {e}"))?;
    let host = RealHost::new(registry, Outbound::default());
    let api = match &options.api_socket {
        Some(path) => Some(ApiServer::bind(path, poll.registry()).map_err(|e| e.to_string())?),
        None => None,
    };
    let sources = Sources {
        tap,
        signals,
        exit_fd,
        api,
    };
    let mut event_loop = EventLoop::new(poll, clock, sources, stack, host)
        .map_err(|e| format!("event loop: {e}"))?;

    log::info!(
        "ready: network {}, gateway {}, guest {}, MTU {}",
        config.network,
        config.network.gateway(),
        config.network.guest(),
        config.mtu
    );
    if let Some(fd) = ready_fd {
        let mut file = File::from(fd);
        file.write_all(b"1")
            .map_err(|e| format!("cannot write to ready-fd: {e}"))?;
        // Dropping `file` closes the fd, which is part of the ready signal.
    }
    event_loop.run().map_err(|e| e.to_string())
}

fn open_tap(options: &Options) -> Result<OwnedFd, String> {
    let target = match options.netns_type {
        NetnsType::Pid => NetnsTarget::Pid(options.pid.ok_or("PID must be a positive integer")?),
        NetnsType::Path => NetnsTarget::Path(options.target.clone().into()),
        NetnsType::TapFd => return Err("--netns-type=tapfd is not supported yet".into()),
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
    };
    netns::open_tap(&request).map_err(|e| e.to_string())
}

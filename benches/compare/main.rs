//! Side-by-side end-to-end benchmark: slirp4netns, pasta and rslirp in the same run, each
//! rootless, with the host side in a network namespace of its own, every case repeated
//! and interleaved (A B C A B C ...), medians and ratios to slirp4netns at the end.
//!
//! Run it with `sudo benches/compare.sh` (root makes the namespaces and the unprivileged
//! user; the helpers themselves run as that user). Started any other way (`cargo bench`)
//! it only says so and exits, so that a workspace-wide `cargo bench` stays harmless.
//! docs/performance.md describes the method and the last results.
//!
//! Knobs (environment): RSLIRP_BENCH_REPS (3), RSLIRP_BENCH_IPERF_SECS (5),
//! RSLIRP_BENCH_ROUND_TRIPS (2000), RSLIRP_BENCH_CONN_SECS (3), RSLIRP_BENCH_FLOWS (1000),
//! RSLIRP_BENCH_SYSCALL_OPS (1000: round trips and connections of the syscall pass),
//! RSLIRP_BENCH_HELPERS (e.g. `slirp4netns,rslirp`), RSLIRP_BENCH_CASES (e.g.
//! `latency,memory`; names as printed), RSLIRP_BENCH_RSLIRP (the rslirp binary),
//! RSLIRP_BENCH_RSLIRP_ARGS (extra rslirp options, e.g. `--pcap /tmp/rslirp.pcap`).

mod cases;
mod helper;
mod report;
mod sys;
mod syscalls;
mod world;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cases::{Case, Measured, Metric, Settings};
use helper::{Helper, Kind};
use report::Results;
use sys::command;
use world::{RunDir, World};

const SLIRP4NETNS: &str = "/usr/bin/slirp4netns";
const PASTA: &str = "/usr/bin/pasta";

fn main() -> ExitCode {
    if std::env::var_os("RSLIRP_BENCH_COMPARE").is_none() {
        println!("compare: skipped; run `sudo benches/compare.sh` for the side-by-side benchmark");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    if !sys::is_root() {
        return Err("must run as root (sudo benches/compare.sh)".into());
    }
    let settings = settings()?;
    let reps: u32 = env_number("RSLIRP_BENCH_REPS", 3)?;
    world::remove_leftovers();
    sys::raise_fd_limit().map_err(|e| format!("raise the open-files limit: {e}"))?;
    let dir = RunDir::create()?;
    let helpers = helpers(&dir)?;
    let cases = selected_cases()?;
    let kinds: Vec<Kind> = helpers.iter().map(|h| h.kind).collect();

    print_header(&helpers, &settings, reps);
    let started = Instant::now();
    let mut results = Results::default();
    let mut n = 0u32;
    for rep in 1..=reps {
        for case in &cases {
            for helper in &helpers {
                n += 1;
                let label = format!(
                    "[{rep}/{reps}] {:<23} {:<12}",
                    case.name(),
                    helper.kind.name()
                );
                match measure(helper, case, &dir, n, &settings) {
                    Ok(Measured { samples, details }) => {
                        for line in details {
                            results.detail(helper.kind, format!("[{rep}/{reps}] {line}"));
                        }
                        let shown: Vec<String> = samples
                            .iter()
                            .map(|(metric, value)| {
                                results.add(*metric, helper.kind, *value);
                                format!("{}={value:.2}", short_name(*metric))
                            })
                            .collect();
                        println!("{label} {}", shown.join(" "));
                    }
                    Err(e) => {
                        println!("{label} FAILED: {e}");
                        results.fail(helper.kind, format!("{} (run {rep}): {e}", case.name()));
                    }
                }
            }
        }
    }
    print_results(&results, &kinds, &settings, reps, started.elapsed());
    Ok(())
}

/// One case against one helper, in a world of its own; the time to ready comes with it.
fn measure(
    helper: &Helper,
    case: &Case,
    dir: &RunDir,
    n: u32,
    settings: &Settings,
) -> Result<Measured, String> {
    let world = World::new(n)?;
    let mut running = helper.start(&world, &dir.user_dir(), n, &case.options())?;
    let mut measured = case.run(&world, &mut running, settings, &dir.path)?;
    let ready = (Metric::Ready, running.ready.as_secs_f64() * 1e3);
    measured.samples.insert(0, ready);
    Ok(measured)
}

fn short_name(metric: Metric) -> &'static str {
    match metric {
        Metric::GuestToHost1500 | Metric::GuestToHost65520 => "Gbit/s",
        Metric::HostToGuest1500 | Metric::HostToGuest65520 => "Gbit/s",
        Metric::LatencyP50 | Metric::LatencyH2gP50 => "p50_us",
        Metric::LatencyP99 | Metric::LatencyH2gP99 => "p99_us",
        Metric::UdpP50 | Metric::UdpH2gP50 => "udp_p50_us",
        Metric::UdpP99 | Metric::UdpH2gP99 => "udp_p99_us",
        Metric::ConnRate | Metric::ConnRateH2g => "conn/s",
        Metric::CpuPerConnection | Metric::CpuPerConnectionH2g => "cpu_us/conn",
        Metric::CpuPerRoundTrip => "cpu_us/rtt",
        Metric::Ready => "ready_ms",
        Metric::IdleRss => "idle_KiB",
        Metric::FlowsRss => "flows_KiB",
        Metric::RssPerFlow => "KiB/flow",
        Metric::SyscallsTcpRoundTrip => "sys/tcp_rtt",
        Metric::SyscallsUdpRoundTrip => "sys/udp_rtt",
        Metric::SyscallsConnection => "sys/conn",
        Metric::FloodBulkShare => "bulk_kept_%",
        Metric::FloodApiMax => "api_max_ms",
        Metric::FloodSynRate => "syn/s",
    }
}

fn settings() -> Result<Settings, String> {
    Ok(Settings {
        iperf_secs: env_number("RSLIRP_BENCH_IPERF_SECS", 5)?,
        round_trips: env_number("RSLIRP_BENCH_ROUND_TRIPS", 2000)?,
        conn_rate_secs: env_number("RSLIRP_BENCH_CONN_SECS", 3)?,
        flows: env_number("RSLIRP_BENCH_FLOWS", 1000)?,
        syscall_ops: env_number::<usize>("RSLIRP_BENCH_SYSCALL_OPS", 1000)?.max(1),
    })
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(text) if !text.is_empty() => text
            .parse()
            .map_err(|_| format!("{name}={text} is not a number")),
        _ => Ok(default),
    }
}

/// `RSLIRP_BENCH_<what>` as a comma-separated list; `None` when unset (meaning all).
fn env_list(what: &str) -> Option<Vec<String>> {
    let text = std::env::var(format!("RSLIRP_BENCH_{what}")).ok()?;
    let items: Vec<String> = text
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    (!items.is_empty()).then_some(items)
}

fn selected_cases() -> Result<Vec<Case>, String> {
    let Some(names) = env_list("CASES") else {
        return Ok(Case::ALL.to_vec());
    };
    names
        .iter()
        .map(|name| {
            Case::ALL
                .into_iter()
                .find(|case| case.name() == *name)
                .ok_or_else(|| format!("unknown case {name}"))
        })
        .collect()
}

/// The helpers to compare, in table order. A missing slirp4netns or pasta is left out
/// with a note; rslirp is the subject and must be there.
fn helpers(dir: &RunDir) -> Result<Vec<Helper>, String> {
    let wanted = env_list("HELPERS");
    let wants = |kind: Kind| {
        wanted
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == kind.name()))
    };
    let rslirp = std::env::var_os("RSLIRP_BENCH_RSLIRP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rslirp")));
    let candidates = [
        (Kind::Slirp4netns, PathBuf::from(SLIRP4NETNS)),
        (Kind::Pasta, PathBuf::from(PASTA)),
        (Kind::Rslirp, dir.executable_copy(&rslirp)?),
    ];
    let mut helpers = Vec::new();
    for (kind, bin) in candidates {
        if !wants(kind) {
            continue;
        }
        if !bin.is_file() {
            println!(
                "note: {} not found at {}; left out",
                kind.name(),
                bin.display()
            );
            continue;
        }
        helpers.push(Helper { kind, bin });
    }
    if helpers.is_empty() {
        return Err("no helper to measure".into());
    }
    Ok(helpers)
}

/// The first line a command prints (a version string), or `?`.
fn first_line(program: &Path, args: &[&str]) -> String {
    let mut cmd = command(&program.to_string_lossy(), args);
    sys::run(&mut cmd, Duration::from_secs(5))
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines().next().map(|line| line.trim().to_string())
        })
        .unwrap_or_else(|| "?".to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".to_string())
}

/// The 1/5/15-minute load averages: other work on the machine skews every figure.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn print_header(helpers: &[Helper], settings: &Settings, reps: u32) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("rslirp side-by-side benchmark");
    println!(
        "machine: {} cores, {}, kernel {}",
        cores(),
        cpu_model(),
        kernel.trim()
    );
    println!("load average at start: {}", load_average());
    println!(
        "NOTE: the machine has {} cores, shared with iperf3 itself (client and server) and \
         this benchmark's clients: every throughput figure is three busy processes on {} cores.",
        cores(),
        cores()
    );
    for helper in helpers {
        let version = match helper.kind {
            // This pasta prints "unknown version"; the package knows better.
            Kind::Pasta => first_line(
                Path::new("dpkg-query"),
                &["-W", "-f", "passt ${Version}\n", "passt"],
            ),
            _ => first_line(&helper.bin, &["--version"]),
        };
        println!(
            "{:<12} {} ({version})",
            helper.kind.name(),
            helper.bin.display()
        );
    }
    println!(
        "iperf3       {}",
        first_line(Path::new("iperf3"), &["--version"])
    );
    println!(
        "{reps} interleaved runs per case; iperf3 {} s (+1 s omitted), {} round trips, \
         connections for {} s, {} held flows, {} operations per syscall count",
        settings.iperf_secs,
        settings.round_trips,
        settings.conn_rate_secs,
        settings.flows,
        settings.syscall_ops
    );
    println!();
}

fn print_results(
    results: &Results,
    kinds: &[Kind],
    settings: &Settings,
    reps: u32,
    elapsed: Duration,
) {
    println!();
    println!("samples:");
    print!("{}", results.samples_text(settings));
    let details = results.details_text();
    if !details.is_empty() {
        println!("details (syscalls: the helper's calls per operation, strace -c -f):");
        print!("{details}");
    }
    let failures = results.failures_text();
    if !failures.is_empty() {
        println!("failures:");
        print!("{failures}");
    }
    println!();
    println!(
        "Medians of {reps} interleaved runs ({:.0} s in all; load average now {}). The machine \
         has {} cores, shared with iperf3 itself.",
        elapsed.as_secs_f64(),
        load_average(),
        cores()
    );
    println!();
    print!("{}", results.table(kinds, settings));
    println!();
    println!("Notes:");
    println!(
        "- every run starts the helper afresh (rootless, as user {}) in new namespaces;",
        world::USER
    );
    println!("  guest→host targets 10.0.2.2, i.e. 127.0.0.1 of the helper's host namespace.");
    println!("- host→guest connects to the host namespace's own non-loopback address: pasta");
    println!("  would splice a 127.0.0.1 connection straight into the container's loopback,");
    println!("  bypassing its tap, which is not the path the others take.");
    println!("- ready: spawn to the '1' on the ready fd (-r); pasta has no ready fd, so its");
    println!("  pid file (-P), written once its setup is done, stands in.");
    println!(
        "- the open-files limit is raised for the helpers, so the held flows do not hit 1,024."
    );
    println!("- syscalls: counted in an untimed pass of their own (strace -c -f attached to the");
    println!("  helper for the measured operations only, after a warm-up); every other figure");
    println!("  comes from untraced runs.");
}

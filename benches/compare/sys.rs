//! Processes, pipes and threads in other network namespaces, each with a deadline and a
//! guard that undoes it: a benchmark that fails half-way must leave nothing running.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long a process asked to stop (SIGTERM) gets before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// The process helpers, one implementation with the end-to-end tests' (which use all of
/// it; the benchmark does not).
#[allow(dead_code)]
#[path = "../../tests/common/process_core.rs"]
mod process_core;
pub use process_core::{command, pipe, run, run_ok, wait_for, wait_readable, Proc};

/// Starts `cmd`; it also gets SIGKILL if this process dies first (Ctrl-C, a crash), so
/// nothing it started outlives the run. Spawn only from the main thread: the signal fires
/// when the spawning thread ends. On drop it is stopped: SIGTERM, then SIGKILL after
/// `TERM_GRACE`.
pub fn spawn(cmd: &mut Command) -> io::Result<Proc> {
    Proc::spawn(cmd, TERM_GRACE)
}

/// Makes `fd` the child's fd 3 (slirp4netns's `-r 3` convention); `fd` is >= 10 (see
/// `pipe`).
pub fn pass_as_fd3(cmd: &mut Command, fd: &File) {
    process_core::dup_onto(cmd, vec![(fd.as_raw_fd(), 3)]);
}

/// Runs `cmd` in the network namespace `netns` as the user `ids` (uid, gid; no
/// supplementary groups), killed when we die: what `ip netns exec NS setpriv --reuid U
/// --regid U --clear-groups --pdeathsig KILL` does, without their two exec()s and
/// `ip netns exec`'s mount namespace, so that a helper's time to ready is its own.
pub fn enter_as_user(cmd: &mut Command, netns: &File, ids: (u32, u32)) {
    let fd = netns.as_raw_fd();
    let (uid, gid) = ids;
    // SAFETY: runs between fork and exec and only makes system calls (setns, setgroups,
    // setresgid, setresuid, prctl), which are async-signal-safe. `netns` outlives the spawn
    // (the caller holds it), so `fd` is open in the child.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(gid, gid, gid))?;
            check(libc::setresuid(uid, uid, uid))?;
            // Changing the uid clears the parent-death signal: set it after.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))
        });
    }
}

/// A process's CPU time (all its threads, user and system, from the scheduler's
/// nanosecond account in /proc/PID/task/*/schedstat) since `start`.
pub struct CpuClock {
    pid: u32,
    at_start: Option<Duration>,
}

impl CpuClock {
    pub fn start(pid: u32) -> CpuClock {
        CpuClock {
            pid,
            at_start: cpu_time(pid),
        }
    }

    /// The CPU time since `start` per operation, in µs.
    pub fn per_op_us(&self, ops: usize) -> Result<f64, String> {
        let (Some(start), Some(now)) = (self.at_start, cpu_time(self.pid)) else {
            return Err(format!("no schedstat for pid {}", self.pid));
        };
        if ops == 0 {
            return Err("no operations".into());
        }
        Ok(now.saturating_sub(start).as_secs_f64() * 1e6 / ops as f64)
    }
}

/// The CPU time of every thread of `pid` so far (threads that ended are not counted:
/// measure across a span in which the helper starts or ends none).
fn cpu_time(pid: u32) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = Duration::ZERO;
    for task in tasks {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
        total += Duration::from_nanos(ns);
    }
    Some(total)
}

/// Raises the open-files limit to its hard maximum. The 1,000-flow case holds 2,000 sockets
/// here, and the helpers (which inherit the limit) one per flow: at the usual soft limit
/// of 1,024 the helper would run out of fds, not of anything we want to measure.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write one rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) < 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A closure running on a thread of its own inside another network namespace; its result
/// is collected with a deadline.
pub struct Task<T> {
    rx: mpsc::Receiver<Result<T, String>>,
    what: String,
}

impl<T> Task<T> {
    /// The closure's result, or an error if it failed, panicked or took longer than
    /// `timeout` (the thread is then left to end at its own socket timeouts).
    pub fn wait(self, timeout: Duration) -> Result<T, String> {
        match self.rx.recv_timeout(timeout) {
            Ok(result) => result.map_err(|e| format!("{}: {e}", self.what)),
            Err(_) => Err(format!("{} did not finish within {timeout:?}", self.what)),
        }
    }
}

/// Runs `f` on a new thread that joined the network namespace at `netns`. setns with
/// CLONE_NEWNET moves only that thread, so its sockets live there while the rest of the
/// benchmark stays put.
pub fn in_netns<T, F>(netns: PathBuf, what: &str, f: F) -> Task<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, String> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let name = what.to_string();
    let spawned = thread::Builder::new().name(name.clone()).spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            process_core::enter_netns(&netns)?;
            f()
        }))
        .unwrap_or_else(|_| Err("panicked".to_string()));
        let _ = tx.send(result);
    });
    if let Err(e) = spawned {
        let (failed_tx, failed_rx) = mpsc::channel();
        let _ = failed_tx.send(Err(format!("cannot spawn thread: {e}")));
        return Task {
            rx: failed_rx,
            what: name,
        };
    }
    Task { rx, what: name }
}

/// Resident memory of a process in KiB (VmRSS), if it is still there.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Where a process's memory is: the number of mappings and smaps_rollup's resident sizes
/// (KiB), for the detailed output.
pub fn memory_map(pid: u32) -> String {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|text| text.lines().count())
        .unwrap_or(0);
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let fields: Vec<String> = rollup
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let wanted = [
                "Rss",
                "Anonymous",
                "AnonHugePages",
                "Private_Dirty",
                "Shared_Clean",
            ];
            wanted
                .contains(&name)
                .then(|| format!("{name} {}", rest.trim().trim_end_matches(" kB")))
        })
        .collect();
    format!("{maps} mappings, {} (KiB)", fields.join(", "))
}

//! Processes, pipes and threads in other network namespaces, each with a deadline and a
//! guard that undoes it: a benchmark that fails half-way must leave nothing running.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How often deadline loops look again.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How long a process asked to stop (SIGTERM) gets before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// A child process; stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `cmd`. It also gets SIGKILL if this process dies first (Ctrl-C, a crash), so
    /// nothing it started outlives the run. Spawn only from the main thread: the signal
    /// fires when the spawning thread ends.
    pub fn spawn(cmd: &mut Command) -> io::Result<Proc> {
        // SAFETY: runs between fork and exec and only calls prctl, which is
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(Proc {
            child: cmd.spawn()?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running (not yet exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` and waits up to `timeout` for the exit; false if it still runs (the
    /// drop then stops it the hard way).
    pub fn stop_with(&mut self, signal: libc::c_int, timeout: Duration) -> bool {
        if self.running() {
            self.signal(signal);
        }
        self.wait_timeout(timeout)
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped
        // child, so it cannot have been recycled for another process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    fn wait_timeout(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.running() {
                return true;
            }
            thread::sleep(POLL_INTERVAL);
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            self.signal(libc::SIGTERM);
            if !self.wait_timeout(TERM_GRACE) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

pub fn command<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// Runs a command to completion, capturing its output; killed after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn(cmd).map_err(|e| format!("cannot start {what}: {e}"))?;
    let stdout = read_in_background(proc.child.stdout.take());
    let stderr = read_in_background(proc.child.stderr.take());
    if !proc.wait_timeout(timeout) {
        return Err(format!("{what} did not finish within {timeout:?}"));
    }
    let status = proc.child.wait().map_err(|e| format!("wait {what}: {e}"))?;
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Like [`run`], but the command must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<String, String> {
    let what = format!("{cmd:?}");
    let out = run(cmd, timeout)?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// A thread per pipe keeps a chatty child from blocking on a full pipe.
fn read_in_background<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// A close-on-exec pipe with both ends numbered 10 or above, so that a child can dup2 the
/// write end onto 3 without clobbering anything.
pub fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array, which has room for exactly two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just returned by pipe2 and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((File::from(high_fd(read)?), File::from(high_fd(write)?)))
}

fn high_fd(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only reads the fd number we own and returns a new fd.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh fd owned by nobody else; `fd` is closed on return.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Makes `fd` the child's fd 3 (slirp4netns's `-r 3` convention).
pub fn pass_as_fd3(cmd: &mut Command, fd: &File) {
    let fd = fd.as_raw_fd();
    // SAFETY: runs between fork and exec and only calls dup2, which is async-signal-safe.
    // The fd is >= 10 (see `pipe`), so it is not 3 itself; dup2's copy has no CLOEXEC and
    // survives exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
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

/// Waits until `fd` is readable (data or EOF); false on timeout.
pub fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = left.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, millis) };
        if rc > 0 {
            return true;
        }
        let interrupted = rc < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted;
        if !interrupted || Instant::now() >= deadline {
            return false;
        }
    }
}

/// Polls `probe` until it returns `Some`; `Err` naming `what` after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        thread::sleep(POLL_INTERVAL);
    }
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
            enter_netns(&netns)?;
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

fn enter_netns(path: &Path) -> Result<(), String> {
    let ns = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: setns only takes an fd we hold open for the duration of the call.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(format!(
            "setns {}: {}",
            path.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
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

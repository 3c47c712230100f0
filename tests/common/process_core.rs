//! Processes, pipes and waits with deadlines, failures returned as errors: the one
//! implementation behind the end-to-end tests' helpers (tests/common/process.rs, which
//! panics on an error: a failed step fails the test) and the comparison benchmark's
//! (benches/compare/sys.rs, which reports it and goes on). Every child is owned by a guard
//! that stops and reaps it on drop, also when a test panics or a benchmark case fails
//! half-way, and every wait has a timeout.
//!
//! Both include this file as a module (the bench through `#[path]`), so it uses only std
//! and libc.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How often deadline loops look again; short enough not to slow anything down noticeably.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// A child process, stopped and reaped on drop: with SIGKILL at once, or first asked with
/// SIGTERM and given `term_grace` to exit.
pub struct Proc {
    child: Child,
    term_grace: Duration,
}

impl Proc {
    /// Starts `cmd`. It also gets SIGKILL if the thread that started it ends first (Ctrl-C,
    /// a crash, an interrupted `cargo test`), so nothing outlives the run: spawn only from a
    /// thread that outlives the guard (a test's thread, the benchmark's main thread). On
    /// drop, a child still running gets SIGTERM and `term_grace` to exit before SIGKILL
    /// (`Duration::ZERO`: SIGKILL at once).
    pub fn spawn(cmd: &mut Command, term_grace: Duration) -> io::Result<Proc> {
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
            term_grace,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended, without blocking.
    pub fn try_status(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Whether it is still running (not yet exited).
    pub fn running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Waits for the process to end; `None` if it is still running after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped
        // child, so it cannot have been recycled for an unrelated process.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends `signal` and waits up to `timeout` for the exit; false if it still runs (the
    /// drop then stops it the hard way).
    pub fn stop_with(&mut self, signal: libc::c_int, timeout: Duration) -> bool {
        if self.running() {
            let _ = self.signal(signal);
        }
        !matches!(self.wait_timeout(timeout), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let grace = self.term_grace;
            if grace.is_zero() || !self.stop_with(libc::SIGTERM, grace) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// Shorthand for building a command from a program and its arguments.
pub fn command<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// Runs a command to completion with a deadline, capturing stdout and stderr; an error
/// (after killing it) if it does not finish in time. The exit status is left to the caller.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc =
        Proc::spawn(cmd, Duration::ZERO).map_err(|e| format!("cannot start {what}: {e}"))?;
    let stdout = read_in_background(proc.child.stdout.take());
    let stderr = read_in_background(proc.child.stderr.take());
    let status = proc
        .wait_timeout(timeout)
        .map_err(|e| format!("wait {what}: {e}"))?
        .ok_or_else(|| format!("{what} did not finish within {timeout:?}"))?;
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
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// A thread per pipe (rather than reading after the exit) keeps a chatty child from
// blocking on a full pipe.
fn read_in_background<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// A pipe whose ends are close-on-exec and numbered 10 or above, so that a child can dup2
/// them onto 3, 4, ... without one clobbering the other (see [`dup_onto`]), and so that
/// children started by other threads at the same time never inherit them.
pub fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we pass, which has room for exactly two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just returned by pipe2 and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((File::from(high_fd(read)?), File::from(high_fd(write)?)))
}

/// `fd` moved to a close-on-exec number of 10 or above (see [`pipe`]).
pub fn high_fd(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only reads the fd number we own and returns a new fd.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh fd owned by nobody else; `fd` is closed on return.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Makes each `(fd, number)` the child's fd `number` (e.g. slirp4netns's `-r 3`). Every `fd`
/// must be 10 or above (see [`pipe`], [`high_fd`]) and every `number` below 10, so that no
/// dup2 clobbers an fd another one still copies; the copies lack CLOEXEC and survive exec
/// while the originals do not. The fds must stay open until the child is spawned.
pub fn dup_onto(cmd: &mut Command, fds: Vec<(RawFd, RawFd)>) {
    // SAFETY: runs between fork and exec and only calls dup2, which is async-signal-safe;
    // the list was built before the fork and is only read here.
    unsafe {
        cmd.pre_exec(move || {
            for &(fd, number) in &fds {
                if libc::dup2(fd, number) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
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

/// Polls `probe` until it returns `Some`; an error naming `what` after `timeout`.
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

/// Moves the calling thread into the network namespace at `path`. setns with CLONE_NEWNET
/// moves only this thread (and the threads it spawns later), so the sockets it creates live
/// there while the rest of the process stays where it was.
pub fn enter_netns(path: &Path) -> Result<(), String> {
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

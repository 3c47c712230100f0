//! Processes and commands with deadlines: every child is owned by a guard that kills and
//! reaps it on drop (also when a test panics), and every wait has a timeout.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How often deadline loops look again; short enough not to slow tests down noticeably.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A running child process, killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    /// Starts `cmd`, which also dies (SIGKILL) if the test process is killed before its
    /// guards can run (e.g. an interrupted `cargo test`): nothing outlives the test run.
    pub fn spawn(cmd: &mut Command, what: &str) -> Proc {
        // SAFETY: runs between fork and exec and only calls prctl, which is
        // async-signal-safe. The death signal fires when the spawning thread ends; processes
        // are spawned only from test threads, which outlive their guards anyway.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        Proc {
            child,
            what: what.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended, without blocking.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.what))
    }

    /// Waits for the process to end; `None` if it is still running after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped
        // child, so it cannot have been recycled for an unrelated process.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.what);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs a command to completion with a deadline, capturing stdout and stderr. Panics (after
/// killing it) if it does not finish in time; the exit status is left to the caller.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn(cmd, &what);
    let stdout = read_in_background(proc.child.stdout.take());
    let stderr = read_in_background(proc.child.stderr.take());
    let status = proc
        .wait_timeout(timeout)
        .unwrap_or_else(|| panic!("{what} did not finish within {timeout:?}"));
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Like [`run`] but the command must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let out = run(cmd, timeout);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Shorthand for building a command from a program and its arguments.
pub fn command<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

// Reading in threads (rather than after exit) keeps a chatty child from blocking on a full pipe.
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
/// them onto 3, 4, ... without one clobbering the other, and so that children started by
/// other test threads at the same time never inherit them.
pub fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we pass, which has room for exactly two.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just returned by pipe2 and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (File::from(high_fd(read)), File::from(high_fd(write)))
}

/// `fd` moved to a close-on-exec number of 10 or above (see [`pipe`]).
pub fn high_fd(fd: OwnedFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC only reads the fd number we own and returns a new fd.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    assert!(dup >= 10, "fcntl: {}", std::io::Error::last_os_error());
    // SAFETY: `dup` is a fresh fd owned by nobody else; `fd` is closed on return.
    unsafe { OwnedFd::from_raw_fd(dup) }
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
        let interrupted =
            rc < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
        if !interrupted || Instant::now() >= deadline {
            return false;
        }
    }
}

/// Polls `probe` until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(POLL_INTERVAL);
    }
}

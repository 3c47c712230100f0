//! Processes and commands with deadlines for the tests: the helpers of process_core.rs
//! (shared with benches/compare), panicking where those return an error, so that a failed
//! step fails the test with the error's text. Every child is owned by a guard that kills and
//! reaps it on drop (also when a test panics), and every wait has a timeout.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use super::process_core as shared;
pub use shared::{command, dup_onto, wait_readable};

/// A running child process, killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    inner: shared::Proc,
    what: String,
}

impl Proc {
    /// Starts `cmd`, which also dies (SIGKILL) if the test process is killed before its
    /// guards can run (e.g. an interrupted `cargo test`): nothing outlives the test run.
    /// Processes are spawned only from test threads, which outlive their guards.
    pub fn spawn(cmd: &mut Command, what: &str) -> Proc {
        let inner = shared::Proc::spawn(cmd, Duration::ZERO)
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        Proc {
            inner,
            what: what.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// The exit status if the process has ended, without blocking.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.inner
            .try_status()
            .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.what))
    }

    /// Waits for the process to end; `None` if it is still running after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.inner
            .wait_timeout(timeout)
            .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.what))
    }

    pub fn signal(&self, signal: libc::c_int) {
        if let Err(e) = self.inner.signal(signal) {
            panic!("kill({}, {signal}) failed: {e}", self.what);
        }
    }
}

/// Runs a command to completion with a deadline, capturing stdout and stderr. Panics (after
/// killing it) if it does not finish in time; the exit status is left to the caller.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    shared::run(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`run`] but the command must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    shared::run_ok(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// A pipe whose ends are close-on-exec and numbered 10 or above (see
/// [`shared::pipe`]).
pub fn pipe() -> (File, File) {
    shared::pipe().unwrap_or_else(|e| panic!("pipe: {e}"))
}

/// `fd` moved to a close-on-exec number of 10 or above (see [`pipe`]).
pub fn high_fd(fd: OwnedFd) -> OwnedFd {
    shared::high_fd(fd).unwrap_or_else(|e| panic!("fcntl: {e}"))
}

/// Polls `probe` until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Option<T>) -> T {
    shared::wait_for(what, timeout, probe).unwrap_or_else(|e| panic!("{e}"))
}

//! Counting the system calls a helper makes over a measured stretch of work: `strace -c -f`
//! attached to the helper for exactly that stretch, in a pass of its own (strace slows
//! every call down, so no timed figure comes from a traced run).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys::{self, command, Proc};

/// How long strace gets to attach to every thread of the helper.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long strace gets to detach and write its summary.
const DETACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long either side of a [`Gate`] waits for the other.
const GATE_TIMEOUT: Duration = Duration::from_secs(120);

/// Lets a client stop twice: before its measured part (after the warm-up) and right after
/// it (before it closes anything), until the other side says go on. Untimed runs use
/// [`Gate::open`], which never stops.
pub struct Gate(Option<(Sender<()>, Receiver<()>)>);

/// The other side of a [`Gate`].
pub struct GateControl {
    reached: Receiver<()>,
    go_on: Sender<()>,
}

impl Gate {
    pub fn open() -> Gate {
        Gate(None)
    }

    pub fn pair() -> (Gate, GateControl) {
        let (reached_tx, reached) = mpsc::channel();
        let (go_on, go_on_rx) = mpsc::channel();
        (
            Gate(Some((reached_tx, go_on_rx))),
            GateControl { reached, go_on },
        )
    }

    /// Says "here" and waits for the go-ahead (at once for an open gate).
    pub fn pass(&self) -> Result<(), String> {
        let Some((reached, go_on)) = &self.0 else {
            return Ok(());
        };
        reached
            .send(())
            .map_err(|_| "the syscall counter is gone".to_string())?;
        go_on
            .recv_timeout(GATE_TIMEOUT)
            .map_err(|_| "the syscall counter did not go on".to_string())
    }
}

impl GateControl {
    /// Waits until the client is at the gate; false if it ended (failed) first.
    fn reached(&self) -> bool {
        self.reached.recv_timeout(GATE_TIMEOUT).is_ok()
    }

    fn go_on(&self) {
        let _ = self.go_on.send(());
    }
}

/// One line of strace's summary.
#[derive(Debug, Clone)]
pub struct Call {
    pub name: String,
    pub calls: u64,
    pub errors: u64,
}

/// What a helper called over `ops` operations (round trips, connections).
#[derive(Debug, Clone)]
pub struct Count {
    pub ops: usize,
    /// Most called first.
    pub calls: Vec<Call>,
}

impl Count {
    pub fn per_op(&self) -> f64 {
        let total: u64 = self.calls.iter().map(|c| c.calls).sum();
        total as f64 / self.ops as f64
    }

    /// `name calls/op (errors/op failed)` for each call, most called first.
    pub fn breakdown(&self) -> String {
        let ops = self.ops as f64;
        self.calls
            .iter()
            .map(|c| {
                let mut text = format!("{} {:.2}", c.name, c.calls as f64 / ops);
                if c.errors > 0 {
                    text += &format!(" ({:.2} failed)", c.errors as f64 / ops);
                }
                text
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs `work` (a client that passes its gate before and after its `ops` measured
/// operations) on a thread and counts the system calls of process `pid` (all its threads)
/// between the two passes.
pub fn count<T: Send + 'static>(
    pid: u32,
    summary: PathBuf,
    ops: usize,
    work: impl FnOnce(Gate) -> Result<T, String> + Send + 'static,
) -> Result<(T, Count), String> {
    let (gate, control) = Gate::pair();
    let worker = thread::spawn(move || work(gate));
    let finish = |worker: thread::JoinHandle<Result<T, String>>| {
        worker
            .join()
            .map_err(|_| "the client panicked".to_string())?
    };
    if !control.reached() {
        drop(control);
        return finish(worker).and_then(|_| Err("the client never started".into()));
    }
    let mut strace = match Strace::attach(pid, summary) {
        Ok(strace) => strace,
        Err(e) => {
            // Unblocks the client (its gate fails), then reports why.
            drop(control);
            let _ = finish(worker);
            return Err(e);
        }
    };
    control.go_on();
    let ended = control.reached();
    let counted = strace.finish();
    control.go_on();
    drop(control);
    let result = finish(worker)?;
    if !ended {
        return Err("the client did not reach the end of its measured part".into());
    }
    Ok((
        result,
        Count {
            ops,
            calls: counted?,
        },
    ))
}

/// `strace -c -f` attached to a running process; its summary goes to a file.
struct Strace {
    proc: Proc,
    summary: PathBuf,
}

impl Strace {
    /// Attaches and returns once every thread of `pid` is traced.
    fn attach(pid: u32, summary: PathBuf) -> Result<Strace, String> {
        let pid_arg = pid.to_string();
        let summary_arg = summary.to_string_lossy().into_owned();
        let mut cmd = command(
            "strace",
            &["-c", "-f", "-q", "-o", &summary_arg, "-p", &pid_arg],
        );
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut proc = sys::spawn(&mut cmd).map_err(|e| format!("start strace: {e}"))?;
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        while !all_traced(pid) {
            if !proc.running() {
                return Err(format!("strace could not attach to {pid}"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "strace did not attach to {pid} within {ATTACH_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(Strace { proc, summary })
    }

    /// Detaches (SIGINT makes strace write its summary) and reads the summary.
    fn finish(&mut self) -> Result<Vec<Call>, String> {
        if !self.proc.stop_with(libc::SIGINT, DETACH_TIMEOUT) {
            return Err("strace did not detach".into());
        }
        let text = fs::read_to_string(&self.summary)
            .map_err(|e| format!("read {}: {e}", self.summary.display()))?;
        parse_summary(&text)
    }
}

/// Whether every thread of `pid` has a tracer.
fn all_traced(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        any = true;
        let status = fs::read_to_string(Path::new(&task.path()).join("status")).unwrap_or_default();
        let traced = status
            .lines()
            .find_map(|line| line.strip_prefix("TracerPid:"))
            .is_some_and(|tracer| tracer.trim() != "0");
        if !traced {
            return false;
        }
    }
    any
}

/// strace -c's table: `% time  seconds  usecs/call  calls  [errors]  syscall`, dashes, and
/// a `total` line, which is left out.
fn parse_summary(text: &str) -> Result<Vec<Call>, String> {
    let mut calls = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let numbers = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let (calls_n, errors, name) = match fields.len() {
            6 => (numbers(3), numbers(4), fields[5]),
            5 => (numbers(3), Some(0), fields[4]),
            _ => continue,
        };
        let (Some(n), Some(errors)) = (calls_n, errors) else {
            continue;
        };
        if name != "total" {
            calls.push(Call {
                name: name.to_string(),
                calls: n,
                errors,
            });
        }
    }
    if calls.is_empty() && !text.contains("total") {
        return Err(format!("no strace summary in {text:?}"));
    }
    calls.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.name.cmp(&b.name)));
    Ok(calls)
}

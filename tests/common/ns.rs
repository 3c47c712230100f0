//! Namespaces, mounts and temporary directories, each behind a guard that undoes it on drop,
//! plus running code inside a network namespace on a thread of its own.

use std::ffi::CString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::process::{command, run, run_ok};

const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: String) -> Netns {
        run_ok(&mut command("ip", &["netns", "add", &name]), IP_TIMEOUT);
        Netns { name }
    }

    /// The bind-mounted namespace file `ip netns add` made.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME args...` and returns its stdout; panics if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut cmd = command("ip", &["-n", &self.name]);
        cmd.args(args);
        run_ok(&mut cmd, IP_TIMEOUT)
    }

    /// Runs `ip netns exec NAME args...` and returns its stdout; panics if it fails.
    pub fn ip_netns_exec(&self, args: &[&str]) -> String {
        let mut cmd = command("ip", &["netns", "exec", &self.name]);
        cmd.args(args);
        run_ok(&mut cmd, IP_TIMEOUT)
    }

    /// Like [`Netns::ip`] but returns whether it worked (for feature probes).
    pub fn try_ip(&self, args: &[&str]) -> bool {
        let mut cmd = command("ip", &["-n", &self.name]);
        cmd.args(args);
        run(&mut cmd, IP_TIMEOUT).status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = run(
            &mut command("ip", &["netns", "del", &self.name]),
            IP_TIMEOUT,
        );
        if !out.status.success() {
            eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A directory under /tmp, removed with its contents on drop. Mode 0755 so that the
/// unprivileged test user can reach files in it (a copied binary, a netns file).
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn create(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A mount left inside (a netns file of a killed run) would make the removal fail.
        for mount_point in mount_points_under(&self.path) {
            unmount(&mount_point);
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Mount points at or below `dir`, from /proc/self/mountinfo (field 5 is the mount point).
fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|mount_point| mount_point.starts_with(dir))
        .collect()
}

/// Detaches a mount lazily: a process still using it must not make the cleanup fail.
fn unmount(target: &Path) {
    let target = cstring(target);
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
}

/// A bind mount, unmounted on drop.
pub struct BindMount {
    pub target: PathBuf,
}

impl BindMount {
    /// Bind-mounts `source` onto a new empty file `target` (a namespace file is a file).
    pub fn file(source: &Path, target: &Path) -> BindMount {
        File::create(target).unwrap_or_else(|e| panic!("create {}: {e}", target.display()));
        let src = cstring(source);
        let dst = cstring(target);
        // SAFETY: both paths are valid NUL-terminated strings; fstype and data may be null
        // for MS_BIND.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "bind mount {} on {}: {}",
            source.display(),
            target.display(),
            std::io::Error::last_os_error()
        );
        BindMount {
            target: target.to_path_buf(),
        }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        unmount(&self.target);
    }
}

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

/// A closure running on its own thread; its result is collected with a deadline.
pub struct Task<T> {
    rx: mpsc::Receiver<thread::Result<T>>,
    what: String,
}

impl<T> Task<T> {
    /// The closure's result; re-raises its panic, and panics if it is not done in time (the
    /// thread is then left behind; every socket it uses has its own timeout, so it ends).
    pub fn wait(self, timeout: Duration) -> T {
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => panic::resume_unwind(panic),
            Err(_) => panic!("{} did not finish within {timeout:?}", self.what),
        }
    }
}

/// Runs `f` on a new thread that has joined the network namespace at `netns`. Only that
/// thread moves (setns with CLONE_NEWNET is per thread), so sockets it creates live in that
/// namespace while the rest of the test stays where it was. Threads it spawns inherit it.
pub fn spawn_in_netns<T, F>(netns: PathBuf, what: &str, f: F) -> Task<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(what.to_string())
        .spawn(move || {
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                super::process_core::enter_netns(&netns).unwrap_or_else(|e| panic!("{e}"));
                f()
            }));
            let _ = tx.send(result);
        })
        .expect("spawn thread");
    Task {
        rx,
        what: what.to_string(),
    }
}

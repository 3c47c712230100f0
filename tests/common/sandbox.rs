//! A caller's mount namespace for the `--enable-sandbox` tests.
//!
//! Whether the sandbox can unmount anything of its caller depends on mount propagation
//! between rslirp and that caller, so the test builds the caller's side as a real host has
//! it, in a namespace of its own (a slave of the machine's, so nothing reaches the machine
//! whatever rslirp does):
//! - /run is a *shared* tmpfs with another tmpfs mounted below it, at [`INNER_RUN_MOUNT`]
//!   (systemd hosts: /run and /run/user/UID). A sandbox that detached its old root without
//!   first cutting propagation would unmount that inner mount here.
//! - /etc/resolv.conf is a symlink to the test's own file outside /etc and /run
//!   ([`CallerNs::resolv_conf`], `nameserver 127.0.0.1`), as with systemd-resolved, so the
//!   sandbox must follow it, and the machine's resolver is never used.
//!
//! rslirp is then started right in that namespace ([`Launch::start_in`]), with `nsenter`
//! rather than `ip netns exec`: the latter makes a mount namespace of its own, a slave of
//! its caller's, which would hide any leak from the test.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use super::process::{command, run, run_ok, wait_for, Proc};
use super::resolv::proc_fd_path;
use super::{nsenter, Env, Launch, Rslirp, STEP_TIMEOUT};

/// The caller's mount below its shared /run that must survive rslirp's sandbox.
pub const INNER_RUN_MOUNT: &str = "/run/rse2e-inner";

/// A process that holds the caller's mount namespace (and sits in the host network
/// namespace); killed on drop, which also ends the namespace.
pub struct CallerNs {
    holder: Proc,
    resolv_dir: PathBuf,
}

impl Env {
    /// Builds the caller's mount namespace described in the module documentation.
    pub fn caller_namespace(&self) -> CallerNs {
        let resolv_dir = self.tmp.path.join("caller-resolv");
        fs::create_dir_all(&resolv_dir).expect("mkdir caller-resolv");
        fs::set_permissions(&resolv_dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let caller = CallerNs {
            holder: spawn_holder(self, &resolv_dir),
            resolv_dir,
        };
        caller.write_resolv_conf("nameserver 127.0.0.1\n");
        let mounts = caller.mountinfo();
        assert!(
            mount_point_listed(&mounts, INNER_RUN_MOUNT),
            "caller namespace lacks {INNER_RUN_MOUNT}:\n{mounts}"
        );
        caller
    }
}

impl CallerNs {
    pub fn pid(&self) -> u32 {
        self.holder.pid()
    }

    /// The file the caller's /etc/resolv.conf points to.
    pub fn resolv_conf(&self) -> PathBuf {
        self.resolv_dir.join("resolv.conf")
    }

    /// Replaces the caller's resolv.conf as NetworkManager or resolvconf do: write a new
    /// file beside it, rename it over the old one.
    pub fn write_resolv_conf(&self, text: &str) {
        let staged = self.resolv_dir.join("resolv.conf.new");
        fs::write(&staged, text).expect("write resolv.conf.new");
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::rename(&staged, self.resolv_conf()).expect("rename resolv.conf");
    }

    /// The caller's view of its mounts.
    pub fn mountinfo(&self) -> String {
        fs::read_to_string(format!("/proc/{}/mountinfo", self.pid())).expect("mountinfo")
    }

    /// Runs a command as root in the caller's mount namespace; it must succeed.
    pub fn run_ok(&self, args: &[&str]) -> String {
        run_ok(&mut nsenter(self.pid(), "-m", args), STEP_TIMEOUT)
    }

    /// Like [`CallerNs::run_ok`], the result left to the caller.
    pub fn run(&self, args: &[&str]) -> Output {
        run(&mut nsenter(self.pid(), "-m", args), STEP_TIMEOUT)
    }
}

/// Whether a mountinfo text lists `mount_point` (field 5).
pub fn mount_point_listed(mountinfo: &str, mount_point: &str) -> bool {
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(mount_point))
}

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

/// Fails with the errno of the last call if `rc` is negative.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn spawn_holder(env: &Env, resolv_dir: &Path) -> Proc {
    let netns: OwnedFd = File::open(env.host.path()).expect("open host netns").into();
    // The symlink is mounted itself (through an O_PATH fd of it, a magic link mount(2)
    // does not follow further), so /etc/resolv.conf *is* a symlink in the namespace. The
    // fd is opened inside the new namespace: a bind source must be a mount of one's own.
    let link = env.tmp.path.join("caller-resolv.link");
    std::os::unix::fs::symlink(resolv_dir.join("resolv.conf"), &link).expect("symlink");
    let link_path = cstring(&link);
    let resolv_target = cstring(Path::new("/etc/resolv.conf"));
    let run_dir = cstring(Path::new("/run"));
    let inner = cstring(Path::new(INNER_RUN_MOUNT));
    let tmpfs = c"tmpfs";
    let tmpfs_options = c"mode=0755";

    let mut cmd = command("sleep", &["600"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: runs between fork and exec, makes only raw system calls (setns, unshare,
    // mount, mkdir, open) and formats one path into a stack buffer, all on strings and an
    // fd prepared before the fork; the netns fd stays open in the closure until the Command
    // is dropped.
    unsafe {
        cmd.pre_exec(move || {
            let _ = &netns;
            let null = std::ptr::null();
            check(libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // From here nothing we mount reaches the machine's namespace.
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_SLAVE,
                null.cast(),
            ))?;
            check(libc::mount(
                tmpfs.as_ptr(),
                run_dir.as_ptr(),
                tmpfs.as_ptr(),
                0,
                tmpfs_options.as_ptr().cast(),
            ))?;
            check(libc::mount(
                null,
                run_dir.as_ptr(),
                null,
                libc::MS_SHARED,
                null.cast(),
            ))?;
            check(libc::mkdir(inner.as_ptr(), 0o755))?;
            check(libc::mount(
                tmpfs.as_ptr(),
                inner.as_ptr(),
                tmpfs.as_ptr(),
                0,
                tmpfs_options.as_ptr().cast(),
            ))?;
            let link_fd = libc::open(
                link_path.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            );
            check(link_fd)?;
            let link_source = proc_fd_path(link_fd);
            check(libc::mount(
                link_source.as_ptr().cast(),
                resolv_target.as_ptr(),
                null,
                libc::MS_BIND,
                null.cast(),
            ))?;
            Ok(())
        });
    }
    let holder = Proc::spawn(&mut cmd, "caller namespace holder");
    let comm = format!("/proc/{}/comm", holder.pid());
    wait_for("the caller namespace", STEP_TIMEOUT, || {
        let name = fs::read_to_string(&comm).unwrap_or_default();
        (name.trim() == "sleep").then_some(())
    });
    holder
}

impl Launch<'_> {
    /// Starts rslirp (as TEST_USER when rootless) in `caller`'s mount namespace and the
    /// host network namespace, and waits for the ready byte, like [`Launch::start`].
    pub fn start_in(self, caller: &CallerNs) -> Rslirp {
        let holder = caller.pid().to_string();
        let enter = command("nsenter", &["-t", &holder, "-m", "-n", "--"]);
        let mut rslirp = self.spawn_entering(enter);
        rslirp.await_ready_byte();
        rslirp
    }
}

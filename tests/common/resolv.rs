//! The resolv.conf the binary under test sees. rslirp forwards DNS to the first nameserver
//! of /etc/resolv.conf, and the machine's own one names a resolver outside this machine: a
//! test must never reach it. So every rslirp the harness starts runs in a mount namespace of
//! its own in which /etc/resolv.conf is replaced by the test's file
//! `<env.tmp>/resolv/resolv.conf` (by default `nameserver 127.0.0.1`, the host namespace's
//! loopback: the test's own namespace, where a DNS test runs its server).
//!
//! Two layouts, as real hosts have them:
//! - [`Layout::Symlink`] (default): /etc/resolv.conf is a symlink to the test's file, as with
//!   systemd-resolved. Both an in-place write and a replacement by rename in the test's
//!   directory are visible through it.
//! - [`Layout::BindFile`]: the test's file is bind-mounted onto /etc/resolv.conf, as
//!   container engines and `ip netns exec` (/etc/netns/NAME/resolv.conf) do. The mount pins
//!   the file: an in-place write shows, a rename in the test's directory does not.
//!
//! The mount namespace is made in the child between fork and exec, with / turned into a
//! slave first so nothing propagates back to the machine; it ends with the last process in
//! it, so there is nothing to undo, even after a crash.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Env, Launch};

/// What the binary under test gets unless the test writes something else first.
pub const DEFAULT_RESOLV_CONF: &str = "nameserver 127.0.0.1\n";

/// How the test's resolv.conf replaces /etc/resolv.conf; see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    #[default]
    Symlink,
    BindFile,
}

impl Env {
    /// The directory that holds the test's resolv.conf (watched by rslirp with
    /// [`Layout::Symlink`]).
    pub fn resolv_dir(&self) -> PathBuf {
        let dir = self.tmp.path.join("resolv");
        if !dir.exists() {
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        dir
    }

    /// The file the binary under test sees as /etc/resolv.conf (created with
    /// [`DEFAULT_RESOLV_CONF`] on first use).
    pub fn resolv_conf(&self) -> PathBuf {
        let path = self.resolv_dir().join("resolv.conf");
        if !path.exists() {
            write_in_place(&path, DEFAULT_RESOLV_CONF);
        }
        path
    }

    /// Rewrites the test's resolv.conf in place (truncate and write the same inode).
    pub fn write_resolv_conf_in_place(&self, text: &str) {
        write_in_place(&self.resolv_conf(), text);
    }

    /// Replaces the test's resolv.conf by writing `resolv.conf.new` and renaming it over.
    pub fn replace_resolv_conf_by_rename(&self, text: &str) {
        let path = self.resolv_conf();
        let staged = path.with_extension("conf.new");
        write_in_place(&staged, text);
        fs::rename(&staged, &path)
            .unwrap_or_else(|e| panic!("rename {} over {}: {e}", staged.display(), path.display()));
    }
}

fn write_in_place(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    // Readable by the unprivileged user rootless rslirp runs as.
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod resolv.conf");
}

impl Launch<'_> {
    /// Bind-mounts the test's resolv.conf onto /etc/resolv.conf instead of the default
    /// symlink.
    pub fn resolv_conf_bind_mounted(mut self) -> Self {
        self.resolv = Layout::BindFile;
        self
    }
}

/// Makes `cmd` run in a new mount namespace where /etc/resolv.conf is `env`'s test file,
/// laid out as `layout`.
pub fn private_resolv_conf(cmd: &mut Command, env: &Env, layout: Layout) {
    let file = env.resolv_conf();
    let source = match layout {
        Layout::BindFile => file,
        Layout::Symlink => {
            let link = env.tmp.path.join("resolv.conf.link");
            if !link.exists() {
                std::os::unix::fs::symlink(&file, &link)
                    .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
            }
            link
        }
    };
    let source = cstring(&source);
    // SAFETY: runs between fork and exec and only makes raw syscalls (unshare, mount, open,
    // close) on strings prepared before the fork, formatting into a stack buffer.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| match rc {
                -1 => Err(io::Error::last_os_error()),
                rc => Ok(rc),
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Slave, not shared: our mount must never propagate back to the machine.
            let flags = libc::MS_REC | libc::MS_SLAVE;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            ))?;
            match layout {
                Layout::BindFile => bind(source.as_ptr()),
                Layout::Symlink => {
                    // mount(2) follows a symlink source, but not the magic link of an O_PATH
                    // fd opened on the symlink itself: so the symlink, not its target, is
                    // mounted. The fd must come from this mount namespace, hence opened here.
                    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
                    let fd = check(libc::open(source.as_ptr(), flags))?;
                    let result = bind(proc_fd_path(fd).as_ptr().cast());
                    libc::close(fd);
                    result
                }
            }
        });
    }
}

/// Bind-mounts `source` onto /etc/resolv.conf (async-signal-safe).
unsafe fn bind(source: *const libc::c_char) -> io::Result<()> {
    // SAFETY: the caller passes a NUL-terminated path; the target is a literal.
    let rc = unsafe {
        libc::mount(
            source,
            c"/etc/resolv.conf".as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// "/proc/self/fd/<fd>\0" without allocating (it is used between fork and exec, here and in
/// sandbox.rs).
pub(super) fn proc_fd_path(fd: libc::c_int) -> [u8; 32] {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    let mut path = [0u8; 32];
    path[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let mut n = fd.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, digit) in digits[..len].iter().rev().enumerate() {
        path[PREFIX.len() + i] = *digit;
    }
    path
}

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

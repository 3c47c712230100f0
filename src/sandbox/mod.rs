//! `--enable-sandbox` and `--enable-seccomp`: confine the process once setup is done.
//!
//! rslirp parses frames from an untrusted guest and requests from local control clients. If
//! a bug ever let either take over the process, these two flags decide what it could reach:
//! docs/security.md has the threat model; this is how they are built.
//!
//! `--enable-sandbox` (everything here must happen while the process is single-threaded,
//! which it is until the event loop runs, and after every fd the loop needs is open):
//!
//! 1. A mount namespace of our own. As root (or as root of the user namespace the caller
//!    started us in, as podman does) `unshare(CLONE_NEWNS)` works. A plain unprivileged
//!    user has no CAP_SYS_ADMIN for that, so then we first create a user namespace of our
//!    own that maps only our uid and gid onto themselves. The alternative, joining the
//!    container's user namespace as slirp4netns does, would hand a process that parses guest
//!    frames root powers over the container's namespaces, works only when we know that
//!    namespace, and buys nothing: sockets stay in the host's network namespace, owned by the
//!    same kernel uid, in either case. The price: unprivileged user namespaces must be
//!    allowed, which rootless containers need anyway.
//! 2. `/` becomes a recursive *slave*: the host's mount and unmount events still reach us
//!    (so /etc and /run stay current, and new mounts under /run appear), while nothing we
//!    mount or unmount can ever propagate back. (Private would also stop the leak, but would
//!    also cut /run off from the host's later mounts.)
//! 3. A small tmpfs on /tmp becomes the new root. /etc and /run are bound into it
//!    recursively; being copies of slave mounts they are slaves of the host's mounts too.
//!    When /etc/resolv.conf resolves outside /etc and /run (a symlink into another
//!    directory), the symlinks on the way are recreated and the directory holding the file
//!    is bound too, so that re-reading "/etc/resolv.conf" after a change reads the host's
//!    current file. The resolver's inotify watch, made before, follows inodes and so keeps
//!    working. The bind sources are opened as fds before the tmpfs goes on /tmp, where
//!    they may live (and after step 1: a bind source must be a mount of our namespace).
//! 4. pivot_root into it, then detach the old root. Every mount of the old root is a slave
//!    (step 2), and unmounting a slave never propagates, so the caller's mounts stay mounted.
//! 5. The whole new tree is made read-only (mount_setattr recursively where the kernel has
//!    it, and a classic remount of each top-level mount everywhere).
//! 6. no_new_privs, then every capability is dropped from every set, except
//!    CAP_NET_BIND_SERVICE when we had it at the start (root: port forwards below 1024 must
//!    still bind). A rootless run ends with empty sets: its capabilities were only ever
//!    those of the private user namespace of step 1, which owns no network namespace. (So
//!    does root without CAP_SYS_ADMIN, which needs that user namespace too, with a warning.)
//!
//! `--enable-seccomp` then installs, last, an allow-list of the system calls the running
//! loop makes ([`allowed_syscalls`]); anything else fails with EPERM.
//!
//! The pieces: `mount.rs` (steps 1-5), `caps.rs` (step 6), `seccomp.rs` (the filter) and
//! `socket_remover.rs` (the helper that removes the control socket's file, which confined
//! rslirp no longer can). This file holds the order of the steps and the error type.

mod caps;
mod mount;
mod seccomp;
mod socket_remover;

pub use seccomp::{allowed_syscalls, SECCOMP_LIBRARY};

use caps::{drop_capabilities, has_effective_capability, CAP_NET_BIND_SERVICE};
use mount::{
    bind_sources, make_read_only, new_mount_namespace, recreate_symlinks, resolve_symlinks,
    BindTarget, NEW_ROOT, NEW_ROOT_OPTIONS,
};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};
use seccomp::install_seccomp_filter;
use socket_remover::spawn_socket_remover;
use std::os::fd::OwnedFd;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A step of `--enable-sandbox` failed; `op` names it, the errno says why.
    #[error("sandbox: {op}: {}", .errno.desc())]
    Sandbox { op: String, errno: Errno },
    /// The seccomp filter could not be built or installed.
    #[error("seccomp: {op}: {detail}")]
    Seccomp { op: &'static str, detail: String },
}

fn failed(op: impl Into<String>) -> impl FnOnce(Errno) -> SandboxError {
    let op = op.into();
    move |errno| SandboxError::Sandbox { op, errno }
}

fn io_failed(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let op = op.into();
    move |err| SandboxError::Sandbox {
        op,
        errno: Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// Apply the requested confinement: the sandbox first, the seccomp filter last (the
/// sandbox's own calls are not in the allow-list). Any error is fatal for the caller.
///
/// `api_socket` is the control socket's file, which rslirp removes when it exits. Confined,
/// it no longer can (the sandbox does not reach it, the filter has no unlink), so a small
/// helper that stays outside does it instead (see [`spawn_socket_remover`]), when the
/// returned [`Confinement`] is dropped or the process dies.
pub fn apply(
    enable_sandbox: bool,
    enable_seccomp: bool,
    api_socket: Option<&Path>,
) -> Result<Confinement, SandboxError> {
    let mut confinement = Confinement {
        socket_remover: None,
    };
    if let Some(path) = api_socket.filter(|_| enable_sandbox || enable_seccomp) {
        confinement.socket_remover = Some(spawn_socket_remover(path)?);
    }
    if enable_sandbox {
        enter_sandbox()?;
        log::debug!(
            "sandbox: mount namespace, read-only root with /etc and /run, capabilities dropped"
        );
    }
    if enable_seccomp {
        install_seccomp_filter()?;
        log::debug!("seccomp: allow-list filter installed");
    }
    Ok(confinement)
}

/// What outlives [`apply`]: hold it until the end of the run.
#[must_use = "dropping it removes the control socket's file at once"]
pub struct Confinement {
    /// Our end of the connection to the socket remover, if there is one.
    socket_remover: Option<OwnedFd>,
}

fn enter_sandbox() -> Result<(), SandboxError> {
    // Decided before step 1, which may hand us a full set inside a private user namespace.
    let had_bind_service = has_effective_capability(CAP_NET_BIND_SERVICE)?;
    let own_user_namespace = new_mount_namespace()?;
    if had_bind_service && own_user_namespace {
        // Root without CAP_SYS_ADMIN (a restricted service or container): its capabilities
        // on the host's network namespace do not follow it into the new user namespace.
        log::warn!(
            "sandbox: no CAP_SYS_ADMIN for a mount namespace, so rslirp runs in a user \
             namespace of its own and loses CAP_NET_BIND_SERVICE: port forwards below 1024 \
             will fail"
        );
    }
    let keep_bind_service = had_bind_service && !own_user_namespace;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(failed("make / a recursive slave"))?;

    let resolv = resolve_symlinks(Path::new(crate::resolv::RESOLV_CONF))
        .map_err(|err| log::debug!("resolv.conf not followed into the sandbox: {err}"))
        .ok();
    let binds = bind_sources(resolv.as_ref())?;
    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(NEW_ROOT_OPTIONS),
    )
    .map_err(failed(format!("mount tmpfs on {NEW_ROOT}")))?;
    if let Some(resolv) = &resolv {
        recreate_symlinks(resolv)?;
    }
    for bind in &binds {
        bind.mount()?;
    }
    // The fds pin mounts of the old root; let it go entirely once detached.
    let targets: Vec<BindTarget> = binds.into_iter().map(|b| b.target).collect();

    chdir(NEW_ROOT).map_err(failed(format!("chdir {NEW_ROOT}")))?;
    // pivot_root(".", ".") stacks the old root on top of the new one, so no directory for
    // it has to exist (and stay visible) in the new root; unmounting "." then removes it.
    pivot_root(".", ".").map_err(failed("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(failed("detach the old root"))?;
    chdir("/").map_err(failed("chdir /"))?;

    make_read_only(&targets)?;
    nix::sys::prctl::set_no_new_privs().map_err(failed("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    drop_capabilities(keep_bind_service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_one_line_naming_the_step() {
        let err = failed("pivot_root")(Errno::EPERM);
        assert_eq!(
            err.to_string(),
            "sandbox: pivot_root: Operation not permitted"
        );
        let err =
            io_failed("write /proc/self/uid_map")(std::io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(
            err.to_string(),
            "sandbox: write /proc/self/uid_map: Invalid argument"
        );
    }
}

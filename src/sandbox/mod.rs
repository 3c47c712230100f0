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

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, pivot_root};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// What `-v` reports on its `libseccomp:` line: the filter is built by this crate (pure
/// Rust; no libseccomp is linked). A unit test keeps it equal to Cargo.lock's version.
pub const SECCOMP_LIBRARY: &str = "seccompiler 0.5.0";

/// Where the new root is mounted before pivot_root (as slirp4netns does). Anything the
/// tmpfs hides there is reached through fds opened before it is mounted.
const NEW_ROOT: &str = "/tmp";

/// The host directories every sandbox keeps, read-only.
const KEPT_DIRS: [&str; 2] = ["/etc", "/run"];

/// Room in the new root: a handful of directories and symlinks, no file data.
const NEW_ROOT_OPTIONS: &str = "size=64k,nr_inodes=256,mode=0755";

/// Symlinks followed when resolving resolv.conf, as the kernel's own limit.
const MAX_SYMLINKS: usize = 40;

/// Capability number of CAP_NET_BIND_SERVICE (linux/capability.h).
const CAP_NET_BIND_SERVICE: u32 = 10;

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

/// Longest the exit waits for the socket remover.
const SOCKET_REMOVER_TIMEOUT: Duration = Duration::from_secs(1);

impl Drop for Confinement {
    /// Tells the socket remover we are done and waits (bounded) until it has removed the
    /// file, so that a caller who sees rslirp exit also sees the file gone.
    fn drop(&mut self) {
        let Some(fd) = self.socket_remover.take() else {
            return;
        };
        let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        let mut byte = [0u8; 1];
        // EOF once the remover is done; an error (the receive timeout) ends the wait too.
        while let Ok(n) = nix::unistd::read(&fd, &mut byte) {
            if n == 0 {
                break;
            }
        }
    }
}

/// Forks a helper that waits, outside any confinement, until this process is done (EOF on
/// a socket pair whose other end only we hold: at [`Confinement`]'s drop, or when the
/// process dies), then removes the control socket's file if it is still the socket we made,
/// and exits. It keeps nothing else: every other fd is closed (so the caller's ready pipe
/// and stderr see their EOF when rslirp ends), it has no input but that EOF, and it is not
/// dumpable, so a taken-over rslirp of the same uid cannot ptrace it. Must run while
/// single-threaded, like the rest of this module. Returns our end.
fn spawn_socket_remover(path: &Path) -> Result<OwnedFd, SandboxError> {
    use nix::sys::socket::{setsockopt, socketpair, sockopt, AddressFamily, SockFlag, SockType};
    use std::os::unix::fs::MetadataExt;
    let display = path.display().to_string();
    let made = fs::symlink_metadata(path).map_err(io_failed(format!("stat {display}")))?;
    let identity = (made.dev(), made.ino());
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(failed("socketpair for the socket remover"))?;
    let timeout = nix::sys::time::TimeVal::new(SOCKET_REMOVER_TIMEOUT.as_secs() as _, 0);
    setsockopt(&ours, sockopt::ReceiveTimeout, &timeout)
        .map_err(failed("SO_RCVTIMEO for the socket remover"))?;
    // SAFETY: the process is single-threaded here (see the module documentation), so the
    // child may do anything the parent could, allocation included.
    match unsafe { nix::unistd::fork() }.map_err(failed("fork the socket remover"))? {
        nix::unistd::ForkResult::Child => {
            drop(ours);
            remove_socket_when_done(theirs, path, identity)
        }
        nix::unistd::ForkResult::Parent { .. } => Ok(ours),
    }
}

/// The helper's whole life (see [`spawn_socket_remover`]).
fn remove_socket_when_done(theirs: OwnedFd, path: &Path, identity: (u64, u64)) -> ! {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    // SAFETY: prctl with integer arguments (and a static NUL-terminated name) only.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"rslirp-cleanup".as_ptr(), 0, 0, 0);
    }
    close_all_fds_but(theirs.as_raw_fd());
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(&theirs, &mut byte) {
            Ok(0) => break,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    if let Ok(now) = fs::symlink_metadata(path) {
        if now.file_type().is_socket() && (now.dev(), now.ino()) == identity {
            let _ = fs::remove_file(path);
        }
    }
    // SAFETY: ends the helper at once (closing its end, which tells rslirp it is done); it
    // shares no state worth flushing with anyone.
    unsafe { libc::_exit(0) }
}

/// Closes every fd but `keep`: those listed in /proc/self/fd (collected first, since
/// listing holds an fd of its own), or the first 1024 numbers if /proc cannot be read.
fn close_all_fds_but(keep: libc::c_int) {
    let open: Vec<libc::c_int> = match fs::read_dir("/proc/self/fd") {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => (0..1024).collect(),
    };
    for fd in open.into_iter().filter(|&fd| fd != keep) {
        // SAFETY: closes an fd number of this helper process, which uses none of them
        // (EBADF for the listing's own, already closed, is harmless).
        unsafe { libc::close(fd) };
    }
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

/// Step 1: `unshare(CLONE_NEWNS)`, or, without the privilege for it, a user namespace of
/// our own mapping just our ids, with the mount namespace inside it. True in the latter case.
fn new_mount_namespace() -> Result<bool, SandboxError> {
    match unshare(CloneFlags::CLONE_NEWNS) {
        Ok(()) => return Ok(false),
        Err(Errno::EPERM) => {}
        Err(errno) => return Err(failed("unshare(CLONE_NEWNS)")(errno)),
    }
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        .map_err(failed("unshare(CLONE_NEWUSER|CLONE_NEWNS)"))?;
    // An unprivileged process may map only its own ids, and its gid only once setgroups is
    // denied. Each file takes the whole map in one write.
    match fs::write("/proc/self/setgroups", "deny") {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_failed("write /proc/self/setgroups")(err));
        }
        _ => {}
    }
    fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))
        .map_err(io_failed("write /proc/self/uid_map"))?;
    fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))
        .map_err(io_failed("write /proc/self/gid_map"))?;
    Ok(true)
}

/// How a path resolves: the symlinks passed on the way (where each lives, what it says)
/// and the file reached, as an absolute path without symlinks.
#[derive(Debug, PartialEq, Eq)]
struct Resolution {
    links: Vec<(PathBuf, PathBuf)>,
    file: PathBuf,
}

/// Follows `path` one component at a time, as the kernel would, recording every symlink.
/// (`fs::canonicalize` gives only the end; the new root needs the way there too, e.g. a
/// link through /var/run when only /run is kept.)
fn resolve_symlinks(path: &Path) -> std::io::Result<Resolution> {
    let mut links = Vec::new();
    let mut resolved = PathBuf::from("/");
    // Components still to walk, the next one last.
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, path);
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let next = resolved.join(&part);
        if fs::symlink_metadata(&next)?.file_type().is_symlink() {
            if links.len() == MAX_SYMLINKS {
                return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = fs::read_link(&next)?;
            if target.is_absolute() {
                resolved = PathBuf::from("/");
            }
            push_components(&mut pending, &target);
            links.push((next, target));
        } else {
            resolved = next;
        }
    }
    Ok(Resolution {
        links,
        file: resolved,
    })
}

fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    let parts = path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    });
    let parts: Vec<OsString> = parts.collect();
    pending.extend(parts.into_iter().rev());
}

/// Whether `path` is visible in the sandbox anyway, through the /etc or /run bind.
fn in_kept_dirs(path: &Path) -> bool {
    KEPT_DIRS.iter().any(|dir| path.starts_with(dir))
}

/// `path` (absolute, in the host's view) as seen from before the pivot: under NEW_ROOT.
fn in_new_root(path: &Path) -> PathBuf {
    Path::new(NEW_ROOT).join(path.strip_prefix("/").unwrap_or(path))
}

/// Where a bind goes, as an absolute path of the sandbox's view.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BindTarget {
    path: PathBuf,
    is_dir: bool,
}

/// A host file or directory to bind, held open so that it stays reachable once the new
/// root's tmpfs covers /tmp.
struct Bind {
    source: OwnedFd,
    target: BindTarget,
}

impl Bind {
    fn open(path: &Path, is_dir: bool) -> Result<Bind, SandboxError> {
        let mut flags = libc::O_PATH | libc::O_CLOEXEC;
        if is_dir {
            flags |= libc::O_DIRECTORY;
        }
        let file = File::options()
            .read(true)
            .custom_flags(flags)
            .open(path)
            .map_err(io_failed(format!("open {}", path.display())))?;
        Ok(Bind {
            source: file.into(),
            target: BindTarget {
                path: path.to_path_buf(),
                is_dir,
            },
        })
    }

    /// Creates the mount point in the new root and binds the whole tree there (MS_REC: a
    /// mount namespace of a less privileged user namespace may not bind a directory while
    /// leaving the mounts below it behind).
    fn mount(&self) -> Result<(), SandboxError> {
        let target = in_new_root(&self.target.path);
        let display = self.target.path.display();
        if self.target.is_dir {
            fs::create_dir_all(&target).map_err(io_failed(format!("mkdir {display}")))?;
        } else {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(io_failed(format!("mkdir for {display}")))?;
            }
            File::create(&target).map_err(io_failed(format!("create {display}")))?;
        }
        // mount(2) follows the fd's magic link to the very file we opened.
        let source = format!("/proc/self/fd/{}", self.source.as_raw_fd());
        mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(failed(format!("bind {display}")))
    }
}

/// /etc, /run, and the place resolv.conf ends up in when that is elsewhere: its directory,
/// so that a replacement by rename is seen too, or the file alone when that directory is /.
fn bind_sources(resolv: Option<&Resolution>) -> Result<Vec<Bind>, SandboxError> {
    let mut binds = KEPT_DIRS
        .iter()
        .map(|dir| Bind::open(Path::new(dir), true))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(resolv) = resolv.filter(|r| !in_kept_dirs(&r.file)) {
        match resolv.file.parent() {
            Some(dir) if dir != Path::new("/") => binds.push(Bind::open(dir, true)?),
            _ => binds.push(Bind::open(&resolv.file, false)?),
        }
    }
    Ok(binds)
}

/// The symlinks on resolv.conf's way that live outside /etc and /run, made again in the
/// new root with the same contents.
fn recreate_symlinks(resolv: &Resolution) -> Result<(), SandboxError> {
    for (link, target) in resolv.links.iter().filter(|(link, _)| !in_kept_dirs(link)) {
        let at = in_new_root(link);
        let display = link.display();
        if let Some(parent) = at.parent() {
            fs::create_dir_all(parent).map_err(io_failed(format!("mkdir for {display}")))?;
        }
        std::os::unix::fs::symlink(target, &at).map_err(io_failed(format!("symlink {display}")))?;
    }
    Ok(())
}

/// Step 5. The classic remount covers each top-level mount on every kernel; mount_setattr
/// (Linux 5.12+) also covers the mounts below them, such as tmpfs mounts under /run.
fn make_read_only(binds: &[BindTarget]) -> Result<(), SandboxError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(failed("remount / read-only"))?;
    for bind in binds {
        remount_bind_read_only(&bind.path)?;
    }
    match set_recursive_read_only(Path::new("/")) {
        Ok(()) | Err(Errno::ENOSYS) => Ok(()),
        Err(errno) => Err(failed("mount_setattr(/, MOUNT_ATTR_RDONLY, AT_RECURSIVE)")(
            errno,
        )),
    }
}

/// A bind remount keeps the flags the kernel may have locked on the source (in a user
/// namespace, nosuid/nodev/noexec and the atime mode cannot be dropped), adding read-only.
fn remount_bind_read_only(path: &Path) -> Result<(), SandboxError> {
    let display = path.display();
    let current = statvfs(path).map_err(failed(format!("statvfs {display}")))?;
    let kept = [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    for (has, keep) in kept {
        if current.flags().contains(has) {
            flags |= keep;
        }
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .map_err(failed(format!("remount {display} read-only")))
}

/// `struct mount_attr` of linux/mount.h (libc has the syscall number but not the type).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: libc::c_uint = 0x8000;

fn set_recursive_read_only(path: &Path) -> Result<(), Errno> {
    let path =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `path` is a NUL-terminated string and `attr` a mount_attr that both outlive
    // the call; the size passed is that of the struct, which the kernel only reads.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(rc).map(drop)
}

/// `struct __user_cap_header_struct` / `__user_cap_data_struct` of linux/capability.h
/// (version 3: two data structs, capabilities 0..31 and 32..63).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn has_effective_capability(cap: u32) -> Result<bool, SandboxError> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes at most two CapData for version 3, and `data` holds two; the
    // header is a valid, initialised struct of the kernel's layout.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    Errno::result(rc).map_err(failed("capget"))?;
    Ok(data[(cap / 32) as usize].effective & (1 << (cap % 32)) != 0)
}

/// Step 6: empty the ambient set, the bounding set, and the other three sets, keeping
/// CAP_NET_BIND_SERVICE (bounding, permitted, effective) when `keep_bind_service`.
fn drop_capabilities(keep_bind_service: bool) -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments only. EINVAL means a kernel without ambient
    // capabilities (before 4.3), which then has none to clear.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    match Errno::result(rc) {
        Ok(_) | Err(Errno::EINVAL) => {}
        Err(errno) => return Err(failed("prctl(PR_CAP_AMBIENT_CLEAR_ALL)")(errno)),
    }
    // Capabilities the kernel knows are numbered from 0 up; the first it rejects with
    // EINVAL is past the last.
    for cap in 0..64u32 {
        if keep_bind_service && cap == CAP_NET_BIND_SERVICE {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        match Errno::result(rc) {
            Ok(_) => {}
            Err(Errno::EINVAL) => break,
            Err(errno) => return Err(failed(format!("prctl(PR_CAPBSET_DROP, {cap})"))(errno)),
        }
    }
    let kept = if keep_bind_service {
        1 << CAP_NET_BIND_SERVICE
    } else {
        0
    };
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: kept,
            permitted: kept,
            inheritable: 0,
        },
        CapData::default(),
    ];
    // SAFETY: capset reads one header and two CapData for version 3, all initialised and
    // alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    Errno::result(rc).map(drop).map_err(failed("capset"))
}

fn install_seccomp_filter() -> Result<(), SandboxError> {
    let program = seccomp_program()?;
    // Sets no_new_privs (required for an unprivileged filter) and installs the filter on
    // every thread (TSYNC), though there is only one.
    seccompiler::apply_filter_all_threads(&program).map_err(|err| SandboxError::Seccomp {
        op: "install filter",
        detail: err.to_string(),
    })
}

fn seccomp_program() -> Result<BpfProgram, SandboxError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|err: seccompiler::BackendError| SandboxError::Seccomp {
            op: "target architecture",
            detail: err.to_string(),
        })?;
    let build_error = |err: seccompiler::BackendError| SandboxError::Seccomp {
        op: "build filter",
        detail: err.to_string(),
    };
    let filter = SeccompFilter::new(
        allowed_syscalls().map_err(build_error)?,
        // Refused calls fail with EPERM rather than killing the process: see docs/security.md.
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(build_error)?;
    filter.try_into().map_err(build_error)
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// `arg` (32-bit) equals `value`.
fn arg_eq(arg: u8, value: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// None of `mask`'s bits are set in `arg` (32-bit).
fn arg_without(arg: u8, mask: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        0,
    )?])
}

/// The allow-list. Its first part is what the running loop was seen to call when the
/// end-to-end suite (TCP, bulk TCP, UDP, ping sockets, DNS with a resolv.conf change, DHCP,
/// port forwards, the control socket, exit) ran under `strace -f` with both flags; the
/// second part are calls the suite cannot provoke but a long run or a failure can, each
/// harmless on its own (docs/security.md lists both with reasons). Setup calls (namespaces,
/// the tap, mounts) are over before the filter goes on, and are absent.
pub fn allowed_syscalls() -> Result<Rules, seccompiler::BackendError> {
    let mut rules: Rules = BTreeMap::new();
    let mut allow = |nr: libc::c_long, conditions: Vec<SeccompRule>| {
        rules.entry(nr).or_default().extend(conditions);
    };

    // Seen. mio's epoll; read/write on the tap, the signalfd, the inotify fd, the exit fd,
    // TCP host sockets, the control socket's clients and stderr.
    #[cfg(target_arch = "x86_64")]
    allow(libc::SYS_epoll_wait, vec![]);
    allow(libc::SYS_epoll_ctl, vec![]);
    allow(libc::SYS_read, vec![]);
    allow(libc::SYS_write, vec![]);
    // Frames to a tap with a virtio-net header: the header and the frame in one call.
    allow(libc::SYS_writev, vec![]);
    allow(libc::SYS_close, vec![]);
    // Host sockets of NAT flows (TCP, UDP, ICMP ping sockets) and of port forwards, only in
    // the two families the NAT uses: no netlink, packet or unix sockets.
    allow(
        libc::SYS_socket,
        vec![
            arg_eq(0, libc::AF_INET as u64)?,
            arg_eq(0, libc::AF_INET6 as u64)?,
        ],
    );
    for nr in [
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept4,
        libc::SYS_shutdown,
        libc::SYS_getsockopt,
        libc::SYS_setsockopt,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        // The ICMP errors queued on UDP and ping sockets (MSG_ERRQUEUE needs recvmsg).
        libc::SYS_recvmsg,
        // Two datagrams of a UDP or ping socket in one call (host.rs `recv_two`).
        libc::SYS_recvmmsg,
    ] {
        allow(nr, vec![]);
    }
    // std's set_nonblocking on an accepted forward connection is ioctl(FIONBIO), nothing
    // else. FIONBIO is a c_ulong with glibc but a c_int with musl.
    #[allow(clippy::unnecessary_cast)]
    let fionbio = libc::FIONBIO as u64;
    allow(libc::SYS_ioctl, vec![arg_eq(1, fionbio)?]);
    // Reading and setting an fd's flags (std checks F_GETFD before closing in debug builds).
    allow(
        libc::SYS_fcntl,
        vec![
            arg_eq(1, libc::F_GETFD as u64)?,
            arg_eq(1, libc::F_GETFL as u64)?,
            arg_eq(1, libc::F_SETFL as u64)?,
        ],
    );
    // Re-reading resolv.conf after a change: open read-only (none of the write, create,
    // truncate or append flags), size, read.
    allow(
        libc::SYS_openat,
        vec![arg_without(
            2,
            (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u64,
        )?],
    );
    allow(libc::SYS_statx, vec![]);
    // After a change the resolver's file watch is re-armed (a rename gives a new inode).
    allow(libc::SYS_inotify_add_watch, vec![]);
    allow(libc::SYS_inotify_rm_watch, vec![]);
    // The allocator: blocks of a page or more (flow buffers) are mappings of their own
    // (src/alloc.rs). Never executable memory,
    // so a hijacked process cannot map code of its own.
    allow(
        libc::SYS_mmap,
        vec![arg_without(2, libc::PROT_EXEC as u64)?],
    );
    allow(libc::SYS_munmap, vec![]);
    allow(libc::SYS_brk, vec![]);
    // std takes down the main thread's signal stack on the way out; then the exit.
    allow(libc::SYS_sigaltstack, vec![]);
    allow(libc::SYS_exit_group, vec![]);

    // Not seen, allowed on purpose.
    // epoll_wait's successor, the only one on architectures without epoll_wait (aarch64).
    allow(libc::SYS_epoll_pwait, vec![]);
    // glibc's realloc and free of large blocks (mremap, madvise); mprotect when an arena
    // grows. Again never executable memory.
    allow(libc::SYS_mremap, vec![]);
    allow(libc::SYS_madvise, vec![]);
    allow(
        libc::SYS_mprotect,
        vec![arg_without(2, libc::PROT_EXEC as u64)?],
    );
    // Time is read through the vDSO, which falls back to the system call when the clock
    // source cannot be read from user space (some virtual machines).
    allow(libc::SYS_clock_gettime, vec![]);
    // The kernel's own after a signal or a stop (SIGSTOP, ptrace) of the process.
    allow(libc::SYS_rt_sigreturn, vec![]);
    allow(libc::SYS_restart_syscall, vec![]);
    // A panic aborts (panic = "abort"): abort() unblocks and raises SIGABRT at its own
    // process only, so it dies of SIGABRT as it should, not of a confusing fallback.
    allow(libc::SYS_exit, vec![]);
    allow(libc::SYS_rt_sigprocmask, vec![]);
    allow(libc::SYS_rt_sigaction, vec![]);
    allow(libc::SYS_getpid, vec![]);
    allow(libc::SYS_gettid, vec![]);
    allow(
        libc::SYS_tgkill,
        vec![arg_eq(0, std::process::id().into())?],
    );
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_library_matches_the_locked_version() {
        let lock = include_str!("../Cargo.lock");
        let version = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"seccompiler\""))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
            .map(|v| v.trim_matches('"'))
            .expect("seccompiler in Cargo.lock");
        assert_eq!(SECCOMP_LIBRARY, format!("seccompiler {version}"));
    }

    #[test]
    fn the_filter_compiles() {
        let program = seccomp_program().unwrap();
        assert!(!program.is_empty());
    }

    type Probe = fn() -> libc::c_long;

    /// Calls made under the filter and what each must give: 0 for success, else the errno.
    /// EBADF/EFAULT show a call went through to the kernel; EPERM that the filter took it.
    fn probes() -> [(&'static str, Probe, i32); 16] {
        const PAGE: libc::size_t = 4096;
        const ANON: libc::c_int = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY (all probes): raw system calls with integer arguments, null pointers or
        // static strings; none touches memory of ours, and an mmap that succeeds only
        // leaks a page of a child that is about to exit.
        [
            (
                "close(-1)",
                || unsafe { libc::syscall(libc::SYS_close, -1) },
                libc::EBADF,
            ),
            (
                "getppid",
                || unsafe { libc::syscall(libc::SYS_getppid) },
                libc::EPERM,
            ),
            (
                "unshare(0)",
                || unsafe { libc::syscall(libc::SYS_unshare, 0) },
                libc::EPERM,
            ),
            (
                "socket(AF_INET)",
                || unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_DGRAM, 0) },
                0,
            ),
            (
                "socket(AF_INET6)",
                || unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET6, libc::SOCK_STREAM, 0) },
                0,
            ),
            (
                "socket(AF_NETLINK)",
                || unsafe { libc::syscall(libc::SYS_socket, libc::AF_NETLINK, libc::SOCK_RAW, 0) },
                libc::EPERM,
            ),
            (
                "socket(AF_UNIX)",
                || unsafe { libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) },
                libc::EPERM,
            ),
            (
                "openat read-only",
                || unsafe {
                    libc::syscall(
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        c"/".as_ptr(),
                        libc::O_RDONLY,
                    )
                },
                0,
            ),
            (
                "openat for writing",
                || unsafe {
                    let flags = libc::O_WRONLY | libc::O_CREAT;
                    libc::syscall(
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        c"/rslirp-probe".as_ptr(),
                        flags,
                    )
                },
                libc::EPERM,
            ),
            (
                "mmap read-write",
                || unsafe {
                    let prot = libc::PROT_READ | libc::PROT_WRITE;
                    libc::syscall(libc::SYS_mmap, 0, PAGE, prot, ANON, -1, 0)
                },
                0,
            ),
            (
                "mmap executable",
                || unsafe {
                    let prot = libc::PROT_READ | libc::PROT_EXEC;
                    libc::syscall(libc::SYS_mmap, 0, PAGE, prot, ANON, -1, 0)
                },
                libc::EPERM,
            ),
            (
                "ioctl(FIONBIO)",
                || unsafe { libc::syscall(libc::SYS_ioctl, -1, libc::FIONBIO, 0) },
                libc::EBADF,
            ),
            (
                "ioctl(TIOCSTI)",
                || unsafe { libc::syscall(libc::SYS_ioctl, -1, libc::TIOCSTI, 0) },
                libc::EPERM,
            ),
            (
                "fcntl(F_GETFL)",
                || unsafe { libc::syscall(libc::SYS_fcntl, -1, libc::F_GETFL) },
                libc::EBADF,
            ),
            (
                "fcntl(F_DUPFD)",
                || unsafe { libc::syscall(libc::SYS_fcntl, -1, libc::F_DUPFD, 0) },
                libc::EPERM,
            ),
            (
                "execve",
                || unsafe { libc::syscall(libc::SYS_execve, 0, 0, 0) },
                libc::EPERM,
            ),
        ]
    }

    /// Installs the filter in a forked child (it cannot be taken off again) and runs the
    /// probes there; the child's exit status is 0 or 1 + the index of the first that failed.
    #[test]
    fn the_filter_refuses_with_eperm_and_allows_the_list() {
        let program = seccomp_program().unwrap();
        let probes = probes();
        // SAFETY: the child only makes raw system calls and leaves with _exit; it touches
        // no lock or allocator state another test thread might have held at the fork.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let mut code = 0;
                if seccompiler::apply_filter(&program).is_err() {
                    code = 100;
                }
                for (i, (_, probe, expected)) in probes.iter().enumerate() {
                    if code != 0 {
                        break;
                    }
                    let rc = probe();
                    let got = if rc >= 0 { 0 } else { Errno::last_raw() };
                    if got != *expected {
                        code = i as i32 + 1;
                    }
                }
                // SAFETY: ends the forked child at once, without running the parent's
                // destructors or test harness code.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                let nix::sys::wait::WaitStatus::Exited(_, code) = status else {
                    panic!("probe child ended with {status:?}");
                };
                assert!(code != 100, "cannot install the filter");
                let failed = probes.get((code as usize).wrapping_sub(1)).map(|p| p.0);
                assert_eq!(code, 0, "probe {failed:?} gave an unexpected result");
            }
        }
    }

    #[test]
    fn symlinks_on_the_way_are_recorded() {
        let dir = std::env::temp_dir().join(format!("rslirp-sandbox-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("real/sub")).unwrap();
        fs::write(dir.join("real/sub/resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        // dir/var -> real (relative), dir/link -> <abs>/var/sub/resolv.conf
        std::os::unix::fs::symlink("real", dir.join("var")).unwrap();
        let abs_link_target = dir.join("var/sub/resolv.conf");
        std::os::unix::fs::symlink(&abs_link_target, dir.join("link")).unwrap();
        let dir = fs::canonicalize(&dir).unwrap();
        let resolution = resolve_symlinks(&dir.join("link")).unwrap();
        assert_eq!(resolution.file, dir.join("real/sub/resolv.conf"));
        assert_eq!(
            resolution.links,
            vec![
                (dir.join("link"), abs_link_target),
                (dir.join("var"), PathBuf::from("real")),
            ]
        );
        let plain = resolve_symlinks(&dir.join("real/sub/../sub/resolv.conf")).unwrap();
        assert!(plain.links.is_empty());
        assert_eq!(plain.file, dir.join("real/sub/resolv.conf"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlink_loops_end() {
        let dir = std::env::temp_dir().join(format!("rslirp-sandbox-loop-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(dir.join("b"), dir.join("a")).unwrap();
        std::os::unix::fs::symlink(dir.join("a"), dir.join("b")).unwrap();
        let err = resolve_symlinks(&dir.join("a")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        fs::remove_dir_all(&dir).unwrap();
    }

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

    #[test]
    fn kept_dirs_and_new_root_paths() {
        assert!(in_kept_dirs(Path::new("/etc/resolv.conf")));
        assert!(in_kept_dirs(Path::new(
            "/run/systemd/resolve/stub-resolv.conf"
        )));
        assert!(!in_kept_dirs(Path::new("/etcetera/resolv.conf")));
        assert!(!in_kept_dirs(Path::new("/var/run/resolv.conf")));
        assert_eq!(
            in_new_root(Path::new("/mnt/wsl")),
            PathBuf::from("/tmp/mnt/wsl")
        );
    }
}

//! Steps 1 to 5 of `--enable-sandbox` (the numbered list in `mod.rs`): a mount namespace of our
//! own (in a user namespace of our own when we lack the privilege), a new root on a small
//! tmpfs holding read-only binds of /etc, /run and wherever resolv.conf's symlinks lead.
//! The order of the calls is `enter_sandbox`'s, in `mod.rs`; this file holds the
//! pieces: the namespace, the symlink walk, the binds, the read-only remounts.

use super::{failed, io_failed, SandboxError};
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use std::ffi::OsString;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// Where the new root is mounted before pivot_root (as slirp4netns does). Anything the
/// tmpfs hides there is reached through fds opened before it is mounted.
pub(super) const NEW_ROOT: &str = "/tmp";

/// The host directories every sandbox keeps, read-only.
const KEPT_DIRS: [&str; 2] = ["/etc", "/run"];

/// Room in the new root: a handful of directories and symlinks, no file data.
pub(super) const NEW_ROOT_OPTIONS: &str = "size=64k,nr_inodes=256,mode=0755";

/// Symlinks followed when resolving resolv.conf, as the kernel's own limit.
const MAX_SYMLINKS: usize = 40;
/// Step 1: `unshare(CLONE_NEWNS)`, or, without the privilege for it, a user namespace of
/// our own mapping just our ids, with the mount namespace inside it. True in the latter case.
pub(super) fn new_mount_namespace() -> Result<bool, SandboxError> {
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
pub(super) struct Resolution {
    links: Vec<(PathBuf, PathBuf)>,
    file: PathBuf,
}

/// Follows `path` one component at a time, as the kernel would, recording every symlink.
/// (`fs::canonicalize` gives only the end; the new root needs the way there too, e.g. a
/// link through /var/run when only /run is kept.)
pub(super) fn resolve_symlinks(path: &Path) -> std::io::Result<Resolution> {
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
pub(super) struct BindTarget {
    path: PathBuf,
    is_dir: bool,
}

/// A host file or directory to bind, held open so that it stays reachable once the new
/// root's tmpfs covers /tmp.
pub(super) struct Bind {
    source: OwnedFd,
    pub(super) target: BindTarget,
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
    pub(super) fn mount(&self) -> Result<(), SandboxError> {
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
pub(super) fn bind_sources(resolv: Option<&Resolution>) -> Result<Vec<Bind>, SandboxError> {
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
pub(super) fn recreate_symlinks(resolv: &Resolution) -> Result<(), SandboxError> {
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
pub(super) fn make_read_only(binds: &[BindTarget]) -> Result<(), SandboxError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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

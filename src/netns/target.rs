//! Which network namespace holds the tap, and how it is found: by the PID of a process in
//! it (`/proc/PID/ns/net`, with that process's user namespace) or by a namespace file
//! (`/run/netns/NAME`, with `--userns-path`). The files are opened, and checked to be
//! namespaces of the right type, in the parent before the fork (see `child.rs`), so that a
//! missing PID or path is reported clearly and a PID cannot be recycled in between.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sched::CloneFlags;
use nix::sys::stat::{fstat, Mode};

use super::{SetupError, TapRequest};

/// Which network namespace holds the tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsTarget {
    /// The network namespace of that process (`/proc/PID/ns/net`); its user namespace is
    /// joined first when it differs from ours.
    Pid(i32),
    /// A network namespace file such as `/run/netns/NAME`; only `userns_path` is joined.
    Path(PathBuf),
}

pub(super) struct NsFile {
    pub(super) path: PathBuf,
    pub(super) fd: OwnedFd,
}

impl NsFile {
    /// Opens a namespace file and, where the kernel can tell (NS_GET_NSTYPE, Linux 4.11+),
    /// checks that it is of the `kind` we will setns into: a swapped or wrong path then gets
    /// a clear message instead of setns's bare EINVAL.
    pub(super) fn open(path: &Path, kind: CloneFlags) -> Result<Self, SetupError> {
        let fd =
            open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|errno| {
                SetupError::OpenNamespace {
                    path: path.to_owned(),
                    errno,
                }
            })?;
        // SAFETY: NS_GET_NSTYPE takes no argument and only returns a value; on a file that
        // is not a namespace the kernel answers ENOTTY.
        let nstype = unsafe { ioctl::ns_get_nstype(fd.as_raw_fd()) };
        // An error (ENOTTY from an old kernel or a non-namespace file) leaves the verdict to
        // setns; only a definite, different answer is rejected here.
        if let Ok(nstype) = nstype {
            if nstype != kind.bits() {
                return Err(SetupError::WrongNamespaceType {
                    path: path.to_owned(),
                    expected: if kind == CloneFlags::CLONE_NEWUSER {
                        "user"
                    } else {
                        "network"
                    },
                });
            }
        }
        Ok(NsFile {
            path: path.to_owned(),
            fd,
        })
    }

    /// Identity of a namespace: its nsfs device and inode.
    fn identity(&self) -> Result<(u64, u64), SetupError> {
        let st = fstat(&self.fd).map_err(|errno| SetupError::StatNamespace {
            path: self.path.clone(),
            errno,
        })?;
        Ok((st.st_dev, st.st_ino))
    }
}

/// The namespace files the child joins, opened in the parent so that a missing PID or path
/// is reported before forking (and a PID cannot be recycled between the checks and setns).
pub(super) struct Namespaces {
    pub(super) user: Option<NsFile>,
    pub(super) net: NsFile,
}

impl Namespaces {
    pub(super) fn open(req: &TapRequest) -> Result<Self, SetupError> {
        let (net_path, user_path) = match &req.target {
            NetnsTarget::Pid(pid) => (
                PathBuf::from(format!("/proc/{pid}/ns/net")),
                Some(PathBuf::from(format!("/proc/{pid}/ns/user"))),
            ),
            NetnsTarget::Path(path) => (path.clone(), req.userns_path.clone()),
        };
        let net = NsFile::open(&net_path, CloneFlags::CLONE_NEWNET)?;
        let user = match user_path {
            Some(path) => {
                let user = NsFile::open(&path, CloneFlags::CLONE_NEWUSER)?;
                // setns into the user namespace we are already in fails with EINVAL.
                let ours =
                    NsFile::open(Path::new("/proc/self/ns/user"), CloneFlags::CLONE_NEWUSER)?;
                (user.identity()? != ours.identity()?).then_some(user)
            }
            None => None,
        };
        Ok(Namespaces { user, net })
    }
}

mod ioctl {
    nix::ioctl_none_bad!(ns_get_nstype, libc::NS_GET_NSTYPE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::open_tap;
    use crate::netns::tests::request;

    #[test]
    fn missing_pid_names_the_file() {
        // Larger than any possible pid_max (2^22), so never a live process.
        let err = open_tap(&request(NetnsTarget::Pid(i32::MAX))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot open /proc/2147483647/ns/net: No such file or directory"
        );
    }

    #[test]
    fn missing_path_names_the_file() {
        let target = NetnsTarget::Path(PathBuf::from("/nonexistent/rslirp-netns"));
        let err = open_tap(&request(target)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot open /nonexistent/rslirp-netns: No such file or directory"
        );
    }

    #[test]
    fn missing_userns_path_names_the_file() {
        let mut req = request(NetnsTarget::Path(PathBuf::from("/proc/self/ns/net")));
        req.userns_path = Some(PathBuf::from("/nonexistent/userns"));
        let err = open_tap(&req).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot open /nonexistent/userns: No such file or directory"
        );
    }

    #[test]
    fn swapped_namespace_files_are_named() {
        let mut req = request(NetnsTarget::Path(PathBuf::from("/proc/self/ns/user")));
        let err = open_tap(&req).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/proc/self/ns/user is not a network namespace"
        );
        req.target = NetnsTarget::Path(PathBuf::from("/proc/self/ns/net"));
        req.userns_path = Some(PathBuf::from("/proc/self/ns/net"));
        let err = open_tap(&req).unwrap_err();
        assert_eq!(err.to_string(), "/proc/self/ns/net is not a user namespace");
    }

    #[test]
    fn own_user_namespace_is_not_joined() {
        let ns = Namespaces::open(&request(NetnsTarget::Pid(std::process::id() as i32))).unwrap();
        assert!(ns.user.is_none());
        assert_eq!(
            ns.net.path,
            PathBuf::from(format!("/proc/{}/ns/net", std::process::id()))
        );
    }
}

//! The short-lived child that opens the tap inside the container's namespaces, and the
//! protocol by which it reports back: the parent forks it with one end of a SEQPACKET
//! socketpair; the child joins the user namespace (when needed) and the network namespace,
//! opens or creates the tap (TUNSETIFF), configures it if asked (`configure.rs`), and sends
//! one report: success with the tap fd attached (`SCM_RIGHTS`), or the step that failed and
//! its errno. The parent never changes namespace.
//!
//! The report is a step code plus an errno rather than text: the parent knows the paths,
//! names and addresses involved and builds the typed [`SetupError`] itself.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, SockType};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::configure::{configure, describe_step, PreparedConfig};
use super::target::Namespaces;
use super::{ConfigStep, IfName, SetupError};
use crate::tap::ioctl;

/// Everything the child needs, prepared by the parent.
pub(super) struct ChildJob<'a> {
    pub(super) namespaces: &'a Namespaces,
    pub(super) name: &'a IfName,
    pub(super) config: Option<&'a PreparedConfig>,
    /// Open with IFF_VNET_HDR (the flag can only be given in TUNSETIFF, hence here).
    pub(super) vnet_hdr: bool,
}

/// Where the child stopped; sent to the parent as a code with the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildStep {
    SetnsUser,
    SetnsNet,
    OpenTun,
    Tunsetiff,
    Configure(ConfigStep),
}

const CONFIG_STEPS: [ConfigStep; 10] = [
    ConfigStep::Socket,
    ConfigStep::LoopbackGetFlags,
    ConfigStep::LoopbackUp,
    ConfigStep::TapMac,
    ConfigStep::TapMtu,
    ConfigStep::TapAddress,
    ConfigStep::TapNetmask,
    ConfigStep::TapGetFlags,
    ConfigStep::TapUp,
    ConfigStep::DefaultRoute,
];

/// Report code for success; the message then carries the tap fd.
const CODE_OK: u32 = 0;
/// code (u32) + errno (i32), native endian: both ends are the same binary.
const REPORT_LEN: usize = 8;
/// Child exit statuses when it could not even report.
const EXIT_SEND_FAILED: i32 = 2;
const EXIT_PANICKED: i32 = 3;

impl ChildStep {
    fn code(self) -> u32 {
        match self {
            ChildStep::SetnsUser => 1,
            ChildStep::SetnsNet => 2,
            ChildStep::OpenTun => 3,
            ChildStep::Tunsetiff => 4,
            ChildStep::Configure(step) => {
                let index = CONFIG_STEPS.iter().position(|s| *s == step).unwrap_or(0);
                100 + index as u32
            }
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(ChildStep::SetnsUser),
            2 => Some(ChildStep::SetnsNet),
            3 => Some(ChildStep::OpenTun),
            4 => Some(ChildStep::Tunsetiff),
            100.. => CONFIG_STEPS
                .get(usize::try_from(code - 100).ok()?)
                .map(|s| ChildStep::Configure(*s)),
            _ => None,
        }
    }
}

fn encode_report(code: u32, errno: i32) -> [u8; REPORT_LEN] {
    let mut report = [0u8; REPORT_LEN];
    report[..4].copy_from_slice(&code.to_ne_bytes());
    report[4..].copy_from_slice(&errno.to_ne_bytes());
    report
}

fn decode_report(report: [u8; REPORT_LEN]) -> (u32, i32) {
    let [a, b, c, d, e, f, g, h] = report;
    (
        u32::from_ne_bytes([a, b, c, d]),
        i32::from_ne_bytes([e, f, g, h]),
    )
}

/// Turns the child's failure report into the error the user sees, with the names the
/// parent knows.
fn child_error(job: &ChildJob, step: ChildStep, errno: Errno) -> SetupError {
    let ns = job.namespaces;
    match step {
        ChildStep::SetnsUser => SetupError::Setns {
            path: ns
                .user
                .as_ref()
                .map_or_else(PathBuf::new, |u| u.path.clone()),
            errno,
        },
        ChildStep::SetnsNet => SetupError::Setns {
            path: ns.net.path.clone(),
            errno,
        },
        ChildStep::OpenTun => SetupError::OpenTun { errno },
        ChildStep::Tunsetiff => SetupError::Tunsetiff {
            name: job.name.text.clone(),
            vnet_hdr: job.vnet_hdr,
            errno,
        },
        ChildStep::Configure(step) => SetupError::Configure {
            step,
            detail: describe_step(step, &job.name.text, job.config.map(|c| &c.source)),
            errno,
        },
    }
}

pub(super) fn run_child(job: &ChildJob) -> Result<OwnedFd, SetupError> {
    let handoff = |op| move |errno| SetupError::Handoff { op, errno };
    // SEQPACKET so that the child's exit shows up as end-of-file on our end.
    let (parent_end, child_end) =
        crate::unix_socketpair(SockType::SeqPacket).map_err(handoff("socketpair"))?;

    // SAFETY: the documented contract of `open_tap` is that the process is single-threaded,
    // so no other thread can hold a lock (malloc's, stdio's) that the child would inherit
    // locked. The child only makes syscalls and small allocations, never returns into the
    // caller's code (it ends in `_exit`, skipping destructors and atexit handlers), and
    // catches panics so that an unwind cannot escape into the caller's stack either.
    match unsafe { fork() }.map_err(handoff("fork"))? {
        ForkResult::Child => {
            drop(parent_end);
            let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child_main(job, &child_end)
            }))
            .unwrap_or(EXIT_PANICKED);
            // SAFETY: `_exit` ends this forked child at once; nothing of the parent's state
            // (buffers, destructors, atexit handlers) may run twice.
            unsafe { libc::_exit(status) }
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            let received = receive_report(&parent_end);
            // Closing our end first makes a still-running child's sendmsg fail instead of
            // blocking, so the wait below always ends.
            drop(parent_end);
            let status = wait_child(child);
            let (tap, report_len, report) = received?;
            if report_len == 0 {
                return Err(SetupError::ChildVanished { status });
            }
            if report_len != REPORT_LEN {
                return Err(SetupError::BadReport("wrong length"));
            }
            match decode_report(report) {
                (CODE_OK, _) => tap.ok_or(SetupError::BadReport("success without an fd")),
                (code, errno) => match ChildStep::from_code(code) {
                    Some(step) => Err(child_error(job, step, Errno::from_raw(errno))),
                    None => Err(SetupError::BadReport("unknown step")),
                },
            }
        }
    }
}

/// Body of the forked child: does the work, reports, and returns the exit status.
fn child_main(job: &ChildJob, sock: &OwnedFd) -> i32 {
    let sent = match child_setup(job) {
        Ok(tap) => {
            let fds = [tap.as_raw_fd()];
            let report = encode_report(CODE_OK, 0);
            send_report(sock, &report, &[ControlMessage::ScmRights(&fds)])
        }
        Err((step, errno)) => {
            let report = encode_report(step.code(), errno as i32);
            send_report(sock, &report, &[])
        }
    };
    match sent {
        Ok(()) => 0,
        Err(_) => EXIT_SEND_FAILED,
    }
}

fn send_report(sock: &OwnedFd, report: &[u8], cmsgs: &[ControlMessage]) -> nix::Result<()> {
    let iov = [IoSlice::new(report)];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None) {
            Err(Errno::EINTR) => continue,
            result => return result.map(drop),
        }
    }
}

type ChildResult<T> = Result<T, (ChildStep, Errno)>;

fn child_setup(job: &ChildJob) -> ChildResult<OwnedFd> {
    let ns = job.namespaces;
    // The user namespace first: it grants the capabilities that setns into the netns (owned
    // by that user namespace) and TUNSETIFF there require.
    if let Some(user) = &ns.user {
        setns(&user.fd, CloneFlags::CLONE_NEWUSER).map_err(|e| (ChildStep::SetnsUser, e))?;
    }
    setns(&ns.net.fd, CloneFlags::CLONE_NEWNET).map_err(|e| (ChildStep::SetnsNet, e))?;
    // tun binds an fd to the netns current at open() time, so open only after setns.
    let tun = open(
        "/dev/net/tun",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| (ChildStep::OpenTun, e))?;
    let mut ifr = job.name.ifreq();
    let vnet_hdr = if job.vnet_hdr { libc::IFF_VNET_HDR } else { 0 };
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | vnet_hdr) as libc::c_short;
    // SAFETY: `ifr` is a valid ifreq that lives across the call; TUNSETIFF reads it and writes
    // the final name back into the same struct.
    unsafe { ioctl::tunsetiff(tun.as_raw_fd(), &mut ifr) }
        .map_err(|e| (ChildStep::Tunsetiff, e))?;
    if let Some(config) = job.config {
        configure(job.name, config).map_err(|(step, e)| (ChildStep::Configure(step), e))?;
    }
    Ok(tun)
}

/// Receives the child's report: (the passed fd if any, bytes read, the report bytes).
fn receive_report(
    sock: &OwnedFd,
) -> Result<(Option<OwnedFd>, usize, [u8; REPORT_LEN]), SetupError> {
    let mut report = [0u8; REPORT_LEN];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [IoSliceMut::new(&mut report)];
        // MSG_CMSG_CLOEXEC: the tap fd is close-on-exec from the moment it exists here.
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                return Err(SetupError::Handoff {
                    op: "recvmsg",
                    errno,
                })
            }
            Ok(msg) => msg,
        };
        let mut tap = None;
        let cmsgs = msg.cmsgs().map_err(|errno| SetupError::Handoff {
            op: "recvmsg (control data)",
            errno,
        })?;
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: the kernel just installed `raw` in our fd table for this
                    // message; nothing else knows it, so we are its only owner.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    // Any fd beyond the first is unexpected and is closed by dropping it.
                    tap.get_or_insert(fd);
                }
            }
        }
        let bytes = msg.bytes;
        return Ok((tap, bytes, report));
    }
}

/// Reaps the child and describes how it ended, for error messages.
fn wait_child(child: Pid) -> String {
    loop {
        match waitpid(child, None) {
            Err(Errno::EINTR) => continue,
            Ok(status) => return describe_status(status),
            Err(errno) => return format!("waitpid: {}", errno.desc()),
        }
    }
}

fn describe_status(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, EXIT_SEND_FAILED) => {
            format!("exit status {EXIT_SEND_FAILED}: could not send its report")
        }
        WaitStatus::Exited(_, EXIT_PANICKED) => format!("exit status {EXIT_PANICKED}: panicked"),
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::target::NsFile;
    use super::super::TapConfig;
    use super::*;
    use std::net::Ipv4Addr;
    use std::path::Path;

    #[test]
    fn report_round_trips_every_step() {
        let steps = [
            ChildStep::SetnsUser,
            ChildStep::SetnsNet,
            ChildStep::OpenTun,
            ChildStep::Tunsetiff,
        ]
        .into_iter()
        .chain(CONFIG_STEPS.into_iter().map(ChildStep::Configure));
        for step in steps {
            let (code, errno) = decode_report(encode_report(step.code(), libc::EPERM));
            assert_ne!(code, CODE_OK);
            assert_eq!(ChildStep::from_code(code), Some(step));
            assert_eq!(errno, libc::EPERM);
        }
        assert_eq!(ChildStep::from_code(99), None);
        assert_eq!(ChildStep::from_code(100 + CONFIG_STEPS.len() as u32), None);
    }

    #[test]
    fn child_errors_read_as_one_line_naming_the_step() {
        let ns = Namespaces {
            user: Some(
                NsFile::open(Path::new("/proc/self/ns/user"), CloneFlags::CLONE_NEWUSER).unwrap(),
            ),
            net: NsFile::open(Path::new("/proc/self/ns/net"), CloneFlags::CLONE_NEWNET).unwrap(),
        };
        let name = IfName::new("tap0").unwrap();
        let config = PreparedConfig::new(&TapConfig {
            mtu: 65520,
            address: Ipv4Addr::new(10, 0, 2, 100),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            mac: Some([0x02, 0, 0, 0, 0, 0x01]),
        })
        .unwrap();
        let job = ChildJob {
            namespaces: &ns,
            name: &name,
            config: Some(&config),
            vnet_hdr: false,
        };
        let text = |step| child_error(&job, step, Errno::EPERM).to_string();
        assert_eq!(
            text(ChildStep::SetnsUser),
            "setns(/proc/self/ns/user): Operation not permitted"
        );
        assert_eq!(
            text(ChildStep::Tunsetiff),
            "TUNSETIFF(tap0, IFF_TAP|IFF_NO_PI): Operation not permitted"
        );
        assert_eq!(
            text(ChildStep::Configure(ConfigStep::TapMac)),
            "SIOCSIFHWADDR(tap0, 02:00:00:00:00:01): Operation not permitted"
        );
        assert_eq!(
            text(ChildStep::Configure(ConfigStep::TapNetmask)),
            "SIOCSIFNETMASK(tap0, 255.255.255.0): Operation not permitted"
        );
        assert_eq!(
            text(ChildStep::Configure(ConfigStep::DefaultRoute)),
            "SIOCADDRT(default via 10.0.2.2 dev tap0): Operation not permitted"
        );
    }
}

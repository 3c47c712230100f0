//! `--enable-seccomp`: the allow-list of the system calls the running loop makes, built
//! as a BPF program by seccompiler and installed last, after the sandbox (whose own calls
//! are not in the list). Anything else fails with EPERM; docs/security.md gives the reasons
//! for each entry.

use super::SandboxError;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;

/// What `-v` reports on its `libseccomp:` line: the filter is built by this crate (pure
/// Rust; no libseccomp is linked). A unit test keeps it equal to Cargo.lock's version.
pub const SECCOMP_LIBRARY: &str = "seccompiler 0.5.0";
pub(super) fn install_seccomp_filter() -> Result<(), SandboxError> {
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

    // Seen, with any arguments.
    for nr in [
        // mio's epoll; read/write on the tap, the signalfd, the inotify fd, the exit fd, TCP
        // host sockets, the control socket's clients and stderr.
        #[cfg(target_arch = "x86_64")]
        libc::SYS_epoll_wait,
        libc::SYS_epoll_ctl,
        libc::SYS_read,
        libc::SYS_write,
        // Frames to a tap with a virtio-net header: the header and the frame in one call.
        libc::SYS_writev,
        libc::SYS_close,
        // Host sockets of NAT flows and of port forwards (`socket` itself is below).
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
        // Re-reading resolv.conf after a change: its size (the open is below), and the
        // file watch re-armed (a rename gives a new inode).
        libc::SYS_statx,
        libc::SYS_inotify_add_watch,
        libc::SYS_inotify_rm_watch,
        // The allocator: blocks of a page or more (flow buffers) are mappings of their own
        // (src/alloc.rs); the mapping itself is below.
        libc::SYS_munmap,
        libc::SYS_brk,
        // std takes down the main thread's signal stack on the way out; then the exit.
        libc::SYS_sigaltstack,
        libc::SYS_exit_group,
    ] {
        allow(nr, vec![]);
    }
    // Seen, with these arguments only.
    // Host sockets of NAT flows (TCP, UDP, ICMP ping sockets) and of port forwards, only in
    // the two families the NAT uses: no netlink, packet or unix sockets.
    allow(
        libc::SYS_socket,
        vec![
            arg_eq(0, libc::AF_INET as u64)?,
            arg_eq(0, libc::AF_INET6 as u64)?,
        ],
    );
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
    // truncate or append flags).
    allow(
        libc::SYS_openat,
        vec![arg_without(
            2,
            (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u64,
        )?],
    );
    // Never executable memory, so a hijacked process cannot map code of its own.
    let no_exec = arg_without(2, libc::PROT_EXEC as u64)?;
    allow(libc::SYS_mmap, vec![no_exec.clone()]);

    // Not seen, allowed on purpose, with any arguments.
    for nr in [
        // epoll_wait's successor, the only one on architectures without epoll_wait (aarch64).
        libc::SYS_epoll_pwait,
        // glibc's realloc and free of large blocks (mremap, madvise).
        libc::SYS_mremap,
        libc::SYS_madvise,
        // Time is read through the vDSO, which falls back to the system call when the clock
        // source cannot be read from user space (some virtual machines).
        libc::SYS_clock_gettime,
        // The kernel's own after a signal or a stop (SIGSTOP, ptrace) of the process.
        libc::SYS_rt_sigreturn,
        libc::SYS_restart_syscall,
        // A panic aborts (panic = "abort"): abort() unblocks and raises SIGABRT at its own
        // process only (tgkill, below), so it dies of SIGABRT as it should, not of a
        // confusing fallback.
        libc::SYS_exit,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigaction,
        libc::SYS_getpid,
        libc::SYS_gettid,
    ] {
        allow(nr, vec![]);
    }
    // Not seen, with these arguments only.
    // mprotect when a glibc arena grows; again never executable memory.
    allow(libc::SYS_mprotect, vec![no_exec]);
    // abort()'s SIGABRT, at this process only.
    allow(
        libc::SYS_tgkill,
        vec![arg_eq(0, std::process::id().into())?],
    );
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    #[test]
    fn seccomp_library_matches_the_locked_version() {
        let lock = include_str!("../../Cargo.lock");
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
}

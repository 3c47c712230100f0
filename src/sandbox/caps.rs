//! Step 6 of `--enable-sandbox` (the numbered list in `mod.rs`): every capability dropped from
//! every set, except CAP_NET_BIND_SERVICE when we had it at the start. capget/capset are
//! raw system calls here, with the kernel's own structs (linux/capability.h).

use super::{failed, SandboxError};
use nix::errno::Errno;

/// Capability number of CAP_NET_BIND_SERVICE (linux/capability.h).
pub(super) const CAP_NET_BIND_SERVICE: u32 = 10;
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

pub(super) fn has_effective_capability(cap: u32) -> Result<bool, SandboxError> {
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
pub(super) fn drop_capabilities(keep_bind_service: bool) -> Result<(), SandboxError> {
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

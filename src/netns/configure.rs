//! `--configure`: what slirp4netns does to the guest's interface from inside the network
//! namespace, done by the netns child (`child.rs`) right after it opened the tap: lo up;
//! on the tap MAC, MTU, address, netmask, up; then the default route. All through ioctls
//! on an AF_INET socket of the namespace, with the kernel's own structs (`struct ifreq`,
//! `struct rtentry`). The configuration is checked and converted before the fork
//! ([`PreparedConfig`]), so the child only makes system calls.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};

use libc::c_char;
use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use super::{ConfigStep, IfName, SetupError, TapConfig};

/// The ioctls that configure an interface; libc has the request numbers, nix the typed
/// wrappers. All are read-write because the kernel copies the ifreq back for some of them.
mod ioctl {
    nix::ioctl_readwrite_bad!(siocgifflags, libc::SIOCGIFFLAGS, libc::ifreq);
    nix::ioctl_readwrite_bad!(siocsifflags, libc::SIOCSIFFLAGS, libc::ifreq);
    nix::ioctl_readwrite_bad!(siocsifhwaddr, libc::SIOCSIFHWADDR, libc::ifreq);
    nix::ioctl_readwrite_bad!(siocsifmtu, libc::SIOCSIFMTU, libc::ifreq);
    nix::ioctl_readwrite_bad!(siocsifaddr, libc::SIOCSIFADDR, libc::ifreq);
    nix::ioctl_readwrite_bad!(siocsifnetmask, libc::SIOCSIFNETMASK, libc::ifreq);
    nix::ioctl_readwrite_bad!(siocaddrt, libc::SIOCADDRT, super::RtEntry);
}

/// `struct rtentry` from <linux/route.h>; glibc's libc crate does not export it.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// A `struct sockaddr_in` (port 0) laid out in a `struct sockaddr`, as SIOCSIFADDR and
/// SIOCADDRT take it.
fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let mut sa_data = [0 as c_char; 14];
    // sa_data[0..2] is sin_port, [2..6] is sin_addr in network order.
    for (dst, src) in sa_data[2..6].iter_mut().zip(addr.octets()) {
        *dst = src as c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

fn sockaddr_ether(mac: [u8; 6]) -> libc::sockaddr {
    let mut sa_data = [0 as c_char; 14];
    for (dst, src) in sa_data.iter_mut().zip(mac) {
        *dst = src as c_char;
    }
    libc::sockaddr {
        sa_family: libc::ARPHRD_ETHER,
        sa_data,
    }
}

fn netmask(prefix_len: u8) -> Result<Ipv4Addr, SetupError> {
    if prefix_len > 32 {
        return Err(SetupError::InvalidConfig(format!(
            "prefix length {prefix_len} is larger than 32"
        )));
    }
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    Ok(Ipv4Addr::from(bits))
}

fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// `TapConfig` checked and converted to what the ioctls take, before the fork.
pub(super) struct PreparedConfig {
    pub(super) source: TapConfig,
    mtu: libc::c_int,
    netmask: Ipv4Addr,
}

impl PreparedConfig {
    pub(super) fn new(config: &TapConfig) -> Result<Self, SetupError> {
        let mtu = libc::c_int::try_from(config.mtu)
            .map_err(|_| SetupError::InvalidConfig(format!("MTU {} is too large", config.mtu)))?;
        Ok(PreparedConfig {
            source: config.clone(),
            mtu,
            netmask: netmask(config.prefix_len)?,
        })
    }
}

pub(super) fn describe_step(step: ConfigStep, tap: &str, config: Option<&TapConfig>) -> String {
    let Some(c) = config else {
        return format!("{step:?} on {tap}");
    };
    match step {
        ConfigStep::Socket => "socket(AF_INET, SOCK_DGRAM) in the target netns".to_owned(),
        ConfigStep::LoopbackGetFlags => "SIOCGIFFLAGS(lo)".to_owned(),
        ConfigStep::LoopbackUp => "SIOCSIFFLAGS(lo, IFF_UP)".to_owned(),
        ConfigStep::TapMac => format!(
            "SIOCSIFHWADDR({tap}, {})",
            c.mac.map_or_else(String::new, format_mac)
        ),
        ConfigStep::TapMtu => format!("SIOCSIFMTU({tap}, {})", c.mtu),
        ConfigStep::TapAddress => format!("SIOCSIFADDR({tap}, {})", c.address),
        ConfigStep::TapNetmask => match netmask(c.prefix_len) {
            Ok(mask) => format!("SIOCSIFNETMASK({tap}, {mask})"),
            Err(_) => format!("SIOCSIFNETMASK({tap}, /{})", c.prefix_len),
        },
        ConfigStep::TapGetFlags => format!("SIOCGIFFLAGS({tap})"),
        ConfigStep::TapUp => format!("SIOCSIFFLAGS({tap}, IFF_UP)"),
        ConfigStep::DefaultRoute => format!("SIOCADDRT(default via {} dev {tap})", c.gateway),
    }
}

/// What `slirp4netns --configure` does, in the same order: lo up; on the tap MAC (only
/// while the link is still down), MTU, address, netmask, up; then the default route.
pub(super) fn configure(tap: &IfName, config: &PreparedConfig) -> Result<(), (ConfigStep, Errno)> {
    let c = &config.source;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| (ConfigStep::Socket, e))?;
    let sock = sock.as_raw_fd();

    bring_up(
        sock,
        &IfName::loopback(),
        ConfigStep::LoopbackGetFlags,
        ConfigStep::LoopbackUp,
    )?;

    if let Some(mac) = c.mac {
        let mut ifr = tap.ifreq();
        ifr.ifr_ifru.ifru_hwaddr = sockaddr_ether(mac);
        // SAFETY: `ifr` is a valid ifreq that lives across the call.
        unsafe { ioctl::siocsifhwaddr(sock, &mut ifr) }.map_err(|e| (ConfigStep::TapMac, e))?;
    }

    let mut ifr = tap.ifreq();
    ifr.ifr_ifru.ifru_mtu = config.mtu;
    // SAFETY: `ifr` is a valid ifreq that lives across the call.
    unsafe { ioctl::siocsifmtu(sock, &mut ifr) }.map_err(|e| (ConfigStep::TapMtu, e))?;

    let mut ifr = tap.ifreq();
    ifr.ifr_ifru.ifru_addr = sockaddr_v4(c.address);
    // SAFETY: `ifr` is a valid ifreq that lives across the call.
    unsafe { ioctl::siocsifaddr(sock, &mut ifr) }.map_err(|e| (ConfigStep::TapAddress, e))?;

    let mut ifr = tap.ifreq();
    ifr.ifr_ifru.ifru_netmask = sockaddr_v4(config.netmask);
    // SAFETY: `ifr` is a valid ifreq that lives across the call.
    unsafe { ioctl::siocsifnetmask(sock, &mut ifr) }.map_err(|e| (ConfigStep::TapNetmask, e))?;

    bring_up(sock, tap, ConfigStep::TapGetFlags, ConfigStep::TapUp)?;

    let mut dev = tap.raw;
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_v4(c.gateway),
        rt_genmask: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: `route` is a valid rtentry whose `rt_dev` points at `dev`, a NUL-terminated
    // name that outlives the call; the kernel only reads both.
    unsafe { ioctl::siocaddrt(sock, &mut route) }.map_err(|e| (ConfigStep::DefaultRoute, e))?;
    Ok(())
}

/// Sets IFF_UP, keeping the interface's other flags.
fn bring_up(
    sock: RawFd,
    name: &IfName,
    get_step: ConfigStep,
    set_step: ConfigStep,
) -> Result<(), (ConfigStep, Errno)> {
    let mut ifr = name.ifreq();
    // SAFETY: `ifr` is a valid ifreq that lives across the call; the kernel fills ifru_flags.
    unsafe { ioctl::siocgifflags(sock, &mut ifr) }.map_err(|e| (get_step, e))?;
    // SAFETY: SIOCGIFFLAGS just wrote ifru_flags; any c_short is valid.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: `ifr` is a valid ifreq that lives across the call.
    unsafe { ioctl::siocsifflags(sock, &mut ifr) }.map_err(|e| (set_step, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmask_from_prefix() {
        assert_eq!(netmask(0).unwrap(), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(1).unwrap(), Ipv4Addr::new(128, 0, 0, 0));
        assert_eq!(netmask(24).unwrap(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32).unwrap(), Ipv4Addr::new(255, 255, 255, 255));
        assert!(netmask(33).is_err());
    }

    #[test]
    fn sockaddr_v4_is_a_sockaddr_in() {
        let sa = sockaddr_v4(Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(i32::from(sa.sa_family), libc::AF_INET);
        let data: Vec<u8> = sa.sa_data.iter().map(|c| *c as u8).collect();
        assert_eq!(&data[..6], &[0, 0, 10, 0, 2, 100]);
        assert!(data[6..].iter().all(|b| *b == 0));
    }

    #[test]
    fn sockaddr_ether_holds_the_mac() {
        let sa = sockaddr_ether([0x02, 0x42, 0xac, 0x11, 0x00, 0xff]);
        assert_eq!(sa.sa_family, libc::ARPHRD_ETHER);
        let data: Vec<u8> = sa.sa_data.iter().map(|c| *c as u8).collect();
        assert_eq!(&data[..6], &[0x02, 0x42, 0xac, 0x11, 0x00, 0xff]);
    }

    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    #[test]
    fn rtentry_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        assert_eq!(std::mem::offset_of!(RtEntry, rt_dst), 8);
        assert_eq!(std::mem::offset_of!(RtEntry, rt_flags), 56);
        assert_eq!(std::mem::offset_of!(RtEntry, rt_dev), 88);
    }

    #[test]
    fn oversized_mtu_is_a_config_error() {
        let err = PreparedConfig::new(&TapConfig {
            mtu: u32::MAX,
            address: Ipv4Addr::new(10, 0, 2, 100),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            mac: None,
        })
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "invalid tap configuration: MTU 4294967295 is too large"
        );
    }
}

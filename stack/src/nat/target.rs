//! Where a flow goes: the NAT's address rules, as passt's `fwd.c` holds them. Pure functions
//! of the configuration (and the DNS forwarder's current upstream): which host address a
//! guest's connection or datagram is sent to (or how the network refuses it), which source a
//! host socket binds, and how a host peer appears to the guest. The stack decides *when*
//! (admission, limits, timers); these rules decide *where*. IPv4 and IPv6 side by side.
//!
//! The addresses are slirp4netns's: the gateway (network+2, prefix::2) is host loopback
//! unless `--disable-host-loopback`; the DNS forwarder (network+3, prefix::3) forwards port
//! 53 to the host's resolver unless `--disable-dns`; the rest of the virtual network has no
//! one to reach on the host side.

use super::Refusal;
use crate::config::{Config, VirtualNetwork};
use crate::io::SourceAddr;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The inputs of the address rules: the parts of [`Config`] they read, and the nameserver
/// the DNS forwarder asks at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub network: VirtualNetwork,
    pub enable_ipv6: bool,
    pub disable_host_loopback: bool,
    pub disable_dns: bool,
    /// The resolver the DNS forwarder's port 53 goes to (`None`: resolv.conf had none).
    pub dns_upstream: Option<IpAddr>,
}

impl Rules {
    pub fn new(config: &Config, dns_upstream: Option<IpAddr>) -> Rules {
        Rules {
            network: config.network,
            enable_ipv6: config.enable_ipv6,
            disable_host_loopback: config.disable_host_loopback,
            disable_dns: config.disable_dns,
            dns_upstream,
        }
    }

    /// Where a guest connection to `dst:port` goes on the host, or how it is refused.
    pub fn host_target(&self, dst: IpAddr, port: u16) -> Result<SocketAddr, Refusal> {
        match dst {
            IpAddr::V4(dst) => self.host_target_v4(dst, port),
            IpAddr::V6(dst) => self.host_target_v6(dst, port),
        }
    }

    fn host_target_v4(&self, dst: Ipv4Addr, port: u16) -> Result<SocketAddr, Refusal> {
        let network = self.network;
        let target = |addr: Ipv4Addr| Ok(SocketAddr::new(IpAddr::V4(addr), port));
        if dst == network.gateway() {
            if self.disable_host_loopback {
                return Err(Refusal::NetUnreachable);
            }
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
        if dst == network.dns() {
            if self.disable_dns {
                return target(dst);
            }
            // The DNS service is a forwarder: TCP and UDP port 53 are NATed to the host's
            // resolver (which may well be on host loopback, e.g. 127.0.0.53), so big
            // answers, TCP fallback and several queries per connection just work.
            return self.dns_forward(port);
        }
        // The subnet's broadcast address is inside the network too, but no ICMP error may
        // answer a datagram sent to a broadcast address (RFC 1122 3.2.2): dropped silently,
        // as 255.255.255.255 is.
        if dst == network.broadcast() {
            return Err(Refusal::Silent);
        }
        if network.contains(dst) {
            return Err(Refusal::HostUnreachable);
        }
        if dst.is_unspecified() || dst.is_broadcast() || dst.is_multicast() || dst.is_loopback() {
            return Err(Refusal::Silent);
        }
        target(dst)
    }

    /// The IPv6 twin of `host_target_v4`, on the `--cidr6` prefix.
    fn host_target_v6(&self, dst: Ipv6Addr, port: u16) -> Result<SocketAddr, Refusal> {
        let network = self.network;
        if dst == network.gateway6() {
            if self.disable_host_loopback {
                return Err(Refusal::NetUnreachable);
            }
            return Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port));
        }
        if dst == network.dns6() && !self.disable_dns {
            return self.dns_forward(port);
        }
        if network.contains6(dst) && dst != network.dns6() {
            return Err(Refusal::HostUnreachable);
        }
        if dst.is_unspecified()
            || dst.is_loopback()
            || dst.is_multicast()
            || is_link_local(dst)
            || dst.to_ipv4_mapped().is_some()
        {
            return Err(Refusal::Silent);
        }
        Ok(SocketAddr::new(IpAddr::V6(dst), port))
    }

    /// The DNS forwarder's port 53 goes to the upstream resolver; its other ports, or any
    /// port without a resolver, are refused with a reset.
    fn dns_forward(&self, port: u16) -> Result<SocketAddr, Refusal> {
        match self.dns_upstream {
            Some(upstream) if port == 53 => Ok(SocketAddr::new(upstream, 53)),
            _ => Err(Refusal::Reset),
        }
    }

    /// Is `dst` the virtual DNS server (the forwarder at network+3 or prefix::3)?
    pub fn is_dns_service(&self, dst: IpAddr) -> bool {
        !self.disable_dns
            && match dst {
                IpAddr::V4(dst) => dst == self.network.dns(),
                IpAddr::V6(dst) => self.enable_ipv6 && dst == self.network.dns6(),
            }
    }

    /// The source address of a host socket the guest's packets to `dst` leave by towards
    /// `target`: the outbound address (`--outbound-addr`, loopback targets included, as in
    /// slirp4netns), except for the DNS forwarder's queries to a resolver on host loopback,
    /// which a local stub resolver answers only from a loopback source.
    pub fn source_for(&self, dst: IpAddr, target: SocketAddr) -> SourceAddr {
        if self.is_dns_service(dst) && target.ip().is_loopback() {
            SourceAddr::Kernel
        } else {
            SourceAddr::Outbound
        }
    }

    /// How the guest (at `guest`, which picks the family) sees a host client: loopback
    /// clients (and any the guest could not route back to, such as addresses inside the
    /// virtual network) appear as the gateway, IPv4-mapped IPv6 clients as their IPv4
    /// address.
    pub fn guest_visible(&self, peer: SocketAddr, guest: IpAddr) -> SocketAddr {
        let ip = match guest {
            IpAddr::V4(_) => IpAddr::V4(self.guest_visible_v4(peer.ip())),
            IpAddr::V6(_) => IpAddr::V6(self.guest_visible_v6(peer.ip())),
        };
        SocketAddr::new(ip, peer.port())
    }

    fn guest_visible_v4(&self, peer: IpAddr) -> Ipv4Addr {
        let network = self.network;
        let ip = match peer {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::LOCALHOST),
        };
        if ip.is_loopback() || ip.is_unspecified() || network.contains(ip) {
            network.gateway()
        } else {
            ip
        }
    }

    /// IPv6 clients the guest can route back to keep their address; loopback and IPv4
    /// clients appear as the gateway (fd00::2 by default).
    fn guest_visible_v6(&self, peer: IpAddr) -> Ipv6Addr {
        match peer {
            IpAddr::V6(v6)
                if !v6.is_loopback()
                    && !v6.is_unspecified()
                    && v6.to_ipv4_mapped().is_none()
                    && !self.network.contains6(v6)
                    && !is_link_local(v6) =>
            {
                v6
            }
            _ => self.network.gateway6(),
        }
    }
}

/// fe80::/10.
pub fn is_link_local(addr: Ipv6Addr) -> bool {
    (addr.segments()[0] & 0xffc0) == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Ipv6Prefix;

    /// The defaults (10.0.2.0/24, fd00::/64, IPv6 on) with a stub resolver on host loopback.
    fn base() -> Rules {
        Rules {
            network: VirtualNetwork::default(),
            enable_ipv6: true,
            disable_host_loopback: false,
            disable_dns: false,
            dns_upstream: Some(ip("127.0.0.53")),
        }
    }

    /// `base()` with one option changed.
    fn with(change: impl FnOnce(&mut Rules)) -> Rules {
        let mut rules = base();
        change(&mut rules);
        rules
    }

    fn no_loopback() -> Rules {
        with(|r| r.disable_host_loopback = true)
    }

    fn no_dns() -> Rules {
        with(|r| r.disable_dns = true)
    }

    fn no_upstream() -> Rules {
        with(|r| r.dns_upstream = None)
    }

    fn remote_upstream() -> Rules {
        with(|r| r.dns_upstream = Some(ip("192.0.2.53")))
    }

    fn no_ipv6() -> Rules {
        with(|r| r.enable_ipv6 = false)
    }

    /// `--cidr 10.10.0.0/16 --cidr6 2001:db8:1::/64`.
    fn custom() -> Rules {
        let prefix = Ipv6Prefix::parse("2001:db8:1::/64").unwrap();
        Rules {
            network: VirtualNetwork::parse("10.10.0.0/16")
                .unwrap()
                .with_ipv6_prefix(prefix),
            ..base()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn sock(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn host_target_by_address_class() {
        use Refusal::*;
        type Row = (
            &'static str,
            Rules,
            &'static str,
            u16,
            Result<SocketAddr, Refusal>,
        );
        let ok = |s: &str| Ok(sock(s));
        #[rustfmt::skip]
        let rows: &[Row] = &[
            // IPv4
            ("gateway is host loopback", base(), "10.0.2.2", 80, ok("127.0.0.1:80")),
            ("gateway, --disable-host-loopback", no_loopback(), "10.0.2.2", 80, Err(NetUnreachable)),
            ("DNS port 53 to the upstream", base(), "10.0.2.3", 53, ok("127.0.0.53:53")),
            ("DNS port 53 to a remote upstream", remote_upstream(), "10.0.2.3", 53, ok("192.0.2.53:53")),
            ("DNS, another port", base(), "10.0.2.3", 80, Err(Reset)),
            ("DNS without upstream", no_upstream(), "10.0.2.3", 53, Err(Reset)),
            ("DNS, --disable-dns: the address itself", no_dns(), "10.0.2.3", 53, ok("10.0.2.3:53")),
            ("guest's own address", base(), "10.0.2.100", 80, Err(HostUnreachable)),
            ("other address in the subnet", base(), "10.0.2.50", 80, Err(HostUnreachable)),
            ("network address", base(), "10.0.2.0", 80, Err(HostUnreachable)),
            ("subnet broadcast (no ICMP error for it)", base(), "10.0.2.255", 80, Err(Silent)),
            ("limited broadcast", base(), "255.255.255.255", 80, Err(Silent)),
            ("multicast", base(), "224.0.0.251", 5353, Err(Silent)),
            ("loopback", base(), "127.0.0.1", 80, Err(Silent)),
            ("loopback, --disable-host-loopback", no_loopback(), "127.0.0.1", 80, Err(Silent)),
            ("unspecified", base(), "0.0.0.0", 80, Err(Silent)),
            ("link-local goes to the host", base(), "169.254.1.1", 80, ok("169.254.1.1:80")),
            ("remote unicast", base(), "192.0.2.1", 443, ok("192.0.2.1:443")),
            ("remote unicast, --disable-host-loopback", no_loopback(), "192.0.2.1", 443, ok("192.0.2.1:443")),
            ("--cidr: its gateway", custom(), "10.10.0.2", 80, ok("127.0.0.1:80")),
            ("--cidr: its DNS", custom(), "10.10.0.3", 53, ok("127.0.0.53:53")),
            ("--cidr: its guest", custom(), "10.10.0.100", 80, Err(HostUnreachable)),
            ("--cidr: its broadcast", custom(), "10.10.255.255", 80, Err(Silent)),
            ("--cidr: the default's broadcast is remote", custom(), "10.0.2.255", 80, ok("10.0.2.255:80")),
            ("--cidr: inside the /16", custom(), "10.10.5.5", 80, Err(HostUnreachable)),
            ("--cidr: default gateway is remote", custom(), "10.0.2.2", 80, ok("10.0.2.2:80")),
            // IPv6
            ("gateway6 is host loopback", base(), "fd00::2", 80, ok("[::1]:80")),
            ("gateway6, --disable-host-loopback", no_loopback(), "fd00::2", 80, Err(NetUnreachable)),
            ("DNS6 port 53 to the upstream", base(), "fd00::3", 53, ok("127.0.0.53:53")),
            ("DNS6, another port", base(), "fd00::3", 80, Err(Reset)),
            ("DNS6 without upstream", no_upstream(), "fd00::3", 53, Err(Reset)),
            ("DNS6, --disable-dns: the address itself", no_dns(), "fd00::3", 53, ok("[fd00::3]:53")),
            ("DNS6 without --enable-ipv6 (not checked here)", no_ipv6(), "fd00::3", 53, ok("127.0.0.53:53")),
            ("guest's own address", base(), "fd00::5054:ff:fe12:3456", 80, Err(HostUnreachable)),
            ("other address in the prefix", base(), "fd00::1", 80, Err(HostUnreachable)),
            ("prefix's network address", base(), "fd00::", 80, Err(HostUnreachable)),
            ("multicast", base(), "ff02::1", 80, Err(Silent)),
            ("loopback", base(), "::1", 80, Err(Silent)),
            ("unspecified", base(), "::", 80, Err(Silent)),
            ("link-local", base(), "fe80::1", 80, Err(Silent)),
            ("gateway's link-local", base(), "fe80::2", 80, Err(Silent)),
            ("IPv4-mapped remote", base(), "::ffff:192.0.2.1", 80, Err(Silent)),
            ("IPv4-mapped gateway", base(), "::ffff:10.0.2.2", 80, Err(Silent)),
            ("remote unicast", base(), "2001:db8::1", 443, ok("[2001:db8::1]:443")),
            ("--cidr6: its gateway", custom(), "2001:db8:1::2", 80, ok("[::1]:80")),
            ("--cidr6: its DNS", custom(), "2001:db8:1::3", 53, ok("127.0.0.53:53")),
            ("--cidr6: inside the prefix", custom(), "2001:db8:1::100", 80, Err(HostUnreachable)),
            ("--cidr6: default gateway is remote", custom(), "fd00::2", 80, ok("[fd00::2]:80")),
        ];
        for (name, rules, dst, port, expected) in rows {
            assert_eq!(
                rules.host_target(ip(dst), *port),
                *expected,
                "{name}: {dst}"
            );
        }
    }

    #[test]
    fn is_dns_service_by_address_class() {
        #[rustfmt::skip]
        let rows: &[(&str, Rules, &str, bool)] = &[
            ("DNS", base(), "10.0.2.3", true),
            ("DNS, --disable-dns", no_dns(), "10.0.2.3", false),
            ("DNS without upstream", no_upstream(), "10.0.2.3", true),
            ("gateway", base(), "10.0.2.2", false),
            ("guest's own address", base(), "10.0.2.100", false),
            ("the upstream itself", base(), "127.0.0.53", false),
            ("broadcast", base(), "255.255.255.255", false),
            ("remote unicast", base(), "192.0.2.1", false),
            ("--cidr: its DNS", custom(), "10.10.0.3", true),
            ("--cidr: default DNS", custom(), "10.0.2.3", false),
            ("DNS6", base(), "fd00::3", true),
            ("DNS6 without --enable-ipv6", no_ipv6(), "fd00::3", false),
            ("DNS6, --disable-dns", no_dns(), "fd00::3", false),
            ("DNS6's link-local", base(), "fe80::3", false),
            ("IPv4-mapped DNS", base(), "::ffff:10.0.2.3", false),
            ("gateway6", base(), "fd00::2", false),
            ("--cidr6: its DNS", custom(), "2001:db8:1::3", true),
            ("--cidr6: default DNS", custom(), "fd00::3", false),
        ];
        for (name, rules, dst, expected) in rows {
            assert_eq!(rules.is_dns_service(ip(dst)), *expected, "{name}: {dst}");
        }
    }

    #[test]
    fn source_for_by_address_class() {
        use SourceAddr::*;
        #[rustfmt::skip]
        let rows: &[(&str, Rules, &str, &str, SourceAddr)] = &[
            ("DNS to a loopback resolver", base(), "10.0.2.3", "127.0.0.53:53", Kernel),
            ("DNS to a remote resolver: --outbound-addr", remote_upstream(), "10.0.2.3", "192.0.2.53:53", Outbound),
            ("DNS, --disable-dns", no_dns(), "10.0.2.3", "10.0.2.3:53", Outbound),
            ("gateway (host loopback): --outbound-addr too", base(), "10.0.2.2", "127.0.0.1:80", Outbound),
            ("remote unicast", base(), "192.0.2.1", "192.0.2.1:443", Outbound),
            ("--cidr: its DNS", custom(), "10.10.0.3", "127.0.0.53:53", Kernel),
            ("DNS6 to a loopback resolver", base(), "fd00::3", "127.0.0.53:53", Kernel),
            ("DNS6 to an IPv6 loopback resolver", base(), "fd00::3", "[::1]:53", Kernel),
            ("DNS6 without --enable-ipv6", no_ipv6(), "fd00::3", "127.0.0.53:53", Outbound),
            ("gateway6 (host loopback)", base(), "fd00::2", "[::1]:80", Outbound),
            ("remote unicast", base(), "2001:db8::1", "[2001:db8::1]:443", Outbound),
            ("--cidr6: its DNS", custom(), "2001:db8:1::3", "[::1]:53", Kernel),
        ];
        for (name, rules, dst, target, expected) in rows {
            assert_eq!(
                rules.source_for(ip(dst), sock(target)),
                *expected,
                "{name}: {dst}"
            );
        }
    }

    #[test]
    fn guest_visible_by_address_class() {
        let (v4, v6) = (ip("10.0.2.100"), ip("fd00::100"));
        #[rustfmt::skip]
        let rows: &[(&str, Rules, &str, IpAddr, &str)] = &[
            // An IPv4 guest
            ("loopback client", base(), "127.0.0.1:5000", v4, "10.0.2.2:5000"),
            ("loopback, --disable-host-loopback", no_loopback(), "127.0.0.1:5000", v4, "10.0.2.2:5000"),
            ("other loopback", base(), "127.1.2.3:5000", v4, "10.0.2.2:5000"),
            ("unspecified", base(), "0.0.0.0:5000", v4, "10.0.2.2:5000"),
            ("guest's own address", base(), "10.0.2.100:5000", v4, "10.0.2.2:5000"),
            ("gateway", base(), "10.0.2.2:5000", v4, "10.0.2.2:5000"),
            ("DNS", base(), "10.0.2.3:5000", v4, "10.0.2.2:5000"),
            ("other address in the subnet", base(), "10.0.2.50:5000", v4, "10.0.2.2:5000"),
            ("subnet broadcast", base(), "10.0.2.255:5000", v4, "10.0.2.2:5000"),
            ("limited broadcast kept", base(), "255.255.255.255:5000", v4, "255.255.255.255:5000"),
            ("multicast kept", base(), "224.0.0.1:5000", v4, "224.0.0.1:5000"),
            ("link-local kept", base(), "169.254.1.1:5000", v4, "169.254.1.1:5000"),
            ("remote unicast kept", base(), "192.0.2.1:5000", v4, "192.0.2.1:5000"),
            ("IPv4-mapped remote", base(), "[::ffff:192.0.2.1]:5000", v4, "192.0.2.1:5000"),
            ("IPv4-mapped loopback", base(), "[::ffff:127.0.0.1]:5000", v4, "10.0.2.2:5000"),
            ("IPv6 loopback", base(), "[::1]:5000", v4, "10.0.2.2:5000"),
            ("IPv6 remote", base(), "[2001:db8::1]:5000", v4, "10.0.2.2:5000"),
            ("--cidr: loopback", custom(), "127.0.0.1:5000", v4, "10.10.0.2:5000"),
            ("--cidr: inside the /16", custom(), "10.10.9.9:5000", v4, "10.10.0.2:5000"),
            ("--cidr: default subnet is remote", custom(), "10.0.2.2:5000", v4, "10.0.2.2:5000"),
            // An IPv6 guest
            ("loopback client", base(), "[::1]:5000", v6, "[fd00::2]:5000"),
            ("loopback, --disable-host-loopback", no_loopback(), "[::1]:5000", v6, "[fd00::2]:5000"),
            ("unspecified", base(), "[::]:5000", v6, "[fd00::2]:5000"),
            ("guest's own address", base(), "[fd00::100]:5000", v6, "[fd00::2]:5000"),
            ("other address in the prefix", base(), "[fd00::1]:5000", v6, "[fd00::2]:5000"),
            ("link-local", base(), "[fe80::1]:5000", v6, "[fd00::2]:5000"),
            ("IPv4-mapped", base(), "[::ffff:192.0.2.1]:5000", v6, "[fd00::2]:5000"),
            ("IPv4 client", base(), "192.0.2.1:5000", v6, "[fd00::2]:5000"),
            ("IPv4 loopback", base(), "127.0.0.1:5000", v6, "[fd00::2]:5000"),
            ("multicast kept", base(), "[ff02::1]:5000", v6, "[ff02::1]:5000"),
            ("remote unicast kept", base(), "[2001:db8::1]:5000", v6, "[2001:db8::1]:5000"),
            ("--cidr6: loopback", custom(), "[::1]:5000", v6, "[2001:db8:1::2]:5000"),
            ("--cidr6: inside the prefix", custom(), "[2001:db8:1::9]:5000", v6, "[2001:db8:1::2]:5000"),
            ("--cidr6: default prefix is remote", custom(), "[fd00::5]:5000", v6, "[fd00::5]:5000"),
        ];
        for (name, rules, peer, guest, expected) in rows {
            assert_eq!(
                rules.guest_visible(sock(peer), *guest),
                sock(expected),
                "{name}: {peer}"
            );
        }
    }
}

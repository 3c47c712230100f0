//! IPv6 (`--enable-ipv6`): the guest's frame builders for neighbour discovery, ICMPv6, TCP
//! and UDP over IPv6 (what the stack sends back is read by [`super::parse()`], and
//! [`super::GuestTcp`] and [`super::Scenario`] serve both families).
//!
//! The guest's addresses are what a Linux guest autoconfigures from its MAC (EUI-64):
//! [`GUEST_MAC`](super::GUEST_MAC) 02:00:00:00:00:01 gives fe80::ff:fe00:1 and
//! fd00::ff:fe00:1 (or the `--cidr6` prefix's ::ff:fe00:1).

use super::frames::{checksums, Guest, TcpSegment, UdpDatagram};
use core::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use smoltcp::wire::{
    EthernetAddress, Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol, IpRepr, NdiscRepr,
    RawHardwareAddress,
};

/// ff02::1, every node on the link (where router advertisements go).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// ff02::2, every router on the link (where router solicitations go).
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// What the guest's kernel puts in the hop limit of ordinary packets.
const GUEST_HOP_LIMIT: u8 = 64;
/// Neighbour discovery messages must carry 255 (RFC 4861), or receivers drop them.
pub const NDP_HOP_LIMIT: u8 = 255;
/// The RDNSS option's type (RFC 8106).
pub const RDNSS_TYPE: u8 = 25;

/// The socket address `ip`:`port` (no flow label, no scope).
pub fn v6(ip: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ip, port, 0, 0)
}

/// Host port `port` on `[::1]`, where the gateway's ports lead with host loopback on.
pub fn host_loopback6(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)
}

/// The Ethernet address of an IPv6 multicast group: 33:33 and its last 32 bits.
pub fn multicast_mac(group: Ipv6Addr) -> EthernetAddress {
    let o = group.octets();
    EthernetAddress([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The solicited-node multicast group of `addr` (ff02::1:ffXX:XXXX), where neighbour
/// solicitations for it go.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// The modified EUI-64 interface identifier of `mac` (RFC 4291 appendix A).
fn interface_id(mac: EthernetAddress) -> [u8; 8] {
    let m = mac.0;
    [m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]
}

fn with_interface_id(prefix: Ipv6Addr, mac: EthernetAddress) -> Ipv6Addr {
    let mut octets = prefix.octets();
    octets[8..].copy_from_slice(&interface_id(mac));
    Ipv6Addr::from(octets)
}

impl Guest {
    /// The guest's SLAAC address in its prefix (fd00::/64 by default).
    pub fn ipv6_addr(&self) -> Ipv6Addr {
        with_interface_id(self.ipv6_prefix, self.mac)
    }

    /// The guest's link-local address (fe80::/64).
    pub fn link_local(&self) -> Ipv6Addr {
        with_interface_id(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), self.mac)
    }

    /// An IPv6 frame from `src` to `dst` (Ethernet destination `dst_mac`); `fill` writes
    /// the payload given the pseudo-header addresses.
    #[allow(clippy::too_many_arguments)]
    pub fn ipv6_frame(
        &self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        dst_mac: EthernetAddress,
        protocol: IpProtocol,
        hop_limit: u8,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8], &IpAddress, &IpAddress),
    ) -> Vec<u8> {
        let ip = IpRepr::new(src.into(), dst.into(), protocol, payload_len, hop_limit);
        self.ip_frame(ip, dst_mac, fill)
    }

    /// An ICMPv6 message from `src` to `dst`, hop limit 255 (fine for NDP and others).
    pub fn icmpv6(
        &self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        dst_mac: EthernetAddress,
        message: &Icmpv6Repr<'_>,
    ) -> Vec<u8> {
        let len = message.buffer_len();
        self.ipv6_frame(
            src,
            dst,
            dst_mac,
            IpProtocol::Icmpv6,
            NDP_HOP_LIMIT,
            len,
            |buf, _, _| {
                message.emit(
                    &src,
                    &dst,
                    &mut Icmpv6Packet::new_unchecked(buf),
                    &checksums(),
                )
            },
        )
    }

    /// A router solicitation from the link-local address to ff02::2, with the guest's
    /// MAC as source link-layer address option (as Linux sends it at link up).
    pub fn router_solicit(&self) -> Vec<u8> {
        let message = Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit {
            lladdr: Some(RawHardwareAddress::from(self.mac)),
        });
        self.icmpv6(
            self.link_local(),
            ALL_ROUTERS,
            multicast_mac(ALL_ROUTERS),
            &message,
        )
    }

    /// "Who has `target`?" from `src` to the target's solicited-node group. From `::`
    /// (a duplicate address detection probe) without link-layer address option, as RFC
    /// 4861 requires.
    pub fn neighbor_solicit(&self, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
        let message = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: (!src.is_unspecified()).then(|| RawHardwareAddress::from(self.mac)),
        });
        let group = solicited_node(target);
        self.icmpv6(src, group, multicast_mac(group), &message)
    }

    /// An echo request from the guest's global address to `dst`, via the gateway's MAC.
    pub fn icmpv6_echo(&self, dst: Ipv6Addr, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
        let message = Icmpv6Repr::EchoRequest {
            ident,
            seq_no,
            data,
        };
        self.icmpv6(self.ipv6_addr(), dst, self.gateway_mac, &message)
    }

    /// UDP from the guest's global address.
    pub fn udp6(&self, src_port: u16, dst: SocketAddrV6, payload: &[u8]) -> Vec<u8> {
        let from = SocketAddrV6::new(self.ipv6_addr(), src_port, 0, 0);
        self.udp6_from(from, dst, self.gateway_mac, GUEST_HOP_LIMIT, payload)
    }

    /// UDP from any address of the guest (its link-local one, say) to `dst` at `dst_mac`
    /// (a multicast group's, say), with `hop_limit`.
    pub fn udp6_from(
        &self,
        src: SocketAddrV6,
        dst: SocketAddrV6,
        dst_mac: EthernetAddress,
        hop_limit: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let datagram = UdpDatagram {
            src_port: src.port(),
            dst_port: dst.port(),
            payload,
        };
        self.ipv6_frame(
            *src.ip(),
            *dst.ip(),
            dst_mac,
            IpProtocol::Udp,
            hop_limit,
            datagram.buffer_len(),
            |buf, src, dst| datagram.emit(buf, src, dst),
        )
    }

    /// The TCP segment exactly as described, from the guest's global address to `dst_ip`.
    pub fn tcp6(&self, dst_ip: Ipv6Addr, segment: &TcpSegment) -> Vec<u8> {
        self.ipv6_frame(
            self.ipv6_addr(),
            dst_ip,
            self.gateway_mac,
            IpProtocol::Tcp,
            GUEST_HOP_LIMIT,
            segment.buffer_len(),
            |buf, src, dst| segment.emit(buf, src, dst),
        )
    }
}

/// The raw NDP options as (type, body) pairs, checking that their lengths tile the bytes.
pub fn ndp_options(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut options = Vec::new();
    while !bytes.is_empty() {
        assert!(
            bytes.len() >= 8,
            "option shorter than 8 bytes: {bytes:02x?}"
        );
        let len = usize::from(bytes[1]) * 8;
        assert!(
            len > 0 && len <= bytes.len(),
            "option length {len} does not fit {} bytes",
            bytes.len()
        );
        options.push((bytes[0], bytes[..len].to_vec()));
        bytes = &bytes[len..];
    }
    options
}

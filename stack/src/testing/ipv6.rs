//! IPv6 (`--enable-ipv6`): the guest's side of neighbour discovery, ICMPv6, TCP and UDP
//! over IPv6, a parser for the IPv6 frames the stack sends ([`Parsed6`]), and the
//! [`Scenario`] conveniences that go with them.
//!
//! The guest's addresses are what a Linux guest autoconfigures from its MAC (EUI-64):
//! [`GUEST_MAC`](super::GUEST_MAC) 02:00:00:00:00:01 gives fe80::ff:fe00:1 and
//! fd00::ff:fe00:1 (or the `--cidr6` prefix's ::ff:fe00:1).

use super::frames::{parse, Guest, GuestTcp, ParseError, Parsed, TcpSegment};
use super::scenario::Scenario;
use crate::io::FlowId;
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Message, Icmpv6Packet,
    Icmpv6Repr, IpAddress, IpProtocol, Ipv4Repr, Ipv6FragmentHeader, Ipv6Packet, Ipv6Repr,
    NdiscRepr, RawHardwareAddress, TcpControl, TcpOption, TcpPacket, TcpRepr, TcpSeqNumber,
    UdpPacket, UdpRepr, ETHERNET_HEADER_LEN,
};
use std::collections::HashMap;

/// ff02::1, every node on the link (where router advertisements go).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// ff02::2, every router on the link (where router solicitations go).
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// What the guest's kernel puts in the hop limit of ordinary packets.
const GUEST_HOP_LIMIT: u8 = 64;
/// Neighbour discovery messages must carry 255 (RFC 4861), or receivers drop them.
pub const NDP_HOP_LIMIT: u8 = 255;
/// Rounds of frames-in/ACKs-out one [`Scenario::exchange_ipv6`] may take.
const MAX_EXCHANGE_ROUNDS: usize = 1_000;

fn checksums() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        let ip = Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: protocol,
            payload_len,
            hop_limit,
        };
        let eth = EthernetRepr {
            src_addr: self.mac,
            dst_addr: dst_mac,
            ethertype: EthernetProtocol::Ipv6,
        };
        let mut frame = vec![0; ETHERNET_HEADER_LEN + ip.buffer_len() + payload_len];
        let mut eth_frame = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.emit(&mut eth_frame);
        let mut packet = Ipv6Packet::new_unchecked(eth_frame.payload_mut());
        ip.emit(&mut packet);
        fill(packet.payload_mut(), &src.into(), &dst.into());
        frame
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
        let repr = UdpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
        };
        let len = repr.header_len() + payload.len();
        self.ipv6_frame(
            *src.ip(),
            *dst.ip(),
            dst_mac,
            IpProtocol::Udp,
            hop_limit,
            len,
            |buf, src, dst| {
                repr.emit(
                    &mut UdpPacket::new_unchecked(buf),
                    src,
                    dst,
                    payload.len(),
                    |out| out.copy_from_slice(payload),
                    &checksums(),
                )
            },
        )
    }

    /// The TCP segment exactly as described, from the guest's global address to `dst_ip`.
    pub fn tcp6(&self, dst_ip: Ipv6Addr, segment: &TcpSegment) -> Vec<u8> {
        let repr = TcpRepr {
            src_port: segment.src_port,
            dst_port: segment.dst_port,
            control: TcpControl::None,
            seq_number: TcpSeqNumber(segment.seq as i32),
            ack_number: segment.ack.map(|ack| TcpSeqNumber(ack as i32)),
            window_len: segment.window,
            window_scale: segment.window_scale,
            max_seg_size: segment.mss,
            sack_permitted: segment.sack_permitted,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &segment.payload,
        };
        self.ipv6_frame(
            self.ipv6_addr(),
            dst_ip,
            self.gateway_mac,
            IpProtocol::Tcp,
            GUEST_HOP_LIMIT,
            repr.buffer_len(),
            |buf, src, dst| {
                let mut packet = TcpPacket::new_unchecked(buf);
                repr.emit(&mut packet, src, dst, &checksums());
                // TcpRepr has one control flag; set them all, then checksum again.
                packet.set_syn(segment.syn);
                packet.set_fin(segment.fin);
                packet.set_rst(segment.rst);
                packet.set_psh(segment.psh);
                packet.fill_checksum(src, dst);
            },
        )
    }
}

/// An IPv6 frame the stack sent, decoded. Every checksum was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed6 {
    /// Neighbour discovery. `options` are the raw option bytes after the fixed header
    /// (smoltcp's `NdiscRepr` keeps only the options it knows; RDNSS is not one).
    Ndisc {
        eth_dst: EthernetAddress,
        ip: Ipv6Repr,
        ndisc: NdiscRepr<'static>,
        options: Vec<u8>,
    },
    Echo {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        /// Echo reply (true) or echo request (false).
        reply: bool,
        ident: u16,
        seq_no: u16,
        payload: Vec<u8>,
    },
    Unreachable {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        code: u8,
        /// The quoted original packet (its IPv6 header and what followed).
        original: Vec<u8>,
    },
    Tcp {
        ip: Ipv6Repr,
        tcp: TcpSegment,
    },
    Udp {
        src: SocketAddrV6,
        dst: SocketAddrV6,
        payload: Vec<u8>,
    },
    /// A packet with a Fragment header (see [`Parsed::Fragment`]).
    Fragment {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        next_header: IpProtocol,
        ident: u32,
        /// In bytes.
        offset: usize,
        more: bool,
        payload: Vec<u8>,
    },
    /// Anything else (IPv4, ARP, other ICMPv6 types), described.
    Other(String),
}

impl Parsed6 {
    pub fn tcp(&self) -> Option<(&Ipv6Repr, &TcpSegment)> {
        match self {
            Parsed6::Tcp { ip, tcp } => Some((ip, tcp)),
            _ => None,
        }
    }
}

/// Decodes a frame from the stack as IPv6; panics (with the frame in hex) if it is a
/// malformed IPv6 frame or has a bad checksum.
pub fn parse6(frame: &[u8]) -> Parsed6 {
    try_parse6(frame).unwrap_or_else(|error| {
        panic!(
            "the stack emitted a bad IPv6 frame ({error}): {}",
            hex(frame)
        )
    })
}

pub fn try_parse6(frame: &[u8]) -> Result<Parsed6, ParseError> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| ParseError::Truncated("Ethernet"))?;
    if eth.ethertype() != EthernetProtocol::Ipv6 {
        return Ok(Parsed6::Other(format!("ethertype {}", eth.ethertype())));
    }
    let packet =
        Ipv6Packet::new_checked(eth.payload()).map_err(|_| ParseError::Truncated("IPv6"))?;
    if packet.version() != 6 {
        return Err(ParseError::Malformed("IPv6 version"));
    }
    let ip = Ipv6Repr::parse(&packet).map_err(|_| ParseError::Malformed("IPv6"))?;
    let payload = &packet.payload()[..ip.payload_len];
    let (src, dst) = (IpAddress::from(ip.src_addr), IpAddress::from(ip.dst_addr));
    match ip.next_header {
        IpProtocol::Icmpv6 => parse_icmpv6(eth.dst_addr(), ip, payload),
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).map_err(|_| ParseError::Truncated("TCP"))?;
            if !tcp.verify_checksum(&src, &dst) {
                return Err(ParseError::BadChecksum("TCP"));
            }
            Ok(Parsed6::Tcp {
                ip,
                tcp: tcp_segment(&tcp)?,
            })
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).map_err(|_| ParseError::Truncated("UDP"))?;
            // RFC 8200: over IPv6 the UDP checksum is mandatory.
            if udp.checksum() == 0 || !udp.verify_checksum(&src, &dst) {
                return Err(ParseError::BadChecksum("UDP"));
            }
            Ok(Parsed6::Udp {
                src: SocketAddrV6::new(ip.src_addr, udp.src_port(), 0, 0),
                dst: SocketAddrV6::new(ip.dst_addr, udp.dst_port(), 0, 0),
                payload: udp.payload().to_vec(),
            })
        }
        IpProtocol::Ipv6Frag => {
            if payload.len() < 8 {
                return Err(ParseError::Truncated("IPv6 Fragment header"));
            }
            let header = Ipv6FragmentHeader::new_checked(&payload[2..8])
                .map_err(|_| ParseError::Truncated("IPv6 Fragment header"))?;
            let data = &payload[8..];
            if header.more_frags() && data.len() % 8 != 0 {
                return Err(ParseError::Malformed("IPv6 fragment length"));
            }
            Ok(Parsed6::Fragment {
                src: ip.src_addr,
                dst: ip.dst_addr,
                next_header: IpProtocol::from(payload[0]),
                ident: header.ident(),
                offset: usize::from(header.frag_offset()) * 8,
                more: header.more_frags(),
                payload: data.to_vec(),
            })
        }
        other => Ok(Parsed6::Other(format!("IPv6 next header {other}"))),
    }
}

fn parse_icmpv6(
    eth_dst: EthernetAddress,
    ip: Ipv6Repr,
    payload: &[u8],
) -> Result<Parsed6, ParseError> {
    let icmp = Icmpv6Packet::new_checked(payload).map_err(|_| ParseError::Truncated("ICMPv6"))?;
    if !icmp.verify_checksum(&ip.src_addr, &ip.dst_addr) {
        return Err(ParseError::BadChecksum("ICMPv6"));
    }
    let (src, dst) = (ip.src_addr, ip.dst_addr);
    match icmp.msg_type() {
        Icmpv6Message::EchoRequest | Icmpv6Message::EchoReply => Ok(Parsed6::Echo {
            src,
            dst,
            reply: icmp.msg_type() == Icmpv6Message::EchoReply,
            ident: icmp.echo_ident(),
            seq_no: icmp.echo_seq_no(),
            payload: icmp.payload().to_vec(),
        }),
        Icmpv6Message::DstUnreachable => Ok(Parsed6::Unreachable {
            src,
            dst,
            code: icmp.msg_code(),
            original: icmp.payload().to_vec(),
        }),
        Icmpv6Message::RouterSolicit
        | Icmpv6Message::RouterAdvert
        | Icmpv6Message::NeighborSolicit
        | Icmpv6Message::NeighborAdvert => {
            let repr = Icmpv6Repr::parse(&src, &dst, &icmp, &checksums())
                .map_err(|_| ParseError::Malformed("NDP"))?;
            let Icmpv6Repr::Ndisc(ndisc) = repr else {
                return Err(ParseError::Malformed("NDP"));
            };
            Ok(Parsed6::Ndisc {
                eth_dst,
                ip,
                ndisc: owned_ndisc(ndisc).ok_or(ParseError::Malformed("NDP"))?,
                options: icmp.payload().to_vec(),
            })
        }
        other => Ok(Parsed6::Other(format!(
            "ICMPv6 {other} code {}",
            icmp.msg_code()
        ))),
    }
}

/// The message without borrowed data (only a redirect borrows, and none is expected).
fn owned_ndisc(repr: NdiscRepr<'_>) -> Option<NdiscRepr<'static>> {
    Some(match repr {
        NdiscRepr::RouterSolicit { lladdr } => NdiscRepr::RouterSolicit { lladdr },
        NdiscRepr::RouterAdvert {
            hop_limit,
            flags,
            router_lifetime,
            reachable_time,
            retrans_time,
            lladdr,
            mtu,
            prefix_info,
        } => NdiscRepr::RouterAdvert {
            hop_limit,
            flags,
            router_lifetime,
            reachable_time,
            retrans_time,
            lladdr,
            mtu,
            prefix_info,
        },
        NdiscRepr::NeighborSolicit {
            target_addr,
            lladdr,
        } => NdiscRepr::NeighborSolicit {
            target_addr,
            lladdr,
        },
        NdiscRepr::NeighborAdvert {
            flags,
            target_addr,
            lladdr,
        } => NdiscRepr::NeighborAdvert {
            flags,
            target_addr,
            lladdr,
        },
        NdiscRepr::Redirect { .. } => return None,
    })
}

fn tcp_segment(packet: &TcpPacket<&[u8]>) -> Result<TcpSegment, ParseError> {
    let mut segment = TcpSegment {
        src_port: packet.src_port(),
        dst_port: packet.dst_port(),
        seq: packet.seq_number().0 as u32,
        ack: packet.ack().then(|| packet.ack_number().0 as u32),
        syn: packet.syn(),
        fin: packet.fin(),
        rst: packet.rst(),
        psh: packet.psh(),
        window: packet.window_len(),
        payload: packet.payload().to_vec(),
        ..TcpSegment::default()
    };
    let mut options = packet.options();
    while !options.is_empty() {
        let (rest, option) =
            TcpOption::parse(options).map_err(|_| ParseError::Malformed("TCP options"))?;
        match option {
            TcpOption::EndOfList => break,
            TcpOption::MaxSegmentSize(mss) => segment.mss = Some(mss),
            TcpOption::WindowScale(scale) => segment.window_scale = Some(scale),
            TcpOption::SackPermitted => segment.sack_permitted = true,
            _ => {}
        }
        options = rest;
    }
    Ok(segment)
}

/// Decodes an ICMPv6 echo message the stack passed to `ping_send` (the host kernel
/// computes the checksum of ping sockets, so it is not checked).
pub fn parse_echo6_message(message: &[u8]) -> Result<super::EchoMessage, ParseError> {
    let icmp = Icmpv6Packet::new_checked(message).map_err(|_| ParseError::Truncated("ICMPv6"))?;
    let reply = match (icmp.msg_type(), icmp.msg_code()) {
        (Icmpv6Message::EchoRequest, 0) => false,
        (Icmpv6Message::EchoReply, 0) => true,
        _ => return Err(ParseError::Malformed("ICMPv6 echo")),
    };
    Ok(super::EchoMessage {
        reply,
        ident: icmp.echo_ident(),
        seq_no: icmp.echo_seq_no(),
        payload: icmp.payload().to_vec(),
    })
}

/// An ICMPv6 echo message as an IPv6 ping socket returns it (no checksum: the kernel
/// checked it on receipt).
pub fn echo6_message(reply: bool, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let repr = if reply {
        Icmpv6Repr::EchoReply {
            ident,
            seq_no,
            data,
        }
    } else {
        Icmpv6Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }
    };
    let mut message = vec![0; repr.buffer_len()];
    let unspecified = Ipv6Addr::UNSPECIFIED;
    repr.emit(
        &unspecified,
        &unspecified,
        &mut Icmpv6Packet::new_unchecked(&mut message[..]),
        &ChecksumCapabilities::ignored(),
    );
    message
}

/// Stand-in IPv4 addresses under which [`GuestTcp6`] lets a [`GuestTcp`] keep its books.
const STAND_IN_GUEST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const STAND_IN_REMOTE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// One guest-side TCP connection over IPv6, from the guest's global address. The
/// sequence bookkeeping is [`GuestTcp`]'s: it runs on stand-in IPv4 addresses, and
/// segments are carried across unchanged (flags, numbers, options and payload).
#[derive(Debug, Clone)]
pub struct GuestTcp6 {
    inner: GuestTcp,
    guest: Guest,
    pub local_port: u16,
    pub remote: SocketAddrV6,
}

impl GuestTcp6 {
    pub fn new(guest: &Guest, local_port: u16, remote: SocketAddrV6, isn: u32) -> GuestTcp6 {
        let stand_in = Guest {
            ip: STAND_IN_GUEST,
            ..*guest
        };
        let stand_in_remote = SocketAddrV4::new(STAND_IN_REMOTE, remote.port());
        GuestTcp6 {
            inner: GuestTcp::new(&stand_in, local_port, stand_in_remote, isn),
            guest: *guest,
            local_port,
            remote,
        }
    }

    pub fn isn(&self) -> u32 {
        self.inner.isn
    }

    /// The MSS the remote announced in its SYN-ACK.
    pub fn peer_mss(&self) -> Option<u16> {
        self.inner.peer_mss
    }

    /// The SYN (again, if called twice: a retransmission).
    pub fn syn(&mut self) -> Vec<u8> {
        let frame = self.inner.syn();
        self.carry(&frame)
    }

    /// Whether the frame is a segment of this connection (remote → guest).
    pub fn matches(&self, frame: &Parsed6) -> bool {
        frame.tcp().is_some_and(|(ip, tcp)| {
            ip.src_addr == *self.remote.ip()
                && ip.dst_addr == self.guest.ipv6_addr()
                && tcp.src_port == self.remote.port()
                && tcp.dst_port == self.local_port
        })
    }

    /// Learns from a frame of this connection; returns false (and ignores it) if the
    /// frame belongs to something else.
    pub fn on_frame(&mut self, frame: &Parsed6) -> bool {
        let Some((_, tcp)) = frame.tcp().filter(|_| self.matches(frame)) else {
            return false;
        };
        let stand_in = Parsed::Tcp {
            ip: Ipv4Repr {
                src_addr: STAND_IN_REMOTE,
                dst_addr: STAND_IN_GUEST,
                next_header: IpProtocol::Tcp,
                payload_len: 0,
                hop_limit: GUEST_HOP_LIMIT,
            },
            tcp: tcp.clone(),
        };
        self.inner.on_frame(&stand_in)
    }

    /// A pure ACK of everything received so far.
    pub fn ack(&mut self) -> Vec<u8> {
        let frame = self.inner.ack();
        self.carry(&frame)
    }

    /// Data with PSH|ACK.
    pub fn send(&mut self, data: &[u8]) -> Vec<u8> {
        let frame = self.inner.send(data);
        self.carry(&frame)
    }

    /// FIN|ACK.
    pub fn fin(&mut self) -> Vec<u8> {
        let frame = self.inner.fin();
        self.carry(&frame)
    }

    /// RST|ACK.
    pub fn rst(&mut self) -> Vec<u8> {
        let frame = self.inner.rst();
        self.carry(&frame)
    }

    /// The stand-in IPv4 frame's segment, as an IPv6 frame.
    fn carry(&self, stand_in: &[u8]) -> Vec<u8> {
        let parsed = parse(stand_in);
        let (_, segment) = parsed.tcp().expect("GuestTcp builds TCP frames");
        self.guest.tcp6(*self.remote.ip(), segment)
    }

    /// The SYN-ACK arrived.
    pub fn established(&self) -> bool {
        self.inner.established()
    }

    pub fn needs_ack(&self) -> bool {
        self.inner.needs_ack()
    }

    /// The remote acknowledged everything the guest sent (SYN, data and FIN).
    pub fn all_acked(&self) -> bool {
        self.inner.all_acked()
    }

    /// In-order bytes received from the remote so far.
    pub fn received(&self) -> &[u8] {
        self.inner.received()
    }

    /// The remote's FIN arrived (in order).
    pub fn peer_fin(&self) -> bool {
        self.inner.peer_fin
    }

    /// A RST arrived.
    pub fn reset(&self) -> bool {
        self.inner.reset
    }
}

impl Scenario {
    /// Frames the stack sent since the last drain, decoded as IPv6 (see [`parse6`]);
    /// addressing and size are checked as by [`Scenario::drain`].
    pub fn drain_ipv6(&mut self) -> Vec<Parsed6> {
        let frames = self.drain_raw();
        for frame in &frames {
            parse6(frame);
        }
        crate::testing::fragments::defragment(frames)
            .iter()
            .map(|frame| parse6(frame))
            .collect()
    }

    /// A guest connection over IPv6 from `local_port` to `remote` with a fixed,
    /// port-derived ISN (not sent yet).
    pub fn guest_tcp6(&self, local_port: u16, remote: SocketAddrV6) -> GuestTcp6 {
        let isn = u32::from(local_port).wrapping_mul(0x9e37_79b9);
        GuestTcp6::new(&self.guest, local_port, remote, isn)
    }

    /// The whole happy handshake over IPv6: SYN, exactly one host connect, the connect
    /// completes, SYN-ACK, ACK. Returns the connection and its host flow.
    pub fn open_tcp6(&mut self, local_port: u16, remote: SocketAddrV6) -> (GuestTcp6, FlowId) {
        let mut conn = self.guest_tcp6(local_port, remote);
        let connects_before = self.host.connects().len();
        self.guest_sends(&conn.syn());
        let connects = self.host.connects();
        assert_eq!(
            connects.len(),
            connects_before + 1,
            "a SYN to {remote} should start exactly one host connect"
        );
        let (flow, _) = connects[connects_before];
        self.complete_connect(flow);
        let others = self.exchange_ipv6(std::slice::from_mut(&mut conn));
        assert!(
            conn.established(),
            "no SYN-ACK from {remote} after the host connect completed; other frames: {others:?}"
        );
        (conn, flow)
    }

    /// [`Scenario::exchange`] for IPv6 connections: delivers the stack's frames to the
    /// connections they belong to and lets each ACK what it received, until the stack
    /// has nothing more to say. Returns the frames no connection claimed.
    pub fn exchange_ipv6(&mut self, conns: &mut [GuestTcp6]) -> Vec<Parsed6> {
        let index: HashMap<(u16, SocketAddrV6), usize> = conns
            .iter()
            .enumerate()
            .map(|(i, conn)| ((conn.local_port, conn.remote), i))
            .collect();
        let mut unclaimed = Vec::new();
        for _ in 0..MAX_EXCHANGE_ROUNDS {
            let frames = self.drain_ipv6();
            if frames.is_empty() {
                return unclaimed;
            }
            for frame in frames {
                let owner = frame.tcp().and_then(|(ip, tcp)| {
                    let remote = SocketAddrV6::new(ip.src_addr, tcp.src_port, 0, 0);
                    index.get(&(tcp.dst_port, remote)).copied()
                });
                match owner {
                    Some(i) if conns[i].on_frame(&frame) => {}
                    _ => unclaimed.push(frame),
                }
            }
            for conn in conns.iter_mut().filter(|conn| conn.needs_ack()) {
                let ack = conn.ack();
                self.guest_sends(&ack);
            }
        }
        panic!("exchange_ipv6 did not settle after {MAX_EXCHANGE_ROUNDS} rounds");
    }
}

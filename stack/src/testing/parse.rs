//! The guest's reading of what the stack sends: one decoder ([`parse`]) for every frame,
//! ARP, IPv4 and IPv6 alike, that verifies every checksum on the way; and the ICMP echo
//! messages ping sockets carry.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame,
    EthernetProtocol, Icmpv4Message, Icmpv4Packet, Icmpv6Message, Icmpv6Packet, Icmpv6Repr,
    IpAddress, IpProtocol, IpVersion, Ipv4Packet, Ipv4Repr, Ipv6FragmentHeader, Ipv6Packet,
    Ipv6Repr, NdiscRepr, TcpOption, TcpPacket, UdpPacket,
};

use super::frames::TcpSegment;

const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
/// DHCP option 26, the interface MTU, which smoltcp's `DhcpRepr` does not model.
const DHCP_OPT_INTERFACE_MTU: u8 = 26;
/// DHCP option 119, the domain search list.
const DHCP_OPT_DOMAIN_SEARCH: u8 = 119;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A frame the stack sent to the guest, decoded. Every checksum was verified. Where IPv4
/// and IPv6 carry the same thing (TCP, UDP, echo, unreachable, fragments) there is one
/// variant whose addresses say the family; ARP and DHCP are IPv4's, neighbour discovery
/// IPv6's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Arp(ArpRepr),
    Tcp {
        ip: IpHeader,
        tcp: TcpSegment,
    },
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
        payload: Vec<u8>,
    },
    /// ICMP or ICMPv6 echo.
    IcmpEcho {
        src: IpAddr,
        dst: IpAddr,
        /// Echo reply (true) or echo request (false).
        reply: bool,
        ident: u16,
        seq_no: u16,
        payload: Vec<u8>,
    },
    /// ICMP or ICMPv6 destination unreachable.
    IcmpUnreachable {
        src: IpAddr,
        dst: IpAddr,
        code: u8,
        /// The quoted original datagram: its IP header and what followed (IPv4: at least
        /// 8 bytes).
        original: Vec<u8>,
    },
    /// A DHCP server message (UDP from port 67 to port 68).
    Dhcp {
        src: SocketAddrV4,
        dst: SocketAddrV4,
        message: DhcpMessage,
    },
    /// Neighbour discovery. `options` are the raw option bytes after the fixed header
    /// (smoltcp's `NdiscRepr` keeps only the options it knows; RDNSS is not one).
    Ndisc {
        eth_dst: EthernetAddress,
        ip: Ipv6Repr,
        ndisc: NdiscRepr<'static>,
        options: Vec<u8>,
    },
    /// An IPv4 fragment (MF set or an offset) or an IPv6 packet with a Fragment header:
    /// [`super::fragments::defragment`] puts a datagram's fragments back together
    /// first, as the guest's kernel does.
    Fragment {
        src: IpAddr,
        dst: IpAddr,
        /// The protocol (IPv4) or next header (IPv6) of the whole datagram.
        protocol: IpProtocol,
        ident: u32,
        /// In bytes.
        offset: usize,
        more: bool,
        payload: Vec<u8>,
    },
    /// Anything else (other ethertypes, ICMP types, protocols), described.
    Other(String),
}

/// The IP header of a decoded TCP segment, either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    pub src_addr: IpAddr,
    pub dst_addr: IpAddr,
    /// TTL (IPv4) or hop limit (IPv6).
    pub hop_limit: u8,
}

/// A DHCP message from the stack as a client reads it, decoded with smoltcp's
/// `DhcpRepr` (owned, so that [`Parsed`] can keep it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpMessage {
    pub message_type: DhcpMessageType,
    pub transaction_id: u32,
    pub client_hardware_address: EthernetAddress,
    pub your_ip: Ipv4Addr,
    pub server_identifier: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub dns_servers: Option<Vec<Ipv4Addr>>,
    pub lease_duration: Option<u32>,
    /// Option 26, the interface MTU.
    pub mtu: Option<u16>,
    /// Option 119, the domain search list: the data of every such option in order,
    /// concatenated (RFC 3396). None without one.
    pub domain_search: Option<Vec<u8>>,
}

impl Parsed {
    /// The echo reply from `src` to `dst` (either family) that a test expects.
    pub fn echo_reply(
        src: impl Into<IpAddr>,
        dst: impl Into<IpAddr>,
        ident: u16,
        seq_no: u16,
        payload: &[u8],
    ) -> Parsed {
        Parsed::IcmpEcho {
            src: src.into(),
            dst: dst.into(),
            reply: true,
            ident,
            seq_no,
            payload: payload.to_vec(),
        }
    }

    pub fn tcp(&self) -> Option<(&IpHeader, &TcpSegment)> {
        match self {
            Parsed::Tcp { ip, tcp } => Some((ip, tcp)),
            _ => None,
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Too short, or a length field pointing past the end.
    Truncated(&'static str),
    BadChecksum(&'static str),
    /// Structurally wrong (bad version, bad header length, fragments...).
    Malformed(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated(what) => write!(f, "truncated {what}"),
            ParseError::BadChecksum(what) => write!(f, "bad {what} checksum"),
            ParseError::Malformed(what) => write!(f, "malformed {what}"),
        }
    }
}

/// Decodes a frame from the stack; panics (with the frame in hex) if it is not a
/// well-formed frame with correct checksums.
pub fn parse(frame: &[u8]) -> Parsed {
    try_parse(frame)
        .unwrap_or_else(|error| panic!("the stack emitted a bad frame ({error}): {}", hex(frame)))
}

pub fn try_parse(frame: &[u8]) -> Result<Parsed, ParseError> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| ParseError::Truncated("Ethernet"))?;
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let packet =
                ArpPacket::new_checked(eth.payload()).map_err(|_| ParseError::Truncated("ARP"))?;
            let repr = ArpRepr::parse(&packet).map_err(|_| ParseError::Malformed("ARP"))?;
            Ok(Parsed::Arp(repr))
        }
        EthernetProtocol::Ipv4 => parse_ipv4(eth.payload()),
        EthernetProtocol::Ipv6 => parse_ipv6(eth.dst_addr(), eth.payload()),
        other => Ok(Parsed::Other(format!("ethertype {other}"))),
    }
}

fn parse_ipv4(bytes: &[u8]) -> Result<Parsed, ParseError> {
    let packet = Ipv4Packet::new_checked(bytes).map_err(|_| ParseError::Truncated("IPv4"))?;
    if packet.version() != 4 {
        return Err(ParseError::Malformed("IPv4 version"));
    }
    if !packet.verify_checksum() {
        return Err(ParseError::BadChecksum("IPv4"));
    }
    if packet.more_frags() || packet.frag_offset() != 0 {
        if packet.dont_frag() {
            return Err(ParseError::Malformed("IPv4 fragment with DF"));
        }
        if packet.more_frags() && packet.payload().len() % 8 != 0 {
            return Err(ParseError::Malformed("IPv4 fragment length"));
        }
        return Ok(Parsed::Fragment {
            src: packet.src_addr().into(),
            dst: packet.dst_addr().into(),
            protocol: packet.next_header(),
            ident: u32::from(packet.ident()),
            offset: usize::from(packet.frag_offset()),
            more: packet.more_frags(),
            payload: packet.payload().to_vec(),
        });
    }
    let checksums = ChecksumCapabilities::default();
    let ip = Ipv4Repr::parse(&packet, &checksums).map_err(|_| ParseError::Malformed("IPv4"))?;
    let header = IpHeader {
        src_addr: ip.src_addr.into(),
        dst_addr: ip.dst_addr.into(),
        hop_limit: ip.hop_limit,
    };
    let payload = packet.payload();
    match ip.next_header {
        IpProtocol::Tcp => parse_tcp(header, payload),
        IpProtocol::Udp => {
            let (src, dst, payload) = parse_udp(header, payload)?;
            if (src.port(), dst.port()) == (DHCP_SERVER_PORT, DHCP_CLIENT_PORT) {
                let message = parse_dhcp(payload)?;
                let v4 = |addr: SocketAddr| SocketAddrV4::new(to_v4(addr.ip()), addr.port());
                let (src, dst) = (v4(src), v4(dst));
                return Ok(Parsed::Dhcp { src, dst, message });
            }
            Ok(Parsed::Udp {
                src,
                dst,
                payload: payload.to_vec(),
            })
        }
        IpProtocol::Icmp => parse_icmp(header, payload),
        other => Ok(Parsed::Other(format!("IPv4 protocol {other}"))),
    }
}

fn to_v4(addr: IpAddr) -> Ipv4Addr {
    match addr {
        IpAddr::V4(addr) => addr,
        IpAddr::V6(addr) => unreachable!("an IPv6 address ({addr}) in an IPv4 header"),
    }
}

fn parse_ipv6(eth_dst: EthernetAddress, bytes: &[u8]) -> Result<Parsed, ParseError> {
    let packet = Ipv6Packet::new_checked(bytes).map_err(|_| ParseError::Truncated("IPv6"))?;
    if packet.version() != 6 {
        return Err(ParseError::Malformed("IPv6 version"));
    }
    let ip = Ipv6Repr::parse(&packet).map_err(|_| ParseError::Malformed("IPv6"))?;
    let header = IpHeader {
        src_addr: ip.src_addr.into(),
        dst_addr: ip.dst_addr.into(),
        hop_limit: ip.hop_limit,
    };
    let payload = &packet.payload()[..ip.payload_len];
    match ip.next_header {
        IpProtocol::Icmpv6 => parse_icmpv6(eth_dst, ip, header, payload),
        IpProtocol::Tcp => parse_tcp(header, payload),
        IpProtocol::Udp => {
            let (src, dst, payload) = parse_udp(header, payload)?;
            Ok(Parsed::Udp {
                src,
                dst,
                payload: payload.to_vec(),
            })
        }
        IpProtocol::Ipv6Frag => {
            if payload.len() < 8 {
                return Err(ParseError::Truncated("IPv6 Fragment header"));
            }
            let fragment = Ipv6FragmentHeader::new_checked(&payload[2..8])
                .map_err(|_| ParseError::Truncated("IPv6 Fragment header"))?;
            let data = &payload[8..];
            if fragment.more_frags() && data.len() % 8 != 0 {
                return Err(ParseError::Malformed("IPv6 fragment length"));
            }
            Ok(Parsed::Fragment {
                src: header.src_addr,
                dst: header.dst_addr,
                protocol: IpProtocol::from(payload[0]),
                ident: fragment.ident(),
                offset: usize::from(fragment.frag_offset()) * 8,
                more: fragment.more_frags(),
                payload: data.to_vec(),
            })
        }
        other => Ok(Parsed::Other(format!("IPv6 next header {other}"))),
    }
}

fn parse_tcp(ip: IpHeader, payload: &[u8]) -> Result<Parsed, ParseError> {
    let tcp = TcpPacket::new_checked(payload).map_err(|_| ParseError::Truncated("TCP"))?;
    let (src, dst) = (IpAddress::from(ip.src_addr), IpAddress::from(ip.dst_addr));
    if !tcp.verify_checksum(&src, &dst) {
        return Err(ParseError::BadChecksum("TCP"));
    }
    Ok(Parsed::Tcp {
        ip,
        tcp: tcp_segment(&tcp)?,
    })
}

/// A UDP datagram's addresses and payload, its checksum verified.
fn parse_udp(ip: IpHeader, payload: &[u8]) -> Result<(SocketAddr, SocketAddr, &[u8]), ParseError> {
    let udp = UdpPacket::new_checked(payload).map_err(|_| ParseError::Truncated("UDP"))?;
    // A zero checksum means "none" on IPv4 (smoltcp's check accepts it); RFC 8200 makes
    // it mandatory over IPv6.
    if ip.dst_addr.is_ipv6() && udp.checksum() == 0 {
        return Err(ParseError::BadChecksum("UDP"));
    }
    let (src, dst) = (IpAddress::from(ip.src_addr), IpAddress::from(ip.dst_addr));
    if !udp.verify_checksum(&src, &dst) {
        return Err(ParseError::BadChecksum("UDP"));
    }
    Ok((
        SocketAddr::new(ip.src_addr, udp.src_port()),
        SocketAddr::new(ip.dst_addr, udp.dst_port()),
        udp.payload(),
    ))
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

fn parse_dhcp(payload: &[u8]) -> Result<DhcpMessage, ParseError> {
    let packet = DhcpPacket::new_checked(payload).map_err(|_| ParseError::Truncated("DHCP"))?;
    let repr = DhcpRepr::parse(&packet).map_err(|_| ParseError::Malformed("DHCP"))?;
    let mtu = match packet
        .options()
        .find(|option| option.kind == DHCP_OPT_INTERFACE_MTU)
    {
        Some(option) => Some(u16::from_be_bytes(
            option
                .data
                .try_into()
                .map_err(|_| ParseError::Malformed("DHCP MTU option"))?,
        )),
        None => None,
    };
    let search: Vec<u8> = packet
        .options()
        .filter(|option| option.kind == DHCP_OPT_DOMAIN_SEARCH)
        .flat_map(|option| option.data.iter().copied())
        .collect();
    let has_search = packet
        .options()
        .any(|option| option.kind == DHCP_OPT_DOMAIN_SEARCH);
    Ok(DhcpMessage {
        domain_search: has_search.then_some(search),
        message_type: repr.message_type,
        transaction_id: repr.transaction_id,
        client_hardware_address: repr.client_hardware_address,
        your_ip: repr.your_ip,
        server_identifier: repr.server_identifier,
        router: repr.router,
        subnet_mask: repr.subnet_mask,
        dns_servers: repr.dns_servers.map(|servers| servers.to_vec()),
        lease_duration: repr.lease_duration,
        mtu,
    })
}

/// The ICMP messages both families have, which they lay out alike (RFC 792, RFC 4443):
/// type, code, checksum, then the echo's identifier and sequence number or 4 unused
/// bytes, then the data (the echo's payload, or the quoted packet).
#[derive(Clone, Copy)]
enum IcmpKind {
    Echo { reply: bool },
    Unreachable,
}

/// `message` (checksum verified, at least the 8-byte header long) as a `kind` message
/// from `ip`'s source to its destination.
fn icmp_message(ip: &IpHeader, kind: IcmpKind, message: &[u8]) -> Parsed {
    let (src, dst) = (ip.src_addr, ip.dst_addr);
    let data = message[8..].to_vec();
    match kind {
        IcmpKind::Echo { reply } => {
            let (ident, seq_no) = echo_numbers(message);
            Parsed::IcmpEcho {
                src,
                dst,
                reply,
                ident,
                seq_no,
                payload: data,
            }
        }
        IcmpKind::Unreachable => Parsed::IcmpUnreachable {
            src,
            dst,
            code: message[1],
            original: data,
        },
    }
}

fn parse_icmp(ip: IpHeader, payload: &[u8]) -> Result<Parsed, ParseError> {
    let icmp = Icmpv4Packet::new_checked(payload).map_err(|_| ParseError::Truncated("ICMP"))?;
    if !icmp.verify_checksum() {
        return Err(ParseError::BadChecksum("ICMP"));
    }
    let kind = match icmp.msg_type() {
        Icmpv4Message::EchoRequest => IcmpKind::Echo { reply: false },
        Icmpv4Message::EchoReply => IcmpKind::Echo { reply: true },
        Icmpv4Message::DstUnreachable => IcmpKind::Unreachable,
        other => {
            let code = icmp.msg_code();
            return Ok(Parsed::Other(format!("ICMP {other} code {code}")));
        }
    };
    Ok(icmp_message(&ip, kind, payload))
}

fn parse_icmpv6(
    eth_dst: EthernetAddress,
    ip: Ipv6Repr,
    header: IpHeader,
    payload: &[u8],
) -> Result<Parsed, ParseError> {
    let icmp = Icmpv6Packet::new_checked(payload).map_err(|_| ParseError::Truncated("ICMPv6"))?;
    if !icmp.verify_checksum(&ip.src_addr, &ip.dst_addr) {
        return Err(ParseError::BadChecksum("ICMPv6"));
    }
    let kind = match icmp.msg_type() {
        Icmpv6Message::EchoRequest => IcmpKind::Echo { reply: false },
        Icmpv6Message::EchoReply => IcmpKind::Echo { reply: true },
        Icmpv6Message::DstUnreachable => IcmpKind::Unreachable,
        Icmpv6Message::RouterSolicit
        | Icmpv6Message::RouterAdvert
        | Icmpv6Message::NeighborSolicit
        | Icmpv6Message::NeighborAdvert => {
            let repr = Icmpv6Repr::parse(
                &ip.src_addr,
                &ip.dst_addr,
                &icmp,
                &ChecksumCapabilities::default(),
            )
            .map_err(|_| ParseError::Malformed("NDP"))?;
            let Icmpv6Repr::Ndisc(ndisc) = repr else {
                return Err(ParseError::Malformed("NDP"));
            };
            return Ok(Parsed::Ndisc {
                eth_dst,
                ip,
                ndisc: owned_ndisc(ndisc).ok_or(ParseError::Malformed("NDP"))?,
                options: icmp.payload().to_vec(),
            });
        }
        other => {
            let code = icmp.msg_code();
            return Ok(Parsed::Other(format!("ICMPv6 {other} code {code}")));
        }
    };
    if payload.len() < 8 {
        return Err(ParseError::Truncated("ICMPv6"));
    }
    Ok(icmp_message(&header, kind, payload))
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

/// An ICMP or ICMPv6 echo message as a ping socket carries it (header + payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoMessage {
    pub reply: bool,
    pub ident: u16,
    pub seq_no: u16,
    pub payload: Vec<u8>,
}

/// Decodes a message the stack passed to `ping_send` on a ping socket of `version`. The
/// checksum is not checked: the host kernel computes it for ping sockets.
pub fn parse_echo_message(version: IpVersion, message: &[u8]) -> Result<EchoMessage, ParseError> {
    let (request, reply, protocol, echo) = match version {
        IpVersion::Ipv4 => (
            u8::from(Icmpv4Message::EchoRequest),
            u8::from(Icmpv4Message::EchoReply),
            "ICMP",
            "ICMP echo",
        ),
        IpVersion::Ipv6 => (
            u8::from(Icmpv6Message::EchoRequest),
            u8::from(Icmpv6Message::EchoReply),
            "ICMPv6",
            "ICMPv6 echo",
        ),
    };
    if message.len() < 8 {
        return Err(ParseError::Truncated(protocol));
    }
    // The layout both families share (see IcmpKind), code 0.
    let is_reply = match (message[0], message[1]) {
        (msg_type, 0) if msg_type == request => false,
        (msg_type, 0) if msg_type == reply => true,
        _ => return Err(ParseError::Malformed(echo)),
    };
    let (ident, seq_no) = echo_numbers(message);
    Ok(EchoMessage {
        reply: is_reply,
        ident,
        seq_no,
        payload: message[8..].to_vec(),
    })
}

/// An echo's identifier and sequence number (bytes 4 to 8 in either family).
fn echo_numbers(message: &[u8]) -> (u16, u16) {
    (
        u16::from_be_bytes([message[4], message[5]]),
        u16::from_be_bytes([message[6], message[7]]),
    )
}

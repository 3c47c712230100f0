//! Guest-side frame builders and parsers, on smoltcp's wire types.

use crate::config::{service_mac, VirtualNetwork};
use core::fmt;
use core::net::{Ipv4Addr, SocketAddrV4};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Message, Icmpv4Packet, Icmpv4Repr,
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpOption, TcpPacket, TcpRepr,
    TcpSeqNumber, UdpPacket, UdpRepr, ETHERNET_HEADER_LEN,
};

/// The guest's MAC in scenarios (locally administered, like a tap's random one).
pub const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);

const GUEST_TTL: u8 = 64;
/// What Linux puts in a SYN on Ethernet: MSS 1460, window 64240, window scale 7.
const SYN_MSS: u16 = 1460;
const SYN_WINDOW: u16 = 64240;
const WINDOW_SCALE: u8 = 7;
/// Window field after the handshake: 2048 << 7 = 256 KiB.
const WINDOW: u16 = 2048;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
/// DHCP option 26, the interface MTU, which smoltcp's `DhcpRepr` does not model.
const DHCP_OPT_INTERFACE_MTU: u8 = 26;

fn checksums() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One TCP segment, owned, with every flag separately (a parsed segment keeps flag
/// combinations smoltcp's `TcpRepr` cannot express, like FIN|PSH).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TcpSegment {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    /// The acknowledgment number, present iff the ACK flag is set.
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
    /// The raw window field (unscaled).
    pub window: u16,
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub payload: Vec<u8>,
}

impl TcpSegment {
    /// Sequence space the segment occupies (SYN and FIN count one each).
    pub fn seq_len(&self) -> u32 {
        self.payload.len() as u32 + u32::from(self.syn) + u32::from(self.fin)
    }

    /// SYN with ACK.
    pub fn is_syn_ack(&self) -> bool {
        self.syn && self.ack.is_some() && !self.rst && !self.fin
    }

    /// Flags as tcpdump prints them, e.g. `S.` or `FP.`.
    pub fn flags(&self) -> String {
        let mut text = String::new();
        for (set, letter) in [
            (self.syn, 'S'),
            (self.fin, 'F'),
            (self.rst, 'R'),
            (self.psh, 'P'),
            (self.ack.is_some(), '.'),
        ] {
            if set {
                text.push(letter);
            }
        }
        text
    }
}

/// A frame the stack sent to the guest, decoded. Every checksum was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Arp(ArpRepr),
    Tcp {
        ip: Ipv4Repr,
        tcp: TcpSegment,
    },
    Udp {
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: Vec<u8>,
    },
    IcmpEcho {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        /// Echo reply (true) or echo request (false).
        reply: bool,
        ident: u16,
        seq_no: u16,
        payload: Vec<u8>,
    },
    IcmpUnreachable {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        code: u8,
        /// The quoted original datagram: its IP header and at least 8 bytes after it.
        original: Vec<u8>,
    },
    /// A DHCP server message (UDP from port 67 to port 68).
    Dhcp {
        src: SocketAddrV4,
        dst: SocketAddrV4,
        message: DhcpMessage,
    },
    /// An IPv4 fragment (MF set or an offset): [`super::fragments::defragment`] puts
    /// a datagram's fragments back together first, as the guest's kernel does.
    Fragment {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: IpProtocol,
        ident: u16,
        /// In bytes.
        offset: usize,
        more: bool,
        payload: Vec<u8>,
    },
    /// Anything else (IPv6, other ICMP types, other protocols), described.
    Other(String),
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
    pub fn tcp(&self) -> Option<(&Ipv4Repr, &TcpSegment)> {
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
            src: packet.src_addr(),
            dst: packet.dst_addr(),
            protocol: packet.next_header(),
            ident: packet.ident(),
            offset: usize::from(packet.frag_offset()),
            more: packet.more_frags(),
            payload: packet.payload().to_vec(),
        });
    }
    let ip = Ipv4Repr::parse(&packet, &checksums()).map_err(|_| ParseError::Malformed("IPv4"))?;
    let payload = packet.payload();
    let (src, dst) = (IpAddress::from(ip.src_addr), IpAddress::from(ip.dst_addr));
    match ip.next_header {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).map_err(|_| ParseError::Truncated("TCP"))?;
            if !tcp.verify_checksum(&src, &dst) {
                return Err(ParseError::BadChecksum("TCP"));
            }
            Ok(Parsed::Tcp {
                ip,
                tcp: tcp_segment(&tcp)?,
            })
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).map_err(|_| ParseError::Truncated("UDP"))?;
            // A zero checksum means "none" on IPv4; smoltcp's check accepts it.
            if !udp.verify_checksum(&src, &dst) {
                return Err(ParseError::BadChecksum("UDP"));
            }
            let src = SocketAddrV4::new(ip.src_addr, udp.src_port());
            let dst = SocketAddrV4::new(ip.dst_addr, udp.dst_port());
            if (src.port(), dst.port()) == (DHCP_SERVER_PORT, DHCP_CLIENT_PORT) {
                let message = parse_dhcp(udp.payload())?;
                return Ok(Parsed::Dhcp { src, dst, message });
            }
            Ok(Parsed::Udp {
                src,
                dst,
                payload: udp.payload().to_vec(),
            })
        }
        IpProtocol::Icmp => parse_icmp(&ip, payload),
        other => Ok(Parsed::Other(format!("IPv4 protocol {other}"))),
    }
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
        .filter(|option| option.kind == 119)
        .flat_map(|option| option.data.iter().copied())
        .collect();
    let has_search = packet.options().any(|option| option.kind == 119);
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

fn parse_icmp(ip: &Ipv4Repr, payload: &[u8]) -> Result<Parsed, ParseError> {
    let icmp = Icmpv4Packet::new_checked(payload).map_err(|_| ParseError::Truncated("ICMP"))?;
    if !icmp.verify_checksum() {
        return Err(ParseError::BadChecksum("ICMP"));
    }
    let (src, dst) = (ip.src_addr, ip.dst_addr);
    match icmp.msg_type() {
        Icmpv4Message::EchoRequest | Icmpv4Message::EchoReply => Ok(Parsed::IcmpEcho {
            src,
            dst,
            reply: icmp.msg_type() == Icmpv4Message::EchoReply,
            ident: icmp.echo_ident(),
            seq_no: icmp.echo_seq_no(),
            payload: icmp.data().to_vec(),
        }),
        Icmpv4Message::DstUnreachable => Ok(Parsed::IcmpUnreachable {
            src,
            dst,
            code: icmp.msg_code(),
            original: icmp.data().to_vec(),
        }),
        other => Ok(Parsed::Other(format!(
            "ICMP {other} code {}",
            icmp.msg_code()
        ))),
    }
}

/// An ICMP echo message as a ping socket carries it (header + payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoMessage {
    pub reply: bool,
    pub ident: u16,
    pub seq_no: u16,
    pub payload: Vec<u8>,
}

/// Decodes a message the stack passed to `ping_send`. The checksum is not checked:
/// the host kernel computes it for ping sockets.
pub fn parse_echo_message(message: &[u8]) -> Result<EchoMessage, ParseError> {
    let icmp = Icmpv4Packet::new_checked(message).map_err(|_| ParseError::Truncated("ICMP"))?;
    let reply = match (icmp.msg_type(), icmp.msg_code()) {
        (Icmpv4Message::EchoRequest, 0) => false,
        (Icmpv4Message::EchoReply, 0) => true,
        _ => return Err(ParseError::Malformed("ICMP echo")),
    };
    Ok(EchoMessage {
        reply,
        ident: icmp.echo_ident(),
        seq_no: icmp.echo_seq_no(),
        payload: icmp.data().to_vec(),
    })
}

/// Builds an ICMP echo request or reply message (header + payload, checksummed).
pub fn echo_message(reply: bool, ident: u16, seq_no: u16, payload: &[u8]) -> Vec<u8> {
    let repr = if reply {
        Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data: payload,
        }
    } else {
        Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data: payload,
        }
    };
    let mut message = vec![0; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut message[..]),
        &checksums(),
    );
    message
}

/// The guest: builds the frames it sends. A `Guest` with the roles swapped (the
/// gateway's MAC and a remote IP) builds frames "from the network" for unit tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest {
    pub mac: EthernetAddress,
    pub ip: Ipv4Addr,
    /// Where the guest sends everything not in its ARP table: the gateway.
    pub gateway_mac: EthernetAddress,
    /// The /64 its IPv6 address comes from (SLAAC from the stack's advertisements).
    pub ipv6_prefix: core::net::Ipv6Addr,
}

impl Default for Guest {
    fn default() -> Self {
        Guest::new(&VirtualNetwork::default())
    }
}

impl Guest {
    /// The guest of `network`: MAC [`GUEST_MAC`], address network+100.
    pub fn new(network: &VirtualNetwork) -> Guest {
        Guest {
            mac: GUEST_MAC,
            ip: network.guest(),
            gateway_mac: service_mac(network.gateway()),
            ipv6_prefix: network.ipv6_prefix().network(),
        }
    }

    /// "Who has `target`? Tell 10.0.2.100", broadcast.
    pub fn arp_request(&self, target: Ipv4Addr) -> Vec<u8> {
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: self.mac,
            source_protocol_addr: self.ip,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        self.ethernet(
            EthernetAddress::BROADCAST,
            EthernetProtocol::Arp,
            repr.buffer_len(),
            |buf| repr.emit(&mut ArpPacket::new_unchecked(buf)),
        )
    }

    /// A SYN as Linux sends it: MSS 1460, SACK permitted, window scale 7.
    pub fn tcp_syn(&self, src_port: u16, dst: SocketAddrV4, isn: u32) -> Vec<u8> {
        self.tcp_syn_mss(src_port, dst, isn, SYN_MSS)
    }

    /// [`Guest::tcp_syn`] announcing the MSS `mss`.
    pub fn tcp_syn_mss(&self, src_port: u16, dst: SocketAddrV4, isn: u32, mss: u16) -> Vec<u8> {
        self.tcp(
            *dst.ip(),
            &TcpSegment {
                src_port,
                dst_port: dst.port(),
                seq: isn,
                syn: true,
                window: SYN_WINDOW,
                mss: Some(mss),
                window_scale: Some(WINDOW_SCALE),
                sack_permitted: true,
                ..TcpSegment::default()
            },
        )
    }

    /// Any segment without options: `flags` in tcpdump letters (`S`, `F`, `R`, `P`;
    /// the ACK flag follows `ack`), e.g. `tcp_segment(5000, dst, "FP", seq, Some(ack), b"")`.
    pub fn tcp_segment(
        &self,
        src_port: u16,
        dst: SocketAddrV4,
        flags: &str,
        seq: u32,
        ack: Option<u32>,
        payload: &[u8],
    ) -> Vec<u8> {
        self.tcp(
            *dst.ip(),
            &TcpSegment {
                src_port,
                dst_port: dst.port(),
                seq,
                ack,
                syn: flags.contains('S'),
                fin: flags.contains('F'),
                rst: flags.contains('R'),
                psh: flags.contains('P'),
                window: WINDOW,
                payload: payload.to_vec(),
                ..TcpSegment::default()
            },
        )
    }

    /// The segment exactly as described, to `dst_ip`.
    pub fn tcp(&self, dst_ip: Ipv4Addr, segment: &TcpSegment) -> Vec<u8> {
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
        self.ipv4(
            dst_ip,
            IpProtocol::Tcp,
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

    pub fn udp(&self, src_port: u16, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
        let repr = UdpRepr {
            src_port,
            dst_port: dst.port(),
        };
        let len = repr.header_len() + payload.len();
        self.ipv4(*dst.ip(), IpProtocol::Udp, len, |buf, src, dst| {
            repr.emit(
                &mut UdpPacket::new_unchecked(buf),
                src,
                dst,
                payload.len(),
                |out| out.copy_from_slice(payload),
                &checksums(),
            )
        })
    }

    /// "`self.ip` is at `self.mac`", to whoever asked.
    pub fn arp_reply(&self, to_mac: EthernetAddress, to_ip: Ipv4Addr) -> Vec<u8> {
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: self.mac,
            source_protocol_addr: self.ip,
            target_hardware_addr: to_mac,
            target_protocol_addr: to_ip,
        };
        self.ethernet(to_mac, EthernetProtocol::Arp, repr.buffer_len(), |buf| {
            repr.emit(&mut ArpPacket::new_unchecked(buf))
        })
    }

    /// A DHCP client message as a stock client sends it (chaddr and client id are the
    /// guest's MAC, the usual parameter request list); edit what the story needs and
    /// send it with [`Guest::dhcp`].
    pub fn dhcp_message(
        &self,
        message_type: DhcpMessageType,
        transaction_id: u32,
    ) -> DhcpRepr<'static> {
        dhcp_client_message(message_type, transaction_id, self.mac)
    }

    /// A DHCP client message as a client without an address sends it: from 0.0.0.0:68
    /// to 255.255.255.255:67, Ethernet broadcast.
    pub fn dhcp(&self, message: &DhcpRepr<'_>) -> Vec<u8> {
        let mut payload = vec![0; message.buffer_len()];
        message
            .emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
            .expect("a DhcpRepr fits its own buffer_len");
        let unconfigured = Guest {
            ip: Ipv4Addr::UNSPECIFIED,
            gateway_mac: EthernetAddress::BROADCAST,
            ..*self
        };
        let server = SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_SERVER_PORT);
        unconfigured.udp(DHCP_CLIENT_PORT, server, &payload)
    }

    pub fn icmp_echo(&self, dst: Ipv4Addr, ident: u16, seq_no: u16, payload: &[u8]) -> Vec<u8> {
        let message = echo_message(false, ident, seq_no, payload);
        self.ipv4(dst, IpProtocol::Icmp, message.len(), |buf, _, _| {
            buf.copy_from_slice(&message)
        })
    }

    /// An IPv4 frame to `dst` (via the gateway's MAC); `fill` writes the payload given
    /// the pseudo-header addresses.
    pub fn ipv4(
        &self,
        dst: Ipv4Addr,
        protocol: IpProtocol,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8], &IpAddress, &IpAddress),
    ) -> Vec<u8> {
        let repr = Ipv4Repr {
            src_addr: self.ip,
            dst_addr: dst,
            next_header: protocol,
            payload_len,
            hop_limit: GUEST_TTL,
        };
        self.ethernet(
            self.gateway_mac,
            EthernetProtocol::Ipv4,
            repr.buffer_len() + payload_len,
            |buf| {
                let mut packet = Ipv4Packet::new_unchecked(buf);
                repr.emit(&mut packet, &checksums());
                let (src, dst) = (IpAddress::from(self.ip), IpAddress::from(dst));
                fill(packet.payload_mut(), &src, &dst);
            },
        )
    }

    fn ethernet(
        &self,
        dst: EthernetAddress,
        ethertype: EthernetProtocol,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Vec<u8> {
        let repr = EthernetRepr {
            src_addr: self.mac,
            dst_addr: dst,
            ethertype,
        };
        let mut frame = vec![0; ETHERNET_HEADER_LEN + payload_len];
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        repr.emit(&mut eth);
        fill(eth.payload_mut());
        frame
    }
}

/// One guest-side TCP connection: keeps seq/ack so tests need no arithmetic. It is a
/// recorder, not a TCP: it accepts in-order data, counts anything out of order, and
/// builds the next segment on request.
#[derive(Debug, Clone)]
pub struct GuestTcp {
    guest: Guest,
    pub local_port: u16,
    pub remote: SocketAddrV4,
    pub isn: u32,
    snd_nxt: u32,
    /// The remote's ISN, once its SYN-ACK arrived.
    pub peer_isn: Option<u32>,
    rcv_nxt: u32,
    /// Highest acknowledgment the remote sent.
    pub peer_ack: Option<u32>,
    pub peer_window: u16,
    pub peer_mss: Option<u16>,
    pub peer_window_scale: Option<u8>,
    /// The MSS this side announces in its SYN (1460 unless a test sets it).
    pub mss: u16,
    received: Vec<u8>,
    pub peer_fin: bool,
    pub reset: bool,
    /// Segments that started beyond the next expected byte (a gap).
    pub out_of_order: u32,
    /// The window this side announces; at 0 it takes no data (a zero-window probe is
    /// answered with an ACK that does not move).
    pub window: u16,
    needs_ack: bool,
}

impl GuestTcp {
    pub fn new(guest: &Guest, local_port: u16, remote: SocketAddrV4, isn: u32) -> GuestTcp {
        GuestTcp {
            guest: *guest,
            local_port,
            remote,
            isn,
            snd_nxt: isn,
            peer_isn: None,
            rcv_nxt: 0,
            peer_ack: None,
            peer_window: 0,
            peer_mss: None,
            peer_window_scale: None,
            mss: SYN_MSS,
            received: Vec::new(),
            peer_fin: false,
            reset: false,
            out_of_order: 0,
            window: WINDOW,
            needs_ack: false,
        }
    }

    /// The SYN (again, if called twice: a retransmission).
    pub fn syn(&mut self) -> Vec<u8> {
        self.snd_nxt = self.isn.wrapping_add(1);
        self.guest
            .tcp_syn_mss(self.local_port, self.remote, self.isn, self.mss)
    }

    /// Whether the frame is a segment of this connection (remote → guest).
    pub fn matches(&self, frame: &Parsed) -> bool {
        frame.tcp().is_some_and(|(ip, tcp)| {
            ip.src_addr == *self.remote.ip()
                && ip.dst_addr == self.guest.ip
                && tcp.src_port == self.remote.port()
                && tcp.dst_port == self.local_port
        })
    }

    /// Learns from a frame of this connection; returns false (and ignores it) if the
    /// frame belongs to something else.
    pub fn on_frame(&mut self, frame: &Parsed) -> bool {
        if !self.matches(frame) {
            return false;
        }
        let Some((_, tcp)) = frame.tcp() else {
            return false;
        };
        if let Some(ack) = tcp.ack {
            let newer = match self.peer_ack {
                Some(seen) => ack.wrapping_sub(seen) as i32 > 0,
                None => true,
            };
            if newer {
                self.peer_ack = Some(ack);
            }
        }
        self.peer_window = tcp.window;
        if tcp.rst {
            self.reset = true;
            return true;
        }
        if tcp.syn {
            self.on_syn(tcp);
        } else if self.peer_isn.is_some() {
            self.on_data(tcp);
        }
        true
    }

    fn on_syn(&mut self, tcp: &TcpSegment) {
        if tcp.ack != Some(self.isn.wrapping_add(1)) {
            return;
        }
        self.peer_isn = Some(tcp.seq);
        self.rcv_nxt = tcp.seq.wrapping_add(1);
        self.peer_mss = tcp.mss;
        self.peer_window_scale = tcp.window_scale;
        self.needs_ack = true;
    }

    fn on_data(&mut self, tcp: &TcpSegment) {
        if self.window == 0 && !tcp.payload.is_empty() {
            self.needs_ack = true;
            return;
        }
        let offset = tcp.seq.wrapping_sub(self.rcv_nxt) as i32;
        if offset > 0 {
            self.out_of_order += 1;
            self.needs_ack = true;
            return;
        }
        let already = offset.unsigned_abs() as usize;
        if tcp.payload.len() > already {
            let fresh = &tcp.payload[already..];
            self.received.extend_from_slice(fresh);
            self.rcv_nxt = self.rcv_nxt.wrapping_add(fresh.len() as u32);
        }
        if !tcp.payload.is_empty() {
            self.needs_ack = true;
        }
        if tcp.fin {
            let fin_seq = tcp.seq.wrapping_add(tcp.payload.len() as u32);
            if fin_seq == self.rcv_nxt && !self.peer_fin {
                self.peer_fin = true;
                self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
            }
            self.needs_ack = true;
        }
    }

    /// A pure ACK of everything received so far.
    pub fn ack(&mut self) -> Vec<u8> {
        self.needs_ack = false;
        self.segment("", &[])
    }

    /// Data with PSH|ACK.
    pub fn send(&mut self, data: &[u8]) -> Vec<u8> {
        let frame = self.segment("P", data);
        self.snd_nxt = self.snd_nxt.wrapping_add(data.len() as u32);
        self.needs_ack = false;
        frame
    }

    /// FIN|ACK.
    pub fn fin(&mut self) -> Vec<u8> {
        let frame = self.segment("F", &[]);
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        self.needs_ack = false;
        frame
    }

    /// RST|ACK.
    pub fn rst(&mut self) -> Vec<u8> {
        self.segment("R", &[])
    }

    fn segment(&self, flags: &str, payload: &[u8]) -> Vec<u8> {
        self.guest.tcp(
            *self.remote.ip(),
            &TcpSegment {
                src_port: self.local_port,
                dst_port: self.remote.port(),
                seq: self.snd_nxt,
                ack: self.peer_isn.map(|_| self.rcv_nxt),
                syn: flags.contains('S'),
                fin: flags.contains('F'),
                rst: flags.contains('R'),
                psh: flags.contains('P'),
                window: self.window,
                payload: payload.to_vec(),
                ..TcpSegment::default()
            },
        )
    }

    /// The SYN-ACK arrived.
    pub fn established(&self) -> bool {
        self.peer_isn.is_some()
    }

    /// Something arrived that the guest should acknowledge.
    pub fn needs_ack(&self) -> bool {
        self.needs_ack
    }

    /// Next sequence number the guest sends.
    pub fn next_seq(&self) -> u32 {
        self.snd_nxt
    }

    /// Next sequence number the guest expects (what it acknowledges).
    pub fn rcv_nxt(&self) -> u32 {
        self.rcv_nxt
    }

    /// The remote acknowledged everything the guest sent (SYN, data and FIN).
    pub fn all_acked(&self) -> bool {
        self.peer_ack == Some(self.snd_nxt)
    }

    /// In-order bytes received from the remote so far.
    pub fn received(&self) -> &[u8] {
        &self.received
    }

    pub fn take_received(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.received)
    }

    /// The guest's side of a connection the stack opens towards it (a port forward):
    /// the guest accepts the stack's `syn` with its own ISN `isn`. Returns the
    /// connection, established, and the SYN-ACK to send.
    pub fn accept(guest: &Guest, syn: &Parsed, isn: u32) -> (GuestTcp, Vec<u8>) {
        GuestTcp::accept_with_mss(guest, syn, isn, SYN_MSS)
    }

    /// [`GuestTcp::accept`] announcing the MSS `mss` in the SYN-ACK.
    pub fn accept_with_mss(guest: &Guest, syn: &Parsed, isn: u32, mss: u16) -> (GuestTcp, Vec<u8>) {
        let Some((ip, tcp)) = syn.tcp().filter(|(_, tcp)| tcp.syn && tcp.ack.is_none()) else {
            panic!("test bug: GuestTcp::accept needs the stack's SYN, got {syn:?}");
        };
        let remote = SocketAddrV4::new(ip.src_addr, tcp.src_port);
        let mut conn = GuestTcp::new(guest, tcp.dst_port, remote, isn);
        conn.snd_nxt = isn.wrapping_add(1);
        conn.peer_isn = Some(tcp.seq);
        conn.rcv_nxt = tcp.seq.wrapping_add(1);
        conn.peer_mss = tcp.mss;
        conn.peer_window_scale = tcp.window_scale;
        conn.mss = mss;
        let syn_ack = guest.tcp(
            *remote.ip(),
            &TcpSegment {
                src_port: conn.local_port,
                dst_port: remote.port(),
                seq: isn,
                ack: Some(conn.rcv_nxt),
                syn: true,
                window: SYN_WINDOW,
                mss: Some(mss),
                // RFC 7323: scale only if the SYN offered it.
                window_scale: tcp.window_scale.map(|_| WINDOW_SCALE),
                sack_permitted: tcp.sack_permitted,
                ..TcpSegment::default()
            },
        );
        (conn, syn_ack)
    }
}

/// A DHCP client message as a stock client (udhcpc, dhclient) sends it before it has an
/// address: `chaddr` as hardware address and client identifier, the usual parameter request
/// list, a 1500-byte maximum; every other field empty. Tests and the fuzz harness edit what
/// their story needs.
pub fn dhcp_client_message(
    message_type: DhcpMessageType,
    transaction_id: u32,
    chaddr: EthernetAddress,
) -> DhcpRepr<'static> {
    DhcpRepr {
        message_type,
        transaction_id,
        secs: 0,
        client_hardware_address: chaddr,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: Some(chaddr),
        server_identifier: None,
        parameter_request_list: Some(&[1, 3, 6, 26, 51, 58, 59]),
        dns_servers: None,
        max_size: Some(1500),
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    }
}

//! The guest's frame builders ([`Guest`]), on smoltcp's wire types: IPv4, ARP and DHCP
//! here, IPv6 and neighbour discovery in [`super::ipv6`].

use crate::config::{service_mac, VirtualNetwork};
use core::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Message, Icmpv4Packet, Icmpv6Message,
    IpAddress, IpProtocol, IpRepr, IpVersion, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    UdpPacket, UdpRepr, ETHERNET_HEADER_LEN, UDP_HEADER_LEN,
};

/// The guest's MAC in scenarios (locally administered, like a tap's random one).
pub const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
/// The gateway's and the DNS forwarder's MACs on the default network (52:55 and their
/// IPv4 addresses 10.0.2.2 and 10.0.2.3), both families.
pub const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);
pub const DNS_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 3]);

const GUEST_TTL: u8 = 64;
/// What Linux puts in a SYN on Ethernet: MSS 1460, window 64240, window scale 7.
pub(super) const SYN_MSS: u16 = 1460;
pub(super) const SYN_WINDOW: u16 = 64240;
pub(super) const WINDOW_SCALE: u8 = 7;
/// Window field after the handshake: 2048 << 7 = 256 KiB.
pub(super) const WINDOW: u16 = 2048;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;

pub(super) fn checksums() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
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

    /// A SYN as Linux sends it: window 64240, MSS `mss`, SACK permitted, window scale 7.
    pub fn linux_syn(src_port: u16, dst_port: u16, isn: u32, mss: u16) -> TcpSegment {
        TcpSegment {
            src_port,
            dst_port,
            seq: isn,
            syn: true,
            window: SYN_WINDOW,
            mss: Some(mss),
            window_scale: Some(WINDOW_SCALE),
            sack_permitted: true,
            ..TcpSegment::default()
        }
    }

    fn repr(&self) -> TcpRepr<'_> {
        TcpRepr {
            src_port: self.src_port,
            dst_port: self.dst_port,
            control: TcpControl::None,
            seq_number: TcpSeqNumber(self.seq as i32),
            ack_number: self.ack.map(|ack| TcpSeqNumber(ack as i32)),
            window_len: self.window,
            window_scale: self.window_scale,
            max_seg_size: self.mss,
            sack_permitted: self.sack_permitted,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &self.payload,
        }
    }

    /// Length of the TCP header (with options) and payload.
    pub fn buffer_len(&self) -> usize {
        self.repr().buffer_len()
    }

    /// Writes the segment into `buf`, checksummed for the pseudo-header `src`, `dst`.
    pub fn emit(&self, buf: &mut [u8], src: &IpAddress, dst: &IpAddress) {
        let mut packet = TcpPacket::new_unchecked(buf);
        self.repr().emit(&mut packet, src, dst, &checksums());
        // TcpRepr has one control flag; set them all, then checksum again.
        packet.set_syn(self.syn);
        packet.set_fin(self.fin);
        packet.set_rst(self.rst);
        packet.set_psh(self.psh);
        packet.fill_checksum(src, dst);
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

/// A UDP datagram the guest sends, over either family.
pub(super) struct UdpDatagram<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

impl UdpDatagram<'_> {
    /// Length of the UDP header and payload.
    pub fn buffer_len(&self) -> usize {
        UDP_HEADER_LEN + self.payload.len()
    }

    /// Writes the datagram into `buf`, checksummed for the pseudo-header `src`, `dst`.
    pub fn emit(&self, buf: &mut [u8], src: &IpAddress, dst: &IpAddress) {
        let repr = UdpRepr {
            src_port: self.src_port,
            dst_port: self.dst_port,
        };
        let payload = self.payload;
        repr.emit(
            &mut UdpPacket::new_unchecked(buf),
            src,
            dst,
            payload.len(),
            |out| out.copy_from_slice(payload),
            &checksums(),
        )
    }
}

/// An ICMP (`version` 4) or ICMPv6 echo request or reply message (header + payload) as a
/// ping socket of that family carries it: ICMP checksummed, ICMPv6 without a checksum
/// (the kernel checks and fills it).
pub fn echo_message(
    version: IpVersion,
    reply: bool,
    ident: u16,
    seq_no: u16,
    data: &[u8],
) -> Vec<u8> {
    let msg_type = match (version, reply) {
        (IpVersion::Ipv4, false) => u8::from(Icmpv4Message::EchoRequest),
        (IpVersion::Ipv4, true) => u8::from(Icmpv4Message::EchoReply),
        (IpVersion::Ipv6, false) => u8::from(Icmpv6Message::EchoRequest),
        (IpVersion::Ipv6, true) => u8::from(Icmpv6Message::EchoReply),
    };
    // Both families lay an echo out alike (RFC 792, RFC 4443 4.1): type, code 0, the
    // checksum, identifier, sequence number, data.
    let mut message = vec![msg_type, 0, 0, 0];
    message.extend_from_slice(&ident.to_be_bytes());
    message.extend_from_slice(&seq_no.to_be_bytes());
    message.extend_from_slice(data);
    if version == IpVersion::Ipv4 {
        Icmpv4Packet::new_unchecked(&mut message[..]).fill_checksum();
    }
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
            &TcpSegment::linux_syn(src_port, dst.port(), isn, mss),
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
        self.ipv4(
            dst_ip,
            IpProtocol::Tcp,
            segment.buffer_len(),
            |buf, src, dst| segment.emit(buf, src, dst),
        )
    }

    /// The segment exactly as described, to `dst_ip` of either family (from the guest's
    /// address of that family).
    pub fn tcp_to(&self, dst_ip: IpAddr, segment: &TcpSegment) -> Vec<u8> {
        match dst_ip {
            IpAddr::V4(dst_ip) => self.tcp(dst_ip, segment),
            IpAddr::V6(dst_ip) => self.tcp6(dst_ip, segment),
        }
    }

    /// An echo request to `dst` of either family ([`Guest::icmp_echo`] or
    /// [`Guest::icmpv6_echo`]).
    pub fn echo_request(&self, dst: IpAddr, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
        match dst {
            IpAddr::V4(dst) => self.icmp_echo(dst, ident, seq_no, data),
            IpAddr::V6(dst) => self.icmpv6_echo(dst, ident, seq_no, data),
        }
    }

    /// The guest's own address in the family of `peer`: where a peer's segments go.
    pub fn addr_for(&self, peer: IpAddr) -> IpAddr {
        match peer {
            IpAddr::V4(_) => IpAddr::V4(self.ip),
            IpAddr::V6(_) => IpAddr::V6(self.ipv6_addr()),
        }
    }

    pub fn udp(&self, src_port: u16, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
        let datagram = UdpDatagram {
            src_port,
            dst_port: dst.port(),
            payload,
        };
        self.ipv4(
            *dst.ip(),
            IpProtocol::Udp,
            datagram.buffer_len(),
            |buf, src, dst| datagram.emit(buf, src, dst),
        )
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
        let message = echo_message(IpVersion::Ipv4, false, ident, seq_no, payload);
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
        let ip = IpRepr::new(self.ip.into(), dst.into(), protocol, payload_len, GUEST_TTL);
        self.ip_frame(ip, self.gateway_mac, fill)
    }

    /// The IP packet `ip` (either family) in a frame to `dst_mac`; `fill` writes the
    /// payload given the pseudo-header addresses.
    pub fn ip_frame(
        &self,
        ip: IpRepr,
        dst_mac: EthernetAddress,
        fill: impl FnOnce(&mut [u8], &IpAddress, &IpAddress),
    ) -> Vec<u8> {
        let ethertype = match ip.version() {
            IpVersion::Ipv4 => EthernetProtocol::Ipv4,
            IpVersion::Ipv6 => EthernetProtocol::Ipv6,
        };
        self.ethernet(dst_mac, ethertype, ip.buffer_len(), |buf| {
            ip.emit(&mut *buf, &checksums());
            fill(&mut buf[ip.header_len()..], &ip.src_addr(), &ip.dst_addr());
        })
    }

    pub(super) fn ethernet(
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

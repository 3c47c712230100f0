//! Tap offloads as the guest's kernel sees them: the virtio-net header of each frame
//! (`struct virtio_net_hdr`, built by rslirp's own `tap::vnet_header`), checked as tun's
//! `virtio_net_hdr_to_skb` and TCP segmentation need it, the partial checksum completed
//! and a large TCP segment cut as `tcp_gso_segment` cuts it; and the other way, the
//! headers and partial checksums a guest kernel with offloads writes.

use rslirp::tap::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VNET_HDR_LEN,
};
use smoltcp::wire::{
    checksum, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet,
    TcpPacket, ETHERNET_HEADER_LEN,
};

/// The largest IP packet: what a GSO frame may hold at most.
pub const MAX_IP_PACKET: usize = 65_535;
const IPV6_HEADER_LEN: usize = 40;
const TCP_CHECKSUM_OFFSET: u16 = 16;
const UDP_CHECKSUM_OFFSET: u16 = 6;

/// `struct virtio_net_hdr`, fields in native byte order (legacy virtio, as the tap has it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHeader {
    pub fn parse(bytes: &[u8; VNET_HDR_LEN]) -> VnetHeader {
        let word = |at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
        VnetHeader {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: word(2),
            gso_size: word(4),
            csum_start: word(6),
            csum_offset: word(8),
        }
    }

    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut bytes = [0u8; VNET_HDR_LEN];
        bytes[0] = self.flags;
        bytes[1] = self.gso_type;
        bytes[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        bytes[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        bytes[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        bytes[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        bytes
    }
}

/// An IPv4 or IPv6 (no extension headers) frame's IP header length, transport protocol
/// and addresses; `None` for anything else.
fn ip_layer(frame: &[u8]) -> Option<(usize, IpProtocol, IpAddress, IpAddress)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            Some((
                usize::from(ip.header_len()),
                ip.next_header(),
                IpAddress::Ipv4(ip.src_addr()),
                IpAddress::Ipv4(ip.dst_addr()),
            ))
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            Some((
                IPV6_HEADER_LEN,
                ip.next_header(),
                IpAddress::Ipv6(ip.src_addr()),
                IpAddress::Ipv6(ip.dst_addr()),
            ))
        }
        _ => None,
    }
}

/// What a guest kernel with checksum offload leaves in a TCP or UDP frame's checksum field:
/// the pseudo-header sum only. Returns where the sum starts and where its field is (for
/// the header's `csum_start`/`csum_offset`), or `None` (frame unchanged) for other frames.
pub fn leave_checksum_partial(frame: &mut [u8]) -> Option<(u16, u16)> {
    let (ip_len, protocol, src, dst) = ip_layer(frame)?;
    let offset = match protocol {
        IpProtocol::Tcp => TCP_CHECKSUM_OFFSET,
        IpProtocol::Udp => UDP_CHECKSUM_OFFSET,
        _ => return None,
    };
    let start = ETHERNET_HEADER_LEN + ip_len;
    let field = start + usize::from(offset);
    if frame.len() < field + 2 {
        return None;
    }
    let len = u32::try_from(frame.len() - start).ok()?;
    let pseudo = checksum::pseudo_header(&src, &dst, protocol, len);
    frame[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
    Some((u16::try_from(start).ok()?, offset))
}

/// The header a guest kernel writes before a TCP segment larger than `mtu` with a partial
/// checksum: GSO of the right family, `gso_size` payload bytes per segment.
pub fn gso_header(frame: &[u8], gso_size: u16, csum: Option<(u16, u16)>) -> VnetHeader {
    let mut header = VnetHeader::default();
    if let Some((start, offset)) = csum {
        header.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        header.csum_start = start;
        header.csum_offset = offset;
    }
    if let Some((ip_len, IpProtocol::Tcp, src, _)) = ip_layer(frame) {
        let tcp_at = ETHERNET_HEADER_LEN + ip_len;
        if let Ok(tcp) = TcpPacket::new_checked(&frame[tcp_at..]) {
            header.gso_type = if matches!(src, IpAddress::Ipv6(_)) {
                VIRTIO_NET_HDR_GSO_TCPV6
            } else {
                VIRTIO_NET_HDR_GSO_TCPV4
            };
            header.gso_size = gso_size;
            header.hdr_len = (tcp_at + usize::from(tcp.header_len())) as u16;
        }
    }
    header
}

/// The guest's kernel receives `frame` written to the tap behind `header`: panics where
/// tun would refuse the pair (the write fails with EINVAL: the guest never gets the frame)
/// or where it describes the frame wrongly; returns the frames the guest's IP layer then
/// sees: checksum completed, a GSO frame cut into segments.
pub fn receive(frame: &[u8], header: &VnetHeader) -> Vec<Vec<u8>> {
    let mut frame = frame.to_vec();
    assert_eq!(
        header.flags & !VIRTIO_NET_HDR_F_NEEDS_CSUM,
        0,
        "unknown virtio-net header flags: {header:?}"
    );
    let ip = ip_layer(&frame);
    if header.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        let start = usize::from(header.csum_start);
        let field = start + usize::from(header.csum_offset);
        assert!(
            field + 2 <= frame.len(),
            "partial checksum field beyond the frame of {} bytes: {header:?}",
            frame.len()
        );
        // Ours only leave TCP checksums partial: the field must be the TCP checksum, or
        // completing it corrupts the frame (which the parse of each frame would show too,
        // but this names the cause).
        let (ip_len, protocol, _, _) =
            ip.unwrap_or_else(|| panic!("partial checksum on a non-IP frame: {header:?}"));
        assert_eq!(protocol, IpProtocol::Tcp, "partial checksum: {header:?}");
        assert_eq!(
            (start, header.csum_offset),
            (ETHERNET_HEADER_LEN + ip_len, TCP_CHECKSUM_OFFSET),
            "partial checksum not at the TCP checksum"
        );
        let sum = !checksum::data(&frame[start..]);
        frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    } else {
        assert_eq!(
            (header.csum_start, header.csum_offset),
            (0, 0),
            "checksum fields without NEEDS_CSUM"
        );
    }
    if header.gso_type == 0 {
        assert_eq!(
            (header.gso_size, header.hdr_len),
            (0, 0),
            "GSO fields without a GSO type"
        );
        return vec![frame];
    }
    assert!(
        header.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0,
        "a segment to cut must leave its checksum to the device: {header:?}"
    );
    let (ip_len, protocol, _, _) = ip.expect("GSO on an IP frame");
    let v6 = EthernetFrame::new_unchecked(&frame[..]).ethertype() == EthernetProtocol::Ipv6;
    let expected_type = if v6 {
        VIRTIO_NET_HDR_GSO_TCPV6
    } else {
        VIRTIO_NET_HDR_GSO_TCPV4
    };
    assert_eq!(header.gso_type, expected_type, "GSO type of another family");
    assert_eq!(protocol, IpProtocol::Tcp, "GSO of a non-TCP frame");
    assert!(header.gso_size > 0, "GSO with segment size 0: {header:?}");
    assert!(
        frame.len() <= ETHERNET_HEADER_LEN + MAX_IP_PACKET,
        "a GSO frame of {} bytes, more than one IP packet",
        frame.len()
    );
    let ip_total = if v6 {
        IPV6_HEADER_LEN
            + usize::from(Ipv6Packet::new_unchecked(&frame[ETHERNET_HEADER_LEN..]).payload_len())
    } else {
        usize::from(Ipv4Packet::new_unchecked(&frame[ETHERNET_HEADER_LEN..]).total_len())
    };
    assert_eq!(
        ETHERNET_HEADER_LEN + ip_total,
        frame.len(),
        "a GSO frame whose IP length is not the frame's"
    );
    let tcp_at = ETHERNET_HEADER_LEN + ip_len;
    let tcp = TcpPacket::new_checked(&frame[tcp_at..]).expect("a GSO frame holds a TCP header");
    let headers = tcp_at + usize::from(tcp.header_len());
    assert_eq!(
        usize::from(header.hdr_len),
        headers,
        "GSO hdr_len is not the frame's headers"
    );
    segment(&frame, headers, usize::from(header.gso_size), v6)
}

/// `tcp_gso_segment`: the payload cut into `size`-byte pieces behind copies of the headers,
/// each with its IP length, IPv4 identification (incremented) and header checksum, TCP
/// sequence number, FIN and PSH on the last piece only, CWR on the first only, and a full
/// TCP checksum.
fn segment(frame: &[u8], headers: usize, size: usize, v6: bool) -> Vec<Vec<u8>> {
    let payload = &frame[headers..];
    let (ip_len, _, src, dst) = ip_layer(frame).expect("an IP frame");
    let tcp_at = ETHERNET_HEADER_LEN + ip_len;
    let first = TcpPacket::new_unchecked(&frame[tcp_at..]);
    let seq = first.seq_number();
    let (fin, psh) = (first.fin(), first.psh());
    let ident = Ipv4Packet::new_unchecked(&frame[ETHERNET_HEADER_LEN..]).ident();
    let count = payload.len().div_ceil(size).max(1);
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        let piece = payload.get(index * size..).unwrap_or(&[]);
        let piece = &piece[..piece.len().min(size)];
        let mut seg = frame[..headers].to_vec();
        seg.extend_from_slice(piece);
        let ip_bytes = &mut seg[ETHERNET_HEADER_LEN..];
        if v6 {
            let mut ip = Ipv6Packet::new_unchecked(ip_bytes);
            ip.set_payload_len((headers - tcp_at + piece.len()) as u16);
        } else {
            let mut ip = Ipv4Packet::new_unchecked(ip_bytes);
            ip.set_total_len((headers - ETHERNET_HEADER_LEN + piece.len()) as u16);
            ip.set_ident(ident.wrapping_add(index as u16));
            ip.fill_checksum();
        }
        let last = index + 1 == count;
        let mut tcp = TcpPacket::new_unchecked(&mut seg[tcp_at..]);
        tcp.set_seq_number(seq + index * size);
        tcp.set_fin(fin && last);
        tcp.set_psh(psh && last);
        if index > 0 {
            tcp.set_cwr(false);
        }
        tcp.fill_checksum(&src, &dst);
        out.push(seg);
    }
    out
}

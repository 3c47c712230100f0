//! IP fragments on the guest's side, written independently of the stack's own code (so
//! that a test does not check the stack against itself): the guest's kernel reassembling
//! what the stack fragmented, and cutting its own large datagrams.

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6FragmentHeader, Ipv6Packet,
    ETHERNET_HEADER_LEN,
};

const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const FRAGMENT_HEADER: usize = 8;

/// Which datagram a fragment belongs to: ethertype, addresses, identification,
/// protocol (IPv4).
type Key = (u16, Vec<u8>, u32, u8);

struct Piece {
    offset: usize,
    more: bool,
    data: Vec<u8>,
    /// Ethernet and IP header of the whole packet (from the fragment at offset 0).
    header: Vec<u8>,
}

/// A fragment's key and piece, or `None` for a frame that is no fragment.
fn fragment_of(frame: &[u8]) -> Option<(Key, Piece)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if !ip.more_frags() && ip.frag_offset() == 0 {
                return None;
            }
            let header_len = usize::from(ip.header_len());
            let mut header = frame[..ETHERNET_HEADER_LEN + header_len].to_vec();
            {
                let mut whole = Ipv4Packet::new_unchecked(&mut header[ETHERNET_HEADER_LEN..]);
                whole.set_more_frags(false);
                whole.set_frag_offset(0);
            }
            let addrs = eth.payload()[12..20].to_vec();
            let key = (
                0x0800,
                addrs,
                u32::from(ip.ident()),
                ip.next_header().into(),
            );
            let piece = Piece {
                offset: usize::from(ip.frag_offset()),
                more: ip.more_frags(),
                data: ip.payload().to_vec(),
                header,
            };
            Some((key, piece))
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Ipv6Frag {
                return None;
            }
            let payload = ip.payload();
            let fragment = Ipv6FragmentHeader::new_checked(payload.get(2..8)?).ok()?;
            let mut header = frame[..ETHERNET_HEADER_LEN + IPV6_HEADER].to_vec();
            Ipv6Packet::new_unchecked(&mut header[ETHERNET_HEADER_LEN..])
                .set_next_header(IpProtocol::from(payload[0]));
            let addrs = eth.payload()[8..40].to_vec();
            let key = (0x86dd, addrs, fragment.ident(), 0);
            let piece = Piece {
                offset: usize::from(fragment.frag_offset()) * 8,
                more: fragment.more_frags(),
                data: payload[FRAGMENT_HEADER..].to_vec(),
                header,
            };
            Some((key, piece))
        }
        _ => None,
    }
}

/// The whole frame, once the pieces cover a datagram from 0 to a last fragment.
/// Panics on overlapping pieces: the stack must never send those.
fn whole(pieces: &mut [Piece]) -> Option<Vec<u8>> {
    pieces.sort_by_key(|p| p.offset);
    let mut end = 0;
    for piece in pieces.iter() {
        assert!(
            piece.offset >= end,
            "overlapping fragments from the stack at offset {}",
            piece.offset
        );
        if piece.offset != end {
            return None;
        }
        end += piece.data.len();
    }
    let last = pieces.last()?;
    if last.more || pieces[0].offset != 0 {
        return None;
    }
    let mut frame = pieces[0].header.clone();
    for piece in pieces.iter() {
        frame.extend_from_slice(&piece.data);
    }
    let ip = &mut frame[ETHERNET_HEADER_LEN..];
    if ip[0] >> 4 == 4 {
        let mut packet = Ipv4Packet::new_unchecked(ip);
        let total = packet.header_len() as usize + end;
        packet.set_total_len(u16::try_from(total).expect("an IPv4 datagram fits 64 KiB"));
        packet.fill_checksum();
    } else {
        Ipv6Packet::new_unchecked(ip)
            .set_payload_len(u16::try_from(end).expect("an IPv6 payload fits 64 KiB"));
    }
    Some(frame)
}

/// The frames as the guest's IP layer sees them: every complete datagram's fragments
/// replaced by the whole frame (where its last fragment arrived); other frames, and
/// the fragments of datagrams still incomplete, as they are.
pub fn defragment(frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(frames.len());
    // Per datagram: its pieces and where its fragments are in `out`.
    let mut groups: Vec<(Key, Vec<Piece>, Vec<usize>)> = Vec::new();
    for frame in frames {
        let Some((key, piece)) = fragment_of(&frame) else {
            out.push(Some(frame));
            continue;
        };
        let index = match groups.iter().position(|g| g.0 == key) {
            Some(index) => index,
            None => {
                groups.push((key, Vec::new(), Vec::new()));
                groups.len() - 1
            }
        };
        out.push(Some(frame));
        let group = &mut groups[index];
        group.1.push(piece);
        group.2.push(out.len() - 1);
        if let Some(frame) = whole(&mut group.1) {
            let (_, _, slots) = groups.remove(index);
            for slot in slots {
                out[slot] = None;
            }
            if let Some(last) = out.last_mut() {
                *last = Some(frame);
            }
        }
    }
    out.into_iter().flatten().collect()
}

/// One fragment of the IPv4 `frame` (Ethernet, an IPv4 header without options, its
/// payload): payload bytes [offset, offset + len), with MF set to `more`.
pub fn ipv4_piece(frame: &[u8], offset: usize, len: usize, more: bool, ident: u16) -> Vec<u8> {
    let head = ETHERNET_HEADER_LEN + IPV4_HEADER;
    let mut out = frame[..head].to_vec();
    out.extend_from_slice(&frame[head + offset..head + offset + len]);
    // The header's words as RFC 791 lays them out: total length, identification, then
    // the flags (DF clear, MF as asked) with the offset in 8-byte units.
    let ip = &mut out[ETHERNET_HEADER_LEN..];
    ip[2..4].copy_from_slice(&((IPV4_HEADER + len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&ident.to_be_bytes());
    let flags_and_offset = (u16::from(more) << 13) | (offset / 8) as u16;
    ip[6..8].copy_from_slice(&flags_and_offset.to_be_bytes());
    Ipv4Packet::new_unchecked(ip).fill_checksum();
    out
}

/// One fragment of the IPv6 `frame` (Ethernet, the fixed header, its payload), with a
/// Fragment header.
pub fn ipv6_piece(frame: &[u8], offset: usize, len: usize, more: bool, ident: u32) -> Vec<u8> {
    let head = ETHERNET_HEADER_LEN + IPV6_HEADER;
    let next_header = Ipv6Packet::new_unchecked(&frame[ETHERNET_HEADER_LEN..]).next_header();
    let mut out = frame[..head].to_vec();
    let offset_field = ((offset / 8) as u16) << 3 | u16::from(more);
    out.push(next_header.into());
    out.push(0);
    out.extend_from_slice(&offset_field.to_be_bytes());
    out.extend_from_slice(&ident.to_be_bytes());
    out.extend_from_slice(&frame[head + offset..head + offset + len]);
    let mut ip = Ipv6Packet::new_unchecked(&mut out[ETHERNET_HEADER_LEN..]);
    ip.set_next_header(IpProtocol::Ipv6Frag);
    ip.set_payload_len((FRAGMENT_HEADER + len) as u16);
    out
}

/// The payload length of an IPv4 or IPv6 frame (what its fragments carry).
pub fn payload_len(frame: &[u8]) -> usize {
    let ip = &frame[ETHERNET_HEADER_LEN..];
    if ip[0] >> 4 == 4 {
        usize::from(Ipv4Packet::new_unchecked(ip).total_len()) - IPV4_HEADER
    } else {
        usize::from(Ipv6Packet::new_unchecked(ip).payload_len())
    }
}

/// The frame cut as a guest's kernel does for a link of `mtu` bytes, in order: IPv4
/// fragments with DF clear, or IPv6 ones with a Fragment header.
pub fn fragment(frame: &[u8], mtu: usize, ident: u32) -> Vec<Vec<u8>> {
    let ipv4 = frame[ETHERNET_HEADER_LEN] >> 4 == 4;
    let headers = if ipv4 {
        IPV4_HEADER
    } else {
        IPV6_HEADER + FRAGMENT_HEADER
    };
    let chunk = (mtu - headers) & !7;
    let len = payload_len(frame);
    (0..len)
        .step_by(chunk)
        .map(|offset| {
            let n = chunk.min(len - offset);
            let more = offset + n < len;
            if ipv4 {
                ipv4_piece(frame, offset, n, more, ident as u16)
            } else {
                ipv6_piece(frame, offset, n, more, ident)
            }
        })
        .collect()
}

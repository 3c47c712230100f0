//! Fragmentation of the datagrams rslirp sends to the guest when they are larger than its
//! MTU: UDP datagrams from host sockets (DNS answers among them) and echo replies. rslirp
//! is their source (the host's kernel reassembled what came from outside), so they are
//! fragmented as a host would: IPv4 fragments with MF and an offset (DF clear, the header
//! copied), or, for IPv6, a Fragment header after the fixed header (RFC 8200 §4.5). Each
//! fragment's data is a multiple of 8 bytes except the last one's. Nothing here allocates:
//! the transmit queue builds the whole packet once and writes each fragment from it.

use super::{IPV4_HEADER_LEN, IPV6_FRAGMENT, IPV6_FRAGMENT_HEADER_LEN, IPV6_HEADER_LEN};
use smoltcp::wire::{Ipv4Packet, Ipv6FragmentHeader, Ipv6Packet};

/// Data bytes per fragment of an IPv4 packet (header without options) on a link of `mtu`
/// bytes, or `None` if the MTU leaves no room for 8.
pub fn ipv4_chunk(mtu: usize) -> Option<usize> {
    let chunk = mtu.checked_sub(IPV4_HEADER_LEN)? & !7;
    (chunk >= 8).then_some(chunk)
}

/// Data bytes per fragment of an IPv6 packet (fixed header, then the Fragment header).
pub fn ipv6_chunk(mtu: usize) -> Option<usize> {
    let chunk = mtu.checked_sub(IPV6_HEADER_LEN + IPV6_FRAGMENT_HEADER_LEN)? & !7;
    (chunk >= 8).then_some(chunk)
}

/// The fragments of `payload_len` bytes cut in `chunk`s: (offset, length, more).
pub fn pieces(payload_len: usize, chunk: usize) -> impl Iterator<Item = (usize, usize, bool)> {
    (0..payload_len).step_by(chunk.max(8)).map(move |offset| {
        let len = chunk.min(payload_len - offset);
        (offset, len, offset + len < payload_len)
    })
}

/// Write into `out` (`IPV4_HEADER_LEN + len` bytes) the fragment of the IPv4 `packet`
/// (a header without options and its payload) holding payload bytes [offset, offset+len).
pub fn write_ipv4(
    packet: &[u8],
    (offset, len, more): (usize, usize, bool),
    ident: u16,
    out: &mut [u8],
) {
    out[..IPV4_HEADER_LEN].copy_from_slice(&packet[..IPV4_HEADER_LEN]);
    let data = &packet[IPV4_HEADER_LEN + offset..IPV4_HEADER_LEN + offset + len];
    out[IPV4_HEADER_LEN..].copy_from_slice(data);
    let mut fragment = Ipv4Packet::new_unchecked(out);
    fragment.set_total_len((IPV4_HEADER_LEN + len) as u16);
    fragment.set_ident(ident);
    fragment.set_dont_frag(false);
    fragment.set_more_frags(more);
    fragment.set_frag_offset(offset as u16);
    fragment.fill_checksum();
}

/// Write into `out` (`IPV6_HEADER_LEN + 8 + len` bytes) the fragment of the IPv6 `packet`
/// (the fixed header, no extension headers, and its payload) holding payload bytes
/// [offset, offset+len).
pub fn write_ipv6(
    packet: &[u8],
    (offset, len, more): (usize, usize, bool),
    ident: u32,
    out: &mut [u8],
) {
    let next_header = Ipv6Packet::new_unchecked(packet).next_header();
    out[..IPV6_HEADER_LEN].copy_from_slice(&packet[..IPV6_HEADER_LEN]);
    let start = IPV6_HEADER_LEN + offset;
    out[IPV6_HEADER_LEN + IPV6_FRAGMENT_HEADER_LEN..].copy_from_slice(&packet[start..start + len]);
    let mut header = Ipv6Packet::new_unchecked(&mut out[..]);
    header.set_next_header(IPV6_FRAGMENT.into());
    header.set_payload_len((IPV6_FRAGMENT_HEADER_LEN + len) as u16);
    // smoltcp's Fragment header starts after the next-header and reserved bytes.
    let ext = &mut out[IPV6_HEADER_LEN..IPV6_HEADER_LEN + IPV6_FRAGMENT_HEADER_LEN];
    ext[0] = next_header.into();
    ext[1] = 0;
    let mut fragment = Ipv6FragmentHeader::new_unchecked(&mut ext[2..]);
    fragment.set_frag_offset((offset / 8) as u16);
    fragment.clear_reserved();
    fragment.set_more_frags(more);
    fragment.set_ident(ident);
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpProtocol, Ipv4Address, Ipv4Repr, Ipv6Address, Ipv6Repr};

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 256) as u8).collect()
    }

    #[test]
    fn pieces_cover_the_payload_in_multiples_of_8() {
        let all: Vec<_> = pieces(8008, 1480).collect();
        assert_eq!(all.len(), 6);
        assert_eq!(all[0], (0, 1480, true));
        assert_eq!(all[5], (7400, 608, false));
        for window in all.windows(2) {
            assert_eq!(window[0].0 + window[0].1, window[1].0);
            assert_eq!(window[0].1 % 8, 0);
        }
        assert_eq!(ipv4_chunk(1500), Some(1480));
        assert_eq!(ipv6_chunk(1500), Some(1448));
        assert_eq!(ipv4_chunk(27), None);
        assert_eq!(ipv6_chunk(55), None);
        assert_eq!(ipv4_chunk(68), Some(48));
    }

    #[test]
    fn ipv4_fragments_reassemble_to_the_packet() {
        let data = payload(8008);
        let repr = Ipv4Repr {
            src_addr: Ipv4Address::new(10, 0, 2, 2),
            dst_addr: Ipv4Address::new(10, 0, 2, 100),
            next_header: IpProtocol::Udp,
            payload_len: data.len(),
            hop_limit: 64,
        };
        let mut packet = vec![0; 20 + data.len()];
        repr.emit(
            &mut Ipv4Packet::new_unchecked(&mut packet[..]),
            &ChecksumCapabilities::default(),
        );
        packet[20..].copy_from_slice(&data);
        let mut rebuilt = vec![0; data.len()];
        let mut count = 0;
        for piece in pieces(data.len(), ipv4_chunk(1500).unwrap()) {
            let mut out = vec![0; 20 + piece.1];
            write_ipv4(&packet, piece, 0x1234, &mut out);
            assert!(out.len() <= 1500);
            let fragment = Ipv4Packet::new_checked(&out[..]).unwrap();
            assert!(fragment.verify_checksum());
            assert!(!fragment.dont_frag());
            assert_eq!(fragment.ident(), 0x1234);
            assert_eq!(fragment.more_frags(), piece.2);
            assert_eq!(usize::from(fragment.frag_offset()), piece.0);
            assert_eq!(
                (fragment.src_addr(), fragment.dst_addr()),
                (repr.src_addr, repr.dst_addr)
            );
            assert_eq!(fragment.next_header(), IpProtocol::Udp);
            let at = piece.0;
            rebuilt[at..at + piece.1].copy_from_slice(fragment.payload());
            count += 1;
        }
        assert_eq!(count, 6);
        assert_eq!(rebuilt, data);
    }

    #[test]
    fn ipv6_fragments_carry_a_fragment_header() {
        let data = payload(8008);
        let repr = Ipv6Repr {
            src_addr: Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
            dst_addr: Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100),
            next_header: IpProtocol::Udp,
            payload_len: data.len(),
            hop_limit: 255,
        };
        let mut packet = vec![0; 40 + data.len()];
        repr.emit(&mut Ipv6Packet::new_unchecked(&mut packet[..]));
        packet[40..].copy_from_slice(&data);
        let mut rebuilt = vec![0; data.len()];
        for piece in pieces(data.len(), ipv6_chunk(1500).unwrap()) {
            let mut out = vec![0; 48 + piece.1];
            write_ipv6(&packet, piece, 0xdead_beef, &mut out);
            assert!(out.len() <= 1500);
            let ip = Ipv6Packet::new_checked(&out[..]).unwrap();
            assert_eq!(u8::from(ip.next_header()), IPV6_FRAGMENT);
            assert_eq!(usize::from(ip.payload_len()), 8 + piece.1);
            assert_eq!(
                (ip.src_addr(), ip.dst_addr()),
                (repr.src_addr, repr.dst_addr)
            );
            let ext = ip.payload();
            assert_eq!(ext[0], u8::from(IpProtocol::Udp));
            let header = Ipv6FragmentHeader::new_checked(&ext[2..8]).unwrap();
            assert_eq!(header.ident(), 0xdead_beef);
            assert_eq!(usize::from(header.frag_offset()) * 8, piece.0);
            assert_eq!(header.more_frags(), piece.2);
            rebuilt[piece.0..piece.0 + piece.1].copy_from_slice(&ext[8..]);
        }
        assert_eq!(rebuilt, data);
    }
}

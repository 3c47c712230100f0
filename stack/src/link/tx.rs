//! Frames waiting to be written to the tap.
//!
//! Everything the stack sends to the guest is built in place here: the Ethernet header
//! first, then the caller fills the rest. Buffers are recycled so that steady traffic does
//! not allocate per packet. The queue is bounded; TCP flows check [`TxQueue::has_room`]
//! before producing a segment and simply wait when it is full (smoltcp keeps the data),
//! so bulk data is never dropped just because the tap was momentarily busy.
//!
//! With tap offloads (`Config::tap_offload`) a TCP frame may be a 64 KiB segment for the
//! guest's kernel to split, or carry only the pseudo-header part of its checksum; each
//! frame carries an [`Offload`] that says so, which the event loop turns into the tap's
//! virtio-net header. The queue is bounded in bytes as well as frames, because such frames
//! are 45 times the size of an MTU-1500 one.

use crate::ip::{fragment, IPV4_HEADER_LEN, IPV6_FRAGMENT_HEADER_LEN, IPV6_HEADER_LEN, MAX_IP_LEN};
use smoltcp::wire::{EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr};
use std::collections::VecDeque;

pub const ETHERNET_HEADER_LEN: usize = 14;

/// Buffers kept for reuse at most; more are freed (bounds idle memory after a burst).
const POOL_LIMIT: usize = 256;
/// Bytes of buffer capacity kept for reuse at most (a pool of 256 jumbo buffers would
/// otherwise hold 16 MiB after one burst).
const POOL_BYTES_LIMIT: usize = 4 << 20;

/// What the tap must be told about a frame besides its bytes. Only TCP frames of a stack
/// with `tap_offload` carry anything; every other frame is complete as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offload {
    /// The transport checksum field holds only the pseudo-header sum; the receiver sums
    /// the bytes from `start` on into the field at `start + offset` (or, delivering the
    /// packet locally, trusts it as a device-checked one).
    pub partial_checksum: Option<PartialChecksum>,
    /// The frame is one TCP segment larger than the guest's MTU, to be cut into segments
    /// of `segment_size` payload bytes each (the guest's MSS less the options in use).
    pub gso: Option<Gso>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialChecksum {
    /// Where the checksummed bytes start, counted from the start of the Ethernet frame.
    pub start: u16,
    /// Where the checksum field is, counted from `start`.
    pub offset: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    pub ipv6: bool,
    /// Payload bytes per segment.
    pub segment_size: u16,
    /// Ethernet, IP and TCP headers (with options): what each segment repeats.
    pub header_len: u16,
}

/// What became of an IP packet handed to [`TxQueue::push_ip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpPush {
    /// Queued as one frame.
    Queued,
    /// Larger than the MTU: queued as fragments.
    Fragmented,
    /// The queue is full: nothing queued.
    Full,
    /// Larger than IP allows (or the MTU leaves no room for a fragment): nothing queued.
    TooBig,
}

#[derive(Debug)]
struct Frame {
    bytes: Vec<u8>,
    offload: Offload,
}

#[derive(Debug)]
pub struct TxQueue {
    frames: VecDeque<Frame>,
    pool: Vec<Vec<u8>>,
    /// Capacity of the buffers in `pool`.
    pool_bytes: usize,
    limit: usize,
    /// Bytes of the frames in `frames`, and their bound.
    bytes: usize,
    byte_limit: usize,
    /// Source MAC of everything we send (the gateway's, as libslirp does).
    src_mac: EthernetAddress,
    /// The guest's MAC, learned from its frames; broadcast until we have seen one.
    guest_mac: EthernetAddress,
    /// Frames dropped because even the forced allowance was exhausted.
    dropped: u64,
    scratch: Vec<u8>,
    /// IP MTU of the tap: [`TxQueue::push_ip`] fragments larger packets.
    mtu: usize,
    /// Identification of the last datagram fragmented (IPv4 uses its low 16 bits).
    ident: u32,
    /// Where a packet to be fragmented is built whole (at most 64 KiB, kept for reuse).
    whole: Vec<u8>,
}

impl TxQueue {
    /// At most `limit` frames and (once one is queued) `byte_limit` bytes wait.
    pub fn new(limit: usize, byte_limit: usize, src_mac: EthernetAddress) -> TxQueue {
        TxQueue {
            frames: VecDeque::with_capacity(limit.min(1024)),
            pool: Vec::new(),
            pool_bytes: 0,
            limit: limit.max(1),
            bytes: 0,
            byte_limit,
            src_mac,
            guest_mac: EthernetAddress::BROADCAST,
            dropped: 0,
            scratch: Vec::new(),
            mtu: usize::MAX,
            ident: 0,
            whole: Vec::new(),
        }
    }

    /// Fragment IP packets larger than `mtu` in [`TxQueue::push_ip`]; identifications
    /// start after `first_ident` (random, so that they do not repeat across restarts).
    pub fn set_ip_mtu(&mut self, mtu: usize, first_ident: u32) {
        self.mtu = mtu;
        self.ident = first_ident;
    }

    pub fn guest_mac(&self) -> EthernetAddress {
        self.guest_mac
    }

    pub fn learn_guest_mac(&mut self, mac: EthernetAddress) {
        if mac.is_unicast() {
            self.guest_mac = mac;
        }
    }

    pub fn has_room(&self) -> bool {
        self.frames.len() < self.limit && self.bytes < self.byte_limit
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queue a frame to the guest MAC from our MAC with `payload_len` bytes after the
    /// Ethernet header, written by `fill`. Returns false (nothing queued) when full.
    pub fn push(
        &mut self,
        ethertype: EthernetProtocol,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> bool {
        let dst = self.guest_mac;
        self.push_to(dst, ethertype, payload_len, fill)
    }

    /// Queue an IP packet (IPv4 without options, or IPv6 without extension headers) of
    /// `packet_len` bytes, written by `fill`, to the guest; cut into fragments when it is
    /// larger than the MTU. A datagram's fragments are queued all or none, so the queue
    /// may exceed its bound by one datagram's fragments. `fill` is not called unless the
    /// packet is queued.
    pub fn push_ip(
        &mut self,
        ethertype: EthernetProtocol,
        packet_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> IpPush {
        let (header_len, chunk) = match ethertype {
            EthernetProtocol::Ipv4 => (0, fragment::ipv4_chunk(self.mtu)),
            _ => (IPV6_HEADER_LEN, fragment::ipv6_chunk(self.mtu)),
        };
        if packet_len > header_len + MAX_IP_LEN {
            return IpPush::TooBig;
        }
        if packet_len <= self.mtu {
            return if self.push(ethertype, packet_len, fill) {
                IpPush::Queued
            } else {
                IpPush::Full
            };
        }
        let Some(chunk) = chunk else {
            return IpPush::TooBig;
        };
        if !self.has_room() {
            return IpPush::Full;
        }
        let mut whole = core::mem::take(&mut self.whole);
        whole.clear();
        whole.resize(packet_len, 0);
        fill(&mut whole);
        self.ident = self.ident.wrapping_add(1);
        let (ident, dst) = (self.ident, self.guest_mac);
        if ethertype == EthernetProtocol::Ipv4 {
            for piece in fragment::pieces(packet_len - IPV4_HEADER_LEN, chunk) {
                self.build(dst, ethertype, IPV4_HEADER_LEN + piece.1, |out| {
                    fragment::write_ipv4(&whole, piece, ident as u16, out)
                });
            }
        } else {
            let headers = IPV6_HEADER_LEN + IPV6_FRAGMENT_HEADER_LEN;
            for piece in fragment::pieces(packet_len - IPV6_HEADER_LEN, chunk) {
                self.build(dst, ethertype, headers + piece.1, |out| {
                    fragment::write_ipv6(&whole, piece, ident, out)
                });
            }
        }
        self.whole = whole;
        IpPush::Fragmented
    }

    /// Like [`TxQueue::push`] with an explicit destination MAC (ARP replies).
    pub fn push_to(
        &mut self,
        dst: EthernetAddress,
        ethertype: EthernetProtocol,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> bool {
        if !self.has_room() {
            return false;
        }
        self.build(dst, ethertype, payload_len, fill);
        true
    }

    /// Queue a frame even when the queue is at its limit, up to twice the limit. smoltcp
    /// needs this: a token, once handed out, must produce its packet. Beyond the hard cap
    /// the packet is built into scratch space and dropped (counted in [`TxQueue::dropped`]).
    pub fn push_forced<R>(
        &mut self,
        ethertype: EthernetProtocol,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        self.push_forced_offload(ethertype, payload_len, fill, |_| Offload::default())
    }

    /// [`TxQueue::push_forced`] for a frame that may need offload metadata: `describe` sees
    /// the filled payload (after the Ethernet header), may adjust it, and says what the tap
    /// must be told.
    pub fn push_forced_offload<R>(
        &mut self,
        ethertype: EthernetProtocol,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
        describe: impl FnOnce(&mut [u8]) -> Offload,
    ) -> R {
        if self.frames.len() >= 2 * self.limit || self.bytes >= 2 * self.byte_limit {
            self.dropped += 1;
            self.scratch.clear();
            self.scratch.resize(payload_len, 0);
            return fill(&mut self.scratch);
        }
        let result = self.build(self.guest_mac, ethertype, payload_len, fill);
        if let Some(frame) = self.frames.back_mut() {
            frame.offload = describe(&mut frame.bytes[ETHERNET_HEADER_LEN..]);
        }
        result
    }

    fn build<R>(
        &mut self,
        dst: EthernetAddress,
        ethertype: EthernetProtocol,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        let mut buf = self.pool.pop().unwrap_or_default();
        self.pool_bytes -= buf.capacity();
        buf.clear();
        buf.resize(ETHERNET_HEADER_LEN + payload_len, 0);
        let repr = EthernetRepr {
            src_addr: self.src_mac,
            dst_addr: dst,
            ethertype,
        };
        repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        let result = fill(&mut buf[ETHERNET_HEADER_LEN..]);
        self.bytes += buf.len();
        self.frames.push_back(Frame {
            bytes: buf,
            offload: Offload::default(),
        });
        result
    }

    /// Frames dropped by [`TxQueue::push_forced`] beyond its hard cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Hand queued frames to `write`, oldest first, until it returns false (the tap is full:
    /// that frame stays first in line) or the queue is empty. Returns the frames written.
    pub fn drain(&mut self, mut write: impl FnMut(&[u8], Offload) -> bool) -> usize {
        let mut written = 0;
        while let Some(frame) = self.frames.front() {
            if !write(&frame.bytes, frame.offload) {
                break;
            }
            written += 1;
            if let Some(frame) = self.frames.pop_front() {
                self.bytes -= frame.bytes.len();
                self.recycle(frame.bytes);
            }
        }
        written
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        // Jumbo buffers (MTU 65520, offloaded segments) are kept too: they are exactly what
        // bulk traffic reuses; the byte bound keeps a burst's worth, not all of them.
        if self.pool.len() < POOL_LIMIT && self.pool_bytes + buf.capacity() <= POOL_BYTES_LIMIT {
            self.pool_bytes += buf.capacity();
            self.pool.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_ordered() {
        let mut q = TxQueue::new(2, 1 << 20, EthernetAddress([0x52, 0x55, 10, 0, 2, 2]));
        assert!(q.push(EthernetProtocol::Ipv4, 1, |b| b[0] = 1));
        assert!(q.push(EthernetProtocol::Ipv4, 1, |b| b[0] = 2));
        assert!(!q.push(EthernetProtocol::Ipv4, 1, |b| b[0] = 3));
        let mut seen = Vec::new();
        // The tap takes one frame, then reports full: the second stays queued.
        let n = q.drain(|f, _| {
            seen.push(f[ETHERNET_HEADER_LEN]);
            seen.len() < 2
        });
        assert_eq!(n, 1);
        assert_eq!(q.len(), 1);
        q.drain(|f, _| {
            seen.push(f[ETHERNET_HEADER_LEN]);
            true
        });
        assert_eq!(seen, vec![1, 2, 2]);
        assert!(q.is_empty());
    }

    #[test]
    fn push_ip_fragments_above_the_mtu_all_or_none() {
        let mac = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);
        let mut q = TxQueue::new(4, 1 << 20, mac);
        q.set_ip_mtu(1500, 7);
        let ipv4 = |buf: &mut [u8]| {
            // A header fragmentation copies: version 4, IHL 5.
            buf[0] = 0x45;
        };
        assert_eq!(
            q.push_ip(EthernetProtocol::Ipv4, 1500, ipv4),
            IpPush::Queued
        );
        // 8,028 bytes of IPv4: 8,008 of payload in six fragments, beyond the 4-frame
        // bound (one datagram may exceed it) since the queue had room.
        assert_eq!(
            q.push_ip(EthernetProtocol::Ipv4, 8028, ipv4),
            IpPush::Fragmented
        );
        assert_eq!(q.len(), 7);
        let mut sizes = Vec::new();
        q.drain(|frame, _| {
            sizes.push(frame.len() - ETHERNET_HEADER_LEN);
            true
        });
        assert_eq!(sizes, vec![1500, 1500, 1500, 1500, 1500, 1500, 20 + 608]);
        // A full queue takes no fragment at all, and never calls `fill`.
        for _ in 0..4 {
            assert_eq!(
                q.push_ip(EthernetProtocol::Ipv6, 100, |_| {}),
                IpPush::Queued
            );
        }
        let full = q.push_ip(EthernetProtocol::Ipv6, 3000, |_| panic!("filled"));
        assert_eq!(full, IpPush::Full);
        assert_eq!(q.len(), 4);
        // Larger than IP allows, or an MTU with no room for 8 bytes of data: too big.
        q.drain(|_, _| true);
        let huge = q.push_ip(EthernetProtocol::Ipv4, 65_536, |_| panic!("filled"));
        assert_eq!(huge, IpPush::TooBig);
        assert_eq!(
            q.push_ip(EthernetProtocol::Ipv6, 40 + 65_536, |_| panic!("filled")),
            IpPush::TooBig
        );
        q.set_ip_mtu(50, 0);
        assert_eq!(
            q.push_ip(EthernetProtocol::Ipv6, 100, |_| panic!("filled")),
            IpPush::TooBig
        );
        assert!(q.is_empty());
    }

    #[test]
    fn bounded_in_bytes_too() {
        let mut q = TxQueue::new(100, 3000, EthernetAddress([0x52, 0x55, 10, 0, 2, 2]));
        assert!(q.push(EthernetProtocol::Ipv4, 1500, |_| {}));
        assert!(q.push(EthernetProtocol::Ipv4, 1500, |_| {}));
        // 3028 bytes queued: full, though far from 100 frames.
        assert!(!q.has_room());
        assert!(!q.push(EthernetProtocol::Ipv4, 1, |_| {}));
        // The forced allowance (replies smoltcp must send) stops at twice the bound.
        q.push_forced(EthernetProtocol::Ipv4, 3000, |_| {});
        q.push_forced(EthernetProtocol::Ipv4, 1, |_| {});
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped(), 1);
        q.drain(|_, _| true);
        assert!(q.has_room());
    }
}

//! Frames waiting to be written to the tap.
//!
//! Everything the stack sends to the guest is built in place here: the Ethernet header
//! first, then the caller fills the rest. Buffers are recycled so that steady traffic does
//! not allocate per packet. The queue is bounded; TCP flows check [`TxQueue::has_room`]
//! before producing a segment and simply wait when it is full (smoltcp keeps the data),
//! so bulk data is never dropped just because the tap was momentarily busy.

use smoltcp::wire::{EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr};
use std::collections::VecDeque;

pub const ETHERNET_HEADER_LEN: usize = 14;

/// Buffers kept for reuse at most; more are freed (bounds idle memory after a burst).
const POOL_LIMIT: usize = 256;

#[derive(Debug)]
pub struct TxQueue {
    frames: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    limit: usize,
    /// Source MAC of everything we send (the gateway's, as libslirp does).
    src_mac: EthernetAddress,
    /// The guest's MAC, learned from its frames; broadcast until we have seen one.
    guest_mac: EthernetAddress,
    /// Frames dropped because even the forced allowance was exhausted.
    dropped: u64,
    scratch: Vec<u8>,
}

impl TxQueue {
    pub fn new(limit: usize, src_mac: EthernetAddress) -> TxQueue {
        TxQueue {
            frames: VecDeque::with_capacity(limit.min(1024)),
            pool: Vec::new(),
            limit: limit.max(1),
            src_mac,
            guest_mac: EthernetAddress::BROADCAST,
            dropped: 0,
            scratch: Vec::new(),
        }
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
        self.frames.len() < self.limit
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
        if self.frames.len() >= 2 * self.limit {
            self.dropped += 1;
            self.scratch.clear();
            self.scratch.resize(payload_len, 0);
            return fill(&mut self.scratch);
        }
        self.build(self.guest_mac, ethertype, payload_len, fill)
    }

    fn build<R>(
        &mut self,
        dst: EthernetAddress,
        ethertype: EthernetProtocol,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.resize(ETHERNET_HEADER_LEN + payload_len, 0);
        let repr = EthernetRepr {
            src_addr: self.src_mac,
            dst_addr: dst,
            ethertype,
        };
        repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        let result = fill(&mut buf[ETHERNET_HEADER_LEN..]);
        self.frames.push_back(buf);
        result
    }

    /// Frames dropped by [`TxQueue::push_forced`] beyond its hard cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Hand queued frames to `write`, oldest first, until it returns false (the tap is full:
    /// that frame stays first in line) or the queue is empty. Returns the frames written.
    pub fn drain(&mut self, mut write: impl FnMut(&[u8]) -> bool) -> usize {
        let mut written = 0;
        while let Some(frame) = self.frames.front() {
            if !write(frame) {
                break;
            }
            written += 1;
            if let Some(buf) = self.frames.pop_front() {
                self.recycle(buf);
            }
        }
        written
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        // Jumbo buffers (MTU 65520) are kept too: they are exactly what bulk traffic reuses.
        if self.pool.len() < POOL_LIMIT {
            self.pool.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_ordered() {
        let mut q = TxQueue::new(2, EthernetAddress([0x52, 0x55, 10, 0, 2, 2]));
        assert!(q.push(EthernetProtocol::Ipv4, 1, |b| b[0] = 1));
        assert!(q.push(EthernetProtocol::Ipv4, 1, |b| b[0] = 2));
        assert!(!q.push(EthernetProtocol::Ipv4, 1, |b| b[0] = 3));
        let mut seen = Vec::new();
        // The tap takes one frame, then reports full: the second stays queued.
        let n = q.drain(|f| {
            seen.push(f[ETHERNET_HEADER_LEN]);
            seen.len() < 2
        });
        assert_eq!(n, 1);
        assert_eq!(q.len(), 1);
        q.drain(|f| {
            seen.push(f[ETHERNET_HEADER_LEN]);
            true
        });
        assert_eq!(seen, vec![1, 2, 2]);
        assert!(q.is_empty());
    }
}

//! Reassembly of the datagrams a guest sends in fragments: a guest UDP datagram or ping
//! larger than its MTU leaves its kernel in fragments (IPv4 with DF clear, or IPv6 with a
//! Fragment header), and the host socket wants the whole datagram.
//!
//! One table for both families, keyed by (source, destination, protocol, identification)
//! (IPv6 keys on the addresses and identification only: the protocol is 0). Each datagram
//! being reassembled keeps a buffer as long as the highest byte seen and the list of byte
//! ranges received (RFC 815's holes are the gaps between them). Fragments are checked
//! against what is there:
//!
//! - a fragment that overlaps one already received drops the whole datagram, and the
//!   datagram's later fragments too (RFC 5722; used for IPv4 as well: an overlap is an
//!   attack or a bug, never needed); an exact duplicate with the same bytes is ignored
//!   (RFC 8200 §4.5 allows it: fragments are duplicated in the network);
//! - lengths that disagree (a second last fragment with another end, data past the end)
//!   count as an overlap.
//!
//! Bounded like every table: at most `max_datagrams` datagrams (a new one evicts the
//! oldest), at most `max_bytes` bytes held (buffers, range lists and a fixed cost per
//! datagram; growth beyond it evicts the oldest others, and a datagram that alone does not
//! fit is dropped), and each datagram has `timeout` from its first fragment to complete.
//! Lookup is a scan of the table, which the datagram limit keeps small (64 by default).

use crate::stats::Stats;
use core::net::IpAddr;
use smoltcp::time::{Duration, Instant};
use std::collections::VecDeque;

use super::MAX_IP_LEN;

/// What a datagram in the table costs besides its buffers (the entry itself, the table
/// slot): counted in the byte bound so that many small datagrams are bounded too.
pub const ENTRY_OVERHEAD: usize = 160;
/// What one received range costs in the range list.
const RANGE_COST: usize = core::mem::size_of::<(u32, u32)>();

/// Which datagram a fragment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The IPv4 protocol; 0 for IPv6 (RFC 8200 keys on addresses and identification).
    pub proto: u8,
    pub ident: u32,
}

/// One fragment, as the family's parser found it.
#[derive(Debug, Clone, Copy)]
pub struct Fragment<'a> {
    pub key: FragKey,
    /// Where its data starts in the datagram's fragmentable part, in bytes (a multiple of 8).
    pub offset: usize,
    /// More fragments follow (MF, M): its length must then be a non-zero multiple of 8.
    pub more: bool,
    /// The header the whole datagram is rebuilt with; only that of the fragment at offset
    /// 0 is kept.
    pub header: &'a [u8],
    pub data: &'a [u8],
}

/// A whole datagram: the header of its first fragment and all of its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembled {
    pub header: Vec<u8>,
    pub data: Vec<u8>,
}

#[derive(Debug)]
struct Entry {
    key: FragKey,
    created: Instant,
    /// Dropped for an overlap: its buffers are gone, and its later fragments are dropped
    /// until it times out (RFC 5722: "and any constituent fragments ... not yet received").
    dead: bool,
    /// The first fragment's header (empty until it arrives).
    header: Vec<u8>,
    /// As long as the highest byte received; holes are zero.
    data: Vec<u8>,
    /// Received byte ranges [start, end), sorted, disjoint.
    ranges: Vec<(u32, u32)>,
    /// Bytes received (the sum of `ranges`): complete when it equals `total`.
    received: usize,
    /// The datagram's length, once its last fragment has come.
    total: Option<usize>,
}

impl Entry {
    fn new(key: FragKey, created: Instant) -> Entry {
        Entry {
            key,
            created,
            dead: false,
            header: Vec::new(),
            data: Vec::new(),
            ranges: Vec::new(),
            received: 0,
            total: None,
        }
    }

    fn cost(&self) -> usize {
        ENTRY_OVERHEAD
            + self.header.capacity()
            + self.data.capacity()
            + self.ranges.capacity() * RANGE_COST
    }

    /// The buffer capacity a fragment ending at `end` needs: doubling (so in-order
    /// fragments do not copy the buffer each time), within what the datagram can be.
    fn capacity_for(&self, end: usize) -> usize {
        let have = self.data.capacity();
        if end <= have {
            return have;
        }
        let limit = self.total.unwrap_or(MAX_IP_LEN);
        end.max((2 * have).min(limit))
    }

    /// What the entry will cost once a fragment ending at `end` with a header of
    /// `header_len` (0 if not the first fragment) is in.
    fn cost_with(&self, end: usize, header_len: usize) -> usize {
        let ranges = if self.ranges.len() == self.ranges.capacity() {
            (2 * self.ranges.capacity()).max(4)
        } else {
            self.ranges.capacity()
        };
        ENTRY_OVERHEAD
            + header_len.max(self.header.capacity())
            + self.capacity_for(end)
            + ranges * RANGE_COST
    }
}

/// What became of a fragment that did not complete its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Kept, waiting for the rest.
    Pending,
    /// An exact duplicate of one already received: ignored.
    Duplicate,
    /// Dropped: its datagram was dropped (overlap, limit), now or earlier.
    Dropped,
    /// Not a valid fragment (bad offset or length): dropped, the datagram untouched.
    Malformed,
}

#[derive(Debug)]
pub struct Reassembler {
    /// Oldest first: creation order is deadline order (one timeout for all).
    entries: VecDeque<Entry>,
    /// The cost of every entry.
    bytes: usize,
    max_datagrams: usize,
    max_bytes: usize,
    timeout: Duration,
}

impl Reassembler {
    pub fn new(max_datagrams: usize, max_bytes: usize, timeout: Duration) -> Reassembler {
        Reassembler {
            entries: VecDeque::new(),
            bytes: 0,
            max_datagrams,
            max_bytes,
            timeout,
        }
    }

    /// Datagrams in the table (being reassembled, or dropped and waiting out their
    /// timeout).
    pub fn datagrams(&self) -> usize {
        self.entries.len()
    }

    /// Bytes held, as the byte bound counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the oldest datagram times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.front().map(|e| e.created + self.timeout)
    }

    /// Drop the datagrams whose time is up (counted in `ip_frag_timeouts`, unless already
    /// dropped for an overlap).
    pub fn expire(&mut self, now: Instant, stats: &mut Stats) {
        while let Some(front) = self.entries.front() {
            if front.created + self.timeout > now {
                break;
            }
            if !front.dead {
                log::debug!("IP reassembly of {:?} timed out", front.key);
                stats.ip_frag_timeouts += 1;
            }
            self.bytes -= front.cost();
            self.entries.pop_front();
        }
    }

    /// Take in one fragment; the whole datagram once it is complete.
    pub fn insert(
        &mut self,
        now: Instant,
        fragment: Fragment<'_>,
        stats: &mut Stats,
    ) -> Result<Reassembled, Held> {
        self.expire(now, stats);
        let Fragment {
            key,
            offset: start,
            more,
            header,
            data,
        } = fragment;
        let end = start + data.len();
        let misaligned = start % 8 != 0 || (more && (data.is_empty() || data.len() % 8 != 0));
        if misaligned || end > MAX_IP_LEN {
            return Err(Held::Malformed);
        }
        let mut index = match self.entries.iter().position(|e| e.key == key) {
            Some(index) => index,
            None => {
                if self.max_datagrams == 0 {
                    stats.ip_frag_datagram_evictions += 1;
                    return Err(Held::Dropped);
                }
                while self.entries.len() >= self.max_datagrams {
                    self.evict(0, stats, |s| &mut s.ip_frag_datagram_evictions);
                }
                let entry = Entry::new(key, now);
                self.bytes += entry.cost();
                self.entries.push_back(entry);
                self.entries.len() - 1
            }
        };
        let entry = &self.entries[index];
        if entry.dead {
            return Err(Held::Dropped);
        }
        // Where the new range goes among those received, and whether it collides.
        let at = entry.ranges.partition_point(|&(s, _)| (s as usize) < start);
        if let Some(&(s, e)) = entry.ranges.get(at) {
            if (s as usize, e as usize) == (start, end) && entry.data[start..end] == *data {
                return Err(Held::Duplicate);
            }
        }
        let overlaps = (at > 0 && entry.ranges[at - 1].1 as usize > start)
            || entry
                .ranges
                .get(at)
                .is_some_and(|&(s, _)| (s as usize) < end);
        let inconsistent = match (more, entry.total) {
            (true, Some(total)) => end > total,
            (false, Some(total)) => end != total,
            (false, None) => end < entry.data.len(),
            (true, None) => false,
        };
        if overlaps || inconsistent {
            log::debug!("IP fragments of {key:?} overlap or disagree: datagram dropped");
            stats.ip_frag_overlaps += 1;
            self.kill(index);
            return Err(Held::Dropped);
        }
        // Room first, so that the table never holds more than its bound.
        let header_len = if start == 0 { header.len() } else { 0 };
        let growth = entry.cost_with(end, header_len) - entry.cost();
        while self.bytes + growth > self.max_bytes {
            let victim = (0..self.entries.len()).find(|&i| i != index);
            match victim {
                Some(victim) => {
                    self.evict(victim, stats, |s| &mut s.ip_frag_byte_evictions);
                    if victim < index {
                        index -= 1;
                    }
                }
                None => {
                    // This datagram alone would not fit.
                    self.evict(index, stats, |s| &mut s.ip_frag_byte_evictions);
                    return Err(Held::Dropped);
                }
            }
        }
        let entry = &mut self.entries[index];
        let before = entry.cost();
        if end > entry.data.len() {
            let capacity = entry.capacity_for(end);
            entry.data.reserve_exact(capacity - entry.data.len());
            entry.data.resize(end, 0);
        }
        entry.data[start..end].copy_from_slice(data);
        if start == 0 {
            entry.header.clear();
            entry.header.extend_from_slice(header);
        }
        entry.ranges.insert(at, (start as u32, end as u32));
        entry.received += data.len();
        if !more {
            entry.total = Some(end);
        }
        let after = entry.cost();
        self.bytes = self.bytes + after - before;
        // The ranges are disjoint and within the total: all of it is there when their sum
        // is.
        if entry.total != Some(entry.received) {
            return Err(Held::Pending);
        }
        let Some(entry) = self.entries.remove(index) else {
            return Err(Held::Dropped);
        };
        self.bytes -= entry.cost();
        stats.ip_frag_reassembled += 1;
        Ok(Reassembled {
            header: entry.header,
            data: entry.data,
        })
    }

    /// Drop a live datagram for a limit (counted by `counter`); a dead one just goes.
    fn evict(&mut self, index: usize, stats: &mut Stats, counter: fn(&mut Stats) -> &mut u64) {
        if let Some(entry) = self.entries.remove(index) {
            if !entry.dead {
                log::debug!("IP reassembly of {:?} dropped (a limit)", entry.key);
                *counter(stats) += 1;
            }
            self.bytes -= entry.cost();
        }
    }

    /// Drop a datagram's data but keep its key until its timeout, so that its later
    /// fragments are dropped too.
    fn kill(&mut self, index: usize) {
        let entry = &mut self.entries[index];
        let before = entry.cost();
        entry.dead = true;
        entry.header = Vec::new();
        entry.data = Vec::new();
        entry.ranges = Vec::new();
        self.bytes = self.bytes + entry.cost() - before;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    const T0: Instant = Instant::from_millis_const(100_000);
    const TIMEOUT: Duration = Duration::from_secs(30);

    fn key(ident: u32) -> FragKey {
        FragKey {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 2, 100)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)),
            proto: 17,
            ident,
        }
    }

    /// A datagram of `len` bytes whose byte i is i mod 251.
    fn datagram(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    struct Table {
        r: Reassembler,
        stats: Stats,
    }

    impl Table {
        fn new(max_datagrams: usize, max_bytes: usize) -> Table {
            Table {
                r: Reassembler::new(max_datagrams, max_bytes, TIMEOUT),
                stats: Stats::default(),
            }
        }

        /// Insert bytes [start, end) of `whole` as a fragment of datagram `ident`.
        fn put(
            &mut self,
            now: Instant,
            ident: u32,
            whole: &[u8],
            start: usize,
            end: usize,
        ) -> Result<Reassembled, Held> {
            let fragment = Fragment {
                key: key(ident),
                offset: start,
                more: end < whole.len(),
                header: b"HDR",
                data: &whole[start..end],
            };
            let result = self.r.insert(now, fragment, &mut self.stats);
            self.check_accounting();
            result
        }

        fn check_accounting(&self) {
            let sum: usize = self.r.entries.iter().map(Entry::cost).sum();
            assert_eq!(self.r.bytes, sum, "byte count drifted");
        }
    }

    fn whole(len: usize) -> Reassembled {
        Reassembled {
            header: b"HDR".to_vec(),
            data: datagram(len),
        }
    }

    #[test]
    fn in_order_and_out_of_order() {
        let data = datagram(8000);
        for order in [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [3, 0, 5, 1, 4, 2]] {
            let mut t = Table::new(64, 1 << 20);
            let mut result = Err(Held::Pending);
            for (n, &i) in order.iter().enumerate() {
                let (start, end) = (i * 1480, ((i + 1) * 1480).min(8000));
                result = t.put(T0, 1, &data, start, end);
                if n < 5 {
                    assert_eq!(result, Err(Held::Pending), "{order:?}");
                }
            }
            assert_eq!(result, Ok(whole(8000)), "{order:?}");
            assert_eq!(t.stats.ip_frag_reassembled, 1);
            assert_eq!((t.r.datagrams(), t.r.bytes()), (0, 0), "nothing left held");
        }
    }

    /// A roomy table holding the first fragment (bytes 0..1480) of datagram 1, 3000 bytes
    /// long; returns the datagram and the table.
    fn first_fragment_held() -> (Vec<u8>, Table) {
        let data = datagram(3000);
        let mut t = Table::new(64, 1 << 20);
        assert_eq!(t.put(T0, 1, &data, 0, 1480), Err(Held::Pending));
        (data, t)
    }

    #[test]
    fn exact_duplicate_is_ignored() {
        let (data, mut t) = first_fragment_held();
        assert_eq!(t.put(T0, 1, &data, 0, 1480), Err(Held::Duplicate));
        assert_eq!(t.put(T0, 1, &data, 1480, 2960), Err(Held::Pending));
        assert_eq!(t.put(T0, 1, &data, 1480, 2960), Err(Held::Duplicate));
        assert_eq!(t.put(T0, 1, &data, 2960, 3000), Ok(whole(3000)));
        assert_eq!(t.stats.ip_frag_overlaps, 0);
    }

    #[test]
    fn overlap_drops_the_whole_datagram_and_its_later_fragments() {
        let (data, mut t) = first_fragment_held();
        // Overlaps the first by 8 bytes.
        assert_eq!(t.put(T0, 1, &data, 1472, 2952), Err(Held::Dropped));
        assert_eq!(t.stats.ip_frag_overlaps, 1);
        // The rest would complete it, but the datagram is gone for good.
        assert_eq!(t.put(T0, 1, &data, 1480, 2960), Err(Held::Dropped));
        assert_eq!(t.put(T0, 1, &data, 2960, 3000), Err(Held::Dropped));
        assert_eq!(t.stats.ip_frag_reassembled, 0);
        // Its key stays (data freed) until the timeout, silently.
        assert_eq!(t.r.datagrams(), 1);
        assert_eq!(t.r.bytes(), ENTRY_OVERHEAD);
        t.r.expire(T0 + TIMEOUT, &mut t.stats);
        assert_eq!((t.r.datagrams(), t.r.bytes()), (0, 0));
        assert_eq!(
            t.stats.ip_frag_timeouts, 0,
            "not a timeout: already dropped"
        );
        // A same duplicate range with other bytes is an overlap too.
        assert_eq!(t.put(T0 + TIMEOUT, 2, &data, 0, 1480), Err(Held::Pending));
        let other = vec![0xee; 3000];
        assert_eq!(t.put(T0 + TIMEOUT, 2, &other, 0, 1480), Err(Held::Dropped));
        assert_eq!(t.stats.ip_frag_overlaps, 2);
    }

    #[test]
    fn lengths_that_disagree_drop_the_datagram() {
        let data = datagram(4000);
        let mut t = Table::new(64, 1 << 20);
        // A last fragment ending at 3000, then one past it.
        assert_eq!(t.put(T0, 1, &data[..3000], 1480, 3000), Err(Held::Pending));
        assert_eq!(t.put(T0, 1, &data, 2960, 4000), Err(Held::Dropped));
        // Data past a later last fragment's end.
        assert_eq!(t.put(T0, 2, &data, 1480, 2960), Err(Held::Pending));
        assert_eq!(t.put(T0, 2, &data[..1480], 0, 1480), Err(Held::Dropped));
        assert_eq!(t.stats.ip_frag_overlaps, 2);
    }

    #[test]
    fn malformed_fragments_are_refused_without_harm() {
        let (data, mut t) = first_fragment_held();
        // A non-last fragment whose length is not a multiple of 8, an unaligned offset,
        // an empty middle fragment, and one past 65,535.
        assert_eq!(t.put(T0, 1, &data, 1480, 1481), Err(Held::Malformed));
        assert_eq!(t.put(T0, 1, &data, 1484, 1492), Err(Held::Malformed));
        assert_eq!(t.put(T0, 1, &data, 1480, 1480), Err(Held::Malformed));
        let big = vec![0; 8];
        let far = Fragment {
            key: key(1),
            offset: 65_528,
            more: true,
            header: b"",
            data: &big,
        };
        assert_eq!(t.r.insert(T0, far, &mut t.stats), Err(Held::Malformed));
        assert_eq!(t.put(T0, 1, &data, 1480, 3000), Ok(whole(3000)));
    }

    #[test]
    fn timeout_on_the_virtual_clock() {
        let (data, mut t) = first_fragment_held();
        assert_eq!(t.r.next_deadline(), Some(T0 + TIMEOUT));
        t.r.expire(T0 + TIMEOUT - Duration::from_millis(1), &mut t.stats);
        assert_eq!(t.r.datagrams(), 1);
        t.r.expire(T0 + TIMEOUT, &mut t.stats);
        assert_eq!((t.r.datagrams(), t.r.bytes()), (0, 0));
        assert_eq!(t.stats.ip_frag_timeouts, 1);
        assert_eq!(t.r.next_deadline(), None);
        // The rest, after the timeout, starts a new datagram that never completes.
        assert_eq!(
            t.put(T0 + TIMEOUT, 1, &data, 1480, 3000),
            Err(Held::Pending)
        );
        assert_eq!(t.stats.ip_frag_reassembled, 0);
    }

    #[test]
    fn too_many_datagrams_evict_the_oldest() {
        let data = datagram(3000);
        let mut t = Table::new(4, 1 << 20);
        for ident in 0..4 {
            assert_eq!(t.put(T0, ident, &data, 0, 1480), Err(Held::Pending));
        }
        assert_eq!(t.stats.ip_frag_datagram_evictions, 0);
        // A fifth evicts datagram 0, the oldest.
        assert_eq!(t.put(T0, 4, &data, 0, 1480), Err(Held::Pending));
        assert_eq!(t.stats.ip_frag_datagram_evictions, 1);
        assert_eq!(t.r.datagrams(), 4);
        // Datagram 1 still completes; datagram 0's rest starts afresh.
        assert_eq!(t.put(T0, 1, &data, 1480, 3000), Ok(whole(3000)));
        assert_eq!(t.put(T0, 0, &data, 1480, 3000), Err(Held::Pending));
    }

    #[test]
    fn bytes_bound_evicts_the_oldest_and_holds() {
        let data = datagram(65_000);
        // Room for about two such datagrams.
        let max = 2 * 65_535 + 4 * ENTRY_OVERHEAD;
        let mut t = Table::new(64, max);
        for ident in 0..10 {
            // The last fragment first: the buffer takes the whole length at once.
            assert_eq!(t.put(T0, ident, &data, 64_000, 65_000), Err(Held::Pending));
            assert!(t.r.bytes() <= max, "{} > {max}", t.r.bytes());
        }
        assert!(t.stats.ip_frag_byte_evictions >= 8);
        // The newest still completes.
        assert_eq!(t.put(T0, 9, &data, 0, 64_000), Ok(whole(65_000)));
        // A datagram larger than the whole bound is dropped.
        let mut t = Table::new(64, 10_000);
        assert_eq!(t.put(T0, 1, &data, 0, 8000), Err(Held::Pending));
        assert_eq!(t.put(T0, 1, &data, 8000, 16_000), Err(Held::Dropped));
        assert_eq!(t.stats.ip_frag_byte_evictions, 1);
        assert_eq!((t.r.datagrams(), t.r.bytes()), (0, 0));
    }

    #[test]
    fn a_flood_of_first_fragments_stays_within_bounds() {
        let data = datagram(3000);
        let max = 64 * 1024;
        let mut t = Table::new(64, max);
        for ident in 0..5000 {
            let now = T0 + Duration::from_millis(u64::from(ident));
            assert_eq!(t.put(now, ident, &data, 0, 1480), Err(Held::Pending));
            assert!(t.r.datagrams() <= 64);
            assert!(t.r.bytes() <= max);
        }
        let stats = &t.stats;
        assert_eq!(
            stats.ip_frag_datagram_evictions
                + stats.ip_frag_byte_evictions
                + stats.ip_frag_timeouts,
            5000 - t.r.datagrams() as u64
        );
    }

    #[test]
    fn tiny_fragments_count_their_range_list() {
        // 8-byte fragments at every other slot: one range each, all held and counted.
        let data = datagram(65_528);
        let mut t = Table::new(64, 1 << 20);
        for i in (0..8000).step_by(2) {
            assert_eq!(t.put(T0, 1, &data, i * 8, i * 8 + 8), Err(Held::Pending));
        }
        assert!(t.r.bytes() >= 4000 * RANGE_COST + 63_992);
    }
}

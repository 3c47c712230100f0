//! Which datagram flow has been idle the longest, without scanning the table.
//!
//! A min-heap of (last activity, flow) kept lazily: activity does not touch it (a UDP flow
//! is touched by every datagram, and a heap update per datagram would cost more than the
//! datagram). An entry's time is a lower bound of its flow's real last activity, so the
//! smallest entry whose time is still the flow's real one is the flow idle the longest: a
//! popped entry that is stale (the flow was active since) goes back with the real time, one
//! that names a flow gone is dropped. Each flow has at most one entry, except those left by
//! flows that went away, which are purged once they outnumber the live ones.
//!
//! Cost: O(log n) per flow opened; an eviction pops one entry per flow that was active
//! since it was last popped, so amortised over that activity it is O(log n) as well.

use crate::io::FlowId;
use core::cmp::Reverse;
use smoltcp::time::Instant;
use std::collections::BinaryHeap;

#[derive(Debug, Default)]
pub struct IdleOrder {
    heap: BinaryHeap<Reverse<(Instant, FlowId)>>,
}

impl IdleOrder {
    /// A new flow, active at `at`. `live` is how many flows the order serves now, and
    /// `is_live` tells them: stale entries are purged when they outnumber the live ones.
    pub fn insert(
        &mut self,
        at: Instant,
        id: FlowId,
        live: usize,
        is_live: impl FnMut(FlowId) -> bool,
    ) {
        self.heap.push(Reverse((at, id)));
        if self.heap.len() > 2 * live + 64 {
            self.purge(is_live);
        }
    }

    /// Takes out the flow idle the longest. `last_active` gives a flow's last activity, or
    /// `None` if it is gone (or no longer one this order serves).
    pub fn pop_oldest(
        &mut self,
        mut last_active: impl FnMut(FlowId) -> Option<Instant>,
    ) -> Option<FlowId> {
        while let Some(Reverse((at, id))) = self.heap.pop() {
            match last_active(id) {
                None => {}
                Some(active) if active <= at => return Some(id),
                Some(active) => self.heap.push(Reverse((active, id))),
            }
        }
        None
    }

    /// Entries held (live or stale), for tests.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    fn purge(&mut self, mut is_live: impl FnMut(FlowId) -> bool) {
        let heap = core::mem::take(&mut self.heap);
        self.heap = heap
            .into_iter()
            .filter(|Reverse((_, id))| is_live(*id))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn id(index: u32) -> FlowId {
        FlowId {
            index,
            generation: 0,
        }
    }

    fn at(secs: u64) -> Instant {
        Instant::from_secs(secs as i64)
    }

    #[test]
    fn the_longest_idle_comes_out_first_whatever_the_opening_order() {
        let mut order = IdleOrder::default();
        let mut active: HashMap<FlowId, Instant> = HashMap::new();
        for i in 0..4 {
            active.insert(id(i), at(u64::from(i)));
            order.insert(at(u64::from(i)), id(i), active.len(), |_| true);
        }
        // Flows 0 and 1 are used again later: 2 is now the longest idle, then 3, 0, 1.
        active.insert(id(0), at(10));
        active.insert(id(1), at(11));
        let mut evicted = Vec::new();
        while let Some(flow) = order.pop_oldest(|f| active.get(&f).copied()) {
            active.remove(&flow);
            evicted.push(flow.index);
        }
        assert_eq!(evicted, vec![2, 3, 0, 1]);
    }

    #[test]
    fn gone_flows_are_skipped_and_purged() {
        let mut order = IdleOrder::default();
        let mut live: Vec<FlowId> = Vec::new();
        for i in 0..1000 {
            // Only the last flow opened stays; the others went away (idle timeout).
            live.clear();
            live.push(id(i));
            order.insert(at(u64::from(i)), id(i), live.len(), |f| live.contains(&f));
        }
        assert!(order.len() <= 2 + 64 + 1, "{} entries", order.len());
        let oldest = order.pop_oldest(|f| live.contains(&f).then(|| at(u64::from(f.index))));
        assert_eq!(oldest, Some(id(999)));
        assert!(order.is_empty());
    }
}

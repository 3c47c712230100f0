//! The flow table: a generational slab of flows, an O(1) map from 4-tuple to flow, and a
//! timer heap that tells which flows need polling when.
//!
//! Timers are lazy: a flow records the time it wants to be polled (`due`) and the earliest
//! entry it has in the heap (`queued`). Moving `due` later costs nothing (the early entry
//! fires, sees the later `due` and requeues); moving it earlier pushes one new entry. Stale
//! entries are skipped on pop and purged when they outnumber live flows.

use crate::io::FlowId;
use core::cmp::Reverse;
use core::net::SocketAddr;
use smoltcp::time::Instant;
use std::collections::{BinaryHeap, HashMap};

/// Generations use 31 bits, so a packed `FlowId` never has bit 63 set: the event loop
/// keeps that half of its token space for other sources (forward listeners).
const GENERATION_MASK: u32 = 0x7fff_ffff;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// A guest flow as the guest sees it: its own endpoint and the remote endpoint it talks to
/// (for ICMP echo, the guest port is the echo identifier and the remote port is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: Proto,
    pub guest: SocketAddr,
    pub remote: SocketAddr,
}

struct Slot<T> {
    generation: u32,
    entry: Option<Entry<T>>,
}

struct Entry<T> {
    key: FlowKey,
    due: Option<Instant>,
    queued: Option<Instant>,
    value: T,
}

pub struct FlowTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    by_key: HashMap<FlowKey, FlowId>,
    timers: BinaryHeap<Reverse<(Instant, FlowId)>>,
}

impl<T> Default for FlowTable<T> {
    fn default() -> Self {
        FlowTable {
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            timers: BinaryHeap::new(),
        }
    }
}

impl<T> FlowTable<T> {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn lookup(&self, key: &FlowKey) -> Option<FlowId> {
        self.by_key.get(key).copied()
    }

    /// The id the next [`FlowTable::insert`] will return. Lets the host be asked to put a
    /// socket under that id (e.g. accept a connection) before the flow's key is known.
    pub fn next_id(&self) -> FlowId {
        match self.free.last() {
            Some(&index) => FlowId {
                index,
                generation: (self.slots[index as usize].generation + 1) & GENERATION_MASK,
            },
            None => FlowId {
                index: self.slots.len() as u32,
                generation: 0,
            },
        }
    }

    /// Retire the id [`FlowTable::next_id`] returned without inserting a flow (the host
    /// already used it for a socket that was then refused), so the next flow gets a new
    /// generation and a late event for that socket cannot reach it.
    pub fn skip_id(&mut self, id: FlowId) {
        if id != self.next_id() {
            return;
        }
        match self.slots.get_mut(id.index as usize) {
            Some(slot) => slot.generation = id.generation,
            None => {
                self.slots.push(Slot {
                    generation: id.generation,
                    entry: None,
                });
                self.free.push(id.index);
            }
        }
    }

    /// Adds a flow; the key must not be present (callers look up first).
    pub fn insert(&mut self, key: FlowKey, value: T) -> FlowId {
        let entry = Entry {
            key,
            due: None,
            queued: None,
            value,
        };
        let id = match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                slot.generation = (slot.generation + 1) & GENERATION_MASK;
                slot.entry = Some(entry);
                FlowId {
                    index,
                    generation: slot.generation,
                }
            }
            None => {
                let index = self.slots.len() as u32;
                self.slots.push(Slot {
                    generation: 0,
                    entry: Some(entry),
                });
                FlowId {
                    index,
                    generation: 0,
                }
            }
        };
        self.by_key.insert(key, id);
        id
    }

    fn entry(&self, id: FlowId) -> Option<&Entry<T>> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.entry.as_ref()
    }

    fn entry_mut(&mut self, id: FlowId) -> Option<&mut Entry<T>> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.entry.as_mut()
    }

    pub fn get(&self, id: FlowId) -> Option<&T> {
        self.entry(id).map(|e| &e.value)
    }

    pub fn get_mut(&mut self, id: FlowId) -> Option<&mut T> {
        self.entry_mut(id).map(|e| &mut e.value)
    }

    pub fn key(&self, id: FlowId) -> Option<FlowKey> {
        self.entry(id).map(|e| e.key)
    }

    pub fn remove(&mut self, id: FlowId) -> Option<T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let entry = slot.entry.take()?;
        self.by_key.remove(&entry.key);
        self.free.push(id.index);
        Some(entry.value)
    }

    /// Ask for `id` to be returned by [`FlowTable::pop_due`] at `at` (replacing any
    /// earlier request for this flow).
    pub fn schedule(&mut self, id: FlowId, at: Option<Instant>) {
        let Some(entry) = self.entry_mut(id) else {
            return;
        };
        entry.due = at;
        let Some(at) = at else { return };
        if entry.queued.is_some_and(|queued| queued <= at) {
            return;
        }
        entry.queued = Some(at);
        self.timers.push(Reverse((at, id)));
        self.purge_if_stale();
    }

    /// The next flow whose time has come, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<FlowId> {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                return None;
            }
            self.timers.pop();
            let Some(entry) = self.entry_mut(id) else {
                continue;
            };
            if entry.queued != Some(at) {
                continue;
            }
            entry.queued = None;
            match entry.due {
                Some(due) if due <= now => {
                    entry.due = None;
                    return Some(id);
                }
                Some(due) => {
                    entry.queued = Some(due);
                    self.timers.push(Reverse((due, id)));
                }
                None => {}
            }
        }
        None
    }

    /// The earliest time a flow may be due (possibly early: stale entries count).
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    pub fn ids(&self) -> impl Iterator<Item = FlowId> + '_ {
        self.by_key.values().copied()
    }

    fn purge_if_stale(&mut self) {
        if self.timers.len() <= 2 * self.by_key.len() + 64 {
            return;
        }
        let timers = core::mem::take(&mut self.timers);
        self.timers = timers
            .into_iter()
            .filter(|Reverse((at, id))| {
                self.entry(*id)
                    .is_some_and(|entry| entry.queued == Some(*at))
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{IpAddr, Ipv4Addr};

    fn key(port: u16) -> FlowKey {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 100));
        FlowKey {
            proto: Proto::Udp,
            guest: SocketAddr::new(ip, port),
            remote: SocketAddr::new(ip, 53),
        }
    }

    #[test]
    fn stale_ids_are_rejected_after_reuse() {
        let mut table = FlowTable::default();
        let a = table.insert(key(1), "a");
        assert_eq!(table.remove(a), Some("a"));
        let b = table.insert(key(2), "b");
        assert_eq!(a.index, b.index);
        assert_eq!(table.get(a), None);
        assert_eq!(table.get(b), Some(&"b"));
        assert_eq!(table.lookup(&key(1)), None);
        assert_eq!(table.lookup(&key(2)), Some(b));
    }

    #[test]
    fn next_id_predicts_insert() {
        let mut table = FlowTable::default();
        let predicted = table.next_id();
        let a = table.insert(key(1), ());
        assert_eq!(predicted, a);
        table.remove(a);
        let predicted = table.next_id();
        assert_eq!(table.insert(key(2), ()), predicted);
        assert_ne!(predicted, a);
    }

    #[test]
    fn skipped_ids_are_not_handed_out_again() {
        let mut table = FlowTable::default();
        let skipped = table.next_id();
        table.skip_id(skipped);
        let a = table.insert(key(1), ());
        assert_ne!(a, skipped);
        table.remove(a);
        let skipped = table.next_id();
        table.skip_id(skipped);
        assert_ne!(table.insert(key(2), ()), skipped);
    }

    #[test]
    fn timers_fire_in_order_and_follow_rescheduling() {
        let mut table = FlowTable::default();
        let a = table.insert(key(1), ());
        let b = table.insert(key(2), ());
        let t = |ms| Instant::from_millis(ms);
        table.schedule(a, Some(t(100)));
        table.schedule(b, Some(t(50)));
        // Moving a later: its early entry fires at 100 but requeues for 300.
        table.schedule(a, Some(t(300)));
        assert_eq!(table.pop_due(t(40)), None);
        assert_eq!(table.pop_due(t(150)), Some(b));
        assert_eq!(table.pop_due(t(150)), None);
        assert_eq!(table.pop_due(t(300)), Some(a));
        assert_eq!(table.pop_due(t(1000)), None);
    }

    #[test]
    fn heap_stays_bounded_under_rescheduling() {
        let mut table = FlowTable::default();
        let a = table.insert(key(1), ());
        for ms in (0..10_000).rev() {
            table.schedule(a, Some(Instant::from_millis(ms)));
        }
        assert!(table.timers.len() <= 2 * table.len() + 65);
    }
}

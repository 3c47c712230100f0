//! TCP from the guest and its flows' lifetime: a guest segment to its flow or, for a SYN,
//! admission (SYN rate, half-open limit, room in the table and the buffer budget) and the
//! host connect; the flows' verdicts (keep, remove, refused, expired), TIME-WAIT and the
//! evictions that make room, and the removal of a flow of any kind from the table.

use super::{Flow, Inbound, Stack};
use crate::config::BufferTier;
use crate::io::{CloseMode, FlowId, HostError, HostIo};
use crate::nat::tcp::{Lifetime, TcpFlow, TcpParams, Verdict};
use crate::nat::{refuse, FlowKey, Proto, Refusal};
use core::net::SocketAddr;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp::State as TcpState;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{TcpControl, TcpPacket, TcpRepr};

/// How often a flow that cannot send (full queue, unknown guest MAC) is polled anyway.
const STARVED_RETRY: Duration = Duration::from_millis(100);

/// Finished TCP flows kept to be renewed: enough for a burst of short connections, few
/// enough that what their buffers keep resident stays small next to the flows in use.
const SPARE_TCP_FLOWS: usize = 8;

impl Stack {
    pub(super) fn handle_tcp(
        &mut self,
        now: Instant,
        inbound: &Inbound<'_>,
        host: &mut impl HostIo,
    ) {
        let Ok(segment_packet) = TcpPacket::new_checked(inbound.payload) else {
            self.stats.rx_errors += 1;
            return;
        };
        let (src, dst) = (inbound.src.into(), inbound.dst.into());
        let Ok(segment) = TcpRepr::parse(
            &segment_packet,
            &src,
            &dst,
            &ChecksumCapabilities::ignored(),
        ) else {
            self.stats.rx_errors += 1;
            return;
        };
        let key = FlowKey {
            proto: Proto::Tcp,
            guest: SocketAddr::new(inbound.src, segment.src_port),
            remote: SocketAddr::new(inbound.dst, segment.dst_port),
        };
        let is_syn = segment.control == TcpControl::Syn && segment.ack_number.is_none();
        if let Some(id) = self.flows.lookup(&key) {
            let (finished, ending) = match self.flows.get(id) {
                Some(Flow::Tcp(tcp)) => (
                    tcp.is_finished(),
                    matches!(tcp.state(), TcpState::TimeWait | TcpState::Closed),
                ),
                _ => (false, false),
            };
            if is_syn && ending && !finished {
                // The old connection on this 4-tuple still hands the guest's last bytes to
                // the host: the new SYN waits for the guest's retransmission.
                log::debug!("{id:?}: SYN for a 4-tuple still draining to the host; dropped");
                self.stats.rx_dropped += 1;
                return;
            }
            if !(is_syn && finished) {
                if let Some(Flow::Tcp(tcp)) = self.flows.get_mut(id) {
                    tcp.take_segment(now, inbound.packet, &mut self.tx);
                    self.dirty.insert(id);
                }
                return;
            }
            // A new connection reusing the 4-tuple of one in TIME-WAIT: start afresh.
            self.remove_flow(id, CloseMode::Graceful, host);
        }
        if !is_syn {
            refuse(
                &mut self.tx,
                &mut self.stats,
                self.config.network,
                Refusal::Reset,
                &inbound.quote,
                Some(&segment),
            );
            return;
        }
        if !self.syn_rate.take(now) {
            log::debug!("SYN rate limit reached; dropping the SYN of {key:?}");
            self.stats.tcp_syn_rate_drops += 1;
            return;
        }
        self.open_tcp(now, key, inbound, &segment, host);
    }

    fn open_tcp(
        &mut self,
        now: Instant,
        key: FlowKey,
        inbound: &Inbound<'_>,
        syn: &TcpRepr<'_>,
        host: &mut impl HostIo,
    ) {
        let network = self.config.network;
        let quote = inbound.quote.clone();
        let target = match self.rules().host_target(inbound.dst, syn.dst_port) {
            Ok(target) => target,
            Err(refusal) => {
                refuse(
                    &mut self.tx,
                    &mut self.stats,
                    network,
                    refusal,
                    &quote,
                    Some(syn),
                );
                return;
            }
        };
        let limits = self.config.limits;
        // A full half-open table gives up its oldest connect rather than the new one: else
        // SYNs to a black hole (a scan, a flood, a dead host) would hold every slot for the
        // whole connect timeout and lock the guest out of all new connections.
        let half_open_full =
            self.half_open >= limits.max_half_open && !self.evict_oldest_half_open(host);
        let params = if half_open_full || !self.guest_tcp_room(host) {
            None
        } else {
            self.tcp_room(host).then(|| self.tcp_params(now)).flatten()
        };
        let Some(params) = params else {
            log::debug!("TCP limit reached; refusing {key:?}");
            refuse(
                &mut self.tx,
                &mut self.stats,
                network,
                Refusal::Reset,
                &quote,
                Some(syn),
            );
            return;
        };
        let spare = self.spare_flow(&params);
        let Some(flow) = TcpFlow::open(
            now,
            &key,
            inbound.packet,
            quote,
            params,
            &mut self.tx,
            spare,
        ) else {
            self.stats.rx_dropped += 1;
            return;
        };
        let mut flow = flow;
        flow.counters.host = Some(target);
        let id = self.insert_tcp(key, flow);
        self.half_open += 1;
        self.remember_half_open(id);
        log::debug!(
            "{id:?}: TCP {} -> {} (host {target})",
            key.guest,
            key.remote
        );
        let source = self.rules().source_for(inbound.dst, target);
        match host.tcp_connect(id, target, source) {
            Ok(()) => self.flows.schedule(id, Some(params.connect_deadline)),
            Err(err) => self.fail_tcp(id, err, host),
        }
    }

    fn is_half_open(&self, id: FlowId) -> bool {
        matches!(self.flows.get(id), Some(Flow::Tcp(tcp)) if tcp.is_connecting())
    }

    fn remember_half_open(&mut self, id: FlowId) {
        // Stale entries (connected or closed since) are dropped once they outnumber the
        // live ones, so the queue stays within twice the limit at amortised O(1).
        if self.half_open_order.len() >= 2 * self.config.limits.max_half_open.max(1) {
            let mut order = core::mem::take(&mut self.half_open_order);
            order.retain(|&old| self.is_half_open(old));
            self.half_open_order = order;
        }
        self.half_open_order.push_back(id);
    }

    /// Gives up the oldest half-open connect (the guest hears a timeout) to make room;
    /// false if there is none. Counted as a limit hit.
    fn evict_oldest_half_open(&mut self, host: &mut impl HostIo) -> bool {
        while let Some(id) = self.half_open_order.pop_front() {
            if self.is_half_open(id) {
                log::debug!("{id:?}: half-open limit reached; giving up the oldest connect");
                self.stats.tcp_half_open_limit_hits += 1;
                self.fail_tcp(id, HostError::TimedOut, host);
                return true;
            }
        }
        false
    }

    /// The host connect of a TCP flow failed: answer the guest's SYN and drop the flow.
    fn fail_tcp(&mut self, id: FlowId, err: HostError, host: &mut impl HostIo) {
        log::debug!("{id:?}: host connect failed: {err}");
        self.stats.tcp_connect_failures += 1;
        if matches!(err, HostError::Exhausted | HostError::Other(_)) {
            self.stats.host_socket_errors += 1;
        }
        if err == HostError::Exhausted {
            self.stats.host_exhausted += 1;
        }
        if let Some(Flow::Tcp(tcp)) = self.flows.get(id) {
            let Some(quote) = tcp.syn_quote().cloned() else {
                self.remove_flow(id, CloseMode::Abort, host);
                return;
            };
            let syn = tcp.syn_segment();
            refuse(
                &mut self.tx,
                &mut self.stats,
                self.config.network,
                Refusal::from_host_error(err),
                &quote,
                Some(&syn),
            );
        }
        self.remove_flow(id, CloseMode::Abort, host);
    }

    pub(super) fn apply_tcp_verdict(
        &mut self,
        now: Instant,
        id: FlowId,
        verdict: Verdict,
        host: &mut impl HostIo,
    ) {
        match verdict {
            Verdict::Keep { due } => {
                self.note_time_wait(id, host);
                let starved = matches!(self.flows.get(id), Some(Flow::Tcp(t)) if t.is_starved());
                if starved {
                    self.starved.push(id);
                }
                // smoltcp says "now" only when it could not send. A starved flow is resumed
                // as soon as the queue has room (and the guest's MAC is known); its own timer
                // then only needs to keep its timeouts alive, so it need not spin.
                let retry = if starved {
                    STARVED_RETRY
                } else {
                    Duration::from_millis(1)
                };
                let due = due.map(|at| at.max(now + retry));
                self.flows.schedule(id, due);
            }
            Verdict::Remove(mode) => self.remove_flow(id, mode, host),
            Verdict::Refused(err) => self.fail_tcp(id, err, host),
            Verdict::Expired(lifetime) => {
                let counter = match lifetime {
                    Lifetime::SynReceived => &mut self.stats.tcp_syn_received_timeouts,
                    Lifetime::User => &mut self.stats.tcp_user_timeouts,
                    Lifetime::FinWait2 => &mut self.stats.tcp_fin_wait2_timeouts,
                };
                *counter += 1;
                self.remove_flow(id, CloseMode::Abort, host);
            }
        }
    }

    /// A flow that just entered TIME-WAIT only re-ACKs a retransmitted FIN from now on: its
    /// buffers leave the memory budget, and it queues for eviction, beyond `max_time_wait`
    /// or under a full table.
    fn note_time_wait(&mut self, id: FlowId, host: &mut impl HostIo) {
        let Some(Flow::Tcp(tcp)) = self.flows.get_mut(id) else {
            return;
        };
        if tcp.lingering || !tcp.is_time_wait_only() {
            return;
        }
        tcp.lingering = true;
        self.stats.tcp_buffer_bytes -= tcp.buffer_bytes() as u64;
        self.time_wait_flows += 1;
        while let Some(&oldest) = self.time_wait.front() {
            if matches!(self.flows.get(oldest), Some(Flow::Tcp(t)) if t.lingering) {
                break;
            }
            self.time_wait.pop_front();
        }
        self.time_wait.push_back(id);
        // A burst of short connections closed by the host side would otherwise keep a
        // whole flow each for the 10 s of TIME-WAIT: memory and table slots at its peak.
        while self.time_wait_flows > self.config.limits.max_time_wait && self.evict_time_wait(host)
        {
        }
    }

    /// Make room in a full TCP table by dropping the oldest flow in TIME-WAIT; false when
    /// there is none (every flow is in use).
    pub(super) fn evict_time_wait(&mut self, host: &mut impl HostIo) -> bool {
        while let Some(oldest) = self.time_wait.pop_front() {
            if matches!(self.flows.get(oldest), Some(Flow::Tcp(t)) if t.lingering) {
                log::debug!("{oldest:?}: dropped from TIME-WAIT early (a limit)");
                self.stats.tcp_time_wait_evictions += 1;
                self.remove_flow(oldest, CloseMode::Graceful, host);
                return true;
            }
        }
        false
    }

    /// Is there room for one more TCP flow (after evicting one in TIME-WAIT if need be)?
    /// A refusal is counted.
    pub(super) fn tcp_room(&mut self, host: &mut impl HostIo) -> bool {
        if (self.stats.tcp_flows as usize) < self.config.limits.max_tcp_flows
            || self.evict_time_wait(host)
        {
            return true;
        }
        self.stats.tcp_flow_limit_hits += 1;
        false
    }

    /// May the guest open one more TCP flow of its own? While a port is published it leaves
    /// `tcp_forward_reserve` flows (at most half the table) to forwards' clients (after evicting flows in TIME-WAIT if need be). A refusal
    /// is counted as a `max_tcp_flows` hit: it is the guest's part of that table.
    fn guest_tcp_room(&mut self, host: &mut impl HostIo) -> bool {
        let limits = self.config.limits;
        // Only while a TCP port is published, and never more than half the table.
        let reserve = if self.forwards.is_empty() {
            0
        } else {
            limits.tcp_forward_reserve.min(limits.max_tcp_flows / 2)
        };
        let guest_max = limits.max_tcp_flows - reserve;
        while (self.stats.tcp_flows as usize).saturating_sub(self.forward_of.len()) >= guest_max {
            if !self.evict_time_wait(host) {
                self.stats.tcp_flow_limit_hits += 1;
                return false;
            }
        }
        true
    }

    /// Parameters of a new TCP flow, with buffers the memory budget allows (see
    /// `Limits::tcp_buffers`); `None` (counted) when even the minimum ones would not fit.
    pub(super) fn tcp_params(&mut self, now: Instant) -> Option<TcpParams> {
        let limits = self.config.limits;
        let reserved = self.stats.tcp_buffer_bytes as usize;
        // Flows in TIME-WAIT hold no buffers and are evicted for new ones when need be.
        let open = (self.stats.tcp_flows as usize).saturating_sub(self.time_wait_flows);
        let Some((rx_buffer, tx_buffer, tier)) = limits.tcp_buffers(reserved, open) else {
            self.stats.tcp_buffer_budget_hits += 1;
            return None;
        };
        if tier != BufferTier::Full {
            self.stats.tcp_buffer_reductions += 1;
        }
        Some(TcpParams {
            mtu: self.config.mtu,
            offload: self.config.tap_offload,
            rx_buffer,
            tx_buffer,
            random_seed: self.next_random(),
            connect_deadline: now + self.config.timeouts.tcp_connect,
            lifetimes: self.config.timeouts.tcp_lifetimes(),
        })
    }

    /// A finished flow to renew for a new one with `params`, if one with buffers of that
    /// size is kept.
    pub(super) fn spare_flow(&mut self, params: &TcpParams) -> Option<Box<TcpFlow>> {
        let limits = &self.config.limits;
        let full = (limits.tcp_rx_buffer, limits.tcp_tx_buffer);
        if (params.rx_buffer, params.tx_buffer) == full {
            self.spare_tcp.pop()
        } else {
            None
        }
    }

    /// Enter a new TCP flow in the table and the counters (its buffers in the budget).
    pub(super) fn insert_tcp(&mut self, key: FlowKey, flow: Box<TcpFlow>) -> FlowId {
        self.stats.tcp_flows += 1;
        self.stats.tcp_flows_opened += 1;
        self.stats.tcp_buffer_bytes += flow.buffer_bytes() as u64;
        self.flows.insert(key, Flow::Tcp(flow))
    }

    pub(super) fn remove_flow(&mut self, id: FlowId, mode: CloseMode, host: &mut impl HostIo) {
        let Some(flow) = self.flows.remove(id) else {
            return;
        };
        if let Some(forward) = self.forward_of.remove(&id) {
            if let Some(count) = self.flows_per_forward.get_mut(&forward) {
                *count -= 1;
                if *count == 0 {
                    self.flows_per_forward.remove(&forward);
                }
            }
        }
        match flow {
            Flow::Tcp(tcp) => {
                if tcp.is_connecting() {
                    self.half_open -= 1;
                }
                self.stats.tcp_flows -= 1;
                if tcp.lingering {
                    self.time_wait_flows -= 1;
                } else {
                    self.stats.tcp_buffer_bytes -= tcp.buffer_bytes() as u64;
                }
                let limits = &self.config.limits;
                if self.spare_tcp.len() < SPARE_TCP_FLOWS
                    && tcp.is_reusable(limits.tcp_rx_buffer, limits.tcp_tx_buffer)
                {
                    self.spare_tcp.push(tcp);
                }
            }
            Flow::Udp(udp) => {
                self.stats.udp_flows -= 1;
                if udp.dns {
                    self.dns_flows -= 1;
                }
            }
            Flow::Icmp(_) => self.stats.icmp_flows -= 1,
        }
        log::debug!("{id:?}: closed ({mode:?})");
        host.close(id, mode);
    }
}

//! UDP and ICMP echo flows from the guest: a datagram or echo request to its flow (opened
//! through the NAT's rules, within the tables' limits, evicting the longest idle), the
//! host socket drained back to the guest, the ICMP errors the host queued relayed, and DNS
//! queries retried at the next nameserver.

use super::{Flow, Inbound, Stack};
use crate::io::{CloseMode, FlowId, HostError, HostIo, IcmpReport, SourceAddr};
use crate::nat::datagram::{DatagramFlow, ReadOutcome};
use crate::nat::icmp_error::{echo_transport, is_port_unreachable, send_icmp_error, udp_transport};
use crate::nat::udp::UdpFlow;
use crate::nat::{refuse, Ctx, FlowKey, Proto, Quote, Refusal};
use crate::service::dns::DnsRetry;
use core::net::{IpAddr, SocketAddr};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{UdpPacket, UdpRepr};

/// Which flows a full limit evicts from.
#[derive(Debug, Clone, Copy)]
enum Eviction {
    /// The longest-idle flow of the protocol's table.
    Table(Proto),
    /// The oldest query to the DNS forwarder.
    Dns,
}

/// Is `flow` one that a full `which` evicts from?
fn serves(flow: &Flow, which: Eviction) -> bool {
    match (flow, which) {
        (Flow::Udp(_), Eviction::Table(Proto::Udp)) => true,
        (Flow::Udp(udp), Eviction::Dns) => udp.dns,
        (Flow::Icmp(_), Eviction::Table(Proto::Icmp)) => true,
        _ => false,
    }
}

impl Stack {
    /// Drain a UDP or ICMP flow's host socket towards the guest.
    pub(super) fn read_datagrams(
        &mut self,
        now: Instant,
        id: FlowId,
        key: &FlowKey,
        host: &mut impl HostIo,
    ) {
        let mut ctx = Ctx {
            now,
            tx: &mut self.tx,
            host,
            stats: &mut self.stats,
            scratch: &mut self.scratch,
        };
        let upstreams = self.dns_upstreams.len();
        match self.flows.get_mut(id) {
            Some(Flow::Udp(udp)) => {
                let outcome = udp.read_host(id, key, &mut ctx, upstreams);
                if let Some(retry) = udp.dns_retry.as_deref_mut() {
                    if core::mem::take(&mut retry.answered) && retry.upstream != self.dns_preferred
                    {
                        if let Some(answering) = self.dns_upstreams.get(retry.upstream) {
                            log::info!(
                                "DNS upstream {} did not answer; using {answering} for new queries",
                                self.dns_upstreams
                                    .get(self.dns_preferred)
                                    .map_or("?".to_string(), ToString::to_string)
                            );
                            self.dns_preferred = retry.upstream;
                        }
                    }
                }
                match outcome {
                    ReadOutcome::Drained => {}
                    ReadOutcome::Starved => self.starved.push(id),
                    ReadOutcome::RetryDns => self.retry_dns(now, id, host),
                    ReadOutcome::Failed(_) if self.relay_icmp_errors(now, id, host) > 0 => {
                        // The error was an ICMP error the kernel also queued in full (who
                        // sent it, which datagram): relayed as it is; read on.
                        self.read_datagrams(now, id, key, host);
                    }
                    ReadOutcome::Failed(HostError::ConnectionRefused)
                        if self.flows.get(id).is_some_and(|flow| {
                            matches!(flow, Flow::Udp(udp) if udp
                                .dns_retry
                                .as_ref()
                                .is_some_and(|r| r.pending.iter().any(|p| p.tries < upstreams)))
                        }) =>
                    {
                        // Nothing listens at this nameserver: try the next one.
                        self.retry_dns(now, id, host)
                    }
                    ReadOutcome::Failed(err) => self.refuse_udp(id, Refusal::for_datagram(err)),
                }
            }
            Some(Flow::Icmp(icmp)) => {
                match icmp.read_host(id, key, &mut ctx) {
                    ReadOutcome::Starved => self.starved.push(id),
                    ReadOutcome::Failed(_) if self.relay_icmp_errors(now, id, host) > 0 => {
                        self.read_datagrams(now, id, key, host);
                    }
                    // Reading stops until the next readiness, as before the error.
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Tell the guest, as `refusal` says, that its latest datagram on UDP flow `id` did not
    /// get through (nothing if `id` is not a UDP flow).
    fn refuse_udp(&mut self, id: FlowId, refusal: Refusal) {
        if let Some(Flow::Udp(udp)) = self.flows.get(id) {
            let network = self.config.network;
            refuse(
                &mut self.tx,
                &mut self.stats,
                network,
                refusal,
                &udp.core.quote,
                None,
            );
        }
    }

    /// Relay the ICMP errors queued on a UDP or echo flow's host socket to the guest,
    /// within `max_icmp_error_rate`; returns how many the host had. A DNS query whose
    /// nameserver does not listen goes to the next one instead (as on ECONNREFUSED).
    pub(super) fn relay_icmp_errors(
        &mut self,
        now: Instant,
        id: FlowId,
        host: &mut impl HostIo,
    ) -> usize {
        let Some(key) = self.flows.key(id) else {
            return 0;
        };
        let upstreams = self.dns_upstreams.len();
        let mut taken = 0;
        let mut retry_dns = false;
        // The host's queue is bounded (by the socket's receive buffer): drained whole, as
        // its readiness is edge-triggered.
        loop {
            let report = match host.recv_icmp_error(id, &mut self.scratch) {
                Ok(Some(report)) => report,
                Ok(None) => break,
                Err(err) => {
                    log::debug!("{id:?}: reading queued ICMP errors failed: {err}");
                    break;
                }
            };
            taken += 1;
            let quoted = &self.scratch[..report.len.min(self.scratch.len())];
            let (quote, transport, peer) = match self.flows.get(id) {
                Some(Flow::Udp(udp)) => {
                    let retry = udp
                        .dns_retry
                        .as_ref()
                        .is_some_and(|r| r.pending.iter().any(|p| p.tries < upstreams));
                    if retry && is_port_unreachable(&report) {
                        retry_dns = true;
                        continue;
                    }
                    let transport = udp_transport(&udp.core.quote, quoted);
                    (udp.core.quote.clone(), transport, udp.core.counters.host)
                }
                Some(Flow::Icmp(icmp)) => {
                    let transport = echo_transport(&icmp.core.quote, quoted, key.guest.port());
                    (icmp.core.quote.clone(), transport, icmp.core.counters.host)
                }
                _ => break,
            };
            if !self.icmp_error_rate.take(now) {
                self.stats.icmp_error_rate_drops += 1;
                continue;
            }
            let from = self.icmp_error_source(&key, peer, &report);
            let (tx, stats) = (&mut self.tx, &mut self.stats);
            if send_icmp_error(tx, stats, from, &report, &quote, &transport) {
                log::debug!(
                    "{id:?}: relayed ICMP{} type {} code {} from {from} to the guest",
                    if report.v6 { "v6" } else { "" },
                    report.icmp_type,
                    report.code
                );
                self.stats.icmp_errors_relayed += 1;
            } else {
                log::debug!("{id:?}: cannot relay {report:?}");
                self.stats.icmp_errors_unrelayed += 1;
            }
        }
        if retry_dns {
            self.retry_dns(now, id, host);
        }
        taken
    }

    /// Where the guest sees an ICMP error about one of its flows come from: the remote
    /// itself as the address the guest sent to (the NAT may have chosen another target:
    /// host loopback for the gateway, a nameserver for the DNS forwarder); a router as its
    /// own address, unless the guest could not route to it (host loopback, the virtual
    /// network), which then appears as the gateway.
    fn icmp_error_source(
        &self,
        key: &FlowKey,
        peer: Option<SocketAddr>,
        report: &IcmpReport,
    ) -> IpAddr {
        match report.offender {
            Some(ip) if peer.is_some_and(|peer| peer.ip() == ip) => key.remote.ip(),
            Some(ip) => self
                .rules()
                .guest_visible(SocketAddr::new(ip, 0), key.guest.ip())
                .ip(),
            None if is_port_unreachable(report) => key.remote.ip(),
            None => match key.guest.ip() {
                IpAddr::V4(_) => IpAddr::V4(self.config.network.gateway()),
                IpAddr::V6(_) => IpAddr::V6(self.config.network.gateway6()),
            },
        }
    }

    pub(super) fn handle_udp(
        &mut self,
        now: Instant,
        inbound: &Inbound<'_>,
        host: &mut impl HostIo,
    ) {
        let Ok(packet) = UdpPacket::new_checked(inbound.payload) else {
            self.stats.rx_errors += 1;
            return;
        };
        let (src, dst) = (inbound.src.into(), inbound.dst.into());
        let Ok(repr) = UdpRepr::parse(&packet, &src, &dst, &ChecksumCapabilities::ignored()) else {
            self.stats.rx_errors += 1;
            return;
        };
        let data = packet.payload();
        let Some(hop_limit) =
            self.forwarded_hop_limit(inbound.dst, &inbound.quote, packet.into_inner())
        else {
            return;
        };
        let key = FlowKey {
            proto: Proto::Udp,
            guest: SocketAddr::new(inbound.src, repr.src_port),
            remote: SocketAddr::new(inbound.dst, repr.dst_port),
        };
        let quote = inbound.quote.clone();
        let network = self.config.network;
        let id = match self.flows.lookup(&key) {
            Some(id) => id,
            None => {
                let target = match self.rules().host_target(inbound.dst, repr.dst_port) {
                    Ok(target) => target,
                    Err(refusal) => {
                        refuse(
                            &mut self.tx,
                            &mut self.stats,
                            network,
                            refusal,
                            &quote,
                            None,
                        );
                        return;
                    }
                };
                let idle = if repr.dst_port == 53 {
                    self.config.timeouts.udp_dns_idle
                } else {
                    self.config.timeouts.udp_idle
                };
                let mut flow = UdpFlow::new(now, idle, quote.clone());
                flow.core.counters.host = Some(target);
                flow.dns = repr.dst_port == 53 && self.rules().is_dns_service(inbound.dst);
                if flow.dns && self.dns_upstreams.len() > 1 {
                    flow.dns_retry = Some(Box::new(DnsRetry::new(self.dns_preferred)));
                }
                let source = self.rules().source_for(inbound.dst, target);
                let flow = Flow::Udp(flow);
                let Some(id) = self.open_datagram_flow(key, flow, host, |host, id| {
                    host.udp_open(id, target, source)
                }) else {
                    return;
                };
                id
            }
        };
        let Some(Flow::Udp(udp)) = self.flows.get_mut(id) else {
            return;
        };
        udp.core.guest_sent(now, data.len(), quote);
        if let Some((forward, peer)) = udp.forward {
            if let Err(err) = host.udp_send_to(forward, peer, data) {
                log::debug!("{id:?}: reply through forward {forward} failed: {err}");
                self.stats.rx_dropped += 1;
            }
            return;
        }
        let mut sent = host.udp_send(id, data, hop_limit);
        if matches!(sent, Err(err) if err != HostError::WouldBlock)
            && self.relay_icmp_errors(now, id, host) > 0
        {
            // The error was the network's answer to an earlier datagram (Linux fails the
            // next send with it once): relayed in full; this datagram goes out after all.
            sent = host.udp_send(id, data, hop_limit);
        }
        let Some(Flow::Udp(udp)) = self.flows.get_mut(id) else {
            return;
        };
        let mut dns_due = None;
        if let Some(retry) = udp.dns_retry.as_deref_mut() {
            let deadline = now + self.config.timeouts.dns_retry;
            if retry.track(data, deadline, self.config.limits.max_dns_retry_queries) {
                self.stats.dns_retry_forgotten += 1;
            }
            dns_due = Some(udp.next_due());
        }
        // An earlier query learnt that nothing listens at this nameserver: the next one.
        let retry_now = dns_due.is_some() && sent == Err(HostError::ConnectionRefused);
        match sent {
            Ok(()) => {}
            Err(_) if retry_now => {}
            Err(HostError::WouldBlock) => self.stats.rx_dropped += 1,
            Err(err) => {
                log::debug!("{id:?}: UDP send failed: {err}");
                self.refuse_udp(id, Refusal::for_datagram(err));
            }
        }
        if retry_now {
            self.retry_dns(now, id, host);
        } else if let Some(due) = dns_due {
            self.flows.schedule(id, Some(due));
        }
    }

    /// Send a DNS flow's unanswered queries to the next nameserver (each query at most once
    /// to each); the flow's socket moves there.
    pub(super) fn retry_dns(&mut self, now: Instant, id: FlowId, host: &mut impl HostIo) {
        let upstreams = self.dns_upstreams.len();
        let timeout = self.config.timeouts.dns_retry;
        let Some(Flow::Udp(udp)) = self.flows.get_mut(id) else {
            return;
        };
        let Some(retry) = udp.dns_retry.as_deref_mut() else {
            return;
        };
        // A query every nameserver had is given up: the guest's resolver retries itself.
        retry.pending.retain(|p| p.tries < upstreams);
        if retry.pending.is_empty() {
            let due = udp.next_due();
            self.flows.schedule(id, Some(due));
            return;
        }
        let next = (retry.upstream + 1) % upstreams;
        let upstream = self.dns_upstreams[next];
        let target = SocketAddr::new(upstream, 53);
        let source = if upstream.is_loopback() {
            SourceAddr::Kernel
        } else {
            SourceAddr::Outbound
        };
        log::debug!(
            "{id:?}: DNS upstream {:?} did not answer in time or refused; asking {upstream}",
            udp.core.counters.host
        );
        if let Err(err) = host.udp_reconnect(id, target, source) {
            log::debug!("{id:?}: cannot reach DNS upstream {upstream}: {err}");
            self.stats.host_socket_errors += 1;
            self.remove_flow(id, CloseMode::Abort, host);
            return;
        }
        retry.upstream = next;
        udp.core.counters.host = Some(target);
        let hop_limit = udp.core.quote.hop_limit();
        for pending in retry.pending.iter_mut() {
            pending.tries += 1;
            pending.deadline = now + timeout;
            self.stats.dns_retries += 1;
            if let Err(err) = host.udp_send(id, &pending.query, hop_limit) {
                log::debug!("{id:?}: DNS retry to {upstream} failed: {err}");
            }
        }
        let due = udp.next_due();
        self.flows.schedule(id, Some(due));
    }

    /// Add a UDP or ICMP flow, evicting the longest-idle one of its kind when the table is
    /// full, and open its host socket with `open`. `None` if the host refused.
    pub(super) fn open_datagram_flow<H: HostIo>(
        &mut self,
        key: FlowKey,
        flow: Flow,
        host: &mut H,
        open: impl FnOnce(&mut H, FlowId) -> Result<(), HostError>,
    ) -> Option<FlowId> {
        let limits = self.config.limits;
        let (count, limit) = match key.proto {
            Proto::Udp => (self.stats.udp_flows, limits.max_udp_flows),
            _ => (self.stats.icmp_flows, limits.max_icmp_flows),
        };
        let dns = matches!(&flow, Flow::Udp(udp) if udp.dns);
        if dns && self.dns_flows >= limits.max_dns_flows {
            self.evict_oldest(Eviction::Dns, host);
        } else if count as usize >= limit {
            self.evict_oldest(Eviction::Table(key.proto), host);
        }
        let now = self.now;
        let expires_at = flow.datagram().map_or(now, DatagramFlow::expires_at);
        let id = self.flows.insert(key, flow);
        match key.proto {
            Proto::Udp => {
                self.stats.udp_flows += 1;
                self.stats.udp_flows_opened += 1;
                self.dns_flows += usize::from(dns);
            }
            _ => {
                self.stats.icmp_flows += 1;
                self.stats.icmp_flows_opened += 1;
            }
        }
        self.order_by_idle(now, id, key.proto, dns);
        if let Err(err) = open(host, id) {
            log::debug!("{id:?}: cannot open host socket for {key:?}: {err}");
            if err != HostError::PermissionDenied {
                self.stats.host_socket_errors += 1;
            }
            if err == HostError::Exhausted {
                // Out of fds (or ports): the guest hears it at once, as for a refused
                // connect, rather than waiting for a reply that cannot come. A ping is
                // dropped, as an overloaded router drops it.
                self.stats.host_exhausted += 1;
                self.refuse_udp(id, Refusal::Reset);
            }
            self.remove_flow(id, CloseMode::Abort, host);
            return None;
        }
        self.flows.schedule(id, Some(expires_at));
        Some(id)
    }

    /// Enter a new datagram flow in the idle order of its table (and of the DNS queries).
    fn order_by_idle(&mut self, now: Instant, id: FlowId, proto: Proto, dns: bool) {
        let flows = &self.flows;
        let live =
            |which: Eviction| move |id: FlowId| flows.get(id).is_some_and(|f| serves(f, which));
        match proto {
            Proto::Udp => {
                let udp = Eviction::Table(Proto::Udp);
                let count = self.stats.udp_flows as usize;
                self.udp_idle.insert(now, id, count, live(udp));
                if dns {
                    self.dns_idle
                        .insert(now, id, self.dns_flows, live(Eviction::Dns));
                }
            }
            _ => {
                let icmp = Eviction::Table(Proto::Icmp);
                let count = self.stats.icmp_flows as usize;
                self.icmp_idle.insert(now, id, count, live(icmp));
            }
        }
    }

    /// Make room by closing the longest-idle flow of a full UDP/ICMP table, or the oldest
    /// DNS query: O(log n) amortised, from the table's `IdleOrder`.
    fn evict_oldest(&mut self, which: Eviction, host: &mut impl HostIo) {
        let order = match which {
            Eviction::Dns => &mut self.dns_idle,
            Eviction::Table(Proto::Udp) => &mut self.udp_idle,
            Eviction::Table(_) => &mut self.icmp_idle,
        };
        let flows = &self.flows;
        let oldest = order.pop_oldest(|id| {
            let flow = flows.get(id)?;
            if !serves(flow, which) {
                return None;
            }
            Some(flow.datagram()?.last_active)
        });
        if let Some(id) = oldest {
            log::debug!("{id:?}: evicted ({which:?} limit)");
            match which {
                Eviction::Dns => self.stats.dns_flow_evictions += 1,
                Eviction::Table(Proto::Udp) => self.stats.udp_flow_evictions += 1,
                Eviction::Table(_) => self.stats.icmp_flow_evictions += 1,
            }
            self.remove_flow(id, CloseMode::Graceful, host);
        }
    }

    /// The hop limit a guest's UDP datagram or echo request to `dst` leaves through its host
    /// socket with: one less, as a router forwards it — as the reference does (libslirp
    /// decrements the TTL of the guest's UDP), so that traceroute from a container shows the
    /// gateway as its first hop — and unchanged to rslirp's own addresses (the gateway, the
    /// DNS forwarder: delivered there, not forwarded). `None` when it runs out: the guest
    /// gets time exceeded from the gateway, quoting `transport` (its transport header and
    /// data), as from a router.
    pub(super) fn forwarded_hop_limit(
        &mut self,
        dst: IpAddr,
        quote: &Quote,
        transport: &[u8],
    ) -> Option<u8> {
        let gateway = match dst {
            IpAddr::V4(_) => IpAddr::V4(self.config.network.gateway()),
            IpAddr::V6(_) => IpAddr::V6(self.config.network.gateway6()),
        };
        let hop_limit = quote.hop_limit();
        if dst == gateway || self.rules().is_dns_service(dst) {
            return Some(hop_limit);
        }
        if hop_limit > 1 {
            return Some(hop_limit - 1);
        }
        let v6 = dst.is_ipv6();
        let expired = crate::io::IcmpReport {
            v6,
            // Time exceeded in transit: ICMP type 11 / ICMPv6 type 3, code 0.
            icmp_type: if v6 { 3 } else { 11 },
            code: 0,
            info: 0,
            offender: Some(gateway),
            len: transport.len(),
        };
        crate::nat::icmp_error::send_icmp_error(
            &mut self.tx,
            &mut self.stats,
            gateway,
            &expired,
            quote,
            transport,
        );
        self.stats.rx_dropped += 1;
        None
    }
}

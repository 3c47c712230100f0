//! Counters the stack keeps. Interface counters follow libnetwork's `InterfaceStatistics`
//! (rx = frames from the guest, tx = frames to the guest).

/// Every counter is monotonic except the `*_flows` gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    /// Frames from the guest that could not be parsed.
    pub rx_errors: u64,
    /// Frames from the guest that were valid but not for us (or not supported).
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    /// Frames for the guest dropped: the transmit queue was full, or the tap refused them
    /// because the guest's link is down.
    pub tx_dropped: u64,

    pub tcp_flows: u64,
    pub udp_flows: u64,
    pub icmp_flows: u64,
    pub tcp_flows_opened: u64,
    pub udp_flows_opened: u64,
    pub icmp_flows_opened: u64,
    /// Connections refused because `max_tcp_flows` was reached (for the guest's own
    /// connections: `max_tcp_flows` less `tcp_forward_reserve`).
    pub tcp_flow_limit_hits: u64,
    /// Flows in TIME-WAIT dropped early: beyond `max_time_wait`, or to make room for a new
    /// flow in a full TCP table.
    pub tcp_time_wait_evictions: u64,
    /// Oldest half-open connects given up (the guest hears host unreachable) to admit a
    /// new SYN because `max_half_open` connects were pending.
    pub tcp_half_open_limit_hits: u64,
    /// UDP/ICMP flows evicted because their table was full.
    pub udp_flow_evictions: u64,
    pub icmp_flow_evictions: u64,
    /// DNS flows evicted because `max_dns_flows` queries were in flight.
    pub dns_flow_evictions: u64,
    /// TCP flows given the small buffers because big ones would not fit the budget.
    pub tcp_buffer_reductions: u64,
    /// Connections refused because even small buffers would not fit `tcp_buffer_budget`.
    pub tcp_buffer_budget_hits: u64,
    /// Buffer capacity reserved by the open TCP flows now (a gauge, bytes).
    pub tcp_buffer_bytes: u64,
    /// `add_hostfwd` requests refused because `max_forwards` forwards exist.
    pub forward_limit_hits: u64,
    /// Host clients of port forwards closed at once because forwards' clients already held
    /// `max_forward_flows` TCP flows, or this forward `max_flows_per_forward`.
    pub forward_flow_limit_hits: u64,
    /// Control-socket connections closed at once because `MAX_CLIENTS` were being served.
    pub api_clients_rejected: u64,
    /// Host connects that failed (refused, unreachable, timed out).
    pub tcp_connect_failures: u64,
    /// Host sockets that could not be opened (fds, ports, permissions).
    pub host_socket_errors: u64,
    /// TCP flows reset because the guest never acknowledged the SYN-ACK
    /// (`Timeouts::tcp_syn_received`).
    pub tcp_syn_received_timeouts: u64,
    /// TCP flows reset because the guest stopped acknowledging data (`Timeouts::tcp_user`).
    pub tcp_user_timeouts: u64,
    /// TCP flows reset after FIN-WAIT-2 without the guest's FIN (`Timeouts::tcp_fin_wait2`).
    pub tcp_fin_wait2_timeouts: u64,
    /// Guest SYNs of new connections dropped beyond `max_syn_rate`.
    pub tcp_syn_rate_drops: u64,

    /// Guest datagrams reassembled from fragments (IPv4, and IPv6's Fragment header).
    pub ip_frag_reassembled: u64,
    /// Datagrams given up incomplete at the reassembly timeout.
    pub ip_frag_timeouts: u64,
    /// Datagrams dropped whole because fragments overlapped or disagreed (RFC 5722).
    pub ip_frag_overlaps: u64,
    /// Incomplete datagrams dropped because `max_reassembly_datagrams` were held.
    pub ip_frag_datagram_evictions: u64,
    /// Incomplete datagrams dropped because `max_reassembly_bytes` were held.
    pub ip_frag_byte_evictions: u64,
    /// Datagrams sent to the guest in fragments (larger than its MTU).
    pub ip_frag_fragmented: u64,
    /// Datagrams being reassembled now (a gauge).
    pub ip_frag_pending: u64,
    /// Bytes the reassembly holds now, as `max_reassembly_bytes` counts them (a gauge).
    pub ip_frag_bytes: u64,
    /// Host calls that failed for lack of file descriptors, ports or memory (EMFILE,
    /// ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL): a new guest flow refused (RST, ICMP port
    /// unreachable, a ping dropped) or a port forward's accept postponed and retried.
    pub host_exhausted: u64,
    /// DNS queries sent again to the next nameserver (the first did not answer in time,
    /// refused, or failed).
    pub dns_retries: u64,
    /// DNS queries not remembered for a retry because `max_dns_retry_queries` of their
    /// flow were in flight.
    pub dns_retry_forgotten: u64,
    /// ICMP errors the host reported on flows' sockets (time exceeded, unreachable, packet
    /// too big) relayed to the guest.
    pub icmp_errors_relayed: u64,
    /// Such errors dropped beyond `max_icmp_error_rate`.
    pub icmp_error_rate_drops: u64,
    /// Such errors not relayed because ICMP has no message the guest could take for them
    /// (e.g. parameter problem, source quench).
    pub icmp_errors_unrelayed: u64,
}

use crate::config::Limits;
use smoltcp::time::{Duration, Instant};

/// How often a limit that keeps being hit is reported again.
pub const LIMIT_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// A named limit whose hits are counted (see docs/limits.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    TcpFlows,
    TimeWait,
    HalfOpen,
    UdpFlows,
    IcmpFlows,
    DnsFlows,
    TcpBufferReduced,
    TcpBufferBudget,
    TxQueue,
    Forwards,
    ForwardFlows,
    ApiClients,
    ReassemblyDatagrams,
    ReassemblyBytes,
    SynRate,
    IcmpErrorRate,
    /// Not a limit of ours: the host's (file descriptors, ports, memory).
    HostExhausted,
}

impl Limit {
    pub const ALL: [Limit; 17] = [
        Limit::TcpFlows,
        Limit::TimeWait,
        Limit::HalfOpen,
        Limit::UdpFlows,
        Limit::IcmpFlows,
        Limit::DnsFlows,
        Limit::TcpBufferReduced,
        Limit::TcpBufferBudget,
        Limit::TxQueue,
        Limit::Forwards,
        Limit::ForwardFlows,
        Limit::ApiClients,
        Limit::ReassemblyDatagrams,
        Limit::ReassemblyBytes,
        Limit::SynRate,
        Limit::IcmpErrorRate,
        Limit::HostExhausted,
    ];

    /// The `Limits` field's name, as docs/limits.md lists it.
    pub fn name(self) -> &'static str {
        match self {
            Limit::TcpFlows => "max_tcp_flows",
            Limit::TimeWait => "max_time_wait",
            Limit::HalfOpen => "max_half_open",
            Limit::UdpFlows => "max_udp_flows",
            Limit::IcmpFlows => "max_icmp_flows",
            Limit::DnsFlows => "max_dns_flows",
            Limit::TcpBufferReduced | Limit::TcpBufferBudget => "tcp_buffer_budget",
            Limit::TxQueue => "max_tx_queue_frames",
            Limit::Forwards => "max_forwards",
            Limit::ForwardFlows => "max_forward_flows",
            Limit::ApiClients => "max_api_clients",
            Limit::ReassemblyDatagrams => "max_reassembly_datagrams",
            Limit::ReassemblyBytes => "max_reassembly_bytes",
            Limit::SynRate => "max_syn_rate",
            Limit::IcmpErrorRate => "max_icmp_error_rate",
            Limit::HostExhausted => "host resources",
        }
    }

    pub fn value(self, limits: &Limits) -> usize {
        match self {
            Limit::TcpFlows => limits.max_tcp_flows,
            Limit::TimeWait => limits.max_time_wait,
            Limit::HalfOpen => limits.max_half_open,
            Limit::UdpFlows => limits.max_udp_flows,
            Limit::IcmpFlows => limits.max_icmp_flows,
            Limit::DnsFlows => limits.max_dns_flows,
            Limit::TcpBufferReduced | Limit::TcpBufferBudget => limits.tcp_buffer_budget,
            Limit::TxQueue => limits.max_tx_queue_frames,
            Limit::Forwards => limits.max_forwards,
            Limit::ForwardFlows => limits.max_forward_flows,
            Limit::ApiClients => limits.max_api_clients,
            Limit::ReassemblyDatagrams => limits.max_reassembly_datagrams,
            Limit::ReassemblyBytes => limits.max_reassembly_bytes,
            Limit::SynRate => limits.max_syn_rate as usize,
            Limit::IcmpErrorRate => limits.max_icmp_error_rate as usize,
            Limit::HostExhausted => 0,
        }
    }

    /// What the stack does on a hit.
    pub fn effect(self) -> &'static str {
        match self {
            Limit::TcpFlows | Limit::TcpBufferBudget => "new TCP connections refused with RST",
            Limit::HalfOpen => "the oldest pending connects given up (ICMP host unreachable)",
            Limit::TimeWait => "the oldest flows in TIME-WAIT dropped early",
            Limit::UdpFlows => "longest-idle UDP flows evicted",
            Limit::IcmpFlows => "longest-idle ICMP echo flows evicted",
            Limit::DnsFlows => "oldest DNS queries evicted",
            Limit::TcpBufferReduced => "new TCP flows get small buffers",
            Limit::TxQueue => "frames for the guest dropped",
            Limit::Forwards => "add_hostfwd refused",
            Limit::ForwardFlows => {
                "forwards' host clients closed (the forwards' share or one forward's)"
            }
            Limit::ApiClients => "control-socket connections closed",
            Limit::ReassemblyDatagrams | Limit::ReassemblyBytes => {
                "the oldest incomplete fragmented datagrams dropped"
            }
            Limit::SynRate => "new connections' SYNs dropped (the guest retransmits them)",
            Limit::IcmpErrorRate => "ICMP errors from the host's network not relayed to the guest",
            Limit::HostExhausted => {
                "new flows refused (RST / ICMP), forward accepts retried shortly"
            }
        }
    }

    /// The counter of its hits.
    pub fn hits(self, stats: &Stats) -> u64 {
        match self {
            Limit::TcpFlows => stats.tcp_flow_limit_hits,
            Limit::TimeWait => stats.tcp_time_wait_evictions,
            Limit::HalfOpen => stats.tcp_half_open_limit_hits,
            Limit::UdpFlows => stats.udp_flow_evictions,
            Limit::IcmpFlows => stats.icmp_flow_evictions,
            Limit::DnsFlows => stats.dns_flow_evictions,
            Limit::TcpBufferReduced => stats.tcp_buffer_reductions,
            Limit::TcpBufferBudget => stats.tcp_buffer_budget_hits,
            Limit::TxQueue => stats.tx_dropped,
            Limit::Forwards => stats.forward_limit_hits,
            Limit::ForwardFlows => stats.forward_flow_limit_hits,
            Limit::ApiClients => stats.api_clients_rejected,
            Limit::ReassemblyDatagrams => stats.ip_frag_datagram_evictions,
            Limit::ReassemblyBytes => stats.ip_frag_byte_evictions,
            Limit::SynRate => stats.tcp_syn_rate_drops,
            Limit::IcmpErrorRate => stats.icmp_error_rate_drops,
            Limit::HostExhausted => stats.host_exhausted,
        }
    }
}

/// Turns the growth of limit counters into info lines an operator can act on, without
/// flooding the log: the first hit of a limit is reported at once, later ones at most once
/// per [`LIMIT_REPORT_INTERVAL`], with how many there were in between.
#[derive(Debug, Default)]
pub struct LimitReports {
    /// Hits already reported, per limit (index in `Limit::ALL`).
    reported: [u64; Limit::ALL.len()],
    /// When the next report of each limit may be written.
    quiet_until: [Option<Instant>; Limit::ALL.len()],
}

impl LimitReports {
    /// Compare `stats` with what was reported; returns the reports written (for tests).
    ///
    /// `queued_tx_dropped` is added to `stats.tx_dropped`: frames the transmit queue
    /// dropped, which it counts itself. Passing it, rather than a `Stats` with it added,
    /// spares the stack a copy of all its counters on every poll.
    pub fn check(
        &mut self,
        now: Instant,
        stats: &Stats,
        queued_tx_dropped: u64,
        limits: &Limits,
    ) -> usize {
        let mut written = 0;
        for (i, limit) in Limit::ALL.into_iter().enumerate() {
            let mut hits = limit.hits(stats);
            if limit == Limit::TxQueue {
                hits += queued_tx_dropped;
            }
            if hits <= self.reported[i] || self.quiet_until[i].is_some_and(|t| now < t) {
                continue;
            }
            let new = hits - self.reported[i];
            let since = if self.reported[i] == 0 {
                String::new()
            } else {
                format!(" in the last {} s", LIMIT_REPORT_INTERVAL.secs())
            };
            let what = match limit {
                Limit::HostExhausted => {
                    "host out of file descriptors, ports or memory (EMFILE/ENFILE/ENOBUFS)"
                        .to_string()
                }
                _ => format!("limit {}={} reached", limit.name(), limit.value(limits)),
            };
            log::info!(
                "{what}: {} ({new} time{}{since}; counted in get_stats)",
                limit.effect(),
                if new == 1 { "" } else { "s" },
            );
            self.reported[i] = hits;
            self.quiet_until[i] = Some(now + LIMIT_REPORT_INTERVAL);
            written += 1;
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_is_reported_at_once_then_at_most_once_per_interval() {
        let limits = Limits::default();
        let mut reports = LimitReports::default();
        let mut stats = Stats::default();
        let t0 = Instant::from_secs(10);
        assert_eq!(reports.check(t0, &stats, 0, &limits), 0, "nothing hit yet");

        stats.tcp_flow_limit_hits = 1;
        assert_eq!(
            reports.check(t0, &stats, 0, &limits),
            1,
            "the first hit at once"
        );
        stats.tcp_flow_limit_hits = 500;
        assert_eq!(
            reports.check(t0 + Duration::from_secs(59), &stats, 0, &limits),
            0
        );
        // Another limit has its own interval.
        stats.udp_flow_evictions = 3;
        assert_eq!(
            reports.check(t0 + Duration::from_secs(59), &stats, 0, &limits),
            1
        );

        assert_eq!(
            reports.check(t0 + LIMIT_REPORT_INTERVAL, &stats, 0, &limits),
            1,
            "the 499 later hits, once the interval is over"
        );
        assert_eq!(
            reports.check(t0 + Duration::from_secs(600), &stats, 0, &limits),
            0
        );
    }

    #[test]
    fn every_limit_has_a_distinct_counter() {
        let mut stats = Stats::default();
        for (i, limit) in Limit::ALL.into_iter().enumerate() {
            assert_eq!(limit.hits(&stats), 0);
            let mut probe = stats.clone();
            match limit {
                Limit::TcpFlows => probe.tcp_flow_limit_hits = 1,
                Limit::TimeWait => probe.tcp_time_wait_evictions = 1,
                Limit::HalfOpen => probe.tcp_half_open_limit_hits = 1,
                Limit::UdpFlows => probe.udp_flow_evictions = 1,
                Limit::IcmpFlows => probe.icmp_flow_evictions = 1,
                Limit::DnsFlows => probe.dns_flow_evictions = 1,
                Limit::TcpBufferReduced => probe.tcp_buffer_reductions = 1,
                Limit::TcpBufferBudget => probe.tcp_buffer_budget_hits = 1,
                Limit::TxQueue => probe.tx_dropped = 1,
                Limit::Forwards => probe.forward_limit_hits = 1,
                Limit::ForwardFlows => probe.forward_flow_limit_hits = 1,
                Limit::ApiClients => probe.api_clients_rejected = 1,
                Limit::ReassemblyDatagrams => probe.ip_frag_datagram_evictions = 1,
                Limit::ReassemblyBytes => probe.ip_frag_byte_evictions = 1,
                Limit::SynRate => probe.tcp_syn_rate_drops = 1,
                Limit::IcmpErrorRate => probe.icmp_error_rate_drops = 1,
                Limit::HostExhausted => probe.host_exhausted = 1,
            }
            let hit: Vec<Limit> = Limit::ALL
                .into_iter()
                .filter(|l| l.hits(&probe) == 1)
                .collect();
            assert_eq!(hit, vec![limit], "limit {i}");
            stats = Stats::default();
        }
    }
}

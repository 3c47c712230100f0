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
    /// Frames for the guest dropped because the transmit queue was full.
    pub tx_dropped: u64,

    pub tcp_flows: u64,
    pub udp_flows: u64,
    pub icmp_flows: u64,
    pub tcp_flows_opened: u64,
    pub udp_flows_opened: u64,
    pub icmp_flows_opened: u64,
    /// SYNs refused because `max_tcp_flows` was reached, and the oldest half-open connects
    /// given up to admit a new SYN because `max_half_open` was.
    pub tcp_flow_limit_hits: u64,
    /// UDP/ICMP flows evicted because their table was full.
    pub udp_flow_evictions: u64,
    pub icmp_flow_evictions: u64,
    /// Host connects that failed (refused, unreachable, timed out).
    pub tcp_connect_failures: u64,
    /// Host sockets that could not be opened (fds, ports, permissions).
    pub host_socket_errors: u64,
}

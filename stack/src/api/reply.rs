//! The control socket's replies, byte for byte as slirp4netns 1.2 writes them.

use serde::Serialize;

use super::{to_json, ApiError};
use crate::forward::Forward;
use crate::Stats;

// Derived `Serialize` writes fields in declaration order, which is the byte-exact key order
// callers see; keep the declarations in the reference's order.

/// `{"return":…}`, the wrapper of every successful reply except `list_hostfwd`'s.
#[derive(Serialize)]
struct Return<T> {
    #[serde(rename = "return")]
    value: T,
}

#[derive(Serialize)]
struct ErrorReply {
    error: ErrorDesc,
}

#[derive(Serialize)]
struct ErrorDesc {
    desc: String,
}

#[derive(Serialize)]
struct AddedId {
    id: u64,
}

/// Braces, not a unit struct: serde writes a unit struct as `null`, this as `{}`.
#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Entries {
    entries: Vec<Entry>,
}

#[derive(Serialize)]
struct Entry {
    id: u64,
    proto: &'static str,
    host_addr: String,
    host_port: u16,
    guest_addr: String,
    guest_port: u16,
}

/// `{"error":{"desc":"bad request: cannot parse JSON"}}`
pub fn error_reply(err: &ApiError) -> Vec<u8> {
    to_json(&ErrorReply {
        error: ErrorDesc {
            desc: format!("bad request: {err}"),
        },
    })
}

/// `{"return":{"id":1}}`
pub fn add_reply(id: u64) -> Vec<u8> {
    to_json(&Return {
        value: AddedId { id },
    })
}

/// `{"return":{}}`
pub fn remove_reply() -> Vec<u8> {
    to_json(&Return { value: Empty {} })
}

/// `{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}]}`
///
/// No `return` wrapper: that is what slirp4netns writes and what its callers parse.
/// Addresses are in their usual text form (IPv6 compressed, as `inet_ntop` writes it).
pub fn list_reply(entries: &[Forward]) -> Vec<u8> {
    let entries = entries
        .iter()
        .map(|fwd| Entry {
            id: fwd.id,
            proto: fwd.spec.proto.as_str(),
            host_addr: fwd.spec.host_addr.to_string(),
            host_port: fwd.spec.host_port,
            guest_addr: fwd.spec.guest_addr.to_string(),
            guest_port: fwd.spec.guest_port,
        })
        .collect();
    to_json(&Entries { entries })
}

#[derive(Serialize)]
struct StatsBody {
    interfaces: Interfaces,
    flows: Flows,
    counters: Counters,
}

/// Keyed by interface name so that more interfaces can join without changing the shape.
#[derive(Serialize)]
struct Interfaces {
    tap: InterfaceStatistics,
}

/// libnetwork's `InterfaceStatistics` (SPEC §5), rx = from the guest, tx = to the guest.
#[derive(Serialize)]
struct InterfaceStatistics {
    rx_bytes: u64,
    rx_packets: u64,
    rx_errors: u64,
    rx_dropped: u64,
    tx_bytes: u64,
    tx_packets: u64,
    tx_errors: u64,
    tx_dropped: u64,
}

/// Flows open now (gauges).
#[derive(Serialize)]
struct Flows {
    tcp: u64,
    udp: u64,
    icmp: u64,
}

/// Every other counter in [`Stats`], under its field name. A test checks that no field of
/// `Stats` is left out, so a counter added there fails the tests until it is added here.
#[derive(Serialize)]
struct Counters {
    tcp_flows_opened: u64,
    udp_flows_opened: u64,
    icmp_flows_opened: u64,
    tcp_flow_limit_hits: u64,
    tcp_time_wait_evictions: u64,
    tcp_half_open_limit_hits: u64,
    udp_flow_evictions: u64,
    icmp_flow_evictions: u64,
    dns_flow_evictions: u64,
    tcp_buffer_reductions: u64,
    tcp_buffer_budget_hits: u64,
    tcp_buffer_bytes: u64,
    forward_limit_hits: u64,
    forward_flow_limit_hits: u64,
    api_clients_rejected: u64,
    tcp_connect_failures: u64,
    host_socket_errors: u64,
    tcp_syn_received_timeouts: u64,
    tcp_user_timeouts: u64,
    tcp_fin_wait2_timeouts: u64,
    tcp_syn_rate_drops: u64,
    ip_frag_reassembled: u64,
    ip_frag_timeouts: u64,
    ip_frag_overlaps: u64,
    ip_frag_datagram_evictions: u64,
    ip_frag_byte_evictions: u64,
    ip_frag_fragmented: u64,
    ip_frag_pending: u64,
    ip_frag_bytes: u64,
    host_exhausted: u64,
    dns_retries: u64,
    dns_retry_forgotten: u64,
    icmp_errors_relayed: u64,
    icmp_error_rate_drops: u64,
    icmp_errors_unrelayed: u64,
}

/// One active flow, as `list_flows` reports it. `rx_bytes` came from the guest, `tx_bytes`
/// went to it (the interface counters' convention); `host` is the host-side peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowEntry {
    pub id: u64,
    pub proto: &'static str,
    pub guest: String,
    pub remote: String,
    pub host: String,
    pub state: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub age_ms: u64,
}

#[derive(Serialize)]
struct FlowsBody<'a> {
    flows: &'a [FlowEntry],
}

/// `{"return":{"flows":[{"id":…,"proto":"tcp","guest":"10.0.2.100:40000",…}]}}`, the reply
/// to our own `list_flows`.
pub fn flows_reply(flows: &[FlowEntry]) -> Vec<u8> {
    to_json(&Return {
        value: FlowsBody { flows },
    })
}

/// `{"return":{"interfaces":{"tap":{"rx_bytes":…}},"flows":{"tcp":…},"counters":{…}}}`,
/// the reply to our own `get_stats` (SPEC §5).
pub fn stats_reply(stats: &Stats) -> Vec<u8> {
    to_json(&Return {
        value: StatsBody {
            interfaces: Interfaces {
                tap: InterfaceStatistics {
                    rx_bytes: stats.rx_bytes,
                    rx_packets: stats.rx_packets,
                    rx_errors: stats.rx_errors,
                    rx_dropped: stats.rx_dropped,
                    tx_bytes: stats.tx_bytes,
                    tx_packets: stats.tx_packets,
                    tx_errors: stats.tx_errors,
                    tx_dropped: stats.tx_dropped,
                },
            },
            flows: Flows {
                tcp: stats.tcp_flows,
                udp: stats.udp_flows,
                icmp: stats.icmp_flows,
            },
            counters: Counters {
                tcp_flows_opened: stats.tcp_flows_opened,
                udp_flows_opened: stats.udp_flows_opened,
                icmp_flows_opened: stats.icmp_flows_opened,
                tcp_flow_limit_hits: stats.tcp_flow_limit_hits,
                tcp_time_wait_evictions: stats.tcp_time_wait_evictions,
                tcp_half_open_limit_hits: stats.tcp_half_open_limit_hits,
                udp_flow_evictions: stats.udp_flow_evictions,
                icmp_flow_evictions: stats.icmp_flow_evictions,
                dns_flow_evictions: stats.dns_flow_evictions,
                tcp_buffer_reductions: stats.tcp_buffer_reductions,
                tcp_buffer_budget_hits: stats.tcp_buffer_budget_hits,
                tcp_buffer_bytes: stats.tcp_buffer_bytes,
                forward_limit_hits: stats.forward_limit_hits,
                forward_flow_limit_hits: stats.forward_flow_limit_hits,
                api_clients_rejected: stats.api_clients_rejected,
                tcp_connect_failures: stats.tcp_connect_failures,
                host_socket_errors: stats.host_socket_errors,
                tcp_syn_received_timeouts: stats.tcp_syn_received_timeouts,
                tcp_user_timeouts: stats.tcp_user_timeouts,
                tcp_fin_wait2_timeouts: stats.tcp_fin_wait2_timeouts,
                tcp_syn_rate_drops: stats.tcp_syn_rate_drops,
                ip_frag_reassembled: stats.ip_frag_reassembled,
                ip_frag_timeouts: stats.ip_frag_timeouts,
                ip_frag_overlaps: stats.ip_frag_overlaps,
                ip_frag_datagram_evictions: stats.ip_frag_datagram_evictions,
                ip_frag_byte_evictions: stats.ip_frag_byte_evictions,
                ip_frag_fragmented: stats.ip_frag_fragmented,
                ip_frag_pending: stats.ip_frag_pending,
                ip_frag_bytes: stats.ip_frag_bytes,
                host_exhausted: stats.host_exhausted,
                dns_retries: stats.dns_retries,
                dns_retry_forgotten: stats.dns_retry_forgotten,
                icmp_errors_relayed: stats.icmp_errors_relayed,
                icmp_error_rate_drops: stats.icmp_error_rate_drops,
                icmp_errors_unrelayed: stats.icmp_errors_unrelayed,
            },
        },
    })
}

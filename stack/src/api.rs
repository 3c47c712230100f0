//! The control socket's requests and replies (`--api-socket`, SPEC.md §3 and §5).
//!
//! This is the pure half: bytes in, [`Request`] or [`ApiError`] out, and the reply bytes.
//! Callers (podman, rootlesskit, shell scripts) compare replies byte for byte, so every
//! reply here is exactly what slirp4netns 1.2 writes: no spaces, keys in its order, no
//! trailing newline, and `list_hostfwd` without the `return` wrapper the others have.
//!
//! Parsing follows the reference's order of checks, so that a request with several faults
//! gets the same error text as from slirp4netns: JSON syntax, then the object, then
//! `execute`, then per request `proto`, `host_addr`, `host_port`, `guest_addr`,
//! `guest_port` (or `id`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::forward::{AddForwardError, Forward, ForwardError, ForwardProto, ForwardSpec};
use crate::Stats;

/// The longest request accepted. The reference reads into a 4096-byte buffer and refuses a
/// read that fills it, so 4096 bytes or more is `too large message`.
pub const MAX_REQUEST: usize = 4095;

/// The requests of the control protocol: parsed from the wire by [`parse_request`] (the
/// socket side) and written to it by [`Request::to_json`] (rslirpctl), one definition for
/// both, round-trip tested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    AddHostfwd(ForwardRequest),
    ListHostfwd,
    RemoveHostfwd {
        id: u64,
    },
    /// Ours (SPEC §5): interface counters and flow counts.
    GetStats,
    /// Ours: every active flow with its endpoints, state, bytes and age.
    ListFlows,
}

/// An `add_hostfwd` request as the wire carries it: an address left out (or `""`, `null`)
/// is the server's default, which only the server knows for the guest (`--cidr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRequest {
    pub proto: ForwardProto,
    pub host_addr: Option<IpAddr>,
    pub host_port: u16,
    pub guest_addr: Option<IpAddr>,
    pub guest_port: u16,
}

impl ForwardRequest {
    /// The forward to set up: a host address left out is 0.0.0.0 (as slirp4netns), a guest
    /// address left out is `guest_default`.
    pub fn resolve(&self, guest_default: Ipv4Addr) -> ForwardSpec {
        ForwardSpec {
            proto: self.proto,
            host_addr: self.host_addr.unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
            host_port: self.host_port,
            guest_addr: self.guest_addr.unwrap_or(guest_default.into()),
            guest_port: self.guest_port,
        }
    }
}

impl Request {
    /// The request as a client writes it: `{"execute":…,"arguments":{…}}`, members in the
    /// order slirp4netns's documentation gives them, addresses left out when not given.
    pub fn to_json(&self) -> Vec<u8> {
        match self {
            Request::AddHostfwd(fwd) => wire(
                "add_hostfwd",
                Some(AddArguments {
                    proto: fwd.proto.as_str(),
                    host_addr: fwd.host_addr.map(|addr| addr.to_string()),
                    host_port: fwd.host_port,
                    guest_addr: fwd.guest_addr.map(|addr| addr.to_string()),
                    guest_port: fwd.guest_port,
                }),
            ),
            Request::ListHostfwd => wire::<()>("list_hostfwd", None),
            Request::RemoveHostfwd { id } => wire("remove_hostfwd", Some(IdArgument { id: *id })),
            Request::GetStats => wire::<()>("get_stats", None),
            Request::ListFlows => wire::<()>("list_flows", None),
        }
    }
}

#[derive(Serialize)]
struct WireRequest<'a, A> {
    execute: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<A>,
}

#[derive(Serialize)]
struct AddArguments {
    proto: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_addr: Option<String>,
    host_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    guest_addr: Option<String>,
    guest_port: u16,
}

#[derive(Serialize)]
struct IdArgument {
    id: u64,
}

fn wire<A: Serialize>(execute: &str, arguments: Option<A>) -> Vec<u8> {
    to_json(&WireRequest { execute, arguments })
}

/// Why a request was refused. `Display` is the text after `bad request: ` in the reply,
/// word for word as slirp4netns writes it (scripts match on these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("cannot parse JSON")]
    CannotParseJson,
    /// Valid JSON, but not an object (`[]`, `1`, `"x"`, `null`).
    #[error("json_object() failed")]
    NotAnObject,
    /// No `execute` member, or one that is not a string.
    #[error("no execute found")]
    NoExecute,
    #[error("unknown execute")]
    UnknownExecute,
    #[error("add_hostfwd: bad arguments.proto")]
    BadProto,
    #[error("add_hostfwd: bad arguments.host_addr")]
    BadHostAddr,
    #[error("add_hostfwd: bad arguments.host_port")]
    BadHostPort,
    #[error("add_hostfwd: bad arguments.guest_addr")]
    BadGuestAddr,
    #[error("add_hostfwd: bad arguments.guest_port")]
    BadGuestPort,
    /// The forward could not be set up: the host bind failed, it overlaps an existing
    /// forward, or the table is full. The reference names the libslirp call that failed.
    #[error("add_hostfwd: slirp_add_hostfwd failed")]
    AddFailed,
    /// `id` missing, not a positive integer, or no forward has it.
    #[error("remove_hostfwd: bad arguments.id")]
    BadId,
    #[error("remove_hostfwd: slirp_remove_hostfwd failed")]
    RemoveFailed,
    /// The request is 4096 bytes or longer.
    #[error("too large message")]
    TooLarge,
}

/// Each table error comes from one operation only, so one mapping serves both:
/// adding (conflict, full) fails like the reference's failed bind; removing an id that is
/// not there is a bad id, as in the reference.
impl From<ForwardError> for ApiError {
    fn from(err: ForwardError) -> Self {
        match err {
            ForwardError::Conflict { .. } | ForwardError::Limit { .. } => ApiError::AddFailed,
            ForwardError::NotFound { .. } => ApiError::BadId,
        }
    }
}

impl From<AddForwardError> for ApiError {
    fn from(err: AddForwardError) -> Self {
        match err {
            AddForwardError::Table(err) => err.into(),
            AddForwardError::Ipv6Disabled(_) | AddForwardError::Listen { .. } => {
                ApiError::AddFailed
            }
        }
    }
}

/// Parses one request: the bytes the client sent up to EOF, or at least up to the end of
/// the first JSON value (see [`request_complete`]). Whatever follows that value is ignored,
/// as the reference does (it parses the first value of its buffer); leading whitespace and
/// a UTF-8 byte order mark are skipped.
///
/// `guest_default` (the guest address, network + 100) fills a missing or empty `guest_addr`.
pub fn parse_request(bytes: &[u8]) -> Result<Request, ApiError> {
    if bytes.len() > MAX_REQUEST {
        return Err(ApiError::TooLarge);
    }
    let value = match first_value(bytes) {
        Some(Ok(value)) => value,
        Some(Err(_)) | None => return Err(ApiError::CannotParseJson),
    };
    let Value::Object(request) = value else {
        return Err(ApiError::NotAnObject);
    };
    let Some(execute) = request.get("execute").and_then(Value::as_str) else {
        return Err(ApiError::NoExecute);
    };
    let arguments = request.get("arguments").and_then(Value::as_object);
    match execute {
        "add_hostfwd" => parse_add_hostfwd(arguments).map(Request::AddHostfwd),
        "list_hostfwd" => Ok(Request::ListHostfwd),
        "remove_hostfwd" => parse_remove_hostfwd(arguments),
        "get_stats" => Ok(Request::GetStats),
        "list_flows" => Ok(Request::ListFlows),
        _ => Err(ApiError::UnknownExecute),
    }
}

/// Whether `bytes` already hold everything needed to answer, so the socket side can reply
/// without waiting for EOF from a client that never half-closes (`ncat -U`, `socat`):
/// true once the first JSON value has ended, once the bytes can no longer become JSON, or
/// once they are too long; false while there is nothing but whitespace or the value is
/// cut short.
pub fn request_complete(bytes: &[u8]) -> bool {
    if bytes.len() > MAX_REQUEST {
        return true;
    }
    match first_value(bytes) {
        None => false,
        Some(Ok(_)) => true,
        Some(Err(err)) => !err.is_eof(),
    }
}

/// The first JSON value in `bytes`; `None` if there is nothing but whitespace.
fn first_value(bytes: &[u8]) -> Option<serde_json::Result<Value>> {
    // The reference's parser (parson) skips a UTF-8 byte order mark; serde_json does not.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<StrictValue>()
        .next()
        .map(|value| value.map(|StrictValue(value)| value))
}

fn parse_add_hostfwd(arguments: Option<&Map<String, Value>>) -> Result<ForwardRequest, ApiError> {
    let field = |name: &str| arguments.and_then(|arguments| arguments.get(name));
    let proto = match field("proto").and_then(Value::as_str) {
        Some("tcp") => ForwardProto::Tcp,
        Some("udp") => ForwardProto::Udp,
        // Including a missing proto, on which the reference crashes (SPEC §3).
        _ => return Err(ApiError::BadProto),
    };
    let host_addr = parse_addr(field("host_addr")).ok_or(ApiError::BadHostAddr)?;
    let host_port = parse_port(field("host_port")).ok_or(ApiError::BadHostPort)?;
    let guest_addr = parse_addr(field("guest_addr")).ok_or(ApiError::BadGuestAddr)?;
    let guest_port = parse_port(field("guest_port")).ok_or(ApiError::BadGuestPort)?;
    Ok(ForwardRequest {
        proto,
        host_addr,
        host_port,
        guest_addr,
        guest_port,
    })
}

fn parse_remove_hostfwd(arguments: Option<&Map<String, Value>>) -> Result<Request, ApiError> {
    match arguments
        .and_then(|arguments| arguments.get("id"))
        .and_then(json_uint)
    {
        Some(id) if id > 0 => Ok(Request::RemoveHostfwd { id }),
        _ => Err(ApiError::BadId),
    }
}

/// An address member: missing, `null` or `""` is left to the default (`Some(None)`: the
/// reference treats all three as absent); a string must be an IPv4 or (our extension) IPv6
/// address in its usual text form; anything else is refused. `None` means bad.
fn parse_addr(value: Option<&Value>) -> Option<Option<IpAddr>> {
    match value {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(text)) if text.is_empty() => Some(None),
        Some(Value::String(text)) => text.parse().ok().map(Some),
        Some(_) => None,
    }
}

/// A port member: an integer in 1..=65535. `None` means bad (missing, not a number, a
/// fraction, 0, negative or too big — the reference truncated and wrapped such numbers
/// silently).
fn parse_port(value: Option<&Value>) -> Option<u16> {
    value
        .and_then(json_uint)
        .and_then(|port| u16::try_from(port).ok())
        .filter(|&port| port != 0)
}

/// A non-negative integer. JSON has a single number type and some clients write integral
/// values as floats (`8080.0`, what Python's `float` gives), so those count as integers;
/// fractions do not.
fn json_uint(value: &Value) -> Option<u64> {
    let number = value.as_number()?;
    number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|float| *float >= 0.0 && float.fract() == 0.0)
            // Saturates for huge values, which every caller then refuses as out of range.
            .map(|float| float as u64)
    })
}

/// A JSON value that refuses duplicate object keys, at any depth. The reference's parser
/// refuses them too ("cannot parse JSON"); accepting them would leave it to chance which
/// of two `host_port`s we act on.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value without duplicate object keys")
    }

    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<StrictValue, E> {
        Ok(StrictValue(v.into()))
    }

    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(StrictValue(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictValue, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom("duplicate object key"));
            }
            let StrictValue(value) = access.next_value()?;
            map.insert(key, value);
        }
        Ok(StrictValue(Value::Object(map)))
    }
}

// Replies. Derived `Serialize` writes fields in declaration order, which is the byte-exact
// key order callers see; keep the declarations in the reference's order.

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

fn to_json<T: Serialize>(reply: &T) -> Vec<u8> {
    // Only our own structs of strings and integers come here, and writing those into a
    // Vec cannot fail (serde_json fails only on I/O errors or non-string map keys).
    serde_json::to_vec(reply).expect("serializing a reply struct cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::ForwardTable;

    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

    fn parse(bytes: &[u8]) -> Result<Request, ApiError> {
        parse_request(bytes)
    }

    /// The reply the socket would write for `bytes` if parsing fails.
    fn reply_to(bytes: &[u8]) -> String {
        match parse(bytes) {
            Ok(request) => panic!("expected an error, got {request:?}"),
            Err(err) => String::from_utf8(error_reply(&err)).expect("replies are UTF-8"),
        }
    }

    fn error_text(desc: &str) -> String {
        format!(r#"{{"error":{{"desc":"bad request: {desc}"}}}}"#)
    }

    fn add(arguments: &str) -> Result<Request, ApiError> {
        parse(format!(r#"{{"execute":"add_hostfwd","arguments":{arguments}}}"#).as_bytes())
    }

    fn added(arguments: &str) -> ForwardSpec {
        match add(arguments) {
            Ok(Request::AddHostfwd(request)) => request.resolve(GUEST),
            other => panic!("{arguments}: {other:?}"),
        }
    }

    fn spec(host: &str, host_port: u16, guest: &str, guest_port: u16) -> ForwardSpec {
        ForwardSpec {
            proto: ForwardProto::Tcp,
            host_addr: host.parse().expect("test address"),
            host_port,
            guest_addr: guest.parse().expect("test address"),
            guest_port,
        }
    }

    // Every error text, byte for byte.

    #[test]
    fn error_reply_bytes_for_every_error() {
        let cases: [(ApiError, &[u8]); 13] = [
            (
                ApiError::CannotParseJson,
                br#"{"error":{"desc":"bad request: cannot parse JSON"}}"#,
            ),
            (
                ApiError::NotAnObject,
                br#"{"error":{"desc":"bad request: json_object() failed"}}"#,
            ),
            (
                ApiError::NoExecute,
                br#"{"error":{"desc":"bad request: no execute found"}}"#,
            ),
            (
                ApiError::UnknownExecute,
                br#"{"error":{"desc":"bad request: unknown execute"}}"#,
            ),
            (
                ApiError::BadProto,
                br#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}"#,
            ),
            (
                ApiError::BadHostAddr,
                br#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_addr"}}"#,
            ),
            (
                ApiError::BadHostPort,
                br#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}"#,
            ),
            (
                ApiError::BadGuestAddr,
                br#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_addr"}}"#,
            ),
            (
                ApiError::BadGuestPort,
                br#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_port"}}"#,
            ),
            (
                ApiError::AddFailed,
                br#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#,
            ),
            (
                ApiError::BadId,
                br#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#,
            ),
            (
                ApiError::RemoveFailed,
                br#"{"error":{"desc":"bad request: remove_hostfwd: slirp_remove_hostfwd failed"}}"#,
            ),
            (
                ApiError::TooLarge,
                br#"{"error":{"desc":"bad request: too large message"}}"#,
            ),
        ];
        for (err, expected) in cases {
            assert_eq!(
                String::from_utf8_lossy(&error_reply(&err)),
                String::from_utf8_lossy(expected),
                "{err:?}"
            );
        }
    }

    #[test]
    fn not_json_cannot_parse() {
        let expected = br#"{"error":{"desc":"bad request: cannot parse JSON"}}"#;
        assert_eq!(error_reply(&parse_request(b"{").unwrap_err()), expected);
        for bytes in [
            &b""[..],
            b" \n",
            b"hello",
            b"{execute:\"list_hostfwd\"}",
            b"{\"execute\":\"list_hostfwd\",}",
            b"{'execute':'list_hostfwd'}",
            b"{\"execute\":\"list_hostfwd\"",
            b"\xff\xfe",
            b"{\"execute\":\"\xff\"}",
            // Duplicate keys, at the top or deeper: the reference's parser refuses them.
            br#"{"execute":"list_hostfwd","execute":"list_hostfwd"}"#,
            br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","proto":"udp"}}"#,
        ] {
            assert_eq!(
                parse(bytes),
                Err(ApiError::CannotParseJson),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn json_that_is_not_an_object() {
        for bytes in [
            &b"[]"[..],
            b"1",
            b"\"list_hostfwd\"",
            b"null",
            b"true",
            b"[{\"execute\":\"list_hostfwd\"}]",
        ] {
            assert_eq!(reply_to(bytes), error_text("json_object() failed"));
        }
    }

    #[test]
    fn execute_missing_or_not_a_string() {
        for bytes in [
            &b"{}"[..],
            br#"{"arguments":{}}"#,
            br#"{"execute":1}"#,
            br#"{"execute":null}"#,
            br#"{"execute":["list_hostfwd"]}"#,
            br#"{"Execute":"list_hostfwd"}"#,
        ] {
            assert_eq!(reply_to(bytes), error_text("no execute found"));
        }
    }

    #[test]
    fn unknown_execute() {
        for bytes in [
            &br#"{"execute":"add_hostfwds"}"#[..],
            br#"{"execute":"LIST_HOSTFWD"}"#,
            br#"{"execute":""}"#,
            br#"{"execute":"list_flow"}"#,
        ] {
            assert_eq!(reply_to(bytes), error_text("unknown execute"));
        }
    }

    // Framing-related leniency.

    #[test]
    fn whitespace_newline_and_bom_around_the_request() {
        for bytes in [
            &b"{\"execute\":\"list_hostfwd\"}\n"[..],
            b"{\"execute\":\"list_hostfwd\"}\r\n",
            b"  \t\n{ \"execute\" : \"list_hostfwd\" }  \n\n",
            b"\xEF\xBB\xBF{\"execute\":\"list_hostfwd\"}",
        ] {
            assert_eq!(parse(bytes), Ok(Request::ListHostfwd));
        }
    }

    #[test]
    fn bytes_after_the_first_value_are_ignored() {
        // As in the reference, which parses the first value of what it read.
        assert_eq!(
            parse(b"{\"execute\":\"list_hostfwd\"}{\"execute\":\"x\"}"),
            Ok(Request::ListHostfwd)
        );
        assert_eq!(
            parse(b"{\"execute\":\"list_hostfwd\"} garbage"),
            Ok(Request::ListHostfwd)
        );
    }

    #[test]
    fn size_limit_4095_ok_4096_too_large() {
        let request = br#"{"execute":"list_hostfwd"}"#;
        let mut bytes = request.to_vec();
        bytes.resize(MAX_REQUEST, b' ');
        assert_eq!(bytes.len(), 4095);
        assert_eq!(parse(&bytes), Ok(Request::ListHostfwd));
        assert!(request_complete(&bytes));

        bytes.push(b' ');
        assert_eq!(bytes.len(), 4096);
        assert_eq!(reply_to(&bytes), error_text("too large message"));
        assert!(request_complete(&bytes));

        // Too large wins over everything else, as the reference checks the length first.
        assert_eq!(parse(&[b'x'; 10_000]), Err(ApiError::TooLarge));
    }

    #[test]
    fn request_complete_tells_when_to_answer() {
        for partial in [
            &b""[..],
            b"  \n",
            b"{",
            b"{\"execute\":\"list_",
            b"{\"execute\":\"list_hostfwd\"",
            b"[1,",
        ] {
            assert!(
                !request_complete(partial),
                "{:?}",
                String::from_utf8_lossy(partial)
            );
        }
        for done in [
            &b"{\"execute\":\"list_hostfwd\"}"[..],
            b"{\"execute\":\"list_hostfwd\"}\n",
            b"{}",
            b"[]",
            // Can never become JSON: answer "cannot parse JSON" at once.
            b"hello",
            b"{execute",
        ] {
            assert!(
                request_complete(done),
                "{:?}",
                String::from_utf8_lossy(done)
            );
        }
    }

    // Requests that parse.

    #[test]
    fn list_get_stats_and_remove() {
        assert_eq!(
            parse(br#"{"execute":"list_hostfwd"}"#),
            Ok(Request::ListHostfwd)
        );
        // Extra members are ignored, as in the reference.
        assert_eq!(
            parse(br#"{"execute":"list_hostfwd","arguments":{"x":1},"id":"abc"}"#),
            Ok(Request::ListHostfwd)
        );
        assert_eq!(parse(br#"{"execute":"get_stats"}"#), Ok(Request::GetStats));
        assert_eq!(
            parse(br#"{"execute":"list_flows"}"#),
            Ok(Request::ListFlows)
        );
        assert_eq!(
            parse(br#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#),
            Ok(Request::RemoveHostfwd { id: 1 })
        );
        assert_eq!(
            parse(br#"{"execute":"remove_hostfwd","arguments":{"id":4294967296}}"#),
            Ok(Request::RemoveHostfwd { id: 1 << 32 })
        );
        assert_eq!(
            parse(br#"{"execute":"remove_hostfwd","arguments":{"id":7.0}}"#),
            Ok(Request::RemoveHostfwd { id: 7 })
        );
    }

    #[test]
    fn add_hostfwd_full_request() {
        assert_eq!(
            added(
                r#"{"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}"#
            ),
            spec("0.0.0.0", 8080, "10.0.2.100", 80)
        );
        let udp = added(
            r#"{"proto":"udp","host_addr":"127.0.0.1","host_port":5353,"guest_addr":"10.0.2.15","guest_port":53}"#,
        );
        assert_eq!(udp.proto, ForwardProto::Udp);
        assert_eq!(udp.host_addr, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(udp.guest_addr, IpAddr::from([10, 0, 2, 15]));
        assert_eq!((udp.host_port, udp.guest_port), (5353, 53));
    }

    #[test]
    fn add_hostfwd_defaults_for_missing_empty_or_null_addresses() {
        let expected = spec("0.0.0.0", 8080, "10.0.2.100", 80);
        for arguments in [
            r#"{"proto":"tcp","host_port":8080,"guest_port":80}"#,
            r#"{"proto":"tcp","host_addr":"","host_port":8080,"guest_addr":"","guest_port":80}"#,
            r#"{"proto":"tcp","host_addr":null,"host_port":8080,"guest_addr":null,"guest_port":80}"#,
        ] {
            assert_eq!(added(arguments), expected, "{arguments}");
        }
        // The guest default is whatever the caller's network makes it.
        let Ok(Request::AddHostfwd(request)) = parse_request(
            br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_port":2}}"#,
        ) else {
            panic!("did not parse");
        };
        assert_eq!(
            request.resolve(Ipv4Addr::new(192, 168, 7, 100)),
            spec("0.0.0.0", 1, "192.168.7.100", 2)
        );
    }

    #[test]
    fn add_hostfwd_ipv6_addresses() {
        assert_eq!(
            added(r#"{"proto":"tcp","host_addr":"::","host_port":8080,"guest_port":80}"#),
            spec("::", 8080, "10.0.2.100", 80)
        );
        assert_eq!(
            added(r#"{"proto":"tcp","host_addr":"::1","host_port":8080,"guest_port":80}"#),
            spec("::1", 8080, "10.0.2.100", 80)
        );
        assert_eq!(
            added(
                r#"{"proto":"tcp","host_addr":"::1","host_port":8080,"guest_addr":"fd00::100","guest_port":80}"#
            ),
            spec("::1", 8080, "fd00::100", 80)
        );
    }

    #[test]
    fn add_hostfwd_bad_proto() {
        for arguments in [
            r#"{"host_port":8080,"guest_port":80}"#,
            r#"{"proto":"sctp","host_port":8080,"guest_port":80}"#,
            r#"{"proto":"TCP","host_port":8080,"guest_port":80}"#,
            r#"{"proto":"tcp4","host_port":8080,"guest_port":80}"#,
            r#"{"proto":"","host_port":8080,"guest_port":80}"#,
            r#"{"proto":6,"host_port":8080,"guest_port":80}"#,
            r#"{"proto":null,"host_port":8080,"guest_port":80}"#,
        ] {
            assert_eq!(add(arguments), Err(ApiError::BadProto), "{arguments}");
        }
        // No arguments at all, or arguments that are not an object: proto is the first miss.
        for bytes in [
            &br#"{"execute":"add_hostfwd"}"#[..],
            br#"{"execute":"add_hostfwd","arguments":[]}"#,
            br#"{"execute":"add_hostfwd","arguments":"tcp"}"#,
        ] {
            assert_eq!(
                reply_to(bytes),
                error_text("add_hostfwd: bad arguments.proto")
            );
        }
    }

    #[test]
    fn add_hostfwd_bad_host_addr() {
        for host_addr in [
            r#""localhost""#,
            r#""1.2.3""#,
            r#""1.2.3.256""#,
            r#""01.2.3.4""#,
            r#"" 127.0.0.1""#,
            r#""127.0.0.1:80""#,
            r#""[::1]""#,
            r#""fe80::1%eth0""#,
            "1",
            "[]",
            "{}",
            "true",
        ] {
            let arguments = format!(
                r#"{{"proto":"tcp","host_addr":{host_addr},"host_port":8080,"guest_port":80}}"#
            );
            assert_eq!(add(&arguments), Err(ApiError::BadHostAddr), "{arguments}");
        }
    }

    #[test]
    fn add_hostfwd_bad_ports() {
        for port in [
            "0",
            "65536",
            "-1",
            "80.5",
            r#""80""#,
            "null",
            "true",
            "[80]",
            "1e10",
            "18446744073709551616",
        ] {
            let arguments = format!(r#"{{"proto":"tcp","host_port":{port},"guest_port":80}}"#);
            assert_eq!(add(&arguments), Err(ApiError::BadHostPort), "{arguments}");
            let arguments = format!(r#"{{"proto":"tcp","host_port":80,"guest_port":{port}}}"#);
            assert_eq!(add(&arguments), Err(ApiError::BadGuestPort), "{arguments}");
        }
        assert_eq!(
            add(r#"{"proto":"tcp","guest_port":80}"#),
            Err(ApiError::BadHostPort)
        );
        assert_eq!(
            add(r#"{"proto":"tcp","host_port":80}"#),
            Err(ApiError::BadGuestPort)
        );
        assert_eq!(
            reply_to(br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":0,"guest_port":80}}"#),
            error_text("add_hostfwd: bad arguments.host_port")
        );
        assert_eq!(
            reply_to(br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":80,"guest_port":65536}}"#),
            error_text("add_hostfwd: bad arguments.guest_port")
        );
    }

    #[test]
    fn add_hostfwd_port_bounds_and_integral_floats() {
        let ports = |arguments: &str| {
            let spec = added(arguments);
            (spec.host_port, spec.guest_port)
        };
        assert_eq!(
            ports(r#"{"proto":"tcp","host_port":1,"guest_port":65535}"#),
            (1, 65535)
        );
        assert_eq!(
            ports(r#"{"proto":"tcp","host_port":65535,"guest_port":1}"#),
            (65535, 1)
        );
        assert_eq!(
            ports(r#"{"proto":"tcp","host_port":8080.0,"guest_port":8e1}"#),
            (8080, 80)
        );
    }

    #[test]
    fn add_hostfwd_bad_guest_addr() {
        for guest_addr in [
            r#""guest""#,
            r#""10.0.2""#,
            r#""10.0.2.100/24""#,
            "100",
            "false",
        ] {
            let arguments = format!(
                r#"{{"proto":"udp","host_port":8080,"guest_addr":{guest_addr},"guest_port":80}}"#
            );
            assert_eq!(add(&arguments), Err(ApiError::BadGuestAddr), "{arguments}");
        }
        assert_eq!(
            reply_to(br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_addr":"x","guest_port":2}}"#),
            error_text("add_hostfwd: bad arguments.guest_addr")
        );
    }

    #[test]
    fn add_hostfwd_reports_the_first_bad_argument_in_reference_order() {
        // Everything wrong: proto is reported.
        assert_eq!(
            add(r#"{"proto":"x","host_addr":"x","host_port":0,"guest_addr":"x","guest_port":0}"#),
            Err(ApiError::BadProto)
        );
        assert_eq!(
            add(r#"{"proto":"tcp","host_addr":"x","host_port":0,"guest_addr":"x","guest_port":0}"#),
            Err(ApiError::BadHostAddr)
        );
        assert_eq!(
            add(r#"{"proto":"tcp","host_port":0,"guest_addr":"x","guest_port":0}"#),
            Err(ApiError::BadHostPort)
        );
        assert_eq!(
            add(r#"{"proto":"tcp","host_port":1,"guest_addr":"x","guest_port":0}"#),
            Err(ApiError::BadGuestAddr)
        );
        assert_eq!(
            add(r#"{"proto":"tcp","host_port":1,"guest_port":0}"#),
            Err(ApiError::BadGuestPort)
        );
    }

    #[test]
    fn remove_hostfwd_bad_id() {
        for bytes in [
            &br#"{"execute":"remove_hostfwd"}"#[..],
            br#"{"execute":"remove_hostfwd","arguments":{}}"#,
            br#"{"execute":"remove_hostfwd","arguments":[1]}"#,
            br#"{"execute":"remove_hostfwd","arguments":{"id":0}}"#,
            br#"{"execute":"remove_hostfwd","arguments":{"id":-1}}"#,
            br#"{"execute":"remove_hostfwd","arguments":{"id":1.5}}"#,
            br#"{"execute":"remove_hostfwd","arguments":{"id":"1"}}"#,
            br#"{"execute":"remove_hostfwd","arguments":{"id":null}}"#,
            br#"{"execute":"remove_hostfwd","id":1}"#,
        ] {
            assert_eq!(
                reply_to(bytes),
                error_text("remove_hostfwd: bad arguments.id")
            );
        }
    }

    // Replies, byte for byte.

    #[test]
    fn add_and_remove_reply_bytes() {
        assert_eq!(add_reply(1), br#"{"return":{"id":1}}"#);
        assert_eq!(add_reply(4242), br#"{"return":{"id":4242}}"#);
        assert_eq!(remove_reply(), br#"{"return":{}}"#);
    }

    #[test]
    fn list_reply_bytes() {
        assert_eq!(list_reply(&[]), br#"{"entries":[]}"#);
        let one = Forward {
            id: 1,
            spec: spec("0.0.0.0", 8080, "10.0.2.100", 80),
        };
        assert_eq!(
            list_reply(std::slice::from_ref(&one)),
            br#"{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}]}"#
        );
        let mut udp6 = spec("::1", 5353, "10.0.2.100", 53);
        udp6.proto = ForwardProto::Udp;
        let two = [one, Forward { id: 3, spec: udp6 }];
        assert_eq!(
            String::from_utf8_lossy(&list_reply(&two)),
            concat!(
                r#"{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},"#,
                r#"{"id":3,"proto":"udp","host_addr":"::1","host_port":5353,"guest_addr":"10.0.2.100","guest_port":53}]}"#
            )
        );
    }

    #[test]
    fn ipv6_addresses_are_listed_compressed() {
        let fwd = Forward {
            id: 2,
            spec: spec("2001:db8:0:0:0:0:0:1", 80, "fd00:0::0100", 8080),
        };
        assert_eq!(
            String::from_utf8_lossy(&list_reply(&[fwd])),
            r#"{"entries":[{"id":2,"proto":"tcp","host_addr":"2001:db8::1","host_port":80,"guest_addr":"fd00::100","guest_port":8080}]}"#
        );
    }

    #[test]
    fn flows_reply_bytes() {
        let flow = FlowEntry {
            id: 7,
            proto: "tcp",
            guest: "10.0.2.100:40000".into(),
            remote: "10.0.2.2:80".into(),
            host: "127.0.0.1:80".into(),
            state: "Established".into(),
            rx_bytes: 1,
            tx_bytes: 2,
            age_ms: 3,
        };
        assert_eq!(
            String::from_utf8(flows_reply(&[flow])).unwrap(),
            r#"{"return":{"flows":[{"id":7,"proto":"tcp","guest":"10.0.2.100:40000","remote":"10.0.2.2:80","host":"127.0.0.1:80","state":"Established","rx_bytes":1,"tx_bytes":2,"age_ms":3}]}}"#
        );
        assert_eq!(
            String::from_utf8(flows_reply(&[])).unwrap(),
            r#"{"return":{"flows":[]}}"#
        );
    }

    #[test]
    fn stats_reply_bytes() {
        let stats = Stats {
            rx_bytes: 1,
            rx_packets: 2,
            rx_errors: 3,
            rx_dropped: 4,
            tx_bytes: 5,
            tx_packets: 6,
            tx_errors: 7,
            tx_dropped: 8,
            tcp_flows: 9,
            udp_flows: 10,
            icmp_flows: 11,
            tcp_flows_opened: 12,
            udp_flows_opened: 13,
            icmp_flows_opened: 14,
            tcp_flow_limit_hits: 15,
            tcp_time_wait_evictions: 16,
            tcp_half_open_limit_hits: 17,
            udp_flow_evictions: 18,
            icmp_flow_evictions: 19,
            dns_flow_evictions: 20,
            tcp_buffer_reductions: 21,
            tcp_buffer_budget_hits: 22,
            tcp_buffer_bytes: 23,
            forward_limit_hits: 24,
            forward_flow_limit_hits: 41,
            api_clients_rejected: 25,
            tcp_connect_failures: 26,
            host_socket_errors: 27,
            tcp_syn_received_timeouts: 28,
            tcp_user_timeouts: 29,
            tcp_fin_wait2_timeouts: 30,
            tcp_syn_rate_drops: 39,
            ip_frag_reassembled: 31,
            ip_frag_timeouts: 32,
            ip_frag_overlaps: 33,
            ip_frag_datagram_evictions: 34,
            ip_frag_byte_evictions: 35,
            ip_frag_fragmented: 36,
            ip_frag_pending: 37,
            ip_frag_bytes: 38,
            host_exhausted: 40,
            dns_retries: 42,
            dns_retry_forgotten: 43,
            icmp_errors_relayed: 44,
            icmp_error_rate_drops: 45,
            icmp_errors_unrelayed: 46,
        };
        assert_eq!(
            String::from_utf8_lossy(&stats_reply(&stats)),
            concat!(
                r#"{"return":{"interfaces":{"tap":{"rx_bytes":1,"rx_packets":2,"rx_errors":3,"rx_dropped":4,"#,
                r#""tx_bytes":5,"tx_packets":6,"tx_errors":7,"tx_dropped":8}},"#,
                r#""flows":{"tcp":9,"udp":10,"icmp":11},"#,
                r#""counters":{"tcp_flows_opened":12,"udp_flows_opened":13,"icmp_flows_opened":14,"#,
                r#""tcp_flow_limit_hits":15,"tcp_time_wait_evictions":16,"#,
                r#""tcp_half_open_limit_hits":17,"#,
                r#""udp_flow_evictions":18,"icmp_flow_evictions":19,"dns_flow_evictions":20,"#,
                r#""tcp_buffer_reductions":21,"tcp_buffer_budget_hits":22,"tcp_buffer_bytes":23,"#,
                r#""forward_limit_hits":24,"forward_flow_limit_hits":41,"api_clients_rejected":25,"#,
                r#""tcp_connect_failures":26,"host_socket_errors":27,"#,
                r#""tcp_syn_received_timeouts":28,"tcp_user_timeouts":29,"tcp_fin_wait2_timeouts":30,"tcp_syn_rate_drops":39,"#,
                r#""ip_frag_reassembled":31,"ip_frag_timeouts":32,"ip_frag_overlaps":33,"#,
                r#""ip_frag_datagram_evictions":34,"ip_frag_byte_evictions":35,"#,
                r#""ip_frag_fragmented":36,"ip_frag_pending":37,"ip_frag_bytes":38,"host_exhausted":40,"#,
                r#""dns_retries":42,"dns_retry_forgotten":43,"#,
                r#""icmp_errors_relayed":44,"icmp_error_rate_drops":45,"icmp_errors_unrelayed":46}}}"#
            )
        );
    }

    /// Every field of `Stats` must reach the reply. `Stats`' `Debug` lists its fields, so a
    /// counter added to `Stats` but not to `stats_reply` fails here, not silently.
    #[test]
    fn stats_reply_covers_every_stats_field() {
        let debug = format!("{:?}", Stats::default());
        let fields: Vec<&str> = debug
            .trim_start_matches("Stats {")
            .trim_end_matches('}')
            .split(',')
            .filter_map(|field| field.split(':').next())
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .collect();
        assert!(fields.len() >= 27, "{debug}");
        let reply: Value =
            serde_json::from_slice(&stats_reply(&Stats::default())).expect("valid JSON");
        let body = &reply["return"];
        for field in fields {
            let present = body["interfaces"]["tap"].get(field).is_some()
                || body["counters"].get(field).is_some()
                || field
                    .strip_suffix("_flows")
                    .is_some_and(|kind| body["flows"].get(kind).is_some());
            assert!(present, "Stats::{field} is missing from stats_reply");
        }
    }

    // The table's errors as the client sees them.

    #[test]
    fn table_errors_map_to_reference_texts() {
        let mut table = ForwardTable::new(1);
        let spec = spec("0.0.0.0", 8080, "10.0.2.100", 80);
        let id = table.insert(spec.clone()).map_err(ApiError::from);
        assert_eq!(id.map(add_reply), Ok(br#"{"return":{"id":1}}"#.to_vec()));
        // Same spec again: conflict. Another port: the table is full. Both as a failed bind.
        let again = table.check(&spec).map_err(ApiError::from);
        assert_eq!(
            again.map_err(|err| error_reply(&err)),
            Err(
                br#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#
                    .to_vec()
            )
        );
        let mut other = spec.clone();
        other.host_port = 8081;
        assert_eq!(
            table.insert(other).map_err(ApiError::from),
            Err(ApiError::AddFailed)
        );
        // Removing an id that is not there (never was, or already removed) is a bad id.
        assert_eq!(
            table.remove(2).map_err(ApiError::from).map(|_| ()),
            Err(ApiError::BadId)
        );
        assert!(table.remove(1).is_ok());
        let gone = table
            .remove(1)
            .map_err(ApiError::from)
            .map(|_| remove_reply());
        assert_eq!(
            gone.map_err(|err| error_reply(&err)),
            Err(br#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#.to_vec())
        );
    }

    #[test]
    fn add_list_remove_round_trip() {
        let mut table = ForwardTable::new(10);
        let requests = [
            br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":18080,"guest_port":80}}"#.as_slice(),
            br#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"::","host_port":5353,"guest_addr":"10.0.2.100","guest_port":53}}"#,
        ];
        for (expected_id, request) in (1..).zip(requests) {
            let Ok(Request::AddHostfwd(request)) = parse(request) else {
                panic!("did not parse");
            };
            assert_eq!(table.insert(request.resolve(GUEST)), Ok(expected_id));
        }
        assert!(matches!(
            parse(br#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#),
            Ok(Request::RemoveHostfwd { id: 1 })
        ));
        assert!(table.remove(1).is_ok());
        let listed: Vec<Forward> = table.list().cloned().collect();
        assert_eq!(
            String::from_utf8_lossy(&list_reply(&listed)),
            r#"{"entries":[{"id":2,"proto":"udp","host_addr":"::","host_port":5353,"guest_addr":"10.0.2.100","guest_port":53}]}"#
        );
    }

    /// What a client writes with `to_json` parses back to the same request, and looks as
    /// slirp4netns's documentation writes it.
    #[test]
    fn requests_round_trip_through_the_wire_format() {
        let forward = |host_addr: Option<&str>, guest_addr: Option<&str>| ForwardRequest {
            proto: ForwardProto::Udp,
            host_addr: host_addr.map(|a| a.parse().expect("test address")),
            host_port: 5353,
            guest_addr: guest_addr.map(|a| a.parse().expect("test address")),
            guest_port: 53,
        };
        let requests = [
            Request::AddHostfwd(forward(None, None)),
            Request::AddHostfwd(forward(Some("127.0.0.1"), Some("10.0.2.15"))),
            Request::AddHostfwd(forward(Some("::1"), Some("fd00::100"))),
            Request::ListHostfwd,
            Request::RemoveHostfwd { id: 1 << 40 },
            Request::GetStats,
            Request::ListFlows,
        ];
        for request in requests {
            let bytes = request.to_json();
            assert_eq!(
                parse(&bytes),
                Ok(request.clone()),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
        assert_eq!(
            String::from_utf8(Request::AddHostfwd(forward(Some("0.0.0.0"), None)).to_json())
                .unwrap(),
            r#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"0.0.0.0","host_port":5353,"guest_port":53}}"#
        );
        assert_eq!(
            String::from_utf8(Request::RemoveHostfwd { id: 3 }.to_json()).unwrap(),
            r#"{"execute":"remove_hostfwd","arguments":{"id":3}}"#
        );
    }
}

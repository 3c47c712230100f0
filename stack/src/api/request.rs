//! The control protocol's requests: one definition, written by [`Request::to_json`]
//! (rslirpctl) and read by [`parse_request`] (the socket side), in the reference's order of
//! checks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{to_json, ApiError};
use crate::forward::{ForwardProto, ForwardSpec};

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

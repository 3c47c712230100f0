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
//!
//! `request` holds the requests (wire definition and parsing), `reply` the reply bytes;
//! [`ApiError`], shared by both, lives here.

mod reply;
mod request;

use serde::Serialize;

use crate::forward::{AddForwardError, ForwardError};

pub use reply::{
    add_reply, error_reply, flows_reply, list_reply, remove_reply, stats_reply, FlowEntry,
};
pub use request::{parse_request, request_complete, ForwardRequest, Request, MAX_REQUEST};

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

fn to_json<T: Serialize>(reply: &T) -> Vec<u8> {
    // Only our own structs of strings and integers come here, and writing those into a
    // Vec cannot fail (serde_json fails only on I/O errors or non-string map keys).
    serde_json::to_vec(reply).expect("serializing a reply struct cannot fail")
}

#[cfg(test)]
mod tests;

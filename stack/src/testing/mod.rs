//! Test support for scenario tests on a virtual clock: an in-memory host ([`SimHost`]),
//! guest-side frame tools ([`Guest`], [`GuestTcp`], [`parse`]) and a harness that plays the
//! event loop ([`Scenario`]).
//!
//! Compiled under `cfg(test)` and with the `testing` feature, which `stack/tests/`, the
//! benches, the root's tests and the fuzz harness turn on; a normal build (the binary) has
//! none of it. Like the rest of the crate it touches no OS resource.
//!
//! Everything here fails loudly: a frame from the stack with a bad checksum, a host call on
//! a socket the stack already closed, or a stack that asks to be polled forever panics with
//! a message that says which contract was broken.

pub use frames::{dhcp_client_message, echo_message, Guest, TcpSegment, GUEST_MAC};
pub use guest_tcp::GuestTcp;
pub use host::{HostCall, SimHost, SimSocket, SocketKind, SocketState};
pub use parse::{
    parse, parse_echo_message, try_parse, DhcpMessage, EchoMessage, IpHeader, ParseError, Parsed,
};
pub use scenario::{complete_checksum, the_only, the_only_segment, Scenario, START};

pub mod fragments;
pub mod frames;
pub mod guest_tcp;
pub mod host;
pub mod ipv6;
pub mod parse;
pub mod scenario;

#[cfg(test)]
mod tests;

//! Test support for scenario tests on a virtual clock: an in-memory host ([`SimHost`]),
//! guest-side frame tools ([`Guest`], [`GuestTcp`], [`parse()`]) and a harness that plays the
//! event loop ([`Scenario`]).
//!
//! One kit for both families: [`parse()`] decodes every frame the stack sends (ARP, IPv4,
//! IPv6) into one [`Parsed`], whose addresses say the family; a [`GuestTcp`] runs over IPv4
//! or IPv6 as its remote is, and [`Scenario::open_tcp`], [`Scenario::exchange`],
//! [`Scenario::drain`] serve both. Only the guest's frame builders are per family
//! ([`Guest::tcp`] and [`Guest::tcp6`], [`Guest::udp`] and [`Guest::udp6`], ...), as
//! the guest's kernel builds them.
//!
//! - `frames.rs`: [`Guest`], the IPv4, ARP and DHCP frame builders, [`TcpSegment`];
//!   `ipv6.rs`: the guest's IPv6, neighbour discovery and ICMPv6 builders.
//! - `parse.rs`: the decoder ([`Parsed`], [`try_parse`]) and the ping socket's
//!   [`parse_echo_message`].
//! - `guest_tcp.rs`: [`GuestTcp`], a guest-side TCP connection's bookkeeping.
//! - `fragments.rs`: the guest's IP fragmentation and reassembly.
//! - `host/`: [`SimHost`] and the API tests play the host with (`mod.rs`); its
//!   [`HostIo`](crate::io::HostIo) side (`io.rs`).
//! - `scenario.rs`: [`Scenario`], the stack, the host and the guest on one clock;
//!   `stories.rs`: what the IPv4 and IPv6 tests both check, told once.
//! - `clock.rs`: the simulated event loop's clock (poll until nothing is due, move time
//!   only to the stack's deadlines), which [`Scenario`] and the fuzz harness both play.
//!
//! Compiled under `cfg(test)` and with the `testing` feature, which `stack/tests/`, the
//! benches, the root's tests and the fuzz harness turn on; a normal build (the binary) has
//! none of it. Like the rest of the crate it touches no OS resource.
//!
//! Everything here fails loudly: a frame from the stack with a bad checksum, a host call on
//! a socket the stack already closed, or a stack that asks to be polled forever panics with
//! a message that says which contract was broken.

pub use frames::{
    dhcp_client_message, echo_message, Guest, TcpSegment, DNS_MAC, GATEWAY_MAC, GUEST_MAC,
};
pub use guest_tcp::GuestTcp;
pub use host::{HostCall, SimHost, SimSocket, SocketKind, SocketState};
pub use parse::{
    parse, parse_echo_message, try_parse, DhcpMessage, EchoMessage, IpHeader, ParseError, Parsed,
};
pub use scenario::{complete_checksum, the_only, the_only_segment, Scenario, START};
pub use stories::{the_unreachable, Unreachable};

pub mod clock;
pub mod fragments;
pub mod frames;
pub mod guest_tcp;
pub mod host;
pub mod ipv6;
pub mod parse;
pub mod scenario;
pub mod stories;

#[cfg(test)]
mod tests;

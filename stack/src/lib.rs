//! rslirp-stack: the pure, clock-driven user-mode network stack of rslirp.
//!
//! Frames from the guest's tap go in through [`Stack::handle_frame`]; readiness of host
//! sockets through [`Stack::handle_host_event`]; timers run in [`Stack::poll`], whose next
//! deadline is [`Stack::poll_at`]; frames for the guest come out of [`Stack::poll_transmit`].
//! Everything the stack needs from the operating system it asks through [`HostIo`]. Time and
//! randomness are inputs. There is no I/O, no clock and no `unsafe` in this crate.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod forward;
pub mod io;
pub mod ip;
pub mod link;
pub mod nat;
pub mod service;
pub mod stack;
pub mod stats;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use config::{
    BufferTier, Cidr6Error, Config, Ipv6Prefix, Limits, Timeouts, VirtualNetwork,
    DEFAULT_TCP_BUFFER_BUDGET,
};
pub use io::{
    CloseMode, Datagram, FlowId, HostError, HostEvent, HostIo, HostResult, IcmpReport, SourceAddr,
};
pub use link::{Gso, Offload, PartialChecksum};
pub use smoltcp::time::{Duration, Instant};
pub use stack::{Stack, TapWrite};
pub use stats::Stats;

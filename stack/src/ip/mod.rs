//! The IP layer between the link and the NAT: fragments. The guest's fragmented datagrams
//! (IPv4, and IPv6's Fragment header) are reassembled in [`reassembly`] before they take
//! the same path as an unfragmented one; datagrams for the guest larger than its MTU are
//! cut into fragments by [`fragment`] (the transmit queue calls it), since rslirp is their
//! source. TCP needs neither: its segments fit the MSS.

pub mod fragment;
pub mod reassembly;

pub use reassembly::{FragKey, Fragment, Reassembled, Reassembler};

/// The IPv6 Fragment header's next-header value.
pub const IPV6_FRAGMENT: u8 = 44;
/// Length of the IPv6 Fragment header.
pub const IPV6_FRAGMENT_HEADER_LEN: usize = 8;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Length of the IPv4 header rslirp emits (no options).
pub const IPV4_HEADER_LEN: usize = 20;
/// Largest IPv4 packet (its total length field) and largest IPv6 payload (its payload
/// length field).
pub const MAX_IP_LEN: usize = 65_535;

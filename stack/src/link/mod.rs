//! Link layer: Ethernet framing towards the guest, ARP, and the transmit queue.

pub mod arp;
pub mod tx;

pub use tx::{Gso, IpPush, Offload, PartialChecksum, TxQueue};

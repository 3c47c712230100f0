//! Services the virtual network itself offers to the guest (as opposed to NAT to the host).

pub mod dhcp;
pub mod dhcpv6;
pub mod dns;
pub mod search;

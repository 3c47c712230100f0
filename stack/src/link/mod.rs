//! Link layer: Ethernet framing, ARP (and later NDP).

//! The virtual network's shape: every address the guest sees is derived from one IPv4 CIDR,
//! exactly as slirp4netns derives them (gateway = network+2, DNS = network+3, DHCP pool
//! network+15..network+30, guest = network+100).

use core::fmt;
use smoltcp::time::Duration;
use smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr, Ipv6Address};

/// Why a CIDR cannot describe the virtual network. The `Display` texts are the reference's,
/// word for word, because scripts grep them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("invalid CIDR: {0}")]
    Syntax(String),
    #[error("invalid network address: {0}")]
    Address(String),
    #[error("prefix length needs to be 1-25")]
    PrefixLength,
    #[error("CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24")]
    HostBitsSet,
}

/// The IPv4 network of the virtual LAN. Construction validates it, so every derived address
/// is inside the network (prefix ≤ 25 leaves room for network+100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualNetwork {
    cidr: Ipv4Cidr,
}

impl VirtualNetwork {
    pub const DEFAULT: &'static str = "10.0.2.0/24";

    /// Parse `A.B.C.D/N` with the reference's rules and error texts.
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        // The reference matches ^(([0-9]{1,3}\.){3}[0-9]{1,3})/([0-9]{1,2})$ first.
        let digits = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
        };
        let syntax_error = || CidrError::Syntax(text.to_string());
        let (addr_text, prefix_text) = text.split_once('/').ok_or_else(syntax_error)?;
        let octets: Vec<&str> = addr_text.split('.').collect();
        if octets.len() != 4 || !octets.iter().all(|o| digits(o, 3)) || !digits(prefix_text, 2) {
            return Err(syntax_error());
        }
        let addr: core::net::Ipv4Addr = addr_text
            .parse()
            .map_err(|_| CidrError::Address(addr_text.to_string()))?;
        let prefix: u8 = prefix_text
            .parse()
            .map_err(|_| CidrError::Syntax(text.to_string()))?;
        if !(1..=25).contains(&prefix) {
            return Err(CidrError::PrefixLength);
        }
        let cidr = Ipv4Cidr::new(addr, prefix);
        if cidr.network().address() != addr {
            return Err(CidrError::HostBitsSet);
        }
        Ok(VirtualNetwork { cidr })
    }

    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    pub fn prefix_len(&self) -> u8 {
        self.cidr.prefix_len()
    }

    pub fn network_addr(&self) -> Ipv4Address {
        self.cidr.address()
    }

    /// network + `offset`; callers only use offsets that fit a /25.
    pub fn host(&self, offset: u32) -> Ipv4Address {
        Ipv4Address::from(u32::from(self.cidr.address()).wrapping_add(offset))
    }

    pub fn gateway(&self) -> Ipv4Address {
        self.host(2)
    }

    pub fn dns(&self) -> Ipv4Address {
        self.host(3)
    }

    pub fn guest(&self) -> Ipv4Address {
        self.host(100)
    }

    pub fn dhcp_first(&self) -> Ipv4Address {
        self.host(15)
    }

    pub fn netmask(&self) -> Ipv4Address {
        self.cidr.netmask()
    }

    pub fn broadcast(&self) -> Ipv4Address {
        self.cidr.broadcast().unwrap_or(Ipv4Address::BROADCAST)
    }

    pub fn contains(&self, addr: Ipv4Address) -> bool {
        self.cidr.contains_addr(&addr)
    }
}

impl Default for VirtualNetwork {
    fn default() -> Self {
        VirtualNetwork {
            cidr: Ipv4Cidr::new(Ipv4Address::new(10, 0, 2, 0), 24),
        }
    }
}

impl fmt::Display for VirtualNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)
    }
}

/// The MAC our virtual hosts answer with: 52:55 followed by the service's IPv4 address,
/// as libslirp does (so 10.0.2.2 is 52:55:0a:00:02:02).
pub fn service_mac(addr: Ipv4Address) -> EthernetAddress {
    let o = addr.octets();
    EthernetAddress([0x52, 0x55, o[0], o[1], o[2], o[3]])
}

/// IPv6 side of the virtual network (used with `--enable-ipv6`).
pub const IPV6_PREFIX: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 0);
pub const IPV6_GATEWAY: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub const IPV6_DNS: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);

/// Named bounds on every table the stack keeps (ARCHITECTURE.md rule 4). Overflow is counted
/// in [`crate::Stats`] and answered on the network (RST, ICMP unreachable, or eviction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent TCP flows (any state, including half-open connects).
    pub max_tcp_flows: usize,
    /// TCP flows whose host connect has not completed yet; a new SYN beyond it gives up the
    /// oldest of them.
    pub max_half_open: usize,
    /// Concurrent UDP flows; on overflow the flow idle the longest is evicted.
    pub max_udp_flows: usize,
    /// Concurrent ICMP echo flows; on overflow the oldest idle one is evicted.
    pub max_icmp_flows: usize,
    /// Frames waiting for the tap; when full, TCP flows hold their data (no drops).
    pub max_tx_queue_frames: usize,
    /// Bytes of the frames waiting for the tap (the same rule); bounds the queue when its
    /// frames are jumbo or offloaded 64 KiB segments.
    pub max_tx_queue_bytes: usize,
    /// Port forwards published through the control socket.
    pub max_forwards: usize,
    /// TCP flows lingering in TIME-WAIT (they only re-ACK a lost final FIN); on overflow the
    /// oldest is dropped, as Linux drops TIME-WAIT buckets.
    pub max_time_wait: usize,
    /// UDP flows to the DNS forwarder (queries in flight); on overflow the oldest is evicted.
    pub max_dns_flows: usize,
    /// Control-socket connections served at once; more are closed at once.
    pub max_api_clients: usize,
    /// Nameservers of resolv.conf the DNS forwarder falls back between (glibc's MAXNS);
    /// later ones are ignored.
    pub max_dns_upstreams: usize,
    /// Queries per DNS forwarder flow remembered for a retry with the next nameserver;
    /// beyond it the oldest is forgotten (not retried; the guest's resolver retries).
    pub max_dns_retry_queries: usize,
    /// Bytes of TCP buffer capacity (receive + send) all TCP flows may reserve together. A
    /// flow gets `tcp_rx_buffer` + `tcp_tx_buffer` while the reservation stays within half
    /// the budget, else `tcp_small_buffer` each way, and is refused (RST) when even that
    /// does not fit.
    pub tcp_buffer_budget: usize,
    /// Each-way buffer of a TCP flow opened under memory pressure (its window).
    pub tcp_small_buffer: usize,
    /// smoltcp receive buffer (guest → host direction) per TCP flow; sets the window.
    pub tcp_rx_buffer: usize,
    /// smoltcp send buffer (host → guest direction) per TCP flow.
    pub tcp_tx_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tcp_flows: 16_384,
            max_half_open: 1_024,
            max_udp_flows: 4_096,
            max_icmp_flows: 256,
            max_tx_queue_frames: 1_024,
            max_tx_queue_bytes: 8 << 20,
            max_forwards: crate::forward::DEFAULT_MAX_FORWARDS,
            max_time_wait: 1_024,
            max_dns_flows: 256,
            max_api_clients: 64,
            max_dns_upstreams: 3,
            max_dns_retry_queries: 8,
            tcp_buffer_budget: 4 << 30,
            tcp_small_buffer: 64 << 10,
            tcp_rx_buffer: 1 << 20,
            tcp_tx_buffer: 1 << 20,
        }
    }
}

/// Timers the stack applies (virtual time; the event loop supplies `now`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub udp_idle: Duration,
    /// UDP flows to port 53 are short-lived request/response pairs.
    pub udp_dns_idle: Duration,
    pub icmp_idle: Duration,
    /// A host connect that has not completed by then fails the guest's SYN.
    pub tcp_connect: Duration,
    /// A DNS query unanswered for this long goes to the next nameserver (when there is one).
    pub dns_retry: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            udp_idle: Duration::from_secs(240),
            udp_dns_idle: Duration::from_secs(10),
            icmp_idle: Duration::from_secs(60),
            tcp_connect: Duration::from_secs(60),
            dns_retry: Duration::from_secs(1),
        }
    }
}

/// Everything the stack needs to know about the virtual network; built by the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub network: VirtualNetwork,
    /// IP MTU of the tap (`--mtu`).
    pub mtu: usize,
    /// `--disable-host-loopback`: the gateway no longer reaches host loopback.
    pub disable_host_loopback: bool,
    /// `--enable-ipv6`.
    pub enable_ipv6: bool,
    /// `--disable-dns`: network+3 is an ordinary forwarded address.
    pub disable_dns: bool,
    /// The tap takes TCP segmentation and checksum offload (the event loop negotiated a
    /// virtio-net header with TSO/CSUM): TCP flows then send segments of up to 64 KiB with
    /// only the pseudo-header checksum, described by each frame's `link::Offload`.
    /// Receiving needs no switch: the guest's partial checksums are never verified.
    pub tap_offload: bool,
    pub limits: Limits,
    pub timeouts: Timeouts,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            network: VirtualNetwork::default(),
            mtu: 1500,
            disable_host_loopback: false,
            enable_ipv6: false,
            disable_dns: false,
            tap_offload: false,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
        }
    }
}

impl Config {
    pub fn gateway_mac(&self) -> EthernetAddress {
        service_mac(self.network.gateway())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_network_addresses() {
        let n = VirtualNetwork::parse("10.0.2.0/24").unwrap();
        assert_eq!(n.gateway(), Ipv4Address::new(10, 0, 2, 2));
        assert_eq!(n.dns(), Ipv4Address::new(10, 0, 2, 3));
        assert_eq!(n.guest(), Ipv4Address::new(10, 0, 2, 100));
        assert_eq!(n.dhcp_first(), Ipv4Address::new(10, 0, 2, 15));
        assert_eq!(
            service_mac(n.gateway()),
            EthernetAddress([0x52, 0x55, 10, 0, 2, 2])
        );
    }

    #[test]
    fn cidr_follows_network() {
        let n = VirtualNetwork::parse("10.0.135.128/25").unwrap();
        assert_eq!(n.guest(), Ipv4Address::new(10, 0, 135, 228));
        assert_eq!(n.gateway(), Ipv4Address::new(10, 0, 135, 130));
    }

    #[test]
    fn cidr_errors_have_reference_texts() {
        let err = |s: &str| VirtualNetwork::parse(s).unwrap_err().to_string();
        assert_eq!(err("10.0.2.0"), "invalid CIDR: 10.0.2.0");
        assert_eq!(err("10.0.2.0/x"), "invalid CIDR: 10.0.2.0/x");
        assert_eq!(err("10.0.2/24"), "invalid CIDR: 10.0.2/24");
        assert_eq!(err("10.0.2.300/24"), "invalid network address: 10.0.2.300");
        assert_eq!(err("10.0.2.0/26"), "prefix length needs to be 1-25");
        assert_eq!(err("10.0.0.0/0"), "prefix length needs to be 1-25");
        assert_eq!(
            err("10.0.2.100/24"),
            "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24"
        );
    }
}

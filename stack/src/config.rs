//! The virtual network's shape: every address the guest sees is derived from one IPv4 CIDR,
//! exactly as slirp4netns derives them (gateway = network+2, DNS = network+3, DHCP pool
//! network+15..network+30, guest = network+100). The IPv6 side (`--enable-ipv6`) is one /64
//! prefix, fd00::/64 unless `--cidr6` names another, with the same interface ids: gateway
//! ::2, DNS forwarder ::3.

use core::fmt;
use smoltcp::time::Duration;
use smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr, Ipv6Address};

/// Why a `--cidr6` value cannot be the IPv6 prefix of the virtual network. Our own texts (the
/// reference has no such option); each names the value, as the CIDR errors do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Cidr6Error {
    #[error("invalid IPv6 prefix: {0} (expected PREFIX/64, like fd00::/64)")]
    Syntax(String),
    #[error("IPv6 prefix length needs to be 64: {0}")]
    PrefixLength(String),
    #[error(
        "IPv6 prefix needs to be unicast (not multicast, link-local, loopback, unspecified \
         or IPv4-mapped): {0}"
    )]
    Kind(String),
    #[error(
        "IPv6 prefix needs to be a network address like fd00::/64, not like fd00::100/64: {0}"
    )]
    HostBitsSet(String),
}

/// The /64 the guest's IPv6 addresses come from (SLAAC from our router advertisements).
/// Construction validates it: a unicast network address, not link-local, loopback,
/// unspecified or IPv4-mapped, its interface-id half zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Prefix {
    network: Ipv6Address,
}

impl Ipv6Prefix {
    /// The prefix without `--cidr6`, as libslirp's (vprefix_addr6).
    pub const DEFAULT: Ipv6Prefix = Ipv6Prefix {
        network: IPV6_PREFIX,
    };
    /// The only length SLAAC over Ethernet works with (RFC 4862, RFC 2464: 64-bit interface
    /// ids), so the only one the guest could configure itself from.
    pub const LEN: u8 = 64;

    /// Parse `ADDRESS/64`. Host bits are refused rather than masked, as `--cidr` refuses
    /// them: `fd00::100/64` is more likely a guest address typed by mistake than a prefix.
    pub fn parse(text: &str) -> Result<Self, Cidr6Error> {
        let syntax_error = || Cidr6Error::Syntax(text.to_string());
        let (addr_text, len_text) = text.split_once('/').ok_or_else(syntax_error)?;
        if len_text.is_empty()
            || len_text.len() > 3
            || !len_text.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(syntax_error());
        }
        let addr: core::net::Ipv6Addr = addr_text.parse().map_err(|_| syntax_error())?;
        if len_text.parse::<u16>() != Ok(u16::from(Self::LEN)) {
            return Err(Cidr6Error::PrefixLength(text.to_string()));
        }
        let link_local = (addr.segments()[0] & 0xffc0) == 0xfe80;
        if addr.is_unspecified()
            || addr.is_loopback()
            || addr.is_multicast()
            || link_local
            || addr.to_ipv4_mapped().is_some()
        {
            return Err(Cidr6Error::Kind(text.to_string()));
        }
        if addr.segments()[4..].iter().any(|&s| s != 0) {
            return Err(Cidr6Error::HostBitsSet(text.to_string()));
        }
        Ok(Ipv6Prefix { network: addr })
    }

    /// The network address (interface id zero).
    pub fn network(&self) -> Ipv6Address {
        self.network
    }

    /// The address with interface id `id` in this prefix.
    pub fn host(&self, id: u64) -> Ipv6Address {
        Ipv6Address::from(u128::from(self.network) | u128::from(id))
    }

    pub fn contains(&self, addr: Ipv6Address) -> bool {
        addr.segments()[..4] == self.network.segments()[..4]
    }
}

impl Default for Ipv6Prefix {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, Self::LEN)
    }
}

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
/// is inside the network (prefix ≤ 25 leaves room for network+100). It also holds the IPv6
/// prefix (used with `--enable-ipv6`), fd00::/64 unless [`VirtualNetwork::with_ipv6_prefix`]
/// sets another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualNetwork {
    cidr: Ipv4Cidr,
    ipv6: Ipv6Prefix,
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
        Ok(VirtualNetwork {
            cidr,
            ipv6: Ipv6Prefix::DEFAULT,
        })
    }

    /// The same network with `prefix` as its IPv6 side (`--cidr6`).
    pub fn with_ipv6_prefix(self, prefix: Ipv6Prefix) -> Self {
        VirtualNetwork {
            ipv6: prefix,
            ..self
        }
    }

    pub fn ipv6_prefix(&self) -> Ipv6Prefix {
        self.ipv6
    }

    /// The IPv6 gateway, prefix::2 (fd00::2 by default); reaches host loopback as the IPv4
    /// gateway does.
    pub fn gateway6(&self) -> Ipv6Address {
        self.ipv6.host(2)
    }

    /// The IPv6 DNS forwarder, prefix::3 (fd00::3 by default), announced by RDNSS.
    pub fn dns6(&self) -> Ipv6Address {
        self.ipv6.host(3)
    }

    /// Whether `addr` is in the IPv6 prefix (the guest's SLAAC address, our services).
    pub fn contains6(&self, addr: Ipv6Address) -> bool {
        self.ipv6.contains(addr)
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
            ipv6: Ipv6Prefix::DEFAULT,
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

/// IPv6 side of the virtual network (used with `--enable-ipv6`) without `--cidr6`; the stack
/// takes the addresses from [`VirtualNetwork`] ([`VirtualNetwork::gateway6`] ...), these are
/// the defaults.
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
    /// TCP flows of port forwards' host clients, all forwards together: clients of a
    /// published port cannot take the flows the container needs for its own connections.
    pub max_forward_flows: usize,
    /// TCP flows of one forward's host clients: one busy port cannot take every other
    /// forward's share.
    pub max_flows_per_forward: usize,
    /// TCP flows the container's own connections leave free for forwards' clients: the
    /// guest cannot make a published port unreachable by opening connections.
    pub tcp_forward_reserve: usize,
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
    /// Search domains of resolv.conf handed to the guest (DHCP option 119, DNSSL, DHCPv6),
    /// glibc's historical MAXDNSRCH; later ones are left out (logged).
    pub max_search_domains: usize,
    /// Characters of those domains together, one separator each counted (glibc's historical
    /// 256-character search line); the list is cut after the last domain that fits. With
    /// both bounds the list fits a router advertisement and a DHCPv6 reply; a DHCP reply
    /// leaves out trailing domains the client's message size cannot take.
    pub max_search_len: usize,
    /// Queries per DNS forwarder flow remembered for a retry with the next nameserver;
    /// beyond it the oldest is forgotten (not retried; the guest's resolver retries).
    pub max_dns_retry_queries: usize,
    /// Bytes of TCP buffer capacity (receive + send) all TCP flows may reserve together:
    /// the most buffer memory a guest can make rslirp hold (uploads to a server that never
    /// reads, downloads the guest never reads). See [`Limits::tcp_buffers`] for how a new
    /// flow's buffers are chosen within it.
    pub tcp_buffer_budget: usize,
    /// Each-way buffer of a TCP flow opened once the full-size buffers of the first flows
    /// have used their share of the budget (its window).
    pub tcp_small_buffer: usize,
    /// New TCP connections the guest may open per second (a SYN costs a host socket and a
    /// connect); SYNs beyond it are dropped, the guest's kernel retransmits them a second
    /// later. A flood then costs a frame's parsing, and the tap's queue stays short for
    /// the container's other traffic. 0: no limit.
    pub max_syn_rate: u32,
    /// SYNs admitted at once above the rate (a burst of connections after a quiet time).
    pub syn_burst: u32,
    /// ICMP errors the host reports on flows' sockets (time exceeded, unreachable, packet
    /// too big) relayed to the guest per second, all flows together; beyond it they are
    /// dropped, as a router rate-limits the errors it sends (Linux: 1,000/s). 0: no limit.
    pub max_icmp_error_rate: u32,
    /// Errors relayed at once above the rate (a traceroute's burst of probes).
    pub icmp_error_burst: u32,
    /// Each-way buffer every TCP flow is sure to get: the budget always keeps this much for
    /// each flow `max_tcp_flows` still allows, so it never refuses a flow before the table
    /// is full (as long as `max_tcp_flows` such flows fit the budget).
    pub tcp_min_buffer: usize,
    /// smoltcp receive buffer (guest → host direction) per TCP flow; sets the window.
    pub tcp_rx_buffer: usize,
    /// smoltcp send buffer (host → guest direction) per TCP flow.
    pub tcp_tx_buffer: usize,
    /// Fragmented guest datagrams being reassembled at once (both families); a new one
    /// beyond it drops the oldest.
    pub max_reassembly_datagrams: usize,
    /// Bytes those datagrams may hold together (buffers, range lists, a fixed cost each);
    /// growth beyond it drops the oldest others (a datagram alone too big is dropped).
    pub max_reassembly_bytes: usize,
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
            max_forward_flows: 8_192,
            max_flows_per_forward: 4_096,
            tcp_forward_reserve: 1_024,
            max_time_wait: 1_024,
            max_dns_flows: 256,
            max_api_clients: 64,
            max_dns_upstreams: 3,
            max_search_domains: 6,
            max_search_len: 256,
            max_dns_retry_queries: 8,
            tcp_buffer_budget: DEFAULT_TCP_BUFFER_BUDGET,
            tcp_small_buffer: 64 << 10,
            max_syn_rate: 10_000,
            syn_burst: 2_000,
            max_icmp_error_rate: 1_000,
            icmp_error_burst: 100,
            tcp_min_buffer: 4 << 10,
            tcp_rx_buffer: 1 << 20,
            tcp_tx_buffer: 1 << 20,
            max_reassembly_datagrams: 64,
            max_reassembly_bytes: 1 << 20,
        }
    }
}

/// The default `tcp_buffer_budget`, 256 MiB: room for 32 flows with full 1 MiB buffers
/// each way (a quarter), about 500 with 64 KiB ones, and 4 KiB ones for all 16,384 flows
/// `max_tcp_flows` allows (half). See docs/limits.md for why this size.
pub const DEFAULT_TCP_BUFFER_BUDGET: usize = 256 << 20;

/// Which buffers a new TCP flow gets (see [`Limits::tcp_buffers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferTier {
    /// `tcp_rx_buffer` / `tcp_tx_buffer`.
    Full,
    /// `tcp_small_buffer` each way.
    Small,
    /// `tcp_min_buffer` each way.
    Min,
}

impl Limits {
    /// The buffers (receive, send) of a new TCP flow when the open flows (`open`, not
    /// counting the new one) reserve `reserved` bytes, or `None` when even the minimum
    /// ones do not fit the budget.
    ///
    /// The budget is split so that the worst case stays within it and no flow is refused
    /// before `max_tcp_flows`: every flow the table may still take keeps `tcp_min_buffer`
    /// each way in reserve; full-size buffers go to new flows while the reservation stays
    /// within a quarter of the budget (a few bulk transfers at full speed);
    /// `tcp_small_buffer` ones to flows after that, as long as they leave the reserve.
    pub fn tcp_buffers(&self, reserved: usize, open: usize) -> Option<(usize, usize, BufferTier)> {
        let later = self.max_tcp_flows.saturating_sub(open + 1);
        let floor = later.saturating_mul(2 * self.tcp_min_buffer);
        let fits = |bytes: usize| {
            reserved.saturating_add(bytes).saturating_add(floor) <= self.tcp_buffer_budget
        };
        let full = self.tcp_rx_buffer + self.tcp_tx_buffer;
        if reserved + full <= self.tcp_buffer_budget / 4 && fits(full) {
            return Some((self.tcp_rx_buffer, self.tcp_tx_buffer, BufferTier::Full));
        }
        let small = self.tcp_small_buffer;
        if fits(2 * small) {
            return Some((small, small, BufferTier::Small));
        }
        let min = self.tcp_min_buffer;
        (reserved + 2 * min <= self.tcp_buffer_budget).then_some((min, min, BufferTier::Min))
    }

    /// Host sockets the flow tables can hold at once: one per TCP, UDP and ICMP flow (a
    /// UDP flow of a port forward has none, but is counted as if it had: the bound is
    /// conservative).
    pub fn flow_fds(&self) -> usize {
        self.max_tcp_flows + self.max_udp_flows + self.max_icmp_flows
    }

    /// These limits with the flow tables shrunk, each in proportion, so that all flows
    /// together never hold more than `fds` host sockets (every table keeps at least one
    /// flow); the limits within a table (`max_half_open`, `max_time_wait`,
    /// `max_dns_flows`) follow theirs. Unchanged when they already fit.
    ///
    /// Why: a guest that opens more flows than the process has file descriptors would
    /// otherwise take the last ones, and then the control socket, port forwards and new
    /// connections all fail with EMFILE. With the tables within the fds, a full table
    /// evicts or refuses by its own rule, and the rest of the fds stay for the others.
    pub fn within_fds(&self, fds: usize) -> Limits {
        let total = self.flow_fds();
        if total <= fds {
            return *self;
        }
        let share = |limit: usize| ((fds as u128 * limit as u128 / total as u128) as usize).max(1);
        let mut fitted = *self;
        fitted.max_tcp_flows = share(self.max_tcp_flows);
        fitted.max_udp_flows = share(self.max_udp_flows);
        fitted.max_icmp_flows = share(self.max_icmp_flows);
        fitted.max_half_open = self.max_half_open.min(fitted.max_tcp_flows);
        fitted.max_time_wait = self.max_time_wait.min(fitted.max_tcp_flows);
        fitted.max_dns_flows = self.max_dns_flows.min(fitted.max_udp_flows);
        // The shares between the guest and forwards' clients keep their proportions.
        let tcp_share = |limit: usize| {
            ((fitted.max_tcp_flows as u128 * limit as u128 / self.max_tcp_flows.max(1) as u128)
                as usize)
                .max(1)
        };
        fitted.max_forward_flows = tcp_share(self.max_forward_flows).min(self.max_forward_flows);
        fitted.max_flows_per_forward =
            tcp_share(self.max_flows_per_forward).min(self.max_flows_per_forward);
        fitted.tcp_forward_reserve = tcp_share(self.tcp_forward_reserve)
            .min(self.tcp_forward_reserve)
            .min(fitted.max_tcp_flows.saturating_sub(1));
        fitted
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
    /// A guest that has not acknowledged our SYN-ACK by then (after the host connect
    /// succeeded) is sent a RST and the host connection aborted: a kernel gives up after
    /// tcp_synack_retries (5: about 63 s).
    pub tcp_syn_received: Duration,
    /// Data or a FIN towards the guest unacknowledged, and no segment from the guest, for
    /// this long: both sides are reset (TCP_USER_TIMEOUT). Idle flows never time out, nor
    /// does a guest that answers zero-window probes.
    pub tcp_user: Duration,
    /// FIN-WAIT-2 (the host side closed, the guest acknowledged our FIN) with no segment
    /// from the guest for this long: both sides are reset (like tcp_fin_timeout).
    pub tcp_fin_wait2: Duration,
    /// A fragmented guest datagram not complete this long after its first fragment is
    /// dropped (Linux's IPv4 default; RFC 8200 allows 60 s for IPv6, shorter is safe).
    pub ip_reassembly: Duration,
    /// A DNS query unanswered for this long goes to the next nameserver (when there is one).
    pub dns_retry: Duration,
}

impl Timeouts {
    pub fn tcp_lifetimes(&self) -> crate::nat::tcp::TcpLifetimes {
        crate::nat::tcp::TcpLifetimes {
            syn_received: self.tcp_syn_received,
            user: self.tcp_user,
            fin_wait2: self.tcp_fin_wait2,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            udp_idle: Duration::from_secs(240),
            udp_dns_idle: Duration::from_secs(10),
            icmp_idle: Duration::from_secs(60),
            tcp_connect: Duration::from_secs(60),
            tcp_syn_received: Duration::from_secs(60),
            tcp_user: Duration::from_secs(300),
            tcp_fin_wait2: Duration::from_secs(60),
            ip_reassembly: Duration::from_secs(30),
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

    /// Filling the table with the default limits: the first flows get full buffers, then
    /// small ones, then the minimum; every flow up to `max_tcp_flows` is admitted, and the
    /// reservation never passes the budget.
    #[test]
    fn default_buffer_tiers_admit_every_flow_within_the_budget() {
        let limits = Limits::default();
        let mut reserved = 0;
        let mut tiers = Vec::new();
        for open in 0..limits.max_tcp_flows {
            let (rx, tx, tier) = limits
                .tcp_buffers(reserved, open)
                .unwrap_or_else(|| panic!("flow {open} refused at {reserved} bytes"));
            reserved += rx + tx;
            assert!(reserved <= limits.tcp_buffer_budget, "flow {open}");
            tiers.push(tier);
        }
        let count = |tier| tiers.iter().filter(|&&t| t == tier).count();
        assert_eq!(
            count(BufferTier::Full),
            32,
            "a single bulk flow gets 1 MiB each way"
        );
        assert_eq!(tiers[0], BufferTier::Full);
        assert!(
            count(BufferTier::Small) >= 500,
            "{}",
            count(BufferTier::Small)
        );
        assert_eq!(
            count(BufferTier::Full) + count(BufferTier::Small) + count(BufferTier::Min),
            16_384
        );
        // Flows going away give their share back: after every flow is gone, full again.
        assert_eq!(
            limits.tcp_buffers(0, 0).map(|(_, _, tier)| tier),
            Some(BufferTier::Full)
        );
    }

    /// A bigger budget (for users who want big windows everywhere) scales the tiers.
    #[test]
    fn a_bigger_budget_gives_more_flows_full_buffers() {
        let limits = Limits {
            tcp_buffer_budget: 4 << 30,
            ..Limits::default()
        };
        let mut reserved = 0;
        let mut full = 0;
        for open in 0..limits.max_tcp_flows {
            let (rx, tx, tier) = limits.tcp_buffers(reserved, open).expect("admitted");
            reserved += rx + tx;
            full += usize::from(tier == BufferTier::Full);
        }
        assert_eq!(full, 512);
        assert!(reserved <= limits.tcp_buffer_budget);
    }

    #[test]
    fn flow_tables_shrink_in_proportion_to_the_fds() {
        let limits = Limits::default();
        assert_eq!(limits.within_fds(limits.flow_fds()), limits, "they fit");
        assert_eq!(limits.within_fds(1 << 20), limits);
        let fitted = limits.within_fds(863);
        assert!(fitted.flow_fds() <= 863, "{fitted:?}");
        assert_eq!(
            (
                fitted.max_tcp_flows,
                fitted.max_udp_flows,
                fitted.max_icmp_flows
            ),
            (681, 170, 10)
        );
        assert_eq!(fitted.max_half_open, 681);
        assert_eq!(fitted.max_time_wait, 681);
        assert_eq!(fitted.max_dns_flows, 170);
        // Nothing else changes.
        assert_eq!(fitted.tcp_buffer_budget, limits.tcp_buffer_budget);
        assert_eq!(fitted.max_api_clients, limits.max_api_clients);
        // A table never drops to zero.
        let tiny = limits.within_fds(3);
        assert_eq!(
            (tiny.max_tcp_flows, tiny.max_udp_flows, tiny.max_icmp_flows),
            (2, 1, 1)
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

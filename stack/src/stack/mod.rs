//! The stack: the one object the event loop drives.
//!
//! `handle_frame` takes a frame from the guest, `handle_host_event` the readiness of a host
//! socket, `poll` runs timers and resumes work that waited for room in the transmit queue,
//! `poll_at` says when `poll` is due next, and `poll_transmit` hands out frames for the tap.
//!
//! This file holds the struct, those verbs, the accessors and what every flow kind shares
//! (timers, resuming starved flows); the rest is split by concern, each file an `impl Stack`
//! block: `ipv4.rs` and `ipv6.rs` (a guest's packet up to its transport), `tcp.rs` (TCP
//! admission, verdicts, TIME-WAIT, evictions, flow removal), `datagram.rs` (UDP and ICMP
//! echo flows) and `forwards.rs` (port forwards and the control API's requests).

use crate::config::Config;
use crate::forward::ForwardTable;
use crate::io::{CloseMode, FlowId, HostEvent, HostIo};
use crate::ip::Reassembler;
use crate::link::arp::{self, ArpOutcome};
use crate::link::{Offload, TxQueue};
use crate::nat::datagram::DatagramFlow;
use crate::nat::icmp::IcmpFlow;
use crate::nat::idle::IdleOrder;
use crate::nat::rate::TokenBucket;
use crate::nat::target::Rules;
use crate::nat::tcp::TcpFlow;
use crate::nat::udp::UdpFlow;
use crate::nat::{FlowTable, Quote};
use crate::service::dhcp::DhcpServer;
use crate::stats::{LimitReports, Stats};
use core::net::IpAddr;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetFrame, EthernetProtocol};
use std::collections::{BTreeSet, HashMap, VecDeque};

mod datagram;
mod forwards;
mod ipv4;
mod ipv6;
mod tcp;

/// Largest datagram a host socket can hand us.
const SCRATCH_LEN: usize = 65_536;

/// One IP packet from the guest, whichever its family.
struct Inbound<'a> {
    src: IpAddr,
    dst: IpAddr,
    /// The whole IP packet (smoltcp takes it as is).
    packet: &'a [u8],
    /// The transport header and payload.
    payload: &'a [u8],
    /// Its start, for ICMP errors.
    quote: Quote,
}

/// One NATed flow.
enum Flow {
    Tcp(Box<TcpFlow>),
    Udp(UdpFlow),
    Icmp(IcmpFlow),
}

impl Flow {
    /// What a UDP or ICMP echo flow shares with the other kind.
    fn datagram(&self) -> Option<&DatagramFlow> {
        match self {
            Flow::Udp(udp) => Some(&udp.core),
            Flow::Icmp(icmp) => Some(&icmp.core),
            Flow::Tcp(_) => None,
        }
    }
}

pub struct Stack {
    config: Config,
    stats: Stats,
    tx: TxQueue,
    flows: FlowTable<Flow>,
    /// Flows that stopped because the transmit queue was full; resumed when it drains.
    starved: Vec<FlowId>,
    /// TCP flows that took in guest segments since the last `poll`; each is driven once
    /// there (see `TcpFlow::take_segment`). A set: a burst of one flow counts once.
    dirty: BTreeSet<FlowId>,
    half_open: usize,
    /// Half-open TCP flows, oldest first (entries of flows that have since connected or
    /// gone are skipped when met, and compacted away before they can pile up).
    half_open_order: VecDeque<FlowId>,
    rng: u64,
    now: Instant,
    scratch: Vec<u8>,
    forwards: ForwardTable,
    dhcp: DhcpServer,
    /// Stateless DHCPv6 (with `--enable-ipv6`).
    dhcpv6: crate::service::dhcpv6::Dhcpv6Server,
    /// When the next unsolicited router advertisement is due (with `--enable-ipv6`).
    next_router_advert: Option<Instant>,
    /// The host's nameservers (resolv.conf order, at most `max_dns_upstreams`); empty:
    /// DNS queries to network+3 are refused.
    dns_upstreams: Vec<IpAddr>,
    /// The one new DNS queries go to: the first, until it fails to answer and another does.
    dns_preferred: usize,
    /// The host's search domains (bounded by `max_search_domains` / `max_search_len`), for
    /// DHCP option 119, the router advertisements' DNSSL and DHCPv6.
    dns_search: Vec<String>,
    /// UDP forwards whose socket still has datagrams but the transmit queue was full.
    starved_forwards: Vec<u64>,
    /// Forwards whose accept or receive failed (out of fds, say), retried at the instant.
    retry_forwards: Vec<u64>,
    retry_forwards_at: Option<Instant>,
    /// Frames the tap refused (the guest's link is down); part of `tx_dropped`, but not a
    /// limit hit.
    tap_drops: u64,
    /// UDP flows to the DNS forwarder open now (bounded by `max_dns_flows`).
    dns_flows: usize,
    /// UDP flows, ICMP flows and DNS queries by idle time: a full table evicts its longest
    /// idle flow in O(log n) instead of scanning the table (see `IdleOrder`).
    udp_idle: IdleOrder,
    icmp_idle: IdleOrder,
    dns_idle: IdleOrder,
    /// TCP flows that entered TIME-WAIT, oldest first: evicted first when the flow table
    /// is full (as Linux drops TIME-WAIT buckets). Entries of flows already gone are pruned
    /// from the front; TIME-WAIT lasts the same for all, so they gather there.
    time_wait: VecDeque<FlowId>,
    /// Flows in TIME-WAIT now (bounded by `max_time_wait`).
    time_wait_flows: usize,
    /// TCP flows of forwards' host clients: the forward of each, and how many each forward
    /// has (`max_flows_per_forward`; all together `max_forward_flows`).
    forward_of: HashMap<FlowId, u64>,
    flows_per_forward: HashMap<u64, usize>,
    /// Finished TCP flows kept for renewal (at most `SPARE_TCP_FLOWS`), see `TcpFlow::new`.
    /// Boxed as in `Flow::Tcp`, so a flow moves between the two without being copied.
    #[allow(clippy::vec_box)]
    spare_tcp: Vec<Box<TcpFlow>>,
    limit_reports: LimitReports,
    /// The guest's fragmented datagrams being reassembled (both families).
    reassembly: Reassembler,
    /// Admits the guest's new connections at `max_syn_rate` (a flood of SYNs must not
    /// cost a host socket each).
    syn_rate: TokenBucket,
    /// Relays the ICMP errors the host reports at `max_icmp_error_rate`.
    icmp_error_rate: TokenBucket,
}

/// What became of a frame handed to the tap by [`Stack::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapWrite {
    /// Written.
    Sent,
    /// The tap is full: keep the frame (and the rest) for later.
    Full,
    /// The tap refused the frame for good (the guest's link is down): counted as dropped.
    Dropped,
    /// The tap rejected the frame as an error: counted as a transmit error.
    Failed,
}

impl Stack {
    pub fn new(config: Config, now: Instant, random_seed: u64) -> Stack {
        let limits = &config.limits;
        let mut tx = TxQueue::new(
            limits.max_tx_queue_frames,
            limits.max_tx_queue_bytes,
            config.gateway_mac(),
        );
        // Fragment identifications start at a random point, as a host's would.
        tx.set_ip_mtu(config.mtu, (random_seed >> 16) as u32);
        let reassembly = Reassembler::new(
            limits.max_reassembly_datagrams,
            limits.max_reassembly_bytes,
            config.timeouts.ip_reassembly,
        );
        Stack {
            reassembly,
            stats: Stats::default(),
            tx,
            flows: FlowTable::default(),
            starved: Vec::new(),
            dirty: BTreeSet::new(),
            half_open: 0,
            half_open_order: VecDeque::new(),
            // xorshift needs a non-zero state.
            rng: random_seed | 1,
            now,
            scratch: vec![0u8; SCRATCH_LEN],
            forwards: ForwardTable::new(config.limits.max_forwards),
            dhcp: DhcpServer::new(
                config.network,
                u16::try_from(config.mtu).unwrap_or(u16::MAX),
                (!config.disable_dns).then(|| config.network.dns()),
            ),
            dhcpv6: crate::service::dhcpv6::Dhcpv6Server::new(config.gateway_mac()),
            starved_forwards: Vec::new(),
            retry_forwards: Vec::new(),
            retry_forwards_at: None,
            tap_drops: 0,
            dns_flows: 0,
            udp_idle: IdleOrder::default(),
            icmp_idle: IdleOrder::default(),
            dns_idle: IdleOrder::default(),
            time_wait: VecDeque::new(),
            time_wait_flows: 0,
            forward_of: HashMap::new(),
            flows_per_forward: HashMap::new(),
            spare_tcp: Vec::new(),
            limit_reports: LimitReports::default(),
            syn_rate: TokenBucket::new(limits.max_syn_rate, limits.syn_burst, now),
            icmp_error_rate: TokenBucket::new(
                limits.max_icmp_error_rate,
                limits.icmp_error_burst,
                now,
            ),
            dns_upstreams: Vec::new(),
            dns_preferred: 0,
            dns_search: Vec::new(),
            // Soon after start, when the guest's link is likely up.
            next_router_advert: config.enable_ipv6.then(|| now + Duration::from_secs(1)),
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The resolver DNS queries are forwarded to: one nameserver, or none.
    pub fn set_dns_upstream(&mut self, upstream: Option<IpAddr>) {
        self.set_dns_upstreams(upstream.into_iter().collect());
    }

    /// The host's nameservers, in resolv.conf order (beyond `max_dns_upstreams` ignored).
    /// New queries go to the first at once; flows already open finish with the old list.
    /// A query the first leaves unanswered for `Timeouts::dns_retry` (or refuses) goes to
    /// the next, and the one that answers is preferred for new queries until the list
    /// changes.
    pub fn set_dns_upstreams(&mut self, mut upstreams: Vec<IpAddr>) {
        let mut seen = Vec::new();
        upstreams.retain(|ip| {
            let new = !seen.contains(ip);
            seen.push(*ip);
            new
        });
        upstreams.truncate(self.config.limits.max_dns_upstreams);
        if self.dns_upstreams != upstreams {
            let list: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
            log::info!("DNS upstream: {}", listed_or_none(&list, ", then "));
            self.dns_upstreams = upstreams;
            self.dns_preferred = 0;
        }
    }

    /// The host's search domains, in resolv.conf order (its last `search` or `domain`
    /// line). Names that are no domain names and repeats are left out, and the list is cut
    /// at `max_search_domains` names / `max_search_len` characters (logged). Later DHCP
    /// replies, router advertisements and DHCPv6 replies carry the new list; the guest
    /// sees a change at its next DHCP renewal, RA or DHCPv6 refresh.
    pub fn set_dns_search(&mut self, domains: &[String]) {
        let limits = &self.config.limits;
        let (domains, cut) = crate::service::search::bounded(
            domains,
            limits.max_search_domains,
            limits.max_search_len,
        );
        if self.dns_search != domains {
            if cut {
                log::warn!(
                    "resolv.conf search list cut to {} domains (limits max_search_domains={}, \
                     max_search_len={})",
                    domains.len(),
                    limits.max_search_domains,
                    limits.max_search_len
                );
            }
            log::info!("DNS search domains: {}", listed_or_none(&domains, " "));
            self.dhcp.set_search(domains.clone());
            self.dns_search = domains;
        }
    }

    /// The search domains the guest is given now.
    pub fn dns_search(&self) -> &[String] {
        &self.dns_search
    }

    /// Where new DNS queries go.
    fn dns_upstream(&self) -> Option<IpAddr> {
        self.dns_upstreams.get(self.dns_preferred).copied()
    }

    /// The NAT's address rules (where a flow goes) for the configuration and the DNS
    /// forwarder's current upstream.
    fn rules(&self) -> Rules {
        Rules::new(&self.config, self.dns_upstream())
    }

    /// Counters and gauges (a snapshot).
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        // The limit reports (`poll`) see `tx_dropped` without `tap_drops`, the frames a down
        // link refused (that is the guest's choice, not a full queue).
        stats.tx_dropped += self.tx.dropped() + self.tap_drops;
        stats.ip_frag_pending = self.reassembly.datagrams() as u64;
        stats.ip_frag_bytes = self.reassembly.bytes() as u64;
        stats
    }

    /// Control-socket connections the OS ring closed at once (`max_api_clients`), so that
    /// `get_stats` and the limit reports include them.
    pub fn set_api_clients_rejected(&mut self, rejected: u64) {
        self.stats.api_clients_rejected = rejected;
    }

    /// A frame from the guest.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8], host: &mut impl HostIo) {
        self.now = now;
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += frame.len() as u64;
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.stats.rx_errors += 1;
            return;
        };
        // The guest's MAC is learned only from frames that prove to be the guest's (a valid
        // ARP packet, an IP packet from a guest address): a malformed or spoofed frame from
        // another MAC must not redirect what we send, or a forwarded connection to a guest
        // that stays silent would go to that MAC and die.
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                match arp::handle(&self.config, eth.src_addr(), eth.payload(), &mut self.tx) {
                    ArpOutcome::Replied => {}
                    ArpOutcome::Ignored => self.stats.rx_dropped += 1,
                    ArpOutcome::Malformed => self.stats.rx_errors += 1,
                    ArpOutcome::QueueFull => self.stats.tx_dropped += 1,
                }
            }
            EthernetProtocol::Ipv4 => self.handle_ipv4(now, eth.src_addr(), eth.payload(), host),
            EthernetProtocol::Ipv6 if self.config.enable_ipv6 => {
                self.handle_ipv6(now, eth.src_addr(), eth.payload(), host)
            }
            _ => self.stats.rx_dropped += 1,
        }
    }

    /// Readiness of a flow's host socket.
    pub fn handle_host_event(&mut self, now: Instant, event: HostEvent, host: &mut impl HostIo) {
        self.now = now;
        let id = event.flow;
        let Some(key) = self.flows.key(id) else {
            return; // the flow is gone; a late event
        };
        let Some(flow) = self.flows.get_mut(id) else {
            return;
        };
        match flow {
            Flow::Tcp(tcp) => {
                let was_connecting = tcp.is_connecting();
                let verdict = tcp.handle_host_event(now, event, &mut self.tx, host);
                if was_connecting && !tcp.is_connecting() {
                    self.half_open -= 1;
                }
                self.apply_tcp_verdict(now, id, verdict, host);
            }
            Flow::Udp(_) | Flow::Icmp(_) => {
                if event.error {
                    // ICMP errors the kernel queued (IP_RECVERR): relayed before any data,
                    // which also clears the socket error they set.
                    self.relay_icmp_errors(now, id, host);
                }
                if event.readable || event.error {
                    self.read_datagrams(now, id, &key, host);
                }
            }
        }
    }

    /// Run due timers and resume flows that waited for the transmit queue.
    pub fn poll(&mut self, now: Instant, host: &mut impl HostIo) {
        self.now = now;
        for id in core::mem::take(&mut self.dirty) {
            if let Some(Flow::Tcp(tcp)) = self.flows.get_mut(id) {
                let verdict = tcp.handle_timer(now, id, &mut self.tx, host);
                self.apply_tcp_verdict(now, id, verdict, host);
            }
        }
        self.poll_router_advert(now);
        self.reassembly.expire(now, &mut self.stats);
        while let Some(id) = self.flows.pop_due(now) {
            self.handle_timer(now, id, host);
        }
        let ready = self.tx.has_room() && self.tx.guest_mac().is_unicast();
        if ready && !self.starved.is_empty() {
            let starved = core::mem::take(&mut self.starved);
            for id in starved {
                self.resume(now, id, host);
            }
        }
        if self.tx.has_room() && !self.starved_forwards.is_empty() {
            for forward in core::mem::take(&mut self.starved_forwards) {
                self.handle_forward_event(now, forward, host);
            }
        }
        if self.retry_forwards_at.is_some_and(|at| at <= now) {
            self.retry_forwards_at = None;
            let mut retry = core::mem::take(&mut self.retry_forwards);
            retry.sort_unstable();
            retry.dedup();
            for forward in retry {
                self.handle_forward_event(now, forward, host);
            }
        }
        // No copy of the counters: this runs on every wake-up of the loop.
        self.limit_reports
            .check(now, &self.stats, self.tx.dropped(), &self.config.limits);
    }

    /// When [`Stack::poll`] should run next.
    pub fn poll_at(&self) -> Option<Instant> {
        let waiting = !self.starved.is_empty() || !self.starved_forwards.is_empty();
        let ready = self.tx.has_room() && self.tx.guest_mac().is_unicast();
        let resume = ((waiting && ready) || !self.dirty.is_empty()).then_some(self.now);
        [
            self.flows.next_due(),
            resume,
            self.next_router_advert,
            self.reassembly.next_deadline(),
            self.retry_forwards_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Hand frames for the guest to `write` until it says the tap is full or none are
    /// left. Returns how many were handed over (sent or dropped). Each frame comes with what
    /// the tap must be told about it (all default unless `Config::tap_offload`).
    pub fn poll_transmit(&mut self, mut write: impl FnMut(&[u8], Offload) -> TapWrite) -> usize {
        let stats = &mut self.stats;
        let tap_drops = &mut self.tap_drops;
        self.tx.drain(|frame, offload| match write(frame, offload) {
            TapWrite::Sent => {
                stats.tx_packets += 1;
                stats.tx_bytes += frame.len() as u64;
                true
            }
            TapWrite::Full => false,
            TapWrite::Dropped => {
                *tap_drops += 1;
                true
            }
            TapWrite::Failed => {
                stats.tx_errors += 1;
                true
            }
        })
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for ISNs and smoltcp's port/ident choices.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn handle_timer(&mut self, now: Instant, id: FlowId, host: &mut impl HostIo) {
        let expires_at = match self.flows.get_mut(id) {
            None => return,
            Some(Flow::Tcp(tcp)) => {
                let verdict = tcp.handle_timer(now, id, &mut self.tx, host);
                self.apply_tcp_verdict(now, id, verdict, host);
                return;
            }
            Some(Flow::Udp(udp)) => {
                if udp.dns_retry.as_ref().is_some_and(|r| r.is_due(now)) {
                    self.retry_dns(now, id, host);
                }
                match self.flows.get(id) {
                    Some(Flow::Udp(udp)) => (udp.core.expires_at(), udp.next_due()),
                    _ => return,
                }
            }
            Some(Flow::Icmp(icmp)) => (icmp.core.expires_at(), icmp.core.expires_at()),
        };
        let (expires_at, next_due) = expires_at;
        if now >= expires_at {
            self.remove_flow(id, CloseMode::Graceful, host);
        } else {
            self.flows.schedule(id, Some(next_due));
        }
    }

    /// Continue a flow that stopped for lack of room in the transmit queue.
    fn resume(&mut self, now: Instant, id: FlowId, host: &mut impl HostIo) {
        let Some(key) = self.flows.key(id) else {
            return;
        };
        match self.flows.get_mut(id) {
            Some(Flow::Tcp(tcp)) => {
                let verdict = tcp.handle_timer(now, id, &mut self.tx, host);
                self.apply_tcp_verdict(now, id, verdict, host);
            }
            Some(flow) if flow.datagram().is_some_and(|core| core.host_readable) => {
                self.read_datagrams(now, id, &key, host)
            }
            _ => {}
        }
    }
}

/// A list as the log shows it: the items joined by `separator`, or `none`.
fn listed_or_none(items: &[String], separator: &str) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(separator)
    }
}

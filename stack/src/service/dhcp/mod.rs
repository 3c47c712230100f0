//! The DHCPv4 server of the virtual network, as a pure state machine: a client message and
//! `now` go in, at most one reply comes out. The caller does the UDP/IP/Ethernet framing.
//!
//! What the guest sees is slirp4netns's (libslirp's `bootp.c`): a pool of [`POOL_SIZE`]
//! addresses from network+15, 24 h leases, the gateway (network+2) as server identifier,
//! `siaddr` and router, the DNS forwarder (network+3) as name server, and the subnet mask.
//! On top of that it offers the interface MTU (option 26, from `--mtu`) and T1/T2.
//! The host's search domains go in option 119 (RFC 3397, compressed, split per RFC 3396) of
//! every OFFER and ACK when there are any, whether or not the client asked for it in option
//! 55, as libslirp sends its `vdnssearch`; with no search domains the option is absent and
//! the reply is what it always was.
//!
//! Where it deliberately differs from libslirp, and why:
//! - Leases expire, and RELEASE frees them; libslirp keeps a slot for a MAC forever, so a guest
//!   that churns MACs would lock the pool for the life of the container. An address still goes
//!   back to the MAC that last held it as long as never-used addresses remain (see `Slot`).
//! - A REQUEST that names another server is ignored (RFC 2131 §4.3.2); libslirp answers it.
//! - DECLINE and INFORM are handled; libslirp ignores every type but DISCOVER and REQUEST.
//! - A client that already has an address (ciaddr set, no broadcast flag) gets a unicast reply
//!   (RFC 2131 §4.1); libslirp broadcasts every reply. NAKs are always broadcast.
//! - A NAK carries our server identifier (RFC 2131 table 3) besides libslirp's message text.
//! - Plain BOOTP (no message-type option), which libslirp answers as a REQUEST, is dropped as
//!   malformed: smoltcp's `DhcpRepr` cannot parse it and no container guest sends it.
//!
//! Identity: a lease belongs to the message's `chaddr`, as in libslirp, but a unicast reply goes
//! to the Ethernet source of the request. The two differ only for a client that proxies or
//! spoofs, and then the station that sent the request is the one that can take the reply.

use crate::config::VirtualNetwork;
use crate::service::search;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, Ipv4Address,
};

/// Addresses in the pool, network+15 ..= network+30 (libslirp's `NB_BOOTP_CLIENTS`). It is also
/// the bound of the lease table, which is an array of this size.
pub const POOL_SIZE: usize = 16;

const LEASE_SECS: u32 = 24 * 60 * 60;
/// libslirp's `LEASE_TIME`.
pub const LEASE_TIME: Duration = Duration::from_secs(LEASE_SECS as u64);
/// T1 and T2 at RFC 2131 §4.4.5's defaults, 0.5 and 0.875 of the lease.
const RENEWAL_SECS: u32 = LEASE_SECS / 2;
const REBINDING_SECS: u32 = LEASE_SECS / 8 * 7;

/// How long an offered address waits for the client's REQUEST. Long enough for any client's
/// retries; short enough that a DISCOVER-only prober cannot hold the pool.
const OFFER_HOLD: Duration = Duration::from_secs(60);
/// How long an address a client DECLINEd (someone else answers ARP for it) stays out of the
/// pool; dnsmasq's choice.
const DECLINE_HOLD: Duration = Duration::from_secs(10 * 60);

/// RFC 1542 §3.2.1: BOOTP messages are at least 300 octets and some clients drop shorter ones,
/// so replies are zero-padded to it (libslirp pads to 548).
const MIN_MESSAGE_LEN: usize = 300;
/// The largest message every client takes (RFC 2131 §2: a 576-octet IP datagram, less the
/// IP and UDP headers), unless it announces a larger one in option 57.
const DEFAULT_MAX_MESSAGE_LEN: usize = 576 - 20 - 8;
/// libslirp's NAK text (option 56), word for word, for anyone who greps guest logs.
const NAK_TEXT: &[u8] = b"requested address not available";

// Options that smoltcp's `DhcpRepr` does not model (or, for T1/T2, parses but does not emit).
const OPT_INTERFACE_MTU: u8 = 26;
const OPT_MESSAGE: u8 = 56;
const OPT_RENEWAL_TIME: u8 = 58;
const OPT_REBINDING_TIME: u8 = 59;

/// A reply for the guest: send `payload` as UDP from gateway:67 to `dst_ip`:68, in an Ethernet
/// frame to `dst_mac`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpReply {
    /// The UDP payload (the BOOTP/DHCP message).
    pub payload: Vec<u8>,
    pub dst_ip: Ipv4Address,
    pub dst_mac: EthernetAddress,
}

/// What the server dropped or refused, for [`crate::Stats`] (ARCHITECTURE.md rules 4 and 5).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DhcpCounters {
    /// Not a client message smoltcp can parse: truncated, wrong magic, no message type...
    pub malformed: u64,
    /// Well-formed but not ours to answer: another server's REQUEST, a server message type,
    /// a RELEASE or DECLINE for an address the client does not hold.
    pub ignored: u64,
    /// Clients that found no free address: the overflow of the lease table.
    pub pool_exhausted: u64,
    pub naks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Never used, released, or reclaimed.
    Free,
    /// Reserved for `holder` until `until`, waiting for its REQUEST.
    Offered,
    /// Leased to `holder` until `until`.
    Bound,
    /// Out of the pool until `until`: a client found it in use.
    Declined,
}

/// One pool address. `holder` outlives the lease on purpose: an expired or released address
/// stays with its last client until the pool runs out of never-used ones, which is how the same
/// MAC keeps getting the same address back.
#[derive(Debug, Clone, Copy)]
struct Slot {
    state: SlotState,
    holder: Option<EthernetAddress>,
    until: Instant,
}

impl Slot {
    const UNUSED: Slot = Slot {
        state: SlotState::Free,
        holder: None,
        until: Instant::ZERO,
    };

    /// Offered, bound or declined, and not yet expired.
    fn is_taken(&self, now: Instant) -> bool {
        self.state != SlotState::Free && self.until > now
    }

    /// A declined slot has no holder, so nobody may use it until the hold runs out.
    fn usable_by(&self, mac: EthernetAddress, now: Instant) -> bool {
        !self.is_taken(now) || self.holder == Some(mac)
    }

    fn is_live_lease(&self, now: Instant) -> bool {
        self.state == SlotState::Bound && self.is_taken(now)
    }
}

/// What a client message earns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Offer(Ipv4Address),
    Ack(Ipv4Address),
    /// ACK to an INFORM: configuration only, no address and no lease time.
    InformAck,
    Nak,
}

/// The DHCPv4 server. The lease table is a fixed array of [`POOL_SIZE`] slots indexed by
/// address; finding a client's slot scans those 16 entries, which only DHCP messages pay.
#[derive(Debug, Clone)]
pub struct DhcpServer {
    network: VirtualNetwork,
    mtu: u16,
    dns: Option<Ipv4Address>,
    /// Search domains for option 119 (already bounded by the stack's limits).
    search: Vec<String>,
    slots: [Slot; POOL_SIZE],
    counters: DhcpCounters,
}

impl DhcpServer {
    /// `dns`: None with --disable-dns (then no DNS option is offered). `mtu`: interface MTU
    /// option (26).
    pub fn new(network: VirtualNetwork, mtu: u16, dns: Option<Ipv4Address>) -> DhcpServer {
        DhcpServer {
            network,
            mtu,
            dns,
            search: Vec::new(),
            slots: [Slot::UNUSED; POOL_SIZE],
            counters: DhcpCounters::default(),
        }
    }

    /// A UDP payload the guest sent to port 67 from `client_mac` (the Ethernet source).
    /// Returns the reply to send from gateway:67 to dst_ip:68 / dst_mac, or None (ignored or
    /// malformed; never panics).
    pub fn handle(
        &mut self,
        now: Instant,
        client_mac: EthernetAddress,
        payload: &[u8],
    ) -> Option<DhcpReply> {
        let Ok(packet) = DhcpPacket::new_checked(payload) else {
            return self.malformed("shorter than a BOOTP header");
        };
        let Ok(request) = DhcpRepr::parse(&packet) else {
            return self.malformed("not a DHCP client message");
        };
        if !request.client_hardware_address.is_unicast() {
            return self.malformed("chaddr is not a unicast MAC");
        }
        let answer = match request.message_type {
            DhcpMessageType::Discover => self.discover(now, &request),
            DhcpMessageType::Request => self.request(now, &request),
            DhcpMessageType::Release => self.release(now, &request),
            DhcpMessageType::Decline => self.decline(now, &request),
            DhcpMessageType::Inform => Some(Answer::InformAck),
            _ => self.ignore("a server's message type"),
        }?;
        self.reply(client_mac, &request, answer)
    }

    /// Bound leases as (client MAC, address, expiry), expired ones included until their
    /// address is reused: compare the expiry with the current time to tell them apart.
    pub fn leases(&self) -> impl Iterator<Item = (EthernetAddress, Ipv4Address, Instant)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.state == SlotState::Bound)
            .filter_map(|(index, slot)| Some((slot.holder?, self.address(index), slot.until)))
    }

    pub fn counters(&self) -> DhcpCounters {
        self.counters
    }

    /// The search domains later OFFERs and ACKs carry in option 119 (empty: none).
    pub fn set_search(&mut self, domains: Vec<String>) {
        self.search = domains;
    }

    fn discover(&mut self, now: Instant, request: &DhcpRepr) -> Option<Answer> {
        let mac = request.client_hardware_address;
        let index = self.choose_slot(mac, request.requested_ip, now)?;
        // Re-offering a live lease must not shorten it to an offer's hold.
        if !self.slots[index].is_live_lease(now) {
            self.assign(index, mac, SlotState::Offered, now + OFFER_HOLD);
        }
        Some(Answer::Offer(self.address(index)))
    }

    /// Selecting (server id ours + requested IP), init-reboot (requested IP only) and
    /// renewing/rebinding (ciaddr) all come down to: may this MAC have this address?
    fn request(&mut self, now: Instant, request: &DhcpRepr) -> Option<Answer> {
        let mac = request.client_hardware_address;
        if !self.addressed_to_us(request) {
            // The client took another server's offer: release ours now, not after the hold.
            self.withdraw_offer(mac);
            return self.ignore("REQUEST for another server");
        }
        let wanted = request.requested_ip.or_else(|| known(request.client_ip));
        let index = match wanted {
            Some(address) => match self.slot_usable_by(address, mac, now) {
                Some(index) => index,
                None => {
                    self.counters.naks += 1;
                    log::debug!("dhcp: NAK {address} for {mac}");
                    return Some(Answer::Nak);
                }
            },
            // As libslirp: a REQUEST naming no address (a client that remembers its address
            // but not how it got it) gets its old address or a new one.
            None => self.choose_slot(mac, None, now)?,
        };
        self.assign(index, mac, SlotState::Bound, now + LEASE_TIME);
        Some(Answer::Ack(self.address(index)))
    }

    fn release(&mut self, now: Instant, request: &DhcpRepr) -> Option<Answer> {
        let mac = request.client_hardware_address;
        match self.slot_held_by_request(request, request.client_ip, now) {
            Some(index) => {
                // The holder stays, so the client gets this address back if nobody needed it.
                let slot = &mut self.slots[index];
                slot.state = SlotState::Free;
                slot.until = now;
                log::debug!("dhcp: {mac} released {}", request.client_ip);
                None
            }
            None => self.ignore("RELEASE of an address the client does not hold"),
        }
    }

    fn decline(&mut self, now: Instant, request: &DhcpRepr) -> Option<Answer> {
        let declined = request.requested_ip.unwrap_or(Ipv4Address::UNSPECIFIED);
        match self.slot_held_by_request(request, declined, now) {
            Some(index) => {
                // Someone else answers ARP for it: park it, and forget the holder so that the
                // client's next DISCOVER gets a different address.
                self.slots[index] = Slot {
                    state: SlotState::Declined,
                    holder: None,
                    until: now + DECLINE_HOLD,
                };
                log::debug!("dhcp: {declined} declined, out of the pool for a while");
                None
            }
            None => self.ignore("DECLINE of an address the client does not hold"),
        }
    }

    /// RFC 2131 §4.3.1's order: the client's current or previous address, the one it asks
    /// for, a never-used one, the one expired the longest.
    fn choose_slot(
        &mut self,
        mac: EthernetAddress,
        requested: Option<Ipv4Address>,
        now: Instant,
    ) -> Option<usize> {
        let chosen = self
            .slots
            .iter()
            .position(|slot| slot.holder == Some(mac))
            .or_else(|| requested.and_then(|address| self.slot_usable_by(address, mac, now)))
            .or_else(|| self.free_slot(now));
        if chosen.is_none() {
            self.counters.pool_exhausted += 1;
            log::debug!("dhcp: pool exhausted, no address for {mac}");
        }
        chosen
    }

    fn free_slot(&self, now: Instant) -> Option<usize> {
        let never_used = |slot: &Slot| slot.holder.is_none() && !slot.is_taken(now);
        self.slots.iter().position(never_used).or_else(|| {
            let available = self.slots.iter().enumerate();
            available
                .filter(|(_, slot)| !slot.is_taken(now))
                .min_by_key(|(_, slot)| slot.until)
                .map(|(index, _)| index)
        })
    }

    /// One address per client: a client that moves to another address gives up its old one.
    fn assign(&mut self, index: usize, mac: EthernetAddress, state: SlotState, until: Instant) {
        for slot in self.slots.iter_mut().filter(|s| s.holder == Some(mac)) {
            *slot = Slot::UNUSED;
        }
        self.slots[index] = Slot {
            state,
            holder: Some(mac),
            until,
        };
    }

    fn withdraw_offer(&mut self, mac: EthernetAddress) {
        for slot in self.slots.iter_mut() {
            if slot.holder == Some(mac) && slot.state == SlotState::Offered {
                slot.state = SlotState::Free;
            }
        }
    }

    fn slot_usable_by(
        &self,
        address: Ipv4Address,
        mac: EthernetAddress,
        now: Instant,
    ) -> Option<usize> {
        self.slot_index(address)
            .filter(|&index| self.slots[index].usable_by(mac, now))
    }

    /// The slot of `address` if this message's sender holds it and the message is for us
    /// (RELEASE and DECLINE carry our server id; without one we accept them).
    fn slot_held_by_request(
        &self,
        request: &DhcpRepr,
        address: Ipv4Address,
        now: Instant,
    ) -> Option<usize> {
        let mac = request.client_hardware_address;
        let index = self.slot_index(address)?;
        let slot = &self.slots[index];
        let held = slot.holder == Some(mac) && slot.is_taken(now);
        (held && self.addressed_to_us(request)).then_some(index)
    }

    fn addressed_to_us(&self, request: &DhcpRepr) -> bool {
        request
            .server_identifier
            .is_none_or(|server| server == self.network.gateway())
    }

    fn slot_index(&self, address: Ipv4Address) -> Option<usize> {
        let offset = u32::from(address).checked_sub(u32::from(self.network.dhcp_first()))?;
        (offset < POOL_SIZE as u32).then_some(offset as usize)
    }

    fn address(&self, index: usize) -> Ipv4Address {
        Ipv4Address::from(u32::from(self.network.dhcp_first()) + index as u32)
    }

    fn malformed(&mut self, why: &str) -> Option<DhcpReply> {
        self.counters.malformed += 1;
        log::debug!("dhcp: dropped malformed message: {why}");
        None
    }

    fn ignore(&mut self, why: &str) -> Option<Answer> {
        self.counters.ignored += 1;
        log::debug!("dhcp: ignored {why}");
        None
    }

    fn reply(
        &self,
        client_mac: EthernetAddress,
        request: &DhcpRepr,
        answer: Answer,
    ) -> Option<DhcpReply> {
        let payload = self.emit(request, answer)?;
        // RFC 2131 §4.1: a client without an address, or one that asks for broadcast, cannot
        // take unicast; a NAK says the client's address is wrong, so it is broadcast too.
        let unicast =
            answer != Answer::Nak && !request.broadcast && !request.client_ip.is_unspecified();
        let (dst_ip, dst_mac) = if unicast {
            (request.client_ip, client_mac)
        } else {
            (Ipv4Address::BROADCAST, EthernetAddress::BROADCAST)
        };
        Some(DhcpReply {
            payload,
            dst_ip,
            dst_mac,
        })
    }

    fn emit(&self, request: &DhcpRepr, answer: Answer) -> Option<Vec<u8>> {
        let gateway = self.network.gateway();
        let mtu = self.mtu.to_be_bytes();
        let renewal = RENEWAL_SECS.to_be_bytes();
        let rebinding = REBINDING_SECS.to_be_bytes();
        let mtu_option = DhcpOption {
            kind: OPT_INTERFACE_MTU,
            data: &mtu,
        };
        let lease_options = [
            mtu_option,
            DhcpOption {
                kind: OPT_RENEWAL_TIME,
                data: &renewal,
            },
            DhcpOption {
                kind: OPT_REBINDING_TIME,
                data: &rebinding,
            },
        ];
        let nak_options = [DhcpOption {
            kind: OPT_MESSAGE,
            data: NAK_TEXT,
        }];
        let (message_type, your_ip, extra_options): (_, _, &[DhcpOption]) = match answer {
            Answer::Offer(address) => (DhcpMessageType::Offer, address, &lease_options),
            Answer::Ack(address) => (DhcpMessageType::Ack, address, &lease_options),
            Answer::InformAck => (
                DhcpMessageType::Ack,
                Ipv4Address::UNSPECIFIED,
                core::slice::from_ref(&mtu_option),
            ),
            Answer::Nak => (DhcpMessageType::Nak, Ipv4Address::UNSPECIFIED, &nak_options),
        };
        let configures = answer != Answer::Nak;
        let leases = matches!(answer, Answer::Offer(_) | Answer::Ack(_));
        let mut repr = DhcpRepr {
            message_type,
            transaction_id: request.transaction_id,
            secs: 0,
            client_hardware_address: request.client_hardware_address,
            // RFC 2131 table 3: ciaddr is echoed in an ACK, zero in an OFFER or NAK.
            client_ip: if message_type == DhcpMessageType::Ack {
                request.client_ip
            } else {
                Ipv4Address::UNSPECIFIED
            },
            your_ip,
            // libslirp names itself as the next server.
            server_ip: if configures {
                gateway
            } else {
                Ipv4Address::UNSPECIFIED
            },
            relay_agent_ip: request.relay_agent_ip,
            broadcast: request.broadcast,
            router: configures.then_some(gateway),
            subnet_mask: configures.then_some(self.network.netmask()),
            dns_servers: self
                .dns
                .filter(|_| configures)
                .map(|dns| core::iter::once(dns).collect()),
            server_identifier: Some(gateway),
            lease_duration: leases.then_some(LEASE_SECS),
            // smoltcp parses T1/T2 but does not emit them: they go in `additional_options`.
            renew_duration: None,
            rebind_duration: None,
            requested_ip: None,
            client_identifier: None,
            parameter_request_list: None,
            max_size: None,
            additional_options: extra_options,
        };
        let search_data;
        let with_search: Vec<DhcpOption>;
        if configures && !self.search.is_empty() {
            let room = usize::from(request.max_size.unwrap_or(0))
                .saturating_sub(20 + 8)
                .max(DEFAULT_MAX_MESSAGE_LEN)
                .saturating_sub(repr.buffer_len());
            search_data = self.search_option_data(room);
            with_search = extra_options
                .iter()
                .copied()
                .chain(
                    search::dhcp_option_chunks(&search_data).map(|data| DhcpOption {
                        kind: search::DHCP_OPT_DOMAIN_SEARCH,
                        data,
                    }),
                )
                .collect();
            repr.additional_options = &with_search;
        }
        let mut payload = vec![0; repr.buffer_len().max(MIN_MESSAGE_LEN)];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
            .ok()?;
        Some(payload)
    }
}

impl DhcpServer {
    /// Option 119's data for the longest leading part of the search list whose options fit
    /// in `room` octets; empty (no option) if not even the first domain fits. Leaving out
    /// the tail is better than libslirp's leaving out the whole list: the first domains are
    /// the ones the resolver tries first.
    fn search_option_data(&self, room: usize) -> Vec<u8> {
        for keep in (1..=self.search.len()).rev() {
            let data = search::encode_compressed(&self.search[..keep]);
            if search::dhcp_options_len(&data) <= room {
                if keep < self.search.len() {
                    log::debug!(
                        "dhcp: {} of {} search domains fit the client's message size",
                        keep,
                        self.search.len()
                    );
                }
                return data;
            }
        }
        log::debug!("dhcp: the search domains do not fit the client's message size; left out");
        Vec::new()
    }
}

/// `None` for 0.0.0.0, the "no address" of BOOTP's address fields.
fn known(address: Ipv4Address) -> Option<Ipv4Address> {
    (!address.is_unspecified()).then_some(address)
}

#[cfg(test)]
mod tests;

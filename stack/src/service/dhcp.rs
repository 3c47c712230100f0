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
mod tests {
    use super::*;

    const GATEWAY: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);
    const DNS: Ipv4Address = Ipv4Address::new(10, 0, 2, 3);
    /// Any time will do; not zero, so that expiry arithmetic is exercised.
    const START: Instant = Instant::from_micros_const(1_000_000_000);

    fn pool(last_octet: u8) -> Ipv4Address {
        Ipv4Address::new(10, 0, 2, last_octet)
    }

    fn mac(n: u8) -> EthernetAddress {
        EthernetAddress([0x02, 0, 0, 0, 0, n])
    }

    /// A client message as a stock client sends it; `edit` sets what the story needs.
    fn message(
        message_type: DhcpMessageType,
        chaddr: EthernetAddress,
        edit: impl FnOnce(&mut DhcpRepr<'static>),
    ) -> Vec<u8> {
        let mut repr = crate::testing::dhcp_client_message(message_type, 0x1234_5678, chaddr);
        edit(&mut repr);
        let mut buffer = vec![0; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut buffer[..]))
            .unwrap();
        buffer
    }

    /// A server reply as the client reads it.
    #[derive(Debug)]
    struct Seen {
        message_type: DhcpMessageType,
        transaction_id: u32,
        chaddr: EthernetAddress,
        client_ip: Ipv4Address,
        your_ip: Ipv4Address,
        server_id: Option<Ipv4Address>,
        router: Option<Ipv4Address>,
        subnet_mask: Option<Ipv4Address>,
        dns: Option<Vec<Ipv4Address>>,
        lease_secs: Option<u32>,
        renewal_secs: Option<u32>,
        rebinding_secs: Option<u32>,
        mtu: Option<u16>,
        text: Option<Vec<u8>>,
        payload_len: usize,
        dst_ip: Ipv4Address,
        dst_mac: EthernetAddress,
    }

    impl Seen {
        fn read(reply: DhcpReply) -> Seen {
            let packet = DhcpPacket::new_checked(&reply.payload[..]).unwrap();
            let repr = DhcpRepr::parse(&packet).unwrap();
            let option = |kind| {
                packet
                    .options()
                    .find(|option| option.kind == kind)
                    .map(|option| option.data.to_vec())
            };
            Seen {
                message_type: repr.message_type,
                transaction_id: repr.transaction_id,
                chaddr: repr.client_hardware_address,
                client_ip: repr.client_ip,
                your_ip: repr.your_ip,
                server_id: repr.server_identifier,
                router: repr.router,
                subnet_mask: repr.subnet_mask,
                dns: repr.dns_servers.map(|servers| servers.to_vec()),
                lease_secs: repr.lease_duration,
                renewal_secs: repr.renew_duration,
                rebinding_secs: repr.rebind_duration,
                mtu: option(OPT_INTERFACE_MTU).map(|data| u16::from_be_bytes([data[0], data[1]])),
                text: option(OPT_MESSAGE),
                payload_len: reply.payload.len(),
                dst_ip: reply.dst_ip,
                dst_mac: reply.dst_mac,
            }
        }

        fn is_broadcast(&self) -> bool {
            self.dst_ip == Ipv4Address::BROADCAST && self.dst_mac == EthernetAddress::BROADCAST
        }
    }

    /// The guest's link with the server on it, and the virtual clock.
    struct Link {
        server: DhcpServer,
        now: Instant,
    }

    impl Link {
        fn new() -> Link {
            Link::with(DhcpServer::new(VirtualNetwork::default(), 1500, Some(DNS)))
        }

        fn with(server: DhcpServer) -> Link {
            Link { server, now: START }
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
        }

        /// Sent from the MAC in chaddr, as every ordinary client does.
        fn send(&mut self, payload: &[u8]) -> Option<Seen> {
            let chaddr = DhcpPacket::new_checked(payload)
                .map(|packet| packet.client_hardware_address())
                .unwrap_or(mac(0xee));
            self.send_from(chaddr, payload)
        }

        fn send_from(&mut self, ethernet_source: EthernetAddress, payload: &[u8]) -> Option<Seen> {
            self.server
                .handle(self.now, ethernet_source, payload)
                .map(Seen::read)
        }

        fn discover(&mut self, client: EthernetAddress) -> Option<Seen> {
            self.send(&message(DhcpMessageType::Discover, client, |_| {}))
        }

        /// The SELECTING state's REQUEST: our server id and the offered address.
        fn select(&mut self, client: EthernetAddress, address: Ipv4Address) -> Option<Seen> {
            self.send(&message(DhcpMessageType::Request, client, |m| {
                m.server_identifier = Some(GATEWAY);
                m.requested_ip = Some(address);
            }))
        }

        /// The whole DISCOVER/OFFER/REQUEST/ACK exchange; returns the bound address.
        fn lease(&mut self, client: EthernetAddress) -> Ipv4Address {
            let offer = self.discover(client).expect("an OFFER");
            assert_eq!(offer.message_type, DhcpMessageType::Offer);
            let ack = self.select(client, offer.your_ip).expect("an ACK");
            assert_eq!(ack.message_type, DhcpMessageType::Ack);
            assert_eq!(ack.your_ip, offer.your_ip);
            ack.your_ip
        }

        /// Renewing: unicast from the bound address, no server id, no requested IP.
        fn renew(&mut self, client: EthernetAddress, address: Ipv4Address) -> Option<Seen> {
            self.send(&message(DhcpMessageType::Request, client, |m| {
                m.client_ip = address;
            }))
        }

        fn release(&mut self, client: EthernetAddress, address: Ipv4Address) {
            let release = message(DhcpMessageType::Release, client, |m| {
                m.client_ip = address;
                m.server_identifier = Some(GATEWAY);
            });
            assert!(self.send(&release).is_none(), "RELEASE has no reply");
        }

        fn lease_of(&self, client: EthernetAddress) -> Option<(Ipv4Address, Instant)> {
            self.server
                .leases()
                .find(|&(holder, _, _)| holder == client)
                .map(|(_, address, expiry)| (address, expiry))
        }
    }

    #[test]
    fn first_client_is_offered_network_plus_15_with_every_option() {
        let mut link = Link::new();
        let offer = link.discover(mac(1)).expect("an OFFER");

        assert_eq!(offer.message_type, DhcpMessageType::Offer);
        assert_eq!(offer.transaction_id, 0x1234_5678);
        assert_eq!(offer.chaddr, mac(1));
        assert_eq!(offer.your_ip, pool(15));
        assert_eq!(offer.client_ip, Ipv4Address::UNSPECIFIED);
        assert_eq!(offer.server_id, Some(GATEWAY));
        assert_eq!(offer.router, Some(GATEWAY));
        assert_eq!(offer.subnet_mask, Some(Ipv4Address::new(255, 255, 255, 0)));
        assert_eq!(offer.dns, Some(vec![DNS]));
        assert_eq!(offer.lease_secs, Some(86_400));
        assert_eq!(offer.renewal_secs, Some(43_200));
        assert_eq!(offer.rebinding_secs, Some(75_600));
        assert_eq!(offer.mtu, Some(1500));
        assert_eq!(offer.text, None);
        assert!(offer.payload_len >= MIN_MESSAGE_LEN);
        // It has no address yet, so the OFFER is broadcast.
        assert!(offer.is_broadcast());
    }

    #[test]
    fn mtu_option_follows_the_interface_mtu() {
        let server = DhcpServer::new(VirtualNetwork::default(), 65_520, Some(DNS));
        let offer = Link::with(server).discover(mac(1)).unwrap();
        assert_eq!(offer.mtu, Some(65_520));
    }

    #[test]
    fn second_client_gets_the_next_address() {
        let mut link = Link::new();
        assert_eq!(link.discover(mac(1)).unwrap().your_ip, pool(15));
        assert_eq!(link.discover(mac(2)).unwrap().your_ip, pool(16));
    }

    #[test]
    fn same_mac_gets_the_same_address_again() {
        let mut link = Link::new();
        assert_eq!(link.discover(mac(1)).unwrap().your_ip, pool(15));
        assert_eq!(link.discover(mac(2)).unwrap().your_ip, pool(16));
        // A retransmitted DISCOVER, and a reboot after the lease: the same address each time.
        assert_eq!(link.discover(mac(1)).unwrap().your_ip, pool(15));
        assert_eq!(link.lease(mac(2)), pool(16));
        link.advance(LEASE_TIME * 3);
        assert_eq!(link.discover(mac(2)).unwrap().your_ip, pool(16));
        assert_eq!(link.discover(mac(1)).unwrap().your_ip, pool(15));
    }

    #[test]
    fn request_after_offer_is_acked_and_recorded_for_24_hours() {
        let mut link = Link::new();
        let offer = link.discover(mac(1)).unwrap();
        let ack = link.select(mac(1), offer.your_ip).expect("an ACK");

        assert_eq!(ack.message_type, DhcpMessageType::Ack);
        assert_eq!(ack.your_ip, pool(15));
        assert_eq!(ack.server_id, Some(GATEWAY));
        assert_eq!(ack.router, Some(GATEWAY));
        assert_eq!(ack.dns, Some(vec![DNS]));
        assert_eq!(ack.lease_secs, Some(86_400));
        assert_eq!(ack.mtu, Some(1500));
        assert!(ack.is_broadcast());
        assert_eq!(link.lease_of(mac(1)), Some((pool(15), START + LEASE_TIME)));
    }

    #[test]
    fn renewal_extends_the_lease_and_is_answered_by_unicast() {
        let mut link = Link::new();
        let address = link.lease(mac(1));
        link.advance(Duration::from_secs(43_200));

        let ack = link.renew(mac(1), address).expect("an ACK");
        assert_eq!(ack.message_type, DhcpMessageType::Ack);
        assert_eq!(ack.your_ip, address);
        assert_eq!(ack.client_ip, address);
        assert_eq!((ack.dst_ip, ack.dst_mac), (address, mac(1)));
        assert_eq!(
            link.lease_of(mac(1)),
            Some((address, link.now + LEASE_TIME))
        );
    }

    #[test]
    fn broadcast_flag_makes_even_a_renewal_reply_broadcast() {
        let mut link = Link::new();
        let address = link.lease(mac(1));
        let ack = link
            .send(&message(DhcpMessageType::Request, mac(1), |m| {
                m.client_ip = address;
                m.broadcast = true;
            }))
            .unwrap();
        assert_eq!(ack.message_type, DhcpMessageType::Ack);
        assert!(ack.is_broadcast());
    }

    #[test]
    fn init_reboot_gets_its_old_address_back() {
        let mut link = Link::new();
        let address = link.lease(mac(1));
        // After a reboot: the remembered address, no server id, no ciaddr.
        let ack = link
            .send(&message(DhcpMessageType::Request, mac(1), |m| {
                m.requested_ip = Some(address);
            }))
            .unwrap();
        assert_eq!(ack.message_type, DhcpMessageType::Ack);
        assert_eq!(ack.your_ip, address);
    }

    #[test]
    fn request_naming_no_address_gets_the_clients_address_as_in_libslirp() {
        let mut link = Link::new();
        let address = link.lease(mac(1));
        let request = message(DhcpMessageType::Request, mac(1), |_| {});
        assert_eq!(link.send(&request).unwrap().your_ip, address);
        let request = message(DhcpMessageType::Request, mac(2), |_| {});
        assert_eq!(link.send(&request).unwrap().your_ip, pool(16));
    }

    #[test]
    fn request_for_another_server_is_ignored_and_frees_our_offer() {
        let mut link = Link::new();
        assert_eq!(link.discover(mac(1)).unwrap().your_ip, pool(15));
        let elsewhere = message(DhcpMessageType::Request, mac(1), |m| {
            m.server_identifier = Some(Ipv4Address::new(192, 168, 1, 1));
            m.requested_ip = Some(Ipv4Address::new(192, 168, 1, 50));
        });
        assert!(link.send(&elsewhere).is_none());
        assert_eq!(link.server.counters().ignored, 1);
        assert_eq!(link.lease_of(mac(1)), None);
        // Its offer is withdrawn at once: another client may take the address now.
        let taken = link.select(mac(2), pool(15)).unwrap();
        assert_eq!(taken.message_type, DhcpMessageType::Ack);
    }

    #[test]
    fn request_for_an_address_outside_the_pool_is_naked() {
        let mut link = Link::new();
        for outside in [
            Ipv4Address::new(10, 0, 2, 100),
            Ipv4Address::new(10, 0, 2, 31),
            Ipv4Address::new(10, 0, 2, 14),
            Ipv4Address::new(192, 168, 1, 50),
        ] {
            let nak = link.select(mac(1), outside).expect("a NAK");
            assert_eq!(nak.message_type, DhcpMessageType::Nak);
            assert_eq!(nak.your_ip, Ipv4Address::UNSPECIFIED);
            assert_eq!(nak.server_id, Some(GATEWAY));
            assert_eq!(nak.text.as_deref(), Some(NAK_TEXT));
            assert_eq!(
                (nak.router, &nak.dns, nak.lease_secs, nak.mtu),
                (None, &None, None, None)
            );
            assert!(nak.is_broadcast());
        }
        assert_eq!(link.server.counters().naks, 4);
    }

    #[test]
    fn renewing_an_address_outside_the_pool_is_naked_by_broadcast() {
        let mut link = Link::new();
        let nak = link.renew(mac(1), Ipv4Address::new(10, 0, 2, 100)).unwrap();
        assert_eq!(nak.message_type, DhcpMessageType::Nak);
        assert!(nak.is_broadcast());
    }

    #[test]
    fn request_for_an_address_leased_to_another_mac_is_naked() {
        let mut link = Link::new();
        let address = link.lease(mac(1));
        let nak = link.select(mac(2), address).unwrap();
        assert_eq!(nak.message_type, DhcpMessageType::Nak);
        // An address merely offered to another client is not free either.
        link.discover(mac(3)).unwrap();
        assert_eq!(
            link.select(mac(2), pool(16)).unwrap().message_type,
            DhcpMessageType::Nak
        );
        assert_eq!(link.lease_of(mac(1)), Some((address, START + LEASE_TIME)));
    }

    #[test]
    fn release_frees_the_address_for_another_client() {
        let mut link = Link::new();
        let address = link.lease(mac(1));
        link.release(mac(1), address);
        assert_eq!(link.lease_of(mac(1)), None);
        let ack = link.select(mac(2), address).unwrap();
        assert_eq!(ack.message_type, DhcpMessageType::Ack);
        assert_eq!(link.lease_of(mac(2)), Some((address, START + LEASE_TIME)));
    }

    #[test]
    fn release_by_another_mac_changes_nothing() {
        let mut link = Link::new();
        let address = link.lease(mac(1));
        link.release(mac(2), address);
        assert_eq!(link.lease_of(mac(1)), Some((address, START + LEASE_TIME)));
        assert_eq!(link.server.counters().ignored, 1);
    }

    #[test]
    fn released_address_goes_back_to_its_client_while_unused_ones_remain() {
        let mut link = Link::new();
        let address = link.lease(mac(1));
        link.release(mac(1), address);
        assert_eq!(link.discover(mac(2)).unwrap().your_ip, pool(16));
        assert_eq!(link.discover(mac(1)).unwrap().your_ip, address);
    }

    #[test]
    fn pool_of_16_is_exhausted_by_16_clients() {
        let mut link = Link::new();
        for n in 0..16 {
            assert_eq!(link.lease(mac(n)), pool(15 + n));
        }
        assert_eq!(link.server.leases().count(), POOL_SIZE);
        assert!(link.discover(mac(16)).is_none());
        assert_eq!(link.server.counters().pool_exhausted, 1);
        // The clients that have leases keep being served.
        assert_eq!(link.discover(mac(3)).unwrap().your_ip, pool(18));
    }

    #[test]
    fn unanswered_offers_are_reclaimed_after_a_minute() {
        let mut link = Link::new();
        for n in 0..16 {
            assert!(link.discover(mac(n)).is_some());
        }
        assert!(link.discover(mac(16)).is_none());
        link.advance(OFFER_HOLD);
        // No never-used address is left, so the one idle the longest goes: the first.
        assert_eq!(link.discover(mac(16)).unwrap().your_ip, pool(15));
    }

    #[test]
    fn expired_leases_are_reused_oldest_first() {
        let mut link = Link::new();
        for n in 0..16 {
            link.lease(mac(n));
            link.advance(Duration::from_secs(1));
        }
        // mac(5) renews halfway, so its lease outlives the others.
        link.advance(Duration::from_secs(43_200));
        link.renew(mac(5), pool(20)).unwrap();
        assert!(link.discover(mac(16)).is_none());

        link.advance(LEASE_TIME - Duration::from_secs(43_200));
        assert_eq!(link.lease(mac(16)), pool(15));
        assert_eq!(link.lease(mac(17)), pool(16));
        assert_eq!(link.lease_of(mac(0)), None);
        // mac(5) still holds its renewed lease, and mac(0) is moved to a reclaimed address.
        assert_eq!(
            link.select(mac(18), pool(20)).unwrap().message_type,
            DhcpMessageType::Nak
        );
        assert_eq!(link.lease(mac(0)), pool(17));
    }

    #[test]
    fn declined_address_is_kept_out_of_the_pool_for_a_while() {
        let mut link = Link::new();
        let address = link.lease(mac(1));
        let decline = message(DhcpMessageType::Decline, mac(1), |m| {
            m.requested_ip = Some(address);
            m.server_identifier = Some(GATEWAY);
        });
        assert!(link.send(&decline).is_none());
        assert_eq!(link.lease_of(mac(1)), None);

        assert_eq!(link.lease(mac(1)), pool(16));
        assert_eq!(
            link.select(mac(2), address).unwrap().message_type,
            DhcpMessageType::Nak
        );
        link.advance(DECLINE_HOLD);
        assert_eq!(
            link.select(mac(2), address).unwrap().message_type,
            DhcpMessageType::Ack
        );
    }

    #[test]
    fn inform_gets_the_configuration_without_a_lease() {
        let mut link = Link::new();
        let static_address = Ipv4Address::new(10, 0, 2, 100);
        let ack = link
            .send(&message(DhcpMessageType::Inform, mac(1), |m| {
                m.client_ip = static_address;
            }))
            .unwrap();
        assert_eq!(ack.message_type, DhcpMessageType::Ack);
        assert_eq!(ack.your_ip, Ipv4Address::UNSPECIFIED);
        assert_eq!(ack.client_ip, static_address);
        assert_eq!((ack.router, ack.dns), (Some(GATEWAY), Some(vec![DNS])));
        assert_eq!(ack.mtu, Some(1500));
        assert_eq!(ack.lease_secs, None);
        assert_eq!((ack.renewal_secs, ack.rebinding_secs), (None, None));
        assert_eq!((ack.dst_ip, ack.dst_mac), (static_address, mac(1)));
        assert_eq!(link.server.leases().count(), 0);
    }

    #[test]
    fn custom_cidr_moves_the_pool_and_the_router() {
        let network = VirtualNetwork::parse("10.0.135.128/25").unwrap();
        let server = DhcpServer::new(network, 1500, Some(network.dns()));
        let mut link = Link::with(server);
        let offer = link.discover(mac(1)).unwrap();
        assert_eq!(offer.your_ip, Ipv4Address::new(10, 0, 135, 143));
        assert_eq!(offer.router, Some(Ipv4Address::new(10, 0, 135, 130)));
        assert_eq!(offer.server_id, Some(Ipv4Address::new(10, 0, 135, 130)));
        assert_eq!(offer.dns, Some(vec![Ipv4Address::new(10, 0, 135, 131)]));
        assert_eq!(
            offer.subnet_mask,
            Some(Ipv4Address::new(255, 255, 255, 128))
        );
        // Our own server id is the new gateway's, so the REQUEST is ours.
        let ack = link
            .send(&message(DhcpMessageType::Request, mac(1), |m| {
                m.server_identifier = Some(Ipv4Address::new(10, 0, 135, 130));
                m.requested_ip = Some(offer.your_ip);
            }))
            .unwrap();
        assert_eq!(ack.message_type, DhcpMessageType::Ack);
        // The old default pool means nothing here.
        let foreign = link.select(mac(2), pool(15));
        assert!(foreign.is_none(), "10.0.2.2 is another server's id now");
    }

    #[test]
    fn without_search_domains_the_reply_is_byte_for_byte_the_old_one() {
        let discover = message(DhcpMessageType::Discover, mac(1), |m| m.max_size = None);
        let offer = |server: &mut DhcpServer| server.handle(START, mac(1), &discover).unwrap();
        let mut plain = DhcpServer::new(VirtualNetwork::default(), 1500, Some(DNS));
        let before = offer(&mut plain).payload;
        assert_eq!(before.len(), MIN_MESSAGE_LEN);
        let options: Vec<u8> = DhcpPacket::new_checked(&before[..])
            .unwrap()
            .options()
            .map(|option| option.kind)
            .collect();
        assert!(
            !options.contains(&search::DHCP_OPT_DOMAIN_SEARCH),
            "{options:?}"
        );

        let mut server = DhcpServer::new(VirtualNetwork::default(), 1500, Some(DNS));
        server.set_search(vec!["example.com".to_string()]);
        let with = offer(&mut server).payload;
        assert_ne!(with, before);
        // The option sits where the padding was: everything before it is unchanged.
        let end = before.iter().rposition(|&b| b == 255).unwrap();
        assert_eq!(with[..end], before[..end]);
        assert_eq!(with[end..end + 2], [search::DHCP_OPT_DOMAIN_SEARCH, 13]);
        server.set_search(Vec::new());
        assert_eq!(offer(&mut server).payload, before);
    }

    #[test]
    fn disabled_dns_offers_no_name_server() {
        let mut link = Link::with(DhcpServer::new(VirtualNetwork::default(), 1500, None));
        let offer = link.discover(mac(1)).unwrap();
        assert_eq!(offer.dns, None);
        assert_eq!(offer.router, Some(GATEWAY));
        let ack = link.select(mac(1), offer.your_ip).unwrap();
        assert_eq!(ack.dns, None);
    }

    #[test]
    fn chaddr_owns_the_lease_but_the_ethernet_source_gets_the_reply() {
        let mut link = Link::new();
        let (chaddr, sender) = (mac(1), mac(9));
        let discover = message(DhcpMessageType::Discover, chaddr, |_| {});
        let offer = link.send_from(sender, &discover).unwrap();
        assert_eq!(offer.chaddr, chaddr);
        let select = message(DhcpMessageType::Request, chaddr, |m| {
            m.server_identifier = Some(GATEWAY);
            m.requested_ip = Some(offer.your_ip);
        });
        link.send_from(sender, &select).unwrap();
        assert_eq!(link.lease_of(chaddr), Some((pool(15), START + LEASE_TIME)));
        assert_eq!(link.lease_of(sender), None);

        let renew = message(DhcpMessageType::Request, chaddr, |m| m.client_ip = pool(15));
        let ack = link.send_from(sender, &renew).unwrap();
        assert_eq!((ack.dst_ip, ack.dst_mac), (pool(15), sender));
    }

    #[test]
    fn server_messages_and_bad_chaddr_are_not_answered() {
        let mut link = Link::new();
        let mut offer = message(DhcpMessageType::Discover, mac(1), |_| {});
        offer[0] = 2; // op BOOTREPLY with message type DISCOVER: parse fails.
        assert!(link.send(&offer).is_none());
        let bogus = message(
            DhcpMessageType::Discover,
            EthernetAddress::BROADCAST,
            |_| {},
        );
        assert!(link.send(&bogus).is_none());
        assert_eq!(link.server.counters().malformed, 2);
        assert_eq!(link.server.leases().count(), 0);
    }

    #[test]
    fn truncated_and_malformed_input_never_panics() {
        let mut link = Link::new();
        let discover = message(DhcpMessageType::Discover, mac(1), |_| {});
        // The message type is the first option, right after the 240-byte header and magic.
        let message_type_end = 243;
        for len in 0..discover.len() {
            let reply = link.send(&discover[..len]);
            if len < message_type_end {
                assert!(reply.is_none(), "a {len}-byte prefix was answered");
            } else {
                // Cut after the message type: still a DISCOVER, answered as libslirp would.
                assert_eq!(reply.unwrap().your_ip, pool(15));
            }
        }

        let mut corrupt = |offset: usize, value: u8| {
            let mut bad = discover.clone();
            bad[offset] = value;
            link.send(&bad)
        };
        assert!(corrupt(1, 6).is_none(), "hardware type not Ethernet");
        assert!(corrupt(2, 16).is_none(), "hardware address length not 6");
        assert!(corrupt(236, 0).is_none(), "wrong magic cookie");
        assert!(corrupt(242, 99).is_none(), "unknown message type");
        assert!(
            corrupt(241, 200).is_none(),
            "message type option overruns the buffer"
        );

        // Pseudo-random bytes behind a valid header prefix, and pure noise.
        let mut state = 0x2545_f491_u32;
        let mut noise = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        };
        for round in 0..2_000 {
            let len = usize::from(noise()) * 2;
            let mut bytes: Vec<u8> = (0..len).map(|_| noise()).collect();
            if round % 2 == 0 {
                let keep = discover.len().min(243).min(bytes.len());
                bytes[..keep].copy_from_slice(&discover[..keep]);
            }
            let _ = link.send_from(mac(1), &bytes);
        }
    }
}

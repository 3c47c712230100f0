//! Unit tests of the DHCP server: a guest's link with the server on it, on a virtual clock.

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

    /// A REQUEST from `client`, `edit` setting what the story needs.
    fn request(
        &mut self,
        client: EthernetAddress,
        edit: impl FnOnce(&mut DhcpRepr<'static>),
    ) -> Option<Seen> {
        self.send(&message(DhcpMessageType::Request, client, edit))
    }

    /// The SELECTING state's REQUEST: our server id and the offered address.
    fn select(&mut self, client: EthernetAddress, address: Ipv4Address) -> Option<Seen> {
        self.request(client, |m| {
            m.server_identifier = Some(GATEWAY);
            m.requested_ip = Some(address);
        })
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
        self.request(client, |m| m.client_ip = address)
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

/// A link on which client `mac(1)` holds a lease; returns the link and the address.
fn leased() -> (Link, Ipv4Address) {
    let mut link = Link::new();
    let address = link.lease(mac(1));
    (link, address)
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
    let (mut link, address) = leased();
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
    let (mut link, address) = leased();
    let ack = link
        .request(mac(1), |m| {
            m.client_ip = address;
            m.broadcast = true;
        })
        .unwrap();
    assert_eq!(ack.message_type, DhcpMessageType::Ack);
    assert!(ack.is_broadcast());
}

#[test]
fn init_reboot_gets_its_old_address_back() {
    let (mut link, address) = leased();
    // After a reboot: the remembered address, no server id, no ciaddr.
    let ack = link
        .request(mac(1), |m| {
            m.requested_ip = Some(address);
        })
        .unwrap();
    assert_eq!(ack.message_type, DhcpMessageType::Ack);
    assert_eq!(ack.your_ip, address);
}

#[test]
fn request_naming_no_address_gets_the_clients_address_as_in_libslirp() {
    let (mut link, address) = leased();
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
    let (mut link, address) = leased();
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
    let (mut link, address) = leased();
    link.release(mac(1), address);
    assert_eq!(link.lease_of(mac(1)), None);
    let ack = link.select(mac(2), address).unwrap();
    assert_eq!(ack.message_type, DhcpMessageType::Ack);
    assert_eq!(link.lease_of(mac(2)), Some((address, START + LEASE_TIME)));
}

#[test]
fn release_by_another_mac_changes_nothing() {
    let (mut link, address) = leased();
    link.release(mac(2), address);
    assert_eq!(link.lease_of(mac(1)), Some((address, START + LEASE_TIME)));
    assert_eq!(link.server.counters().ignored, 1);
}

#[test]
fn released_address_goes_back_to_its_client_while_unused_ones_remain() {
    let (mut link, address) = leased();
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
    let (mut link, address) = leased();
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
        .request(mac(1), |m| {
            m.server_identifier = Some(Ipv4Address::new(10, 0, 135, 130));
            m.requested_ip = Some(offer.your_ip);
        })
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
    let mut noise = crate::service::test_noise(0x2545_f491_u32);
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

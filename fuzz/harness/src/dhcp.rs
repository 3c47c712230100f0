//! Target `dhcp`: client messages into [`DhcpServer::handle`], from several clients, with
//! the clock moving between them (offers expire after 60 s, declines after 10 min, leases
//! after 24 h); or, with flag bit 4, into the stateless DHCPv6 server
//! ([`Dhcpv6Server::handle`]).
//!
//! Input: a flags byte (bits 0-1 network, bit 2 MTU, bit 3 DNS off, bit 4 DHCPv6, bit 5 a
//! search list read from the input), then messages: raw UDP payloads, or messages built
//! from fields (so that most reach the lease logic past smoltcp's parser). Every reply must
//! itself be a message a client can parse, and offer only pool addresses; its search list
//! (option 119, compression pointers followed; DHCPv6 option 24) must decode to the list
//! the server was given, or for DHCPv4 a leading part of it.

use crate::{Encoder, Input};
use rslirp_stack::service::dhcp::{DhcpServer, POOL_SIZE};
use rslirp_stack::service::dhcpv6::{self, Dhcpv6Server};
use rslirp_stack::service::search;
use rslirp_stack::testing::dhcp_client_message;
use rslirp_stack::{Duration, Instant, VirtualNetwork};
use smoltcp::wire::{DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress};
use std::net::Ipv4Addr;

const MAX_MESSAGES: usize = 300;

const NETWORKS: [&str; 4] = [
    "10.0.2.0/24",
    "10.0.135.128/25",
    "192.168.0.0/16",
    "128.0.0.0/1",
];

pub const MESSAGE_TYPES: [DhcpMessageType; 9] = [
    DhcpMessageType::Discover,
    DhcpMessageType::Request,
    DhcpMessageType::Release,
    DhcpMessageType::Decline,
    DhcpMessageType::Inform,
    DhcpMessageType::Offer,
    DhcpMessageType::Ack,
    DhcpMessageType::Nak,
    DhcpMessageType::Unknown(42),
];

pub fn run(data: &[u8]) {
    let (flags, mut input) = Input::with_flags(data);
    let network =
        VirtualNetwork::parse(NETWORKS[usize::from(flags) % NETWORKS.len()]).expect("valid CIDRs");
    let mtu = if flags & 4 != 0 { 576 } else { 1500 };
    let dns = (flags & 8 == 0).then(|| network.dns());
    let domains = if flags & FLAG_SEARCH != 0 {
        search_list(&mut input)
    } else {
        Vec::new()
    };
    if flags & FLAG_DHCPV6 != 0 {
        return run_v6(input, flags & 8 == 0, &domains);
    }
    let mut server = DhcpServer::new(network, mtu, dns);
    server.set_search(domains.clone());
    let mut now = Instant::from_secs(1_000);
    for _ in 0..MAX_MESSAGES {
        if input.is_empty() {
            break;
        }
        let built = input.bool();
        let mac = client_mac(input.byte());
        now += step(&mut input);
        let reply = if built {
            let fields = Fields::read(&mut input, &network);
            let mut payload = vec![0; 1024];
            let repr = fields.repr(mac);
            let Ok(()) = repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..])) else {
                continue;
            };
            payload.truncate(repr.buffer_len());
            server.handle(now, mac, &payload)
        } else {
            server.handle(now, mac, input.bytes())
        };
        if let Some(reply) = reply {
            check_reply(&network, &reply.payload, &domains);
        }
        assert!(server.leases().count() <= POOL_SIZE);
    }
}

const FLAG_DHCPV6: u8 = 0x10;
const FLAG_SEARCH: u8 = 0x20;

/// A search list as the stack keeps it: up to 8 names from the input (some repeated, some
/// sharing endings, some invalid), bounded with the default limits.
fn search_list(input: &mut Input) -> Vec<String> {
    const PARTS: [&str; 6] = ["example", "com", "corp", "a", "x-y", "test"];
    let mut names = Vec::new();
    for _ in 0..usize::from(input.byte() % 9) {
        let name = if input.bool() {
            String::from_utf8_lossy(input.bytes()).into_owned()
        } else {
            let labels = 1 + usize::from(input.byte() % 4);
            (0..labels)
                .map(|_| input.pick(&PARTS))
                .collect::<Vec<_>>()
                .join(".")
        };
        names.push(name);
    }
    let limits = rslirp_stack::Limits::default();
    search::bounded(&names, limits.max_search_domains, limits.max_search_len).0
}

/// RFC 1035 names from `data`, following compression pointers (only backwards, as a
/// decoder must to be safe from loops); None if malformed.
fn decode_names(data: &[u8]) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let mut labels: Vec<String> = Vec::new();
        let mut pos = at;
        let mut next = None;
        let mut jumps = 0;
        loop {
            let len = *data.get(pos)?;
            if len & 0xc0 == 0xc0 {
                let target = usize::from(u16::from_be_bytes([len, *data.get(pos + 1)?]) & 0x3fff);
                next.get_or_insert(pos + 2);
                if target >= pos || jumps > 128 {
                    return None;
                }
                jumps += 1;
                pos = target;
            } else if len == 0 {
                next.get_or_insert(pos + 1);
                break;
            } else if len > 63 {
                return None;
            } else {
                let label = data.get(pos + 1..pos + 1 + usize::from(len))?;
                labels.push(String::from_utf8(label.to_vec()).ok()?);
                pos += 1 + usize::from(len);
            }
        }
        names.push(labels.join("."));
        at = next?;
    }
    Some(names)
}

/// A reply parses as a DHCP message, any address it gives is in the pool, and its search
/// list is a leading part of the server's (all of it unless the message size cut it).
fn check_reply(network: &VirtualNetwork, payload: &[u8], domains: &[String]) {
    if let Ok(packet) = DhcpPacket::new_checked(payload) {
        let chunks: Vec<u8> = packet
            .options()
            .filter(|option| option.kind == search::DHCP_OPT_DOMAIN_SEARCH)
            .flat_map(|option| option.data.iter().copied())
            .collect();
        if !chunks.is_empty() {
            let names = decode_names(&chunks)
                .unwrap_or_else(|| panic!("option 119 does not decode: {chunks:02x?}"));
            assert!(
                !names.is_empty() && domains.starts_with(&names),
                "option 119 says {names:?}, the list is {domains:?}"
            );
        }
    }
    let packet = DhcpPacket::new_checked(payload)
        .unwrap_or_else(|err| panic!("DHCP reply too short ({err}): {payload:02x?}"));
    let repr = DhcpRepr::parse(&packet)
        .unwrap_or_else(|err| panic!("DHCP reply does not parse ({err}): {payload:02x?}"));
    let offset = u32::from(repr.your_ip).wrapping_sub(u32::from(network.network_addr()));
    assert!(
        repr.your_ip.is_unspecified() || (15..15 + POOL_SIZE as u32).contains(&offset),
        "DHCP reply gives {} outside the pool of {network}",
        repr.your_ip
    );
}

/// Clients: a few fixed MACs (so that they come back), or any other.
fn client_mac(byte: u8) -> EthernetAddress {
    if byte < 200 {
        EthernetAddress([0x02, 0, 0, 0, 0, byte % 20])
    } else {
        EthernetAddress([byte, 0x11, 0x22, 0x33, 0x44, byte])
    }
}

fn step(input: &mut Input) -> Duration {
    const STEPS_S: [u64; 8] = [0, 1, 30, 61, 601, 12 * 3600, 24 * 3600 + 1, 0];
    match input.index(STEPS_S.len()) {
        Some(7) => Duration::from_secs(u64::from(input.u16())),
        Some(i) => Duration::from_secs(STEPS_S[i]),
        None => Duration::ZERO,
    }
}

/// What a built message says, each address picked from those that matter to the server.
struct Fields {
    message_type: DhcpMessageType,
    xid: u32,
    chaddr_is_mac: bool,
    client_ip: Ipv4Addr,
    requested_ip: Option<Ipv4Addr>,
    server_identifier: Option<Ipv4Addr>,
    broadcast: bool,
}

impl Fields {
    fn read(input: &mut Input, network: &VirtualNetwork) -> Fields {
        let message_type = input.pick(&MESSAGE_TYPES);
        let xid = input.u32();
        let options = input.byte();
        let mut address = || {
            let choices = [
                Ipv4Addr::UNSPECIFIED,
                network.host(15),
                network.host(16),
                network.host(30),
                network.host(31),
                network.gateway(),
                network.guest(),
            ];
            match input.index(choices.len() + 1) {
                Some(i) if i < choices.len() => choices[i],
                _ => Ipv4Addr::from(input.u32()),
            }
        };
        let client_ip = address();
        let requested_ip = address();
        let server = address();
        Fields {
            message_type,
            xid,
            chaddr_is_mac: options & 1 == 0,
            client_ip,
            requested_ip: (options & 2 != 0).then_some(requested_ip),
            server_identifier: (options & 4 != 0).then_some(server),
            broadcast: options & 8 != 0,
        }
    }

    fn repr(&self, mac: EthernetAddress) -> DhcpRepr<'static> {
        // Usually chaddr is the Ethernet source; a relay or spoofer sends another.
        let chaddr = if self.chaddr_is_mac {
            mac
        } else {
            EthernetAddress([0x02, 0, 0, 0, 0xee, 0xee])
        };
        DhcpRepr {
            client_ip: self.client_ip,
            broadcast: self.broadcast,
            requested_ip: self.requested_ip,
            server_identifier: self.server_identifier,
            ..dhcp_client_message(self.message_type, self.xid, chaddr)
        }
    }
}

/// The DHCPv6 half: messages (raw, or built from a type, a client id, a server id that is
/// ours or not, an option request, an IA option) into the stateless server.
fn run_v6(mut input: Input, dns_on: bool, domains: &[String]) {
    const TYPES: [u8; 6] = [11, 11, 1, 3, 7, 12];
    let mac = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);
    let mut server = Dhcpv6Server::new(mac);
    let dns = dns_on.then(|| "fd00::3".parse().expect("an address"));
    let duid = server.duid().to_vec();
    for _ in 0..MAX_MESSAGES {
        if input.is_empty() {
            break;
        }
        let payload = if input.bool() {
            input.bytes().to_vec()
        } else {
            let kind = input.pick(&TYPES);
            let xid = [input.byte(), input.byte(), input.byte()];
            let options = input.byte();
            let client_id = input.bytes().to_vec();
            let mut list: Vec<(u16, &[u8])> = Vec::new();
            if options & 1 != 0 {
                list.push((dhcpv6::OPT_CLIENT_ID, &client_id));
            }
            if options & 2 != 0 {
                list.push((dhcpv6::OPT_SERVER_ID, &duid));
            }
            if options & 4 != 0 {
                list.push((dhcpv6::OPT_SERVER_ID, &client_id));
            }
            if options & 8 != 0 {
                list.push((dhcpv6::OPT_ORO, &[0, 23, 0, 24]));
            }
            if options & 16 != 0 {
                list.push((dhcpv6::OPT_IA_NA, &[0; 12]));
            }
            dhcpv6::build(kind, xid, &list)
        };
        let Some(reply) = server.handle(&payload, dns, domains) else {
            continue;
        };
        let request = dhcpv6::Message::parse(&payload).expect("only a parsed message is answered");
        let message = dhcpv6::Message::parse(&reply)
            .unwrap_or_else(|why| panic!("DHCPv6 reply malformed ({why}): {reply:02x?}"));
        assert_eq!(message.msg_type, dhcpv6::MSG_REPLY);
        assert_eq!(message.transaction_id, request.transaction_id);
        assert_eq!(message.option(dhcpv6::OPT_SERVER_ID), Some(&duid[..]));
        assert_eq!(
            message.option(dhcpv6::OPT_CLIENT_ID),
            request.option(dhcpv6::OPT_CLIENT_ID)
        );
        assert_eq!(message.option(dhcpv6::OPT_DNS_SERVERS).is_some(), dns_on);
        match message.option(dhcpv6::OPT_DOMAIN_LIST) {
            Some(data) => assert_eq!(decode_names(data).as_deref(), Some(domains)),
            None => assert!(domains.is_empty(), "no option 24 for {domains:?}"),
        }
    }
}

pub fn seeds() -> crate::Seeds {
    let mut seeds = Vec::new();
    // built, mac, step, type, xid, options, ciaddr, requested, server id
    let message = |e: &mut Encoder, mac: u8, step: u8, kind: u8, options: u8, addrs: [u8; 3]| {
        e.byte(1)
            .byte(mac)
            .byte(step)
            .byte(kind)
            .u32(0xabcd)
            .byte(options);
        for a in addrs {
            e.byte(a);
        }
    };

    // The whole life of a lease: discover, request, renew, release, and a second client.
    let mut e = Encoder::with_flags(0);
    message(&mut e, 1, 0, 0, 0, [0, 0, 0]);
    message(&mut e, 1, 1, 1, 6, [0, 1, 5]);
    message(&mut e, 1, 5, 1, 0, [1, 0, 0]);
    message(&mut e, 2, 0, 0, 0, [0, 0, 0]);
    message(&mut e, 1, 0, 2, 4, [1, 0, 5]);
    message(&mut e, 2, 3, 3, 6, [0, 1, 5]);
    message(&mut e, 3, 0, 4, 0, [6, 0, 0]);
    seeds.push(("lease-life", e.finish()));

    // The pool runs out: 17 clients discover, then leases expire.
    let mut e = Encoder::with_flags(1);
    for mac in 0..17 {
        message(&mut e, mac, 0, 0, 0, [0, 0, 0]);
    }
    message(&mut e, 17, 6, 0, 0, [0, 0, 0]);
    seeds.push(("pool-exhausted", e.finish()));

    // A raw DISCOVER as udhcpc sends it.
    let mut repr = Fields {
        message_type: DhcpMessageType::Discover,
        xid: 0x3903_f326,
        chaddr_is_mac: true,
        client_ip: Ipv4Addr::UNSPECIFIED,
        requested_ip: None,
        server_identifier: None,
        broadcast: false,
    }
    .repr(client_mac(1));
    repr.max_size = Some(576);
    let mut payload = vec![0; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
        .expect("fits its buffer_len");
    let mut e = Encoder::with_flags(0);
    e.byte(0).byte(1).byte(0).bytes(&payload);
    seeds.push(("raw-discover", e.finish()));

    // Search domains in DHCPv4: three names sharing endings, then the lease's first steps.
    let mut e = Encoder::with_flags(FLAG_SEARCH);
    e.byte(3);
    for labels in [[0, 1], [2, 0], [3, 5]] {
        e.byte(0).byte(1).byte(labels[0]).byte(labels[1]);
    }
    message(&mut e, 1, 0, 0, 0, [0, 0, 0]);
    message(&mut e, 1, 1, 1, 6, [0, 1, 5]);
    seeds.push(("search", e.finish()));

    // DHCPv6: an Information-Request with client id and option request, one naming our
    // server, a Solicit, and raw bytes.
    let mut e = Encoder::with_flags(FLAG_DHCPV6 | FLAG_SEARCH);
    e.byte(2);
    e.byte(0).byte(1).byte(0).byte(1);
    e.byte(1).bytes(b"corp.example");
    let client_id = [0, 3, 0, 1, 2, 0, 0, 0, 0, 1];
    for (kind, options) in [(0, 9), (0, 11), (2, 1)] {
        e.byte(0)
            .byte(kind)
            .byte(1)
            .byte(2)
            .byte(3)
            .byte(options)
            .bytes(&client_id);
    }
    e.byte(1).bytes(&[11, 0, 0, 1, 0, 1, 0, 2, 0, 1]);
    seeds.push(("dhcpv6", e.finish()));

    seeds
}

//! Target `dhcp`: client messages into [`DhcpServer::handle`], from several clients, with
//! the clock moving between them (offers expire after 60 s, declines after 10 min, leases
//! after 24 h).
//!
//! Input: a flags byte (network, MTU, DNS on or off), then messages: raw UDP payloads, or
//! messages built from fields (so that most reach the lease logic past smoltcp's parser).
//! Every reply must itself be a message a client can parse, and offer only pool addresses.

use crate::{Encoder, Input};
use rslirp_stack::service::dhcp::{DhcpServer, POOL_SIZE};
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

const TYPES: [DhcpMessageType; 9] = [
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
    let mut input = Input::new(data);
    let flags = input.byte();
    let network =
        VirtualNetwork::parse(NETWORKS[usize::from(flags) % NETWORKS.len()]).expect("valid CIDRs");
    let mtu = if flags & 4 != 0 { 576 } else { 1500 };
    let dns = (flags & 8 == 0).then(|| network.dns());
    let mut server = DhcpServer::new(network, mtu, dns);
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
            check_reply(&network, &reply.payload);
        }
        assert!(server.leases().count() <= POOL_SIZE);
    }
}

/// A reply parses as a DHCP message, and any address it gives is in the pool.
fn check_reply(network: &VirtualNetwork, payload: &[u8]) {
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
        let message_type = input.pick(&TYPES);
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
            message_type: self.message_type,
            transaction_id: self.xid,
            secs: 0,
            client_hardware_address: chaddr,
            client_ip: self.client_ip,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: self.broadcast,
            requested_ip: self.requested_ip,
            client_identifier: Some(chaddr),
            server_identifier: self.server_identifier,
            parameter_request_list: Some(&[1, 3, 6, 26, 51, 58, 59]),
            dns_servers: None,
            max_size: Some(1500),
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
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
    let mut e = Encoder::new();
    e.byte(0);
    message(&mut e, 1, 0, 0, 0, [0, 0, 0]);
    message(&mut e, 1, 1, 1, 6, [0, 1, 5]);
    message(&mut e, 1, 5, 1, 0, [1, 0, 0]);
    message(&mut e, 2, 0, 0, 0, [0, 0, 0]);
    message(&mut e, 1, 0, 2, 4, [1, 0, 5]);
    message(&mut e, 2, 3, 3, 6, [0, 1, 5]);
    message(&mut e, 3, 0, 4, 0, [6, 0, 0]);
    seeds.push(("lease-life", e.finish()));

    // The pool runs out: 17 clients discover, then leases expire.
    let mut e = Encoder::new();
    e.byte(1);
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
    let mut e = Encoder::new();
    e.byte(0).byte(0).byte(1).byte(0).bytes(&payload);
    seeds.push(("raw-discover", e.finish()));

    seeds
}

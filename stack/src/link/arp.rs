//! ARP: we answer only for the virtual hosts (gateway and DNS). Every other address in the
//! virtual network stays unanswered, so the guest cannot reach anything we do not serve.

use crate::config::{service_mac, Config};
use crate::link::tx::TxQueue;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetProtocol, Ipv4Address,
};

/// What became of one ARP packet from the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum ArpOutcome {
    Replied,
    Ignored,
    Malformed,
    QueueFull,
}

/// An ARP packet from the guest, sent from `src_mac` (whose MAC is learned if it is valid ARP).
pub fn handle(
    config: &Config,
    src_mac: EthernetAddress,
    payload: &[u8],
    tx: &mut TxQueue,
) -> ArpOutcome {
    let Ok(packet) = ArpPacket::new_checked(payload) else {
        return ArpOutcome::Malformed;
    };
    let Ok(repr) = ArpRepr::parse(&packet) else {
        return ArpOutcome::Malformed;
    };
    tx.learn_guest_mac(src_mac);
    let ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = repr
    else {
        return ArpOutcome::Ignored;
    };
    let network = config.network;
    if target_protocol_addr != network.gateway() && target_protocol_addr != network.dns() {
        return ArpOutcome::Ignored;
    }
    if !source_hardware_addr.is_unicast() {
        return ArpOutcome::Malformed;
    }
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: service_mac(target_protocol_addr),
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let queued = tx.push_to(
        source_hardware_addr,
        EthernetProtocol::Arp,
        reply.buffer_len(),
        |buf| reply.emit(&mut ArpPacket::new_unchecked(buf)),
    );
    if queued {
        ArpOutcome::Replied
    } else {
        ArpOutcome::QueueFull
    }
}

/// Ask who has `target` (the guest), from `from` (the gateway).
pub fn send_request(tx: &mut TxQueue, from: Ipv4Address, target: Ipv4Address) {
    let request = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: service_mac(from),
        source_protocol_addr: from,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    tx.push_to(
        EthernetAddress::BROADCAST,
        EthernetProtocol::Arp,
        request.buffer_len(),
        |buf| request.emit(&mut ArpPacket::new_unchecked(buf)),
    );
}

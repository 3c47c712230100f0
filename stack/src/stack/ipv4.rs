//! IPv4 from the guest: checks, fragment reassembly (the table is shared with IPv6),
//! DHCP, the guest's source address, then TCP, UDP or ICMP; echo requests answered for
//! the gateway and DNS addresses, or carried through a host ping socket (for both families).

use super::{Flow, Inbound, Stack};
use crate::io::{HostError, HostIo};
use crate::ip::{FragKey, Fragment, Reassembled};
use crate::nat::icmp::{send_echo_reply, IcmpFlow};
use crate::nat::{FlowKey, Proto, Quote};
use core::net::{IpAddr, SocketAddr};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, EthernetProtocol, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Address,
    Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

impl Stack {
    pub(super) fn handle_ipv4(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        bytes: &[u8],
        host: &mut impl HostIo,
    ) {
        let Ok(packet) = Ipv4Packet::new_checked(bytes) else {
            self.stats.rx_errors += 1;
            return;
        };
        if !packet.verify_checksum() {
            self.stats.rx_errors += 1;
            return;
        }
        if packet.more_frags() || packet.frag_offset() != 0 {
            if let Some(whole) = self.reassemble_ipv4(now, &packet) {
                // Once: the rebuilt packet is no fragment.
                self.handle_ipv4(now, src_mac, &whole, host);
            }
            return;
        }
        let Ok(ip) = Ipv4Repr::parse(&packet, &ChecksumCapabilities::ignored()) else {
            self.stats.rx_errors += 1;
            return;
        };
        if ip.next_header == IpProtocol::Udp
            && self.handle_dhcp(now, src_mac, &ip, packet.payload())
        {
            return;
        }
        let network = self.config.network;
        let src = ip.src_addr;
        if !network.contains(src)
            || src == network.gateway()
            || src == network.dns()
            || src == network.network_addr()
            || src == network.broadcast()
        {
            self.stats.rx_dropped += 1;
            return;
        }
        self.tx.learn_guest_mac(src_mac);
        // The exact packet, without any Ethernet padding after it.
        let packet_bytes = &bytes[..usize::from(packet.total_len())];
        let payload = packet.payload();
        let inbound = Inbound {
            src: IpAddr::V4(ip.src_addr),
            dst: IpAddr::V4(ip.dst_addr),
            packet: packet_bytes,
            payload,
            quote: Quote::new(&ip, payload),
        };
        match ip.next_header {
            IpProtocol::Tcp => self.handle_tcp(now, &inbound, host),
            IpProtocol::Udp => self.handle_udp(now, &inbound, host),
            IpProtocol::Icmp => self.handle_icmp(now, &ip, payload, host),
            _ => self.stats.rx_dropped += 1,
        }
    }

    /// One IPv4 fragment from the guest into the reassembly; the whole packet (header
    /// rebuilt: total length, no fragment fields, checksum) once it is complete.
    fn reassemble_ipv4(&mut self, now: Instant, packet: &Ipv4Packet<&[u8]>) -> Option<Vec<u8>> {
        let src = packet.src_addr();
        let network = self.config.network;
        // Only the guest's own datagrams are worth holding (as for unfragmented ones).
        if !network.contains(src) || src == network.gateway() || src == network.dns() {
            self.stats.rx_dropped += 1;
            return None;
        }
        let header_len = usize::from(packet.header_len());
        let total_len = usize::from(packet.total_len());
        let bytes = packet.as_ref();
        let fragment = Fragment {
            key: FragKey {
                src: IpAddr::V4(src),
                dst: IpAddr::V4(packet.dst_addr()),
                proto: packet.next_header().into(),
                ident: u32::from(packet.ident()),
            },
            offset: usize::from(packet.frag_offset()),
            more: packet.more_frags(),
            header: &bytes[..header_len],
            data: &bytes[header_len..total_len],
        };
        // The whole datagram's total length must fit its 16-bit field.
        if fragment.offset + fragment.data.len() + header_len > crate::ip::MAX_IP_LEN {
            self.stats.rx_errors += 1;
            return None;
        }
        let Reassembled { header, data } = self.take_fragment(now, fragment)?;
        // The first fragment's header may be longer (options) than the last one's.
        let total = header.len() + data.len();
        if total > crate::ip::MAX_IP_LEN {
            self.stats.rx_errors += 1;
            return None;
        }
        let mut whole = header;
        whole.extend_from_slice(&data);
        let mut rebuilt = Ipv4Packet::new_unchecked(&mut whole[..]);
        rebuilt.set_total_len(total as u16);
        rebuilt.set_more_frags(false);
        rebuilt.set_frag_offset(0);
        rebuilt.fill_checksum();
        Some(whole)
    }

    /// A fragment of either family into the reassembly table, counted.
    pub(super) fn take_fragment(
        &mut self,
        now: Instant,
        fragment: Fragment<'_>,
    ) -> Option<Reassembled> {
        use crate::ip::reassembly::Held;
        match self.reassembly.insert(now, fragment, &mut self.stats) {
            Ok(whole) => {
                log::debug!(
                    "reassembled a {}-byte datagram from {}",
                    whole.data.len(),
                    fragment.key.src
                );
                Some(whole)
            }
            Err(Held::Pending) => None,
            Err(Held::Duplicate | Held::Dropped) => {
                self.stats.rx_dropped += 1;
                None
            }
            Err(Held::Malformed) => {
                log::debug!("malformed IP fragment from {}", fragment.key.src);
                self.stats.rx_errors += 1;
                None
            }
        }
    }

    /// DHCP from the guest (UDP to port 67, broadcast or to the gateway); true if it was.
    /// Checked before the source address check: a client without an address sends from
    /// 0.0.0.0.
    fn handle_dhcp(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        ip: &Ipv4Repr,
        payload: &[u8],
    ) -> bool {
        let Ok(packet) = UdpPacket::new_checked(payload) else {
            return false;
        };
        let to_us =
            ip.dst_addr == Ipv4Address::BROADCAST || ip.dst_addr == self.config.network.gateway();
        if packet.dst_port() != 67 || !to_us {
            return false;
        }
        // A client without an address yet: its DHCP request is its first valid frame.
        self.tx.learn_guest_mac(src_mac);
        let Some(reply) = self.dhcp.handle(now, src_mac, packet.payload()) else {
            self.stats.rx_dropped += 1;
            return true;
        };
        let src = self.config.network.gateway();
        let udp = UdpRepr {
            src_port: 67,
            dst_port: 68,
        };
        let ip_reply = Ipv4Repr {
            src_addr: src,
            dst_addr: reply.dst_ip,
            next_header: IpProtocol::Udp,
            payload_len: udp.header_len() + reply.payload.len(),
            hop_limit: crate::nat::HOP_LIMIT,
        };
        let total = ip_reply.buffer_len() + ip_reply.payload_len;
        let payload = &reply.payload;
        let queued = self
            .tx
            .push_to(reply.dst_mac, EthernetProtocol::Ipv4, total, |buf| {
                let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
                ip_reply.emit(&mut packet, &crate::nat::checksum_caps());
                udp.emit(
                    &mut UdpPacket::new_unchecked(packet.payload_mut()),
                    &src.into(),
                    &reply.dst_ip.into(),
                    payload.len(),
                    |p| p.copy_from_slice(payload),
                    &crate::nat::checksum_caps(),
                );
            });
        if !queued {
            self.stats.tx_dropped += 1;
        }
        true
    }

    fn handle_icmp(&mut self, now: Instant, ip: &Ipv4Repr, payload: &[u8], host: &mut impl HostIo) {
        let Ok(packet) = Icmpv4Packet::new_checked(payload) else {
            self.stats.rx_errors += 1;
            return;
        };
        let Ok(Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }) = Icmpv4Repr::parse(&packet, &ChecksumCapabilities::ignored())
        else {
            // Only echo requests are forwarded; the guest's ICMP errors have no host use.
            self.stats.rx_dropped += 1;
            return;
        };
        let network = self.config.network;
        let local = ip.dst_addr == network.gateway()
            || (ip.dst_addr == network.dns() && !self.config.disable_dns);
        if local {
            send_echo_reply(
                &mut self.tx,
                &mut self.stats,
                IpAddr::V4(ip.dst_addr),
                IpAddr::V4(ip.src_addr),
                ident,
                seq_no,
                data,
            );
            return;
        }
        let guest = SocketAddr::new(IpAddr::V4(ip.src_addr), ident);
        let quote = Quote::new(ip, payload);
        self.forward_echo(now, guest, IpAddr::V4(ip.dst_addr), payload, quote, host);
    }

    /// Carry a guest's echo request (`message`: the whole ICMP/ICMPv6 message, `quote`: its
    /// start, for errors about it) through a host ping socket, one flow per guest
    /// identifier and destination. `guest`: the guest's address and echo identifier.
    pub(super) fn forward_echo(
        &mut self,
        now: Instant,
        guest: SocketAddr,
        dst: IpAddr,
        message: &[u8],
        quote: Quote,
        host: &mut impl HostIo,
    ) {
        if self.rules().host_target(dst, 0).is_err() {
            self.stats.rx_dropped += 1;
            return;
        }
        let Some(hop_limit) = self.forwarded_hop_limit(dst, &quote, message) else {
            return;
        };
        let key = FlowKey {
            proto: Proto::Icmp,
            guest,
            remote: SocketAddr::new(dst, 0),
        };
        let id = match self.flows.lookup(&key) {
            Some(id) => id,
            None => {
                let idle = self.config.timeouts.icmp_idle;
                let mut flow = IcmpFlow::new(now, idle, quote.clone());
                flow.core.counters.host = Some(SocketAddr::new(dst, 0));
                let flow = Flow::Icmp(flow);
                let Some(id) =
                    self.open_datagram_flow(key, flow, host, |host, id| host.ping_open(id, dst))
                else {
                    return;
                };
                id
            }
        };
        if let Some(Flow::Icmp(icmp)) = self.flows.get_mut(id) {
            icmp.core.guest_sent(now, message.len(), quote);
        }
        if let Err(err) = host.ping_send(id, message, hop_limit) {
            // An error the network reported about an earlier request (it failed this
            // send, as Linux reports it once): relay it, then send this one after all.
            if err != HostError::WouldBlock && self.relay_icmp_errors(now, id, host) > 0 {
                if let Err(err) = host.ping_send(id, message, hop_limit) {
                    log::debug!("{id:?}: ping send failed: {err}");
                }
            } else {
                log::debug!("{id:?}: ping send failed: {err}");
            }
        }
    }
}

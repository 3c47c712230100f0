//! IPv6 (`--enable-ipv6`): neighbour discovery for our virtual hosts, router advertisements
//! for the prefix (fd00::/64, or `--cidr6`'s; SLAAC, MTU, RDNSS, DNSSL), stateless DHCPv6,
//! ICMPv6 echo, and TCP/UDP NAT over IPv6.
//!
//! Addresses: the gateway is prefix::2 (link-local fe80::2, the source of router
//! advertisements), the DNS forwarder prefix::3 (fe80::3); their MACs are the IPv4
//! gateway's and DNS's (52:55 + IPv4 address), as libslirp does.

use super::{Inbound, Stack};
use crate::config::service_mac;
use crate::io::HostIo;
use crate::ip::{
    FragKey, Fragment, Reassembled, IPV6_FRAGMENT, IPV6_FRAGMENT_HEADER_LEN, IPV6_HEADER_LEN,
    MAX_IP_LEN,
};
use crate::nat::icmp::send_echo_reply;
use crate::nat::target::is_link_local;
use crate::nat::udp::send_udp;
use crate::nat::{checksum_caps, Quote};
use crate::service::{dhcpv6, search};
use core::net::{IpAddr, SocketAddr};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, EthernetProtocol, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv6Address,
    Ipv6FragmentHeader, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscPrefixInfoFlags,
    NdiscPrefixInformation, NdiscRepr, NdiscRouterFlags, RawHardwareAddress, UdpPacket,
};

/// Link-local addresses of the gateway and the DNS forwarder.
pub const GATEWAY_LINK_LOCAL: Ipv6Address = Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
pub const DNS_LINK_LOCAL: Ipv6Address = Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 3);

/// Unsolicited router advertisements: one soon after start, then this often (RFC 4861
/// allows 4–1800 s; the guest also asks with a router solicitation when its link comes up).
pub const RA_INTERVAL: Duration = Duration::from_secs(120);
const ROUTER_LIFETIME: Duration = Duration::from_secs(1800);
const PREFIX_VALID: Duration = Duration::from_secs(86_400);
const PREFIX_PREFERRED: Duration = Duration::from_secs(14_400);
/// RDNSS lifetime (RFC 8106 suggests at least 3 × the advertisement interval).
const RDNSS_LIFETIME_SECS: u32 = 3 * 120;
const ALL_NODES: Ipv6Address = Ipv6Address::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: EthernetAddress = EthernetAddress([0x33, 0x33, 0, 0, 0, 1]);

impl Stack {
    pub(super) fn handle_ipv6(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        bytes: &[u8],
        host: &mut impl HostIo,
    ) {
        let Ok(packet) = Ipv6Packet::new_checked(bytes) else {
            self.stats.rx_errors += 1;
            return;
        };
        let Ok(ip) = Ipv6Repr::parse(&packet) else {
            self.stats.rx_errors += 1;
            return;
        };
        self.tx.learn_guest_mac(src_mac);
        let packet_bytes = &bytes[..ip.buffer_len() + ip.payload_len];
        let payload = packet.payload();
        if u8::from(ip.next_header) == IPV6_FRAGMENT {
            if let Some(whole) = self.reassemble_ipv6(now, &ip, payload) {
                self.handle_ipv6(now, src_mac, &whole, host);
            }
            return;
        }
        match ip.next_header {
            IpProtocol::Icmpv6 => self.handle_icmpv6(now, src_mac, &ip, payload, host),
            IpProtocol::Udp if ip.dst_addr == dhcpv6::ALL_DHCP_SERVERS => {
                self.handle_dhcpv6(&ip, payload)
            }
            IpProtocol::Tcp | IpProtocol::Udp if self.config.network.contains6(ip.src_addr) => {
                let inbound = Inbound {
                    src: IpAddr::V6(ip.src_addr),
                    dst: IpAddr::V6(ip.dst_addr),
                    packet: packet_bytes,
                    payload,
                    quote: Quote::new_v6(&ip, payload),
                };
                if ip.next_header == IpProtocol::Tcp {
                    self.handle_tcp(now, &inbound, host);
                } else {
                    self.handle_udp(now, &inbound, host);
                }
            }
            // Other extension headers (MLD reports come with hop-by-hop options) and
            // link-local TCP/UDP have no use here.
            _ => self.stats.rx_dropped += 1,
        }
    }

    /// A DHCPv6 client message (UDP to ff02::1:2 port 547, from the client's link-local
    /// address): an Information-Request gets the Reply from [fe80::2]:547, to the port it
    /// came from (546 for every standard client; libslirp answers the source port too, so
    /// a tool on another port is answered as well). libslirp replies from fd00::2; the
    /// link-local address is what RFC 8415 servers on the link use, and any works for the
    /// client.
    fn handle_dhcpv6(&mut self, ip: &Ipv6Repr, payload: &[u8]) {
        let Ok(udp) = UdpPacket::new_checked(payload) else {
            self.stats.rx_errors += 1;
            return;
        };
        if udp.dst_port() != dhcpv6::SERVER_PORT || !is_link_local(ip.src_addr) {
            self.stats.rx_dropped += 1;
            return;
        }
        let dns = (!self.config.disable_dns).then_some(self.config.network.dns6());
        let before = self.dhcpv6.counters().malformed;
        let Some(reply) = self.dhcpv6.handle(udp.payload(), dns, &self.dns_search) else {
            if self.dhcpv6.counters().malformed > before {
                self.stats.rx_errors += 1;
            } else {
                self.stats.rx_dropped += 1;
            }
            return;
        };
        send_udp(
            &mut self.tx,
            &mut self.stats,
            SocketAddr::new(IpAddr::V6(GATEWAY_LINK_LOCAL), dhcpv6::SERVER_PORT),
            SocketAddr::new(IpAddr::V6(ip.src_addr), udp.src_port()),
            &reply,
        );
    }

    /// A packet with a Fragment header (right after the fixed header: the guest sends no
    /// other extension headers with TCP, UDP or echo) into the reassembly; the whole packet,
    /// the Fragment header removed, once complete.
    fn reassemble_ipv6(&mut self, now: Instant, ip: &Ipv6Repr, payload: &[u8]) -> Option<Vec<u8>> {
        if !(self.config.network.contains6(ip.src_addr) || is_link_local(ip.src_addr)) {
            self.stats.rx_dropped += 1;
            return None;
        }
        let (Some(ext), Some(data)) = (
            payload.get(..IPV6_FRAGMENT_HEADER_LEN),
            payload.get(IPV6_FRAGMENT_HEADER_LEN..),
        ) else {
            self.stats.rx_errors += 1;
            return None;
        };
        let next_header = ext[0];
        let Ok(header) = Ipv6FragmentHeader::new_checked(&ext[2..]) else {
            self.stats.rx_errors += 1;
            return None;
        };
        if next_header == IPV6_FRAGMENT {
            // A fragment inside a fragment has no use, and would nest the parsing.
            self.stats.rx_dropped += 1;
            return None;
        }
        let fixed = Ipv6Repr {
            next_header: next_header.into(),
            payload_len: 0,
            ..*ip
        };
        let mut first = [0u8; IPV6_HEADER_LEN];
        fixed.emit(&mut Ipv6Packet::new_unchecked(&mut first[..]));
        let offset = usize::from(header.frag_offset()) * 8;
        let (header, data) = if offset == 0 && !header.more_frags() {
            // An atomic fragment (RFC 6946): a whole packet, outside the table.
            (first.to_vec(), data.to_vec())
        } else {
            if offset + data.len() > MAX_IP_LEN {
                self.stats.rx_errors += 1;
                return None;
            }
            let fragment = Fragment {
                key: FragKey {
                    src: IpAddr::V6(ip.src_addr),
                    dst: IpAddr::V6(ip.dst_addr),
                    proto: 0,
                    ident: header.ident(),
                },
                offset,
                more: header.more_frags(),
                header: &first,
                data,
            };
            let Reassembled { header, data } = self.take_fragment(now, fragment)?;
            (header, data)
        };
        let mut whole = header;
        whole.extend_from_slice(&data);
        Ipv6Packet::new_unchecked(&mut whole[..]).set_payload_len(data.len() as u16);
        Some(whole)
    }

    fn handle_icmpv6(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        ip: &Ipv6Repr,
        payload: &[u8],
        host: &mut impl HostIo,
    ) {
        let Ok(packet) = Icmpv6Packet::new_checked(payload) else {
            self.stats.rx_errors += 1;
            return;
        };
        let caps = ChecksumCapabilities::ignored();
        let Ok(repr) = Icmpv6Repr::parse(&ip.src_addr, &ip.dst_addr, &packet, &caps) else {
            self.stats.rx_errors += 1;
            return;
        };
        match repr {
            Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit { .. }) => self.send_router_advert(),
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, .. }) => {
                self.answer_neighbor_solicit(src_mac, ip.src_addr, target_addr)
            }
            Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => {
                let dst = ip.dst_addr;
                let local = dst == self.config.network.gateway6()
                    || dst == GATEWAY_LINK_LOCAL
                    || ((dst == self.config.network.dns6() || dst == DNS_LINK_LOCAL)
                        && !self.config.disable_dns);
                let (src, dst) = (IpAddr::V6(ip.src_addr), IpAddr::V6(dst));
                if local {
                    send_echo_reply(&mut self.tx, &mut self.stats, dst, src, ident, seq_no, data);
                } else if self.config.network.contains6(ip.src_addr) {
                    let quote = Quote::new_v6(ip, payload);
                    let guest = SocketAddr::new(src, ident);
                    self.forward_echo(now, guest, dst, payload, quote, host);
                } else {
                    self.stats.rx_dropped += 1;
                }
            }
            _ => self.stats.rx_dropped += 1,
        }
    }

    /// Neighbour advertisement for our virtual hosts; nothing for other addresses, and
    /// nothing for duplicate address detection probes (source ::), so the guest's DAD
    /// succeeds.
    fn answer_neighbor_solicit(
        &mut self,
        requester_mac: EthernetAddress,
        requester: Ipv6Address,
        target: Ipv6Address,
    ) {
        let network = self.config.network;
        let mac = if target == self.config.network.gateway6() || target == GATEWAY_LINK_LOCAL {
            service_mac(network.gateway())
        } else if target == self.config.network.dns6() || target == DNS_LINK_LOCAL {
            service_mac(network.dns())
        } else {
            self.stats.rx_dropped += 1;
            return;
        };
        if requester.is_unspecified() || !requester_mac.is_unicast() {
            return;
        }
        let advert = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::ROUTER
                | NdiscNeighborFlags::SOLICITED
                | NdiscNeighborFlags::OVERRIDE,
            target_addr: target,
            lladdr: Some(RawHardwareAddress::from(mac)),
        });
        self.send_icmpv6_to(requester_mac, target, requester, &advert, &[]);
    }

    /// A router advertisement to all nodes: our prefix (fd00::/64 by default) for SLAAC, our
    /// MTU, the DNS forwarder as RDNSS and the host's search domains as DNSSL (RFC 8106), and
    /// the O flag for stateless DHCPv6.
    pub(super) fn send_router_advert(&mut self) {
        let network = self.config.network;
        let advert = Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
            hop_limit: 64,
            // "Other configuration": DNS servers and search list by stateless DHCPv6
            // (RFC 8415 §18.2.6), for clients that ask it instead of reading RDNSS/DNSSL.
            flags: if self.config.disable_dns {
                NdiscRouterFlags::empty()
            } else {
                NdiscRouterFlags::OTHER
            },
            router_lifetime: ROUTER_LIFETIME,
            reachable_time: Duration::from_millis(0),
            retrans_time: Duration::from_millis(0),
            lladdr: Some(RawHardwareAddress::from(service_mac(network.gateway()))),
            mtu: Some(self.config.mtu as u32),
            prefix_info: Some(NdiscPrefixInformation {
                prefix_len: 64,
                flags: NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF,
                valid_lifetime: PREFIX_VALID,
                preferred_lifetime: PREFIX_PREFERRED,
                prefix: network.ipv6_prefix().network(),
            }),
        });
        let mut rdnss = if self.config.disable_dns {
            Vec::new()
        } else {
            rdnss_option(self.config.network.dns6(), RDNSS_LIFETIME_SECS)
        };
        // DNSSL (RFC 8106) next to it, with the same lifetime, when there are search domains.
        rdnss.extend(search::dnssl_option(&self.dns_search, RDNSS_LIFETIME_SECS));
        self.send_icmpv6_to(
            ALL_NODES_MAC,
            GATEWAY_LINK_LOCAL,
            ALL_NODES,
            &advert,
            &rdnss,
        );
    }

    /// Send an ICMPv6 message, with `extra_options` appended after smoltcp's encoding
    /// (smoltcp has no RDNSS option) and the checksum computed over all of it.
    fn send_icmpv6_to(
        &mut self,
        dst_mac: EthernetAddress,
        src: Ipv6Address,
        dst: Ipv6Address,
        message: &Icmpv6Repr<'_>,
        extra_options: &[u8],
    ) {
        let icmp_len = message.buffer_len() + extra_options.len();
        let ip = Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Icmpv6,
            payload_len: icmp_len,
            hop_limit: crate::nat::NDP_HOP_LIMIT,
        };
        let total = ip.buffer_len() + icmp_len;
        let queued = self
            .tx
            .push_to(dst_mac, EthernetProtocol::Ipv6, total, |buf| {
                let mut packet = Ipv6Packet::new_unchecked(&mut buf[..]);
                ip.emit(&mut packet);
                let payload = packet.payload_mut();
                let (head, tail) = payload.split_at_mut(message.buffer_len());
                message.emit(
                    &src,
                    &dst,
                    &mut Icmpv6Packet::new_unchecked(head),
                    &checksum_caps(),
                );
                tail.copy_from_slice(extra_options);
                Icmpv6Packet::new_unchecked(payload).fill_checksum(&src, &dst);
            });
        if !queued {
            self.stats.tx_dropped += 1;
        }
    }

    /// Periodic router advertisements; returns when the next one is due.
    pub(super) fn poll_router_advert(&mut self, now: Instant) {
        if let Some(at) = self.next_router_advert {
            if at <= now {
                self.send_router_advert();
                self.next_router_advert = Some(now + RA_INTERVAL);
            }
        }
    }
}

/// The RDNSS option (type 25): one server, `lifetime` seconds.
fn rdnss_option(server: Ipv6Address, lifetime: u32) -> Vec<u8> {
    let mut option = Vec::with_capacity(24);
    option.extend_from_slice(&[25, 3, 0, 0]);
    option.extend_from_slice(&lifetime.to_be_bytes());
    option.extend_from_slice(&server.octets());
    option
}

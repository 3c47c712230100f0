//! The smoltcp device of a TCP flow ([`FlowDevice`]): at most one packet in, the segment
//! being handled, and packets out straight into the stack's transmit queue behind an
//! Ethernet header; with tap offloads, the glue that describes those packets to the tap.
//!
//! With tap offloads (`TcpParams::offload`) the flow's device tells smoltcp it can segment
//! TCP (smoltcp's `segmentation-offload`): smoltcp keeps the guest's MSS and our MTU as the
//! segment size, but may hand out one packet of up to 64 KiB with that size as
//! `PacketMeta::segmentation_offload_size`, and leaves the TCP checksum to the device. Our
//! device then writes the pseudo-header sum into the checksum field and describes the frame
//! ([`Offload`]): the guest's kernel completes the checksum and cuts the segment.
//!
//! IPv6 needs a detour: smoltcp 0.14 implements segmentation offload for IPv4 only (on
//! IPv6 it drops any packet larger than the interface's IP MTU and never passes the
//! segment size on). An IPv6 flow's interface therefore gets the largest MTU instead, so
//! smoltcp sends up to 64 KiB cut to nothing smaller than the guest's MSS; we remember the
//! MSS of the guest's SYN (or SYN-ACK) and derive the segment size from it and the real
//! MTU ([`V6Offload`]); and the MSS smoltcp announces from the large MTU in its own SYN is
//! cut back to the real MTU's on the way out ([`clamp_syn_mss`]).

use crate::link::tx::{Gso, Offload, PartialChecksum, ETHERNET_HEADER_LEN};
use crate::link::TxQueue;
use crate::nat::checksum_caps;
use core::num::NonZeroUsize;
use smoltcp::phy::{
    Checksum, Device, DeviceCapabilities, Medium, PacketMeta, RxToken, SegmentationCapabilities,
    TxToken,
};
use smoltcp::time::Instant;
use smoltcp::wire::{
    checksum, EthernetProtocol, IpAddress, IpProtocol, IpVersion, Ipv4Packet, Ipv6Packet,
    TcpOption, TcpPacket, IPV6_HEADER_LEN,
};

/// Largest IP packet we let smoltcp build for the guest's kernel to segment: the most an
/// IPv4 header's total length can say (IPv6 is held to the same for simplicity).
const MAX_OFFLOAD_PACKET: usize = 65_535;

/// Offset of the checksum field in a TCP header.
const TCP_CHECKSUM_OFFSET: u16 = 16;

/// The smoltcp device of one flow: at most one packet in (the one being handled), and
/// packets out go straight into the stack's transmit queue behind an Ethernet header.
pub(super) struct FlowDevice<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut TxQueue,
    mtu: usize,
    offload: bool,
    /// Set for IPv6 flows with offloads (then `offload` is too).
    v6: Option<V6Offload>,
    ethertype: EthernetProtocol,
    /// Set when smoltcp wanted to send but the transmit queue had no room (or the guest's
    /// MAC is not known yet).
    pub(super) starved: bool,
}

impl<'a> FlowDevice<'a> {
    /// The device of a flow of `ethertype` whose guest announced `guest_mss`, handing
    /// smoltcp `rx` (if any) and sending into `tx`.
    pub(super) fn new(
        rx: Option<&'a [u8]>,
        tx: &'a mut TxQueue,
        mtu: usize,
        offload: bool,
        ethertype: EthernetProtocol,
        guest_mss: usize,
    ) -> FlowDevice<'a> {
        FlowDevice {
            rx,
            tx,
            mtu,
            offload,
            v6: v6_offload(offload, ethertype, mtu, guest_mss),
            ethertype,
            starved: false,
        }
    }
}

pub(super) struct FlowRxToken<'a>(&'a [u8]);

impl RxToken for FlowRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

pub(super) struct FlowTxToken<'a> {
    tx: &'a mut TxQueue,
    ethertype: EthernetProtocol,
    offload: bool,
    v6: Option<V6Offload>,
    meta: PacketMeta,
}

/// What an IPv6 flow with offloads needs to describe its frames itself (see the module
/// comment): its interface was given a larger MTU than the real one.
#[derive(Debug, Clone, Copy)]
struct V6Offload {
    mtu: usize,
    /// The guest's MSS (smoltcp's default when its SYN had none), at most what the MTU
    /// allows: segment payload plus TCP options.
    mss: usize,
}

impl TxToken for FlowTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if !self.offload {
            return self.tx.push_forced(self.ethertype, len, f);
        }
        let segment_size = self.meta.segmentation_offload_size;
        let v6 = self.v6;
        self.tx
            .push_forced_offload(self.ethertype, len, f, |packet| {
                describe_offload(packet, segment_size.map(|size| size.get()), v6)
            })
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.meta = meta;
    }
}

/// Finish a TCP packet smoltcp built without a checksum, for a tap with offloads: put the
/// pseudo-header sum in the checksum field (what a device with checksum offload expects)
/// and say where the sum goes and, for a packet smoltcp wants segmented, into what size.
/// Anything that is not a well-formed TCP packet (smoltcp only emits those here) is left
/// as it is, without metadata.
fn describe_offload(
    packet: &mut [u8],
    segment_size: Option<u16>,
    v6: Option<V6Offload>,
) -> Offload {
    let Some((ip_header_len, src, dst)) = ip_header(packet) else {
        return Offload::default();
    };
    let Some(segment) = packet.get_mut(ip_header_len..) else {
        return Offload::default();
    };
    let segment_len = segment.len();
    let Ok(mut tcp) = TcpPacket::new_checked(segment) else {
        return Offload::default();
    };
    let tcp_header_len = usize::from(tcp.header_len());
    let mut segment_size = segment_size;
    if let Some(v6) = v6 {
        if tcp.syn() {
            let mss = v6.mtu.saturating_sub(ip_header_len + 20);
            clamp_syn_mss(&mut tcp, u16::try_from(mss).unwrap_or(u16::MAX));
        }
        // What smoltcp would have asked for: the MSS less the options every segment
        // repeats, whenever the payload is larger.
        let size = v6.mss.saturating_sub(tcp_header_len - 20);
        let payload = segment_len - tcp_header_len;
        segment_size = (size > 0 && payload > size)
            .then(|| u16::try_from(size).ok())
            .flatten();
    }
    let pseudo = checksum::pseudo_header(&src, &dst, IpProtocol::Tcp, segment_len as u32);
    tcp.set_checksum(pseudo);
    let start = ETHERNET_HEADER_LEN + ip_header_len;
    let header_len = start + tcp_header_len;
    let gso = segment_size.and_then(|segment_size| {
        Some(Gso {
            ipv6: src.version() == IpVersion::Ipv6,
            segment_size,
            header_len: u16::try_from(header_len).ok()?,
        })
    });
    Offload {
        partial_checksum: u16::try_from(start).ok().map(|start| PartialChecksum {
            start,
            offset: TCP_CHECKSUM_OFFSET,
        }),
        gso,
    }
}

/// The IPv6 offload limits of a flow, or `None` where smoltcp's own segmentation applies.
fn v6_offload(
    offload: bool,
    ethertype: EthernetProtocol,
    mtu: usize,
    guest_mss: usize,
) -> Option<V6Offload> {
    let mss_for_mtu = mtu.saturating_sub(IPV6_HEADER_LEN + 20);
    (offload && ethertype == EthernetProtocol::Ipv6).then_some(V6Offload {
        mtu,
        mss: guest_mss.min(mss_for_mtu),
    })
}

/// The MSS option of a SYN (the whole IP packet), if it is one and has it.
pub(super) fn syn_mss(packet: &[u8]) -> Option<u16> {
    let (ip_header_len, _, _) = ip_header(packet)?;
    let tcp = TcpPacket::new_checked(packet.get(ip_header_len..)?).ok()?;
    if !tcp.syn() {
        return None;
    }
    let mut options = tcp.options();
    while !options.is_empty() {
        let (rest, option) = TcpOption::parse(options).ok()?;
        match option {
            TcpOption::EndOfList => return None,
            TcpOption::MaxSegmentSize(mss) if mss > 0 => return Some(mss),
            _ => {}
        }
        options = rest;
    }
    None
}

/// Lower the MSS option of a SYN to `mss` if it says more. The checksum is set afterwards.
fn clamp_syn_mss(tcp: &mut TcpPacket<&mut [u8]>, mss: u16) {
    let options = tcp.options_mut();
    let mut at = 0;
    while at < options.len() {
        let Ok((rest, option)) = TcpOption::parse(&options[at..]) else {
            return;
        };
        let len = options.len() - at - rest.len();
        match option {
            TcpOption::EndOfList => return,
            TcpOption::MaxSegmentSize(value) if value > mss => {
                options[at + 2..at + 4].copy_from_slice(&mss.to_be_bytes());
                return;
            }
            _ => {}
        }
        at += len.max(1);
    }
}

/// Header length and addresses of a TCP packet smoltcp emitted (IPv6 without extension
/// headers: smoltcp adds none to TCP).
fn ip_header(packet: &[u8]) -> Option<(usize, IpAddress, IpAddress)> {
    match IpVersion::of_packet(packet).ok()? {
        IpVersion::Ipv4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            (ip.next_header() == IpProtocol::Tcp).then(|| {
                let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
                (usize::from(ip.header_len()), src, dst)
            })
        }
        IpVersion::Ipv6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            (ip.next_header() == IpProtocol::Tcp).then(|| {
                let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
                (ip.header_len(), src, dst)
            })
        }
    }
}

impl Device for FlowDevice<'_> {
    type RxToken<'b>
        = FlowRxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = FlowTxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // A reply to an incoming segment is always allowed past the queue limit (see
        // `TxQueue::push_forced`): refusing it would only make the guest retransmit.
        let packet = self.rx.take()?;
        Some((
            FlowRxToken(packet),
            FlowTxToken {
                tx: self.tx,
                ethertype: self.ethertype,
                offload: self.offload,
                v6: self.v6,
                meta: PacketMeta::default(),
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        // Until the guest's MAC is known (a forwarded connection before the guest spoke),
        // segments wait: a Linux guest drops TCP sent to the broadcast MAC.
        if !self.tx.has_room() || !self.tx.guest_mac().is_unicast() {
            self.starved = true;
            return None;
        }
        Some(FlowTxToken {
            tx: self.tx,
            ethertype: self.ethertype,
            offload: self.offload,
            v6: self.v6,
            meta: PacketMeta::default(),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        // The MTU stays the guest's even with offloads (but see the module comment on
        // IPv6): smoltcp derives the MSS it advertises and the segment size it asks for
        // from it. Received packets are not held to it (smoltcp checks no size on
        // ingress), so the guest's 64 KiB segments pass.
        caps.max_transmission_unit = match self.v6 {
            Some(_) => MAX_OFFLOAD_PACKET,
            None => self.mtu,
        };
        caps.checksum = checksum_caps();
        if self.offload {
            // smoltcp requires it: a segmenting device computes the TCP checksum.
            caps.checksum.tcp = Checksum::None;
            caps.segmentation = SegmentationCapabilities::default();
            let max = NonZeroUsize::new(MAX_OFFLOAD_PACKET);
            caps.segmentation.tcpv4 = max;
            caps.segmentation.tcpv6 = max;
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Ipv6Address, Ipv6Repr};
    use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};

    const GUEST: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0xff, 0xfe00, 1);
    const GATEWAY: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    /// An IPv6 TCP packet as smoltcp emits it for an offloading device (checksum 0).
    fn packet(syn: bool, mss: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 8080,
            dst_port: 40000,
            control: if syn {
                TcpControl::Syn
            } else {
                TcpControl::None
            },
            seq_number: TcpSeqNumber(1),
            ack_number: Some(TcpSeqNumber(1)),
            window_len: 1024,
            window_scale: syn.then_some(5),
            max_seg_size: mss,
            sack_permitted: syn,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv6Repr {
            src_addr: GATEWAY,
            dst_addr: GUEST,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut bytes = vec![0; ip.buffer_len() + tcp.buffer_len()];
        let mut packet = Ipv6Packet::new_unchecked(&mut bytes[..]);
        ip.emit(&mut packet);
        tcp.emit(
            &mut TcpPacket::new_unchecked(packet.payload_mut()),
            &GATEWAY.into(),
            &GUEST.into(),
            &ChecksumCapabilities::ignored(),
        );
        bytes
    }

    #[test]
    fn syn_mss_reads_the_option_of_syns_only() {
        assert_eq!(syn_mss(&packet(true, Some(1440), &[])), Some(1440));
        assert_eq!(syn_mss(&packet(true, None, &[])), None);
        assert_eq!(syn_mss(&packet(false, None, b"data")), None);
        assert_eq!(syn_mss(&[0x60, 0, 0]), None);
    }

    #[test]
    fn ipv6_syn_announces_the_real_mtus_mss_and_big_segments_are_cut_to_the_guests() {
        let v6 = v6_offload(true, EthernetProtocol::Ipv6, 1500, 1400);
        let mut syn = packet(true, Some(65_475), &[]);
        let offload = describe_offload(&mut syn, None, v6);
        assert_eq!(syn_mss(&syn), Some(1440));
        assert_eq!(offload.gso, None);
        assert_eq!(
            offload.partial_checksum,
            Some(PartialChecksum {
                start: 14 + 40,
                offset: 16
            })
        );

        let mut segment = packet(false, None, &[7; 5000]);
        let offload = describe_offload(&mut segment, None, v6);
        let gso = offload.gso.expect("segmentation");
        assert_eq!(
            (gso.segment_size, gso.header_len, gso.ipv6),
            (1400, 74, true)
        );
        // The checksum field holds the pseudo-header sum for the whole segment.
        let tcp_len = segment.len() - 40;
        let expected = checksum::pseudo_header(
            &GATEWAY.into(),
            &GUEST.into(),
            IpProtocol::Tcp,
            tcp_len as u32,
        );
        assert_eq!(
            TcpPacket::new_checked(&segment[40..]).unwrap().checksum(),
            expected
        );

        // Small enough for one segment: no segmentation asked for.
        let mut small = packet(false, None, &[7; 1400]);
        assert_eq!(describe_offload(&mut small, None, v6).gso, None);
    }

    #[test]
    fn only_ipv6_flows_with_offloads_take_the_detour() {
        assert!(v6_offload(false, EthernetProtocol::Ipv6, 1500, 1440).is_none());
        assert!(v6_offload(true, EthernetProtocol::Ipv4, 1500, 1460).is_none());
        // A guest announcing more than the MTU allows gets the MTU's.
        let v6 = v6_offload(true, EthernetProtocol::Ipv6, 1500, 9000).unwrap();
        assert_eq!(v6.mss, 1440);
    }
}

//! Tap offloads (`Config::tap_offload`, the event loop's virtio-net header with TSO/CSUM),
//! told as scenarios: the guest's kernel hands us TCP segments of up to 64 KiB with only the
//! pseudo-header checksum, and takes ours the same way, with the segment size it must cut
//! them to. The scenario's tap plays the guest's kernel: it checks each frame's metadata
//! against the MTU and completes partial checksums before the guest parses the frame.

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use rslirp_stack::testing::{GuestTcp, Parsed, Scenario};
use rslirp_stack::{Config, FlowId, Gso, Offload, PartialChecksum};
use smoltcp::wire::{checksum, IpAddress, IpProtocol};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const REMOTE: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const ETH: usize = 14;
/// Ethernet, IPv4 and TCP without options: the headers of the stack's data segments to a
/// guest whose SYN had no timestamps (ours never do).
const V4_HEADERS: u16 = 14 + 20 + 20;

fn offloaded(enable_ipv6: bool) -> Scenario {
    Scenario::with_config(Config {
        tap_offload: true,
        enable_ipv6,
        ..Config::default()
    })
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

/// What a guest kernel with checksum offload writes to the tap: the TCP checksum field
/// holds only the pseudo-header sum (the frame is IPv4 without options).
fn leave_checksum_partial(frame: &mut [u8]) {
    let ip = &frame[ETH..];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let tcp_len = frame.len() - ETH - 20;
    let pseudo = checksum::pseudo_header(
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        IpProtocol::Tcp,
        tcp_len as u32,
    );
    let field = ETH + 20 + 16;
    frame[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
}

/// Some frames of the download were cut by the device, every one into segments of `size`.
fn assert_segments_of(log: &[(usize, Offload)], size: u16) {
    let gso: Vec<Gso> = log.iter().filter_map(|(_, offload)| offload.gso).collect();
    assert!(!gso.is_empty());
    assert!(gso.iter().all(|gso| gso.segment_size == size), "{gso:?}");
}

/// The host peer sends `data`; the guest takes and ACKs what arrives until it has all of
/// it. Returns the size and metadata of every frame the stack wrote meanwhile.
fn download(
    s: &mut Scenario,
    conn: &mut GuestTcp,
    flow: FlowId,
    data: &[u8],
) -> Vec<(usize, Offload)> {
    s.take_offload_log();
    s.download(conn, flow, data);
    let received = conn.take_received();
    assert!(
        received == data,
        "the guest got {} of the host's {} bytes",
        received.len(),
        data.len()
    );
    s.take_offload_log()
}

fn data_frames(log: &[(usize, Offload)], headers: u16) -> Vec<(usize, Offload)> {
    log.iter()
        .copied()
        .filter(|(len, _)| *len > usize::from(headers))
        .collect()
}

mod guest_to_host {
    use super::*;

    #[test]
    fn a_64k_segment_with_a_partial_checksum_reaches_the_host_whole() {
        let mut s = offloaded(false);
        let (mut conn, flow) = s.open_tcp(40000, SocketAddrV4::new(REMOTE, 80));
        let data = pattern(65_000);
        let mut frame = conn.send(&data);
        assert!(
            frame.len() > ETH + 1500,
            "bigger than the MTU, as TSO makes it"
        );
        leave_checksum_partial(&mut frame);
        s.guest_sends(&frame);

        assert_eq!(s.take_sent(flow), data);
        let sends: Vec<usize> = s
            .host
            .calls()
            .iter()
            .filter_map(|call| match call {
                rslirp_stack::testing::HostCall::TcpSend {
                    flow: f, offered, ..
                } if *f == flow => Some(*offered),
                _ => None,
            })
            .collect();
        assert_eq!(sends, vec![65_000], "one host write for the one segment");
        s.exchange(std::slice::from_mut(&mut conn));
        assert!(conn.all_acked(), "the stack acknowledged the whole segment");
        assert_eq!(s.stats().rx_errors, 0);
        assert_eq!(s.stats().rx_dropped, 0);
    }

    #[test]
    fn without_offloads_a_partial_checksum_is_taken_too() {
        // The stack never verifies the guest's transport checksums (only the guest's own
        // kernel writes to the tap), so nothing depends on the offload switch here.
        let mut s = Scenario::new();
        let (mut conn, flow) = s.open_tcp(40000, SocketAddrV4::new(REMOTE, 80));
        let data = pattern(1000);
        let mut frame = conn.send(&data);
        leave_checksum_partial(&mut frame);
        s.guest_sends(&frame);
        assert_eq!(s.take_sent(flow), data);
    }
}

mod host_to_guest {
    use super::*;

    #[test]
    fn bulk_data_leaves_as_large_segments_cut_to_the_guests_mss() {
        let mut s = offloaded(false);
        let (mut conn, flow) = s.open_tcp(40000, SocketAddrV4::new(REMOTE, 80));
        let log = download(&mut s, &mut conn, flow, &pattern(400_000));

        let data = data_frames(&log, V4_HEADERS);
        let large: Vec<_> = data.iter().filter(|(len, _)| *len > ETH + 1500).collect();
        assert!(
            !large.is_empty(),
            "no segment larger than the MTU: {data:?}"
        );
        for (len, offload) in &data {
            assert_eq!(
                offload.partial_checksum,
                Some(PartialChecksum {
                    start: 34,
                    offset: 16
                }),
                "every TCP frame leaves its checksum to the guest's kernel"
            );
            let expected_gso = (*len > ETH + 1500).then_some(Gso {
                ipv6: false,
                segment_size: 1460,
                header_len: V4_HEADERS,
            });
            assert_eq!(offload.gso, expected_gso, "frame of {len} bytes");
        }
        // Far fewer frames than 1460-byte segments would need.
        assert!(
            data.len() < 400_000 / 1460 / 4,
            "{} data frames",
            data.len()
        );
    }

    #[test]
    fn without_offloads_segments_stay_within_the_mss() {
        let mut s = Scenario::new();
        let (mut conn, flow) = s.open_tcp(40000, SocketAddrV4::new(REMOTE, 80));
        let log = download(&mut s, &mut conn, flow, &pattern(200_000));
        assert!(log
            .iter()
            .all(|(len, offload)| { *len <= ETH + 1500 && *offload == Offload::default() }));
        assert!(data_frames(&log, V4_HEADERS).len() >= 200_000 / 1460);
    }

    #[test]
    fn a_guest_with_a_smaller_mss_gets_segments_of_its_size() {
        let mut s = offloaded(false);
        let mut conn = s.guest_tcp(40000, SocketAddrV4::new(REMOTE, 80));
        conn.mss = 1000;
        s.guest_sends(&conn.syn());
        let (flow, _) = s.host.last_connect().expect("a host connect");
        s.complete_connect(flow);
        let frames = s.drain();
        let syn_ack = frames
            .iter()
            .find_map(|f| {
                f.tcp()
                    .filter(|(_, tcp)| tcp.syn)
                    .map(|(_, tcp)| tcp.clone())
            })
            .expect("a SYN-ACK");
        // The MSS we announce is still the MTU's, not the 64 KiB we may send.
        assert_eq!(syn_ack.mss, Some(1460));
        for frame in &frames {
            conn.on_frame(frame);
        }
        s.guest_sends(&conn.ack());

        let log = download(&mut s, &mut conn, flow, &pattern(300_000));
        assert_segments_of(&log, 1000);
    }

    #[test]
    fn forwarded_connections_use_the_mss_of_the_guests_syn_ack() {
        let mut s = offloaded(false);
        let guest = s.guest;
        s.guest_sends(&guest.arp_request(GATEWAY));
        s.drain();
        let reply = s.api(
            r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}}"#,
        );
        assert_eq!(reply, r#"{"return":{"id":1}}"#);
        let flow = s.client_connects(1, SocketAddr::from(([127, 0, 0, 1], 40000)));
        let syn = s.drain().remove(0);
        let Parsed::Tcp { ip, .. } = &syn else {
            panic!("expected the SYN to the guest, got {syn:?}");
        };
        assert_eq!(ip.dst_addr, GUEST);
        let (conn, syn_ack) = GuestTcp::accept_with_mss(&guest, &syn, 7_000_000, 1200);
        s.guest_sends(&syn_ack);
        let mut conns = [conn];
        s.exchange(&mut conns);

        let log = download(&mut s, &mut conns[0], flow, &pattern(300_000));
        assert_segments_of(&log, 1200);
    }

    #[test]
    fn ipv6_segments_are_tcpv6_and_leave_room_for_the_larger_header() {
        let mut s = offloaded(true);
        let gateway = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
        let (mut conn, flow) = s.open_tcp(40000, SocketAddrV6::new(gateway, 8080, 0, 0));
        // The MSS we announce is the real MTU's, though smoltcp was told a larger one.
        assert_eq!(conn.peer_mss, Some(1440));
        s.take_offload_log();
        let response = pattern(300_000);
        s.download(&mut conn, flow, &response);
        let log = s.take_offload_log();
        assert!(
            conn.received() == &response[..],
            "got {} of {} bytes; frames: {:?}",
            conn.received().len(),
            response.len(),
            &log[..log.len().min(20)]
        );
        let gso: Vec<Gso> = log.iter().filter_map(|(_, offload)| offload.gso).collect();
        assert!(!gso.is_empty(), "{log:?}");
        for gso in gso {
            // 1500 - 40 (IPv6) - 20 (TCP).
            assert_eq!(gso.segment_size, 1440);
            assert_eq!(gso.header_len, 14 + 40 + 20);
            assert!(gso.ipv6);
        }
        assert!(log
            .iter()
            .filter(|(len, _)| *len > 14 + 40 + 20)
            .all(|(_, offload)| offload.partial_checksum
                == Some(PartialChecksum {
                    start: 54,
                    offset: 16
                })));
    }
}

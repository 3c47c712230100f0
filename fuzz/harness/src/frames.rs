//! Target `frames`: a guest and the host peers talking to a [`rslirp_stack::Stack`].
//!
//! Input: a flags byte (see [`config`]), then steps, each an [`Op`] byte and its fields.
//! Steps are guest frames (raw bytes, or built from fields so that checksums and lengths
//! are right and the fuzzer spends its time past the parsers), host events on the sockets
//! the stack opened, port forwards, a full tap, and clock steps. Every frame the stack
//! emits is checked by [`Sim`]; the guest can answer the last TCP segments with the right
//! sequence numbers ([`Op::TcpReply`]), which is how inputs reach established connections,
//! retransmission, FIN and RST handling.

use crate::dhcp::MESSAGE_TYPES;
use crate::offload::{self, VnetHeader};
use crate::sim::{SentTcp, Sim};
use crate::{clock_step, run_steps, Encoder, Input, Step, HOST_ERRORS};
use rslirp::tap::VNET_HDR_LEN;
use rslirp_stack::config::{IPV6_DNS, IPV6_GATEWAY};
use rslirp_stack::testing::fragments::{ipv4_piece, ipv6_piece, payload_len};
use rslirp_stack::testing::frames::{Guest, TcpSegment};
use rslirp_stack::testing::ipv6::{ALL_NODES, ALL_ROUTERS};
use rslirp_stack::testing::SocketKind;
use rslirp_stack::testing::SocketState;
use rslirp_stack::{Config, Duration, Limits, VirtualNetwork};
use smoltcp::wire::{EthernetAddress, Icmpv6Repr, IpProtocol, Ipv4Packet, ETHERNET_HEADER_LEN};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Steps per input (see [`run_steps`]).
const MAX_STEPS: usize = 400;
/// How long the clock runs after the last step, so that every input also exercises the
/// idle timeouts (connect 60 s, UDP 240 s) of whatever it left open.
const FINAL_ADVANCE: Duration = Duration::from_secs(300);

pub const FLAG_IPV6: u8 = 1;
/// Small tables and buffers, so that inputs reach every limit and eviction.
pub const FLAG_TINY_LIMITS: u8 = 2;
pub const FLAG_DISABLE_DNS: u8 = 4;
pub const FLAG_DISABLE_HOST_LOOPBACK: u8 = 8;
/// The IPv6 minimum MTU instead of 1500.
pub const FLAG_MTU_1280: u8 = 16;
/// 10.0.135.128/25 instead of 10.0.2.0/24.
pub const FLAG_OTHER_CIDR: u8 = 32;
/// No DNS upstream (the host has no usable nameserver); otherwise 127.0.0.53.
pub const FLAG_NO_DNS_UPSTREAM: u8 = 64;
/// Tap offloads, as production runs by default (`Config::tap_offload`, a virtio-net header
/// on every frame both ways): the stack may send TCP segments of up to 64 KiB with partial
/// checksums, which [`Sim`] checks and cuts as the guest's kernel does, and the guest may
/// send such segments ([`Op::GsoTcp`]) and frames up to the tap's read buffer.
pub const FLAG_OFFLOAD: u8 = 128;

pub fn config(flags: u8) -> Config {
    let mut config = Config {
        enable_ipv6: flags & FLAG_IPV6 != 0,
        disable_dns: flags & FLAG_DISABLE_DNS != 0,
        disable_host_loopback: flags & FLAG_DISABLE_HOST_LOOPBACK != 0,
        tap_offload: flags & FLAG_OFFLOAD != 0,
        mtu: if flags & FLAG_MTU_1280 != 0 {
            1280
        } else {
            1500
        },
        ..Config::default()
    };
    if flags & FLAG_OTHER_CIDR != 0 {
        config.network = VirtualNetwork::parse("10.0.135.128/25").expect("a valid CIDR");
    }
    if flags & FLAG_TINY_LIMITS != 0 {
        config.limits = Limits {
            max_tcp_flows: 4,
            max_half_open: 2,
            max_udp_flows: 2,
            max_icmp_flows: 2,
            max_tx_queue_frames: 8,
            max_tx_queue_bytes: 16 * 1024,
            max_forwards: 2,
            max_forward_flows: 2,
            max_flows_per_forward: 1,
            tcp_forward_reserve: 1,
            tcp_rx_buffer: 4096,
            tcp_tx_buffer: 4096,
            max_time_wait: 1,
            max_dns_flows: 1,
            max_api_clients: 1,
            max_dns_upstreams: 2,
            max_search_domains: 2,
            max_search_len: 32,
            max_dns_retry_queries: 1,
            // One flow with big buffers (a quarter of the budget would not hold one: none
            // then), small ones while the minimum for the rest fits, then the minimum.
            tcp_buffer_budget: 32768,
            tcp_small_buffer: 2048,
            // Two datagrams of a few fragments each.
            max_reassembly_datagrams: 2,
            max_reassembly_bytes: 8192,
            tcp_min_buffer: 1024,
            // Two new connections at once, then one every 10 ms of virtual time.
            max_syn_rate: 100,
            syn_burst: 2,
            // Two errors at once, then one every 10 ms of virtual time.
            max_icmp_error_rate: 100,
            icmp_error_burst: 2,
        };
    }
    config
}

/// One step. The op byte is taken modulo the number of ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `bytes`: any frame.
    RawFrame,
    /// src, dst, protocol byte, `bytes` as payload: an IPv4 packet with a valid header.
    Ipv4Packet,
    /// src6, dst6, next header byte, hop limit byte, `bytes`: an IPv6 packet.
    Ipv6Packet,
    /// family, dst, src port, dst port, flags, seq u32, ack u32, window u16, `bytes`.
    TcpSegment,
    /// family, dst, src port, dst port, isn u32: a SYN as Linux sends it.
    TcpSyn,
    /// which recent segment (0: the newest), flags, seq offset (i8), window byte, `bytes`: the guest's
    /// answer to a segment the stack sent, with matching ports and sequence numbers.
    TcpReply,
    /// family, dst, src port, dst port, `bytes`.
    Udp,
    /// family, dst, ident u16, seq u16, `bytes`.
    IcmpEcho,
    /// kind, target: an ARP request, or the guest's reply to the stack's ARP request.
    Arp,
    /// MAC byte, message type, xid u32, ciaddr, requested address, server id, broadcast.
    Dhcp,
    /// kind, src6, target6: router or neighbour solicitation.
    Ndp,
    /// Toggle a full tap.
    Stall,
    /// socket: the host connect succeeds.
    CompleteConnect,
    /// socket, error: the host connect fails.
    FailConnect,
    /// socket, `bytes`: the host peer sends.
    PeerSend,
    /// socket: the host peer closes its side.
    PeerClose,
    /// socket: the host peer resets.
    PeerReset,
    /// socket, seq u16, `bytes`: a datagram (UDP payload, or ping reply) from the remote.
    Datagram,
    /// socket: the host peer reads what the stack wrote (and the socket turns writable).
    TakeSent,
    /// socket, u16: resize the socket's send buffer.
    SendWindow,
    /// socket, error: an asynchronous socket error.
    SetError,
    /// socket: report the socket's current readiness again (spurious wake-up).
    Poke,
    /// error: the next host socket open fails.
    FailNextOpen,
    /// udp?, host port, host addr, guest addr, guest port: `add_hostfwd`.
    AddForward,
    /// id byte: `remove_hostfwd`.
    RemoveForward,
    /// forward, client, port u16: a host client connects to a TCP forward.
    ClientConnects,
    /// forward, client, port u16, `bytes`: a host client sends to a UDP forward.
    ClientSends,
    /// clock step (see [`clock_step`]).
    Advance,
    /// family, dst, kind (bit 0: echo, else UDP), src port (or ident), dst port (or seq),
    /// ident u32, chunk byte, plan byte, `bytes`: a datagram built as [`Op::Udp`] or
    /// [`Op::IcmpEcho`] builds it, cut into fragments of (chunk + 1) × 8 bytes, sent in
    /// the order and with the faults the plan says (see [`Fuzz::fragments`]).
    Fragments,
    /// family, dst, ident u32, offset u16 (8-byte units), more, protocol byte, `bytes`: one
    /// fragment with a valid header and any data.
    Fragment,
    /// socket, type, code, info u16, offender (the remote, a router, loopback or none),
    /// `bytes`: the network's ICMP error about a UDP or ping socket's datagrams, as
    /// IP_RECVERR queues it, quoting `bytes`.
    IcmpError,
    /// As [`Op::TcpReply`] (which recent segment, flags, seq offset, window byte), then a
    /// payload length u16, a segment size u16, a mode byte, `bytes`: the guest's answer
    /// with a payload of that length (`bytes`, then a pattern), up to one 64 KiB IP
    /// packet, as a TSO guest writes it: a GSO virtio-net header for that segment size
    /// (0: the MTU's) and the checksum as the mode says (see [`Fuzz::gso_tcp`]).
    GsoTcp,
    /// family, dst, src port, dst port, mode byte, `bytes`: [`Op::Udp`]'s datagram, its
    /// checksum left partial (mode bit 0) with the header that says so, or not (bit 1).
    PartialUdp,
    /// socket, length u16: the host peer sends that many bytes of a pattern (enough for
    /// the stack to send the guest segments of 64 KiB, without 64 KiB inputs).
    PeerSendBulk,
}

impl Step for Op {
    const ALL: &'static [Op] = &[
        Op::RawFrame,
        Op::Ipv4Packet,
        Op::Ipv6Packet,
        Op::TcpSegment,
        Op::TcpSyn,
        Op::TcpReply,
        Op::Udp,
        Op::IcmpEcho,
        Op::Arp,
        Op::Dhcp,
        Op::Ndp,
        Op::Stall,
        Op::CompleteConnect,
        Op::FailConnect,
        Op::PeerSend,
        Op::PeerClose,
        Op::PeerReset,
        Op::Datagram,
        Op::TakeSent,
        Op::SendWindow,
        Op::SetError,
        Op::Poke,
        Op::FailNextOpen,
        Op::AddForward,
        Op::RemoveForward,
        Op::ClientConnects,
        Op::ClientSends,
        Op::Advance,
        Op::Fragments,
        Op::Fragment,
        Op::IcmpError,
        Op::GsoTcp,
        Op::PartialUdp,
        Op::PeerSendBulk,
    ];
}

/// TCP flag bits of [`Op::TcpSegment`] and [`Op::TcpReply`].
pub const SYN: u8 = 1;
pub const FIN: u8 = 2;
pub const RST: u8 = 4;
pub const PSH: u8 = 8;
pub const ACK: u8 = 16;
/// MSS, window scale and SACK-permitted options (what Linux puts in a SYN).
pub const OPTIONS: u8 = 32;
/// With [`OPTIONS`]: the MSS option is the window field's value rather than 1460 (the
/// guest's MSS decides the size the stack cuts its large segments to).
pub const MSS_FROM_WINDOW: u8 = 64;

pub fn run(data: &[u8]) {
    let (flags, mut input) = Input::with_flags(data);
    let config = config(flags);
    let mut fuzz = Fuzz {
        guest: Guest::new(&config.network),
        sim: Sim::new(config),
    };
    if flags & FLAG_NO_DNS_UPSTREAM == 0 {
        let upstream = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53));
        fuzz.sim.stack.set_dns_upstream(Some(upstream));
    }
    run_steps(&mut input, MAX_STEPS, |input, op| {
        fuzz.step(input, op);
        fuzz.sim.check_no_leaks();
    });
    fuzz.sim.stalled = false;
    fuzz.sim.settle();
    fuzz.sim.advance(FINAL_ADVANCE);
    fuzz.sim.check_no_leaks();
}

struct Fuzz {
    sim: Sim,
    guest: Guest,
}

impl Fuzz {
    fn step(&mut self, input: &mut Input, op: Op) {
        if crate::tracing() {
            eprintln!("{op:?} at {}", self.sim.now);
        }
        match op {
            Op::RawFrame => {
                let frame = input.bytes();
                self.sim.guest_sends(frame);
            }
            Op::Ipv4Packet => {
                let src = self.ipv4(input);
                let dst = self.ipv4(input);
                let protocol = IpProtocol::from(input.byte());
                let payload = input.bytes();
                let guest = self.guest_at(src);
                let frame = guest.ipv4(dst, protocol, payload.len(), |buf, _, _| {
                    buf.copy_from_slice(payload)
                });
                self.sim.guest_sends(&frame);
            }
            Op::Ipv6Packet => {
                let src = self.ipv6(input);
                let dst = self.ipv6(input);
                let protocol = IpProtocol::from(input.byte());
                let hop_limit = input.byte();
                let payload = input.bytes();
                let frame = self.guest.ipv6_frame(
                    src,
                    dst,
                    self.guest.gateway_mac,
                    protocol,
                    hop_limit,
                    payload.len(),
                    |buf, _, _| buf.copy_from_slice(payload),
                );
                self.sim.guest_sends(&frame);
            }
            Op::TcpSegment => {
                let (src, dst) = self.addresses(input);
                let (src_port, dst_port) = (port(input), port(input));
                let (flags, seq, ack, window) =
                    (input.byte(), input.u32(), input.u32(), input.u16());
                let segment = TcpSegment {
                    src_port,
                    dst_port,
                    payload: input.bytes().to_vec(),
                    ..segment(flags, seq, Some(ack), window)
                };
                self.send_tcp(src, dst, &segment);
            }
            Op::TcpSyn => {
                let (src, dst) = self.addresses(input);
                let (src_port, dst_port) = (port(input), port(input));
                let segment = TcpSegment {
                    src_port,
                    dst_port,
                    ..segment(SYN | OPTIONS, input.u32(), None, 64240)
                };
                self.send_tcp(src, dst, &segment);
            }
            Op::TcpReply => self.tcp_reply(input),
            Op::Udp => {
                let (src, dst) = self.addresses(input);
                let (src_port, dst_port) = (port(input), port(input));
                let payload = input.bytes();
                let frame = self.udp_frame(src_port, dst_port, src, dst, payload);
                self.sim.guest_sends(&frame);
            }
            Op::IcmpEcho => {
                let (src, dst) = self.addresses(input);
                let (ident, seq_no) = (input.u16(), input.u16());
                let data = input.bytes();
                if let Some(frame) = self.echo_frame(src, dst, ident, seq_no, data) {
                    self.sim.guest_sends(&frame);
                }
            }
            Op::Arp => {
                let reply = input.bool();
                let target = self.ipv4(input);
                let frame = if reply {
                    // What the guest says when the stack asks for it (before a forward's
                    // first SYN): its address, to the gateway.
                    let network = self.sim.config.network;
                    self.guest_at(target)
                        .arp_reply(self.guest.gateway_mac, network.gateway())
                } else {
                    self.guest.arp_request(target)
                };
                self.sim.guest_sends(&frame);
            }
            Op::Dhcp => self.dhcp(input),
            Op::Ndp => {
                let kind = input.byte();
                let (src, target) = (self.ipv6(input), self.ipv6(input));
                let frame = if kind & 1 == 0 {
                    self.guest.router_solicit()
                } else {
                    self.guest.neighbor_solicit(src, target)
                };
                self.sim.guest_sends(&frame);
            }
            Op::Stall => {
                self.sim.stalled = !self.sim.stalled;
                self.sim.settle();
            }
            Op::CompleteConnect | Op::FailConnect => {
                let pick = input.byte();
                let error = input.pick(&HOST_ERRORS);
                let connecting = |s: &rslirp_stack::testing::SimSocket| {
                    s.kind == SocketKind::Tcp && s.state == SocketState::Connecting
                };
                if let Some(flow) = self.sim.socket(pick, connecting) {
                    let event = if op == Op::CompleteConnect {
                        self.sim.host.complete_connect(flow)
                    } else {
                        self.sim.host.fail_connect(flow, error)
                    };
                    self.sim.host_event(event);
                }
            }
            Op::PeerSend | Op::PeerClose | Op::PeerReset => {
                let pick = input.byte();
                let data = if op == Op::PeerSend {
                    input.bytes()
                } else {
                    &[]
                };
                // A peer that closed its side can still reset, but not send.
                let open = |s: &rslirp_stack::testing::SimSocket| {
                    s.kind == SocketKind::Tcp
                        && s.state == SocketState::Connected
                        && !(op == Op::PeerSend && s.eof_from_peer)
                };
                if let Some(flow) = self.sim.socket(pick, open) {
                    let event = match op {
                        Op::PeerSend => self.sim.host.peer_send(flow, data),
                        Op::PeerClose => self.sim.host.peer_close(flow),
                        _ => self.sim.host.peer_reset(flow),
                    };
                    self.sim.host_event(event);
                }
            }
            Op::Datagram => {
                let pick = input.byte();
                let seq_no = input.u16();
                let data = input.bytes();
                let datagram = |s: &rslirp_stack::testing::SimSocket| {
                    matches!(s.kind, SocketKind::Udp | SocketKind::Ping)
                };
                if let Some(flow) = self.sim.socket(pick, datagram) {
                    let kind = self.sim.host.socket(flow).map(|s| s.kind);
                    let event = if kind == Some(SocketKind::Ping) && seq_no & 1 == 0 {
                        // A well-formed echo reply half the time; raw bytes otherwise.
                        self.sim.host.ping_reply(flow, seq_no, data)
                    } else {
                        self.sim.host.deliver_datagram(flow, data)
                    };
                    self.sim.host_event(event);
                }
            }
            Op::TakeSent | Op::SendWindow => {
                let pick = input.byte();
                let window = usize::from(input.u16());
                if let Some(flow) = self.sim.socket(pick, |s| s.kind == SocketKind::Tcp) {
                    let event = if op == Op::TakeSent {
                        self.sim.host.take_sent(flow);
                        self.sim.host.writable_edge(flow)
                    } else {
                        self.sim.host.set_send_window(flow, window)
                    };
                    if let Some(event) = event {
                        self.sim.host_event(event);
                    }
                }
            }
            Op::IcmpError => {
                let pick = input.byte();
                let (icmp_type, code) = (input.byte(), input.byte());
                let info = u32::from(input.u16());
                let who = input.byte();
                let data = input.bytes();
                let datagram = |s: &rslirp_stack::testing::SimSocket| {
                    matches!(s.kind, SocketKind::Udp | SocketKind::Ping)
                };
                let flow = self.sim.socket(pick, datagram);
                let remote =
                    flow.and_then(|flow| self.sim.host.socket(flow).map(|s| s.remote.ip()));
                if let (Some(flow), Some(remote)) = (flow, remote) {
                    let (router, loopback): (IpAddr, IpAddr) = match remote {
                        IpAddr::V4(_) => (
                            Ipv4Addr::new(10, 98, 0, 1).into(),
                            Ipv4Addr::LOCALHOST.into(),
                        ),
                        IpAddr::V6(_) => (
                            "2001:db8:1::1"
                                .parse::<Ipv6Addr>()
                                .expect("an address")
                                .into(),
                            Ipv6Addr::LOCALHOST.into(),
                        ),
                    };
                    let offender =
                        [Some(remote), Some(router), Some(loopback), None][usize::from(who % 4)];
                    let report = rslirp_stack::IcmpReport {
                        v6: remote.is_ipv6(),
                        icmp_type,
                        code,
                        info,
                        offender,
                        len: 0,
                    };
                    let event = self.sim.host.icmp_error(flow, report, data);
                    self.sim.host_event(event);
                }
            }
            Op::SetError | Op::Poke => {
                let pick = input.byte();
                let error = input.pick(&HOST_ERRORS);
                if let Some(flow) = self.sim.socket(pick, |_| true) {
                    let event = if op == Op::SetError {
                        self.sim.host.set_error(flow, error)
                    } else {
                        self.sim.host.event(flow)
                    };
                    self.sim.host_event(event);
                }
            }
            Op::FailNextOpen => {
                let error = input.pick(&HOST_ERRORS);
                self.sim.host.fail_next_open(error);
            }
            Op::AddForward => {
                let request = add_forward_request(input);
                self.sim.api(request.as_bytes());
            }
            Op::RemoveForward => {
                let id = input.byte();
                let request =
                    format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#);
                self.sim.api(request.as_bytes());
            }
            Op::ClientConnects | Op::ClientSends => {
                let udp = op == Op::ClientSends;
                let pick = input.byte();
                let client = SocketAddr::new(client_addr(input), input.u16());
                let payload = if udp { input.bytes() } else { &[] };
                if let Some(forward) = live_forward(&self.sim, pick, udp) {
                    if udp {
                        self.sim.host.client_sends(forward, client, payload);
                    } else {
                        self.sim.host.client_connects(forward, client);
                    }
                    self.sim.forward_event(forward);
                }
            }
            Op::Advance => {
                let by = clock_step(input);
                self.sim.advance(by);
            }
            Op::Fragments => self.fragments(input),
            Op::GsoTcp => self.gso_tcp(input),
            Op::PartialUdp => {
                let (src, dst) = self.addresses(input);
                let (src_port, dst_port) = (port(input), port(input));
                let mode = input.byte();
                let payload = input.bytes();
                let mut frame = self.udp_frame(src_port, dst_port, src, dst, payload);
                let csum = if mode & 1 != 0 {
                    offload::leave_checksum_partial(&mut frame)
                } else {
                    None
                };
                let header = if mode & 2 != 0 {
                    VnetHeader::default()
                } else {
                    offload::gso_header(&[], 0, csum)
                };
                self.sim.guest_writes(header, &frame);
            }
            Op::PeerSendBulk => {
                let pick = input.byte();
                let len = usize::from(input.u16());
                let open = |s: &rslirp_stack::testing::SimSocket| {
                    s.kind == SocketKind::Tcp
                        && s.state == SocketState::Connected
                        && !s.eof_from_peer
                };
                if let Some(flow) = self.sim.socket(pick, open) {
                    let event = self.sim.host.peer_send(flow, &pattern(len));
                    self.sim.host_event(event);
                }
            }
            Op::Fragment => {
                let (src, dst) = self.addresses(input);
                let ident = input.u32();
                let offset = input.u16() & 0x1fff;
                let more = input.bool();
                let protocol = IpProtocol::from(input.byte());
                let data = input.bytes();
                // A packet of just the data, cut to one fragment at offset 0, then moved to
                // `offset` (any, even past 65,535 bytes in all: the stack must refuse those).
                let frame = self.raw_ip(src, dst, protocol, data.len(), |buf| {
                    buf.copy_from_slice(data)
                });
                let Some(frame) = frame else {
                    return;
                };
                let piece = if src.is_ipv4() {
                    let mut piece = ipv4_piece(&frame, 0, data.len(), more, ident as u16);
                    let mut ip = Ipv4Packet::new_unchecked(&mut piece[ETHERNET_HEADER_LEN..]);
                    ip.set_frag_offset(offset * 8);
                    ip.fill_checksum();
                    piece
                } else {
                    let mut piece = ipv6_piece(&frame, 0, data.len(), more, ident);
                    // The offset field of the Fragment header after the fixed header.
                    let at = ETHERNET_HEADER_LEN + 40 + 2;
                    let field = offset << 3 | u16::from(more);
                    piece[at..at + 2].copy_from_slice(&field.to_be_bytes());
                    piece
                };
                self.sim.guest_sends(&piece);
            }
        }
    }

    /// [`Op::Fragments`]. The plan byte: bit 0 reverses the order, bit 1 sends the first
    /// fragment again at the end, bit 2 leaves the last one out, bit 3 moves the second
    /// one 8 bytes back (an overlap), bits 4-7 rotate the order by that much.
    fn fragments(&mut self, input: &mut Input) {
        let (src, dst) = self.addresses(input);
        let echo = input.bool();
        let (a, b) = (port(input), port(input));
        let ident = input.u32();
        let chunk = (usize::from(input.byte()) + 1) * 8;
        let plan = input.byte();
        let payload = input.bytes();
        if payload.len() > 65_000 {
            // Not a datagram IP can carry whole (the frame builders assume it is).
            return;
        }
        let frame = if echo {
            self.echo_frame(src, dst, a, b, payload)
        } else {
            Some(self.udp_frame(a, b, src, dst, payload))
        };
        let Some(frame) = frame else {
            return;
        };
        if frame.is_empty() {
            return;
        }
        let len = payload_len(&frame);
        let mut pieces: Vec<(usize, usize, bool)> = (0..len)
            .step_by(chunk)
            .map(|offset| {
                let n = chunk.min(len - offset);
                (offset, n, offset + n < len)
            })
            .collect();
        if plan & 8 != 0 && pieces.len() > 1 {
            pieces[1].0 -= 8;
        }
        if plan & 4 != 0 {
            pieces.pop();
        }
        if plan & 1 != 0 {
            pieces.reverse();
        }
        if !pieces.is_empty() {
            let by = usize::from(plan >> 4) % pieces.len();
            pieces.rotate_left(by);
        }
        if plan & 2 != 0 {
            if let Some(&first) = pieces.first() {
                pieces.push(first);
            }
        }
        for (offset, n, more) in pieces {
            let piece = if src.is_ipv4() {
                ipv4_piece(&frame, offset, n, more, ident as u16)
            } else {
                ipv6_piece(&frame, offset, n, more, ident)
            };
            self.sim.guest_sends(&piece);
        }
    }

    /// An IP packet from `src` to `dst` with `len` bytes of payload written by `fill`
    /// (families must agree).
    fn raw_ip(
        &self,
        src: IpAddr,
        dst: IpAddr,
        protocol: IpProtocol,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Option<Vec<u8>> {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                Some(
                    self.guest_at(src)
                        .ipv4(dst, protocol, len, |buf, _, _| fill(buf)),
                )
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => Some(self.guest.ipv6_frame(
                src,
                dst,
                self.guest.gateway_mac,
                protocol,
                64,
                len,
                |buf, _, _| fill(buf),
            )),
            _ => None,
        }
    }

    fn tcp_reply(&mut self, input: &mut Input) {
        let pick = input.byte();
        let flags = input.byte();
        let seq_offset = i32::from(input.byte() as i8);
        let window = u16::from(input.byte()) << 8;
        let payload = input.bytes().to_vec();
        // 0 is the newest segment, 1 the one before...
        let recent = self.sim.recent_tcp.len();
        let Some(index) = (recent > 0).then(|| recent - 1 - usize::from(pick) % recent) else {
            return;
        };
        let SentTcp { src, dst, segment } = self.sim.recent_tcp[index].clone();
        // Flags 0 means "a plain ACK", the common answer.
        let flags = if flags & (SYN | FIN | RST | PSH | ACK) == 0 {
            ACK
        } else {
            flags
        };
        let reply = answer(&segment, flags, seq_offset, window, payload);
        self.send_tcp(dst, src, &reply);
    }

    /// [`Op::GsoTcp`]. Mode bits 0-1: the checksum complete (0), partial with NEEDS_CSUM
    /// (1), partial without it (2), or zero (3); bit 2: ten bytes of the input as the
    /// virtio-net header instead of the one the guest's kernel would write.
    fn gso_tcp(&mut self, input: &mut Input) {
        let pick = input.byte();
        let flags = input.byte();
        let seq_offset = i32::from(input.byte() as i8);
        let window = u16::from(input.byte()) << 8;
        let len = usize::from(input.u16());
        let gso_size = input.u16();
        let mode = input.byte();
        let mut raw_header = [0u8; VNET_HDR_LEN];
        if mode & 4 != 0 {
            raw_header.fill_with(|| input.byte());
        }
        let head = input.bytes();
        let recent = self.sim.recent_tcp.len();
        let Some(index) = (recent > 0).then(|| recent - 1 - usize::from(pick) % recent) else {
            return;
        };
        let SentTcp { src, dst, segment } = self.sim.recent_tcp[index].clone();
        let flags = if flags & (SYN | FIN | RST | PSH | ACK) == 0 {
            ACK | PSH
        } else {
            flags
        };
        // Up to one IP packet: IPv4's length counts its header, IPv6's does not; TCP's
        // header may have 40 bytes of options.
        let ip_len = if dst.is_ipv4() { 20 } else { 40 };
        let counted = if dst.is_ipv4() { ip_len } else { 0 } + 20 + 40;
        let len = len.min(offload::MAX_IP_PACKET - counted);
        let mut payload = pattern(len);
        let n = head.len().min(len);
        payload[..n].copy_from_slice(&head[..n]);
        let reply = answer(&segment, flags, seq_offset, window, payload);
        let Some(mut frame) = self.tcp_frame(dst, src, &reply) else {
            return;
        };
        let csum = match mode & 3 {
            1 | 2 => offload::leave_checksum_partial(&mut frame),
            3 => {
                let at = ETHERNET_HEADER_LEN + ip_len + 16;
                if let Some(field) = frame.get_mut(at..at + 2) {
                    field.fill(0);
                }
                None
            }
            _ => None,
        };
        // What a guest whose MSS fits the MTU cuts to (options aside).
        let mtu_size = self.sim.config.mtu.saturating_sub(ip_len + 20);
        let gso_size = if gso_size == 0 {
            u16::try_from(mtu_size).unwrap_or(u16::MAX)
        } else {
            gso_size
        };
        let header = if mode & 4 != 0 {
            VnetHeader::parse(&raw_header)
        } else {
            let csum = csum.filter(|_| mode & 3 == 1);
            let big = frame.len() > ETHERNET_HEADER_LEN + self.sim.config.mtu;
            offload::gso_header(&frame, if big { gso_size } else { 0 }, csum)
        };
        let header = if header.gso_size == 0 && mode & 4 == 0 {
            VnetHeader {
                gso_type: 0,
                hdr_len: 0,
                ..header
            }
        } else {
            header
        };
        self.sim.guest_writes(header, &frame);
    }

    fn dhcp(&mut self, input: &mut Input) {
        // Every type but the last, `Unknown` (the `dhcp` target sends that one).
        let types = &MESSAGE_TYPES[..MESSAGE_TYPES.len() - 1];
        let mac = guest_mac(input.byte());
        let message_type = input.pick(types);
        let xid = input.u32();
        let client_ip = self.ipv4(input);
        let requested = self.ipv4(input);
        let server = self.ipv4(input);
        let options = input.byte();
        let guest = Guest { mac, ..self.guest };
        let mut message = guest.dhcp_message(message_type, xid);
        message.client_ip = client_ip;
        message.requested_ip = (options & 1 != 0).then_some(requested);
        message.server_identifier = (options & 2 != 0).then_some(server);
        message.broadcast = options & 4 != 0;
        let frame = guest.dhcp(&message);
        self.sim.guest_sends(&frame);
    }

    /// An IPv4 address the guest might use: ours, its own, the network's edges, the
    /// outside, and the special ones; or any four bytes.
    fn ipv4(&self, input: &mut Input) -> Ipv4Addr {
        let network = self.sim.config.network;
        let choices = [
            network.gateway(),
            network.dns(),
            Ipv4Addr::new(10, 99, 0, 1),
            network.guest(),
            network.dhcp_first(),
            network.host(50),
            network.network_addr(),
            network.broadcast(),
            Ipv4Addr::BROADCAST,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(224, 0, 0, 251),
            Ipv4Addr::new(192, 0, 2, 1),
        ];
        match input.index(choices.len() + 1) {
            Some(i) if i < choices.len() => choices[i],
            _ => Ipv4Addr::from(input.u32()),
        }
    }

    fn ipv6(&self, input: &mut Input) -> Ipv6Addr {
        let choices = [
            IPV6_GATEWAY,
            IPV6_DNS,
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            self.guest.ipv6_addr(),
            self.guest.link_local(),
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 3),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x99),
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::UNSPECIFIED,
            ALL_NODES,
            ALL_ROUTERS,
            Ipv4Addr::new(10, 99, 0, 1).to_ipv6_mapped(),
        ];
        match input.index(choices.len() + 1) {
            Some(i) if i < choices.len() => choices[i],
            _ => Ipv6Addr::from(u128::from(input.u32()) << 96 | u128::from(input.u32())),
        }
    }

    /// A family byte, then the destination; the source is the guest's own address (or,
    /// for IPv4 with the family byte's bit 1, any address the input names).
    fn addresses(&self, input: &mut Input) -> (IpAddr, IpAddr) {
        let family = input.byte();
        if family & 1 == 0 {
            let src = if family & 2 != 0 {
                self.ipv4(input)
            } else {
                self.guest.ip
            };
            (IpAddr::V4(src), IpAddr::V4(self.ipv4(input)))
        } else {
            let src = if family & 2 != 0 {
                self.ipv6(input)
            } else {
                self.guest.ipv6_addr()
            };
            (IpAddr::V6(src), IpAddr::V6(self.ipv6(input)))
        }
    }

    fn send_tcp(&mut self, src: IpAddr, dst: IpAddr, segment: &TcpSegment) {
        if let Some(frame) = self.tcp_frame(src, dst, segment) {
            self.sim.guest_sends(&frame);
        }
    }

    fn tcp_frame(&self, src: IpAddr, dst: IpAddr, segment: &TcpSegment) -> Option<Vec<u8>> {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Some(self.guest_at(src).tcp(dst, segment)),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Some(tcp6_frame(&self.guest, src, dst, segment)),
            _ => None,
        }
    }

    /// The guest, as if its IPv4 address were `ip` (frames from any source).
    fn guest_at(&self, ip: Ipv4Addr) -> Guest {
        Guest { ip, ..self.guest }
    }

    /// An echo request from any source, or None for mixed families.
    fn echo_frame(
        &self,
        src: IpAddr,
        dst: IpAddr,
        ident: u16,
        seq_no: u16,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                Some(self.guest_at(src).icmp_echo(dst, ident, seq_no, data))
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let message = Icmpv6Repr::EchoRequest {
                    ident,
                    seq_no,
                    data,
                };
                Some(
                    self.guest
                        .icmpv6(src, dst, self.guest.gateway_mac, &message),
                )
            }
            _ => None,
        }
    }

    fn udp_frame(
        &self,
        src_port: u16,
        dst_port: u16,
        src: IpAddr,
        dst: IpAddr,
        payload: &[u8],
    ) -> Vec<u8> {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                self.guest_at(src)
                    .udp(src_port, SocketAddrV4::new(dst, dst_port), payload)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => self.guest.udp6_from(
                SocketAddrV6::new(src, src_port, 0, 0),
                SocketAddrV6::new(dst, dst_port, 0, 0),
                self.guest.gateway_mac,
                64,
                payload,
            ),
            _ => Vec::new(),
        }
    }
}

/// Seeds: [`Op::TcpReply`] to the newest segment, with `flags`, window byte `window` and
/// `payload`.
fn reply(e: &mut Encoder, flags: u8, window: u8, payload: &[u8]) {
    e.step(Op::TcpReply)
        .fields(&[0, flags, 0, window])
        .bytes(payload);
}

/// The guest's answer to `segment`: the ports swapped, all of it acknowledged, its sequence
/// number the one `segment` acknowledged moved by `seq_offset`.
fn answer(
    segment: &TcpSegment,
    flags: u8,
    seq_offset: i32,
    window: u16,
    payload: Vec<u8>,
) -> TcpSegment {
    let ack = segment.seq.wrapping_add(segment.seq_len());
    let seq = segment.ack.unwrap_or(0).wrapping_add_signed(seq_offset);
    TcpSegment {
        src_port: segment.dst_port,
        dst_port: segment.src_port,
        payload,
        ..self::segment(flags, seq, Some(ack), window)
    }
}

/// A segment with `flags` (the bits above), as the guest would send it.
fn segment(flags: u8, seq: u32, ack: Option<u32>, window: u16) -> TcpSegment {
    let options = flags & OPTIONS != 0;
    TcpSegment {
        seq,
        ack: ack.filter(|_| flags & ACK != 0),
        syn: flags & SYN != 0,
        fin: flags & FIN != 0,
        rst: flags & RST != 0,
        psh: flags & PSH != 0,
        window,
        mss: options.then_some(if flags & MSS_FROM_WINDOW != 0 {
            window
        } else {
            1460
        }),
        window_scale: options.then_some(7),
        sack_permitted: options,
        ..TcpSegment::default()
    }
}

/// `len` bytes of a pattern that does not repeat within a segment.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

/// A port: a few that services and flows share (so that steps meet each other's flows),
/// or any.
fn port(input: &mut Input) -> u16 {
    const PORTS: [u16; 8] = [40000, 40001, 80, 53, 67, 68, 22, 0];
    match input.index(PORTS.len() + 1) {
        Some(i) if i < PORTS.len() => PORTS[i],
        _ => input.u16(),
    }
}

/// The scenario guest's MAC, a few other unicast ones, broadcast and multicast.
fn guest_mac(byte: u8) -> EthernetAddress {
    match byte % 4 {
        0 => rslirp_stack::testing::GUEST_MAC,
        1 => EthernetAddress([0x02, 0, 0, 0, 0, byte]),
        2 => EthernetAddress::BROADCAST,
        _ => EthernetAddress([0x01, 0, 0x5e, 0, 0, byte]),
    }
}

fn client_addr(input: &mut Input) -> IpAddr {
    let choices = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
        IpAddr::V4(Ipv4Addr::new(10, 0, 2, 50)),
        IpAddr::V6(Ipv4Addr::new(192, 0, 2, 8).to_ipv6_mapped()),
    ];
    input.pick(&choices)
}

/// `add_hostfwd` with fields the input picks from values that parse (the `api` target
/// fuzzes the JSON itself).
pub fn add_forward_request(input: &mut Input) -> String {
    let proto = if input.bool() { "udp" } else { "tcp" };
    let host_port = input.pick(&[8080u16, 8081, 53, 1]);
    let host_addr = input.pick(&["127.0.0.1", "0.0.0.0", "::1", "::"]);
    let guest_addr = input.pick(&["", "10.0.2.100", "10.0.2.50", "fd00::ff:fe00:1"]);
    let guest_port = input.pick(&[80u16, 22, 53, 8080]);
    format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{proto}","host_addr":"{host_addr}","host_port":{host_port},"guest_addr":"{guest_addr}","guest_port":{guest_port}}}}}"#
    )
}

/// A forward the host still listens on, of the given kind, chosen by `pick`.
pub fn live_forward(sim: &Sim, pick: u8, udp: bool) -> Option<u64> {
    let live: Vec<u64> = sim
        .stack
        .forwards()
        .map(|forward| forward.id)
        .filter(|&id| {
            sim.host
                .forward(id)
                .is_some_and(|f| !f.closed && f.udp == udp)
        })
        .collect();
    (!live.is_empty()).then(|| live[usize::from(pick) % live.len()])
}

/// A TCP segment from any IPv6 source (`Guest::tcp6` always uses the guest's SLAAC address).
fn tcp6_frame(guest: &Guest, src: Ipv6Addr, dst: Ipv6Addr, segment: &TcpSegment) -> Vec<u8> {
    guest.ipv6_frame(
        src,
        dst,
        guest.gateway_mac,
        IpProtocol::Tcp,
        64,
        segment.buffer_len(),
        |buf, src, dst| segment.emit(buf, src, dst),
    )
}

/// The seed corpus: one input per kind of traffic, each deep enough to be worth mutating.
pub fn seeds() -> crate::Seeds {
    let mut seeds = Vec::new();
    let network = VirtualNetwork::default();
    let guest = Guest::new(&network);

    // A raw ARP request, exactly as a Linux guest sends it.
    let mut e = Encoder::with_flags(0);
    e.step(Op::RawFrame)
        .bytes(&guest.arp_request(network.gateway()));
    seeds.push(("arp-request", e.finish()));

    // TCP to 10.99.0.1:80: SYN, connect completes, handshake, data both ways, FINs.
    for (name, flags) in [("tcp-session", 0), ("tcp-session-tiny", FLAG_TINY_LIMITS)] {
        let mut e = Encoder::with_flags(flags);
        e.step(Op::TcpSyn);
        // family v4 from the guest, dst index 2 (10.99.0.1), ports 40000 -> 80, isn.
        e.fields(&[0, 2, 0, 2]).u32(0x1000_0000);
        e.step(Op::CompleteConnect).fields(&[0, 0]);
        reply(&mut e, ACK, 8, b"");
        reply(&mut e, ACK | PSH, 8, b"GET / HTTP/1.0\r\n\r\n");
        e.step(Op::PeerSend)
            .byte(0)
            .bytes(b"HTTP/1.0 200 OK\r\n\r\nhello");
        reply(&mut e, ACK, 8, b"");
        e.step(Op::TakeSent).byte(0).u16(0);
        e.step(Op::PeerClose).byte(0);
        reply(&mut e, ACK | FIN, 8, b"");
        e.step(Op::Advance).byte(5);
        seeds.push((name, e.finish()));
    }

    // A connect that the host refuses, and one that times out.
    let mut e = Encoder::with_flags(0);
    e.step(Op::TcpSyn).fields(&[0, 0, 0, 6]).u32(1);
    e.step(Op::FailConnect).fields(&[0, 0]);
    e.step(Op::TcpSyn).fields(&[0, 2, 1, 2]).u32(2);
    e.step(Op::Advance).byte(9);
    seeds.push(("tcp-refused", e.finish()));

    // UDP to the outside and back, DNS to 10.0.2.3, and ICMP echo out and back.
    let mut e = Encoder::with_flags(0);
    e.step(Op::Udp)
        .fields(&[0, 2, 0, 8])
        .u16(9999)
        .bytes(b"ping");
    e.step(Op::Datagram).byte(0).u16(1).bytes(b"pong");
    e.step(Op::IcmpEcho)
        .fields(&[0, 2])
        .u16(7)
        .u16(1)
        .bytes(b"abcdefgh");
    e.step(Op::Datagram).byte(1).u16(2).bytes(b"abcdefgh");
    e.step(Op::IcmpEcho)
        .fields(&[0, 0])
        .u16(7)
        .u16(2)
        .bytes(b"to the gateway");
    e.step(Op::Advance).byte(11);
    seeds.push(("udp-icmp", e.finish()));

    // ICMP errors from the network: time exceeded for a UDP probe (from a router), port
    // unreachable (from the remote), frag needed with an MTU, time exceeded for an echo
    // request (from loopback: the gateway), then the flows go on.
    let mut e = Encoder::with_flags(0);
    e.step(Op::Udp)
        .fields(&[0, 2, 0, 8])
        .u16(33434)
        .bytes(b"probe");
    e.step(Op::IcmpError)
        .fields(&[0, 11, 0])
        .u16(0)
        .byte(1)
        .bytes(b"probe");
    e.step(Op::IcmpError)
        .fields(&[0, 3, 3])
        .u16(0)
        .byte(0)
        .bytes(b"probe");
    e.step(Op::IcmpError)
        .fields(&[0, 3, 4])
        .u16(1280)
        .byte(3)
        .bytes(b"pro");
    e.step(Op::IcmpEcho)
        .fields(&[0, 2])
        .u16(7)
        .u16(1)
        .bytes(b"abcdefgh");
    e.step(Op::IcmpError)
        .fields(&[1, 11, 0])
        .u16(0)
        .byte(2)
        .bytes(b"\x08\x00\x00\x00\xa0\x00\x00\x01abcdefgh");
    e.step(Op::Datagram).byte(0).u16(1).bytes(b"pong");
    e.step(Op::Advance).byte(11);
    seeds.push(("icmp-errors", e.finish()));

    // DHCP: discover, request.
    let mut e = Encoder::with_flags(0);
    e.step(Op::Dhcp)
        .fields(&[0, 0])
        .u32(0x1234)
        .fields(&[10, 0, 0, 0]);
    e.step(Op::Dhcp)
        .fields(&[0, 1])
        .u32(0x1234)
        .fields(&[10, 4, 0, 3]);
    seeds.push(("dhcp", e.finish()));

    // IPv6: router and neighbour solicitation, echo, TCP and UDP.
    let mut e = Encoder::with_flags(FLAG_IPV6);
    e.step(Op::Ndp).fields(&[0, 0, 0]);
    e.step(Op::Ndp).fields(&[1, 3, 0]);
    e.step(Op::IcmpEcho)
        .fields(&[1, 0])
        .u16(1)
        .u16(1)
        .bytes(b"v6 echo");
    e.step(Op::TcpSyn).fields(&[1, 2, 0, 2]).u32(77);
    e.step(Op::CompleteConnect).fields(&[0, 0]);
    reply(&mut e, ACK | PSH, 8, b"hello over v6");
    e.step(Op::Udp).fields(&[1, 1, 0, 3]).bytes(
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01",
    );
    e.step(Op::Advance).byte(10);
    seeds.push(("ipv6", e.finish()));

    // A TCP port forward: add it, a client connects, the guest answers ARP and the SYN.
    let mut e = Encoder::with_flags(0);
    e.step(Op::AddForward).fields(&[0, 0, 0, 0, 0]);
    e.step(Op::ClientConnects).fields(&[0, 0]).u16(50000);
    e.step(Op::Arp).fields(&[1, 3]);
    reply(&mut e, SYN | ACK | OPTIONS, 8, b"");
    e.step(Op::PeerSend).byte(0).bytes(b"to the guest");
    reply(&mut e, ACK, 8, b"");
    e.step(Op::AddForward).fields(&[1, 2, 0, 0, 2]);
    e.step(Op::ClientSends)
        .fields(&[0, 0])
        .u16(50001)
        .bytes(b"datagram");
    seeds.push(("forwards", e.finish()));

    // A full tap with tiny limits: many SYNs and UDP flows while stalled.
    let mut e = Encoder::with_flags(FLAG_TINY_LIMITS);
    e.step(Op::Stall);
    for port in 0..6u16 {
        e.step(Op::TcpSyn)
            .fields(&[0, 2, 8])
            .u16(1000 + port)
            .byte(2)
            .u32(u32::from(port));
        e.step(Op::Udp)
            .fields(&[0, 2, 8])
            .u16(2000 + port)
            .byte(8)
            .u16(7)
            .bytes(b"x");
    }
    e.step(Op::Stall);
    e.step(Op::CompleteConnect).fields(&[0, 0]);
    seeds.push(("stalled-tiny", e.finish()));

    // Raw IPv4 with a valid header: a TCP segment with odd options to the gateway.
    let mut e = Encoder::with_flags(0);
    e.step(Op::Ipv4Packet).fields(&[3, 0, 6]).bytes(&[
        0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0xa0, 0x02, 0xfa, 0xf0, 0, 0, 0, 0, 2, 4,
        5, 0xb4, 1, 3, 3, 7, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    seeds.push(("ipv4-options", e.finish()));

    // Fragments: an 8,000-byte UDP datagram to the gateway's port 7 in order, its echo
    // back in fragments; a ping of 4,000 bytes to the gateway, reversed; an overlap; and
    // IPv6 fragments with a duplicate.
    for (name, flags) in [("fragments", 0), ("fragments-v6", FLAG_IPV6)] {
        let family = if flags == FLAG_IPV6 { 1 } else { 0 };
        let mut e = Encoder::with_flags(flags);
        e.step(Op::Fragments);
        // family, dst 0 (the gateway), UDP, ports 40000 -> index 8 (any: 7), ident, chunk
        // 185 (1,480 bytes), plan 0.
        e.fields(&[family, 0, 0, 0, 8])
            .u16(7)
            .u32(0x1234)
            .fields(&[184, 0])
            .bytes(&vec![0x5a; 8000]);
        e.step(Op::Datagram).byte(0).u16(1).bytes(&vec![0xa5; 8000]);
        e.step(Op::Fragments);
        // An echo of 4,000 bytes to the gateway, reversed, the first fragment twice.
        e.fields(&[family, 0, 1, 8])
            .u16(9)
            .byte(8)
            .u16(1)
            .u32(0x99)
            .fields(&[184, 3])
            .bytes(&vec![0x33; 4000]);
        e.step(Op::Fragments);
        // An overlap, small fragments.
        e.fields(&[family, 2, 0, 0, 8])
            .u16(53)
            .u32(0x77)
            .fields(&[7, 8])
            .bytes(&[0x11; 300]);
        e.step(Op::Fragment)
            .fields(&[family, 0])
            .u32(5)
            .u16(3)
            .fields(&[1, 17])
            .bytes(&[1; 64]);
        e.step(Op::Advance).byte(8);
        seeds.push((name, e.finish()));
    }

    // Tap offloads: a TCP session whose guest uploads 60,000 bytes in one TSO segment with
    // a partial checksum and downloads 95,000 (the stack sends segments of up to 64 KiB,
    // which the harness cuts as the guest's kernel does), over IPv4 and IPv6; and with
    // tiny limits and MTU 1280, a header of any bytes, a zero checksum, and UDP to the
    // DNS forwarder with a partial checksum.
    for (name, flags) in [
        ("offload-tcp-session", FLAG_OFFLOAD),
        ("offload-ipv6", FLAG_OFFLOAD | FLAG_IPV6),
        (
            "offload-tiny",
            FLAG_OFFLOAD | FLAG_TINY_LIMITS | FLAG_MTU_1280,
        ),
    ] {
        let family = u8::from(flags & FLAG_IPV6 != 0);
        let tiny = flags & FLAG_TINY_LIMITS != 0;
        let mut e = Encoder::with_flags(flags);
        e.step(Op::TcpSyn);
        // dst index 2 (10.99.0.1 or its IPv6 counterpart), ports 40000 -> 80.
        e.fields(&[family, 2, 0, 2]).u32(0x2000_0000);
        e.step(Op::CompleteConnect).fields(&[0, 0]);
        reply(&mut e, ACK, 0xff, b"");
        e.step(Op::GsoTcp);
        // newest segment, ACK|PSH, no seq offset, full window, 60,000 bytes, the MTU's
        // segment size, partial checksum with NEEDS_CSUM (tiny: a zero checksum).
        e.fields(&[0, ACK | PSH, 0, 0xff])
            .u16(60_000)
            .u16(0)
            .byte(if tiny { 3 } else { 1 })
            .bytes(b"PUT /upload HTTP/1.0\r\n\r\n");
        e.step(Op::TakeSent).byte(0).u16(0);
        e.step(Op::PeerSendBulk).byte(0).u16(65_000);
        reply(&mut e, ACK, 0xff, b"");
        e.step(Op::Advance).byte(2);
        reply(&mut e, ACK, 0xff, b"");
        e.step(Op::PeerSendBulk).byte(0).u16(30_000);
        reply(&mut e, ACK, 0xff, b"");
        if tiny {
            // A segment behind a header of any ten bytes.
            e.step(Op::GsoTcp)
                .fields(&[0, ACK, 0, 0xff])
                .u16(4_000)
                .u16(1_000)
                .byte(4);
            for byte in [1u8, 1, 0x36, 0, 0xe8, 0x03, 0x22, 0, 0x10, 0] {
                e.byte(byte);
            }
            e.bytes(b"");
            e.step(Op::PartialUdp);
            // To the DNS forwarder (dst index 1), port 40001 -> 53, partial with NEEDS_CSUM.
            e.fields(&[0, 1, 1, 3, 1]).bytes(
                b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01",
            );
        }
        e.step(Op::PeerClose).byte(0);
        reply(&mut e, ACK | FIN, 0xff, b"");
        e.step(Op::Advance).byte(5);
        seeds.push((name, e.finish()));
    }

    // Tap offloads and the guest's MSS: SYNs announcing 9,000 (more than the MTU allows),
    // 100 and 1 (fewer than the options of the segments), each connection then fed and
    // drained in bulk, over IPv4 and IPv6.
    for (name, flags) in [
        ("offload-mss", FLAG_OFFLOAD),
        ("offload-mss-v6", FLAG_OFFLOAD | FLAG_IPV6),
    ] {
        let family = u8::from(flags & FLAG_IPV6 != 0);
        let mut e = Encoder::with_flags(flags);
        for (pick, port, mss) in [(0u8, 7000u16, 9000u16), (1, 7001, 100), (2, 7002, 1)] {
            e.step(Op::TcpSegment);
            // dst index 2, port `port` -> 80, SYN with options, the MSS in the window.
            e.fields(&[family, 2, 8])
                .u16(port)
                .fields(&[2, SYN | OPTIONS | MSS_FROM_WINDOW])
                .u32(u32::from(port) << 16)
                .u32(0)
                .u16(mss)
                .bytes(b"");
            e.step(Op::CompleteConnect).fields(&[0, 0]);
            reply(&mut e, ACK, 0xff, b"");
            // The flows' sockets in the order they were opened.
            e.step(Op::PeerSendBulk).byte(pick).u16(40_000);
            for _ in 0..6 {
                reply(&mut e, ACK, 0xff, b"");
            }
            e.step(Op::GsoTcp)
                .fields(&[0, ACK | PSH, 0, 0xff])
                .u16(20_000)
                .u16(0)
                .byte(1)
                .bytes(b"");
        }
        e.step(Op::Advance).byte(5);
        seeds.push((name, e.finish()));
    }

    seeds
}

//! The event loop around a [`Stack`] on [`SimHost`], as the fuzz targets drive it, and the
//! checks every frame the stack emits must pass.
//!
//! Not [`rslirp_stack::testing::Scenario`]: that one checks that every frame goes to the
//! scenario guest's MAC, but a fuzzed guest sends from any MAC (and the stack answers it).
//! And a full tap (`stalled`) is the event loop's view of one here: no writes at all until
//! the stall ends, and a deadline that comes due meanwhile waits for it; Scenario's
//! `tap_answer` instead answers each write. Both play the kit's clock
//! ([`rslirp_stack::testing::clock`]).

use crate::offload::VnetHeader;
use rslirp::event_loop::MAX_FRAME;
use rslirp::tap::{frame_read, vnet_header, VNET_HDR_LEN};
use rslirp_stack::testing::clock::{self, EventLoop};
use rslirp_stack::testing::frames::TcpSegment;
use rslirp_stack::testing::{try_parse, ParseError, Parsed};
use rslirp_stack::testing::{SimHost, SimSocket};
use rslirp_stack::{Config, Duration, FlowId, HostEvent, Instant, Offload, Stack};
use smoltcp::wire::{EthernetFrame, Ipv4Packet, ETHERNET_HEADER_LEN};
use std::net::IpAddr;

/// Where the virtual clock starts (not zero, as in the scenario tests).
pub const START: Instant = Instant::from_millis_const(1_000_000);
const SEED: u64 = 0x5eed_f022;
/// TCP segments from the stack the guest can answer (see [`Sim::recent_tcp`]).
const RECENT_TCP: usize = 4;

/// A TCP segment the stack sent, with the addresses it went between.
#[derive(Debug, Clone)]
pub struct SentTcp {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub segment: TcpSegment,
}

pub struct Sim {
    pub stack: Stack,
    pub host: SimHost,
    pub config: Config,
    pub now: Instant,
    /// The tap is full: frames stay queued in the stack, and nothing is polled in a loop.
    pub stalled: bool,
    /// The last TCP segments the stack sent, newest last: the harness answers them with
    /// the right sequence numbers so that inputs reach established connections.
    pub recent_tcp: Vec<SentTcp>,
    /// Every frame written to the tap, kept (and taken) by targets with checks of their own.
    pub keep_frames: bool,
    pub frames: Vec<Vec<u8>>,
}

impl Sim {
    pub fn new(config: Config) -> Sim {
        Sim {
            stack: Stack::new(config.clone(), START, SEED),
            host: SimHost::default(),
            config,
            now: START,
            stalled: false,
            recent_tcp: Vec::new(),
            keep_frames: false,
            frames: Vec::new(),
        }
    }

    /// The guest writes a frame to the tap. Frames longer than the MTU are not delivered
    /// (unless the tap has offloads, see [`Sim::guest_writes`]): the guest's kernel cannot
    /// send them on a tap of that MTU, and the stack's answers (echo replies) may be as
    /// long as the question.
    pub fn guest_sends(&mut self, frame: &[u8]) {
        self.guest_writes(VnetHeader::default(), frame);
    }

    /// The guest's kernel writes `frame` behind a virtio-net header (the tap has one with
    /// offloads; without, the header is left out). The frame is read out again as the event
    /// loop reads it (`frame_read`). With offloads, frames up to the read buffer's size are
    /// delivered: a TSO guest sends TCP segments of up to 64 KiB, and a packet socket with
    /// PACKET_VNET_HDR can write any frame marked as one.
    pub fn guest_writes(&mut self, header: VnetHeader, frame: &[u8]) {
        let offload = self.config.tap_offload;
        let max = if offload {
            MAX_FRAME
        } else {
            ETHERNET_HEADER_LEN + self.config.mtu
        };
        if frame.len() > max {
            return;
        }
        let mut read = Vec::with_capacity(VNET_HDR_LEN + frame.len());
        if offload {
            read.extend_from_slice(&header.to_bytes());
        }
        read.extend_from_slice(frame);
        let Some(frame) = frame_read(&read, offload) else {
            return;
        };
        if crate::tracing() {
            if offload {
                eprintln!("  -> {header:?}");
            }
            eprintln!("  -> {:?}", try_parse(frame));
        }
        self.stack.handle_frame(self.now, frame, &mut self.host);
        self.settle();
    }

    /// An event SimHost reported.
    pub fn host_event(&mut self, event: HostEvent) {
        if crate::tracing() {
            eprintln!("  host {event:?}");
        }
        self.stack
            .handle_host_event(self.now, event, &mut self.host);
        self.settle();
    }

    pub fn forward_event(&mut self, forward: u64) {
        self.stack
            .handle_forward_event(self.now, forward, &mut self.host);
        self.settle();
    }

    /// A control-socket request; the reply must be one JSON object (clients parse it).
    pub fn api(&mut self, request: &[u8]) -> serde_json::Value {
        let reply = self
            .stack
            .handle_api_request(self.now, request, &mut self.host);
        self.settle();
        let value: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_else(|err| {
            panic!(
                "API reply is not JSON ({err}): {:?} for request {:?}",
                String::from_utf8_lossy(&reply),
                String::from_utf8_lossy(request)
            )
        });
        assert!(
            value.is_object(),
            "API reply is not an object: {value} for request {:?}",
            String::from_utf8_lossy(request)
        );
        value
    }

    /// Moves the clock forward by `by`, polling at every deadline the stack reports on the
    /// way, as the real loop sleeps until `poll_at`.
    pub fn advance(&mut self, by: Duration) {
        clock::advance(self, by);
    }

    /// One loop iteration's output side: poll until nothing is due now, writing every
    /// frame to the tap (or, while stalled, one poll and no writes).
    pub fn settle(&mut self) {
        if self.stalled {
            self.stack.poll(self.now, &mut self.host);
            return;
        }
        clock::settle(self);
    }

    /// A frame for the guest must fit the MTU and decode with correct checksums; the limits
    /// must hold.
    fn check_frame(&mut self, frame: &[u8]) {
        let max = ETHERNET_HEADER_LEN + self.config.mtu;
        assert!(
            frame.len() <= max,
            "frame of {} bytes exceeds the MTU ({max} with Ethernet header)",
            frame.len()
        );
        assert!(
            EthernetFrame::new_checked(frame).is_ok(),
            "the stack emitted a runt frame: {frame:02x?}"
        );
        if crate::tracing() {
            eprintln!("  <- {} {:?}", self.now, try_parse(frame));
        }
        let sent = match self.decode(frame, "the stack emitted a bad frame") {
            Some(Parsed::Tcp { ip, tcp }) => Some(SentTcp {
                src: ip.src_addr,
                dst: ip.dst_addr,
                segment: tcp,
            }),
            _ => None,
        };
        if let Some(sent) = sent {
            if self.recent_tcp.len() == RECENT_TCP {
                self.recent_tcp.remove(0);
            }
            self.recent_tcp.push(sent);
        }
        self.check_limits();
    }

    /// A frame as the guest's IP layer passes it on (fragments reassembled) must decode.
    fn check_whole(&self, frame: &[u8]) {
        if EthernetFrame::new_checked(frame).is_ok() {
            self.decode(frame, "a reassembled datagram does not decode");
        }
    }

    /// `frame` decoded, or None for NATed UDP between ports 67 and 68 that is no DHCP;
    /// panics with `what` on any other frame that does not decode.
    fn decode(&self, frame: &[u8], what: &str) -> Option<Parsed> {
        match try_parse(frame) {
            Ok(parsed) => Some(parsed),
            // `try_parse` reads any UDP from port 67 to 68 as DHCP, after checking its
            // checksums; from anyone but our gateway it is NATed traffic (a remote's port
            // 67 answering the guest's port 68) and may hold anything.
            Err(
                ParseError::Truncated("DHCP")
                | ParseError::Malformed("DHCP")
                | ParseError::Malformed("DHCP MTU option"),
            ) if !from_gateway(frame, self.config.network.gateway()) => None,
            Err(err) => panic!("{what} ({err}): {frame:02x?}"),
        }
    }

    pub fn check_limits(&self) {
        let (stats, limits) = (self.stack.stats(), self.config.limits);
        for (what, count, limit) in [
            ("TCP flows", stats.tcp_flows, limits.max_tcp_flows),
            ("UDP flows", stats.udp_flows, limits.max_udp_flows),
            ("ICMP flows", stats.icmp_flows, limits.max_icmp_flows),
            (
                "forwards",
                self.stack.forwards().count() as u64,
                limits.max_forwards,
            ),
            (
                "reassemblies",
                stats.ip_frag_pending,
                limits.max_reassembly_datagrams,
            ),
            (
                "reassembly bytes",
                stats.ip_frag_bytes,
                limits.max_reassembly_bytes,
            ),
        ] {
            assert!(
                count as usize <= limit,
                "{what} over their limit: {stats:?}"
            );
        }
    }

    /// No leaks: every host socket still open belongs to a flow the stack counts (a flow
    /// may have none: TIME-WAIT, replies through a UDP forward), and every forward the
    /// stack lists is still listening on the host. Linear in the number of sockets, so
    /// once per step rather than per frame.
    pub fn check_no_leaks(&self) {
        let stats = self.stack.stats();
        let flows = stats.tcp_flows + stats.udp_flows + stats.icmp_flows;
        assert!(
            self.host.open_count() as u64 <= flows,
            "{} host sockets open for {flows} flows: {stats:?}",
            self.host.open_count()
        );
        for forward in self.stack.forwards() {
            let listening = self.host.forward(forward.id).is_some_and(|f| !f.closed);
            assert!(
                listening,
                "forward {} is listed but not listening",
                forward.id
            );
        }
    }

    /// The host sockets for which `wanted` holds, in a stable order (SimHost keeps them in
    /// a HashMap, whose order changes from run to run), one of them chosen by `index`.
    pub fn socket(&self, pick: u8, wanted: impl Fn(&SimSocket) -> bool) -> Option<FlowId> {
        let mut flows: Vec<FlowId> = self
            .host
            .sockets()
            .filter(|(_, socket)| !socket.is_closed() && wanted(socket))
            .map(|(flow, _)| flow)
            .collect();
        flows.sort();
        (!flows.is_empty()).then(|| flows[usize::from(pick) % flows.len()])
    }
}

impl EventLoop for Sim {
    /// Fuzzed inputs reach timer storms sooner than any scenario needs.
    const MAX_DEADLINES_PER_ADVANCE: usize = 100_000;

    fn clock(&mut self) -> (&Stack, &mut Instant) {
        (&self.stack, &mut self.now)
    }

    /// Polls once and writes every frame to the tap.
    fn poll_once(&mut self) {
        self.stack.poll(self.now, &mut self.host);
        let mut written = Vec::new();
        self.stack.poll_transmit(|frame, offload| {
            written.push((frame.to_vec(), offload));
            rslirp_stack::TapWrite::Sent
        });
        // What the guest's IP layer gets: the frames as they are without tap offloads;
        // with them, each behind the header the event loop writes, checked, completed
        // and cut as the guest's kernel does (see `offload::receive`).
        let mut frames = Vec::with_capacity(written.len());
        for (frame, offload) in written {
            if !self.config.tap_offload {
                assert_eq!(
                    offload,
                    Offload::default(),
                    "offload metadata without tap offloads"
                );
                frames.push(frame);
                continue;
            }
            let header = VnetHeader::parse(&vnet_header(offload));
            if crate::tracing() && offload != Offload::default() {
                eprintln!("  <- {header:?} on {} bytes", frame.len());
            }
            frames.extend(crate::offload::receive(&frame, &header));
        }
        for frame in &frames {
            self.check_frame(frame);
        }
        // A datagram's fragments leave together: reassembled as the guest's kernel
        // would, each whole datagram must decode with correct checksums.
        if frames.len() > 1 {
            for whole in rslirp_stack::testing::fragments::defragment(frames.clone()) {
                self.check_whole(&whole);
            }
        }
        if self.keep_frames {
            self.frames.extend(frames);
        }
    }

    fn at_deadline(&mut self, overdue: bool) -> bool {
        if overdue && self.stalled {
            // Due now but blocked on the full tap; the loop would wait for the tap to
            // drain, which it does when the stall ends.
            return false;
        }
        self.settle();
        true
    }
}

/// Whether an IPv4 frame comes from `gateway`.
fn from_gateway(frame: &[u8], gateway: std::net::Ipv4Addr) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    Ipv4Packet::new_checked(eth.payload()).is_ok_and(|ip| ip.src_addr() == gateway)
}

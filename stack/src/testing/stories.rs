//! Stories the IPv4 and IPv6 scenario tests both tell, told once: each works for either
//! family (the addresses say which) and checks what every copy of it checked.

use super::frames::TcpSegment;
use super::guest_tcp::GuestTcp;
use super::parse::{parse_echo_message, Parsed};
use super::scenario::{the_only, Scenario};
use crate::io::{FlowId, HostError};
use core::net::{IpAddr, SocketAddr};
use smoltcp::time::Duration;
use smoltcp::wire::IpVersion;

/// An ICMP or ICMPv6 destination unreachable, taken apart.
#[derive(Debug)]
pub struct Unreachable {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub code: u8,
    /// The quoted packet.
    pub original: Vec<u8>,
}

/// The one frame of `frames`, which must be a destination unreachable (`what`).
pub fn the_unreachable(frames: Vec<Parsed>, what: &str) -> Unreachable {
    match the_only(frames, what) {
        Parsed::IcmpUnreachable {
            src,
            dst,
            code,
            original,
        } => Unreachable {
            src,
            dst,
            code,
            original,
        },
        other => panic!("expected {what}, got {other:?}"),
    }
}

impl Scenario {
    /// The guest pings `remote`, which the stack does not answer itself: one host ping
    /// socket opens to it and carries the echo request (sequence number and data kept),
    /// the guest hears nothing until the host answers, and the host's reply (with the
    /// socket's own identifier, as the kernel's) reaches the guest with its identifier.
    pub fn assert_ping_through_host(
        &mut self,
        remote: impl Into<IpAddr>,
        ident: u16,
        seq_no: u16,
        data: &[u8],
    ) {
        let remote = remote.into();
        let guest = self.guest;
        self.guest_sends(&guest.echo_request(remote, ident, seq_no, data));

        let (flow, target) = the_only(self.host.ping_opens(), "ping_open");
        assert_eq!(target, remote);
        let version = match remote {
            IpAddr::V4(_) => IpVersion::Ipv4,
            IpAddr::V6(_) => IpVersion::Ipv6,
        };
        let request =
            parse_echo_message(version, &the_only(self.host.ping_sent(flow), "ping_send"))
                .expect("ping_send carries an echo request");
        assert!(!request.reply);
        assert_eq!((request.seq_no, &request.payload[..]), (seq_no, data));
        assert_eq!(
            self.drain(),
            vec![],
            "nothing for the guest before the reply"
        );

        self.ping_reply(flow, request.seq_no, &request.payload);
        let expected = Parsed::echo_reply(remote, guest.addr_for(remote), ident, seq_no, data);
        assert_eq!(
            the_only(self.drain(), "echo reply"),
            expected,
            "the guest sees its own identifier again"
        );
    }

    /// After `conn`'s SYN started the host connect `flow`: no SYN-ACK while the host
    /// connects, none either for the SYN the guest sends again after `retransmit_after`
    /// (nor a second connect); once the connect completes, the one frame is the SYN-ACK
    /// of the guest's SYN, with an MSS of at least 536 and at most `max_mss`. Returns it.
    pub fn syn_ack_after_connect(
        &mut self,
        conn: &mut GuestTcp,
        flow: FlowId,
        retransmit_after: Duration,
        max_mss: u16,
    ) -> Parsed {
        assert_eq!(self.drain(), vec![], "no SYN-ACK while the host connects");
        let connects = self.host.connects().len();
        self.advance(retransmit_after);
        self.guest_sends(&conn.syn());
        assert_eq!(
            self.host.connects().len(),
            connects,
            "a retransmitted SYN is the same flow"
        );
        assert_eq!(self.drain(), vec![], "still no SYN-ACK");
        self.complete_connect(flow);
        let frame = the_only(self.drain(), "SYN-ACK");
        let (_, syn_ack) = frame.tcp().expect("the SYN-ACK is a TCP segment");
        assert!(syn_ack.is_syn_ack(), "got {}", syn_ack.flags());
        assert_eq!(
            (syn_ack.src_port, syn_ack.dst_port),
            (conn.remote.port(), conn.local_port)
        );
        assert_eq!(syn_ack.ack, Some(conn.isn.wrapping_add(1)));
        let mss = syn_ack.mss.expect("the SYN-ACK carries an MSS option");
        assert!(
            (536..=max_mss).contains(&mss),
            "MSS {mss} fits the MTU (at most {max_mss})"
        );
        frame
    }

    /// `conn`'s SYN starts a host connect that is refused: the guest gets the RST|ACK of
    /// its SYN from the address it called, the host socket is closed and the flow gone.
    /// Returns the RST.
    pub fn assert_refused_connect_resets(&mut self, conn: &mut GuestTcp) -> TcpSegment {
        let (flow, _) = self.syn_and_connect(conn);
        self.fail_connect(flow, HostError::ConnectionRefused);
        let frame = the_only(self.drain(), "RST");
        let (ip, rst) = frame.tcp().expect("a TCP segment");
        assert_eq!(
            ip.src_addr,
            conn.remote.ip(),
            "from the address the guest called"
        );
        assert!(rst.rst && !rst.syn, "got {}", rst.flags());
        assert_eq!(
            (rst.src_port, rst.dst_port),
            (conn.remote.port(), conn.local_port)
        );
        assert_eq!(
            rst.ack,
            Some(conn.isn.wrapping_add(1)),
            "RST|ACK of the SYN"
        );
        assert!(self.host.close_mode(flow).is_some(), "host socket closed");
        assert_eq!(self.stats().tcp_flows, 0);
        rst.clone()
    }

    /// `flow`, the only UDP flow, just opened, idles out after `timeout`: its host socket
    /// is still open a second before and closed a second after, and the stack's count
    /// of UDP flows goes from one to none.
    pub fn assert_udp_flow_expires(&mut self, flow: FlowId, timeout: Duration) {
        let second = Duration::from_secs(1);
        let before = timeout - second;
        self.advance(before);
        let alive = before.secs();
        assert_eq!(self.host.close_mode(flow), None, "alive after {alive} s");
        assert_eq!(self.stats().udp_flows, 1);

        self.advance(second + second);
        let closed = (timeout + second).secs();
        assert!(
            self.host.close_mode(flow).is_some(),
            "closed after {closed} s"
        );
        assert_eq!(self.stats().udp_flows, 0);
    }

    /// The guest pings the gateway and the DNS forwarder (`services`, either family),
    /// sequence numbers 1 and 2: each answers itself ([`Scenario::assert_echo_reply`]) and
    /// no ping reaches the host.
    pub fn assert_services_answer_ping(&mut self, services: [IpAddr; 2], ident: u16, data: &[u8]) {
        for (target, seq_no) in services.into_iter().zip(1..) {
            self.assert_echo_reply(target, ident, seq_no, data);
        }
        assert_eq!(self.host.calls(), &[], "local pings never reach the host");
    }

    /// The guest sends `request` from its port `guest_port` to `to` (either family): one
    /// host UDP socket opens to `target` and carries it, and the host's `reply` reaches
    /// the guest from `to` (`what` names it). Returns the flow.
    pub fn assert_udp_round_trip(
        &mut self,
        guest_port: u16,
        (to, target): (SocketAddr, SocketAddr),
        (request, reply): (&[u8], &[u8]),
        what: &str,
    ) -> FlowId {
        let guest = self.guest;
        self.guest_sends(&match to {
            SocketAddr::V4(to) => guest.udp(guest_port, to, request),
            SocketAddr::V6(to) => guest.udp6(guest_port, to, request),
        });
        let (flow, opened) = the_only(self.host.udp_opens(), "udp_open");
        assert_eq!(opened, target);
        assert_eq!(self.host.udp_sent(flow), vec![request.to_vec()]);
        self.deliver_datagram(flow, reply);
        let back = SocketAddr::new(guest.addr_for(to.ip()), guest_port);
        assert_eq!(
            the_only(self.drain(), what),
            Parsed::Udp {
                src: to,
                dst: back,
                payload: reply.to_vec(),
            }
        );
        flow
    }
}

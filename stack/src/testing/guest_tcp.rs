//! [`GuestTcp`], one guest-side TCP connection over IPv4 or IPv6: the family is the
//! remote's.

use super::frames::{Guest, TcpSegment, SYN_MSS, SYN_WINDOW, WINDOW, WINDOW_SCALE};
use super::parse::Parsed;
use core::net::SocketAddr;

/// One guest-side TCP connection: keeps seq/ack so tests need no arithmetic. It is a
/// recorder, not a TCP: it accepts in-order data, counts anything out of order, and
/// builds the next segment on request. Over IPv4 or IPv6 as `remote` is: the guest's side
/// is its address of that family ([`Guest::addr_for`]).
#[derive(Debug, Clone)]
pub struct GuestTcp {
    guest: Guest,
    pub local_port: u16,
    pub remote: SocketAddr,
    pub isn: u32,
    snd_nxt: u32,
    /// The remote's ISN, once its SYN-ACK arrived.
    pub peer_isn: Option<u32>,
    rcv_nxt: u32,
    /// Highest acknowledgment the remote sent.
    pub peer_ack: Option<u32>,
    pub peer_window: u16,
    pub peer_mss: Option<u16>,
    pub peer_window_scale: Option<u8>,
    /// The MSS this side announces in its SYN (1460 unless a test sets it).
    pub mss: u16,
    received: Vec<u8>,
    pub peer_fin: bool,
    pub reset: bool,
    /// Segments that started beyond the next expected byte (a gap).
    pub out_of_order: u32,
    /// The window this side announces; at 0 it takes no data (a zero-window probe is
    /// answered with an ACK that does not move).
    pub window: u16,
    needs_ack: bool,
}

impl GuestTcp {
    pub fn new(
        guest: &Guest,
        local_port: u16,
        remote: impl Into<SocketAddr>,
        isn: u32,
    ) -> GuestTcp {
        let remote = remote.into();
        GuestTcp {
            guest: *guest,
            local_port,
            remote,
            isn,
            snd_nxt: isn,
            peer_isn: None,
            rcv_nxt: 0,
            peer_ack: None,
            peer_window: 0,
            peer_mss: None,
            peer_window_scale: None,
            mss: SYN_MSS,
            received: Vec::new(),
            peer_fin: false,
            reset: false,
            out_of_order: 0,
            window: WINDOW,
            needs_ack: false,
        }
    }

    /// The SYN (again, if called twice: a retransmission).
    pub fn syn(&mut self) -> Vec<u8> {
        self.snd_nxt = self.isn.wrapping_add(1);
        let syn = TcpSegment::linux_syn(self.local_port, self.remote.port(), self.isn, self.mss);
        self.guest.tcp_to(self.remote.ip(), &syn)
    }

    /// Whether the frame is a segment of this connection (remote → guest).
    pub fn matches(&self, frame: &Parsed) -> bool {
        frame.tcp().is_some_and(|(ip, tcp)| {
            ip.src_addr == self.remote.ip()
                && ip.dst_addr == self.guest.addr_for(self.remote.ip())
                && tcp.src_port == self.remote.port()
                && tcp.dst_port == self.local_port
        })
    }

    /// Learns from a frame of this connection; returns false (and ignores it) if the
    /// frame belongs to something else.
    pub fn on_frame(&mut self, frame: &Parsed) -> bool {
        if !self.matches(frame) {
            return false;
        }
        let Some((_, tcp)) = frame.tcp() else {
            return false;
        };
        if let Some(ack) = tcp.ack {
            let newer = match self.peer_ack {
                Some(seen) => ack.wrapping_sub(seen) as i32 > 0,
                None => true,
            };
            if newer {
                self.peer_ack = Some(ack);
            }
        }
        self.peer_window = tcp.window;
        if tcp.rst {
            self.reset = true;
            return true;
        }
        if tcp.syn {
            self.on_syn(tcp);
        } else if self.peer_isn.is_some() {
            self.on_data(tcp);
        }
        true
    }

    fn on_syn(&mut self, tcp: &TcpSegment) {
        if tcp.ack != Some(self.isn.wrapping_add(1)) {
            return;
        }
        self.peer_isn = Some(tcp.seq);
        self.rcv_nxt = tcp.seq.wrapping_add(1);
        self.peer_mss = tcp.mss;
        self.peer_window_scale = tcp.window_scale;
        self.needs_ack = true;
    }

    fn on_data(&mut self, tcp: &TcpSegment) {
        if self.window == 0 && !tcp.payload.is_empty() {
            self.needs_ack = true;
            return;
        }
        let offset = tcp.seq.wrapping_sub(self.rcv_nxt) as i32;
        if offset > 0 {
            self.out_of_order += 1;
            self.needs_ack = true;
            return;
        }
        let already = offset.unsigned_abs() as usize;
        if tcp.payload.len() > already {
            let fresh = &tcp.payload[already..];
            self.received.extend_from_slice(fresh);
            self.rcv_nxt = self.rcv_nxt.wrapping_add(fresh.len() as u32);
        }
        if !tcp.payload.is_empty() {
            self.needs_ack = true;
        }
        if tcp.fin {
            let fin_seq = tcp.seq.wrapping_add(tcp.payload.len() as u32);
            if fin_seq == self.rcv_nxt && !self.peer_fin {
                self.peer_fin = true;
                self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
            }
            self.needs_ack = true;
        }
    }

    /// A pure ACK of everything received so far.
    pub fn ack(&mut self) -> Vec<u8> {
        self.needs_ack = false;
        self.segment("", &[])
    }

    /// Data with PSH|ACK.
    pub fn send(&mut self, data: &[u8]) -> Vec<u8> {
        let frame = self.segment("P", data);
        self.snd_nxt = self.snd_nxt.wrapping_add(data.len() as u32);
        self.needs_ack = false;
        frame
    }

    /// FIN|ACK.
    pub fn fin(&mut self) -> Vec<u8> {
        let frame = self.segment("F", &[]);
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        self.needs_ack = false;
        frame
    }

    /// RST|ACK.
    pub fn rst(&mut self) -> Vec<u8> {
        self.segment("R", &[])
    }

    fn segment(&self, flags: &str, payload: &[u8]) -> Vec<u8> {
        self.guest.tcp_to(
            self.remote.ip(),
            &TcpSegment {
                src_port: self.local_port,
                dst_port: self.remote.port(),
                seq: self.snd_nxt,
                ack: self.peer_isn.map(|_| self.rcv_nxt),
                syn: flags.contains('S'),
                fin: flags.contains('F'),
                rst: flags.contains('R'),
                psh: flags.contains('P'),
                window: self.window,
                payload: payload.to_vec(),
                ..TcpSegment::default()
            },
        )
    }

    /// The SYN-ACK arrived.
    pub fn established(&self) -> bool {
        self.peer_isn.is_some()
    }

    /// Something arrived that the guest should acknowledge.
    pub fn needs_ack(&self) -> bool {
        self.needs_ack
    }

    /// Next sequence number the guest sends.
    pub fn next_seq(&self) -> u32 {
        self.snd_nxt
    }

    /// Next sequence number the guest expects (what it acknowledges).
    pub fn rcv_nxt(&self) -> u32 {
        self.rcv_nxt
    }

    /// The remote acknowledged everything the guest sent (SYN, data and FIN).
    pub fn all_acked(&self) -> bool {
        self.peer_ack == Some(self.snd_nxt)
    }

    /// In-order bytes received from the remote so far.
    pub fn received(&self) -> &[u8] {
        &self.received
    }

    pub fn take_received(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.received)
    }

    /// The guest's side of a connection the stack opens towards it (a port forward):
    /// the guest accepts the stack's `syn` with its own ISN `isn`. Returns the
    /// connection, established, and the SYN-ACK to send.
    pub fn accept(guest: &Guest, syn: &Parsed, isn: u32) -> (GuestTcp, Vec<u8>) {
        GuestTcp::accept_with_mss(guest, syn, isn, SYN_MSS)
    }

    /// [`GuestTcp::accept`] announcing the MSS `mss` in the SYN-ACK.
    pub fn accept_with_mss(guest: &Guest, syn: &Parsed, isn: u32, mss: u16) -> (GuestTcp, Vec<u8>) {
        let Some((ip, tcp)) = syn.tcp().filter(|(_, tcp)| tcp.syn && tcp.ack.is_none()) else {
            panic!("test bug: GuestTcp::accept needs the stack's SYN, got {syn:?}");
        };
        let remote = SocketAddr::new(ip.src_addr, tcp.src_port);
        let mut conn = GuestTcp::new(guest, tcp.dst_port, remote, isn);
        conn.snd_nxt = isn.wrapping_add(1);
        conn.peer_isn = Some(tcp.seq);
        conn.rcv_nxt = tcp.seq.wrapping_add(1);
        conn.peer_mss = tcp.mss;
        conn.peer_window_scale = tcp.window_scale;
        conn.mss = mss;
        let syn_ack = guest.tcp_to(
            remote.ip(),
            &TcpSegment {
                src_port: conn.local_port,
                dst_port: remote.port(),
                seq: isn,
                ack: Some(conn.rcv_nxt),
                syn: true,
                window: SYN_WINDOW,
                mss: Some(mss),
                // RFC 7323: scale only if the SYN offered it.
                window_scale: tcp.window_scale.map(|_| WINDOW_SCALE),
                sack_permitted: tcp.sack_permitted,
                ..TcpSegment::default()
            },
        );
        (conn, syn_ack)
    }
}

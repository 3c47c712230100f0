//! ICMP echo: answered locally for our virtual hosts, otherwise carried through the host's
//! unprivileged ping sockets (SOCK_DGRAM/IPPROTO_ICMP). The host kernel gives each ping
//! socket its own identifier, so replies are rewritten back to the guest's identifier.

use crate::io::{FlowId, HostError, HostIo};
use crate::link::TxQueue;
use crate::nat::{checksum_caps, send_ipv4};
use crate::stats::Stats;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Address};

pub struct IcmpFlow {
    pub last_active: Instant,
    pub idle_timeout: Duration,
    pub host_readable: bool,
}

impl IcmpFlow {
    pub fn new(now: Instant, idle_timeout: Duration) -> IcmpFlow {
        IcmpFlow {
            last_active: now,
            idle_timeout,
            host_readable: false,
        }
    }

    pub fn expires_at(&self) -> Instant {
        self.last_active + self.idle_timeout
    }

    /// Pass echo replies from the host to the guest. Returns false when stopped by a full
    /// transmit queue (resume later).
    #[allow(clippy::too_many_arguments)]
    pub fn read_host(
        &mut self,
        now: Instant,
        id: FlowId,
        guest: (Ipv4Address, u16),
        remote: Ipv4Address,
        host: &mut impl HostIo,
        tx: &mut TxQueue,
        stats: &mut Stats,
        scratch: &mut [u8],
    ) -> bool {
        self.host_readable = true;
        loop {
            if !tx.has_room() {
                return false;
            }
            let len = match host.ping_recv(id, scratch) {
                Ok(len) => len,
                Err(HostError::WouldBlock) | Err(_) => {
                    self.host_readable = false;
                    return true;
                }
            };
            let Ok(packet) = Icmpv4Packet::new_checked(&scratch[..len]) else {
                continue;
            };
            let Ok(Icmpv4Repr::EchoReply { seq_no, data, .. }) =
                Icmpv4Repr::parse(&packet, &smoltcp::phy::ChecksumCapabilities::ignored())
            else {
                continue;
            };
            self.last_active = now;
            send_echo_reply(tx, stats, remote, guest.0, guest.1, seq_no, data);
        }
    }
}

/// Queue an ICMP echo reply to the guest.
pub fn send_echo_reply(
    tx: &mut TxQueue,
    stats: &mut Stats,
    from: Ipv4Address,
    to: Ipv4Address,
    ident: u16,
    seq_no: u16,
    data: &[u8],
) {
    let reply = Icmpv4Repr::EchoReply {
        ident,
        seq_no,
        data,
    };
    send_ipv4(
        tx,
        stats,
        from,
        to,
        IpProtocol::Icmp,
        reply.buffer_len(),
        |buf| reply.emit(&mut Icmpv4Packet::new_unchecked(buf), &checksum_caps()),
    );
}

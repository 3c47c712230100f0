//! ICMP echo: answered locally for our virtual hosts, otherwise carried through the host's
//! unprivileged ping sockets (SOCK_DGRAM/IPPROTO_ICMP). The host kernel gives each ping
//! socket its own identifier, so replies are rewritten back to the guest's identifier.

use crate::io::{FlowId, HostIo};
use crate::link::TxQueue;
use crate::nat::datagram::{DatagramFlow, ReadOutcome};
use crate::nat::{send_icmpv4, send_icmpv6, Ctx, FlowKey, Quote};
use crate::stats::Stats;
use core::net::IpAddr;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr};

pub struct IcmpFlow {
    pub core: DatagramFlow,
}

impl IcmpFlow {
    pub fn new(now: Instant, idle_timeout: Duration, quote: Quote) -> IcmpFlow {
        IcmpFlow {
            core: DatagramFlow::new(now, idle_timeout, quote),
        }
    }

    /// Pass echo replies from the host to the guest, until the socket is drained, the
    /// transmit queue is full (resume later) or the socket reports an error (with
    /// IP_RECVERR, the ICMP error it queued is then relayed by the caller).
    pub fn read_host(
        &mut self,
        id: FlowId,
        key: &FlowKey,
        ctx: &mut Ctx<'_, impl HostIo>,
    ) -> ReadOutcome {
        let now = ctx.now;
        let (guest, ident, remote) = (key.guest.ip(), key.guest.port(), key.remote.ip());
        let recv = |host: &mut _, buf: &mut [u8]| HostIo::ping_recv(host, id, buf);
        self.core.drain(ctx, recv, |core, tx, stats, message| {
            if let Some((seq_no, data)) = parse_echo_reply(remote, message) {
                core.last_active = now;
                // A reply larger than the guest's MTU (a remote may answer with more than
                // was asked) goes in fragments (`send_ip`).
                core.counters.to_guest += data.len() as u64;
                send_echo_reply(tx, stats, remote, guest, ident, seq_no, data);
            }
            None
        })
    }
}

/// The sequence number and data of an echo reply a ping socket returned (ICMP or ICMPv6
/// after the family of `remote`); the kernel already checked its checksum.
fn parse_echo_reply(remote: IpAddr, message: &[u8]) -> Option<(u16, &[u8])> {
    let caps = smoltcp::phy::ChecksumCapabilities::ignored();
    match remote {
        IpAddr::V4(_) => {
            let packet = Icmpv4Packet::new_checked(message).ok()?;
            match Icmpv4Repr::parse(&packet, &caps).ok()? {
                Icmpv4Repr::EchoReply { seq_no, data, .. } => Some((seq_no, data)),
                _ => None,
            }
        }
        IpAddr::V6(remote) => {
            let packet = Icmpv6Packet::new_checked(message).ok()?;
            // The addresses only matter for the checksum, which is not verified here.
            match Icmpv6Repr::parse(&remote, &remote, &packet, &caps).ok()? {
                Icmpv6Repr::EchoReply { seq_no, data, .. } => Some((seq_no, data)),
                _ => None,
            }
        }
    }
}

/// Queue an ICMP (or ICMPv6) echo reply to the guest.
pub fn send_echo_reply(
    tx: &mut TxQueue,
    stats: &mut Stats,
    from: IpAddr,
    to: IpAddr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
) {
    match (from, to) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let reply = Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            };
            send_icmpv4(tx, stats, src, dst, &reply);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let reply = Icmpv6Repr::EchoReply {
                ident,
                seq_no,
                data,
            };
            send_icmpv6(tx, stats, src, dst, &reply);
        }
        _ => stats.tx_errors += 1,
    }
}

//! ICMP echo: answered locally for our virtual hosts, otherwise carried through the host's
//! unprivileged ping sockets (SOCK_DGRAM/IPPROTO_ICMP). The host kernel gives each ping
//! socket its own identifier, so replies are rewritten back to the guest's identifier.

use crate::io::{Datagram, FlowId, HostError, HostIo};
use crate::link::TxQueue;
use crate::nat::udp::ReadOutcome;
use crate::nat::{send_icmpv4, send_icmpv6, Ctx, FlowCounters, FlowKey, Quote};
use crate::stats::Stats;
use core::net::IpAddr;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr};

pub struct IcmpFlow {
    pub last_active: Instant,
    pub idle_timeout: Duration,
    pub host_readable: bool,
    /// The guest's latest echo request, quoted if the host's network reports an error
    /// about it (time exceeded for `ping -t 1`, say).
    pub quote: Quote,
    pub counters: FlowCounters,
}

impl IcmpFlow {
    pub fn new(now: Instant, idle_timeout: Duration, quote: Quote) -> IcmpFlow {
        IcmpFlow {
            last_active: now,
            idle_timeout,
            host_readable: false,
            quote,
            counters: FlowCounters::new(now),
        }
    }

    pub fn expires_at(&self) -> Instant {
        self.last_active + self.idle_timeout
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
        let Ctx {
            now,
            ref mut tx,
            ref mut host,
            ref mut stats,
            ref mut scratch,
        } = *ctx;
        let guest = (key.guest.ip(), key.guest.port());
        let remote = key.remote.ip();
        self.host_readable = true;
        loop {
            if !tx.has_room() {
                return ReadOutcome::Starved;
            }
            let Datagram { len, last } = match host.ping_recv(id, scratch) {
                Ok(datagram) => datagram,
                Err(HostError::WouldBlock) => {
                    self.host_readable = false;
                    return ReadOutcome::Drained;
                }
                Err(err) => {
                    self.host_readable = false;
                    return ReadOutcome::Failed(err);
                }
            };
            if let Some((seq_no, data)) = parse_echo_reply(remote, &scratch[..len]) {
                self.last_active = now;
                // A reply larger than the guest's MTU (a remote may answer with more than
                // was asked) goes in fragments (`send_ip`).
                self.counters.to_guest += data.len() as u64;
                send_echo_reply(tx, stats, remote, guest.0, guest.1, seq_no, data);
            }
            if last {
                self.host_readable = false;
                return ReadOutcome::Drained;
            }
        }
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

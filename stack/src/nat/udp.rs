//! UDP NAT: one connected host socket per guest 4-tuple. Datagrams are copied through;
//! replies come back from the address the guest sent to. Flows expire when idle.

use crate::io::{Datagram, FlowId, HostError, HostIo};
use crate::link::TxQueue;
use crate::nat::{checksum_caps, send_ip, Ctx, FlowCounters, FlowKey, Quote};
use crate::service::dns::DnsRetry;
use crate::stats::Stats;
use core::net::SocketAddr;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpProtocol, UdpPacket, UdpRepr};

pub struct UdpFlow {
    pub last_active: Instant,
    pub idle_timeout: Duration,
    /// The latest datagram from the guest, quoted if the host reports it unreachable.
    pub quote: Quote,
    /// Readiness not yet used up because the transmit queue filled.
    pub host_readable: bool,
    /// For a flow a host client started through a UDP port forward: the forward and the
    /// client's real address. Such a flow has no socket of its own; the guest's replies
    /// leave through the forward's socket.
    pub forward: Option<(u64, SocketAddr)>,
    /// A query to the DNS forwarder (bounded by `max_dns_flows`).
    pub dns: bool,
    /// For a DNS query flow when resolv.conf names more than one nameserver: what a
    /// fallback to the next one needs.
    pub dns_retry: Option<Box<DnsRetry>>,
    pub counters: FlowCounters,
}

/// What happened when the host side was read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Drained to WouldBlock.
    Drained,
    /// Stopped because the transmit queue is full; resume when it has room.
    Starved,
    /// The host reported an error for the last datagram sent (e.g. port unreachable).
    Failed(HostError),
    /// DNS: the upstream refused a query another nameserver may answer; reading stopped.
    RetryDns,
}

impl UdpFlow {
    pub fn new(now: Instant, idle_timeout: Duration, quote: Quote) -> UdpFlow {
        UdpFlow {
            last_active: now,
            idle_timeout,
            quote,
            host_readable: false,
            forward: None,
            dns: false,
            dns_retry: None,
            counters: FlowCounters::new(now),
        }
    }

    pub fn expires_at(&self) -> Instant {
        self.last_active + self.idle_timeout
    }

    /// When the flow's timer must run: its expiry, or a DNS retry before it.
    pub fn next_due(&self) -> Instant {
        let retry = self.dns_retry.as_ref().and_then(|r| r.next_deadline());
        retry.map_or(self.expires_at(), |at| at.min(self.expires_at()))
    }

    /// Read datagrams from the host and pass them to the guest as coming from the address
    /// it sent to.
    pub fn read_host(
        &mut self,
        id: FlowId,
        key: &FlowKey,
        ctx: &mut Ctx<'_, impl HostIo>,
        dns_upstreams: usize,
    ) -> ReadOutcome {
        let Ctx {
            now,
            ref mut tx,
            ref mut host,
            ref mut stats,
            ref mut scratch,
        } = *ctx;
        self.host_readable = true;
        loop {
            if !tx.has_room() {
                return ReadOutcome::Starved;
            }
            let Datagram { len, last } = match host.udp_recv(id, scratch) {
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
            self.last_active = now;
            self.counters.to_guest += len as u64;
            // Larger than the guest's MTU, it goes in fragments (`send_ip`).
            let payload = &scratch[..len];
            if let Some(retry) = self.dns_retry.as_deref_mut() {
                if !retry.on_answer(payload, dns_upstreams) {
                    self.host_readable = false;
                    return ReadOutcome::RetryDns;
                }
            }
            send_udp(tx, stats, key.remote, key.guest, payload);
            if last {
                self.host_readable = false;
                return ReadOutcome::Drained;
            }
        }
    }
}

/// Queue a UDP datagram to the guest (both endpoints of one family); in fragments when it
/// is larger than the guest's MTU, dropped (counted) only when larger than IP allows.
pub fn send_udp(
    tx: &mut TxQueue,
    stats: &mut Stats,
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
) {
    let (src, dst) = (from.ip(), to.ip());
    let repr = UdpRepr {
        src_port: from.port(),
        dst_port: to.port(),
    };
    send_ip(
        tx,
        stats,
        src,
        dst,
        IpProtocol::Udp,
        repr.header_len() + payload.len(),
        |buf| {
            repr.emit(
                &mut UdpPacket::new_unchecked(buf),
                &src.into(),
                &dst.into(),
                payload.len(),
                |p| p.copy_from_slice(payload),
                &checksum_caps(),
            )
        },
    );
}

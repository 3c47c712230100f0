//! UDP NAT: one connected host socket per guest 4-tuple. Datagrams are copied through;
//! replies come back from the address the guest sent to. Flows expire when idle.

use crate::io::{FlowId, HostIo};
use crate::link::TxQueue;
use crate::nat::datagram::{DatagramFlow, ReadOutcome};
use crate::nat::{checksum_caps, send_ip, Ctx, FlowKey, Quote};
use crate::service::dns::DnsRetry;
use crate::stats::Stats;
use core::net::SocketAddr;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpProtocol, UdpPacket, UdpRepr};

pub struct UdpFlow {
    pub core: DatagramFlow,
    /// For a flow a host client started through a UDP port forward: the forward and the
    /// client's real address. Such a flow has no socket of its own; the guest's replies
    /// leave through the forward's socket.
    pub forward: Option<(u64, SocketAddr)>,
    /// A query to the DNS forwarder (bounded by `max_dns_flows`).
    pub dns: bool,
    /// For a DNS query flow when resolv.conf names more than one nameserver: what a
    /// fallback to the next one needs.
    pub dns_retry: Option<Box<DnsRetry>>,
}

impl UdpFlow {
    pub fn new(now: Instant, idle_timeout: Duration, quote: Quote) -> UdpFlow {
        UdpFlow {
            core: DatagramFlow::new(now, idle_timeout, quote),
            forward: None,
            dns: false,
            dns_retry: None,
        }
    }

    /// When the flow's timer must run: its expiry, or a DNS retry before it.
    pub fn next_due(&self) -> Instant {
        let expires_at = self.core.expires_at();
        let retry = self.dns_retry.as_ref().and_then(|r| r.next_deadline());
        retry.map_or(expires_at, |at| at.min(expires_at))
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
        let now = ctx.now;
        let dns_retry = &mut self.dns_retry;
        let recv = |host: &mut _, buf: &mut [u8]| HostIo::udp_recv(host, id, buf);
        self.core.drain(ctx, recv, |core, tx, stats, payload| {
            core.last_active = now;
            core.counters.to_guest += payload.len() as u64;
            if let Some(retry) = dns_retry.as_deref_mut() {
                if !retry.on_answer(payload, dns_upstreams) {
                    return Some(ReadOutcome::RetryDns);
                }
            }
            // Larger than the guest's MTU, it goes in fragments (`send_ip`).
            send_udp(tx, stats, key.remote, key.guest, payload);
            None
        })
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

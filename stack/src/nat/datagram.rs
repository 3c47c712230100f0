//! What UDP and ICMP echo flows share ([`DatagramFlow`]): datagrams through one host socket,
//! an idle expiry, the guest's latest datagram quoted for the host network's ICMP errors
//! about it, the counters, and the reading of the host socket towards the guest until it is
//! drained (edge-triggered readiness) or the transmit queue is full.

use crate::io::{Datagram, HostError, HostIo, HostResult};
use crate::link::TxQueue;
use crate::nat::{Ctx, FlowCounters, Quote};
use crate::stats::Stats;
use smoltcp::time::{Duration, Instant};

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

/// The part of a UDP or ICMP echo flow that does not depend on the protocol.
pub struct DatagramFlow {
    pub last_active: Instant,
    pub idle_timeout: Duration,
    /// The guest's latest datagram (or echo request), quoted if the host's network reports
    /// an error about it (port unreachable, time exceeded for `ping -t 1`, ...).
    pub quote: Quote,
    /// Readiness not yet used up because the transmit queue filled.
    pub host_readable: bool,
    pub counters: FlowCounters,
}

impl DatagramFlow {
    pub fn new(now: Instant, idle_timeout: Duration, quote: Quote) -> DatagramFlow {
        DatagramFlow {
            last_active: now,
            idle_timeout,
            quote,
            host_readable: false,
            counters: FlowCounters::new(now),
        }
    }

    pub fn expires_at(&self) -> Instant {
        self.last_active + self.idle_timeout
    }

    /// The guest sent `len` bytes on this flow, in the datagram `quote` begins.
    pub fn guest_sent(&mut self, now: Instant, len: usize, quote: Quote) {
        self.last_active = now;
        self.counters.from_guest += len as u64;
        self.quote = quote;
    }

    /// Read datagrams from the host socket with `recv` and hand each to `deliver`, until
    /// the socket is drained (`WouldBlock`, or the datagram the host marks as its last),
    /// the transmit queue is full (resume later), the socket reports an error, or `deliver`
    /// stops the reading with an outcome of its own.
    pub fn drain<H: HostIo>(
        &mut self,
        ctx: &mut Ctx<'_, H>,
        mut recv: impl FnMut(&mut H, &mut [u8]) -> HostResult<Datagram>,
        mut deliver: impl FnMut(
            &mut DatagramFlow,
            &mut TxQueue,
            &mut Stats,
            &[u8],
        ) -> Option<ReadOutcome>,
    ) -> ReadOutcome {
        self.host_readable = true;
        loop {
            if !ctx.tx.has_room() {
                return ReadOutcome::Starved;
            }
            let Datagram { len, last } = match recv(ctx.host, ctx.scratch) {
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
            if let Some(outcome) = deliver(self, ctx.tx, ctx.stats, &ctx.scratch[..len]) {
                self.host_readable = false;
                return outcome;
            }
            if last {
                self.host_readable = false;
                return ReadOutcome::Drained;
            }
        }
    }
}

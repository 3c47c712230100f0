//! The DNS forwarder's fallback between upstreams (beyond libslirp, which only ever uses the
//! first nameserver): a query the upstream leaves unanswered for `Timeouts::dns_retry`, or
//! answers with SERVFAIL or REFUSED, is sent again to the next nameserver of resolv.conf,
//! and new queries go to the one that answered.
//!
//! The forwarder stays NAT (one host socket per guest flow); only the start of each query
//! (its id and bytes) is kept, for a bounded number per flow, until it is answered.

use smoltcp::time::Instant;
use std::collections::VecDeque;

/// RCODE 2: the server could not answer (another one may).
pub const SERVFAIL: u8 = 2;
/// RCODE 5: the server will not answer us (another one may).
pub const REFUSED: u8 = 5;

/// A query of the guest not answered yet.
#[derive(Debug, Clone)]
pub struct PendingQuery {
    pub id: u16,
    pub query: Vec<u8>,
    /// How many upstreams it has been sent to.
    pub tries: usize,
    /// When it goes to the next upstream if still unanswered.
    pub deadline: Instant,
}

/// Per DNS flow: which upstream its socket points at and the queries in flight there.
#[derive(Debug, Clone, Default)]
pub struct DnsRetry {
    /// Index in the stack's upstream list.
    pub upstream: usize,
    pub pending: VecDeque<PendingQuery>,
    /// A pending query got a real answer since the stack last looked (it then prefers
    /// this flow's upstream for new queries).
    pub answered: bool,
}

impl DnsRetry {
    pub fn new(upstream: usize) -> DnsRetry {
        DnsRetry {
            upstream,
            ..DnsRetry::default()
        }
    }

    /// Remember a query just sent to this flow's upstream, at most `limit` per flow.
    /// Returns true when the oldest one had to be forgotten (it will not be retried).
    pub fn track(&mut self, query: &[u8], deadline: Instant, limit: usize) -> bool {
        let Some(id) = query_id(query) else {
            return false;
        };
        if limit == 0 || self.pending.iter().any(|p| p.id == id) {
            // A resend of a query in flight (the guest's own retry): already tracked.
            return false;
        }
        let forgot = self.pending.len() >= limit;
        if forgot {
            self.pending.pop_front();
        }
        self.pending.push_back(PendingQuery {
            id,
            query: query.to_vec(),
            tries: 1,
            deadline,
        });
        forgot
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.deadline).min()
    }

    pub fn is_due(&self, now: Instant) -> bool {
        self.next_deadline().is_some_and(|at| at <= now)
    }

    /// What to do with a datagram from the upstream: `true` to pass it to the guest,
    /// `false` to try the next upstream instead (a SERVFAIL/REFUSED answer to a query
    /// that has upstreams left to try among `upstreams`).
    pub fn on_answer(&mut self, msg: &[u8], upstreams: usize) -> bool {
        let Some((id, rcode)) = answer(msg) else {
            return true;
        };
        let Some(pos) = self.pending.iter().position(|p| p.id == id) else {
            return true;
        };
        let refused = matches!(rcode, SERVFAIL | REFUSED);
        if refused && self.pending[pos].tries < upstreams {
            return false;
        }
        self.pending.remove(pos);
        if !refused {
            self.answered = true;
        }
        true
    }
}

/// The id of a DNS query (QR bit clear), or `None` if `msg` is not one.
pub fn query_id(msg: &[u8]) -> Option<u16> {
    (msg.len() >= 12 && msg[2] & 0x80 == 0).then(|| u16::from_be_bytes([msg[0], msg[1]]))
}

/// The id and RCODE of a DNS answer (QR bit set), or `None` if `msg` is not one.
pub fn answer(msg: &[u8]) -> Option<(u16, u8)> {
    (msg.len() >= 12 && msg[2] & 0x80 != 0)
        .then(|| (u16::from_be_bytes([msg[0], msg[1]]), msg[3] & 0x0f))
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00";

    fn reply(rcode: u8) -> Vec<u8> {
        let mut msg = QUERY.to_vec();
        msg[2] |= 0x80;
        msg[3] = 0x80 | rcode;
        msg
    }

    #[test]
    fn tracks_queries_once_and_bounded() {
        let mut retry = DnsRetry::new(0);
        let at = Instant::from_secs(1);
        assert!(!retry.track(QUERY, at, 2));
        assert!(!retry.track(QUERY, at, 2), "same id: tracked once");
        let mut other = QUERY.to_vec();
        other[1] = 0x35;
        assert!(!retry.track(&other, at, 2));
        other[1] = 0x36;
        assert!(retry.track(&other, at, 2), "third beyond the limit of 2");
        assert_eq!(retry.pending.len(), 2);
        assert!(!retry.track(&reply(0), at, 2), "answers are not queries");
    }

    #[test]
    fn refusals_ask_for_the_next_upstream_while_one_is_left() {
        let mut retry = DnsRetry::new(0);
        retry.track(QUERY, Instant::from_secs(1), 8);
        assert!(!retry.on_answer(&reply(REFUSED), 2));
        assert!(!retry.on_answer(&reply(SERVFAIL), 2));
        retry.pending[0].tries = 2;
        assert!(
            retry.on_answer(&reply(SERVFAIL), 2),
            "last upstream: passed on"
        );
        assert!(!retry.answered);
        retry.track(QUERY, Instant::from_secs(1), 8);
        assert!(retry.on_answer(&reply(0), 2));
        assert!(retry.answered && retry.pending.is_empty());
    }
}

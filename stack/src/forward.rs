//! The host port forward ("hostfwd") table behind the control socket.
//!
//! Modelled on rootlesskit's port `Manager`: a forward is a `Spec` (protocol, host address
//! and port, guest address and port) plus an id; forwards are added, listed and removed.
//! The table only keeps the bookkeeping. Binding the host socket is the caller's job and
//! happens between [`ForwardTable::check`] and [`ForwardTable::insert`], so that a forward
//! is listed only once its listener really exists:
//!
//! ```text
//! table.check(&spec)?;          // conflicts and the limit, before touching the host
//! let listener = bind(&spec)?;  // the real bind; failure → "slirp_add_hostfwd failed"
//! let id = table.insert(spec)?; // cannot fail after a successful check
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::io::HostError;

/// A reasonable bound for [`ForwardTable::new`]: every forward holds at least one host socket.
pub const DEFAULT_MAX_FORWARDS: usize = 1024;

/// The transport a forward carries. rootlesskit's `tcp4`/`tcp6`/`udp4`/`udp6` are mapped
/// to these by rootlesskit itself before they reach us; the address family is in the addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardProto {
    Tcp,
    Udp,
}

impl ForwardProto {
    /// The name used on the wire (`"proto"` in requests and in `list_hostfwd`).
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardProto::Tcp => "tcp",
            ForwardProto::Udp => "udp",
        }
    }
}

impl fmt::Display for ForwardProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client asked for: listen on `host_addr:host_port`, carry to `guest_addr:guest_port`.
/// Defaults (empty host or guest address) are already filled in by the request parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSpec {
    pub proto: ForwardProto,
    pub host_addr: IpAddr,
    pub host_port: u16,
    pub guest_addr: IpAddr,
    pub guest_port: u16,
}

/// A forward in the table: its spec and the id the client uses to remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub id: u64,
    pub spec: ForwardSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The host side overlaps an existing forward: the bind would fail, or worse, succeed
    /// and silently take traffic meant for the other forward.
    #[error("host {proto} port {host_port} overlaps forward {id}")]
    Conflict {
        id: u64,
        proto: ForwardProto,
        host_port: u16,
    },
    #[error("forward table full ({limit} forwards)")]
    Limit { limit: usize },
    #[error("no forward with id {id}")]
    NotFound { id: u64 },
}

/// Why a forward could not be added, in more detail than the API's one error text
/// (`slirp_add_hostfwd failed`): `--publish` names the cause at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddForwardError {
    #[error(transparent)]
    Table(#[from] ForwardError),
    /// An IPv6 guest address while the virtual network has no IPv6 side (no `-6`).
    #[error("guest address {0} is IPv6 but IPv6 is not enabled (-6)")]
    Ipv6Disabled(IpAddr),
    /// The host refused the listening socket (port taken, privileged port...).
    #[error("cannot listen on {proto} {addr}: {error}")]
    Listen {
        proto: ForwardProto,
        addr: SocketAddr,
        error: HostError,
    },
}

/// The forwards currently published, keyed by id.
///
/// Ids count from 1 and are never reused, even after removal, so that a client holding a
/// stale id can never remove somebody else's forward. The table is bounded (house rule:
/// every table has a named limit).
#[derive(Debug)]
pub struct ForwardTable {
    /// Keyed by id, so listing comes out in id order (= the order of adding).
    forwards: BTreeMap<u64, Forward>,
    next_id: u64,
    limit: usize,
}

impl ForwardTable {
    pub fn new(limit: usize) -> Self {
        ForwardTable {
            forwards: BTreeMap::new(),
            next_id: 1,
            limit,
        }
    }

    /// Whether `spec` could be added now: the table has room and no existing forward of the
    /// same protocol listens on an overlapping host address and the same port.
    ///
    /// A linear scan is fine here: this runs once per API request, never per packet, and the
    /// table is bounded.
    pub fn check(&self, spec: &ForwardSpec) -> Result<(), ForwardError> {
        if self.forwards.len() >= self.limit {
            return Err(ForwardError::Limit { limit: self.limit });
        }
        match self
            .forwards
            .values()
            .find(|fwd| host_sides_overlap(&fwd.spec, spec))
        {
            Some(existing) => Err(ForwardError::Conflict {
                id: existing.id,
                proto: spec.proto,
                host_port: spec.host_port,
            }),
            None => Ok(()),
        }
    }

    /// The id the next successful [`insert`](Self::insert) will return, so the host
    /// listener can be opened under it before the forward is recorded.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Adds `spec` and returns its new id. Checks again, so that the table's invariants
    /// hold even for a caller that skipped [`check`](Self::check).
    pub fn insert(&mut self, spec: ForwardSpec) -> Result<u64, ForwardError> {
        self.check(&spec)?;
        let id = self.next_id;
        // u64 ids cannot run out: at a million adds a second that takes 584,000 years.
        self.next_id += 1;
        self.forwards.insert(id, Forward { id, spec });
        Ok(id)
    }

    /// Removes the forward and hands it back, so the caller can close its host listener.
    pub fn remove(&mut self, id: u64) -> Result<Forward, ForwardError> {
        self.forwards
            .remove(&id)
            .ok_or(ForwardError::NotFound { id })
    }

    pub fn get(&self, id: u64) -> Option<&Forward> {
        self.forwards.get(&id)
    }

    /// All forwards in id order, which is also the order they were added in (as the
    /// reference lists them).
    pub fn list(&self) -> impl Iterator<Item = &Forward> {
        self.forwards.values()
    }

    pub fn len(&self) -> usize {
        self.forwards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.forwards.is_empty()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Whether two forwards would compete for the same host socket.
fn host_sides_overlap(a: &ForwardSpec, b: &ForwardSpec) -> bool {
    a.proto == b.proto && a.host_port == b.host_port && host_addrs_overlap(a.host_addr, b.host_addr)
}

/// Whether listeners on `a` and `b` (same port) would receive some of the same traffic.
///
/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are the IPv4 address for this purpose,
/// as they are to a dual-stack socket.
fn host_addrs_overlap(a: IpAddr, b: IpAddr) -> bool {
    let (a, b) = (a.to_canonical(), b.to_canonical());
    a == b || covers(a, b) || covers(b, a)
}

/// Whether a listener on the wildcard `wide` also takes what a listener on `other` would.
fn covers(wide: IpAddr, other: IpAddr) -> bool {
    match wide {
        // On Linux `::` is dual-stack unless the socket sets IPV6_V6ONLY (net.ipv6.bindv6only
        // defaults to 0), so it also covers every IPv4 address; binding both fails anyway.
        IpAddr::V6(addr) => addr.is_unspecified(),
        IpAddr::V4(addr) => addr.is_unspecified() && other.is_ipv4(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(proto: ForwardProto, host_addr: &str, host_port: u16) -> ForwardSpec {
        ForwardSpec {
            proto,
            host_addr: host_addr.parse().expect("test address"),
            host_port,
            guest_addr: "10.0.2.100".parse().expect("test address"),
            guest_port: 80,
        }
    }

    fn tcp(host_addr: &str, host_port: u16) -> ForwardSpec {
        spec(ForwardProto::Tcp, host_addr, host_port)
    }

    fn ids(table: &ForwardTable) -> Vec<u64> {
        table.list().map(|fwd| fwd.id).collect()
    }

    #[test]
    fn ids_count_from_one() {
        let mut table = ForwardTable::new(10);
        assert!(table.is_empty());
        assert_eq!(table.insert(tcp("0.0.0.0", 8080)), Ok(1));
        assert_eq!(table.insert(tcp("0.0.0.0", 8081)), Ok(2));
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(1).map(|fwd| fwd.spec.host_port), Some(8080));
        assert_eq!(table.get(3), None);
    }

    #[test]
    fn ids_are_never_reused_after_remove() {
        let mut table = ForwardTable::new(10);
        assert_eq!(table.insert(tcp("0.0.0.0", 8080)), Ok(1));
        assert_eq!(table.insert(tcp("0.0.0.0", 8081)), Ok(2));
        assert_eq!(table.remove(2).map(|fwd| fwd.id), Ok(2));
        // The freed id and even the freed port spec come back with a fresh id.
        assert_eq!(table.insert(tcp("0.0.0.0", 8081)), Ok(3));
        assert_eq!(
            table.remove(1).map(|fwd| fwd.spec),
            Ok(tcp("0.0.0.0", 8080))
        );
        assert_eq!(table.remove(3).map(|fwd| fwd.id), Ok(3));
        assert!(table.is_empty());
        assert_eq!(table.insert(tcp("0.0.0.0", 8080)), Ok(4));
    }

    #[test]
    fn remove_unknown_or_twice_is_not_found() {
        let mut table = ForwardTable::new(10);
        assert_eq!(table.remove(1), Err(ForwardError::NotFound { id: 1 }));
        assert_eq!(table.insert(tcp("0.0.0.0", 8080)), Ok(1));
        assert!(table.remove(1).is_ok());
        assert_eq!(table.remove(1), Err(ForwardError::NotFound { id: 1 }));
        assert_eq!(table.remove(0), Err(ForwardError::NotFound { id: 0 }));
    }

    #[test]
    fn list_is_in_id_order() {
        let mut table = ForwardTable::new(10);
        for port in [9000, 80, 5000, 1] {
            assert!(table.insert(tcp("127.0.0.1", port)).is_ok());
        }
        assert!(table.remove(2).is_ok());
        assert!(table.insert(tcp("127.0.0.1", 2)).is_ok());
        assert_eq!(ids(&table), [1, 3, 4, 5]);
        let ports: Vec<u16> = table.list().map(|fwd| fwd.spec.host_port).collect();
        assert_eq!(ports, [9000, 5000, 1, 2]);
    }

    #[test]
    fn limit_is_enforced_and_frees_up_on_remove() {
        let mut table = ForwardTable::new(2);
        assert_eq!(table.limit(), 2);
        assert_eq!(table.insert(tcp("0.0.0.0", 1)), Ok(1));
        assert_eq!(table.insert(tcp("0.0.0.0", 2)), Ok(2));
        assert_eq!(
            table.check(&tcp("0.0.0.0", 3)),
            Err(ForwardError::Limit { limit: 2 })
        );
        assert_eq!(
            table.insert(tcp("0.0.0.0", 3)),
            Err(ForwardError::Limit { limit: 2 })
        );
        assert_eq!(table.len(), 2);
        assert!(table.remove(1).is_ok());
        // A refused insert consumed no id.
        assert_eq!(table.insert(tcp("0.0.0.0", 3)), Ok(3));
        assert_eq!(
            ForwardTable::new(0).check(&tcp("0.0.0.0", 1)),
            Err(ForwardError::Limit { limit: 0 })
        );
    }

    /// Adds `first`, then reports whether `second` conflicts with it.
    fn conflicts(first: ForwardSpec, second: ForwardSpec) -> bool {
        let mut table = ForwardTable::new(10);
        assert_eq!(table.insert(first), Ok(1));
        match table.check(&second) {
            Ok(()) => false,
            Err(ForwardError::Conflict { id: 1, .. }) => true,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn same_address_and_port_conflicts() {
        assert!(conflicts(tcp("127.0.0.1", 8080), tcp("127.0.0.1", 8080)));
        assert!(conflicts(tcp("0.0.0.0", 8080), tcp("0.0.0.0", 8080)));
        assert!(conflicts(tcp("::1", 8080), tcp("::1", 8080)));
        // The guest side does not matter: one host socket cannot go two places.
        let mut other_guest = tcp("127.0.0.1", 8080);
        other_guest.guest_port = 81;
        assert!(conflicts(tcp("127.0.0.1", 8080), other_guest));
    }

    #[test]
    fn different_port_or_proto_does_not_conflict() {
        assert!(!conflicts(tcp("0.0.0.0", 8080), tcp("0.0.0.0", 8081)));
        assert!(!conflicts(
            tcp("0.0.0.0", 8080),
            spec(ForwardProto::Udp, "0.0.0.0", 8080)
        ));
        assert!(!conflicts(
            spec(ForwardProto::Udp, "::", 53),
            tcp("0.0.0.0", 53)
        ));
    }

    #[test]
    fn ipv4_wildcard_overlaps_every_ipv4_address() {
        assert!(conflicts(tcp("0.0.0.0", 8080), tcp("127.0.0.1", 8080)));
        assert!(conflicts(tcp("192.168.1.5", 8080), tcp("0.0.0.0", 8080)));
        assert!(!conflicts(tcp("127.0.0.1", 8080), tcp("127.0.0.2", 8080)));
        // 0.0.0.0 does not take IPv6 traffic.
        assert!(!conflicts(tcp("0.0.0.0", 8080), tcp("::1", 8080)));
        assert!(!conflicts(tcp("::1", 8080), tcp("0.0.0.0", 8080)));
    }

    #[test]
    fn ipv6_wildcard_overlaps_everything() {
        assert!(conflicts(tcp("::", 8080), tcp("::1", 8080)));
        assert!(conflicts(tcp("::1", 8080), tcp("::", 8080)));
        assert!(conflicts(tcp("::", 8080), tcp("0.0.0.0", 8080)));
        assert!(conflicts(tcp("0.0.0.0", 8080), tcp("::", 8080)));
        assert!(conflicts(tcp("::", 8080), tcp("127.0.0.1", 8080)));
        assert!(conflicts(tcp("10.1.2.3", 8080), tcp("::", 8080)));
        assert!(!conflicts(tcp("::1", 8080), tcp("fd00::1", 8080)));
    }

    #[test]
    fn ipv4_mapped_addresses_are_their_ipv4_address() {
        assert!(conflicts(
            tcp("127.0.0.1", 8080),
            tcp("::ffff:127.0.0.1", 8080)
        ));
        assert!(conflicts(
            tcp("0.0.0.0", 8080),
            tcp("::ffff:127.0.0.1", 8080)
        ));
        assert!(!conflicts(tcp("::ffff:127.0.0.1", 8080), tcp("::1", 8080)));
    }

    #[test]
    fn conflict_names_the_existing_forward() {
        let mut table = ForwardTable::new(10);
        assert_eq!(table.insert(tcp("127.0.0.1", 80)), Ok(1));
        assert_eq!(table.insert(tcp("127.0.0.1", 8080)), Ok(2));
        let err = table.insert(tcp("0.0.0.0", 8080));
        assert_eq!(
            err,
            Err(ForwardError::Conflict {
                id: 2,
                proto: ForwardProto::Tcp,
                host_port: 8080
            })
        );
        assert_eq!(
            err.map_err(|e| e.to_string()),
            Err("host tcp port 8080 overlaps forward 2".to_string())
        );
        // A refused insert consumed no id.
        assert_eq!(table.insert(tcp("0.0.0.0", 8081)), Ok(3));
    }

    #[test]
    fn proto_names() {
        assert_eq!(ForwardProto::Tcp.as_str(), "tcp");
        assert_eq!(ForwardProto::Udp.to_string(), "udp");
    }
}

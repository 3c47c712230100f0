//! Port forwards (`--publish`, the API's `add_hostfwd`) and the control API's requests:
//! adding and removing a forward, accepting a TCP forward's clients as flows that connect
//! to the guest, carrying a UDP forward's datagrams to the guest, and `list_flows`.

use super::{Flow, Stack};
use crate::api::{self, ApiError, ForwardRequest, Request};
use crate::forward::{AddForwardError, Forward, ForwardError, ForwardProto, ForwardSpec};
use crate::io::{CloseMode, FlowId, HostError, HostIo};
use crate::link::arp;
use crate::nat::tcp::TcpFlow;
use crate::nat::udp::UdpFlow;
use crate::nat::{FlowKey, Proto, Quote};
use core::net::{IpAddr, SocketAddr};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpProtocol, Ipv4Repr};

/// A port forward whose accept (or receive) failed for lack of host resources is tried
/// again after this long: its socket is edge-triggered, so no new readiness would come for
/// the connections already waiting in its backlog.
const FORWARD_RETRY: Duration = Duration::from_millis(100);

impl Stack {
    /// One control-socket request (the bytes a client sent); returns the reply bytes.
    pub fn handle_api_request(
        &mut self,
        now: Instant,
        request: &[u8],
        host: &mut impl HostIo,
    ) -> Vec<u8> {
        self.now = now;
        let result = match api::parse_request(request) {
            Ok(Request::AddHostfwd(fwd)) => self
                .add_forward(&fwd, host)
                .map(api::add_reply)
                .map_err(ApiError::from),
            Ok(Request::ListHostfwd) => {
                let entries: Vec<Forward> = self.forwards.list().cloned().collect();
                Ok(api::list_reply(&entries))
            }
            Ok(Request::RemoveHostfwd { id }) => {
                self.remove_forward(id, host).map(|()| api::remove_reply())
            }
            Ok(Request::GetStats) => Ok(api::stats_reply(&self.stats())),
            Ok(Request::ListFlows) => Ok(api::flows_reply(&self.flow_entries(now))),
            Err(err) => Err(err),
        };
        result.unwrap_or_else(|err| {
            log::debug!("API request refused: {err}");
            api::error_reply(&err)
        })
    }

    /// Every active flow, in id order, for `list_flows`.
    fn flow_entries(&self, now: Instant) -> Vec<api::FlowEntry> {
        let mut ids: Vec<FlowId> = self.flows.ids().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| {
                let key = self.flows.key(id)?;
                let (proto, state, counters) = match self.flows.get(id)? {
                    Flow::Tcp(tcp) if tcp.is_connecting() => {
                        ("tcp", "Connecting".to_string(), tcp.counters)
                    }
                    Flow::Tcp(tcp) => ("tcp", format!("{:?}", tcp.state()), tcp.counters),
                    Flow::Udp(udp) => ("udp", "Open".to_string(), udp.core.counters),
                    Flow::Icmp(icmp) => ("icmp", "Open".to_string(), icmp.core.counters),
                };
                Some(api::FlowEntry {
                    id: id.to_u64(),
                    proto,
                    guest: key.guest.to_string(),
                    remote: key.remote.to_string(),
                    host: counters.host.map_or_else(String::new, |h| h.to_string()),
                    state,
                    rx_bytes: counters.from_guest,
                    tx_bytes: counters.to_guest,
                    age_ms: (now - counters.created.min(now)).total_millis(),
                })
            })
            .collect()
    }

    /// The forwards currently published.
    pub fn forwards(&self) -> impl Iterator<Item = &Forward> {
        self.forwards.list()
    }

    /// Adds a forward exactly as an `add_hostfwd` request does (same checks, next id, listed
    /// by `list_hostfwd`, removable by `remove_hostfwd`): the forwards published at start
    /// (`--publish`) go through here. The error says why, where the API only says
    /// `slirp_add_hostfwd failed`.
    pub fn add_hostfwd(
        &mut self,
        now: Instant,
        request: &ForwardRequest,
        host: &mut impl HostIo,
    ) -> Result<u64, AddForwardError> {
        self.now = now;
        self.add_forward(request, host)
    }

    fn add_forward(
        &mut self,
        request: &ForwardRequest,
        host: &mut impl HostIo,
    ) -> Result<u64, AddForwardError> {
        let spec = request.resolve(self.config.network.guest());
        if let Err(err) = self.forwards.check(&spec) {
            if matches!(err, ForwardError::Limit { .. }) {
                self.stats.forward_limit_hits += 1;
            }
            return Err(err.into());
        }
        // An IPv6 guest address needs the IPv6 side of the virtual network.
        if spec.guest_addr.is_ipv6() && !self.config.enable_ipv6 {
            return Err(AddForwardError::Ipv6Disabled(spec.guest_addr));
        }
        let id = self.forwards.next_id();
        let addr = SocketAddr::new(spec.host_addr, spec.host_port);
        let listening = match spec.proto {
            ForwardProto::Tcp => host.tcp_listen(id, addr),
            ForwardProto::Udp => host.udp_bind(id, addr),
        };
        if let Err(error) = listening {
            log::info!("cannot listen on {} {addr}: {error}", spec.proto.as_str());
            host.forward_close(id);
            return Err(AddForwardError::Listen {
                proto: spec.proto,
                addr,
                error,
            });
        }
        let inserted = self.forwards.insert(spec.clone());
        debug_assert_eq!(inserted, Ok(id));
        log::info!(
            "forward {id} added: {} {addr} -> {}:{}",
            spec.proto.as_str(),
            spec.guest_addr,
            spec.guest_port
        );
        Ok(id)
    }

    fn remove_forward(&mut self, id: u64, host: &mut impl HostIo) -> Result<(), ApiError> {
        self.forwards.remove(id)?;
        host.forward_close(id);
        self.starved_forwards.retain(|&forward| forward != id);
        self.retry_forwards.retain(|&forward| forward != id);
        log::info!("forward {id} removed");
        Ok(())
    }

    /// A forward's listening socket is readable: new connections or datagrams.
    pub fn handle_forward_event(&mut self, now: Instant, forward: u64, host: &mut impl HostIo) {
        self.now = now;
        let Some(spec) = self.forwards.get(forward).map(|f| f.spec.clone()) else {
            return;
        };
        match spec.proto {
            ForwardProto::Tcp => self.accept_forwarded(now, forward, &spec, host),
            ForwardProto::Udp => self.receive_forwarded(now, forward, &spec, host),
        }
    }

    /// Accept every pending connection of a TCP forward (edge-triggered: until WouldBlock)
    /// and connect each to the guest.
    fn accept_forwarded(
        &mut self,
        now: Instant,
        forward: u64,
        spec: &ForwardSpec,
        host: &mut impl HostIo,
    ) {
        let guest = SocketAddr::new(spec.guest_addr, spec.guest_port);
        loop {
            // Room first: dropping a flow from TIME-WAIT frees a slot, which changes the id
            // the next insert gets, and the accepted socket is named by that id.
            if self.stats.tcp_flows as usize >= self.config.limits.max_tcp_flows {
                self.evict_time_wait(host);
            }
            let id = self.flows.next_id();
            let peer = match host.tcp_accept(forward, id) {
                Ok(peer) => peer,
                Err(HostError::WouldBlock) => return,
                // ECONNABORTED: that client gave up while queued; the next may be there.
                Err(HostError::ConnectionReset) => continue,
                Err(err) => {
                    log::debug!("forward {forward}: accept failed: {err}");
                    self.stats.host_socket_errors += 1;
                    self.retry_forward(now, forward, err);
                    return;
                }
            };
            let key = self.forwarded_key(Proto::Tcp, peer, guest);
            let params = if self.flows.lookup(&key).is_some()
                || !self.forward_room(forward)
                || !self.tcp_room(host)
            {
                None
            } else {
                self.tcp_params(now)
            };
            let Some(params) = params else {
                log::debug!("forward {forward}: refusing {peer} (a limit, or 4-tuple in use)");
                host.close(id, CloseMode::Abort);
                self.flows.skip_id(id);
                continue;
            };
            // Learn the guest's MAC first: the SYN below goes out at once, and a Linux
            // guest drops TCP sent to the broadcast MAC.
            self.ask_guest_mac(guest.ip());
            let spare = self.spare_flow(&params);
            let Some(flow) = TcpFlow::connect_to_guest(
                now,
                (key.remote.ip().into(), key.remote.port()),
                (guest.ip().into(), guest.port()),
                params,
                &mut self.tx,
                spare,
            ) else {
                host.close(id, CloseMode::Abort);
                self.flows.skip_id(id);
                continue;
            };
            let mut flow = flow;
            flow.counters.host = Some(peer);
            let inserted = self.insert_tcp(key, flow);
            debug_assert_eq!(inserted, id);
            self.forward_of.insert(id, forward);
            *self.flows_per_forward.entry(forward).or_insert(0) += 1;
            log::debug!("{id:?}: forward {forward}: {peer} -> guest {guest}");
            if let Some(Flow::Tcp(tcp)) = self.flows.get_mut(id) {
                let verdict = tcp.handle_timer(now, id, &mut self.tx, host);
                self.apply_tcp_verdict(now, id, verdict, host);
            }
        }
    }

    /// A forward's socket failed before it was drained (EMFILE on accept, say): what waits
    /// in it would get no new edge-triggered readiness, so it is tried again shortly.
    fn retry_forward(&mut self, now: Instant, forward: u64, err: HostError) {
        if err == HostError::Exhausted {
            self.stats.host_exhausted += 1;
        }
        if !self.retry_forwards.contains(&forward) {
            self.retry_forwards.push(forward);
        }
        if self.retry_forwards_at.is_none() {
            self.retry_forwards_at = Some(now + FORWARD_RETRY);
        }
    }

    /// Carry datagrams from a UDP forward's socket to the guest, one flow per client.
    fn receive_forwarded(
        &mut self,
        now: Instant,
        forward: u64,
        spec: &ForwardSpec,
        host: &mut impl HostIo,
    ) {
        let guest = SocketAddr::new(spec.guest_addr, spec.guest_port);
        loop {
            if !self.tx.has_room() {
                self.starved_forwards.push(forward);
                return;
            }
            let (len, peer) = match host.udp_recv_from(forward, &mut self.scratch) {
                Ok(received) => received,
                Err(HostError::WouldBlock) => return,
                Err(err) => {
                    log::debug!("forward {forward}: receive failed: {err}");
                    self.retry_forward(now, forward, err);
                    return;
                }
            };
            let key = self.forwarded_key(Proto::Udp, peer, guest);
            if self.flows.lookup(&key).is_none() {
                let quote = match (key.remote.ip(), guest.ip()) {
                    (IpAddr::V4(src), IpAddr::V4(dst)) => Quote::new(
                        &Ipv4Repr {
                            src_addr: src,
                            dst_addr: dst,
                            next_header: IpProtocol::Udp,
                            payload_len: 8,
                            hop_limit: crate::nat::HOP_LIMIT,
                        },
                        &[],
                    ),
                    (IpAddr::V6(src), IpAddr::V6(dst)) => Quote::new_v6(
                        &smoltcp::wire::Ipv6Repr {
                            src_addr: src,
                            dst_addr: dst,
                            next_header: IpProtocol::Udp,
                            payload_len: 8,
                            hop_limit: crate::nat::HOP_LIMIT,
                        },
                        &[],
                    ),
                    _ => return,
                };
                let mut flow = UdpFlow::new(now, self.config.timeouts.udp_idle, quote);
                flow.forward = Some((forward, peer));
                flow.core.counters.host = Some(peer);
                // Such a flow has no host socket of its own: nothing to open.
                if self
                    .open_datagram_flow(key, Flow::Udp(flow), host, |_, _| Ok(()))
                    .is_none()
                {
                    return;
                }
            }
            if let Some(id) = self.flows.lookup(&key) {
                if let Some(Flow::Udp(udp)) = self.flows.get_mut(id) {
                    udp.core.last_active = now;
                    // Replies go to whoever sent last through whichever forward is current
                    // (a forward removed and added again gets a new id).
                    udp.forward = Some((forward, peer));
                    udp.core.counters.host = Some(peer);
                    udp.core.counters.to_guest += len as u64;
                }
            }
            self.ask_guest_mac(guest.ip());
            let payload = &self.scratch[..len];
            crate::nat::udp::send_udp(&mut self.tx, &mut self.stats, key.remote, guest, payload);
        }
    }

    /// The flow a forwarded client `peer` makes with `guest`: the guest sees it come from
    /// where the address rules make `peer` visible.
    fn forwarded_key(&self, proto: Proto, peer: SocketAddr, guest: SocketAddr) -> FlowKey {
        let remote = self.rules().guest_visible(peer, guest.ip());
        FlowKey {
            proto,
            guest,
            remote,
        }
    }

    /// Before we start talking to the guest we must know its MAC (a Linux guest drops TCP
    /// sent to the broadcast MAC). Normally it has already sent us a frame; if not, ask.
    fn ask_guest_mac(&mut self, guest: IpAddr) {
        if self.tx.guest_mac().is_unicast() {
            return;
        }
        // An IPv6 guest has always spoken first (router solicitation, DAD).
        if let IpAddr::V4(guest) = guest {
            arp::send_request(&mut self.tx, self.config.network.gateway(), guest);
        }
    }

    /// May `forward` take one more host client? Within its own limit and the forwards'
    /// share of the TCP table; a refusal is counted.
    fn forward_room(&mut self, forward: u64) -> bool {
        let limits = &self.config.limits;
        let own = self.flows_per_forward.get(&forward).copied().unwrap_or(0);
        if own < limits.max_flows_per_forward && self.forward_of.len() < limits.max_forward_flows {
            return true;
        }
        self.stats.forward_flow_limit_hits += 1;
        false
    }
}

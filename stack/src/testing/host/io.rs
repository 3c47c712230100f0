//! [`SimHost`]'s side of the [`HostIo`] contract: what the stack's calls do to the
//! simulated sockets and forwards, and the checks that panic on calls the contract forbids.

use super::{HostCall, SimForward, SimHost, SimSocket, SocketKind, SocketState};
use crate::io::{
    CloseMode, Datagram, FlowId, HostError, HostIo, HostResult, IcmpReport, SourceAddr,
};
use core::net::{IpAddr, SocketAddr};

impl SimHost {
    fn listen(&mut self, forward: u64, addr: SocketAddr, udp: bool) -> HostResult<()> {
        if let Some(error) = self.listen_failures.pop_front() {
            return Err(error);
        }
        assert!(
            !self.forwards.contains_key(&forward),
            "stack reused forward id {forward}"
        );
        self.forwards.insert(
            forward,
            SimForward {
                udp,
                addr: Some(addr),
                ..SimForward::default()
            },
        );
        Ok(())
    }

    /// The socket a stack call names; panics on calls the contract forbids.
    fn live(&mut self, flow: FlowId, kind: SocketKind, call: &str) -> &mut SimSocket {
        let Some(socket) = self.sockets.get_mut(&flow) else {
            panic!("stack called {call} on {flow:?}, which has no host socket");
        };
        assert!(
            !socket.is_closed(),
            "stack called {call} on {flow:?} after closing it"
        );
        assert_eq!(
            socket.kind, kind,
            "stack called {call} on {flow:?}, a {:?} socket",
            socket.kind
        );
        socket
    }

    fn open(
        &mut self,
        flow: FlowId,
        kind: SocketKind,
        remote: SocketAddr,
        state: SocketState,
    ) -> HostResult<()> {
        if let Some(existing) = self.sockets.get(&flow) {
            panic!(
                "stack opened {flow:?} again (a {:?} socket in state {:?}); \
                 flow ids must be reused only with a new generation",
                existing.kind, existing.state
            );
        }
        if let Some(error) = self.open_failures.pop_front() {
            return Err(error);
        }
        if kind == SocketKind::Ping && !self.ping_allowed {
            return Err(HostError::PermissionDenied);
        }
        let mut socket = SimSocket::new(kind, remote, state, self.default_send_window);
        if kind == SocketKind::Ping {
            socket.ping_ident = self.next_ping_ident;
            self.next_ping_ident = self.next_ping_ident.wrapping_add(1);
        }
        self.sockets.insert(flow, socket);
        Ok(())
    }

    /// `tcp_connect` / `udp_open`: a socket of `kind` to `remote` from `source` (a TCP
    /// one connecting until the test completes it, a UDP one connected at once), recorded
    /// as the call of its `kind`.
    fn open_from(
        &mut self,
        flow: FlowId,
        kind: SocketKind,
        remote: SocketAddr,
        source: SourceAddr,
    ) -> HostResult<()> {
        let state = match kind {
            SocketKind::Tcp => SocketState::Connecting,
            SocketKind::Udp | SocketKind::Ping => SocketState::Connected,
        };
        let result = self.open(flow, kind, remote, state);
        if let Some(socket) = self.sockets.get_mut(&flow) {
            socket.source = source;
        }
        self.calls.push(match kind {
            SocketKind::Tcp => HostCall::TcpConnect {
                flow,
                remote,
                result,
            },
            SocketKind::Udp => HostCall::UdpOpen {
                flow,
                remote,
                result,
            },
            SocketKind::Ping => unreachable!("a ping socket has no source address"),
        });
        result
    }

    /// `udp_recv` / `ping_recv` (`call`): the pending error first, else the next datagram,
    /// recorded as the call of its `kind`.
    fn recv_datagram(
        &mut self,
        flow: FlowId,
        kind: SocketKind,
        call: &str,
        buf: &mut [u8],
    ) -> HostResult<Datagram> {
        let result = take_datagram(self.live(flow, kind, call), buf);
        self.calls.push(match kind {
            SocketKind::Udp => HostCall::UdpRecv { flow, result },
            SocketKind::Ping => HostCall::PingRecv { flow, result },
            SocketKind::Tcp => unreachable!("TCP has no datagrams"),
        });
        result
    }

    /// `udp_send` / `ping_send` (`call`): the pending error first, else the datagram is
    /// queued and its hop limit kept; recorded as the call of its `kind`.
    fn send_datagram(
        &mut self,
        flow: FlowId,
        kind: SocketKind,
        call: &str,
        data: &[u8],
        hop_limit: u8,
    ) -> HostResult<()> {
        let socket = self.live(flow, kind, call);
        let result = match socket.pending_error.take() {
            Some(error) => Err(error),
            None => {
                socket.outbound_datagrams.push_back(data.to_vec());
                socket.sent_hop_limits.push(hop_limit);
                Ok(())
            }
        };
        let len = data.len();
        self.calls.push(match kind {
            SocketKind::Udp => HostCall::UdpSend { flow, len, result },
            SocketKind::Ping => HostCall::PingSend { flow, len, result },
            SocketKind::Tcp => unreachable!("TCP has no datagrams"),
        });
        result
    }
}

/// A datagram socket's receive: the pending error first, else the next datagram.
fn take_datagram(socket: &mut SimSocket, buf: &mut [u8]) -> HostResult<Datagram> {
    if let Some(error) = socket.pending_error.take() {
        return Err(error);
    }
    let datagram = socket
        .inbound_datagrams
        .pop_front()
        .ok_or(HostError::WouldBlock)?;
    // Like recv(2) on a datagram socket: the rest of a long datagram is discarded.
    let n = datagram.len().min(buf.len());
    buf[..n].copy_from_slice(&datagram[..n]);
    // The real host knows this only when the kernel queue ran dry in the same call
    // (recvmmsg); the simulation always knows.
    Ok(Datagram {
        len: n,
        last: socket.inbound_datagrams.is_empty(),
    })
}

/// The errno Linux sets on a socket for an ICMP error (`icmp_err_convert`,
/// `icmpv6_err_convert`), as the stack sees it.
pub(super) fn icmp_errno(report: &IcmpReport) -> HostError {
    match (report.v6, report.icmp_type, report.code) {
        (false, 3, 3) | (true, 1, 4) => HostError::ConnectionRefused,
        (false, 3, 0) | (true, 1, 0) => HostError::NetworkUnreachable,
        (false, 3, 4) | (true, 2, _) => HostError::Other(90), // EMSGSIZE
        _ => HostError::HostUnreachable,
    }
}

impl HostIo for SimHost {
    fn recv_icmp_error(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<Option<IcmpReport>> {
        let socket = self.expect_datagram_socket(flow, "stack called recv_icmp_error");
        let Some((report, quoted)) = socket.icmp_errors.pop_front() else {
            return Ok(None);
        };
        // As Linux: the pending error follows the next queued one, or clears.
        socket.pending_error = socket.icmp_errors.front().map(|(next, _)| icmp_errno(next));
        let n = quoted.len().min(buf.len());
        buf[..n].copy_from_slice(&quoted[..n]);
        Ok(Some(IcmpReport { len: n, ..report }))
    }

    fn tcp_connect(
        &mut self,
        flow: FlowId,
        remote: SocketAddr,
        source: SourceAddr,
    ) -> HostResult<()> {
        self.open_from(flow, SocketKind::Tcp, remote, source)
    }

    fn tcp_recv(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<usize> {
        assert!(
            !buf.is_empty(),
            "stack called tcp_recv on {flow:?} with an empty buffer (Ok(0) would mean EOF)"
        );
        let socket = self.live(flow, SocketKind::Tcp, "tcp_recv");
        let result = if let Some(error) = socket.pending_error.take() {
            Err(error)
        } else if socket.state == SocketState::Connecting {
            Err(HostError::WouldBlock)
        } else if !socket.inbound.is_empty() {
            let n = socket.inbound.len().min(buf.len());
            for (slot, byte) in buf.iter_mut().zip(socket.inbound.drain(..n)) {
                *slot = byte;
            }
            Ok(n)
        } else if socket.eof_from_peer || socket.state != SocketState::Connected {
            Ok(0)
        } else {
            Err(HostError::WouldBlock)
        };
        self.calls.push(HostCall::TcpRecv { flow, result });
        result
    }

    fn tcp_send(&mut self, flow: FlowId, data: &[u8]) -> HostResult<usize> {
        let socket = self.live(flow, SocketKind::Tcp, "tcp_send");
        assert!(
            !socket.write_shutdown,
            "stack called tcp_send on {flow:?} after tcp_shutdown_write"
        );
        let result = if let Some(error) = socket.pending_error.take() {
            Err(error)
        } else {
            match socket.state {
                SocketState::Connecting => {
                    socket.send_blocked = true;
                    Err(HostError::WouldBlock)
                }
                // Linux says EPIPE once the reset was reported.
                SocketState::Reset | SocketState::Failed(_) => Err(HostError::ConnectionReset),
                _ => {
                    let n = socket.send_room().min(data.len());
                    if n == 0 && !data.is_empty() {
                        socket.send_blocked = true;
                        Err(HostError::WouldBlock)
                    } else {
                        socket.outbound.extend_from_slice(&data[..n]);
                        socket.bytes_written += n as u64;
                        Ok(n)
                    }
                }
            }
        };
        self.calls.push(HostCall::TcpSend {
            flow,
            offered: data.len(),
            result,
        });
        result
    }

    fn tcp_shutdown_write(&mut self, flow: FlowId) {
        self.live(flow, SocketKind::Tcp, "tcp_shutdown_write")
            .write_shutdown = true;
        self.calls.push(HostCall::TcpShutdownWrite { flow });
    }

    fn take_error(&mut self, flow: FlowId) -> Option<HostError> {
        let Some(socket) = self.sockets.get_mut(&flow) else {
            panic!("stack called take_error on {flow:?}, which has no host socket");
        };
        assert!(
            !socket.is_closed(),
            "stack called take_error on {flow:?} after closing it"
        );
        let result = socket.pending_error.take();
        self.calls.push(HostCall::TakeError { flow, result });
        result
    }

    fn udp_open(&mut self, flow: FlowId, remote: SocketAddr, source: SourceAddr) -> HostResult<()> {
        self.open_from(flow, SocketKind::Udp, remote, source)
    }

    fn udp_reconnect(
        &mut self,
        flow: FlowId,
        remote: SocketAddr,
        source: SourceAddr,
    ) -> HostResult<()> {
        let socket = self.live(flow, SocketKind::Udp, "udp_reconnect");
        // A new socket: what the old one held is gone.
        socket.remote = remote;
        socket.source = source;
        socket.inbound_datagrams.clear();
        socket.pending_error = None;
        self.calls.push(HostCall::UdpReconnect { flow, remote });
        Ok(())
    }

    fn udp_send(&mut self, flow: FlowId, data: &[u8], hop_limit: u8) -> HostResult<()> {
        self.send_datagram(flow, SocketKind::Udp, "udp_send", data, hop_limit)
    }

    fn udp_recv(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<Datagram> {
        self.recv_datagram(flow, SocketKind::Udp, "udp_recv", buf)
    }

    fn ping_open(&mut self, flow: FlowId, remote: IpAddr) -> HostResult<()> {
        let address = SocketAddr::new(remote, 0);
        let result = self.open(flow, SocketKind::Ping, address, SocketState::Connected);
        self.calls.push(HostCall::PingOpen {
            flow,
            remote,
            result,
        });
        result
    }

    fn ping_send(&mut self, flow: FlowId, message: &[u8], hop_limit: u8) -> HostResult<()> {
        self.send_datagram(flow, SocketKind::Ping, "ping_send", message, hop_limit)
    }

    fn ping_recv(&mut self, flow: FlowId, buf: &mut [u8]) -> HostResult<Datagram> {
        self.recv_datagram(flow, SocketKind::Ping, "ping_recv", buf)
    }

    fn close(&mut self, flow: FlowId, mode: CloseMode) {
        if let Some(socket) = self.sockets.get_mut(&flow) {
            if !socket.is_closed() {
                socket.state = SocketState::Closed { mode };
            }
        }
        self.calls.push(HostCall::Close { flow, mode });
    }

    fn tcp_listen(&mut self, forward: u64, addr: SocketAddr) -> HostResult<()> {
        self.listen(forward, addr, false)
    }

    fn tcp_accept(&mut self, forward: u64, flow: FlowId) -> HostResult<SocketAddr> {
        if !self.live_forward(forward).pending.is_empty() {
            if let Some(error) = self.accept_failures.pop_front() {
                return Err(error);
            }
        }
        let client = self
            .live_forward(forward)
            .pending
            .pop_front()
            .ok_or(HostError::WouldBlock)?;
        self.open(flow, SocketKind::Tcp, client, SocketState::Connected)?;
        Ok(client)
    }

    fn udp_bind(&mut self, forward: u64, addr: SocketAddr) -> HostResult<()> {
        self.listen(forward, addr, true)
    }

    fn udp_recv_from(&mut self, forward: u64, buf: &mut [u8]) -> HostResult<(usize, SocketAddr)> {
        let (client, payload) = self
            .live_forward(forward)
            .inbound
            .pop_front()
            .ok_or(HostError::WouldBlock)?;
        let n = payload.len().min(buf.len());
        buf[..n].copy_from_slice(&payload[..n]);
        Ok((n, client))
    }

    fn udp_send_to(&mut self, forward: u64, peer: SocketAddr, data: &[u8]) -> HostResult<()> {
        match self.forwards.get_mut(&forward) {
            Some(fwd) if !fwd.closed => {
                fwd.sent.push((peer, data.to_vec()));
                Ok(())
            }
            _ => Err(HostError::ConnectionReset),
        }
    }

    fn forward_close(&mut self, forward: u64) {
        if let Some(fwd) = self.forwards.get_mut(&forward) {
            fwd.closed = true;
        }
    }
}

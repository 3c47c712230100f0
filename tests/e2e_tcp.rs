//! End-to-end: TCP through the NAT — echo, refusal, half-close, many connections, bulk.

#[macro_use]
mod common;

use common::net::{self, Digested, Pattern, Server};
use common::{assert_gateway_answers_ping, Env, Mode, GATEWAY, STEP_TIMEOUT};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream};
use std::sync::{mpsc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

both_modes!(
    tcp_echo_via_gateway_to_host_loopback,
    tcp_to_host_namespace_address,
    tcp_closed_port_refused_fast,
    tcp_to_unroutable_address_fails_fast,
    tcp_half_close,
    tcp_100_parallel_connections,
    tcp_bulk_guest_to_host,
    tcp_bulk_host_to_guest,
    disable_host_loopback,
    tcp_many_small_exchanges,
    tcp_reply_then_close_many_times,
);

/// Each way, per the acceptance list.
const BULK_BYTES: u64 = 200 * 1000 * 1000;
const BULK_TIMEOUT: Duration = Duration::from_secs(120);
/// A refused connect must not wait for a timeout or retransmission.
const FAST: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects from the guest to a host server and checks that `len` bytes echo back intact.
fn assert_echo(env: &Env, to: SocketAddrV4, len: usize) {
    env.assert_guest_echo(to, CONNECT_TIMEOUT, u64::from(to.port()), len);
}

fn tcp_echo_via_gateway_to_host_loopback(mode: Mode) {
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();
    let server = env.host_echo_server(Ipv4Addr::LOCALHOST);
    assert_echo(&env, SocketAddrV4::new(GATEWAY, server.port()), 1_000_000);
}

fn tcp_to_host_namespace_address(mode: Mode) {
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();
    let server = env.host_echo_server(env.host_addr);
    assert_echo(
        &env,
        SocketAddrV4::new(env.host_addr, server.port()),
        1_000_000,
    );
}

/// Connects from the guest where it must fail; returns the error and how long it took.
fn failed_connect(env: &Env, to: SocketAddrV4) -> (std::io::Error, Duration) {
    let started = Instant::now();
    match env.guest_connect(to, CONNECT_TIMEOUT) {
        Ok(_) => panic!("connect to {to} succeeded but must fail"),
        Err(e) => (e, started.elapsed()),
    }
}

fn tcp_closed_port_refused_fast(mode: Mode) {
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();
    // Port 1 is closed: the host namespace is fresh and nothing else listens in it.
    for ip in [GATEWAY, env.host_addr] {
        let (error, took) = failed_connect(&env, SocketAddrV4::new(ip, 1));
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "connect to {ip}:1: {error}"
        );
        assert!(took < FAST, "refusal from {ip} took {took:?}");
    }
}

/// The host namespace has no default route, so the host-side connect fails at once; the
/// guest must learn that quickly (ICMP unreachable or RST), not by timing out.
fn tcp_to_unroutable_address_fails_fast(mode: Mode) {
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();
    // Without a working path to the gateway the guest's own kernel would fail the connect
    // at once, and this test would prove nothing.
    assert_gateway_answers_ping(&env);
    // TEST-NET-1: unroutable from the host namespace by construction.
    let (error, took) = failed_connect(&env, SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80));
    assert!(took < FAST, "failure took {took:?} ({error})");
    let reported_by_network = [libc::ENETUNREACH, libc::EHOSTUNREACH, libc::ECONNREFUSED];
    assert!(
        error
            .raw_os_error()
            .is_some_and(|errno| reported_by_network.contains(&errno)),
        "expected ICMP unreachable or RST, got: {error}"
    );
}

/// The guest sends, then shuts down its write side; the server reads to EOF, waits a little
/// (so the half-closed state lasts), and only then replies. The reply must still arrive.
fn tcp_half_close(mode: Mode) {
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();
    let server = net::tcp_server(env.host_tcp_listener(Ipv4Addr::LOCALHOST), |mut stream| {
        if let Ok(received) = net::digest_to_eof(&mut stream) {
            thread::sleep(Duration::from_millis(300));
            let _ = write!(stream, "{} {}", received.len, received.sha256);
        }
    });
    let stream = env
        .guest_connect(SocketAddrV4::new(GATEWAY, server.port()), CONNECT_TIMEOUT)
        .expect("connect");
    let payload = Pattern::bytes(3, 300_000);
    let reply = net::exchange(&stream, &payload).expect("exchange over a half-closed connection");
    let sent = net::digest(&payload);
    assert_eq!(
        String::from_utf8_lossy(&reply),
        format!("{} {}", sent.len, sent.sha256),
        "the server's reply after our FIN"
    );
}

fn tcp_100_parallel_connections(mode: Mode) {
    const CONNECTIONS: usize = 100;
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();
    let server = env.host_echo_server(Ipv4Addr::LOCALHOST);
    let to = SocketAddrV4::new(GATEWAY, server.port());
    let failures = env
        .in_guest("100 clients", move || {
            // All connections are established before any sends, so they really overlap.
            let barrier = Barrier::new(CONNECTIONS);
            net::run_clients(CONNECTIONS, |i| {
                let connected = TcpStream::connect_timeout(&to.into(), CONNECT_TIMEOUT);
                barrier.wait();
                let stream = connected.map_err(|e| format!("#{i} connect: {e}"))?;
                net::set_timeouts(&stream);
                let payload = Pattern::bytes(i as u64, 1000 + 97 * i);
                let reply =
                    net::exchange(&stream, &payload).map_err(|e| format!("#{i} echo: {e}"))?;
                if reply != payload {
                    return Err(format!("#{i}: echo differs"));
                }
                Ok(())
            })
        })
        .wait(Duration::from_secs(60));
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} connections failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// Reports a bulk transfer's rate (visible with --nocapture) for a rough comparison.
fn report_rate(what: &str, bytes: u64, took: Duration) {
    let mbit = bytes as f64 * 8.0 / took.as_secs_f64() / 1e6;
    eprintln!("{what}: {bytes} bytes in {took:.2?} ({mbit:.0} Mbit/s)");
}

/// A bulk transfer's two ends: a host server on 127.0.0.1 running `serve` on the
/// connection, the guest's connection to it via the gateway, and where `serve`'s result
/// arrives.
fn bulk_connection<T: Send + 'static>(
    env: &Env,
    serve: impl Fn(&mut TcpStream) -> io::Result<T> + Send + Sync + 'static,
) -> (Server, TcpStream, mpsc::Receiver<Result<T, String>>) {
    let (result_tx, result_rx) = mpsc::channel();
    let server = net::tcp_server(
        env.host_tcp_listener(Ipv4Addr::LOCALHOST),
        move |mut stream| {
            let _ = result_tx.send(serve(&mut stream).map_err(|e| e.to_string()));
        },
    );
    let stream = env
        .guest_connect(SocketAddrV4::new(GATEWAY, server.port()), CONNECT_TIMEOUT)
        .expect("connect");
    (server, stream, result_rx)
}

fn tcp_bulk_guest_to_host(mode: Mode) {
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();
    let (_sink, mut stream, received_rx) = bulk_connection(&env, net::digest_to_eof);
    let started = Instant::now();
    let sent = thread::spawn(move || -> std::io::Result<Digested> {
        let sent = net::send_pattern(&mut stream, 1, BULK_BYTES)?;
        stream.shutdown(Shutdown::Write)?;
        Ok(sent)
    });
    let received = received_rx
        .recv_timeout(BULK_TIMEOUT)
        .expect("the host side did not reach EOF in time")
        .expect("host side read");
    report_rate("guest→host", received.len, started.elapsed());
    let sent = sent.join().expect("sender").expect("guest send");
    assert_eq!(received, sent);
}

fn tcp_bulk_host_to_guest(mode: Mode) {
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();
    let (_source, mut stream, sent_rx) = bulk_connection(&env, |stream| {
        let sent = net::send_pattern(stream, 2, BULK_BYTES);
        let _ = stream.shutdown(Shutdown::Write);
        sent
    });
    let started = Instant::now();
    let received = env
        .in_guest("bulk receiver", move || net::digest_to_eof(&mut stream))
        .wait(BULK_TIMEOUT)
        .expect("guest read");
    report_rate("host→guest", received.len, started.elapsed());
    let sent = sent_rx
        .recv_timeout(STEP_TIMEOUT)
        .expect("host sender result")
        .expect("host send");
    assert_eq!(received, sent);
}

/// With --disable-host-loopback the gateway no longer leads to the host's 127.0.0.1: a
/// connect fails at once with "Network is unreachable" although a server listens there.
/// The gateway still answers ping, and other host addresses are still reachable.
fn disable_host_loopback(mode: Mode) {
    let env = Env::new(mode);
    let _rslirp = env.rslirp().arg("--disable-host-loopback").start();
    // First, so that the "unreachable" below cannot come from the guest lacking a route.
    assert_gateway_answers_ping(&env);
    let loopback_server = env.host_echo_server(Ipv4Addr::LOCALHOST);
    let (error, took) = failed_connect(&env, SocketAddrV4::new(GATEWAY, loopback_server.port()));
    assert_eq!(
        error.raw_os_error(),
        Some(libc::ENETUNREACH),
        "connect to the gateway: {error}"
    );
    assert!(took < FAST, "failure took {took:?}");

    let server = env.host_echo_server(env.host_addr);
    assert_echo(
        &env,
        SocketAddrV4::new(env.host_addr, server.port()),
        10_000,
    );
}

/// A stalled exchange shows as no byte within this long (the exchanges take microseconds).
const STALL: Duration = Duration::from_secs(5);

/// Request/response traffic as interactive programs make it: 2,000 exchanges of 1 to 100
/// bytes on one connection, each waited for. rslirp reads a host socket only until a short
/// read and the tap one frame at a time while it is quiet, and delays a lone ACK for the
/// reply to carry: a readiness event missed on the way would stall an exchange for good.
fn tcp_many_small_exchanges(mode: Mode) {
    const EXCHANGES: usize = 2_000;
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();
    let server = env.host_echo_server(Ipv4Addr::LOCALHOST);
    let mut stream = env
        .guest_connect(SocketAddrV4::new(GATEWAY, server.port()), CONNECT_TIMEOUT)
        .expect("connect");
    let result = env
        .in_guest("small exchanges", move || {
            net::small_exchanges(&mut stream, EXCHANGES, STALL)
        })
        .wait(Duration::from_secs(120));
    result.unwrap_or_else(|e| panic!("{e}"));
}

/// The host answers and closes at once, so its data and its FIN often reach rslirp's host
/// socket before rslirp looks (one readiness event for both): the guest must get the
/// reply and the EOF every time, 300 connections in a row.
fn tcp_reply_then_close_many_times(mode: Mode) {
    const CONNECTIONS: usize = 300;
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();
    let server = net::tcp_server(env.host_tcp_listener(Ipv4Addr::LOCALHOST), |mut stream| {
        let mut request = [0u8; 1];
        if stream.read_exact(&mut request).is_ok() {
            let _ = stream.write_all(&[request[0], b'!']);
        }
        // Dropping the stream closes it right after the reply.
    });
    let to = SocketAddrV4::new(GATEWAY, server.port());
    let result = env
        .in_guest("reply-then-close clients", move || -> Result<(), String> {
            for i in 0..CONNECTIONS {
                let mut stream = TcpStream::connect_timeout(&to.into(), CONNECT_TIMEOUT)
                    .map_err(|e| format!("#{i} connect: {e}"))?;
                stream.set_read_timeout(Some(STALL)).expect("timeout");
                let byte = i as u8;
                stream
                    .write_all(&[byte])
                    .map_err(|e| format!("#{i} write: {e}"))?;
                let mut reply = Vec::new();
                stream
                    .read_to_end(&mut reply)
                    .map_err(|e| format!("#{i}: no reply and EOF in time: {e}"))?;
                if reply != [byte, b'!'] {
                    return Err(format!("#{i}: reply {reply:?}"));
                }
            }
            Ok(())
        })
        .wait(Duration::from_secs(120));
    result.unwrap_or_else(|e| panic!("{e}"));
}

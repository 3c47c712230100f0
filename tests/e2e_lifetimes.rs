//! End-to-end: no byte the guest sent is lost when the host closed first and reads slowly,
//! and a guest that never answers our SYN-ACK does not hold host connections forever
//! (issue #16 §1 and §2).
//!
//! Every connection stays in the test's own host namespace (its loopback, reached as the
//! gateway 10.0.2.2); every wait has a deadline.

#[macro_use]
mod common;

use common::api::{stat, Api};
use common::net;
use common::{Env, Mode, GATEWAY, STEP_TIMEOUT};
use socket2::{Domain, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

both_modes!(upload_after_the_host_closed_reaches_a_slow_reader_whole,);

// Rootful only: the lifetime is the stack's, the same in both modes, and the test waits
// for it (about a minute).
rootful_only!(a_guest_that_drops_syn_acks_does_not_hold_host_connections,);

const UPLOAD_BYTES: u64 = 4 << 20;
/// The host reads this much at a time, with `READ_PAUSE` between reads: about 270 KB/s,
/// so the 4 MiB take some 15 s — longer than the 10 s of TIME-WAIT the flow enters once the
/// guest closes, with most of the upload still waiting in rslirp.
const READ_CHUNK: usize = 16 << 10;
const READ_PAUSE: Duration = Duration::from_millis(60);
/// The host socket's receive buffer, kept small so that the upload waits in rslirp rather
/// than in the host kernel.
const HOST_RCVBUF: usize = 32 << 10;
const UPLOAD_DEADLINE: Duration = Duration::from_secs(90);

/// The host peer shuts its write side at once (the guest reads EOF) and reads slowly; the
/// guest then uploads 4 MiB and closes. The host must read all 4 MiB, intact, then EOF.
fn upload_after_the_host_closed_reaches_a_slow_reader_whole(mode: Mode) {
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();
    let listener = slow_listener(&env);
    let port = listener.local_addr().expect("listener address").port();
    let reader = thread::spawn(move || -> io::Result<(net::Digested, Duration)> {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(UPLOAD_DEADLINE))?;
        stream.shutdown(Shutdown::Write)?;
        let started = Instant::now();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut data = Vec::with_capacity(UPLOAD_BYTES as usize);
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
            if started.elapsed() > UPLOAD_DEADLINE {
                return Err(io::Error::other("upload took too long"));
            }
            thread::sleep(READ_PAUSE);
        }
        Ok((net::digest(&data), started.elapsed()))
    });

    let to = SocketAddrV4::new(GATEWAY, port);
    let sent = env
        .in_guest("guest upload", move || -> io::Result<net::Digested> {
            let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(to), STEP_TIMEOUT)?;
            stream.set_read_timeout(Some(STEP_TIMEOUT))?;
            stream.set_write_timeout(Some(UPLOAD_DEADLINE))?;
            let mut first = [0u8; 1];
            let eof = stream.read(&mut first)?;
            assert_eq!(eof, 0, "the host shut its side: the guest reads EOF");
            let digest = net::send_pattern(&mut stream, 7, UPLOAD_BYTES)?;
            stream.flush()?;
            // A plain close, as an uploading client does when it is done.
            drop(stream);
            Ok(digest)
        })
        .wait(UPLOAD_DEADLINE)
        .expect("guest upload");

    let (received, took) = reader.join().expect("reader thread").expect("host reader");
    eprintln!(
        "host read {} bytes in {took:.1?} after the guest closed",
        received.len
    );
    assert_eq!(received.len, UPLOAD_BYTES, "every byte of the upload");
    assert_eq!(received, sent, "the upload arrived intact");
}

/// A listener in the host namespace whose accepted sockets have a small receive buffer.
fn slow_listener(env: &Env) -> TcpListener {
    env.in_host("slow listener", || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_recv_buffer_size(HOST_RCVBUF)?;
        socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        socket.listen(8)?;
        Ok(socket.into())
    })
    .wait(STEP_TIMEOUT)
    .expect("host listener")
}

const SILENT_CONNECTS: usize = 50;
/// `Timeouts::default().tcp_syn_received` (60 s) plus slack for the loop's timers.
const SYN_RECEIVED_BOUND: Duration = Duration::from_secs(80);

/// The guest drops every SYN-ACK it receives (one iptables rule in its namespace) and
/// connects 50 times. rslirp connects to the host server for each (the host connect comes
/// first), but once the guest has not answered its SYN-ACKs for the SYN-RECEIVED lifetime,
/// every one of those host connections is closed, and counted.
fn a_guest_that_drops_syn_acks_does_not_hold_host_connections(mode: Mode) {
    let env = Env::new(mode);
    let api = Api::new(&env);
    let _rslirp = api.launch(&env).start();
    env.guest_ok(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--tcp-flags",
        "SYN,ACK",
        "SYN,ACK",
        "-j",
        "DROP",
    ]);
    let listener = env.host_tcp_listener(Ipv4Addr::LOCALHOST);
    let port = listener.local_addr().expect("listener address").port();
    let _server = net::tcp_server(listener, |stream| {
        // Hold the connection until the peer goes away.
        let mut stream = stream;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
        let mut buf = [0u8; 64];
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    });

    let to = SocketAddrV4::new(GATEWAY, port);
    let started = Instant::now();
    let connects = env.in_guest("silent connects", move || {
        let handles: Vec<_> = (0..SILENT_CONNECTS)
            .map(|_| {
                thread::spawn(move || {
                    TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(3))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map(|r| r.is_ok()).unwrap_or(false))
            .filter(|&connected| connected)
            .count()
    });
    let connected = connects.wait(Duration::from_secs(30));
    assert_eq!(connected, 0, "no SYN-ACK reaches the guest");

    let established = || host_established(&env, port);
    let peak = common::process::wait_for("the host connections", STEP_TIMEOUT, || {
        let n = established();
        (n == SILENT_CONNECTS).then_some(n)
    });
    eprintln!("{peak} host connections established for a guest that never answered");

    common::process::wait_for(
        "the host connections to be closed",
        SYN_RECEIVED_BOUND,
        || (established() == 0).then_some(()),
    );
    let took = started.elapsed();
    eprintln!("all closed {took:.1?} after the first SYN");
    assert!(
        took >= Duration::from_secs(50),
        "closed after {took:?}: a SYN-ACK deserves retransmissions for about a minute"
    );
    let stats = api.stats();
    assert_eq!(
        stat(&stats, &["counters", "tcp_syn_received_timeouts"]),
        SILENT_CONNECTS as u64,
        "{stats}"
    );
    assert_eq!(stat(&stats, &["flows", "tcp"]), 0, "{stats}");
}

/// Established TCP connections to the server on `port`, as the host namespace sees them.
fn host_established(env: &Env, port: u16) -> usize {
    let filter = format!("sport = :{port}");
    env.host
        .ip_netns_exec(&["ss", "-Htn", "state", "established", &filter])
        .lines()
        .filter(|line| !line.trim().is_empty())
        .count()
}

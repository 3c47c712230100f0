//! Small in-process servers and traffic helpers. Servers run on threads and use sockets
//! created inside the host namespace (see `Env::in_host`); clients use sockets created
//! inside the guest namespace. Every socket has read and write timeouts, so no thread can
//! hang forever when the network under test stalls.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::process::wait_readable;

/// Longest a single read or write may block before the test gives up on the connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often server loops look at their stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

pub fn set_timeouts(stream: &TcpStream) {
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
}

/// A server thread, stopped and joined on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves each accepted connection with `handler` on a thread of its own. Connection threads
/// are not joined: they end at the peer's EOF or at their I/O timeout.
pub fn tcp_server<H>(listener: TcpListener, handler: H) -> Server
where
    H: Fn(TcpStream) + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    accept_loop(listener, move |stream| {
        let handler = handler.clone();
        thread::spawn(move || handler(stream));
    })
}

/// Raises `listener`'s accept backlog to `backlog` (std listens with 128). A crowd of
/// connections beyond the backlog overflows the listener's accept queue: the kernel then
/// drops the handshakes' last ACKs (SYN cookies, no state kept), and the connections only
/// come to exist when their peer retransmits, with exponential backoff — tens of seconds
/// for a crowd of thousands, in any TCP peer, rslirp or a kernel.
pub fn deepen_backlog(listener: &TcpListener, backlog: i32) {
    // listen(2) again on a listening socket only changes its backlog.
    socket2::SockRef::from(listener)
        .listen(backlog)
        .expect("listen with a deeper backlog");
}

/// Like [`tcp_server`], but serves each connection on the accepting thread, one after
/// another: for many short connections, where a thread each would cost more than the
/// connection. Several of these may share one listener (`try_clone`).
pub fn tcp_server_inline<H>(listener: TcpListener, handler: H) -> Server
where
    H: Fn(TcpStream) + Send + 'static,
{
    accept_loop(listener, handler)
}

/// Accepts until the server is stopped, handing each connection (blocking, with
/// timeouts) to `serve`.
fn accept_loop<F>(listener: TcpListener, serve: F) -> Server
where
    F: Fn(TcpStream) + Send + 'static,
{
    let addr = listener.local_addr().expect("local_addr");
    // Non-blocking accept so that the loop can notice the stop flag.
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let thread = thread::spawn(move || {
        while !stop_flag.load(Ordering::SeqCst) {
            // Waiting in poll (not sleeping) takes a connection the moment it arrives.
            if !wait_readable(&listener, STOP_POLL) {
                continue;
            }
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).expect("blocking");
                    set_timeouts(&stream);
                    serve(stream);
                }
                // Another acceptor on the same listener was quicker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept on {addr}: {e}"),
            }
        }
    });
    Server {
        addr,
        stop,
        thread: Some(thread),
    }
}

/// Echoes everything until EOF, then half-closes (so the client can read to EOF too).
pub fn echo(mut stream: TcpStream) {
    let mut reader = stream.try_clone().expect("clone");
    if io::copy(&mut reader, &mut stream).is_ok() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

/// Echoes datagrams back to their sender until stopped.
pub fn udp_echo_server(socket: UdpSocket) -> Server {
    let addr = socket.local_addr().expect("local_addr");
    socket.set_read_timeout(Some(STOP_POLL)).expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let thread = thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop_flag.load(Ordering::SeqCst) {
            match socket.recv_from(&mut buf) {
                Ok((len, peer)) => {
                    let _ = socket.send_to(&buf[..len], peer);
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => panic!("udp echo on {addr}: {e}"),
            }
        }
    });
    Server {
        addr,
        stop,
        thread: Some(thread),
    }
}

/// Length and SHA-256 (hex) of a byte stream, as both ends of a transfer compute them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digested {
    pub len: u64,
    pub sha256: String,
}

/// A deterministic pseudo-random byte stream (xorshift64): unlike a repeated block, a
/// reordered, duplicated or dropped chunk anywhere changes the hash.
pub struct Pattern {
    state: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.state = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }

    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        Pattern::new(seed).fill(&mut buf);
        buf
    }
}

/// Writes `len` pattern bytes and returns what was sent; does not shut down the stream.
pub fn send_pattern(stream: &mut impl Write, seed: u64, len: u64) -> io::Result<Digested> {
    let mut pattern = Pattern::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        stream.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(Digested {
        len,
        sha256: format!("{:x}", hasher.finalize()),
    })
}

/// Reads to EOF and returns what was received.
pub fn digest_to_eof(stream: &mut impl Read) -> io::Result<Digested> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok(Digested {
        len,
        sha256: format!("{:x}", hasher.finalize()),
    })
}

pub fn digest(data: &[u8]) -> Digested {
    Digested {
        len: data.len() as u64,
        sha256: format!("{:x}", Sha256::digest(data)),
    }
}

/// Sends `payload`, half-closes, and returns everything the peer sends until its EOF.
/// Writing happens on a second thread so that an echoing peer never deadlocks against us
/// when the payload is larger than the buffers in between.
pub fn exchange(stream: &TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut writer = stream.try_clone()?;
    thread::scope(|scope| {
        let sent = scope.spawn(move || -> io::Result<()> {
            writer.write_all(payload)?;
            writer.shutdown(std::net::Shutdown::Write)
        });
        let mut reply = Vec::new();
        let received = (&*stream).read_to_end(&mut reply);
        sent.join().expect("writer thread")?;
        received.map(|_| reply)
    })
}

/// Sends a small `payload` on a connection to an echo server and reads as many bytes back,
/// leaving the connection open; panics (naming the failure) if the echo does not come.
pub fn exchange_keep(stream: &TcpStream, payload: &[u8]) -> Vec<u8> {
    let mut reply = vec![0u8; payload.len()];
    (&*stream)
        .write_all(payload)
        .and_then(|()| (&*stream).read_exact(&mut reply))
        .unwrap_or_else(|err| panic!("echo of {} bytes: {err}", payload.len()));
    reply
}

/// Writes `request` and reads as many bytes back: an error naming `what` if either fails (a
/// read stalls past the stream's read timeout) or the echo differs.
pub fn echo_exchange(stream: &mut TcpStream, request: &[u8], what: &str) -> Result<(), String> {
    stream
        .write_all(request)
        .map_err(|e| format!("{what}: write: {e}"))?;
    let mut reply = vec![0u8; request.len()];
    stream
        .read_exact(&mut reply)
        .map_err(|e| format!("{what} stalled or failed: {e}"))?;
    if reply != request {
        return Err(format!("{what}: the echo differs"));
    }
    Ok(())
}

/// `exchanges` small echoes in a row on `stream` (1 to 100 bytes each, Nagle off), each
/// given `stall` to come back.
pub fn small_exchanges(
    stream: &mut TcpStream,
    exchanges: usize,
    stall: Duration,
) -> Result<(), String> {
    stream.set_read_timeout(Some(stall)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    for i in 0..exchanges {
        let request = Pattern::bytes(i as u64, 1 + i % 100);
        echo_exchange(stream, &request, &format!("exchange {i}"))?;
    }
    Ok(())
}

/// Runs `client(i)` for every `i` below `clients`, each on a thread of its own and all at
/// once, and returns the errors of those that failed.
pub fn run_clients(
    clients: usize,
    client: impl Fn(usize) -> Result<(), String> + Sync,
) -> Vec<String> {
    thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|i| {
                let client = &client;
                scope.spawn(move || client(i))
            })
            .collect();
        threads
            .into_iter()
            .filter_map(|thread| thread.join().expect("client thread").err())
            .collect()
    })
}

/// The unspecified address (0.0.0.0 or ::) of `ip`'s family, to bind a socket that talks to
/// `ip`.
pub fn unspecified_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// Sends a datagram of each size in `sizes` (the pattern seeded by its index) to the echo
/// server at `to` and checks that each comes back unchanged.
pub fn assert_udp_echoes(socket: &UdpSocket, to: SocketAddr, sizes: &[usize]) {
    for (i, &size) in sizes.iter().enumerate() {
        let payload = Pattern::bytes(i as u64, size);
        let reply = udp_roundtrip(socket, to, &payload)
            .unwrap_or_else(|e| panic!("no echo of {size} bytes from {to}: {e}"));
        assert!(reply == payload, "echo of {size} bytes differs");
    }
}

/// Sends `payload` to `to` and returns the first datagram that comes back, retrying a few
/// times because UDP may lose the first packet (e.g. while the guest still resolves ARP).
pub fn udp_roundtrip(socket: &UdpSocket, to: SocketAddr, payload: &[u8]) -> io::Result<Vec<u8>> {
    const ATTEMPTS: usize = 3;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = vec![0u8; 65536];
    let mut last_error = None;
    for _ in 0..ATTEMPTS {
        socket.send_to(payload, to)?;
        match socket.recv_from(&mut buf) {
            Ok((len, _)) => return Ok(buf[..len].to_vec()),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.expect("at least one attempt"))
}

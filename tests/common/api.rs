//! The control socket (`--api-socket`, SPEC.md §3) from a caller's side: a raw Unix stream
//! client that frames requests the ways real callers do, the byte-exact replies, and the
//! servers and clients on both ends of a port forward.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::net::{self, Server};
use super::{Env, Launch, GUEST_ADDR, STEP_TIMEOUT};

/// Longest a request may take from connect to the reply's EOF.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between the two halves of a [`Framing::TwoWrites`] request.
const SPLIT_PAUSE: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two requests of an [`ApiProbe`].
const API_PROBE_INTERVAL: Duration = Duration::from_millis(25);

/// How a client delimits its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// The request, then `shutdown(SHUT_WR)` (rootlesskit: JSON plus newline, CloseWrite).
    HalfClose,
    /// The request and a newline, the write side left open (`ncat -U`, `socat -`).
    Newline,
    /// The request in two writes 100 ms apart, no newline, the write side left open.
    TwoWrites,
}

pub const ALL_FRAMINGS: [Framing; 3] = [Framing::HalfClose, Framing::Newline, Framing::TwoWrites];

/// `{"return":{}}`, the reply to a successful remove.
pub const OK_REPLY: &str = r#"{"return":{}}"#;

pub fn id_reply(id: u64) -> String {
    format!(r#"{{"return":{{"id":{id}}}}}"#)
}

/// `{"error":{"desc":"bad request: DESC"}}`
pub fn error_reply(desc: &str) -> String {
    format!(r#"{{"error":{{"desc":"bad request: {desc}"}}}}"#)
}

pub fn remove_request(id: u64) -> String {
    format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#)
}

pub const LIST_REQUEST: &str = r#"{"execute":"list_hostfwd"}"#;
pub const STATS_REQUEST: &str = r#"{"execute":"get_stats"}"#;

/// A counter from get_stats' reply, e.g. `["interfaces", "tap", "rx_bytes"]`.
pub fn stat(reply: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(&reply["return"], |value, key| &value[*key])
        .as_u64()
        .unwrap_or_else(|| panic!("no number at return.{} in {reply}", path.join(".")))
}

/// One port forward as the API describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fwd {
    pub proto: &'static str,
    pub host_addr: Ipv4Addr,
    pub host_port: u16,
    pub guest_addr: Ipv4Addr,
    pub guest_port: u16,
}

impl Fwd {
    /// TCP from `host_addr:host_port` to the guest address's `guest_port`.
    pub fn tcp(host_addr: Ipv4Addr, host_port: u16, guest_port: u16) -> Fwd {
        Fwd {
            proto: "tcp",
            host_addr,
            host_port,
            guest_addr: GUEST_ADDR,
            guest_port,
        }
    }

    pub fn udp(host_addr: Ipv4Addr, host_port: u16, guest_port: u16) -> Fwd {
        Fwd {
            proto: "udp",
            ..Fwd::tcp(host_addr, host_port, guest_port)
        }
    }

    /// The add_hostfwd request with every argument spelled out.
    pub fn add_request(&self) -> String {
        format!(
            r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{}","host_addr":"{}","host_port":{},"guest_addr":"{}","guest_port":{}}}}}"#,
            self.proto, self.host_addr, self.host_port, self.guest_addr, self.guest_port
        )
    }

    /// This forward's entry in the list_hostfwd reply.
    pub fn entry(&self, id: u64) -> String {
        format!(
            r#"{{"id":{id},"proto":"{}","host_addr":"{}","host_port":{},"guest_addr":"{}","guest_port":{}}}"#,
            self.proto, self.host_addr, self.host_port, self.guest_addr, self.guest_port
        )
    }

    /// Where a host client reaches this forward (0.0.0.0 reached via 127.0.0.1).
    pub fn host_target(&self) -> SocketAddrV4 {
        let ip = if self.host_addr.is_unspecified() {
            Ipv4Addr::LOCALHOST
        } else {
            self.host_addr
        };
        SocketAddrV4::new(ip, self.host_port)
    }
}

/// The list_hostfwd reply for these (id, forward) pairs, in this order. No `return`
/// wrapper: callers depend on that.
pub fn list_reply(entries: &[(u64, &Fwd)]) -> String {
    let entries: Vec<String> = entries.iter().map(|(id, fwd)| fwd.entry(*id)).collect();
    format!(r#"{{"entries":[{}]}}"#, entries.join(","))
}

/// A control socket path and a client for it.
pub struct Api {
    pub path: PathBuf,
}

impl Api {
    /// `DIR/api/api.sock` in the test's temp dir; the directory is writable by everyone so
    /// that a rootless rslirp (TEST_USER) can create and remove the socket there.
    pub fn new(env: &Env) -> Api {
        let dir = env.tmp.path.join("api");
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod api dir");
        Api {
            path: dir.join("api.sock"),
        }
    }

    /// `env.rslirp()` with `-a PATH`.
    pub fn launch<'a>(&self, env: &'a Env) -> Launch<'a> {
        env.rslirp().arg("-a").arg(&self.path.to_string_lossy())
    }

    /// Whether a Unix socket file is at the path.
    pub fn socket_file_exists(&self) -> bool {
        socket_file_exists(&self.path)
    }

    /// A connection with read and write timeouts set.
    pub fn connect(&self) -> io::Result<UnixStream> {
        let stream = UnixStream::connect(&self.path)?;
        stream.set_read_timeout(Some(API_TIMEOUT))?;
        stream.set_write_timeout(Some(API_TIMEOUT))?;
        Ok(stream)
    }

    /// Sends one request framed as given and returns all bytes up to the server's EOF.
    pub fn try_request(&self, body: &[u8], framing: Framing) -> io::Result<Vec<u8>> {
        let mut stream = self.connect()?;
        match framing {
            Framing::HalfClose => {
                stream.write_all(body)?;
                stream.shutdown(Shutdown::Write)?;
            }
            Framing::Newline => {
                stream.write_all(body)?;
                stream.write_all(b"\n")?;
            }
            Framing::TwoWrites => {
                let (first, second) = body.split_at(body.len() / 2);
                stream.write_all(first)?;
                thread::sleep(SPLIT_PAUSE);
                stream.write_all(second)?;
            }
        }
        let mut reply = Vec::new();
        match stream.read_to_end(&mut reply) {
            Ok(_) => Ok(reply),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(io::Error::new(
                    e.kind(),
                    format!("no complete reply within {API_TIMEOUT:?} (got {reply:?})"),
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// [`Api::try_request`] for text; panics with the request if it fails.
    pub fn request_with(&self, body: &str, framing: Framing) -> String {
        let reply = self
            .try_request(body.as_bytes(), framing)
            .unwrap_or_else(|e| panic!("API request {body} ({framing:?}): {e}"));
        String::from_utf8(reply).unwrap_or_else(|e| panic!("reply to {body} is not UTF-8: {e}"))
    }

    /// One request, half-closed after writing (how rootlesskit and podman send).
    pub fn request(&self, body: &str) -> String {
        self.request_with(body, Framing::HalfClose)
    }

    /// Adds the forward and returns its id; panics unless the reply is `{"return":{"id":N}}`.
    pub fn add(&self, fwd: &Fwd) -> u64 {
        let reply = self.request(&fwd.add_request());
        reply
            .strip_prefix(r#"{"return":{"id":"#)
            .and_then(|rest| rest.strip_suffix("}}"))
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("add_hostfwd {fwd:?} answered {reply:?}"))
    }

    /// Adds `fwd` (to the guest's [`guest_peer_http_server`]) and sends a request through
    /// it from the host; the forward's id and the client address the guest saw.
    pub fn add_and_request(&self, env: &Env, fwd: &Fwd) -> (u64, SocketAddr) {
        let id = self.add(fwd);
        (id, peer_seen_by_guest(env, fwd.host_target()))
    }

    pub fn list(&self) -> String {
        self.request(LIST_REQUEST)
    }

    /// The get_stats reply, parsed (read counters with [`stat`]).
    pub fn stats(&self) -> serde_json::Value {
        let reply = self.request(STATS_REQUEST);
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("get_stats: {e}: {reply}"))
    }

    pub fn remove(&self, id: u64) {
        assert_eq!(
            self.request(&remove_request(id)),
            OK_REPLY,
            "remove id {id}"
        );
    }
}

pub fn socket_file_exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket())
}

/// What the guest's HTTP server answers: `peer <address:port it saw>`.
fn peer_reply(peer: SocketAddr) -> String {
    format!("peer {peer}")
}

/// An HTTP-ish server in the guest on `GUEST_ADDR:port`: reads a request head, answers
/// `HTTP/1.0 200 OK` with the body `peer <the client address it sees>`, and closes.
pub fn guest_peer_http_server(env: &Env, port: u16) -> Server {
    let listener = env.guest_tcp_listener_at((GUEST_ADDR, port));
    net::tcp_server(listener, |mut stream| {
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        if read_request_head(&mut stream).is_ok() {
            let body = peer_reply(peer);
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.shutdown(Shutdown::Write);
        }
    })
}

/// Reads until the blank line that ends an HTTP request head (or EOF).
fn read_request_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok(head)
}

/// `GET /` to `to`, from the calling thread's namespace; returns the response body.
pub fn http_get(to: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
    net::set_timeouts(&stream);
    write!(stream, "GET / HTTP/1.0\r\nHost: {to}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(io::Error::other(format!(
            "not an HTTP 200 response: {response:?}"
        ))),
    }
}

/// [`http_get`] from a thread in the host namespace.
pub fn host_http_get(env: &Env, to: SocketAddrV4) -> io::Result<String> {
    env.in_host("host http client", move || http_get(SocketAddr::V4(to)))
        .wait(STEP_TIMEOUT)
}

/// GETs `to` from the host namespace through a forward to [`guest_peer_http_server`] and
/// returns the client address the guest saw.
pub fn peer_seen_by_guest(env: &Env, to: SocketAddrV4) -> SocketAddr {
    let body = host_http_get(env, to).unwrap_or_else(|e| panic!("GET via {to}: {e}"));
    body.strip_prefix("peer ")
        .and_then(|peer| peer.parse().ok())
        .unwrap_or_else(|| panic!("unexpected body from the guest via {to}: {body:?}"))
}

/// Asks the control socket (list_hostfwd and get_stats in turn) every
/// `API_PROBE_INTERVAL` and records how long each answer took.
pub struct ApiProbe {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<Duration>>,
}

impl ApiProbe {
    pub fn start(api: &Api) -> ApiProbe {
        let api = Api {
            path: api.path.clone(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut latencies = Vec::new();
            let requests = [LIST_REQUEST, STATS_REQUEST];
            while !stop_flag.load(Ordering::SeqCst) {
                let request = requests[latencies.len() % 2];
                let started = Instant::now();
                let reply = api.request(request);
                latencies.push(started.elapsed());
                assert!(reply.starts_with('{'), "{request} answered {reply:?}");
                thread::sleep(API_PROBE_INTERVAL);
            }
            latencies
        });
        ApiProbe { stop, thread }
    }

    pub fn stop(self) -> Vec<Duration> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("API probe")
    }
}

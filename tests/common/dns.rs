//! DNS for the end-to-end tests: dnsmasq as the test's own DNS server in the host namespace
//! (answering only from its command line, forwarding nowhere), and a minimal client: queries
//! are built and answers parsed here, so no dig is needed.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use super::process::{command, Proc};
use super::Env;

/// The DNS forwarder's address with the default network.
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
pub const TYPE_A: u16 = 1;
pub const TYPE_TXT: u16 = 16;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// The name the readiness probe asks for; never one a test asks for.
const PROBE_NAME: &str = "ready.probe";
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of dnsmasq's log shown when a test fails.
const LOG_TAIL: usize = 40;

/// One record dnsmasq serves.
#[derive(Clone, Debug)]
pub enum Record {
    A(&'static str, Ipv4Addr),
    /// A TXT record with one character-string (at most 255 bytes).
    Txt(&'static str, String),
}

/// dnsmasq on `addr`:53 (UDP and TCP) in a test's host namespace; killed on drop.
pub struct Dnsmasq {
    proc: Proc,
    log_path: PathBuf,
    pub addr: Ipv4Addr,
}

impl Dnsmasq {
    /// Starts dnsmasq with exactly `records`, and waits until it answers on `addr`:53.
    /// `addr` must be local in the host namespace (127.0.0.1, or see [`add_loopback_addr`]).
    pub fn start(env: &Env, addr: Ipv4Addr, records: &[Record]) -> Dnsmasq {
        assert!(
            super::find_in_path("dnsmasq").is_some(),
            "dnsmasq not found: scripts/test.sh installs it (package dnsmasq-base)"
        );
        let log_path = env.tmp.path.join(format!("dnsmasq-{addr}.log"));
        let log = File::create(&log_path).expect("dnsmasq log");
        let mut cmd = command("ip", &["netns", "exec", &env.host.name, "dnsmasq"]);
        cmd.args([
            // In the foreground; TCP connections are served in-process, not by forked
            // children, so the one process Proc kills is all there is.
            "--no-daemon",
            "--conf-file=/dev/null",
            // No upstream at all: it answers from the records below or refuses.
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--pid-file=",
            "--port=53",
            &format!("--listen-address={addr}"),
            "--bind-interfaces",
            // Staying root keeps the parent-death signal Proc::spawn set (a uid change clears it).
            "--user=root",
            "--group=root",
            "--log-queries",
            "--log-facility=-",
            "--edns-packet-max=4096",
        ]);
        for record in records {
            match record {
                Record::A(name, ip) => cmd.arg(format!("--address=/{name}/{ip}")),
                Record::Txt(name, text) => cmd.arg(format!("--txt-record={name},{text}")),
            };
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        let mut server = Dnsmasq {
            proc: Proc::spawn(&mut cmd, "dnsmasq"),
            log_path,
            addr,
        };
        server.await_answers(env);
        server
    }

    fn await_answers(&mut self, env: &Env) {
        let to = SocketAddr::from((self.addr, 53));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.proc.try_status() {
                panic!("dnsmasq exited ({status}):\n{}", self.log());
            }
            let probe = env
                .in_host("dnsmasq probe", move || {
                    udp_query(
                        to,
                        &query(1, PROBE_NAME, TYPE_A, None),
                        Duration::from_millis(200),
                    )
                })
                .wait(START_TIMEOUT);
            if probe.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq on {to} does not answer after {START_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// dnsmasq's log (queries are logged).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// How many queries for `name` this server has received.
    pub fn queries_for(&self, name: &str) -> usize {
        let needle = format!("] {name} from ");
        self.log()
            .lines()
            .filter(|line| line.contains("query[") && line.contains(&needle))
            .count()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n");
            eprintln!("--- dnsmasq on {}, last lines ---\n{tail}", self.addr);
        }
    }
}

/// Adds `addr` (e.g. 127.0.0.2) to the host namespace's loopback, so a second server can
/// bind it.
pub fn add_loopback_addr(env: &Env, addr: Ipv4Addr) {
    env.host
        .ip(&["addr", "add", &format!("{addr}/8"), "dev", "lo"]);
}

/// A DNS query for `name`/`qtype` with recursion desired; with `edns` an OPT record
/// announcing that UDP payload size.
pub fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut msg = Vec::new();
    msg.extend(id.to_be_bytes());
    msg.extend(0x0100u16.to_be_bytes()); // RD
    msg.extend(1u16.to_be_bytes()); // QDCOUNT
    msg.extend([0, 0, 0, 0]); // ANCOUNT, NSCOUNT
    msg.extend(u16::from(edns.is_some()).to_be_bytes()); // ARCOUNT
    for label in name.split('.') {
        msg.push(u8::try_from(label.len()).expect("label length"));
        msg.extend(label.as_bytes());
    }
    msg.push(0);
    msg.extend(qtype.to_be_bytes());
    msg.extend(CLASS_IN.to_be_bytes());
    if let Some(size) = edns {
        msg.push(0); // root name
        msg.extend(TYPE_OPT.to_be_bytes());
        msg.extend(size.to_be_bytes());
        msg.extend([0, 0, 0, 0, 0, 0]); // TTL (extended rcode, flags), RDLENGTH
    }
    msg
}

/// What a test needs to know about a DNS answer.
#[derive(Debug)]
pub struct Answer {
    pub id: u16,
    pub truncated: bool,
    pub rcode: u8,
    /// (type, rdata) of each answer record.
    pub records: Vec<(u16, Vec<u8>)>,
    /// The size of the whole message.
    pub len: usize,
}

impl Answer {
    pub fn a(&self) -> Vec<Ipv4Addr> {
        self.records
            .iter()
            .filter(|(rtype, data)| *rtype == TYPE_A && data.len() == 4)
            .map(|(_, data)| Ipv4Addr::new(data[0], data[1], data[2], data[3]))
            .collect()
    }

    /// Each TXT record's character-strings, concatenated.
    pub fn txt(&self) -> Vec<String> {
        self.records
            .iter()
            .filter(|(rtype, _)| *rtype == TYPE_TXT)
            .map(|(_, data)| {
                let mut text = Vec::new();
                let mut rest = &data[..];
                while let Some((&len, tail)) = rest.split_first() {
                    let len = usize::from(len).min(tail.len());
                    text.extend(&tail[..len]);
                    rest = &tail[len..];
                }
                String::from_utf8_lossy(&text).into_owned()
            })
            .collect()
    }
}

/// Parses a DNS response; an error names what is malformed.
pub fn parse(msg: &[u8]) -> Result<Answer, String> {
    let u16_at = |pos: usize| -> Result<u16, String> {
        msg.get(pos..pos + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("message ends at {} (wanted 2 bytes at {pos})", msg.len()))
    };
    let id = u16_at(0)?;
    let flags = u16_at(2)?;
    if flags & 0x8000 == 0 {
        return Err("not a response (QR clear)".into());
    }
    let questions = u16_at(4)?;
    let answers = u16_at(6)?;
    let mut pos = 12;
    for _ in 0..questions {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut records = Vec::new();
    for _ in 0..answers {
        pos = skip_name(msg, pos)?;
        let rtype = u16_at(pos)?;
        let rdlen = usize::from(u16_at(pos + 8)?);
        let data = msg
            .get(pos + 10..pos + 10 + rdlen)
            .ok_or_else(|| format!("record data past the end ({} bytes)", msg.len()))?;
        records.push((rtype, data.to_vec()));
        pos += 10 + rdlen;
    }
    Ok(Answer {
        id,
        truncated: flags & 0x0200 != 0,
        rcode: (flags & 0x000f) as u8,
        records,
        len: msg.len(),
    })
}

/// The position after the (possibly compressed) name at `pos`.
fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize, String> {
    loop {
        let len = *msg.get(pos).ok_or("name past the end")?;
        match len {
            0 => return Ok(pos + 1),
            len if len & 0xc0 == 0xc0 => return Ok(pos + 2),
            len => pos += 1 + usize::from(len),
        }
    }
}

/// Sends `query` from a new UDP socket (so a new source port, a new flow) and returns the
/// answer from `to` with the query's id, or an error (e.g. timed out) after `timeout`.
/// Runs in whatever network namespace the calling thread is in.
pub fn udp_query(to: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let socket = UdpSocket::bind((super::net::unspecified_for(to.ip()), 0))?;
    socket.send_to(query, to)?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no DNS answer"));
        }
        socket.set_read_timeout(Some(left))?;
        let (len, from) = socket.recv_from(&mut buf)?;
        // Anything else (a stray answer to an earlier query, a datagram from elsewhere) is
        // not ours.
        if from == to && len >= 2 && buf[..2] == query[..2] {
            return Ok(buf[..len].to_vec());
        }
    }
}

/// Writes each query with its two-byte length prefix (all of them before reading, so they
/// are on the wire together), then reads as many answers.
pub fn tcp_exchange(stream: &mut TcpStream, queries: &[Vec<u8>]) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for query in queries {
        out.extend(
            u16::try_from(query.len())
                .expect("query size")
                .to_be_bytes(),
        );
        out.extend(query);
    }
    stream.write_all(&out)?;
    queries
        .iter()
        .map(|_| {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len)?;
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut answer)?;
            Ok(answer)
        })
        .collect()
}

impl Env {
    /// One UDP DNS query from the guest to `to` port 53, IPv4 or IPv6 (new socket, new
    /// source port each time).
    pub fn guest_dns_udp(
        &self,
        to: impl Into<IpAddr>,
        query: Vec<u8>,
        timeout: Duration,
    ) -> io::Result<Answer> {
        let to = SocketAddr::new(to.into(), 53);
        let msg = self
            .in_guest("guest DNS query", move || udp_query(to, &query, timeout))
            .wait(timeout + START_TIMEOUT)?;
        parse(&msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// `name`'s A records, asked over UDP from the guest to `to` port 53: up to three
    /// queries (ids from `first_id`), each from a new socket (a new source port) and given
    /// 2 s, in case one is lost.
    pub fn guest_dns_a_retried(
        &self,
        to: impl Into<IpAddr>,
        name: &str,
        first_id: u16,
    ) -> Vec<Ipv4Addr> {
        let to = to.into();
        let answer = (first_id..first_id + 3)
            .find_map(|id| {
                let query = query(id, name, TYPE_A, None);
                self.guest_dns_udp(to, query, Duration::from_secs(2)).ok()
            })
            .unwrap_or_else(|| panic!("no UDP answer from {}", SocketAddr::new(to, 53)));
        answer.a()
    }

    /// Asks for `name`'s A records over UDP from the guest, repeating with new queries
    /// (new source ports) until the answer is `expected`; panics if it is not by `within`.
    pub fn await_guest_dns_a(
        &self,
        to: Ipv4Addr,
        name: &str,
        expected: Ipv4Addr,
        within: Duration,
    ) {
        let deadline = Instant::now() + within;
        let mut id = 0x4000u16;
        loop {
            id = id.wrapping_add(1);
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = left.clamp(Duration::from_millis(50), Duration::from_millis(300));
            let last = match self.guest_dns_udp(to, query(id, name, TYPE_A, None), timeout) {
                Ok(answer) if answer.a() == [expected] => return,
                Ok(answer) => format!("{:?}", answer.a()),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "{name} from {to}: still {last} after {within:?}, wanted {expected}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

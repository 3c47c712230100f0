//! rslirpctl: a command-line client for rslirp's control socket (`rslirp --api-socket PATH`).
//!
//! It speaks the socket's protocol (one JSON request per connection, one JSON reply) so
//! that an operator never has to hand-write JSON: port forwards (`add`, `list`, `remove`),
//! the interface counters (`stats`) and the open flows (`flows`), shown as aligned tables,
//! or with `--json` the server's reply as is, for scripts. `add`, `list` and `remove` also
//! work against slirp4netns; `stats` and `flows` are rslirp's own.
//!
//! Exit status: 0 on success, 1 when the server refused the request or could not be
//! reached, 2 for a bad command line.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use rslirp_stack::api::{ForwardRequest, Request};
use rslirp_stack::forward::ForwardProto;
use serde_json::Value;

/// The socket when `--socket` is not given.
const SOCKET_ENV: &str = "RSLIRP_API_SOCKET";
/// rslirp answers at once; this only bounds a hung or foreign server.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The server refuses requests of 4096 bytes or more, and its replies are small; a cap
/// keeps a foreign server from feeding us forever.
const MAX_REPLY_BYTES: u64 = 16 << 20;

const USAGE: &str = "\
Usage: rslirpctl [--socket PATH] [--json] COMMAND [ARGS]
Control a running rslirp (or slirp4netns) through its --api-socket.

Commands:
  add tcp|udp [HOSTADDR:]HOSTPORT:GUESTPORT [--guest-addr ADDR]
                        publish a port: host HOSTADDR:HOSTPORT (default 0.0.0.0) to the
                        guest's GUESTPORT (default guest address 10.0.2.100, or ADDR);
                        IPv6 host addresses go in brackets: [::1]:8080:80
  list                  the published ports
  remove ID             unpublish a port (ID from add or list)
  stats                 interface counters, open flows and limits hit (rslirp only)
  flows                 every open flow: endpoints, state, bytes each way, age (rslirp only)

Options:
  -s, --socket PATH     the control socket (default: $RSLIRP_API_SOCKET)
  -j, --json            print the server's JSON reply as is (one line), for scripts
  -h, --help            show this help and exit
  -V, --version         show the version and exit

Exit status: 0 on success, 1 if the server refused the request or could not be reached,
2 for a bad command line. See rslirp(1) (docs/rslirp.1.md) for the protocol.
";

#[derive(Debug, PartialEq, Eq)]
struct Invocation {
    socket: PathBuf,
    json: bool,
    /// What to ask: the control protocol's own request type (rslirp_stack::api), which the
    /// server parses; a forward's addresses left out (`None`) are the server's defaults
    /// (0.0.0.0 and the guest address).
    cmd: Request,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Run(Invocation),
    Help,
    Version,
}

fn main() -> ExitCode {
    let socket_env = std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty());
    let invocation = match parse_args(std::env::args_os().skip(1), socket_env) {
        Ok(Parsed::Run(invocation)) => invocation,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("rslirpctl {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("rslirpctl: {message}\nTry 'rslirpctl --help' for more information.");
            return ExitCode::from(2);
        }
    };
    let outcome = run(&invocation);
    // With --json the reply is printed even when it is an error, for the script to read.
    if let Some(stdout) = &outcome.stdout {
        print!("{stdout}");
    }
    match outcome.error {
        None => ExitCode::SUCCESS,
        Some(message) => {
            eprintln!("rslirpctl: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What to print: stdout (a table, a line, or the raw reply) and the error, if any.
#[derive(Debug, Default)]
struct Outcome {
    stdout: Option<String>,
    error: Option<String>,
}

impl Outcome {
    fn failed(message: String) -> Outcome {
        Outcome {
            stdout: None,
            error: Some(message),
        }
    }
}

fn run(invocation: &Invocation) -> Outcome {
    let request = invocation.cmd.to_json();
    let raw = match exchange(&invocation.socket, &request) {
        Ok(raw) => raw,
        Err(message) => return Outcome::failed(message),
    };
    let reply: Value = match serde_json::from_str(&raw) {
        Ok(reply) => reply,
        Err(err) => return Outcome::failed(format!("the reply is not JSON ({err}): {raw:?}")),
    };
    let raw_line = invocation.json.then(|| format!("{raw}\n"));
    if let Some(desc) = error_desc(&reply) {
        return Outcome {
            stdout: raw_line,
            error: Some(explain_error(&invocation.cmd, desc)),
        };
    }
    if raw_line.is_some() {
        return Outcome {
            stdout: raw_line,
            error: None,
        };
    }
    match render(&invocation.cmd, &reply) {
        Some(text) => Outcome {
            stdout: Some(text),
            error: None,
        },
        None => Outcome::failed(format!("unexpected reply: {raw}")),
    }
}

// The command line.

fn parse_args(
    args: impl IntoIterator<Item = OsString>,
    socket_env: Option<OsString>,
) -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut socket = socket_env.map(PathBuf::from);
    let mut json = false;
    let mut guest_addr = None;
    let mut words = Vec::new();
    let message = |err: lexopt::Error| err.to_string();
    while let Some(arg) = parser.next().map_err(message)? {
        match arg {
            Short('s') | Long("socket") => socket = Some(parser.value().map_err(message)?.into()),
            Short('j') | Long("json") => json = true,
            Long("guest-addr") => {
                let value = parser.value().and_then(|v| v.string()).map_err(message)?;
                guest_addr = Some(parse_addr(&value).ok_or_else(|| {
                    format!("--guest-addr must be an IPv4 or IPv6 address, not {value:?}")
                })?);
            }
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Short('V') | Long("version") => return Ok(Parsed::Version),
            Value(word) => words.push(
                word.into_string()
                    .map_err(|w| format!("not valid UTF-8: {}", w.to_string_lossy()))?,
            ),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    let socket = socket
        .ok_or_else(|| format!("no control socket: give --socket PATH (or set {SOCKET_ENV})"))?;
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let cmd = match words.as_slice() {
        ["add", proto, spec] => {
            let proto = match *proto {
                "tcp" => ForwardProto::Tcp,
                "udp" => ForwardProto::Udp,
                other => return Err(format!("add: protocol must be tcp or udp, not {other:?}")),
            };
            let (host_addr, host_port, guest_port) = parse_forward_spec(spec)?;
            Request::AddHostfwd(ForwardRequest {
                proto,
                host_addr,
                host_port,
                guest_addr: guest_addr.take(),
                guest_port,
            })
        }
        ["add", ..] => {
            return Err(
                "usage: add tcp|udp [HOSTADDR:]HOSTPORT:GUESTPORT [--guest-addr ADDR]".into(),
            )
        }
        ["list"] => Request::ListHostfwd,
        ["remove", id] => Request::RemoveHostfwd {
            id: id
                .parse()
                .ok()
                .filter(|&id| id > 0)
                .ok_or_else(|| format!("remove: ID must be a positive integer, not {id:?}"))?,
        },
        ["remove", ..] => return Err("usage: remove ID".into()),
        ["stats"] => Request::GetStats,
        ["flows"] => Request::ListFlows,
        [] => return Err("no command given (add, list, remove, stats or flows)".into()),
        [cmd @ ("list" | "stats" | "flows"), ..] => {
            return Err(format!("{cmd} takes no arguments"))
        }
        [other, ..] => {
            return Err(format!(
                "unknown command {other:?} (add, list, remove, stats or flows)"
            ))
        }
    };
    if guest_addr.is_some() {
        return Err("--guest-addr only goes with add".into());
    }
    Ok(Parsed::Run(Invocation { socket, json, cmd }))
}

/// `[HOSTADDR:]HOSTPORT:GUESTPORT`, with an IPv6 HOSTADDR in brackets (`[::1]:8080:80`).
fn parse_forward_spec(spec: &str) -> Result<(Option<IpAddr>, u16, u16), String> {
    let (host_addr, ports) = if let Some(rest) = spec.strip_prefix('[') {
        let (addr, ports) = rest
            .split_once("]:")
            .ok_or_else(|| format!("expected [HOSTADDR]:HOSTPORT:GUESTPORT, not {spec:?}"))?;
        let addr = addr
            .parse::<IpAddr>()
            .map_err(|_| format!("{addr:?} is not an IP address (in {spec:?})"))?;
        (Some(addr), ports)
    } else {
        match spec.matches(':').count() {
            1 => (None, spec),
            2 => {
                let (addr, ports) = spec.split_once(':').unwrap_or_default();
                // An empty HOSTADDR (":8080:80") is the server's default, as in the API.
                let addr = match addr {
                    "" => None,
                    addr => Some(
                        addr.parse::<IpAddr>()
                            .map_err(|_| format!("{addr:?} is not an IP address (in {spec:?})"))?,
                    ),
                };
                (addr, ports)
            }
            0 => {
                return Err(format!(
                    "expected [HOSTADDR:]HOSTPORT:GUESTPORT, not {spec:?}"
                ))
            }
            _ => {
                return Err(format!(
                    "IPv6 host addresses go in brackets, as in [::1]:8080:80 (got {spec:?})"
                ))
            }
        }
    };
    let (host_port, guest_port) = ports
        .split_once(':')
        .ok_or_else(|| format!("expected HOSTPORT:GUESTPORT after the address in {spec:?}"))?;
    Ok((host_addr, parse_port(host_port)?, parse_port(guest_port)?))
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|&port| port != 0)
        .ok_or_else(|| format!("{text:?} is not a port (1-65535)"))
}

/// An address, with or without the brackets of the IPv6 form used in `[::1]:8080`.
fn parse_addr(text: &str) -> Option<IpAddr> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().ok()
}

// The protocol.

/// Sends one request and reads the reply to EOF. The write side is shut down after the
/// request, which is how rootlesskit and podman talk to slirp4netns too.
fn exchange(socket: &std::path::Path, request: &[u8]) -> Result<String, String> {
    let path = socket.display();
    let mut stream = UnixStream::connect(socket).map_err(|err| {
        let hint = match err.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                format!(" (is rslirp running with --api-socket {path}?)")
            }
            _ => String::new(),
        };
        format!("cannot connect to {path}: {err}{hint}")
    })?;
    let talk = |stream: &mut UnixStream| -> io::Result<Vec<u8>> {
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        stream.write_all(request)?;
        stream.shutdown(Shutdown::Write)?;
        let mut reply = Vec::new();
        stream.take(MAX_REPLY_BYTES).read_to_end(&mut reply)?;
        Ok(reply)
    };
    let reply = talk(&mut stream).map_err(|err| match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no reply from {path} within {}s", REPLY_TIMEOUT.as_secs())
        }
        _ => format!("talking to {path}: {err}"),
    })?;
    if reply.is_empty() {
        return Err(format!("{path} closed the connection without a reply"));
    }
    String::from_utf8(reply).map_err(|_| format!("the reply from {path} is not UTF-8"))
}

/// `{"error":{"desc":"..."}}` → the description.
fn error_desc(reply: &Value) -> Option<&str> {
    let error = reply.get("error")?;
    Some(error.get("desc").and_then(Value::as_str).unwrap_or("error"))
}

/// The server's error, with a hint where the text alone leaves an operator guessing.
fn explain_error(cmd: &Request, desc: &str) -> String {
    let hint = match (cmd, desc.strip_prefix("bad request: ").unwrap_or(desc)) {
        (Request::GetStats | Request::ListFlows, "unknown execute") => {
            " (this server has no such request: stats and flows need rslirp, not slirp4netns)"
        }
        (Request::AddHostfwd(_), "add_hostfwd: slirp_add_hostfwd failed") => {
            " (is the host port already in use, or by another forward?)"
        }
        (Request::RemoveHostfwd { .. }, "remove_hostfwd: bad arguments.id") => {
            " (no forward has this id)"
        }
        _ => "",
    };
    format!("{desc}{hint}")
}

// Human-readable output.

fn render(cmd: &Request, reply: &Value) -> Option<String> {
    match cmd {
        Request::AddHostfwd(fwd) => {
            let id = reply.get("return")?.get("id")?.as_u64()?;
            Some(format!("forward {id} added: {}\n", describe(fwd)))
        }
        Request::RemoveHostfwd { id } => {
            reply.get("return")?;
            Some(format!("forward {id} removed\n"))
        }
        Request::ListHostfwd => render_forwards(reply.get("entries")?.as_array()?),
        Request::GetStats => render_stats(reply.get("return")?),
        Request::ListFlows => render_flows(reply.get("return")?.get("flows")?.as_array()?),
    }
}

/// `tcp 0.0.0.0:8080 -> guest port 80`
fn describe(fwd: &ForwardRequest) -> String {
    let host = SocketAddr::new(
        fwd.host_addr.unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
        fwd.host_port,
    );
    let guest = match fwd.guest_addr {
        Some(addr) => SocketAddr::new(addr, fwd.guest_port).to_string(),
        None => format!("guest port {}", fwd.guest_port),
    };
    format!("{} {host} -> {guest}", fwd.proto.as_str())
}

fn render_forwards(entries: &[Value]) -> Option<String> {
    let mut rows = Vec::new();
    for entry in entries {
        rows.push(vec![
            text(entry.get("id")),
            text(entry.get("proto")),
            endpoint(entry.get("host_addr")?, entry.get("host_port")?),
            endpoint(entry.get("guest_addr")?, entry.get("guest_port")?),
        ]);
    }
    Some(table(
        &[
            Column::right("ID"),
            Column::left("PROTO"),
            Column::left("HOST"),
            Column::left("GUEST"),
        ],
        &rows,
    ))
}

/// The fields of one direction of an interface, in libnetwork's order.
const INTERFACE_FIELDS: [&str; 4] = ["bytes", "packets", "errors", "dropped"];
/// Flow gauges in a fixed order; others a newer server adds follow alphabetically.
const FLOW_KINDS: [&str; 3] = ["tcp", "udp", "icmp"];

fn render_stats(stats: &Value) -> Option<String> {
    let mut out = String::new();
    let mut rows = Vec::new();
    for (name, counters) in stats.get("interfaces")?.as_object()? {
        for (direction, meaning) in [("rx", "from guest"), ("tx", "to guest")] {
            let mut row = vec![name.clone(), format!("{direction} ({meaning})")];
            for field in INTERFACE_FIELDS {
                let value = counters.get(format!("{direction}_{field}"));
                row.push(match (field, value.and_then(Value::as_u64)) {
                    ("bytes", Some(bytes)) => human_bytes(bytes),
                    _ => text(value),
                });
            }
            rows.push(row);
        }
    }
    out.push_str(&table(
        &[
            Column::left("INTERFACE"),
            Column::left("DIRECTION"),
            Column::right("BYTES"),
            Column::right("PACKETS"),
            Column::right("ERRORS"),
            Column::right("DROPPED"),
        ],
        &rows,
    ));
    if let Some(flows) = stats.get("flows").and_then(Value::as_object) {
        let mut kinds: Vec<&str> = FLOW_KINDS
            .into_iter()
            .filter(|k| flows.contains_key(*k))
            .collect();
        kinds.extend(
            flows
                .keys()
                .map(String::as_str)
                .filter(|k| !FLOW_KINDS.contains(k)),
        );
        let rows: Vec<Vec<String>> = kinds
            .into_iter()
            .map(|kind| vec![kind.to_string(), text(flows.get(kind))])
            .collect();
        out.push('\n');
        out.push_str(&table(
            &[Column::left("FLOWS"), Column::right("OPEN")],
            &rows,
        ));
    }
    if let Some(counters) = stats.get("counters").and_then(Value::as_object) {
        let rows: Vec<Vec<String>> = counters
            .iter()
            .map(|(name, value)| vec![name.clone(), text(Some(value))])
            .collect();
        out.push('\n');
        out.push_str(&table(
            &[Column::left("COUNTER"), Column::right("VALUE")],
            &rows,
        ));
    }
    Some(out)
}

/// What a column of the flows table shows for one flow.
type FlowCell = fn(&Value) -> String;

fn render_flows(flows: &[Value]) -> Option<String> {
    let mut flows: Vec<&Value> = flows.iter().collect();
    flows.sort_by_key(|flow| flow.get("id").and_then(Value::as_u64));
    // Each column with the cell it shows for a flow.
    let columns: [(Column, FlowCell); 9] = [
        (Column::right("ID"), |flow| text(flow.get("id"))),
        (Column::left("PROTO"), |flow| text(flow.get("proto"))),
        (Column::left("GUEST"), |flow| text(flow.get("guest"))),
        (Column::left("REMOTE"), |flow| text(flow.get("remote"))),
        (Column::left("HOST"), |flow| text(flow.get("host"))),
        (Column::left("STATE"), |flow| text(flow.get("state"))),
        (Column::right("FROM_GUEST"), |flow| {
            number_or_text(flow.get("rx_bytes"), human_bytes)
        }),
        (Column::right("TO_GUEST"), |flow| {
            number_or_text(flow.get("tx_bytes"), human_bytes)
        }),
        (Column::right("AGE"), |flow| {
            number_or_text(flow.get("age_ms"), human_age)
        }),
    ];
    let rows: Vec<Vec<String>> = flows
        .into_iter()
        .map(|flow| columns.iter().map(|(_, cell)| cell(flow)).collect())
        .collect();
    let columns: Vec<Column> = columns.into_iter().map(|(column, _)| column).collect();
    Some(table(&columns, &rows))
}

/// A number as `show` writes it; anything else as [`text`] does.
fn number_or_text(value: Option<&Value>, show: fn(u64) -> String) -> String {
    match value.and_then(Value::as_u64) {
        Some(number) => show(number),
        None => text(value),
    }
}

/// `10.0.2.100:80`, `[::1]:8080`; falls back to the raw values if they are not an address
/// and a port.
fn endpoint(addr: &Value, port: &Value) -> String {
    let parsed = addr.as_str().and_then(parse_addr).zip(port.as_u64());
    match parsed.and_then(|(ip, port)| Some(SocketAddr::new(ip, u16::try_from(port).ok()?))) {
        Some(addr) => addr.to_string(),
        None => format!("{}:{}", text(Some(addr)), text(Some(port))),
    }
}

/// A JSON value as a table cell: strings without quotes, `-` for missing or null.
fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// `512B`, `1.5KiB`, `12.0MiB`: exact below 1 KiB, one decimal above (exact numbers are
/// in `--json`). No space, so that cells stay one word for awk.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// `850ms`, `12.3s`, `5m07s`, `2h03m`, `3d04h`.
fn human_age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..=59 => format!("{secs}.{}s", (ms % 1000) / 100),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

struct Column {
    title: &'static str,
    /// Numbers line up on the right, text on the left.
    right: bool,
}

impl Column {
    fn left(title: &'static str) -> Column {
        Column {
            title,
            right: false,
        }
    }

    fn right(title: &'static str) -> Column {
        Column { title, right: true }
    }
}

/// A header line and one line per row, columns two spaces apart, no trailing spaces.
fn table(columns: &[Column], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            rows.iter()
                .filter_map(|row| row.get(i))
                .map(|cell| cell.chars().count())
                .chain([column.title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let titles: Vec<String> = columns.iter().map(|c| c.title.to_string()).collect();
    for row in std::iter::once(&titles).chain(rows) {
        let mut line = String::new();
        for (i, (column, width)) in columns.iter().zip(&widths).enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            if i > 0 {
                line.push_str("  ");
            }
            // Infallible: writing into a String.
            let _ = if column.right {
                write!(line, "{cell:>width$}")
            } else {
                write!(line, "{cell:<width$}")
            };
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(words: &[&str]) -> Result<Parsed, String> {
        parse_args(words.iter().map(OsString::from), None)
    }

    fn cmd(words: &[&str]) -> Request {
        let mut all = vec!["--socket", "/s"];
        all.extend_from_slice(words);
        match parse(&all) {
            Ok(Parsed::Run(invocation)) => invocation.cmd,
            other => panic!("{words:?}: {other:?}"),
        }
    }

    fn usage_error(words: &[&str]) -> String {
        let mut all = vec!["-s", "/s"];
        all.extend_from_slice(words);
        match parse(&all) {
            Err(message) => message,
            other => panic!("{words:?}: expected an error, got {other:?}"),
        }
    }

    fn fwd(host: Option<&str>, host_port: u16, guest: Option<&str>, guest_port: u16) -> Request {
        Request::AddHostfwd(ForwardRequest {
            proto: ForwardProto::Tcp,
            host_addr: host.map(|a| a.parse().expect("address")),
            host_port,
            guest_addr: guest.map(|a| a.parse().expect("address")),
            guest_port,
        })
    }

    #[test]
    fn add_specs() {
        assert_eq!(cmd(&["add", "tcp", "8080:80"]), fwd(None, 8080, None, 80));
        assert_eq!(
            cmd(&["add", "tcp", "127.0.0.1:8080:80"]),
            fwd(Some("127.0.0.1"), 8080, None, 80)
        );
        assert_eq!(
            cmd(&["add", "tcp", "[::1]:8080:80"]),
            fwd(Some("::1"), 8080, None, 80)
        );
        assert_eq!(cmd(&["add", "tcp", ":8080:80"]), fwd(None, 8080, None, 80));
        assert_eq!(
            cmd(&["add", "--guest-addr", "10.0.2.5", "tcp", "8080:80"]),
            fwd(None, 8080, Some("10.0.2.5"), 80)
        );
        assert_eq!(
            cmd(&["add", "tcp", "8080:80", "--guest-addr=[fd00::100]"]),
            fwd(None, 8080, Some("fd00::100"), 80)
        );
        match cmd(&["add", "udp", "53:53"]) {
            Request::AddHostfwd(ForwardRequest {
                proto: ForwardProto::Udp,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_add_specs_say_what_is_wrong() {
        assert!(usage_error(&["add", "tcp", "::1:8080:80"]).contains("brackets"));
        assert!(usage_error(&["add", "tcp", "8080"]).contains("HOSTPORT:GUESTPORT"));
        assert!(usage_error(&["add", "tcp", "0:80"]).contains("\"0\" is not a port"));
        assert!(usage_error(&["add", "tcp", "8080:65536"]).contains("not a port"));
        assert!(usage_error(&["add", "tcp", "x.y:1:2"]).contains("not an IP address"));
        assert!(usage_error(&["add", "tcp", "[::1]8080:80"]).contains("[HOSTADDR]"));
        assert!(usage_error(&["add", "sctp", "1:2"]).contains("tcp or udp"));
        assert!(usage_error(&["add", "tcp"]).starts_with("usage: add"));
        assert!(usage_error(&["add", "tcp", "1:2", "--guest-addr", "x"]).contains("--guest-addr"));
        assert!(usage_error(&["list", "--guest-addr", "10.0.2.5"]).contains("only goes with add"));
    }

    #[test]
    fn other_commands() {
        assert_eq!(cmd(&["list"]), Request::ListHostfwd);
        assert_eq!(cmd(&["remove", "7"]), Request::RemoveHostfwd { id: 7 });
        assert_eq!(cmd(&["stats"]), Request::GetStats);
        assert_eq!(cmd(&["flows"]), Request::ListFlows);
        assert!(usage_error(&["remove", "0"]).contains("positive integer"));
        assert!(usage_error(&["remove", "x"]).contains("positive integer"));
        assert!(usage_error(&["remove"]).contains("usage: remove ID"));
        assert!(usage_error(&["list", "x"]).contains("takes no arguments"));
        assert!(usage_error(&["frobnicate"]).contains("unknown command"));
        assert!(usage_error(&[]).contains("no command"));
        assert!(usage_error(&["--bogus", "list"]).contains("--bogus"));
    }

    #[test]
    fn socket_and_json_flags() {
        let run = |words: &[&str], env: Option<&str>| {
            parse_args(words.iter().map(OsString::from), env.map(OsString::from))
        };
        assert_eq!(
            run(&["list", "--json", "--socket=/a"], None),
            Ok(Parsed::Run(Invocation {
                socket: "/a".into(),
                json: true,
                cmd: Request::ListHostfwd
            }))
        );
        // The option wins over the environment.
        assert_eq!(
            run(&["-j", "-s", "/a", "stats"], Some("/env")),
            Ok(Parsed::Run(Invocation {
                socket: "/a".into(),
                json: true,
                cmd: Request::GetStats
            }))
        );
        assert_eq!(
            run(&["flows"], Some("/env")),
            Ok(Parsed::Run(Invocation {
                socket: "/env".into(),
                json: false,
                cmd: Request::ListFlows
            }))
        );
        assert!(run(&["list"], None)
            .unwrap_err()
            .contains("RSLIRP_API_SOCKET"));
        assert_eq!(run(&["list", "--help"], None), Ok(Parsed::Help));
        assert_eq!(run(&["-V"], None), Ok(Parsed::Version));
    }

    #[test]
    fn requests_leave_defaults_to_the_server() {
        let bytes = |request: &Request| String::from_utf8(request.to_json()).expect("UTF-8");
        assert_eq!(
            bytes(&fwd(None, 8080, None, 80)),
            r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":8080,"guest_port":80}}"#
        );
        assert_eq!(
            bytes(&fwd(Some("::1"), 8080, Some("10.0.2.5"), 80)),
            r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::1","host_port":8080,"guest_addr":"10.0.2.5","guest_port":80}}"#
        );
        assert_eq!(
            bytes(&Request::RemoveHostfwd { id: 3 }),
            r#"{"execute":"remove_hostfwd","arguments":{"id":3}}"#
        );
        assert_eq!(bytes(&Request::ListFlows), r#"{"execute":"list_flows"}"#);
    }

    fn rendered(cmd: &Request, reply: &str) -> String {
        let reply: Value = serde_json::from_str(reply).expect("test reply");
        render(cmd, &reply).expect("renders")
    }

    #[test]
    fn list_table() {
        let reply = r#"{"entries":[
            {"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},
            {"id":12,"proto":"udp","host_addr":"::1","host_port":53,"guest_addr":"fd00::100","guest_port":5353}]}"#;
        assert_eq!(
            rendered(&Request::ListHostfwd, reply),
            "\
ID  PROTO  HOST          GUEST
 1  tcp    0.0.0.0:8080  10.0.2.100:80
12  udp    [::1]:53      [fd00::100]:5353
"
        );
        assert_eq!(
            rendered(&Request::ListHostfwd, r#"{"entries":[]}"#),
            "ID  PROTO  HOST  GUEST\n"
        );
    }

    #[test]
    fn flows_table() {
        let reply = r#"{"return":{"flows":[
            {"id":9,"proto":"udp","guest":"10.0.2.100:5000","remote":"10.0.2.3:53","host":"127.0.0.53:53","state":"Open","rx_bytes":40,"tx_bytes":120,"age_ms":850},
            {"id":2,"proto":"tcp","guest":"10.0.2.100:40000","remote":"10.0.2.2:80","host":"127.0.0.1:80","state":"Established","rx_bytes":1536,"tx_bytes":10485760,"age_ms":307000}]}}"#;
        assert_eq!(
            rendered(&Request::ListFlows, reply),
            "\
ID  PROTO  GUEST             REMOTE       HOST           STATE        FROM_GUEST  TO_GUEST    AGE
 2  tcp    10.0.2.100:40000  10.0.2.2:80  127.0.0.1:80   Established      1.5KiB   10.0MiB  5m07s
 9  udp    10.0.2.100:5000   10.0.2.3:53  127.0.0.53:53  Open                40B      120B  850ms
"
        );
        // Fields a flow does not have (or a server does not send) show as `-`.
        assert_eq!(
            rendered(
                &Request::ListFlows,
                r#"{"return":{"flows":[{"id":1,"proto":"icmp"}]}}"#
            ),
            "\
ID  PROTO  GUEST  REMOTE  HOST  STATE  FROM_GUEST  TO_GUEST  AGE
 1  icmp   -      -       -     -               -         -    -
"
        );
    }

    #[test]
    fn stats_tables() {
        let reply = r#"{"return":{"interfaces":{"tap":{"rx_bytes":2048,"rx_packets":20,"rx_errors":0,"rx_dropped":1,"tx_bytes":100,"tx_packets":2,"tx_errors":0,"tx_dropped":0}},"flows":{"tcp":3,"udp":1,"icmp":0},"counters":{"tcp_flows_opened":5,"host_socket_errors":0}}}"#;
        assert_eq!(
            rendered(&Request::GetStats, reply),
            "\
INTERFACE  DIRECTION         BYTES  PACKETS  ERRORS  DROPPED
tap        rx (from guest)  2.0KiB       20       0        1
tap        tx (to guest)      100B        2       0        0

FLOWS  OPEN
tcp       3
udp       1
icmp      0

COUNTER             VALUE
host_socket_errors      0
tcp_flows_opened        5
"
        );
    }

    #[test]
    fn add_and_remove_lines() {
        assert_eq!(
            rendered(&fwd(None, 8080, None, 80), r#"{"return":{"id":4}}"#),
            "forward 4 added: tcp 0.0.0.0:8080 -> guest port 80\n"
        );
        assert_eq!(
            rendered(
                &fwd(Some("::1"), 8080, Some("fd00::5"), 80),
                r#"{"return":{"id":4}}"#
            ),
            "forward 4 added: tcp [::1]:8080 -> [fd00::5]:80\n"
        );
        assert_eq!(
            rendered(&Request::RemoveHostfwd { id: 4 }, r#"{"return":{}}"#),
            "forward 4 removed\n"
        );
        let odd: Value = serde_json::from_str(r#"{"return":{"id":"x"}}"#).expect("json");
        assert_eq!(render(&fwd(None, 1, None, 1), &odd), None);
    }

    #[test]
    fn error_replies_get_hints() {
        let reply: Value =
            serde_json::from_str(r#"{"error":{"desc":"bad request: unknown execute"}}"#)
                .expect("json");
        let desc = error_desc(&reply).expect("an error");
        assert_eq!(
            explain_error(&Request::ListFlows, desc),
            "bad request: unknown execute (this server has no such request: stats and flows \
             need rslirp, not slirp4netns)"
        );
        assert_eq!(
            explain_error(&Request::ListHostfwd, desc),
            "bad request: unknown execute"
        );
        assert_eq!(error_desc(&json!({"return": {}})), None);
    }

    #[test]
    fn units() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1024), "1.0KiB");
        assert_eq!(human_bytes(3 << 30), "3.0GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0EiB");
        assert_eq!(human_age(0), "0ms");
        assert_eq!(human_age(12_345), "12.3s");
        assert_eq!(human_age(60_000), "1m00s");
        assert_eq!(human_age(7_380_000), "2h03m");
        assert_eq!(human_age(273_600_000), "3d04h");
    }

    #[test]
    fn connection_failure_names_the_socket() {
        let outcome = run(&Invocation {
            socket: "/nonexistent/rslirp.sock".into(),
            json: true,
            cmd: Request::ListHostfwd,
        });
        assert_eq!(outcome.stdout, None);
        assert_eq!(
            outcome.error.as_deref(),
            Some(
                "cannot connect to /nonexistent/rslirp.sock: No such file or directory (os \
                 error 2) (is rslirp running with --api-socket /nonexistent/rslirp.sock?)"
            )
        );
    }
}

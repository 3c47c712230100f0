//! End-to-end: the operator's tools against a running rslirp — `rslirpctl` (forwards,
//! stats, flows; tables and `--json`) and `--pcap` (a capture tcpdump reads back, with the
//! expected frames, within its size bound, also under the sandbox). Rootful: neither tool
//! cares who runs rslirp, and the rootless path of the socket is covered by e2e_api.

// Every test here is rootful, so the both-modes macro goes unused.
#[allow(unused_macros)]
mod common;

use common::api::{self, Api};
use common::ctl::{ctl_fails, ctl_json, ctl_ok, parse_tables, Table};
use common::net::Pattern;
use common::pcap::{count_containing, tcpdump_lines};
use common::process::wait_for;
use common::{Env, Mode, Rslirp, EXIT_TIMEOUT, GATEWAY, GUEST_ADDR, STEP_TIMEOUT};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pings of the capture test: enough to count, quick at 10 ms apart.
const PINGS: usize = 100;

/// An environment with rslirp running and its control socket.
fn started(extra: &[&str]) -> (Env, Api, Rslirp) {
    let env = Env::new(Mode::Rootful);
    let api = Api::new(&env);
    let mut launch = api.launch(&env);
    for arg in extra {
        launch = launch.arg(arg);
    }
    let rslirp = launch.start();
    (env, api, rslirp)
}

fn only_table(text: &str) -> Table {
    let mut tables = parse_tables(text);
    assert_eq!(tables.len(), 1, "one table expected:\n{text}");
    tables.remove(0)
}

/// `list` as (id, proto, host, guest) rows.
fn listed(socket: &Path) -> Vec<[String; 4]> {
    let table = only_table(&ctl_ok(socket, &["list"]));
    assert_eq!(table.titles, ["ID", "PROTO", "HOST", "GUEST"]);
    table
        .rows
        .iter()
        .map(|row| ["ID", "PROTO", "HOST", "GUEST"].map(|title| row[title].clone()))
        .collect()
}

fn row(id: &str, proto: &str, host: &str, guest: &str) -> [String; 4] {
    [id, proto, host, guest].map(str::to_string)
}

#[test]
fn forwards_add_list_remove() {
    let (env, api, _rslirp) = started(&[]);
    let socket = api.path.as_path();
    assert_eq!(ctl_ok(socket, &["list"]), "ID  PROTO  HOST  GUEST\n");

    assert_eq!(
        ctl_ok(socket, &["add", "tcp", "8080:80"]),
        "forward 1 added: tcp 0.0.0.0:8080 -> guest port 80\n"
    );
    assert_eq!(
        ctl_ok(socket, &["add", "udp", "127.0.0.1:5353:53"]),
        "forward 2 added: udp 127.0.0.1:5353 -> guest port 53\n"
    );
    assert_eq!(
        ctl_ok(
            socket,
            &["add", "tcp", "[::1]:8081:81", "--guest-addr", "10.0.2.100"]
        ),
        "forward 3 added: tcp [::1]:8081 -> 10.0.2.100:81\n"
    );
    assert_eq!(
        listed(socket),
        [
            row("1", "tcp", "0.0.0.0:8080", "10.0.2.100:80"),
            row("2", "udp", "127.0.0.1:5353", "10.0.2.100:53"),
            row("3", "tcp", "[::1]:8081", "10.0.2.100:81"),
        ]
    );
    // --json is the server's reply as is, one line, for scripts.
    let (value, raw) = ctl_json(socket, &["list"]);
    assert_eq!(raw, format!("{}\n", api.list()));
    assert_eq!(value["entries"][2]["host_addr"], "::1");

    // The forward rslirpctl added carries traffic.
    let _server = api::guest_peer_http_server(&env, 80);
    let seen = api::peer_seen_by_guest(&env, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
    assert_eq!(
        seen.ip(),
        GATEWAY,
        "a loopback client appears as the gateway"
    );

    assert_eq!(ctl_ok(socket, &["remove", "2"]), "forward 2 removed\n");
    assert_eq!(
        listed(socket),
        [
            row("1", "tcp", "0.0.0.0:8080", "10.0.2.100:80"),
            row("3", "tcp", "[::1]:8081", "10.0.2.100:81"),
        ]
    );
    let (value, _) = ctl_json(socket, &["add", "udp", "5353:53"]);
    assert_eq!(value, serde_json::json!({"return": {"id": 4}}));
}

#[test]
fn refused_requests_and_unreachable_sockets_exit_1() {
    let (env, api, _rslirp) = started(&[]);
    let socket = api.path.as_path();
    ctl_ok(socket, &["add", "tcp", "8080:80"]);

    let stderr = ctl_fails(socket, &["add", "tcp", "8080:80"], 1);
    assert_eq!(
        stderr,
        "rslirpctl: bad request: add_hostfwd: slirp_add_hostfwd failed (is the host port \
         already in use, or by another forward?)\n"
    );
    let stderr = ctl_fails(socket, &["remove", "7"], 1);
    assert!(
        stderr.starts_with("rslirpctl: bad request: remove_hostfwd: bad arguments.id"),
        "{stderr}"
    );
    // With --json the error reply still reaches stdout for the script; the status says 1.
    let out = common::ctl::ctl(socket, &["--json", "remove", "7"]);
    assert_eq!(out.status.code(), Some(1));
    let reply: Value = serde_json::from_slice(&out.stdout).expect("the error reply is JSON");
    assert_eq!(
        reply["error"]["desc"],
        "bad request: remove_hostfwd: bad arguments.id"
    );
    assert_eq!(
        listed(socket),
        [row("1", "tcp", "0.0.0.0:8080", "10.0.2.100:80")]
    );

    let missing = env.tmp.path.join("no-such.sock");
    let stderr = ctl_fails(&missing, &["list"], 1);
    assert!(
        stderr.starts_with(&format!(
            "rslirpctl: cannot connect to {}",
            missing.display()
        )) && stderr.contains("is rslirp running with --api-socket"),
        "{stderr}"
    );
    // Bad command lines are refused before any connection, with status 2.
    for args in [
        &["add", "tcp", "::1:8080:80"][..],
        &["add", "sctp", "1:2"],
        &["remove", "x"],
        &["frobnicate"],
    ] {
        let stderr = ctl_fails(socket, args, 2);
        assert!(stderr.starts_with("rslirpctl: "), "{args:?}: {stderr}");
    }
}

#[test]
fn stats_and_flows_show_a_live_connection() {
    let (env, api, _rslirp) = started(&[]);
    let socket = api.path.as_path();
    let server = env.host_echo_server(Ipv4Addr::LOCALHOST);
    let stream = env
        .guest_connect(SocketAddrV4::new(GATEWAY, server.port()), CONNECT_TIMEOUT)
        .expect("connect to the host's loopback via the gateway");
    // Echo some data but keep the connection open, so the flow is listed as established.
    const ECHOED: usize = 100_000;
    let payload = Pattern::bytes(3, ECHOED);
    let mut reader = stream.try_clone().expect("clone");
    std::io::Write::write_all(&mut &stream, &payload).expect("send");
    let mut echoed = vec![0u8; ECHOED];
    std::io::Read::read_exact(&mut reader, &mut echoed).expect("echo");
    assert!(echoed == payload, "echo returned different bytes");
    let guest_end = stream.local_addr().expect("local addr").to_string();
    let remote = format!("{GATEWAY}:{}", server.port());
    let host = format!("127.0.0.1:{}", server.port());

    let table = only_table(&ctl_ok(socket, &["flows"]));
    assert_eq!(
        table.titles,
        [
            "ID",
            "PROTO",
            "GUEST",
            "REMOTE",
            "HOST",
            "STATE",
            "FROM_GUEST",
            "TO_GUEST",
            "AGE"
        ]
    );
    let flows = table.rows_where("GUEST", &guest_end);
    assert_eq!(flows.len(), 1, "our connection in {table:?}");
    let flow = flows[0];
    assert_eq!(
        [
            &flow["PROTO"],
            &flow["REMOTE"],
            &flow["HOST"],
            &flow["STATE"]
        ],
        ["tcp", &remote, &host, "Established"]
    );
    // 100000 bytes each way, shown in KiB.
    assert!(flow["FROM_GUEST"].ends_with("KiB"), "{flow:?}");

    let (value, _) = ctl_json(socket, &["flows"]);
    let flows = value["return"]["flows"].as_array().expect("flows array");
    let flow = flows
        .iter()
        .find(|flow| flow["guest"] == guest_end.as_str())
        .unwrap_or_else(|| panic!("our connection in {value}"));
    assert_eq!(flow["proto"], "tcp");
    assert_eq!(flow["remote"], remote.as_str());
    assert_eq!(flow["host"], host.as_str());
    assert!(flow["rx_bytes"].as_u64() >= Some(ECHOED as u64), "{flow}");
    assert!(flow["tx_bytes"].as_u64() >= Some(ECHOED as u64), "{flow}");
    assert!(flow["age_ms"].as_u64().is_some(), "{flow}");

    let tables = parse_tables(&ctl_ok(socket, &["stats"]));
    let titles: Vec<&str> = tables.iter().map(|t| t.titles[0].as_str()).collect();
    assert_eq!(titles, ["INTERFACE", "FLOWS", "COUNTER"]);
    let tap = tables[0].rows_where("INTERFACE", "tap");
    let directions: Vec<&str> = tap.iter().map(|r| r["DIRECTION"].as_str()).collect();
    assert_eq!(directions, ["rx (from guest)", "tx (to guest)"]);
    let open_tcp = &tables[1].rows_where("FLOWS", "tcp")[0]["OPEN"];
    assert!(open_tcp.parse::<u64>().expect("a count") >= 1, "{open_tcp}");
    assert!(!tables[2]
        .rows_where("COUNTER", "tcp_flows_opened")
        .is_empty());

    let (value, _) = ctl_json(socket, &["stats"]);
    let stats = &value["return"];
    for key in ["rx_bytes", "tx_bytes"] {
        let bytes = stats["interfaces"]["tap"][key].as_u64();
        assert!(bytes >= Some(ECHOED as u64), "{key} in {value}");
    }
    assert!(stats["flows"]["tcp"].as_u64() >= Some(1), "{value}");
}

/// A capture file in the test's temp dir.
fn pcap_path(env: &Env) -> PathBuf {
    env.tmp.path.join("capture.pcap")
}

fn stop(rslirp: &mut Rslirp) {
    rslirp.signal(libc::SIGTERM);
    let status = rslirp.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "exit after SIGTERM: {status}");
}

/// `PINGS` pings of the gateway, 10 ms apart.
fn ping_gateway(env: &Env) {
    let count = PINGS.to_string();
    let out = env.guest_ok(&[
        "ping",
        "-c",
        &count,
        "-i",
        "0.01",
        "-W",
        "2",
        &GATEWAY.to_string(),
    ]);
    assert!(out.contains(&format!("{PINGS} received")), "ping: {out}");
}

/// Frames the stack has seen both ways so far (get_stats).
fn frames_so_far(socket: &Path) -> u64 {
    let (value, _) = ctl_json(socket, &["stats"]);
    let tap = &value["return"]["interfaces"]["tap"];
    let count = |key: &str| {
        tap[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} in {value}"))
    };
    count("rx_packets") + count("tx_packets")
}

#[test]
fn pcap_of_pings_reads_back_with_tcpdump() {
    let env = Env::new(Mode::Rootful);
    let api = Api::new(&env);
    let file = pcap_path(&env);
    let mut rslirp = api
        .launch(&env)
        .arg("--pcap")
        .arg(&file.to_string_lossy())
        .start();
    let mode = std::fs::metadata(&file)
        .expect("capture file")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the capture holds the traffic: owner only"
    );
    ping_gateway(&env);
    // While rslirp runs, the file is complete up to its last wake-up (it flushes before it
    // sleeps, which may be a moment after ping saw its last reply).
    wait_for(
        "every ping in the capture while rslirp runs",
        STEP_TIMEOUT,
        || {
            let lines = tcpdump_lines(&file);
            (count_containing(&lines, "ICMP echo reply") == PINGS).then_some(())
        },
    );
    let seen = frames_so_far(&api.path);
    stop(&mut rslirp);

    let lines = tcpdump_lines(&file);
    let requests = format!("IP {GUEST_ADDR} > {GATEWAY}: ICMP echo request");
    let replies = format!("IP {GATEWAY} > {GUEST_ADDR}: ICMP echo reply");
    assert_eq!(count_containing(&lines, &requests), PINGS, "{lines:#?}");
    assert_eq!(count_containing(&lines, &replies), PINGS, "{lines:#?}");
    // Both directions of everything, not just the pings: every frame the stack counted.
    assert!(
        lines.len() as u64 >= seen,
        "{} frames captured, {seen} crossed the tap",
        lines.len()
    );
    // Wall-clock timestamps, from this run.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let first: f64 = lines[0]
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no timestamp in {:?}", lines[0]));
    assert!(
        (now - first).abs() < 300.0,
        "first frame at {first}, now {now}"
    );
    assert!(
        rslirp
            .output()
            .contains(&format!("pcap: {} frames", lines.len())),
        "exit line: {}",
        rslirp.output()
    );
}

#[test]
fn pcap_stops_at_its_size_bound_and_traffic_goes_on() {
    const BOUND: u64 = 1024 * 1024;
    /// The largest record: 16-byte header plus the largest frame on the tap, which with
    /// TCP segmentation offload is a 64 KiB segment (14 + 65,535 bytes), not the MTU's.
    const LARGEST_RECORD: u64 = 16 + 14 + 65_535;
    let env = Env::new(Mode::Rootful);
    let file = pcap_path(&env);
    let mut rslirp = env
        .rslirp()
        .arg(&format!("--pcap={}", file.display()))
        .arg("--pcap-size=1m")
        .start();
    // 4 MiB each way: far more than the bound.
    let server = env.host_echo_server(Ipv4Addr::LOCALHOST);
    env.assert_guest_echo((GATEWAY, server.port()), CONNECT_TIMEOUT, 5, 4 << 20);
    let size = std::fs::metadata(&file).expect("capture file").len();
    assert!(
        size <= BOUND && size > BOUND - LARGEST_RECORD,
        "capture of {size} bytes for a bound of {BOUND}"
    );
    // Capture has ended, the network has not.
    common::assert_traffic_works(&env);
    stop(&mut rslirp);
    assert_eq!(std::fs::metadata(&file).expect("capture").len(), size);
    let lines = tcpdump_lines(&file);
    assert!(
        count_containing(&lines, "Flags [S]") >= 1,
        "the SYN is captured"
    );
    let output = rslirp.output();
    assert_eq!(
        output
            .matches("reached its size limit of 1048576 bytes")
            .count(),
        1,
        "one info line when the bound is hit:\n{output}"
    );
}

#[test]
fn pcap_file_that_cannot_be_created_is_fatal() {
    let env = Env::new(Mode::Rootful);
    let file = env.tmp.path.join("no-such-dir/capture.pcap");
    let (status, output) = env
        .rslirp()
        .arg(&format!("--pcap={}", file.display()))
        .start_expecting_exit(STEP_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{output}");
    // Log lines aside, the error is one line naming the file.
    let errors: Vec<&str> = output.lines().filter(|l| !l.starts_with('[')).collect();
    assert_eq!(
        errors,
        [format!(
            "rslirp: cannot create pcap file {}: No such file or directory (os error 2)",
            file.display()
        )],
        "{output}"
    );
}

/// The file is opened before the sandbox hides the file system and seccomp narrows the
/// calls: capture still works confined.
#[test]
fn pcap_under_sandbox_and_seccomp() {
    let env = Env::new(Mode::Rootful);
    let caller = env.caller_namespace();
    let file = pcap_path(&env);
    let mut rslirp = env
        .rslirp()
        .arg("--enable-sandbox")
        .arg("--enable-seccomp")
        .arg(&format!("--pcap={}", file.display()))
        .start_in(&caller);
    let out = env.guest_ok(&[
        "ping",
        "-c",
        "5",
        "-i",
        "0.05",
        "-W",
        "2",
        &GATEWAY.to_string(),
    ]);
    assert!(out.contains("5 received"), "ping: {out}");
    stop(&mut rslirp);
    let lines = tcpdump_lines(&file);
    assert_eq!(
        count_containing(&lines, "ICMP echo request"),
        5,
        "{lines:#?}"
    );
    assert_eq!(count_containing(&lines, "ICMP echo reply"), 5, "{lines:#?}");
}

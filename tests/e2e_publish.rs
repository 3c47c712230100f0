//! End-to-end: `--publish` (rslirp's own option), forwards set up at start. The guest's
//! servers listen before rslirp starts (on 0.0.0.0 of the guest's namespace, so they need
//! no address yet), and the host clients connect the moment the ready byte arrives: no
//! waiting, no retry, so a forward set up after the ready byte would fail these tests.

#[macro_use]
mod common;

use common::api::{list_reply, remove_request, Api, Fwd, OK_REPLY};
use common::net::{self, Server};
use common::{Env, Mode, EXIT_TIMEOUT, STEP_TIMEOUT};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

both_modes!(
    tcp_range_works_when_ready_and_is_managed_by_the_api,
    udp_publish_works_when_ready,
    taken_port_is_fatal_before_the_ready_byte,
);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A server in the guest on 0.0.0.0:`port` that answers every connection with
/// `guest port PORT` and closes.
fn guest_port_server(env: &Env, port: u16) -> Server {
    let listener = env.guest_tcp_listener_at((Ipv4Addr::UNSPECIFIED, port));
    net::tcp_server(listener, move |mut stream| {
        let _ = write!(stream, "guest port {port}");
        let _ = stream.shutdown(Shutdown::Write);
    })
}

/// Connects from the host namespace (one attempt) and reads to EOF.
fn host_read(env: &Env, to: SocketAddr) -> io::Result<String> {
    env.in_host("host client", move || {
        let mut stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
        net::set_timeouts(&stream);
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })
    .wait(STEP_TIMEOUT + net::IO_TIMEOUT)
}

/// `--publish tcp/8080-8082:80-82` (and `[::1]:8090:80`): every port answers right at the
/// ready byte; list_hostfwd shows them with ids like API forwards; the API removes one.
fn tcp_range_works_when_ready_and_is_managed_by_the_api(mode: Mode) {
    let env = Env::new(mode);
    let api = Api::new(&env);
    let _servers: Vec<Server> = (80..=82)
        .map(|port| guest_port_server(&env, port))
        .collect();
    let _rslirp = api
        .launch(&env)
        .arg("--publish")
        .arg("tcp/8080-8082:80-82")
        .arg("--publish=[::1]:8090:80")
        .start();
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for port in 80..=82u16 {
        let to = SocketAddr::new(localhost, 8000 + port);
        let reply = host_read(&env, to).unwrap_or_else(|e| panic!("connect to {to}: {e}"));
        assert_eq!(reply, format!("guest port {port}"), "through {to}");
    }
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 8090);
    assert_eq!(
        host_read(&env, v6).unwrap_or_else(|e| panic!("connect to {v6}: {e}")),
        "guest port 80"
    );

    let fwds: Vec<Fwd> = (80..=82u16)
        .map(|port| Fwd::tcp(Ipv4Addr::UNSPECIFIED, 8000 + port, port))
        .collect();
    let mut expected = list_reply(&[(1, &fwds[0]), (2, &fwds[1]), (3, &fwds[2])]);
    expected.truncate(expected.len() - 2);
    expected.push_str(
        r#",{"id":4,"proto":"tcp","host_addr":"::1","host_port":8090,"guest_addr":"10.0.2.100","guest_port":80}]}"#,
    );
    assert_eq!(api.list(), expected);

    // Removable like any forward, and the next API forward continues the ids.
    assert_eq!(api.request(&remove_request(2)), OK_REPLY);
    let removed = SocketAddr::new(localhost, 8081);
    let error = host_read(&env, removed).expect_err("the removed forward's port is closed");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
    assert_eq!(api.add(&Fwd::tcp(Ipv4Addr::LOCALHOST, 8081, 81)), 5);
    assert_eq!(host_read(&env, removed).expect("re-added"), "guest port 81");
    let kept = SocketAddr::new(localhost, 8082);
    assert_eq!(host_read(&env, kept).expect("kept"), "guest port 82");
}

/// `--publish udp/127.0.0.1:15353:5353`: a datagram round trip right at the ready byte.
fn udp_publish_works_when_ready(mode: Mode) {
    let env = Env::new(mode);
    let guest_socket = env.guest_udp_socket_at((Ipv4Addr::UNSPECIFIED, 5353));
    let _echo = net::udp_echo_server(guest_socket);
    let _rslirp = env
        .rslirp()
        .arg("--publish")
        .arg("udp/127.0.0.1:15353:5353")
        .start();
    let client = env.host_udp_socket_at((Ipv4Addr::LOCALHOST, 0));
    let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15353);
    for size in [1usize, 1400] {
        let payload = net::Pattern::bytes(size as u64, size);
        let reply = net::udp_roundtrip(&client, to, &payload)
            .unwrap_or_else(|e| panic!("{size} bytes through {to}: {e}"));
        assert_eq!(reply, payload, "{size} bytes");
    }
}

/// A port of the range is taken: exit 1 naming that port, and no ready byte.
fn taken_port_is_fatal_before_the_ready_byte(mode: Mode) {
    let env = Env::new(mode);
    let _taken = env.host_tcp_listener_at((Ipv4Addr::UNSPECIFIED, 8081));
    let (status, output) = env
        .rslirp()
        .arg("--publish")
        .arg("8080-8082:80-82")
        .start_expecting_exit(EXIT_TIMEOUT * 2);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains(
            "rslirp: --publish: cannot listen on tcp port 8081 (0.0.0.0:8081): Address already in use"
        ),
        "{output}"
    );
}

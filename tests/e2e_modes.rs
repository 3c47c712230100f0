//! The two other ways slirp4netns 1.2/1.3 carries frames, end to end:
//!
//! - `--netns-type=tapfd FD`: the test opens a tap in the guest's namespace itself, sets it
//!   up, and hands rslirp the fd; ping, TCP, UDP and DNS must work through it, with and
//!   without the virtio-net header (offloads), and unusable fds must be refused clearly.
//! - `--target-type=bess PATH`: rslirp listens on a SOCK_SEQPACKET socket; the test
//!   connects as the BESS peer (User Mode Linux's role), checks the answers to an ARP
//!   request and a DHCP discover frame by frame, then bridges the socket to a tap in the
//!   guest's namespace so that the guest kernel's TCP runs over it. The ready byte must
//!   come only after the peer connected, and a peer that goes away must leave rslirp
//!   running (as slirp4netns) without spinning.

#[macro_use]
mod common;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use rslirp_stack::testing::{parse, Guest, Parsed};
use rslirp_stack::VirtualNetwork;
use smoltcp::wire::{ArpOperation, ArpRepr, DhcpMessageType, EthernetAddress};

use common::api::{self, Api, Fwd};
use common::dns::{Dnsmasq, Record, DNS};
use common::net;
use common::tap::{self, Bridge};
use common::{Env, Launch, Mode, Rslirp, EXIT_TIMEOUT, GATEWAY, TAP};

/// The gateway's MAC address with the default network: 52:55 and the gateway's address.
const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);
/// The first address of the DHCP pool (network + 15).
const DHCP_FIRST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The fd number rslirp inherits the tap (or a bad fd) as.
const TAPFD: i32 = 5;
/// Longest the test waits for one frame from rslirp.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle rslirp uses next to no CPU; a busy loop on a hung-up socket uses a whole core
/// (100 ticks a second).
const IDLE_TICKS_PER_SECOND: u64 = 20;

both_modes!(
    tapfd_plain_tap_carries_ping_tcp_udp_dns,
    tapfd_with_virtio_header_uses_offloads_in_the_sandbox,
    bess_peer_gets_arp_dhcp_and_tcp,
    bess_peer_hanging_up_leaves_rslirp_idle_but_alive,
);

mod rootful_only {
    #[test]
    fn tapfd_refuses_unusable_fds() {
        super::tapfd_refuses_unusable_fds();
    }

    #[test]
    fn bess_wait_for_the_peer_ends_with_the_exit_fd_or_a_signal() {
        super::bess_wait_for_the_peer_ends_with_the_exit_fd_or_a_signal();
    }
}

// ---------------------------------------------------------------- tapfd

/// `--netns-type=tapfd` without -c (the test sets the interface up); the fd, the operands
/// and more options are added.
fn tapfd_launch(env: &Env) -> Launch<'_> {
    env.rslirp().no_configure().arg("--netns-type=tapfd")
}

/// The tap `name`, opened with `flags` and set up in the guest: its fd, for rslirp.
fn open_guest_tap(env: &Env, name: &str, flags: libc::c_int) -> OwnedFd {
    let fd = tap::open_tun(env, name, flags);
    tap::configure_guest_interface(env, name);
    fd
}

/// rslirp's output names the tap `name` behind the fd, says whether it has the virtio-net
/// header (`virtio`), and whether it uses the offloads (it does exactly with the header).
fn assert_output_names(rslirp: &Rslirp, name: &str, virtio: bool) {
    let (tap, offloads) = if virtio {
        let tap = format!("TAPFD {TAPFD} is tap {name} with virtio-net header and offloads");
        (tap, "tap offloads on")
    } else {
        let tap = format!("TAPFD {TAPFD} is tap {name} without virtio-net header");
        (tap, "tap offloads off")
    };
    let output = rslirp.output();
    assert!(output.contains(&tap), "{output}");
    assert!(output.contains(offloads), "{output}");
}

fn tapfd_plain_tap_carries_ping_tcp_udp_dns(mode: Mode) {
    let env = Env::new(mode);
    let fd = open_guest_tap(&env, TAP, libc::IFF_TAP | libc::IFF_NO_PI);
    let dns_name = "tapfd.rslirp.test";
    let dns_addr = Ipv4Addr::new(192, 0, 2, 15);
    let _dns = Dnsmasq::start(&env, Ipv4Addr::LOCALHOST, &[Record::A(dns_name, dns_addr)]);
    // No TAPNAME: it is optional with tapfd.
    let mut rslirp = tapfd_launch(&env)
        .pass_fd(fd, TAPFD)
        .operands(&[&TAPFD.to_string()])
        .start();
    rslirp.assert_ready_fd_closed();
    assert_output_names(&rslirp, TAP, false);

    common::assert_traffic_works(&env);
    let server = env.host_udp_echo_server(Ipv4Addr::LOCALHOST);
    let socket = env.guest_udp_socket();
    let to = SocketAddr::V4(SocketAddrV4::new(GATEWAY, server.port()));
    let reply = net::udp_roundtrip(&socket, to, b"tapfd udp").expect("UDP round trip");
    assert_eq!(reply, b"tapfd udp");
    env.await_guest_dns_a(DNS, dns_name, dns_addr, Duration::from_secs(10));
    rslirp.assert_running();
}

fn tapfd_with_virtio_header_uses_offloads_in_the_sandbox(mode: Mode) {
    let env = Env::new(mode);
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    let fd = open_guest_tap(&env, "vtap0", flags);
    let mut rslirp = tapfd_launch(&env)
        .arg("--enable-sandbox")
        .arg("--enable-seccomp")
        .exit_fd()
        .pass_fd(fd, TAPFD)
        // A TAPNAME is accepted and changes nothing: the fd names its interface.
        .operands(&[&TAPFD.to_string(), "ignored0"])
        .start();
    assert_output_names(&rslirp, "vtap0", true);
    // With the offloads, TCP crosses the tap in segments of up to 64 KiB both ways; the
    // echo proves them framed right (a wrong header length would garble every frame).
    common::assert_gateway_answers_ping(&env);
    let server = env.host_echo_server(Ipv4Addr::LOCALHOST);
    env.assert_guest_echo(
        (GATEWAY, server.port()),
        Duration::from_secs(5),
        11,
        4 << 20,
    );
    rslirp.close_exit_fd();
    let status = rslirp.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "{status}\n{}", rslirp.output());
}

fn tapfd_refuses_unusable_fds() {
    let env = Env::new(Mode::Rootful);
    let refused = |fd: Option<OwnedFd>, expected: &str| {
        let mut launch = tapfd_launch(&env).operands(&[&TAPFD.to_string()]);
        if let Some(fd) = fd {
            launch = launch.pass_fd(fd, TAPFD);
        }
        let (status, output) = launch.start_expecting_exit(EXIT_TIMEOUT);
        assert_eq!(status.code(), Some(1), "{output}");
        assert!(
            output.contains(&format!("rslirp: TAPFD {TAPFD}: {expected}")),
            "expected {expected:?} in:\n{output}"
        );
    };
    refused(None, "not an open file descriptor");
    let null = OwnedFd::from(fs::File::open("/dev/null").expect("/dev/null"));
    refused(Some(null), "neither a tap device nor a socket");
    let tun = tap::open_tun(&env, "tun0", libc::IFF_TUN | libc::IFF_NO_PI);
    refused(
        Some(tun),
        "tun0 is a tun device (IFF_TUN, IP packets); rslirp needs a tap (IFF_TAP)",
    );
    let with_pi = tap::open_tun(&env, "pitap0", libc::IFF_TAP);
    refused(Some(with_pi), "pitap0 was opened without IFF_NO_PI");
    refused(
        Some(tap::unattached_tun()),
        "a tun file not attached to any interface",
    );
    let (stream, _other) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    refused(
        Some(OwnedFd::from(stream)),
        "a socket of type Stream; frames need message boundaries",
    );
}

// ---------------------------------------------------------------- bess

/// A directory the rootless rslirp can create its BESS socket in.
fn bess_socket_path(env: &Env) -> PathBuf {
    let dir = env.tmp.path.join("bess");
    fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod bess dir");
    dir.join("bess.sock")
}

/// `launch` with `--target-type=bess PATH`, without -c; more options may be added.
fn bess_launch<'a>(launch: Launch<'a>, path: &Path) -> Launch<'a> {
    launch
        .no_configure()
        .arg("--target-type=bess")
        .operands(&[&path.to_string_lossy()])
}

/// Waits until rslirp, still running, has created its BESS socket at `path`.
fn await_bess_socket(rslirp: &mut Rslirp, path: &Path) {
    common::process::wait_for("the BESS socket", Duration::from_secs(10), || {
        rslirp.assert_running();
        api::socket_file_exists(path).then_some(())
    });
}

/// Connects to rslirp's BESS socket as the peer, retrying until it listens.
fn connect_peer(path: &Path, rslirp: &mut Rslirp) -> OwnedFd {
    let addr = UnixAddr::new(path).expect("socket address");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return fd,
            // Not listening yet (no file, or not yet bound).
            Err(_) if Instant::now() < deadline => {
                rslirp.assert_running();
                thread::sleep(Duration::from_millis(10));
            }
            Err(errno) => panic!(
                "connect to {}: {errno}\n{}",
                path.display(),
                rslirp.output()
            ),
        }
    }
}

/// Sends one frame as one message.
fn send_frame(peer: &OwnedFd, frame: &[u8]) {
    let n = nix::unistd::write(peer.as_fd(), frame).expect("send a frame");
    assert_eq!(n, frame.len());
}

/// The first frame from rslirp that `want` accepts (others are skipped); panics after
/// [`FRAME_TIMEOUT`].
fn receive<T>(peer: &OwnedFd, what: &str, mut want: impl FnMut(Parsed) -> Option<T>) -> T {
    let deadline = Instant::now() + FRAME_TIMEOUT;
    let mut buf = vec![0u8; 65_536];
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {what} within {FRAME_TIMEOUT:?}; got {seen:?}"
        );
        let mut fds = [PollFd::new(peer.as_fd(), PollFlags::POLLIN)];
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if poll(&mut fds, PollTimeout::from(millis)).expect("poll") == 0 {
            continue;
        }
        let n = nix::unistd::read(peer, &mut buf).expect("read a frame");
        assert!(n > 0, "rslirp closed the BESS connection");
        let parsed = parse(&buf[..n]);
        let summary = format!("{parsed:?}");
        if let Some(value) = want(parsed) {
            return value;
        }
        seen.push(summary);
    }
}

/// A made-up guest on the socket: its own MAC, and an address rslirp does not expect, so
/// nothing it learns gets in the way of the bridged kernel later.
fn peer_guest() -> Guest {
    Guest {
        mac: EthernetAddress([0x02, 0xbe, 0x55, 0, 0, 1]),
        ip: Ipv4Addr::new(10, 0, 2, 50),
        ..Guest::new(&VirtualNetwork::default())
    }
}

fn assert_arp_reply_for_gateway(peer: &OwnedFd, guest: &Guest) {
    send_frame(peer, &guest.arp_request(GATEWAY));
    let (sha, spa, tha, tpa) = receive(peer, "ARP reply", |parsed| match parsed {
        Parsed::Arp(ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr,
            source_protocol_addr,
            target_hardware_addr,
            target_protocol_addr,
        }) => Some((
            source_hardware_addr,
            source_protocol_addr,
            target_hardware_addr,
            target_protocol_addr,
        )),
        _ => None,
    });
    assert_eq!((sha, spa), (GATEWAY_MAC, GATEWAY), "who answers");
    assert_eq!((tha, tpa), (guest.mac, guest.ip), "to whom");
}

fn assert_dhcp_offer(peer: &OwnedFd, guest: &Guest) {
    let xid = 0x0be5_5001;
    send_frame(
        peer,
        &guest.dhcp(&guest.dhcp_message(DhcpMessageType::Discover, xid)),
    );
    let offer = receive(peer, "DHCP offer", |parsed| match parsed {
        Parsed::Dhcp { message, .. } if message.transaction_id == xid => Some(message),
        _ => None,
    });
    assert_eq!(offer.message_type, DhcpMessageType::Offer);
    assert_eq!(offer.client_hardware_address, guest.mac);
    assert_eq!(offer.your_ip, DHCP_FIRST);
    assert_eq!(offer.router, Some(GATEWAY));
    assert_eq!(offer.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
    assert_eq!(offer.dns_servers, Some(vec![DNS]));
    assert_eq!(offer.server_identifier, Some(GATEWAY));
}

fn bess_peer_gets_arp_dhcp_and_tcp(mode: Mode) {
    let env = Env::new(mode);
    let path = bess_socket_path(&env);
    let api = Api::new(&env);
    let mut rslirp = bess_launch(api.launch(&env), &path).spawn();
    await_bess_socket(&mut rslirp, &path);
    // As slirp4netns: ready (and the control socket) only once the peer is in.
    assert!(
        !rslirp.ready_fd_readable_within(Duration::from_millis(300)),
        "ready before any peer connected\n{}",
        rslirp.output()
    );
    assert!(!api.socket_file_exists(), "API socket before the peer");
    let peer = connect_peer(&path, &mut rslirp);
    rslirp.await_ready_byte();
    rslirp.assert_ready_fd_closed();
    assert!(!path.exists(), "the BESS socket file outlived the accept");

    let guest = peer_guest();
    assert_arp_reply_for_gateway(&peer, &guest);
    assert_dhcp_offer(&peer, &guest);

    // The guest kernel behind the socket: TCP to the host, and a forward to the guest.
    let tap_fd = open_guest_tap(&env, TAP, libc::IFF_TAP | libc::IFF_NO_PI);
    let _bridge = Bridge::start(tap_fd, peer);
    common::assert_traffic_works(&env);
    let _server = api::guest_peer_http_server(&env, 8000);
    let fwd = Fwd::tcp(Ipv4Addr::LOCALHOST, 8080, 8000);
    let (_, peer_seen) = api.add_and_request(&env, &fwd);
    assert_eq!(peer_seen.ip(), std::net::IpAddr::V4(GATEWAY));
    let stats = api.stats();
    assert!(api::stat(&stats, &["interfaces", "tap", "rx_packets"]) > 0);
    assert!(api::stat(&stats, &["interfaces", "tap", "tx_packets"]) > 0);
    rslirp.assert_running();
}

fn bess_peer_hanging_up_leaves_rslirp_idle_but_alive(mode: Mode) {
    let env = Env::new(mode);
    let path = bess_socket_path(&env);
    let api = Api::new(&env);
    let mut rslirp = bess_launch(api.launch(&env), &path)
        .arg("--enable-sandbox")
        .arg("--enable-seccomp")
        .spawn();
    let peer = connect_peer(&path, &mut rslirp);
    rslirp.await_ready_byte();
    // Frames flow under the sandbox and the seccomp filter.
    let guest = peer_guest();
    assert_arp_reply_for_gateway(&peer, &guest);
    assert_dhcp_offer(&peer, &guest);

    drop(peer);
    common::process::wait_for("the hang-up noticed", Duration::from_secs(5), || {
        rslirp
            .output()
            .contains("the peer of the frame socket")
            .then_some(())
    });
    thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks(&rslirp);
    thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(&rslirp) - before;
    assert!(
        used < IDLE_TICKS_PER_SECOND,
        "rslirp used {used} CPU ticks in 1 s after the hang-up\n{}",
        rslirp.output()
    );
    rslirp.assert_running();
    assert_eq!(api.list(), r#"{"entries":[]}"#);
    rslirp.signal(libc::SIGTERM);
    let status = rslirp.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "{status}\n{}", rslirp.output());
}

fn bess_wait_for_the_peer_ends_with_the_exit_fd_or_a_signal() {
    let env = Env::new(Mode::Rootful);
    let path = bess_socket_path(&env);
    for by_signal in [false, true] {
        let mut rslirp = bess_launch(env.rslirp(), &path).exit_fd().spawn();
        await_bess_socket(&mut rslirp, &path);
        if by_signal {
            rslirp.signal(libc::SIGTERM);
        } else {
            rslirp.close_exit_fd();
        }
        let status = rslirp.wait_exit(EXIT_TIMEOUT);
        assert!(status.success(), "{status}\n{}", rslirp.output());
        // No ready byte: the ready fd's only news is its EOF.
        assert!(rslirp.ready_fd_readable_within(Duration::from_secs(1)));
        rslirp.assert_ready_fd_closed();
        assert!(!path.exists(), "socket file left behind");
    }
}

/// utime + stime of rslirp, in clock ticks.
fn cpu_ticks(rslirp: &Rslirp) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{}/stat", rslirp.pid()))
        .unwrap_or_else(|e| panic!("rslirp's /proc stat: {e}"));
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line; the state (field 3) is index 0.
    let tick = |i: usize| -> u64 { fields[i].parse().expect("a tick count") };
    tick(11) + tick(12)
}

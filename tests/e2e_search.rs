//! End-to-end: the host resolv.conf's search domains reach the guest (issue #19 point 2):
//! in DHCP option 119 as udhcpc reads it, and with `-6` in the router advertisement's DNSSL
//! (with the O flag) and in the Reply to a stateless DHCPv6 Information-Request; a change
//! of the search line is seen by the next DHCP exchange.
//!
//! The resolv.conf is the test's own (common::resolv); nothing here sends DNS queries.

#[macro_use]
mod common;

use common::dhcp::{create_tap_up, udhcpc, Lease};
use common::process::wait_for;
use common::{Env, Mode, TAP};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

both_modes!(
    udhcpc_receives_the_search_list_and_its_changes,
    dhcpv6_information_request_gets_dns_server_and_search_list,
    router_advertisement_carries_dnssl_and_the_o_flag,
);

const DNS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
const ALL_DHCP_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// A reply from rslirp on the virtual link comes well within this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The guest's link-local address is usable (duplicate address detection done) within this.
const LINK_LOCAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A resolv.conf change is in effect within this (the forwarder's acceptance bound too).
const SWITCH_WITHIN: Duration = Duration::from_secs(2);

const SEARCH_LINE: &str = "search eng.apple.com marketing.apple.com.\n";

fn resolv_conf_with(search_line: &str) -> String {
    format!("nameserver 127.0.0.1\n{search_line}")
}

// ---------------------------------------------------------------------------------------
// DHCPv4

/// The lease of a new DHCP exchange once resolv.conf has `search_line` (and rslirp has had
/// the time to read it).
fn lease_after_resolv_conf(env: &Env, search_line: &str) -> Lease {
    env.write_resolv_conf_in_place(&resolv_conf_with(search_line));
    std::thread::sleep(SWITCH_WITHIN);
    udhcpc(env, &[])
}

fn udhcpc_receives_the_search_list_and_its_changes(mode: Mode) {
    let env = Env::new(mode);
    env.write_resolv_conf_in_place(&resolv_conf_with(SEARCH_LINE));
    create_tap_up(&env);
    let _rslirp = env.rslirp().no_configure().start();

    let lease = udhcpc(&env, &[]);
    assert_eq!(lease.find("ip"), Some("10.0.2.15"));
    assert_eq!(
        lease.find("search"),
        Some("eng.apple.com marketing.apple.com"),
        "lease: {lease:?}"
    );

    // `domain` is the older one-domain form; the next DHCP exchange has it.
    let lease = lease_after_resolv_conf(&env, "domain corp.example\n");
    assert_eq!(
        lease.find("search"),
        Some("corp.example"),
        "lease after the change: {lease:?}"
    );

    // No search line: no option 119, as before this feature.
    let lease = lease_after_resolv_conf(&env, "");
    assert_eq!(lease.find("search"), None, "lease: {lease:?}");
    assert_eq!(lease.find("dns"), Some("10.0.2.3"));
}

// ---------------------------------------------------------------------------------------
// IPv6

/// The tap's index in the guest's namespace (the scope of link-local destinations).
fn tap_index() -> u32 {
    let name = std::ffi::CString::new(TAP).unwrap();
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "{TAP} has no index in this namespace");
    index
}

/// rslirp with `-c -6` and the guest's link-local address done with duplicate address
/// detection, so that a socket can send from it.
fn start_with_ipv6(env: &Env) -> common::Rslirp {
    let rslirp = env.rslirp().arg("-6").start();
    wait_for("a usable link-local address", LINK_LOCAL_TIMEOUT, || {
        let addrs = env.guest_ok(&[
            "ip", "-6", "-o", "addr", "show", "dev", TAP, "scope", "link",
        ]);
        (addrs.contains("inet6 fe80::") && !addrs.contains("tentative")).then_some(())
    });
    rslirp
}

/// DHCPv6 options (code, data) of a message after its 4-octet header; panics on a
/// malformed one.
fn dhcpv6_options(message: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut rest = &message[4..];
    let mut options = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 4, "truncated option in {message:02x?}");
        let code = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        assert!(rest.len() >= 4 + len, "option overruns {message:02x?}");
        options.push((code, rest[4..4 + len].to_vec()));
        rest = &rest[4 + len..];
    }
    options
}

fn dhcpv6_information_request_gets_dns_server_and_search_list(mode: Mode) {
    let env = Env::new(mode);
    env.write_resolv_conf_in_place(&resolv_conf_with(SEARCH_LINE));
    let _rslirp = start_with_ipv6(&env);

    let reply = env
        .in_guest("DHCPv6 client", || {
            let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            let any = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 546, 0, 0);
            socket.bind(&SockAddr::from(any)).expect("bind [::]:546");
            socket.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
            // Information-Request (11), transaction 0x0a0b0c: Client Identifier (DUID-LL),
            // Option Request for 23 and 24, Elapsed Time 0.
            let mut request = vec![11, 0x0a, 0x0b, 0x0c];
            request.extend_from_slice(&[0, 1, 0, 10, 0, 3, 0, 1, 2, 0, 0, 0, 0, 0x42]);
            request.extend_from_slice(&[0, 6, 0, 4, 0, 23, 0, 24]);
            request.extend_from_slice(&[0, 8, 0, 2, 0, 0]);
            let server = SocketAddrV6::new(ALL_DHCP_SERVERS, 547, 0, tap_index());
            socket
                .send_to(&request, &SockAddr::from(server))
                .expect("send the Information-Request");
            let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
            let (len, from) = socket.recv_from(&mut buf).expect("a DHCPv6 reply");
            let bytes: Vec<u8> = buf[..len]
                .iter()
                // SAFETY: recv_from initialised the first `len` bytes.
                .map(|b| unsafe { b.assume_init() })
                .collect();
            (bytes, from.as_socket_ipv6().expect("an IPv6 peer"))
        })
        .wait(REPLY_TIMEOUT + Duration::from_secs(5));
    let (reply, from) = reply;
    assert_eq!(*from.ip(), Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2));
    assert_eq!(from.port(), 547);
    assert_eq!(
        &reply[..4],
        &[7, 0x0a, 0x0b, 0x0c],
        "a Reply to our transaction"
    );
    let options: BTreeMap<u16, Vec<u8>> = dhcpv6_options(&reply).into_iter().collect();
    assert_eq!(
        options.get(&1).map(Vec::as_slice),
        Some(&[0, 3, 0, 1, 2, 0, 0, 0, 0, 0x42][..]),
        "our Client Identifier echoed"
    );
    let server_id = options.get(&2).expect("a Server Identifier");
    assert_eq!(&server_id[..4], &[0, 3, 0, 1], "a DUID-LL");
    assert_eq!(
        options.get(&23).map(Vec::as_slice),
        Some(&DNS6.octets()[..]),
        "the DNS forwarder"
    );
    assert_eq!(
        options.get(&24).map(Vec::as_slice),
        Some(&b"\x03eng\x05apple\x03com\x00\x09marketing\x05apple\x03com\x00"[..]),
        "the search list, uncompressed"
    );
}

/// Sends a router solicitation from the guest and returns the first router
/// advertisement's ICMPv6 message.
fn solicit_router_advert(env: &Env) -> Vec<u8> {
    env.in_guest("router solicitation", || {
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).unwrap();
        socket.set_multicast_hops_v6(255).unwrap();
        socket.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        let routers = SocketAddrV6::new(ALL_ROUTERS, 0, 0, tap_index());
        // Type 133, code 0, checksum (the kernel fills it), reserved.
        socket
            .send_to(&[133, 0, 0, 0, 0, 0, 0, 0], &SockAddr::from(routers))
            .expect("send the router solicitation");
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while Instant::now() < deadline {
            let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
            let Ok((len, _)) = socket.recv_from(&mut buf) else {
                break;
            };
            // SAFETY: recv_from initialised the first `len` bytes.
            let bytes: Vec<u8> = buf[..len]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            if bytes.first() == Some(&134) {
                return bytes;
            }
        }
        panic!("no router advertisement within {REPLY_TIMEOUT:?}");
    })
    .wait(REPLY_TIMEOUT + Duration::from_secs(5))
}

fn router_advertisement_carries_dnssl_and_the_o_flag(mode: Mode) {
    let env = Env::new(mode);
    env.write_resolv_conf_in_place(&resolv_conf_with(SEARCH_LINE));
    let _rslirp = start_with_ipv6(&env);
    let advert = solicit_router_advert(&env);
    assert_eq!(
        advert[5] & 0x40,
        0x40,
        "the O flag: ask DHCPv6 for other configuration"
    );
    assert_eq!(advert[5] & 0x80, 0, "no M flag: addresses come from SLAAC");
    // Options after the 16-octet header, each length in units of 8 octets.
    let mut rest = &advert[16..];
    let mut dnssl = Vec::new();
    let mut kinds = Vec::new();
    while rest.len() >= 8 {
        let len = usize::from(rest[1]) * 8;
        assert!(
            len > 0 && len <= rest.len(),
            "bad option length in {advert:02x?}"
        );
        kinds.push(rest[0]);
        if rest[0] == 31 {
            dnssl.push(rest[..len].to_vec());
        }
        rest = &rest[len..];
    }
    assert!(
        rest.is_empty(),
        "options do not tile the message: {advert:02x?}"
    );
    assert!(kinds.contains(&25), "RDNSS next to it: {kinds:?}");
    assert_eq!(dnssl.len(), 1, "one DNSSL option: {kinds:?}");
    let dnssl = &dnssl[0];
    // 8 + 15 + 21 = 44 octets, padded to 48.
    assert_eq!(dnssl.len(), 48);
    assert_eq!(&dnssl[2..4], &[0, 0], "reserved");
    let lifetime = u32::from_be_bytes(dnssl[4..8].try_into().unwrap());
    assert!(lifetime >= 120, "lifetime {lifetime} s");
    assert_eq!(
        &dnssl[8..44],
        &b"\x03eng\x05apple\x03com\x00\x09marketing\x05apple\x03com\x00"[..]
    );
    assert_eq!(&dnssl[44..], &[0, 0, 0, 0], "zero padding");
}

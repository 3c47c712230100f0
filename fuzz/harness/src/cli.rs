//! Target `cli`: command lines into [`rslirp::cli::parse`], which must answer every one
//! with a command or an error, never a panic.
//!
//! Input: the arguments after argv0, separated by NUL bytes (as in /proc/PID/cmdline);
//! they need not be UTF-8, as real arguments need not be.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// More words than any caller passes; bounds the work of one input.
const MAX_WORDS: usize = 64;

pub fn run(data: &[u8]) {
    let words: Vec<OsString> = data
        .split(|&byte| byte == 0)
        .take(MAX_WORDS)
        .map(|word| OsString::from_vec(word.to_vec()))
        .collect();
    match rslirp::cli::parse("slirp4netns", words) {
        // What main does next with a valid command line, minus the OS.
        Ok(rslirp::cli::Command::Run(options)) => {
            let config = options.stack_config();
            // `--cidr6` only with `-6`, and whatever prefix it gave is a usable /64: the
            // gateway and DNS forwarder inside it, never link-local, multicast or loopback.
            let network = config.network;
            let prefix = network.ipv6_prefix();
            assert!(
                config.enable_ipv6 || prefix == rslirp_stack::Ipv6Prefix::DEFAULT,
                "an IPv6 prefix without -6: {prefix}"
            );
            for addr in [network.gateway6(), network.dns6()] {
                assert!(network.contains6(addr), "{addr} outside {prefix}");
                assert!(
                    !addr.is_multicast() && !addr.is_loopback() && !addr.is_unicast_link_local(),
                    "{addr} from {prefix}"
                );
            }
            assert_eq!(
                rslirp_stack::Ipv6Prefix::parse(&prefix.to_string()),
                Ok(prefix),
                "the prefix reads back"
            );
            // The forwards main sets up for --publish: every port of every range, whose
            // guest port is computed from the host port's offset.
            for publish in &options.publish {
                for request in publish.requests() {
                    assert!(request.host_port >= 1 && request.guest_port >= 1);
                }
            }
        }
        Ok(_) => {}
        Err(err) => drop(err.to_string()),
    }
}

pub fn seeds() -> crate::Seeds {
    let line = |words: &[&str]| words.join("\0").into_bytes();
    vec![
        // How rootlesskit starts it.
        (
            "rootlesskit",
            line(&[
                "--mtu",
                "65520",
                "-r",
                "3",
                "--disable-host-loopback",
                "--enable-sandbox",
                "--enable-seccomp",
                "-c",
                "-e",
                "4",
                "--api-socket",
                "/run/user/1000/slirp.sock",
                "12345",
                "tap0",
            ]),
        ),
        // How podman starts it.
        (
            "podman",
            line(&[
                "--disable-host-loopback",
                "--mtu=65520",
                "--enable-sandbox",
                "--enable-seccomp",
                "--enable-ipv6",
                "-c",
                "-r",
                "3",
                "--netns-type=path",
                "/run/user/1000/netns/netns-1",
                "tap0",
            ]),
        ),
        (
            "cidr-outbound",
            line(&[
                "--configure",
                "--cidr=10.0.135.128/25",
                "--outbound-addr=eth0",
                "--outbound-addr6=::1",
                "--disable-dns",
                "--macaddress",
                "02:00:00:00:00:01",
                "--userns-path=/proc/1/ns/user",
                "1",
            ]),
        ),
        (
            "tapfd",
            line(&["--netns-type", "tapfd", "--target-type=netns", "5"]),
        ),
        ("clustered", line(&["-c6r3", "-m1500", "--ena", "--", "-1"])),
        // rslirp's own IPv6 prefix, next to abbreviations of --cidr it must not disturb.
        (
            "cidr6",
            line(&[
                "-c6",
                "--cidr6=fd42:1:2:3::/64",
                "--cid",
                "10.9.0.0/16",
                "--cidr6",
                "2001:db8::/64",
                "1",
            ]),
        ),
        (
            "cidr6-refused",
            line(&["-6", "--cidr6", "fd42::100/48", "--ci=x", "1"]),
        ),
        // rslirp's own options.
        (
            "publish",
            line(&[
                "--publish",
                "tcp/8080-8082:80-82",
                "--publish=udp/127.0.0.1:5353:53",
                "--pub",
                "[::1]:65534-65535:1-2",
                "--outbound-if",
                "wg0",
                "--outbound-if6=vpn0",
                "-6",
                "1",
            ]),
        ),
        (
            "publish-bad",
            line(&["--publish", "8080:80/udp", "--outbound-i", "x", "1"]),
        ),
        ("help", line(&["--help"])),
        ("version", line(&["-v", "--bogus"])),
    ]
}

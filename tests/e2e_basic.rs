//! End-to-end: start-up, `-c` configuration, ping, and the ways rslirp is told to stop.

#[macro_use]
mod common;

use common::ns::BindMount;
use common::{assert_traffic_works, Env, Mode, EXIT_TIMEOUT, GATEWAY, GUEST_ADDR, TAP};
use std::time::Duration;

both_modes!(
    ready_byte_is_1_then_closed,
    configure_sets_address_route_mtu_and_lo,
    mtu_option_sets_tap_mtu,
    ping_gateway,
    exit_fd_hangup_exits_0,
    sigterm_exits_0,
    sigint_exits_0,
    netns_type_path_bind_mount,
    existing_tap_without_configure,
);

fn ready_byte_is_1_then_closed(mode: Mode) {
    let env = Env::new(mode);
    // start() already insists on the byte `1`; what is left is that nothing follows it.
    let mut rslirp = env.rslirp().start();
    rslirp.assert_ready_fd_closed();
    rslirp.assert_running();
}

/// Flags and MTU of a guest interface, from `ip -o link show dev DEV`, whose line looks like
/// `2: tap0: <BROADCAST,UP,LOWER_UP> mtu 1500 qdisc ...`.
fn link_flags_and_mtu(env: &Env, dev: &str) -> (Vec<String>, u32) {
    let line = env.guest_ok(&["ip", "-o", "link", "show", "dev", dev]);
    let flags = line
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(flags, _)| flags.split(',').map(str::to_string).collect())
        .unwrap_or_else(|| panic!("no flags in {line:?}"));
    let mtu = line
        .split_whitespace()
        .skip_while(|word| *word != "mtu")
        .nth(1)
        .and_then(|mtu| mtu.parse().ok())
        .unwrap_or_else(|| panic!("no mtu in {line:?}"));
    (flags, mtu)
}

fn assert_up(env: &Env, dev: &str) {
    let (flags, _) = link_flags_and_mtu(env, dev);
    assert!(
        flags.iter().any(|f| f == "UP"),
        "{dev} is not up: {flags:?}"
    );
}

fn configure_sets_address_route_mtu_and_lo(mode: Mode) {
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();

    env.assert_guest_configured("10.0.2.100/24", GATEWAY);
    assert_up(&env, TAP);
    assert_up(&env, "lo");
    assert_eq!(link_flags_and_mtu(&env, TAP).1, 1500, "default MTU");
}

fn mtu_option_sets_tap_mtu(mode: Mode) {
    let env = Env::new(mode);
    // 65520 is what podman passes.
    let _rslirp = env.rslirp().arg("--mtu=65520").start();
    assert_eq!(link_flags_and_mtu(&env, TAP).1, 65520);
    assert_traffic_works(&env);
}

fn ping_gateway(mode: Mode) {
    let env = Env::new(mode);
    let _rslirp = env.rslirp().start();
    let out = env.guest_ok(&["ping", "-c", "3", "-W", "2", &GATEWAY.to_string()]);
    assert!(out.contains("3 received"), "ping output: {out}");
}

fn exit_fd_hangup_exits_0(mode: Mode) {
    let env = Env::new(mode);
    let mut rslirp = env.rslirp().exit_fd().start();
    // Still running while the pipe is open: it must not mistake the fd for closed.
    std::thread::sleep(Duration::from_millis(300));
    rslirp.assert_running();
    rslirp.close_exit_fd();
    let status = rslirp.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "exit after -e hang-up: {status}");
}

fn assert_signal_exits_0(mode: Mode, signal: libc::c_int) {
    let env = Env::new(mode);
    let mut rslirp = env.rslirp().start();
    rslirp.signal(signal);
    let status = rslirp.wait_exit(EXIT_TIMEOUT);
    // The reference slirp4netns simply dies of the signal here; callers want a clean 0.
    assert!(status.success(), "exit after signal {signal}: {status}");
}

fn sigterm_exits_0(mode: Mode) {
    assert_signal_exits_0(mode, libc::SIGTERM);
}

fn sigint_exits_0(mode: Mode) {
    assert_signal_exits_0(mode, libc::SIGINT);
}

/// `--netns-type=path` on a bind mount of the guest's netns, as podman does it; rootless
/// callers also name the user namespace that owns it.
fn netns_type_path_bind_mount(mode: Mode) {
    let env = Env::new(mode);
    let netns_file = env.tmp.path.join("netns");
    let _mount = BindMount::file(&env.guest_netns_path(), &netns_file);
    let mut launch = env.rslirp().arg("--netns-type=path").target(&netns_file);
    if mode == Mode::Rootless {
        let userns = env.guest_userns_path();
        launch = launch.arg(&format!("--userns-path={}", userns.display()));
    }
    let _rslirp = launch.start();
    assert_traffic_works(&env);
}

/// `--netns-type=path` on the file `ip netns add` creates in /run/netns (rootful only: an
/// unprivileged user cannot create one).
#[test]
fn rootful_netns_type_path_run_netns() {
    let env = Env::new(Mode::Rootful);
    let path = env.guest_named_netns().path();
    let _rslirp = env
        .rslirp()
        .arg("--netns-type")
        .arg("path")
        .target(&path)
        .start();
    assert_traffic_works(&env);
}

/// rootlesskit's way: it creates and configures tap0 itself, then starts the helper without
/// `-c`; the helper must attach to the existing tap and leave its configuration alone.
fn existing_tap_without_configure(mode: Mode) {
    let env = Env::new(mode);
    let guest_cidr = format!("{GUEST_ADDR}/24");
    let gateway = GATEWAY.to_string();
    let setup: [&[&str]; 5] = [
        &["ip", "tuntap", "add", "dev", TAP, "mode", "tap"],
        &["ip", "link", "set", TAP, "up"],
        &["ip", "addr", "add", &guest_cidr, "dev", TAP],
        &["ip", "link", "set", "lo", "up"],
        &["ip", "route", "add", "default", "via", &gateway],
    ];
    for args in setup {
        env.guest_ok(args);
    }
    let _rslirp = env.rslirp().no_configure().start();
    assert_traffic_works(&env);
}

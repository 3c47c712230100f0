//! DHCPv4 from the guest's side with the stock client: busybox udhcpc on the tap, and the
//! lease it reports (e2e_services, e2e_search).

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;

use super::{Env, TAP};

/// What udhcpc passed its script on `bound`: ip, subnet, router, dns, mtu, lease, search...
#[derive(Debug)]
pub struct Lease(pub BTreeMap<String, String>);

impl Lease {
    /// The value of `key`; panics if udhcpc passed none.
    pub fn get(&self, key: &str) -> &str {
        self.find(key)
            .unwrap_or_else(|| panic!("udhcpc passed no {key:?}; lease: {:?}", self.0))
    }

    /// The value of `key`, if udhcpc passed one.
    pub fn find(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Every `(key, value)` of `expected` is in the lease.
    pub fn assert(&self, expected: &[(&str, &str)]) {
        for (key, value) in expected {
            assert_eq!(self.get(key), *value, "{key}; lease: {:?}", self.0);
        }
    }

    pub fn prefix_len(&self) -> u32 {
        let mask: Ipv4Addr = self.get("subnet").parse().expect("subnet is an address");
        u32::from(mask).count_ones()
    }
}

/// rootlesskit's way: the tap exists and is up, with no address; rslirp starts without -c.
pub fn create_tap_up(env: &Env) {
    env.guest_ok(&["ip", "tuntap", "add", "dev", TAP, "mode", "tap"]);
    env.guest_ok(&["ip", "link", "set", TAP, "up"]);
}

/// Runs udhcpc on the guest's tap, with `options` added (e.g. `["-O", "mtu"]` to ask for
/// the MTU too), and returns the lease it reported.
pub fn udhcpc(env: &Env, options: &[&str]) -> Lease {
    let record = env.tmp.path.join("udhcpc.env");
    let script = env.tmp.path.join("udhcpc.sh");
    // A lease of an earlier run must not pass for this one's.
    let _ = fs::remove_file(&record);
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n# udhcpc calls this with the event; keep what it passes on bound.\n\
             [ \"$1\" = bound ] && env > '{}'\nexit 0\n",
            record.display()
        ),
    )
    .expect("write udhcpc script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let script = script.to_string_lossy();
    let mut cmd = vec!["udhcpc", "-i", TAP, "-q", "-n", "-f", "-t", "5", "-T", "1"];
    cmd.extend(options);
    cmd.extend(["-s", &script]);
    env.guest_ok(&cmd);
    let text = fs::read_to_string(&record).expect("udhcpc reported no lease");
    // udhcpc's variables are the lower-case ones; the rest is the inherited environment.
    let is_udhcpc_var = |key: &str| {
        key.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    Lease(
        text.lines()
            .filter_map(|line| line.split_once('='))
            .filter(|(key, _)| is_udhcpc_var(key))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
    )
}

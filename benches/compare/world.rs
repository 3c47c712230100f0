//! One measurement's world, built fresh and torn down afterwards: a "host" network
//! namespace of its own (loopback plus a black-hole interface, so nothing can leave the
//! machine) where the helper and the host-side servers run, and a rootless "container":
//! `unshare -rn` run by the unprivileged user, as podman would. The same layout as the
//! end-to-end tests (tests/common).

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::sys::{self, command, run, run_ok, Proc};

/// The unprivileged account that runs the helpers and owns the container's namespaces.
pub const USER: &str = "rslirp-e2e";
/// Prefix of everything this benchmark names (namespaces, temp dirs): `PREFIX-<pid>-…`.
const PREFIX: &str = "rsbench";
const IP_TIMEOUT: Duration = Duration::from_secs(10);
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Drops from root to [`USER`] in place (the pid we spawn is the program's own), and sets
/// the parent-death signal again, which changing the uid clears.
pub const AS_USER: [&str; 9] = [
    "setpriv",
    "--reuid",
    USER,
    "--regid",
    USER,
    "--clear-groups",
    "--pdeathsig",
    "KILL",
    "--",
];

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn create(name: String) -> Result<Netns, String> {
        run_ok(&mut command("ip", &["netns", "add", &name]), IP_TIMEOUT)?;
        Ok(Netns { name })
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = command("ip", &["-n", &self.name]);
        cmd.args(args);
        run_ok(&mut cmd, IP_TIMEOUT)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(
            &mut command("ip", &["netns", "del", &self.name]),
            IP_TIMEOUT,
        );
    }
}

/// The run's directory under /tmp, removed with its contents on drop. It holds a copy of
/// rslirp and, in `user/` (owned by [`USER`]), the helpers' sockets, pid files and logs.
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn create() -> Result<RunDir, String> {
        let path = std::env::temp_dir().join(format!("{PREFIX}-{}", std::process::id()));
        fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let dir = RunDir { path };
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", dir.path.display()))?;
        let user_dir = dir.user_dir();
        fs::create_dir(&user_dir).map_err(|e| format!("mkdir {}: {e}", user_dir.display()))?;
        let (uid, gid) = user_ids()?;
        std::os::unix::fs::chown(&user_dir, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", user_dir.display()))?;
        Ok(dir)
    }

    /// Where the helpers (running as [`USER`]) may create files.
    pub fn user_dir(&self) -> PathBuf {
        self.path.join("user")
    }

    /// A world-executable copy of `bin` (the build directory may be closed to [`USER`]).
    pub fn executable_copy(&self, bin: &Path) -> Result<PathBuf, String> {
        let name = bin.file_name().ok_or("binary path without a name")?;
        let copy = self.path.join(name);
        fs::copy(bin, &copy).map_err(|e| format!("copy {}: {e}", bin.display()))?;
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", copy.display()))?;
        Ok(copy)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn user_ids() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        run_ok(&mut command("id", &[flag, USER]), SETUP_TIMEOUT)?
            .trim()
            .parse()
            .map_err(|e| format!("id {flag} {USER}: {e}"))
    };
    Ok((id("-u")?, id("-g")?))
}

/// Namespaces and directories of runs that were killed before their guards ran (their
/// processes died with them: see `Proc::spawn`). Removes those whose owner pid is gone.
pub fn remove_leftovers() {
    let owner_gone = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|rest| rest.trim_start_matches("-h").strip_prefix('-'))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for name in dir_names(Path::new("/run/netns")) {
        if owner_gone(&name) {
            drop(Netns { name });
        }
    }
    let tmp = std::env::temp_dir();
    for name in dir_names(&tmp) {
        if owner_gone(&name) {
            drop(RunDir {
                path: tmp.join(name),
            });
        }
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A host namespace and a rootless container. Fields drop in order: the container's
/// process (its namespaces go with it), then the host namespace.
pub struct World {
    guest: Proc,
    pub host: Netns,
    /// The host namespace's own non-loopback address (on the black-hole interface).
    pub host_addr: Ipv4Addr,
    /// The black-hole interface (pasta copies its addressing template from it).
    pub host_ifname: &'static str,
    /// The host namespace, open, for `host_user_cmd`.
    host_ns: fs::File,
    /// [`USER`]'s uid and gid.
    user_ids: (u32, u32),
}

impl World {
    /// World number `n` of this run.
    pub fn new(n: u32) -> Result<World, String> {
        let host = Netns::create(format!("{PREFIX}-h-{}-{n}", std::process::id()))?;
        let host_addr = Ipv4Addr::new(10, 99, (n % 250 + 1) as u8, 1);
        let host_ifname = "d0";
        host.ip(&["link", "set", "lo", "up"])?;
        // A dummy interface is the natural sink; kernels without it get a port-less bridge,
        // which behaves the same here (a local address, an on-link subnet, no peer).
        if host
            .ip(&["link", "add", host_ifname, "type", "dummy"])
            .is_err()
        {
            host.ip(&["link", "add", host_ifname, "type", "bridge"])?;
        }
        host.ip(&[
            "addr",
            "add",
            &format!("{host_addr}/24"),
            "dev",
            host_ifname,
        ])?;
        host.ip(&["link", "set", host_ifname, "up"])?;
        let mut cmd = command("ip", &["netns", "exec", &host.name]);
        cmd.args(AS_USER).args(["unshare", "-rn", "sleep", "3600"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut guest = sys::spawn(&mut cmd).map_err(|e| format!("start the container: {e}"))?;
        // Until `sleep` runs, its namespaces are not the container's yet.
        let comm = format!("/proc/{}/comm", guest.pid());
        sys::wait_for("the container namespace", SETUP_TIMEOUT, || {
            let name = fs::read_to_string(&comm).unwrap_or_default();
            (name.trim() == "sleep" || !guest.running()).then_some(())
        })?;
        if !guest.running() {
            return Err("the container process (unshare -rn) exited".into());
        }
        let host_ns = fs::File::open(host.path())
            .map_err(|e| format!("open {}: {e}", host.path().display()))?;
        let id = |flag: &str| -> Result<u32, String> {
            let out = run_ok(&mut command("id", &[flag, USER]), IP_TIMEOUT)?;
            out.trim()
                .parse()
                .map_err(|e| format!("id {flag} {USER}: {out:?}: {e}"))
        };
        let user_ids = (id("-u")?, id("-g")?);
        Ok(World {
            guest,
            host,
            host_addr,
            host_ifname,
            host_ns,
            user_ids,
        })
    }

    /// The pid whose namespaces are the container's.
    pub fn guest_pid(&self) -> u32 {
        self.guest.pid()
    }

    pub fn guest_netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.guest_pid()))
    }

    /// `args` run as root in the host namespace.
    pub fn host_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = command("ip", &["netns", "exec", &self.host.name]);
        cmd.args(args);
        cmd
    }

    /// `program` to run as [`USER`] in the host namespace (how the helpers run), entered
    /// by the spawning process itself (`sys::enter_as_user`) so that no wrapper's start
    /// counts in a helper's time to ready. The namespace file stays open in `self`.
    pub fn host_user_cmd(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        sys::enter_as_user(&mut cmd, &self.host_ns, self.user_ids);
        cmd
    }

    /// `args` run as root in the container's network namespace.
    pub fn guest_cmd(&self, args: &[&str]) -> Command {
        let pid = self.guest_pid().to_string();
        let mut cmd = command("nsenter", &["-t", &pid, "-n", "--"]);
        cmd.args(args);
        cmd
    }
}

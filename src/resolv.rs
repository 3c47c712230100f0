//! The host's resolvers, for the DNS forwarder: the usable `nameserver`s of
//! /etc/resolv.conf in order (the stack uses the first and falls back to the next ones),
//! and its search domains (handed to the guest by DHCP, RA and DHCPv6), re-read whenever
//! the file changes.
//!
//! Changes are noticed with inotify on the file's directory (and, when resolv.conf is a
//! symlink as with systemd-resolved, on the target's directory too), so both in-place writes
//! and replacement by rename are seen, and an idle rslirp still never wakes up on its own.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The `nameserver` lines with an address we can use, in order. IPv6 link-local addresses
/// need a scope (`%eth0`) that does not survive the trip through `IpAddr`, so they are
/// skipped. (The stack keeps at most `Limits::max_dns_upstreams` of them.)
pub fn parse_upstreams(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then(|| words.next())?
        })
        .filter_map(|addr| addr.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified() && !is_link_local_v6(ip))
        .collect()
}

fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// The search list: the words of the last `search` or `domain` line (resolv.conf(5):
/// `domain` is the older form of a one-domain list; as in glibc, whichever comes last
/// wins). Empty without either. The stack checks the names and bounds the list.
pub fn parse_search(text: &str) -> Vec<String> {
    let mut search = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("search") => search = words.map(str::to_string).collect(),
            Some("domain") => search = words.next().map(str::to_string).into_iter().collect(),
            _ => {}
        }
    }
    search
}

/// What the stack takes from resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub upstreams: Vec<IpAddr>,
    pub search: Vec<String>,
}

impl ResolvConf {
    pub fn parse(text: &str) -> ResolvConf {
        ResolvConf {
            upstreams: parse_upstreams(text),
            search: parse_search(text),
        }
    }

    /// An unreadable file is an empty one: no nameserver, no search domains.
    pub fn read(path: &Path) -> ResolvConf {
        std::fs::read_to_string(path)
            .map(|text| ResolvConf::parse(&text))
            .unwrap_or_default()
    }

    pub fn apply(&self, stack: &mut rslirp_stack::Stack) {
        stack.set_dns_upstreams(self.upstreams.clone());
        stack.set_dns_search(&self.search);
    }
}

/// Watches resolv.conf; readable when something in its directory changed, or the file
/// itself did. The file watch matters when resolv.conf is a bind-mounted file (container
/// engines, `ip netns exec`): writes to it raise events on the file and on its original
/// directory only, never on /etc.
pub struct ResolvWatch {
    inotify: Inotify,
    path: PathBuf,
    file_watch: Option<WatchDescriptor>,
}

impl ResolvWatch {
    pub fn new(path: &Path) -> nix::Result<ResolvWatch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let flags = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MODIFY;
        let mut dirs = vec![path.parent().unwrap_or(Path::new("/")).to_path_buf()];
        if let Ok(target) = std::fs::canonicalize(path) {
            if let Some(dir) = target.parent() {
                dirs.push(dir.to_path_buf());
            }
        }
        dirs.dedup();
        for dir in dirs {
            // A directory we cannot watch only means changes there go unnoticed.
            if let Err(err) = inotify.add_watch(&dir, flags) {
                log::warn!(
                    "cannot watch {} for resolv.conf changes: {err}",
                    dir.display()
                );
            }
        }
        let mut watch = ResolvWatch {
            inotify,
            path: path.to_path_buf(),
            file_watch: None,
        };
        watch.watch_file();
        Ok(watch)
    }

    /// (Re-)watch the file itself: a rename replacement gives the path a new inode, whose
    /// changes the old watch would not see. The path is followed if it is a symlink.
    fn watch_file(&mut self) {
        if let Some(old) = self.file_watch.take() {
            // Already gone if the old inode was deleted; nothing to undo then.
            let _ = self.inotify.rm_watch(old);
        }
        let flags = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF;
        self.file_watch = self.inotify.add_watch(&self.path, flags).ok();
    }

    pub fn fd(&self) -> RawFd {
        self.inotify.as_fd().as_raw_fd()
    }

    /// Drain pending notifications and read the resolver again.
    pub fn reload(&mut self) -> ResolvConf {
        while matches!(self.inotify.read_events(), Ok(events) if !events.is_empty()) {}
        self.watch_file();
        ResolvConf::read(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_usable_nameserver() {
        let text = "# comment\nsearch example\nnameserver fe80::1%eth0\nnameserver bogus\n\
                    nameserver 127.0.0.53\nnameserver 10.1.1.1\n";
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            parse_upstreams(text),
            vec![ip("127.0.0.53"), ip("10.1.1.1")]
        );
        assert_eq!(parse_upstreams("nameserver ::1\n"), vec![ip("::1")]);
        assert!(parse_upstreams("options ndots:2\n").is_empty());
        assert!(parse_upstreams("nameserver 0.0.0.0\n").is_empty());
    }

    #[test]
    fn last_search_or_domain_line_wins() {
        let words = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(parse_search("nameserver 10.0.0.1\n").is_empty());
        assert_eq!(
            parse_search("search a.example b.example.\nnameserver 1.1.1.1\n"),
            words(&["a.example", "b.example."])
        );
        assert_eq!(
            parse_search("search a.example b.example\ndomain corp.example extra\n"),
            words(&["corp.example"])
        );
        assert_eq!(
            parse_search("domain corp.example\nsearch\tx.example  y.example\n"),
            words(&["x.example", "y.example"])
        );
        // A bare `search` line empties the list; comments and look-alikes do not count.
        assert!(parse_search("search a.example\nsearch\n").is_empty());
        assert!(parse_search("# search a.example\nsearches b\n;domain c\n").is_empty());
        let conf = ResolvConf::parse("nameserver 10.0.0.1\nsearch s.example\n");
        assert_eq!(conf.upstreams, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(conf.search, words(&["s.example"]));
    }

    #[test]
    fn reload_follows_rename_replacement() {
        let dir = std::env::temp_dir().join(format!("rslirp-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, "nameserver 127.0.0.1\n").unwrap();
        let mut watch = ResolvWatch::new(&path).unwrap();
        assert_eq!(
            watch.reload().upstreams,
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        let staged = dir.join("resolv.conf.new");
        std::fs::write(&staged, "nameserver 127.0.0.2\n").unwrap();
        std::fs::rename(&staged, &path).unwrap();
        assert!(watch.inotify.read_events().is_ok_and(|e| !e.is_empty()));
        assert_eq!(
            watch.reload().upstreams,
            vec!["127.0.0.2".parse::<IpAddr>().unwrap()]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reload_follows_in_place_writes_through_a_symlink_elsewhere() {
        // resolv.conf as a symlink to a file in another directory, rewritten in place: only
        // the file watch sees that (the directory of the link does not change).
        let base = std::env::temp_dir().join(format!("rslirp-resolv-ln-{}", std::process::id()));
        let (etc, run) = (base.join("etc"), base.join("run"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        let target = run.join("resolv.conf");
        std::fs::write(&target, "nameserver 127.0.0.1\n").unwrap();
        let link = etc.join("resolv.conf");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut watch = ResolvWatch::new(&link).unwrap();
        assert_eq!(
            watch.reload().upstreams,
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        std::fs::write(&target, "nameserver 127.0.0.3\n").unwrap();
        assert!(watch.inotify.read_events().is_ok_and(|e| !e.is_empty()));
        assert_eq!(
            watch.reload().upstreams,
            vec!["127.0.0.3".parse::<IpAddr>().unwrap()]
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}

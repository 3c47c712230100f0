//! File descriptors: every flow holds a host socket, so the flow tables must fit the
//! process's descriptor limit, with a reserve kept back for what is not a guest flow.
//!
//! At start rslirp raises its soft `RLIMIT_NOFILE` to the hard limit (the soft limit is
//! usually 1,024 for compatibility with `select`, which rslirp does not use), then shrinks
//! the flow tables (`Limits::within_fds`) so that guest flows can never take the
//! descriptors that the control socket, its clients, the forwards' listeners and rslirp
//! itself need: a guest opening thousands of flows meets the tables' own rules (eviction,
//! RST), and `add_hostfwd` and new connections keep working.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use rslirp_stack::Limits;

/// Descriptors kept for rslirp itself besides the control socket and the forwards: stdio,
/// ready and exit fds, the tap, epoll (twice: mio's registry is a duplicate), the signalfd,
/// the pidfd, the resolv.conf watch and a read of it, the pcap file, the sandbox's
/// transient ones, an accepted forward client not yet given a flow, and slack.
pub const BASE_RESERVE: usize = 32;

/// Forward listeners reserved for: at most `max_forwards`, and at most a sixteenth of the
/// descriptors (at least 16), so that a low limit still leaves most to the flows.
fn forward_reserve(limits: &Limits, fd_limit: usize) -> usize {
    limits.max_forwards.min((fd_limit / 16).max(16))
}

/// The descriptor limit after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: u64,
    pub hard: u64,
    /// The soft limit we were started with.
    pub previous: u64,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit. A failure leaves the limit as it was
/// (and is logged): rslirp then plans with what it has.
pub fn raise_nofile_limit() -> NofileLimit {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        log::warn!("getrlimit(RLIMIT_NOFILE) failed; assuming 1024 descriptors");
        return NofileLimit {
            soft: 1024,
            hard: 1024,
            previous: 1024,
        };
    };
    // An unlimited hard limit cannot be the soft one (the kernel caps it at fs.nr_open).
    let target = if hard == RLIM_INFINITY {
        nr_open().unwrap_or(1 << 20)
    } else {
        hard
    };
    if target <= soft {
        return NofileLimit {
            soft,
            hard,
            previous: soft,
        };
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => NofileLimit {
            soft: target,
            hard,
            previous: soft,
        },
        Err(err) => {
            log::warn!("cannot raise the descriptor limit from {soft} to {target}: {err}");
            NofileLimit {
                soft,
                hard,
                previous: soft,
            }
        }
    }
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Descriptors open now (`/proc/self/fd`, less the one reading it); a guess if unreadable.
pub fn open_fds() -> usize {
    match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.count().saturating_sub(1),
        Err(_) => 16,
    }
}

/// How the descriptors are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdPlan {
    /// The soft limit the plan is for.
    pub fd_limit: usize,
    /// Open when planned.
    pub in_use: usize,
    /// Kept back: [`BASE_RESERVE`], the control socket and its clients, forward listeners.
    pub reserve: usize,
    /// What the flow tables may hold together.
    pub flows: usize,
    /// `limits` fitted to `flows` (and `max_forwards` to its reserve).
    pub limits: Limits,
}

/// Fit `limits` to `fd_limit` descriptors of which `in_use` are open.
pub fn plan(limits: &Limits, fd_limit: usize, in_use: usize) -> FdPlan {
    let forwards = forward_reserve(limits, fd_limit);
    let reserve = BASE_RESERVE + 1 + limits.max_api_clients + forwards;
    let flows = fd_limit.saturating_sub(in_use + reserve);
    let mut fitted = limits.within_fds(flows);
    fitted.max_forwards = forwards;
    FdPlan {
        fd_limit,
        in_use,
        reserve,
        flows,
        limits: fitted,
    }
}

/// The info line at start: what the flow tables may hold and why.
pub fn describe(limit: &NofileLimit, plan: &FdPlan, configured: &Limits) -> String {
    let raised = if limit.soft > limit.previous {
        format!("raised from {} to the hard limit", limit.previous)
    } else {
        format!("hard limit {}", limit.hard)
    };
    let l = &plan.limits;
    let fitted = if l == configured {
        "the flow tables fit".to_string()
    } else {
        "the flow tables shrunk to fit".to_string()
    };
    format!(
        "file descriptors: limit {} ({raised}), {} open, {} kept for the control socket, its \
         {} clients, {} forward listeners and rslirp itself; {} for flows: {fitted} \
         (max_tcp_flows {}, max_udp_flows {}, max_icmp_flows {}, max_forwards {})",
        plan.fd_limit,
        plan.in_use,
        plan.reserve,
        l.max_api_clients,
        l.max_forwards,
        plan.flows,
        l.max_tcp_flows,
        l.max_udp_flows,
        l.max_icmp_flows,
        l.max_forwards,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_1024_limit_keeps_a_reserve_no_flow_can_take() {
        let limits = Limits::default();
        let plan = plan(&limits, 1024, 10);
        // 32 + the listener + 64 clients + 64 forward listeners.
        assert_eq!(plan.reserve, 161);
        assert_eq!(plan.flows, 1024 - 10 - 161);
        assert!(plan.limits.flow_fds() <= plan.flows, "{plan:?}");
        assert_eq!(plan.limits.max_forwards, 64);
        assert_eq!(plan.limits.max_api_clients, limits.max_api_clients);
        assert!(
            plan.in_use + plan.limits.flow_fds() + plan.reserve <= 1024,
            "every flow, client and listener at once still fits"
        );
    }

    #[test]
    fn a_high_limit_changes_nothing() {
        let limits = Limits::default();
        let plan = plan(&limits, 524_288, 10);
        assert_eq!(plan.limits, limits);
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let limit = raise_nofile_limit();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!(soft, limit.soft);
        assert!(hard == RLIM_INFINITY || soft == hard, "{soft} < {hard}");
    }
}

//! The mio event loop: the one thread that runs the data path.
//!
//! It waits on the tap, every host socket, a signalfd (SIGTERM/SIGINT), the exit fd and a
//! pidfd of the target process, with the stack's next deadline as the timeout, so an idle
//! rslirp sleeps in epoll_wait.
//! Each wake-up: feed what arrived to the stack, run its timers, then write what it queued
//! for the guest to the tap (keeping frames queued if the tap is full). With `--pcap`, each
//! frame read or written is also recorded (see `pcap.rs`), and the capture is flushed before
//! the loop sleeps.
//!
//! With a virtio-net header on the tap (`Sources::vnet_hdr`, see `tap::Tap`) every frame
//! read starts with one and every frame written gets one, built by `tap::vnet_header` from
//! the stack's per-frame `Offload`: a TCP segment of up to 64 KiB for the kernel to cut,
//! and/or a checksum to complete. The pcap records frames without the header, as the guest's
//! `tcpdump` would see them on a device with offloads: large segments whole, checksums of
//! such TCP frames (and of the guest's own) partial.

use crate::api_socket::{self, ApiServer};
use crate::host::{token_flow, token_forward, RealHost};
use crate::pcap::PcapWriter;
use crate::resolv::ResolvWatch;
use crate::tap::{frame_read, vnet_header, LinkKind, VNET_HDR_LEN};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signalfd::SignalFd;
use rslirp_stack::{HostEvent, Instant, Stack, TapWrite};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// Tokens that are not flows: flow ids never use index `u32::MAX` (the flow table would
/// need four billion slots), so these cannot collide with `flow_token`.
const TAP: Token = Token(u32::MAX as usize);
const SIGNAL: Token = Token(u32::MAX as usize - 1);
const EXIT_FD: Token = Token(u32::MAX as usize - 2);
const RESOLV: Token = Token(u32::MAX as usize - 3);
const TARGET: Token = Token(u32::MAX as usize - 4);
/// Writability of the tap, watched through a duplicate of its fd (see `EventLoop::new`).
const TAP_WRITABLE: Token = Token(u32::MAX as usize - 5);

/// Frames read from the tap per wake-up before the loop turns to other sources.
const TAP_READ_BATCH: usize = 256;
/// Wake-ups in a row with frames on the tap after which the tap is read as a burst (until
/// EAGAIN or the batch), not one frame per wake-up (see `EventLoop::read_tap`).
const TAP_BURST_AFTER: u32 = 2;
/// Time spent reading the tap per wake-up before the loop turns to other sources, whatever
/// the count: a frame that opens a host connection costs far more than one of a bulk
/// transfer (a SYN flood made a batch of 256 take 10-45 ms), and the control socket, the
/// host sockets and timers wait meanwhile.
const TAP_READ_BUDGET: Duration = Duration::from_millis(2);

/// How often the loop looks whether many flows went away since the last look; if so it
/// returns the freed memory to the kernel (see `rslirp::release_free_memory`).
const TRIM_INTERVAL: Duration = Duration::from_secs(10);
/// Flows that must have gone since the last look for a trim to be worth its heap walk.
const TRIM_AFTER_FLOWS_GONE: u64 = 256;

/// Largest frame we read: the maximal MTU plus an Ethernet header (and a VLAN tag); also
/// the largest offloaded TCP segment (a 65,535-byte IP packet) with its Ethernet header.
/// Public for the fuzz harness (fuzz/harness), which runs the stack with offloads through
/// it and `tap`'s virtio-net header code.
pub const MAX_FRAME: usize = 65_536 + 18;

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("epoll failed: {0}")]
    Poll(std::io::Error),
    #[error("tap device failed: {0} (was the network namespace destroyed?)")]
    Tap(Errno),
}

/// Why the loop ended normally.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    Signal,
    ExitFd,
    /// The target process (PID operand) exited.
    TargetExited,
}

/// A monotonic clock in smoltcp's terms. Starts at 1 s so that no deadline is ever 0
/// (smoltcp uses `Instant::from_millis(0)` to mean "now").
pub struct Clock(std::time::Instant);

impl Clock {
    pub fn new() -> Clock {
        Clock(std::time::Instant::now())
    }

    pub fn now(&self) -> Instant {
        Instant::from_micros(1_000_000 + self.0.elapsed().as_micros() as i64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The fds the loop waits on besides host sockets. `tap` and `exit_fd` must be non-blocking.
pub struct Sources {
    /// The tap, or the socket that stands in for it (see `link`).
    pub tap: OwnedFd,
    pub link: LinkKind,
    /// Frames on the tap carry a virtio-net header (the tap was opened with IFF_VNET_HDR).
    pub vnet_hdr: bool,
    pub signals: SignalFd,
    pub exit_fd: Option<OwnedFd>,
    pub api: Option<ApiServer>,
    /// Watches resolv.conf for the DNS forwarder (absent with --disable-dns).
    pub resolv: Option<ResolvWatch>,
    /// `--pcap`: records every frame read from or written to the tap.
    pub pcap: Option<PcapWriter>,
    /// A pidfd of the target process (PID operand), readable once it has exited.
    pub target: Option<TargetWatch>,
}

/// The target process given as PID, watched so that rslirp ends with the container.
///
/// Why: the tap fd we hold keeps the container's network namespace alive (tun takes a
/// reference on the namespace it was opened in), so when the container's last process
/// exits the tap never goes away, reads on it never fail, and rslirp would idle forever
/// holding an orphaned namespace. slirp4netns behaves that way and relies on its caller's
/// exit fd or signal; a caller that forgets leaks both. The target's exit is the one event
/// we can see, and a pidfd reports it without polling.
pub struct TargetWatch {
    pub pid: i32,
    pub tap_name: String,
    pub pidfd: OwnedFd,
}

impl TargetWatch {
    /// `None` if the kernel has no pidfd_open (before 5.3): then there is nothing to watch
    /// with, and rslirp runs until its exit fd or a signal, as slirp4netns does.
    pub fn open(pid: i32, tap_name: &str) -> Result<Option<TargetWatch>, String> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory
        // is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOSYS) {
                log::warn!("pidfd_open is not available: rslirp will not notice the target exit");
                return Ok(None);
            }
            return Err(format!("cannot watch target process {pid}: {err}"));
        }
        // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
        let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        Ok(Some(TargetWatch {
            pid,
            tap_name: tap_name.to_string(),
            pidfd,
        }))
    }
}

pub struct EventLoop {
    poll: Poll,
    clock: Clock,
    tap: OwnedFd,
    link: LinkKind,
    /// The socket peer went away (`link_lost`): nothing is read any more, and every frame
    /// for the guest is dropped.
    link_lost: bool,
    vnet_hdr: bool,
    signals: SignalFd,
    exit_fd: Option<OwnedFd>,
    stack: Stack,
    host: RealHost,
    api: Option<ApiServer>,
    resolv: Option<ResolvWatch>,
    pcap: Option<PcapWriter>,
    target: Option<TargetWatch>,
    /// The tap fd again (`dup`), registered with mio for writability only: epoll keys its
    /// entries by fd, so the tap's own fd can have a level-triggered read entry of its own.
    tap_write_watch: OwnedFd,
    /// How many wake-ups in a row (this one included) found frames on the tap; beyond
    /// `TAP_BURST_AFTER` a burst is on, and the tap is read until it is empty (`read_tap`).
    tap_streak: u32,
    /// When `trim_memory` looks next, and how many flows were open at its last look.
    trim_at: Instant,
    flows_at_trim_check: u64,
    frame: Vec<u8>,
}

impl EventLoop {
    /// SIGTERM/SIGINT must already be blocked (they arrive through `sources.signals`).
    pub fn new(
        poll: Poll,
        clock: Clock,
        sources: Sources,
        stack: Stack,
        host: RealHost,
    ) -> std::io::Result<EventLoop> {
        let Sources {
            tap,
            link,
            vnet_hdr,
            signals,
            exit_fd,
            api,
            resolv,
            pcap,
            target,
        } = sources;
        let registry = poll.registry();
        // The tap is watched for reading level-triggered, unlike everything mio registers
        // (edge-triggered): a wake-up may then read just one frame and leave the rest to the
        // next `epoll_wait`, which returns at once while frames wait, instead of reading on
        // until a read fails with EAGAIN. A lone frame (one side of a request/response) costs
        // one read, not two. mio has no level-triggered mode, so the entry is added to its
        // epoll set directly, with the token as its data, which is how mio reports events.
        epoll_add_level_readable(&poll, &tap, TAP)?;
        // Writability stays edge-triggered (level-triggered, a writable tap would wake us
        // all the time), on a duplicate of the fd: epoll allows one entry per fd.
        let tap_write_watch = tap.try_clone()?;
        registry.register(
            &mut SourceFd(&tap_write_watch.as_raw_fd()),
            TAP_WRITABLE,
            Interest::WRITABLE,
        )?;
        registry.register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNAL,
            Interest::READABLE,
        )?;
        if let Some(fd) = &exit_fd {
            registry.register(&mut SourceFd(&fd.as_raw_fd()), EXIT_FD, Interest::READABLE)?;
        }
        if let Some(watch) = &resolv {
            registry.register(&mut SourceFd(&watch.fd()), RESOLV, Interest::READABLE)?;
        }
        if let Some(watch) = &target {
            registry.register(
                &mut SourceFd(&watch.pidfd.as_raw_fd()),
                TARGET,
                Interest::READABLE,
            )?;
        }
        Ok(EventLoop {
            poll,
            clock,
            tap,
            link,
            link_lost: false,
            vnet_hdr,
            signals,
            exit_fd,
            stack,
            host,
            api,
            resolv,
            pcap,
            target,
            tap_write_watch,
            tap_streak: 0,
            trim_at: Instant::ZERO,
            flows_at_trim_check: 0,
            frame: vec![0u8; VNET_HDR_LEN + MAX_FRAME],
        })
    }

    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// Adds a forward before the loop runs (`--publish`), through the path `add_hostfwd`
    /// requests take, so it gets the next id and the API lists and removes it.
    pub fn add_forward(
        &mut self,
        request: &rslirp_stack::api::ForwardRequest,
    ) -> Result<u64, rslirp_stack::forward::AddForwardError> {
        let now = self.clock.now();
        self.stack.add_hostfwd(now, request, &mut self.host)
    }

    /// Run until a signal or the exit fd says stop.
    pub fn run(&mut self) -> Result<Exit, LoopError> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.timeout();
            // Captured frames reach the file before we sleep, so a capture read while we
            // run is complete up to now (no system call when nothing was captured).
            if let Some(pcap) = &mut self.pcap {
                pcap.flush();
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(LoopError::Poll(err)),
            }
            let now = self.clock.now();
            let mut tap_readable = false;
            for event in events.iter() {
                match event.token() {
                    TAP => tap_readable = true,
                    // The loop writes queued frames on every wake-up (`write_tap` below).
                    TAP_WRITABLE => {}
                    SIGNAL => {
                        if self.signals.read_signal().ok().flatten().is_some() {
                            return Ok(Exit::Signal);
                        }
                    }
                    RESOLV => {
                        if let Some(watch) = &mut self.resolv {
                            watch.reload().apply(&mut self.stack);
                        }
                    }
                    TARGET => {
                        if let Some(watch) = &self.target {
                            // The container ended: a normal end, as when the caller closes
                            // the exit fd, so status 0 (callers treat a failing helper as an
                            // error of theirs).
                            log::info!(
                                "target process {} exited: the container is gone (its network \
                                 namespace with {} would live on only because we hold the tap)",
                                watch.pid,
                                watch.tap_name
                            );
                            return Ok(Exit::TargetExited);
                        }
                    }
                    EXIT_FD => {
                        if self.exit_fd.as_ref().is_some_and(exit_fd_closed) {
                            return Ok(Exit::ExitFd);
                        }
                    }
                    token if api_socket::is_api_token(token) => {
                        if let Some(api) = &mut self.api {
                            let (stack, host) = (&mut self.stack, &mut self.host);
                            let mut handle =
                                |request: &[u8]| stack.handle_api_request(now, request, host);
                            api.handle_event(token, self.poll.registry(), &mut handle);
                            // Rejections happen in the server; `get_stats` shows them.
                            self.stack.set_api_clients_rejected(api.rejected_clients);
                        }
                    }
                    token if token_forward(token).is_some() => {
                        if let Some(forward) = token_forward(token) {
                            self.stack
                                .handle_forward_event(now, forward, &mut self.host);
                        }
                    }
                    token => {
                        let host_event = HostEvent {
                            flow: token_flow(token),
                            readable: event.is_readable() || event.is_read_closed(),
                            writable: event.is_writable(),
                            error: event.is_error(),
                            read_closed: event.is_read_closed(),
                        };
                        self.stack
                            .handle_host_event(now, host_event, &mut self.host);
                    }
                }
            }
            if tap_readable {
                // One frame unless wake-ups before had frames too (see `read_tap`).
                self.tap_streak = self.tap_streak.saturating_add(1);
                self.read_tap(now, self.tap_streak > TAP_BURST_AFTER)?;
            } else {
                self.tap_streak = 0;
            }
            if let Some(api) = &mut self.api {
                api.expire(std::time::Instant::now(), self.poll.registry());
            }
            self.stack.poll(now, &mut self.host);
            self.write_tap()?;
            self.trim_memory(now);
        }
    }

    /// After a burst of flows has gone (a peak of short connections, say), give the memory
    /// they freed back, so that the resident size follows the flows open, not their peak.
    /// Looks at most every `TRIM_INTERVAL`; a trim only follows a large drop.
    fn trim_memory(&mut self, now: Instant) {
        if now < self.trim_at {
            return;
        }
        self.trim_at = now + rslirp_stack::Duration::from_micros(TRIM_INTERVAL.as_micros() as u64);
        let stats = self.stack.stats();
        let flows = stats.tcp_flows + stats.udp_flows + stats.icmp_flows;
        if flows + TRIM_AFTER_FLOWS_GONE <= self.flows_at_trim_check {
            crate::release_free_memory();
        }
        self.flows_at_trim_check = flows;
    }

    /// Until the stack's next deadline (frames left on the tap end the wait at once: its
    /// entry is level-triggered).
    fn timeout(&mut self) -> Option<Duration> {
        let api_wait = self
            .api
            .as_ref()
            .and_then(ApiServer::next_deadline)
            .map(|at| at.saturating_duration_since(std::time::Instant::now()));
        // A trim can only be due while enough flows were open at the last look; an idle
        // rslirp without flows never wakes for it.
        let trim = (self.flows_at_trim_check >= TRIM_AFTER_FLOWS_GONE).then_some(self.trim_at);
        let now = self.clock.now();
        let stack_wait = [self.stack.poll_at(), trim]
            .into_iter()
            .flatten()
            .min()
            .map(|deadline| {
                let micros = (deadline - now.min(deadline)).total_micros();
                // At least 1 µs: epoll rounds a zero timeout down to a busy poll.
                Duration::from_micros(micros).max(Duration::from_micros(1))
            });
        [api_wait, stack_wait].into_iter().flatten().min()
    }

    /// Read one frame into the stack, or with `burst` up to a batch of frames, until the tap
    /// is empty.
    ///
    /// A lone frame is read with one system call: no read follows it only to fail with
    /// EAGAIN. Frames left behind wake the next `epoll_wait` at once (level-triggered). A
    /// pair of frames (a connection's ACK and first data, data and FIN) is read one per
    /// wake-up too: the second `epoll_wait` is needed anyway, an EAGAIN read would not be.
    /// Only after `TAP_BURST_AFTER` wake-ups in a row with frames is the tap read as a
    /// burst: under load it is drained in batches (one EAGAIN per batch).
    ///
    /// The virtio-net header of a frame read needs no attention: its one flag that matters,
    /// NEEDS_CSUM (the TCP/UDP checksum holds only the pseudo-header sum), only says what
    /// the stack already assumes, as it never verifies the guest's transport checksums
    /// (the guest's kernel is the only writer of this tap). Its segment size is for
    /// splitting, which we do not: a 64 KiB segment goes to the host socket whole.
    fn read_tap(&mut self, now: Instant, burst: bool) -> Result<(), LoopError> {
        // A lone frame needs neither the batch nor the clock reads of its time budget.
        let (batch, until) = if burst {
            let until = std::time::Instant::now() + TAP_READ_BUDGET;
            (TAP_READ_BATCH, Some(until))
        } else {
            (1, None)
        };
        for read in 0..batch {
            if read > 0 && until.is_some_and(|until| std::time::Instant::now() >= until) {
                break;
            }
            if self.link_lost {
                return Ok(());
            }
            match nix::unistd::read(&self.tap, &mut self.frame) {
                Ok(0) if self.link == LinkKind::Socket => self.lose_link("hung up"),
                Ok(0) => return Err(LoopError::Tap(Errno::ENODEV)),
                Ok(len) => {
                    let Some(frame) = frame_read(&self.frame[..len], self.vnet_hdr) else {
                        continue; // shorter than its header: nothing to take
                    };
                    if let Some(pcap) = &mut self.pcap {
                        pcap.frame(frame);
                    }
                    self.stack.handle_frame(now, frame, &mut self.host);
                    // Keep the guest's queue moving while we read a long burst.
                    self.write_tap()?;
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(errno) if self.link == LinkKind::Socket && peer_gone(errno) => {
                    self.lose_link(errno.desc())
                }
                Err(errno) => return Err(LoopError::Tap(errno)),
            }
        }
        Ok(())
    }

    /// The socket peer that stood in for the tap went away (UML exited, say). slirp4netns
    /// carries on then, with no link, until its exit fd or a signal ends it (spinning on the
    /// hung-up socket meanwhile); callers stop it as they always do. We carry on too, the
    /// control socket still answering, but stop watching the dead socket, and drop what the
    /// stack still has for the guest (counted as tx_dropped) until the flows time out.
    fn lose_link(&mut self, why: &str) {
        if self.link_lost {
            return;
        }
        self.link_lost = true;
        if let Err(err) = epoll_delete(&self.poll, &self.tap) {
            log::debug!("epoll: cannot deregister the frame socket: {err}");
        }
        if let Err(err) = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&self.tap_write_watch.as_raw_fd()))
        {
            log::debug!("epoll: cannot deregister the frame socket: {err}");
        }
        log::info!(
            "the peer of the frame socket {why}: no link from now on; rslirp runs on until \
             its exit fd or a signal ends it, as slirp4netns does"
        );
    }

    /// Write queued frames until the tap pushes back; the rest waits for writability.
    fn write_tap(&mut self) -> Result<(), LoopError> {
        if self.link_lost {
            self.stack.poll_transmit(|_, _| TapWrite::Dropped);
            return Ok(());
        }
        let tap = &self.tap;
        let vnet_hdr = self.vnet_hdr;
        let socket = self.link == LinkKind::Socket;
        let pcap = &mut self.pcap;
        let mut fatal = None;
        let mut lost = None;
        self.stack.poll_transmit(|frame, offload| loop {
            if lost.is_some() {
                return TapWrite::Dropped;
            }
            let written = if vnet_hdr {
                let header = vnet_header(offload);
                nix::sys::uio::writev(tap, &[IoSlice::new(&header), IoSlice::new(frame)])
            } else {
                nix::unistd::write(tap, frame)
            };
            match written {
                Ok(_) => {
                    if let Some(pcap) = pcap {
                        pcap.frame(frame);
                    }
                    return TapWrite::Sent;
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return TapWrite::Full,
                // The guest has not brought the link up (EIO), or the kernel had no memory
                // for it: the frame has nowhere to go, as on a real NIC with no carrier.
                Err(Errno::EIO) | Err(Errno::ENOBUFS) => return TapWrite::Dropped,
                // The kernel found the frame malformed: our error, counted, not fatal.
                Err(Errno::EINVAL) => return TapWrite::Failed,
                Err(errno) if socket && peer_gone(errno) => {
                    lost = Some(errno);
                    return TapWrite::Dropped;
                }
                // A frame larger than the socket can ever carry (its send buffer).
                Err(Errno::EMSGSIZE) if socket => return TapWrite::Failed,
                Err(errno) => {
                    fatal = Some(errno);
                    return TapWrite::Full;
                }
            }
        });
        if let Some(errno) = lost {
            self.lose_link(errno.desc());
        }
        match fatal {
            Some(errno) => Err(LoopError::Tap(errno)),
            None => Ok(()),
        }
    }
}

/// Adds `fd` to mio's epoll set for reading, level-triggered, reported as `token`.
fn epoll_add_level_readable(poll: &Poll, fd: &OwnedFd, token: Token) -> std::io::Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token.0 as u64,
    };
    // SAFETY: both fds are open for the duration of the call (`poll` and `fd` are
    // borrowed), and `event` is a valid epoll_event the kernel only reads.
    let rc = unsafe {
        libc::epoll_ctl(
            poll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            &mut event,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes `fd`'s entry (added by `epoll_add_level_readable`) from mio's epoll set.
fn epoll_delete(poll: &Poll, fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: both fds are open for the duration of the call; EPOLL_CTL_DEL ignores the
    // event argument (null is allowed since Linux 2.6.9).
    let rc = unsafe {
        libc::epoll_ctl(
            poll.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd.as_raw_fd(),
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Errors of a connected datagram or seqpacket socket that mean its peer is gone for good.
fn peer_gone(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN | Errno::ECONNREFUSED
    )
}

/// The exit fd reports EOF/hang-up once the caller closed the write end. The fd must be
/// non-blocking.
pub fn exit_fd_closed(fd: &OwnedFd) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // data is not a request to exit; drain it
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return false,
            Err(_) => return true,
        }
    }
}

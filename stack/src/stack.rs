//! The stack: the one object the event loop drives.

use crate::config::Config;
use crate::io::{HostEvent, HostIo};
use crate::stats::Stats;
use smoltcp::time::Instant;

pub struct Stack {
    config: Config,
    stats: Stats,
}

impl Stack {
    pub fn new(config: Config, _now: Instant, _random_seed: u64) -> Stack {
        Stack {
            config,
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn handle_frame(&mut self, _now: Instant, _frame: &[u8], _host: &mut impl HostIo) {}

    pub fn handle_host_event(&mut self, _now: Instant, _event: HostEvent, _host: &mut impl HostIo) {}

    pub fn poll(&mut self, _now: Instant, _host: &mut impl HostIo) {}

    pub fn poll_at(&self) -> Option<Instant> {
        None
    }

    pub fn poll_transmit(&mut self, _write: impl FnMut(&[u8]) -> bool) -> usize {
        0
    }
}

//! What the fuzz targets do with their bytes.
//!
//! Each module is one target: `run(bytes)` feeds them to one public entry point of rslirp
//! (ARCHITECTURE.md rule 9) and asserts only what must hold for any input; `seeds()` gives
//! the inputs that start its corpus. Inputs are read with [`Input`], a plain byte format
//! (an op byte, then fixed-width fields and 2-byte length-prefixed byte strings) rather than
//! `arbitrary`, because the seed corpora must be written by hand with [`Encoder`] and
//! must still mean the same thing after the harness grows.
//!
//! Any panic is a finding. Besides the code under test, the in-memory host
//! ([`rslirp_stack::testing::SimHost`]) panics when the stack breaks the `HostIo` contract
//! (a call on a closed socket, a flow id reused), and [`sim::Sim`] when the stack emits a
//! malformed frame or busy-loops.

pub mod api;
pub mod cli;
pub mod dhcp;
pub mod dns;
pub mod frames;
pub mod offload;
pub mod sim;

use rslirp_stack::{Duration, HostError};
use std::sync::OnceLock;

/// `RSLIRP_FUZZ_TRACE=1` (with the `replay` binary): print every step and every frame, to
/// see what an input does. Read once; costs the fuzzer nothing after that.
pub fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("RSLIRP_FUZZ_TRACE").is_some())
}

/// A target's seed inputs, each with a name for its file (`seed-NAME`).
pub type Seeds = Vec<(&'static str, Vec<u8>)>;

/// A cursor over a fuzz input. Reads past the end yield zeros and empty strings, so every
/// byte string is a valid input and a truncated one means "the same, with defaults".
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// A target's input: its flags byte (the first), and the steps after it.
    pub fn with_flags(data: &'a [u8]) -> (u8, Input<'a>) {
        let mut input = Input::new(data);
        (input.byte(), input)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&first, rest)) => {
                self.data = rest;
                first
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// A byte string: a big-endian u16 length, then that many bytes (fewer at the end).
    pub fn bytes(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16()).min(self.data.len());
        let (bytes, rest) = self.data.split_at(len);
        self.data = rest;
        bytes
    }

    /// One of `choices`, by one byte. `choices` must not be empty.
    pub fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[usize::from(self.byte()) % choices.len()]
    }

    /// An index into a list of `len` things (consumes its byte even when `len` is 0, so
    /// that the rest of the input keeps its meaning).
    pub fn index(&mut self, len: usize) -> Option<usize> {
        let byte = usize::from(self.byte());
        (len > 0).then(|| byte % len)
    }
}

/// A target's steps, each chosen by one byte of the input: its place in [`Step::ALL`].
pub trait Step: Copy + PartialEq + 'static {
    /// Every step, in the order that gives each its byte (append only: the seed corpora
    /// are written with these bytes).
    const ALL: &'static [Self];

    /// The byte that selects this step.
    fn code(self) -> u8 {
        Self::ALL
            .iter()
            .position(|&step| step == self)
            .expect("every step is in ALL") as u8
    }
}

/// Runs an input's steps, each a [`Step`] byte that `step` gets with the input to read the
/// step's fields from, until the input ends or after `max` steps: one step can open a flow,
/// so `max` bounds an input's memory and time (libFuzzer's `-max_len` only bounds its bytes).
pub fn run_steps<S: Step>(input: &mut Input, max: usize, mut step: impl FnMut(&mut Input, S)) {
    for _ in 0..max {
        if input.is_empty() {
            break;
        }
        let next = input.pick(S::ALL);
        step(input, next);
    }
}

/// Writes inputs in [`Input`]'s format: the seed generator's half of it.
#[derive(Default)]
pub struct Encoder {
    pub data: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// An input that starts with its target's flags byte.
    pub fn with_flags(flags: u8) -> Encoder {
        Encoder { data: vec![flags] }
    }

    pub fn byte(&mut self, byte: u8) -> &mut Self {
        self.data.push(byte);
        self
    }

    /// Single-byte fields, in order.
    pub fn fields(&mut self, bytes: &[u8]) -> &mut Self {
        self.data.extend_from_slice(bytes);
        self
    }

    /// A step's byte (its fields follow).
    pub fn step(&mut self, step: impl Step) -> &mut Self {
        self.byte(step.code())
    }

    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.data.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.data.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u16::try_from(bytes.len()).expect("seed byte strings fit a u16 length");
        self.u16(len);
        self.data.extend_from_slice(bytes);
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.data)
    }
}

/// Errors a host socket can report asynchronously or on open. Not WouldBlock: that is
/// never a connect's outcome nor a socket's pending error.
pub const HOST_ERRORS: [HostError; 8] = [
    HostError::ConnectionRefused,
    HostError::ConnectionReset,
    HostError::NetworkUnreachable,
    HostError::HostUnreachable,
    HostError::TimedOut,
    HostError::PermissionDenied,
    HostError::Exhausted,
    HostError::Other(5),
];

/// Clock steps: around every timeout the stack has (TCP retransmits, DNS 10 s, ICMP 60 s,
/// connect 60 s, router advertisements 120 s, UDP 240 s), plus any step in milliseconds.
pub fn clock_step(input: &mut Input) -> Duration {
    const STEPS_MS: [u64; 14] = [
        0, 1, 10, 100, 250, 1_000, 3_000, 10_001, 30_000, 60_001, 120_001, 240_001, 600_000, 0,
    ];
    match input.index(STEPS_MS.len()) {
        Some(13) => Duration::from_millis(u64::from(input.u16())),
        Some(i) => Duration::from_millis(STEPS_MS[i]),
        None => Duration::ZERO,
    }
}

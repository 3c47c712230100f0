//! rslirp's outer ring: everything that touches the operating system. The network logic
//! lives in the pure `rslirp-stack` crate; this crate parses the command line, enters the
//! container's namespaces, opens the tap, runs the mio event loop and owns the host sockets.

pub mod cli;
pub mod netns;

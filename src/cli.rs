//! slirp4netns-compatible command line.

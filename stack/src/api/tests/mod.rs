//! Unit tests of the control protocol: requests in `requests`, reply bytes in `replies`.

mod replies;
mod requests;

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::forward::{Forward, ForwardProto, ForwardSpec, ForwardTable};
use crate::Stats;

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

fn parse(bytes: &[u8]) -> Result<Request, ApiError> {
    parse_request(bytes)
}

/// The reply the socket would write for `bytes` if parsing fails.
fn reply_to(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(request) => panic!("expected an error, got {request:?}"),
        Err(err) => String::from_utf8(error_reply(&err)).expect("replies are UTF-8"),
    }
}

fn error_text(desc: &str) -> String {
    format!(r#"{{"error":{{"desc":"bad request: {desc}"}}}}"#)
}

/// Each of `requests` is refused with the reply `bad request: {desc}`.
fn assert_refused(requests: &[&[u8]], desc: &str) {
    for bytes in requests {
        assert_eq!(
            reply_to(bytes),
            error_text(desc),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

fn add(arguments: &str) -> Result<Request, ApiError> {
    parse(format!(r#"{{"execute":"add_hostfwd","arguments":{arguments}}}"#).as_bytes())
}

fn added(arguments: &str) -> ForwardSpec {
    match add(arguments) {
        Ok(Request::AddHostfwd(request)) => request.resolve(GUEST),
        other => panic!("{arguments}: {other:?}"),
    }
}

fn spec(host: &str, host_port: u16, guest: &str, guest_port: u16) -> ForwardSpec {
    ForwardSpec {
        proto: ForwardProto::Tcp,
        host_addr: host.parse().expect("test address"),
        host_port,
        guest_addr: guest.parse().expect("test address"),
        guest_port,
    }
}

//! The control socket's framing: a Unix stream listener, one request per connection.
//!
//! A request is complete once the bytes received hold one whole JSON value (the client may
//! or may not send a newline or half-close), or at EOF, or when 4096 bytes have arrived
//! (then the stack answers "too large message"). The reply is written without a trailing
//! newline and the connection closed. Everything is non-blocking and served from the event
//! loop; a client that sends nothing is dropped after `CLIENT_TIMEOUT` and never delays
//! anyone else. What a request means is decided by the stack (`Stack::handle_api_request`).

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Requests of this many bytes or more are refused (the reference's buffer size).
pub const MAX_REQUEST_BYTES: usize = 4096;
/// A client must complete its request and take its reply within this time.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// After an accept failed (out of fds, say) it is tried again this soon: the listener is
/// edge-triggered, so the clients waiting in its backlog bring no new event.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Token space of the API: bit 63 (never set in flow tokens) plus bit 62.
const API_BIT: usize = 3 << 62;
pub const LISTENER: Token = Token(API_BIT);

pub fn is_api_token(token: Token) -> bool {
    token.0 & API_BIT == API_BIT
}

struct Client {
    stream: UnixStream,
    request: Vec<u8>,
    reply: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    clients: HashMap<usize, Client>,
    next_client: usize,
    /// Clients served at once (`Limits::max_api_clients`); more are closed at once.
    max_clients: usize,
    /// Connections closed because `max_clients` were already being served.
    pub rejected_clients: u64,
    /// An accept failed: when to try again.
    accept_retry_at: Option<Instant>,
    /// Accepts that failed (EMFILE, ENFILE, ...); the first is logged at info.
    pub accept_failures: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on API socket {path}: {source}")]
pub struct ApiSocketError {
    path: String,
    source: io::Error,
}

impl ApiServer {
    /// Listen at `path`, replacing a stale socket file left by an earlier run.
    pub fn bind(
        path: &Path,
        registry: &Registry,
        max_clients: usize,
    ) -> Result<ApiServer, ApiSocketError> {
        let error = |source| ApiSocketError {
            path: path.display().to_string(),
            source,
        };
        remove_stale_socket(path).map_err(error)?;
        let mut listener = UnixListener::bind(path).map_err(error)?;
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(error)?;
        Ok(ApiServer {
            listener,
            path: path.to_path_buf(),
            clients: HashMap::new(),
            // Key 0 would make the client token equal to LISTENER.
            next_client: 1,
            max_clients,
            rejected_clients: 0,
            accept_retry_at: None,
            accept_failures: 0,
        })
    }

    /// The earliest client deadline (or accept retry), for the loop's timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        let clients = self.clients.values().map(|c| c.deadline).min();
        [clients, self.accept_retry_at].into_iter().flatten().min()
    }

    /// Drop clients that ran out of time, and retry a failed accept when due.
    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        if self.accept_retry_at.is_some_and(|at| at <= now) {
            self.accept_retry_at = None;
            self.accept(registry);
        }
        let expired: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(&k, _)| k)
            .collect();
        for key in expired {
            log::debug!("API client {key} timed out");
            self.close(key, registry);
        }
    }

    /// Readiness of the listener or a client; `handle` turns a request into its reply.
    pub fn handle_event(
        &mut self,
        token: Token,
        registry: &Registry,
        handle: &mut dyn FnMut(&[u8]) -> Vec<u8>,
    ) {
        if token == LISTENER {
            self.accept(registry);
            return;
        }
        let key = token.0 & !API_BIT;
        if self.serve(key, handle).unwrap_or(true) {
            self.close(key, registry);
        }
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(conn) => conn,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // That client gave up while queued; the next may be there.
                Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(err) => {
                    // EMFILE and friends leave the client in the backlog, and no new event
                    // would come for it: try again shortly rather than spin or give up.
                    self.accept_failures += 1;
                    if self.accept_failures == 1 {
                        log::info!(
                            "control socket: accept failed: {err}; retrying every {} ms \
                             (later failures are logged at debug)",
                            ACCEPT_RETRY.as_millis()
                        );
                    } else {
                        log::debug!("control socket: accept failed: {err}");
                    }
                    self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            };
            if self.clients.len() >= self.max_clients {
                self.rejected_clients += 1;
                log::debug!("API client limit reached; closing a new connection");
                continue;
            }
            // Keys stay below 2^62 so they never touch the API bits, and above 0 so the
            // token is never LISTENER's.
            let key = self.next_client;
            self.next_client = (self.next_client + 1) & !API_BIT;
            self.next_client = self.next_client.max(1);
            let token = Token(API_BIT | key);
            if registry
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            self.clients.insert(
                key,
                Client {
                    stream,
                    request: Vec::new(),
                    reply: None,
                    deadline: Instant::now() + CLIENT_TIMEOUT,
                },
            );
        }
    }

    /// Read, answer, write. Ok(true) when the client is done (or broken).
    fn serve(&mut self, key: usize, handle: &mut dyn FnMut(&[u8]) -> Vec<u8>) -> io::Result<bool> {
        let Some(client) = self.clients.get_mut(&key) else {
            return Ok(false);
        };
        if client.reply.is_none() {
            let eof = read_available(client)?;
            let complete = eof || rslirp_stack::api::request_complete(&client.request);
            if !complete {
                return Ok(false);
            }
            let reply = handle(&client.request);
            client.reply = Some((reply, 0));
        }
        let Some((reply, written)) = &mut client.reply else {
            return Ok(false);
        };
        while *written < reply.len() {
            match client.stream.write(&reply[*written..]) {
                Ok(n) => *written += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        // Closing a Unix socket with unread input (say the newline after the JSON) resets
        // the connection, and the client may lose our reply. So: FIN first, then wait
        // (bounded by the client's deadline) until the client closes, discarding input.
        let _ = client.stream.shutdown(std::net::Shutdown::Write);
        let mut sink = [0u8; 512];
        loop {
            match client.stream.read(&mut sink) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(true),
            }
        }
    }

    fn close(&mut self, key: usize, registry: &Registry) {
        if let Some(mut client) = self.clients.remove(&key) {
            let _ = registry.deregister(&mut client.stream);
        }
    }
}

impl Drop for ApiServer {
    /// The socket file goes away with us, so callers never find a dead one.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Read what has arrived (at most the request limit). Ok(true) at EOF.
fn read_available(client: &mut Client) -> io::Result<bool> {
    let mut buf = [0u8; MAX_REQUEST_BYTES];
    loop {
        let room = MAX_REQUEST_BYTES - client.request.len();
        if room == 0 {
            return Ok(false);
        }
        match client.stream.read(&mut buf[..room]) {
            Ok(0) => return Ok(true),
            Ok(n) => client.request.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// Makes room for a new socket at `path`: a socket file there is removed, anything else
/// is an error (a mistyped path must not delete a file).
pub(crate) fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        )),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_tokens_never_collide_with_flow_tokens() {
        let flow = rslirp_stack::FlowId {
            index: u32::MAX - 5,
            generation: 0x7fff_ffff,
        };
        assert!(!is_api_token(Token(flow.to_u64() as usize)));
        assert!(is_api_token(LISTENER));
    }
}

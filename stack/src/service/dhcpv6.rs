//! Stateless DHCPv6 (RFC 8415 §6.1), with `--enable-ipv6`: an Information-Request gets a
//! Reply with the DNS forwarder (option 23, RFC 3646) and the host's search domains
//! (option 24), for clients that ask DHCPv6 (the router advertisement's O flag says they
//! may) instead of reading RDNSS/DNSSL. A pure parser and builder: a client message goes
//! in, at most one reply comes out; the caller does the UDP/IP/Ethernet framing.
//!
//! Addresses are handed out by SLAAC only, so the stateful messages (Solicit, Request,
//! Renew, Rebind, Confirm, Release, Decline) are ignored, counted, as before this server
//! existed: the RA's M flag is clear, so no client should send them, and an Advertise with
//! NoAddrsAvail would only make a client that does retry forever. Relay messages are
//! ignored too (there is no relay on the virtual link). smoltcp has no DHCPv6 wire type.
//!
//! libslirp (slirp4netns) answers Information-Requests too, differently: no Server
//! Identifier (RFC 8415 §16.12 requires one in a Reply), the DNS server only when the
//! Option Request option lists it, no search list. Here the Reply is RFC 8415's, and the
//! options are sent whether asked for or not (the server may, §18.3.6; dnsmasq does).

use smoltcp::wire::{EthernetAddress, Ipv6Address};

/// Clients listen on this port, servers on the next (RFC 8415 §7.2).
pub const CLIENT_PORT: u16 = 546;
pub const SERVER_PORT: u16 = 547;
/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1), where clients send.
pub const ALL_DHCP_SERVERS: Ipv6Address = Ipv6Address::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

pub const MSG_SOLICIT: u8 = 1;
pub const MSG_REPLY: u8 = 7;
pub const MSG_INFORMATION_REQUEST: u8 = 11;

pub const OPT_CLIENT_ID: u16 = 1;
pub const OPT_SERVER_ID: u16 = 2;
pub const OPT_IA_NA: u16 = 3;
pub const OPT_IA_TA: u16 = 4;
pub const OPT_ORO: u16 = 6;
pub const OPT_ELAPSED_TIME: u16 = 8;
pub const OPT_DNS_SERVERS: u16 = 23;
pub const OPT_DOMAIN_LIST: u16 = 24;
pub const OPT_IA_PD: u16 = 25;

/// A DUID is at most 128 octets after its 2-octet type (RFC 8415 §11.1); longer client
/// identifiers are malformed, so an echoed one is bounded.
pub const MAX_DUID_LEN: usize = 130;
const HEADER_LEN: usize = 4;
const OPTION_HEADER_LEN: usize = 4;

/// A client or server message: type, transaction id, and its options (all within the
/// message: `parse` checked every option's length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub msg_type: u8,
    pub transaction_id: [u8; 3],
    options: &'a [u8],
}

impl<'a> Message<'a> {
    /// A message from its UDP payload; Err (with why) when it is shorter than the header
    /// or an option overruns it.
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, &'static str> {
        let (Some(header), Some(options)) = (bytes.get(..HEADER_LEN), bytes.get(HEADER_LEN..))
        else {
            return Err("shorter than a DHCPv6 header");
        };
        let message = Message {
            msg_type: header[0],
            transaction_id: [header[1], header[2], header[3]],
            options,
        };
        let mut rest = options;
        while !rest.is_empty() {
            let Some(head) = rest.get(..OPTION_HEADER_LEN) else {
                return Err("truncated option header");
            };
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let Some(after) = rest.get(OPTION_HEADER_LEN + len..) else {
                return Err("option overruns the message");
            };
            rest = after;
        }
        Ok(message)
    }

    /// The options, in order, as (code, data).
    pub fn options(&self) -> impl Iterator<Item = (u16, &'a [u8])> {
        let mut rest = self.options;
        core::iter::from_fn(move || {
            let head = rest.get(..OPTION_HEADER_LEN)?;
            let code = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let data = rest.get(OPTION_HEADER_LEN..OPTION_HEADER_LEN + len)?;
            rest = &rest[OPTION_HEADER_LEN + len..];
            Some((code, data))
        })
    }

    /// The first option with this code.
    pub fn option(&self, code: u16) -> Option<&'a [u8]> {
        self.options()
            .find(|&(c, _)| c == code)
            .map(|(_, data)| data)
    }
}

/// A message in wire form. An option's data beyond 65,535 octets (more than its length
/// field can say) is cut; the callers' are bounded far below that.
pub fn build(msg_type: u8, transaction_id: [u8; 3], options: &[(u16, &[u8])]) -> Vec<u8> {
    let len = HEADER_LEN
        + options
            .iter()
            .map(|(_, data)| OPTION_HEADER_LEN + data.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.push(msg_type);
    out.extend_from_slice(&transaction_id);
    for (code, data) in options {
        let data = &data[..data.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// What the server dropped, for the stack's `rx_dropped` / `rx_errors` and debug logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dhcpv6Counters {
    /// Not a well-formed message: truncated, an option overrunning it, a bad client id.
    pub malformed: u64,
    /// Well-formed but not answered: stateful or relay or server messages, an
    /// Information-Request for another server or asking for addresses.
    pub ignored: u64,
    pub replies: u64,
}

/// Answers Information-Requests as the gateway, whose DUID-LL (RFC 8415 §11.4) is made
/// of the gateway's MAC.
#[derive(Debug, Clone)]
pub struct Dhcpv6Server {
    duid: [u8; 10],
    counters: Dhcpv6Counters,
}

impl Dhcpv6Server {
    pub fn new(mac: EthernetAddress) -> Dhcpv6Server {
        let mut duid = [0u8; 10];
        // DUID-LL (type 3), hardware type 1 (Ethernet), the MAC.
        duid[..4].copy_from_slice(&[0, 3, 0, 1]);
        duid[4..].copy_from_slice(mac.as_bytes());
        Dhcpv6Server {
            duid,
            counters: Dhcpv6Counters::default(),
        }
    }

    /// The server's DUID, the data of its Server Identifier option.
    pub fn duid(&self) -> &[u8] {
        &self.duid
    }

    pub fn counters(&self) -> Dhcpv6Counters {
        self.counters
    }

    /// A UDP payload a client sent to port 547. `dns`: the DNS forwarder's address (None
    /// with --disable-dns); `search`: the search domains (already bounded). Returns the
    /// Reply's UDP payload, or None (ignored or malformed, counted; never panics).
    pub fn handle(
        &mut self,
        payload: &[u8],
        dns: Option<Ipv6Address>,
        search: &[String],
    ) -> Option<Vec<u8>> {
        let message = match Message::parse(payload) {
            Ok(message) => message,
            Err(why) => return self.malformed(why),
        };
        if message.msg_type != MSG_INFORMATION_REQUEST {
            return self.ignore("a message other than Information-Request");
        }
        let client_id = message.option(OPT_CLIENT_ID);
        if client_id.is_some_and(|id| id.len() < 2 || id.len() > MAX_DUID_LEN) {
            return self.malformed("client identifier not a DUID");
        }
        // RFC 8415 §16.12: discard one naming another server or carrying an IA option.
        if message
            .option(OPT_SERVER_ID)
            .is_some_and(|id| id != self.duid)
        {
            return self.ignore("Information-Request for another server");
        }
        if message
            .options()
            .any(|(code, _)| matches!(code, OPT_IA_NA | OPT_IA_TA | OPT_IA_PD))
        {
            return self.ignore("Information-Request with an IA option");
        }
        let dns = dns.map(|addr| addr.octets());
        let domains = crate::service::search::encode_uncompressed(search);
        let mut options: Vec<(u16, &[u8])> = vec![(OPT_SERVER_ID, &self.duid)];
        if let Some(id) = client_id {
            options.push((OPT_CLIENT_ID, id));
        }
        // Sent whether or not the client's Option Request option lists them (RFC 8415
        // §18.3.6 lets the server choose; dnsmasq does the same): they are what we have.
        if let Some(dns) = &dns {
            options.push((OPT_DNS_SERVERS, dns));
        }
        if !domains.is_empty() {
            options.push((OPT_DOMAIN_LIST, &domains));
        }
        self.counters.replies += 1;
        Some(build(MSG_REPLY, message.transaction_id, &options))
    }

    fn malformed(&mut self, why: &str) -> Option<Vec<u8>> {
        self.counters.malformed += 1;
        log::debug!("dhcpv6: dropped malformed message: {why}");
        None
    }

    fn ignore(&mut self, why: &str) -> Option<Vec<u8>> {
        self.counters.ignored += 1;
        log::debug!("dhcpv6: ignored {why}");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);
    const DNS: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
    const CLIENT_DUID: &[u8] = &[0, 3, 0, 1, 2, 0, 0, 0, 0, 1];

    fn search() -> Vec<String> {
        vec!["example.com".to_string(), "corp.example.net".to_string()]
    }

    fn info_request(extra: &[(u16, &[u8])]) -> Vec<u8> {
        let mut options: Vec<(u16, &[u8])> = vec![
            (OPT_CLIENT_ID, CLIENT_DUID),
            (OPT_ORO, &[0, 23, 0, 24]),
            (OPT_ELAPSED_TIME, &[0, 0]),
        ];
        options.extend_from_slice(extra);
        build(MSG_INFORMATION_REQUEST, [0xab, 0xcd, 0xef], &options)
    }

    #[test]
    fn information_request_gets_dns_and_search_list() {
        let mut server = Dhcpv6Server::new(MAC);
        let reply = server
            .handle(&info_request(&[]), Some(DNS), &search())
            .expect("a Reply");
        let message = Message::parse(&reply).unwrap();
        assert_eq!(message.msg_type, MSG_REPLY);
        assert_eq!(message.transaction_id, [0xab, 0xcd, 0xef]);
        assert_eq!(
            message.option(OPT_SERVER_ID),
            Some(&[0, 3, 0, 1, 0x52, 0x55, 10, 0, 2, 2][..])
        );
        assert_eq!(message.option(OPT_CLIENT_ID), Some(CLIENT_DUID));
        assert_eq!(message.option(OPT_DNS_SERVERS), Some(&DNS.octets()[..]));
        assert_eq!(
            message.option(OPT_DOMAIN_LIST),
            Some(&b"\x07example\x03com\x00\x04corp\x07example\x03net\x00"[..])
        );
        // Exactly these four options, in this order.
        let codes: Vec<u16> = message.options().map(|(code, _)| code).collect();
        assert_eq!(
            codes,
            [
                OPT_SERVER_ID,
                OPT_CLIENT_ID,
                OPT_DNS_SERVERS,
                OPT_DOMAIN_LIST
            ]
        );
        assert_eq!(server.counters().replies, 1);
    }

    #[test]
    fn without_dns_or_search_the_reply_carries_neither() {
        let mut server = Dhcpv6Server::new(MAC);
        let reply = server.handle(&info_request(&[]), None, &[]).unwrap();
        let message = Message::parse(&reply).unwrap();
        let codes: Vec<u16> = message.options().map(|(code, _)| code).collect();
        assert_eq!(codes, [OPT_SERVER_ID, OPT_CLIENT_ID]);
        // No client id asked, none echoed.
        let bare = build(MSG_INFORMATION_REQUEST, [1, 2, 3], &[]);
        let reply = server.handle(&bare, Some(DNS), &[]).unwrap();
        let codes: Vec<u16> = Message::parse(&reply)
            .unwrap()
            .options()
            .map(|(code, _)| code)
            .collect();
        assert_eq!(codes, [OPT_SERVER_ID, OPT_DNS_SERVERS]);
    }

    #[test]
    fn stateful_and_foreign_messages_are_ignored() {
        let mut server = Dhcpv6Server::new(MAC);
        let solicit = build(MSG_SOLICIT, [1, 2, 3], &[(OPT_CLIENT_ID, CLIENT_DUID)]);
        assert!(server.handle(&solicit, Some(DNS), &search()).is_none());
        let other_server = info_request(&[(OPT_SERVER_ID, &[0, 3, 0, 1, 9, 9, 9, 9, 9, 9])]);
        assert!(server.handle(&other_server, Some(DNS), &search()).is_none());
        let with_ia = info_request(&[(OPT_IA_NA, &[0; 12])]);
        assert!(server.handle(&with_ia, Some(DNS), &search()).is_none());
        let reply = build(MSG_REPLY, [1, 2, 3], &[]);
        assert!(server.handle(&reply, Some(DNS), &search()).is_none());
        assert_eq!(server.counters().ignored, 4);
        // Our own server id is fine.
        let duid = server.duid().to_vec();
        let ours = info_request(&[(OPT_SERVER_ID, &duid)]);
        assert!(server.handle(&ours, Some(DNS), &search()).is_some());
    }

    #[test]
    fn malformed_messages_are_dropped_and_never_panic() {
        let mut server = Dhcpv6Server::new(MAC);
        let good = info_request(&[]);
        for len in 0..good.len() {
            // Every prefix but those ending on an option boundary is malformed; those are
            // answered (options are optional).
            let _ = server.handle(&good[..len], Some(DNS), &search());
        }
        assert!(server.counters().malformed >= 1);
        let before = server.counters().malformed;
        assert!(server.handle(&[11, 0, 0], Some(DNS), &search()).is_none());
        // An option claiming more than is there.
        assert!(server
            .handle(&[11, 0, 0, 1, 0, 1, 0, 9, 1], Some(DNS), &search())
            .is_none());
        // A client id too long to be a DUID, and one too short.
        let long = vec![0u8; MAX_DUID_LEN + 1];
        let bad_id = build(MSG_INFORMATION_REQUEST, [0; 3], &[(OPT_CLIENT_ID, &long)]);
        assert!(server.handle(&bad_id, Some(DNS), &search()).is_none());
        let short_id = build(MSG_INFORMATION_REQUEST, [0; 3], &[(OPT_CLIENT_ID, &[1])]);
        assert!(server.handle(&short_id, Some(DNS), &search()).is_none());
        assert_eq!(server.counters().malformed, before + 4);

        let mut noise = crate::service::test_noise(0x9e37_79b9_u32);
        for round in 0..2_000 {
            let len = usize::from(noise());
            let mut bytes: Vec<u8> = (0..len).map(|_| noise()).collect();
            if round % 2 == 0 && !bytes.is_empty() {
                bytes[0] = MSG_INFORMATION_REQUEST;
            }
            if let Some(reply) = server.handle(&bytes, Some(DNS), &search()) {
                assert_eq!(Message::parse(&reply).unwrap().msg_type, MSG_REPLY);
            }
        }
    }
}

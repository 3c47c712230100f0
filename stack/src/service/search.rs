//! DNS search domains (the host resolv.conf's `search` or `domain` line) and their wire
//! encodings: DHCPv4 option 119 (RFC 3397: RFC 1035 names with compression pointers, split
//! over several options per RFC 3396), the router advertisement's DNSSL option (RFC 8106,
//! names uncompressed) and DHCPv6's domain list option (RFC 8415 §10, uncompressed).
//!
//! The list the stack keeps is bounded by `Limits::max_search_domains` and
//! `Limits::max_search_len`, glibc's historical bounds (MAXDNSRCH = 6 domains, a
//! 256-character search line): such a list (at most 262 octets in wire form) fits a router
//! advertisement and a DHCPv6 reply; the DHCPv4 server leaves out trailing domains that
//! would not fit the client's message size.

use std::collections::HashMap;

/// The longest domain name, in presentation form without the final dot (RFC 1035 §2.3.4:
/// 255 octets in wire form).
pub const MAX_NAME_LEN: usize = 253;
/// The longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// DHCPv4 option 119, Domain Search (RFC 3397).
pub const DHCP_OPT_DOMAIN_SEARCH: u8 = 119;
/// Router advertisement option 31, DNS Search List (RFC 8106 §5.2).
pub const NDP_OPT_DNSSL: u8 = 31;

/// `name` as a search domain: one final dot dropped, then 1..=253 characters of printable
/// ASCII in labels of 1..=63. None for anything else (an empty label, the root "." alone,
/// spaces, control or non-ASCII bytes), which resolv.conf may hold but no encoding carries.
pub fn valid_domain(name: &str) -> Option<&str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_graphic())
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= MAX_LABEL_LEN);
    ok.then_some(name)
}

/// The search list as the stack keeps it: invalid names and repeats (ignoring case, as
/// DNS compares names) left out, then at most `max_domains` names whose lengths, with one
/// separator each, add up to at most `max_len` (a longer list is cut after the last name
/// that fits, as glibc cut its search line). Returns the list and whether it was cut.
pub fn bounded(names: &[String], max_domains: usize, max_len: usize) -> (Vec<String>, bool) {
    let mut kept: Vec<String> = Vec::new();
    let mut len = 0;
    let mut cut = false;
    for name in names {
        let Some(name) = valid_domain(name) else {
            log::debug!("search domain {name:?} is not a domain name; left out");
            continue;
        };
        if kept.iter().any(|k| k.eq_ignore_ascii_case(name)) {
            continue;
        }
        if kept.len() == max_domains || len + name.len() + 1 > max_len {
            cut = true;
            break;
        }
        len += name.len() + 1;
        kept.push(name.to_string());
    }
    (kept, cut)
}

/// Labels in RFC 1035 wire form (each length-prefixed), from a name `valid_domain` accepts.
fn push_labels(out: &mut Vec<u8>, labels: &[&str]) {
    for label in labels {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
}

/// The names in RFC 1035 wire form, one after the other, uncompressed (DNSSL, DHCPv6).
pub fn encode_uncompressed(names: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for name in names {
        let labels: Vec<&str> = name.split('.').collect();
        push_labels(&mut out, &labels);
        out.push(0);
    }
    out
}

/// The names in RFC 1035 wire form with compression (RFC 3397 §2): a name whose ending was
/// already written ends with a pointer to it. Offsets count from the start of the data,
/// which is what RFC 3397 says they are relative to (the concatenated option data).
pub fn encode_compressed(names: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    // Suffixes written so far (dot-joined) and where they start. Matched as spelled, case
    // included: DNS compares names ignoring case, but a pointer to another spelling would
    // hand the guest that spelling instead of the host's.
    let mut written: HashMap<String, usize> = HashMap::new();
    for name in names {
        let labels: Vec<&str> = name.split('.').collect();
        let suffix = |i: usize| labels[i..].join(".");
        let shared = (0..labels.len()).find_map(|i| written.get(&suffix(i)).map(|&at| (i, at)));
        let own = shared.map_or(labels.len(), |(i, _)| i);
        for i in 0..own {
            // A pointer has 14 bits of offset; beyond that a suffix is simply not shared.
            if out.len() < 0x4000 {
                written.insert(suffix(i), out.len());
            }
            push_labels(&mut out, &labels[i..=i]);
        }
        match shared {
            Some((_, at)) => out.extend_from_slice(&(0xc000 | at as u16).to_be_bytes()),
            None => out.push(0),
        }
    }
    out
}

/// DHCPv4 options carrying `data` under `kind`, split into options of at most 255 octets
/// (RFC 3396: the client concatenates options of the same code in order).
pub fn dhcp_option_chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.chunks(255)
}

/// Bytes the options carrying `data` take in a DHCPv4 message (code and length each).
pub fn dhcp_options_len(data: &[u8]) -> usize {
    data.len() + 2 * data.len().div_ceil(255)
}

/// The DNSSL option (RFC 8106 §5.2): type 31, length in units of 8 octets, 2 reserved
/// octets, the lifetime, the names uncompressed, zero-padded to a multiple of 8 octets.
/// Empty for an empty list (no option is sent then).
pub fn dnssl_option(names: &[String], lifetime_secs: u32) -> Vec<u8> {
    if names.is_empty() {
        return Vec::new();
    }
    let names = encode_uncompressed(names);
    let len = (8 + names.len()).div_ceil(8) * 8;
    let mut option = Vec::with_capacity(len);
    option.extend_from_slice(&[NDP_OPT_DNSSL, (len / 8) as u8, 0, 0]);
    option.extend_from_slice(&lifetime_secs.to_be_bytes());
    option.extend_from_slice(&names);
    option.resize(len, 0);
    option
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rfc3397_example_encodes_to_the_rfcs_bytes() {
        // RFC 3397 §2: "eng.apple.com." and "marketing.apple.com.".
        let mut expected = vec![3];
        expected.extend_from_slice(b"eng");
        expected.push(5);
        expected.extend_from_slice(b"apple");
        expected.push(3);
        expected.extend_from_slice(b"com");
        expected.push(0);
        expected.push(9);
        expected.extend_from_slice(b"marketing");
        expected.extend_from_slice(&[0xc0, 0x04]);
        // The final dots go as resolv.conf's names pass through `bounded`.
        let (list, cut) = bounded(&names(&["eng.apple.com.", "marketing.apple.com."]), 6, 256);
        assert!(!cut);
        assert_eq!(list, names(&["eng.apple.com", "marketing.apple.com"]));
        assert_eq!(encode_compressed(&list), expected);
        assert_eq!(expected.len(), 27);
    }

    #[test]
    fn compression_points_at_the_longest_shared_ending() {
        let list = names(&["a.example.org", "b.a.example.org", "example.org", "x.net"]);
        let data = encode_compressed(&list);
        let mut expected = vec![1, b'a', 7];
        expected.extend_from_slice(b"example");
        expected.extend_from_slice(&[3, b'o', b'r', b'g', 0]);
        // b + pointer to "a.example.org" at 0.
        expected.extend_from_slice(&[1, b'b', 0xc0, 0x00]);
        // "example.org" is the suffix at 2.
        expected.extend_from_slice(&[0xc0, 0x02]);
        expected.extend_from_slice(&[1, b'x', 3, b'n', b'e', b't', 0]);
        assert_eq!(data, expected);
        // Uncompressed: every name in full.
        let plain = encode_uncompressed(&list);
        assert_eq!(plain.len(), 15 + 17 + 13 + 7);
    }

    /// Found by the `dhcp` fuzz target: "A" after "example.a" came out as a pointer to
    /// "a", so the guest read "a".
    #[test]
    fn compression_keeps_each_names_spelling() {
        let list = names(&["example.a", "A", "example"]);
        let data = encode_compressed(&list);
        let mut expected = vec![7];
        expected.extend_from_slice(b"example");
        expected.extend_from_slice(&[1, b'a', 0]);
        // "A" in full: the "a" at 8 is another spelling.
        expected.extend_from_slice(&[1, b'A', 0]);
        expected.extend_from_slice(&[7]);
        expected.extend_from_slice(b"example");
        expected.push(0);
        assert_eq!(data, expected);
    }

    #[test]
    fn long_lists_split_into_options_of_255() {
        let list: Vec<String> = (0..6).map(|i| format!("{}.d{i}", "x".repeat(60))).collect();
        let data = encode_compressed(&list);
        assert_eq!(data.len(), 6 * (1 + 60 + 1 + 2 + 1));
        let chunks: Vec<&[u8]> = dhcp_option_chunks(&data).collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].len(), 255);
        assert_eq!(chunks[1].len(), data.len() - 255);
        assert_eq!(chunks.concat(), data);
        assert_eq!(dhcp_options_len(&data), data.len() + 4);
        assert_eq!(dhcp_options_len(&[0; 255]), 257);
        assert_eq!(dhcp_options_len(&[0; 256]), 260);
    }

    #[test]
    fn dnssl_is_padded_to_eight_octets() {
        let option = dnssl_option(&names(&["example.com"]), 360);
        // 8 + 13 octets of name, padded to 24.
        assert_eq!(option.len(), 24);
        assert_eq!(&option[..8], &[31, 3, 0, 0, 0, 0, 1, 104]);
        assert_eq!(&option[8..21], b"\x07example\x03com\x00");
        assert_eq!(&option[21..], &[0, 0, 0]);
        // Exactly 8 octets of names: no padding.
        let option = dnssl_option(&names(&["abc.de"]), 1);
        assert_eq!(option.len(), 16);
        assert_eq!(option[1], 2);
        assert!(dnssl_option(&[], 360).is_empty());
    }

    #[test]
    fn bounded_keeps_valid_unique_names_within_the_limits() {
        let list = names(&[
            "Example.com.",
            "example.COM",
            "bad..name",
            "",
            ".",
            "sp ace",
            &"l".repeat(64),
            "ok.org",
        ]);
        let (kept, cut) = bounded(&list, 6, 256);
        assert_eq!(kept, names(&["Example.com", "ok.org"]));
        assert!(!cut);

        let seven = names(&["a", "b", "c", "d", "e", "f", "g"]);
        let (kept, cut) = bounded(&seven, 6, 256);
        assert_eq!(kept.len(), 6);
        assert!(cut);

        let long: Vec<String> = (0..4)
            .map(|i| format!("{}.{}{i}", "n".repeat(49), "m".repeat(49)))
            .collect();
        let (kept, cut) = bounded(&long, 6, 256);
        // 2 × 101 = 202 fits, a third would make 303.
        assert_eq!(kept.len(), 2);
        assert!(cut);
        assert!(valid_domain(&format!("{}.{}", "a".repeat(63), "b".repeat(63))).is_some());
        assert!(
            valid_domain(&vec!["a".repeat(63); 4].join(".")).is_none(),
            "255 > 253"
        );
    }
}

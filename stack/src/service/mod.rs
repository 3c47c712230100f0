//! Services the virtual network itself offers to the guest (as opposed to NAT to the host).

pub mod dhcp;
pub mod dhcpv6;
pub mod dns;
pub mod search;

/// Pseudo-random bytes for the servers' never-panics tests: xorshift32 from `seed`, the same
/// noise on every run.
#[cfg(test)]
fn test_noise(seed: u32) -> impl FnMut() -> u8 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as u8
    }
}

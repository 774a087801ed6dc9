//! A stable 64-bit hash for consistent hashing.
//!
//! Every replica must send a key to the same endpoint, so the hash has to be
//! the same in every process, on every platform, in every release: std's
//! `DefaultHasher` / `RandomState` are seeded per process and unspecified,
//! so they are unusable here.
//!
//! We use FNV-1a 64 (Fowler, Noll, Vo; <http://www.isthe.com/chongo/tech/comp/fnv/>)
//! over the key bytes, then MurmurHash3's `fmix64` finalizer (Austin
//! Appleby) to spread FNV's weak low bits over the whole word. `fmix64` is a
//! bijection, so it adds no collisions. Golden values in the tests pin the
//! output: changing it changes where every client lands.

use std::net::IpAddr;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME))
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
pub fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The hash of a consistent-hashing key (header value, cookie, query
/// parameter…). Stable across processes and platforms.
pub fn hash_key(bytes: &[u8]) -> u64 {
    fmix64(fnv1a64(bytes))
}

/// The hash of a client address for `IPHash`. An IPv4-mapped IPv6 address
/// hashes like the IPv4 address it carries, so a dual-stack listener does not
/// split one client in two.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_key(&v4.octets()),
        IpAddr::V6(v6) => hash_key(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        let cases: [(&[u8], u64); 3] =
            [(b"", 0xcbf2_9ce4_8422_2325), (b"a", 0xaf63_dc4c_8601_ec8c), (b"foobar", 0x8594_4171_f739_67e8)];
        for (input, expected) in cases {
            assert_eq!(fnv1a64(input), expected, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn hash_key_is_pinned() {
        // Golden values: if these change, every replica of a new release maps
        // clients differently from the old one.
        let cases: [(&[u8], u64); 3] = [
            (b"", 0xefd0_1f60_ba99_2926),
            (b"user-42", 0xa395_32c7_ab05_1e8d),
            (b"10.0.0.1:8080", 0xe8c7_2115_6ed5_2b14),
        ];
        for (input, expected) in cases {
            assert_eq!(hash_key(input), expected, "{:?}: got {:#x}", String::from_utf8_lossy(input), hash_key(input));
        }
    }

    #[test]
    fn fmix64_is_a_bijection_on_a_sample() {
        let mut seen: Vec<u64> = (0..10_000u64).map(fmix64).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10_000);
    }

    #[test]
    fn mapped_ipv4_hashes_like_ipv4() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(hash_ip(v4), hash_ip(mapped));
        assert_ne!(hash_ip(v4), hash_ip(other));
    }
}

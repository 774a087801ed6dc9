//! The client's address: the connection's peer, unless that peer is a
//! trusted proxy (`--trusted-proxies`), in which case the rightmost
//! untrusted address of `X-Forwarded-For` (what the last trusted hop saw).
//! Used for `X-Real-IP`, `IPHash` and source-IP hashing.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

pub(super) fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

pub(super) fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    client_ip_of(headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()), peer, trusted)
}

/// [`client_ip`] from the `X-Forwarded-For` values themselves (those that
/// are visible ASCII, as `HeaderValue::to_str` takes them), in order.
pub(super) fn client_ip_of<'a>(values: impl Iterator<Item = &'a str>, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let hops: Vec<IpAddr> = values.flat_map(|v| v.split(',')).filter_map(|hop| hop.trim().parse().ok()).collect();
    hops.iter().rev().find(|ip| !is_trusted(**ip, trusted)).or(hops.first()).copied().unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().unwrap());
        h
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted = nets(&["10.0.0.0/8"]);
        // No trusted proxies configured: the peer, whatever the header says.
        assert_eq!(client_ip(&xff("6.6.6.6"), peer, &[]), peer);
        // Untrusted peer: the header is ignored.
        assert_eq!(
            client_ip(&xff("6.6.6.6"), "192.0.2.1".parse().unwrap(), &trusted),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        // Trusted peer: rightmost untrusted hop; a spoofed leftmost entry is skipped.
        assert_eq!(
            client_ip(&xff("1.1.1.1, 203.0.113.9, 10.1.1.1"), peer, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // All hops trusted: the leftmost; no header: the peer.
        assert_eq!(client_ip(&xff("10.9.9.9, 10.1.1.1"), peer, &trusted), "10.9.9.9".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(&HeaderMap::new(), peer, &trusted), peer);
    }
}

//! The hash key of a request for `IPHash` and `ConsistentHash`.

use http::{Request, header};

use std::net::IpAddr;

use crate::balance::{Algorithm, hash_ip, hash_key};
use crate::snapshot::{BalanceConfig, HashOn};

/// `None` for the non-hashing algorithms, or when the request lacks the
/// attribute (the selector then falls back to weighted rotation).
pub(super) fn request_hash<B>(req: &Request<B>, client_ip: IpAddr, balance: &BalanceConfig) -> Option<u64> {
    match (balance.algorithm, &balance.hash_on) {
        (Algorithm::IpHash, _) | (Algorithm::ConsistentHash, HashOn::SourceIp) => Some(hash_ip(client_ip)),
        (Algorithm::ConsistentHash, HashOn::Header(name)) => req.headers().get(&**name).map(|v| hash_key(v.as_bytes())),
        (Algorithm::ConsistentHash, HashOn::Cookie(name)) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k == &&**name)
            .map(|(_, v)| hash_key(v.as_bytes())),
        (Algorithm::ConsistentHash, HashOn::QueryParameter(name)) => req
            .uri()
            .query()?
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k == &&**name)
            .map(|(_, v)| hash_key(v.as_bytes())),
        _ => None,
    }
}

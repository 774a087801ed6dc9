//! Maglev consistent hashing, for `IPHash` and `ConsistentHash`.
//!
//! Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016, §3.4. Each endpoint derives a permutation of the
//! table slots from its identity (`offset`, `skip` from two hashes of its
//! `ip:port`); endpoints then take turns claiming their next preferred free
//! slot until the table is full. A key maps to `table[hash(key) % size]`:
//! one array read per request.
//!
//! Why Maglev: every endpoint owns almost exactly `size / n` slots (a ring
//! needs hundreds of virtual nodes for that), the lookup is O(1), and
//! changing the endpoint set moves few keys besides those that must move
//! (the tests measure it).
//!
//! Determinism across replicas: the table depends only on the *set* of
//! identities and weights, not on their order or on the process — endpoints
//! are processed sorted by identity, and the hash is the stable one from
//! [`super::hash`]. The table size is a prime (default [`DEFAULT_TABLE_SIZE`]),
//! fixed independently of the endpoint count so that scaling does not
//! reshuffle the table.
//!
//! Weights: on each round every endpoint adds its weight to a credit and
//! claims one slot per `max_weight` of credit, so the heaviest endpoint
//! claims one slot per round and lighter ones proportionally fewer, spread
//! over the rounds (exact integer arithmetic). Weight 0 claims nothing.
//!
//! Unavailable endpoints: a key whose slot belongs to one is rehashed a few
//! times (`fmix64(key ^ attempt * φ)`), deterministically, so those keys
//! spread over the survivors in proportion to their slots while keys on
//! available endpoints do not move at all; past that it takes the
//! `key % survivors`-th survivor.
//!
//! Limits: entries are `u16`, so at most 65 536 endpoints are placed (the
//! rest get no keys); the default table costs 128 KiB per backend.

use std::fmt;

use super::availability::{Availability, MAX_PROBES};
use super::hash::{fmix64, fnv1a64};

/// The default table size: a prime far above any realistic endpoint count
/// (Maglev recommends size > 100 × endpoints for even shares).
pub const DEFAULT_TABLE_SIZE: usize = 65_537;

/// At most this many endpoints fit a `u16` entry.
const MAX_ENDPOINTS: usize = 1 << 16;

/// Salt for the second (skip) hash of an endpoint identity.
const SKIP_SALT: u64 = 0x5bd1_e995_5bd1_e995;

/// Multiplier for the rehash probes of an unavailable slot (2^64 / φ).
const PROBE_STEP: u64 = 0x9e37_79b9_7f4a_7c15;

pub struct Maglev {
    /// Slot → endpoint index.
    table: Box<[u16]>,
    weights: Box<[u32]>,
}

impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maglev")
            .field("endpoints", &self.weights.len())
            .field("table_size", &self.table.len())
            .finish_non_exhaustive()
    }
}

impl Maglev {
    /// Builds the table for endpoints given as `(identity, weight)`, where
    /// identity is the endpoint's `ip:port` (`SocketAddr`'s `Display`).
    /// Endpoint `i` of the slice is index `i` in lookups.
    pub fn new<K: AsRef<[u8]>>(endpoints: &[(K, u32)]) -> Self {
        Self::with_table_size(endpoints, DEFAULT_TABLE_SIZE)
    }

    /// As [`Maglev::new`] with another table size, rounded up to a prime.
    pub fn with_table_size<K: AsRef<[u8]>>(endpoints: &[(K, u32)], size: usize) -> Self {
        let size = next_prime(size.max(2));
        let weights: Box<[u32]> = endpoints.iter().map(|(_, w)| *w).collect();
        Self { table: populate(endpoints, size), weights }
    }

    /// Number of endpoints the table was built for.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    pub fn table_size(&self) -> usize {
        self.table.len()
    }

    /// The endpoint that owns `key` (a [`super::hash`] output), skipping
    /// unavailable endpoints deterministically.
    pub fn pick(&self, key: u64, available: Availability<'_>) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let owner = self.owner(key);
        if available.is_available(owner) {
            return Some(owner);
        }
        for attempt in 1..=MAX_PROBES as u64 {
            let owner = self.owner(fmix64(key ^ attempt.wrapping_mul(PROBE_STEP)));
            if available.is_available(owner) {
                return Some(owner);
            }
        }
        let eligible = |i: &usize| self.weights[*i] > 0 && available.is_available(*i);
        let survivors = (0..self.weights.len()).filter(eligible).count();
        if survivors == 0 {
            return None;
        }
        (0..self.weights.len()).filter(eligible).nth((key % survivors as u64) as usize)
    }

    fn owner(&self, key: u64) -> usize {
        usize::from(self.table[(key % self.table.len() as u64) as usize])
    }

    #[cfg(test)]
    pub(crate) fn table(&self) -> &[u16] {
        &self.table
    }
}

/// Maglev's population loop (paper, Pseudocode 1), with weighted turns.
fn populate<K: AsRef<[u8]>>(endpoints: &[(K, u32)], size: usize) -> Box<[u16]> {
    const EMPTY: u32 = u32::MAX;
    let placed = endpoints.len().min(MAX_ENDPOINTS);
    let mut order: Vec<usize> = (0..placed).filter(|&i| endpoints[i].1 > 0).collect();
    if order.is_empty() {
        return Box::default();
    }
    order.sort_by(|&a, &b| endpoints[a].0.as_ref().cmp(endpoints[b].0.as_ref()).then(a.cmp(&b)));

    let m = size as u64;
    struct Turn {
        index: usize,
        weight: u64,
        credit: u64,
        next_slot: u64,
        skip: u64,
    }
    let mut turns: Vec<Turn> = order
        .iter()
        .map(|&index| {
            let id = fnv1a64(endpoints[index].0.as_ref());
            Turn {
                index,
                weight: u64::from(endpoints[index].1),
                credit: 0,
                next_slot: fmix64(id) % m,
                skip: fmix64(id ^ SKIP_SALT) % (m - 1) + 1,
            }
        })
        .collect();
    let max_weight = turns.iter().map(|t| t.weight).max().unwrap_or(1);

    let mut table = vec![EMPTY; size];
    let mut filled = 0;
    'rounds: loop {
        for turn in &mut turns {
            turn.credit += turn.weight;
            if turn.credit < max_weight {
                continue;
            }
            turn.credit -= max_weight;
            // `skip` is in 1..m and m is prime, so this walk visits every
            // slot: a free one turns up while the table is not full.
            while table[turn.next_slot as usize] != EMPTY {
                turn.next_slot = (turn.next_slot + turn.skip) % m;
            }
            table[turn.next_slot as usize] = turn.index as u32;
            filled += 1;
            if filled == size {
                break 'rounds;
            }
        }
    }
    table.into_iter().map(|i| i as u16).collect()
}

fn next_prime(mut n: usize) -> usize {
    while !is_prime(n) {
        n += 1;
    }
    n
}

fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests;

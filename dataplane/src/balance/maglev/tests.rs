use super::*;
use crate::balance::EndpointMask;
use crate::balance::hash::hash_key;

const KEYS: usize = 10_000;

fn mk_ids(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("10.0.0.{i}:8080")).collect()
}

fn mk_maglev(ids: &[String], weights: &[u32]) -> Maglev {
    let endpoints: Vec<(&str, u32)> = ids.iter().zip(weights).map(|(id, &w)| (id.as_str(), w)).collect();
    Maglev::new(&endpoints)
}

fn keys() -> impl Iterator<Item = u64> {
    (0..KEYS).map(|i| hash_key(format!("client-{i}").as_bytes()))
}

/// Each key's owner, by identity.
fn owners<'a>(maglev: &Maglev, ids: &'a [String]) -> Vec<&'a str> {
    keys().map(|k| ids[maglev.pick(k, Availability::All).unwrap()].as_str()).collect()
}

#[test]
fn every_key_maps_to_one_endpoint_whatever_the_input_order() {
    let ids = mk_ids(4);
    let maglev = mk_maglev(&ids, &[1; 4]);
    let reversed: Vec<String> = ids.iter().rev().cloned().collect();
    let maglev_reversed = mk_maglev(&reversed, &[1; 4]);
    let first = owners(&maglev, &ids);
    assert_eq!(first, owners(&maglev, &ids), "lookups are stable");
    assert_eq!(first, owners(&maglev_reversed, &reversed), "order does not matter");
}

#[test]
fn table_is_pinned() {
    // Golden value: replicas running different releases must agree, so a
    // change here is a breaking change for IPHash/ConsistentHash users.
    let maglev = mk_maglev(&mk_ids(4), &[1; 4]);
    let bytes: Vec<u8> = maglev.table().iter().flat_map(|e| e.to_le_bytes()).collect();
    let digest = hash_key(&bytes);
    assert_eq!(digest, 0xd680_3085_5379_84f0, "table digest {digest:#x}");
}

#[test]
fn equal_weights_share_slots_and_keys_evenly() {
    for n in [1, 2, 3, 4, 7, 10] {
        let ids = mk_ids(n);
        let maglev = mk_maglev(&ids, &vec![1; n]);
        let mut slots = vec![0usize; n];
        for &e in maglev.table() {
            slots[usize::from(e)] += 1;
        }
        let (min, max) = (slots.iter().min().unwrap(), slots.iter().max().unwrap());
        assert!(max - min <= 1, "n={n}: slots {slots:?}");

        let mut hits = vec![0usize; n];
        for k in keys() {
            hits[maglev.pick(k, Availability::All).unwrap()] += 1;
        }
        let even = KEYS as f64 / n as f64;
        let worst = hits.iter().map(|&h| (h as f64 - even).abs() / even).fold(0.0, f64::max);
        eprintln!("maglev n={n}: keys per endpoint {hits:?}, worst {:.2}% off even", worst * 100.0);
        assert!(worst < 0.10, "n={n}: {hits:?}");
    }
}

#[test]
fn weights_give_proportional_slots() {
    let cases: [&[u32]; 3] = [&[3, 1, 1, 1], &[1, 2], &[5, 0, 5, 10]];
    for weights in cases {
        let ids = mk_ids(weights.len());
        let maglev = mk_maglev(&ids, weights);
        let total: u32 = weights.iter().sum();
        let mut slots = vec![0usize; weights.len()];
        for &e in maglev.table() {
            slots[usize::from(e)] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let share = slots[i] as f64 / maglev.table_size() as f64;
            let want = f64::from(w) / f64::from(total);
            assert!((share - want).abs() < 0.001, "{weights:?}: endpoint {i} has {share}");
        }
    }
}

#[test]
fn removing_one_of_four_moves_only_its_keys() {
    let ids = mk_ids(4);
    let before = owners(&mk_maglev(&ids, &[1; 4]), &ids);
    let removed = ids[1].as_str();
    let survivors: Vec<String> = ids.iter().filter(|id| *id != removed).cloned().collect();
    let after = owners(&mk_maglev(&survivors, &[1; 3]), &survivors);

    let on_survivors = before.iter().filter(|&&o| o != removed).count();
    let moved = before.iter().zip(&after).filter(|(b, a)| **b != removed && b != a).count();
    let ratio = moved as f64 / on_survivors as f64;
    eprintln!(
        "maglev remove 1 of 4: {moved} of {on_survivors} keys on surviving endpoints moved ({:.3}%)",
        ratio * 100.0
    );
    assert!(ratio < 0.01, "{moved} of {on_survivors} moved");
    assert!(after.iter().all(|&o| o != removed));
}

#[test]
fn adding_a_fifth_moves_about_a_fifth() {
    let ids = mk_ids(5);
    let before = owners(&mk_maglev(&ids[..4], &[1; 4]), &ids[..4]);
    let after = owners(&mk_maglev(&ids, &[1; 5]), &ids);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let to_new = after.iter().filter(|&&o| o == ids[4]).count();
    let ratio = moved as f64 / KEYS as f64;
    eprintln!(
        "maglev add 5th to 4: {moved} of {KEYS} keys moved ({:.2}%), {to_new} to the new endpoint",
        ratio * 100.0
    );
    assert!((0.15..=0.25).contains(&ratio), "{ratio}");
}

#[test]
fn unavailable_endpoint_moves_only_its_keys_deterministically() {
    let ids = mk_ids(4);
    let maglev = mk_maglev(&ids, &[1; 4]);
    let mut mask = EndpointMask::all(4);
    mask.set(2, false);
    let mut spread = [0usize; 4];
    for k in keys() {
        let owner = maglev.pick(k, Availability::All).unwrap();
        let skipped = maglev.pick(k, mask.as_availability()).unwrap();
        assert_eq!(skipped, maglev.pick(k, mask.as_availability()).unwrap());
        if owner == 2 {
            spread[skipped] += 1;
        } else {
            assert_eq!(skipped, owner, "a key on an available endpoint moved");
        }
    }
    // Endpoint 2's keys spread over the other three.
    assert_eq!(spread[2], 0);
    let orphans: usize = spread.iter().sum();
    for &s in &[spread[0], spread[1], spread[3]] {
        let share = s as f64 / orphans as f64;
        assert!((0.25..0.42).contains(&share), "{spread:?}");
    }
}

#[test]
fn falls_back_to_survivors_and_none() {
    let ids = mk_ids(40);
    let maglev = mk_maglev(&ids, &[1; 40]);
    let only_7 = |i: usize| i == 7;
    for k in keys().take(100) {
        assert_eq!(maglev.pick(k, Availability::Predicate(&only_7)), Some(7));
        assert_eq!(maglev.pick(k, Availability::Mask(&[])), None);
    }
}

#[test]
fn degenerate_inputs() {
    let none: [(&str, u32); 0] = [];
    assert_eq!(Maglev::new(&none).pick(1, Availability::All), None);
    let zero = Maglev::new(&[("10.0.0.1:80", 0)]);
    assert_eq!(zero.pick(1, Availability::All), None);
    let one = Maglev::new(&[("10.0.0.1:80", 1)]);
    assert!(keys().all(|k| one.pick(k, Availability::All) == Some(0)));
    let small = Maglev::with_table_size(&[("a", 1), ("b", 1)], 100);
    assert_eq!(small.table_size(), 101);
}

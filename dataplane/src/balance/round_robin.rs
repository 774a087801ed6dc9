//! Strict rotation over a backend's endpoints.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A lock-free rotation cursor.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The next item in rotation, or `None` for an empty slice.
    pub fn pick<'a, T>(&self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        items.get(n % items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_in_order_and_wraps() {
        let rr = RoundRobin::default();
        let items = ["a", "b", "c"];
        let picked: Vec<_> = (0..7).map(|_| *rr.pick(&items).unwrap()).collect();
        assert_eq!(picked, ["a", "b", "c", "a", "b", "c", "a"]);
    }

    #[test]
    fn empty_gives_none() {
        let rr = RoundRobin::default();
        let items: [u8; 0] = [];
        assert!(rr.pick(&items).is_none());
    }
}

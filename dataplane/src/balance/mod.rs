//! Load-balancing selectors: built with the snapshot, used per request
//! without locks.

mod round_robin;

pub use round_robin::RoundRobin;

//! The `Date` field value (RFC 9110 §5.6.7), formatted at most once a
//! second per thread.

use std::cell::RefCell;
use std::time::UNIX_EPOCH;

/// An IMF-fixdate is 29 bytes.
const LEN: usize = 29;

thread_local! {
    static CACHED: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [0; LEN])) };
}

/// Calls `write` with the current date.
pub(super) fn now(write: impl FnOnce(&[u8])) {
    let now = crate::clock::coarse_system_now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() != LEN {
                return write(text.as_bytes());
            }
            cached.1.copy_from_slice(text.as_bytes());
            cached.0 = secs;
        }
        write(&cached.1);
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_date_is_an_imf_fixdate_of_now() {
        let mut text = String::new();
        super::now(|d| text = String::from_utf8(d.to_vec()).unwrap());
        let parsed = httpdate::parse_http_date(&text).expect("an HTTP date");
        let age = std::time::SystemTime::now().duration_since(parsed).unwrap();
        assert!(age < std::time::Duration::from_secs(3), "{text}");
        assert!(text.ends_with(" GMT") && text.len() == 29, "{text}");
    }
}

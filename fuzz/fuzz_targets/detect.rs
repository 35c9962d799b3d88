//! Inbound protocol detection over arbitrary first bytes of a connection.
//!
//! Besides never panicking, checks what the inbound proxy relies on when it
//! calls `detect` again as more bytes arrive: once a prefix is decided (not
//! `NeedMore`), more bytes never change the decision.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlite_proxy::detect::{Detection, MAX_DETECT_BYTES, detect};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_DETECT_BYTES)];
    let whole = detect(data);
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        let part = detect(&data[..cut]);
        if part != Detection::NeedMore {
            assert_eq!(part, whole, "the first {cut} bytes decided otherwise");
        }
    }
});

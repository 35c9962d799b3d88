//! Relay buffers shared by the connections of one runtime thread.
//!
//! A direction of a relay takes a buffer here when it reads and gives it back
//! once everything it read has been written, so only connections with data in
//! flight hold one. Size classes are [`RELAY_BUFFER`] << k up to
//! [`RELAY_BUFFER_MAX`]. A thread keeps at most [`KEEP_BYTES`] of free buffers
//! per class and frees the rest, so a burst of bulk streams does not leave its
//! buffers behind. A buffer given back on another thread than it was taken on
//! (the task moved) simply joins that thread's pool.

use super::{RELAY_BUFFER, RELAY_BUFFER_MAX};
use std::cell::RefCell;

/// Number of size classes: 8, 16, 32, 64 and 128 KiB.
pub const CLASSES: usize = (RELAY_BUFFER_MAX / RELAY_BUFFER).trailing_zeros() as usize + 1;
/// Free bytes kept per class per thread: enough for the connections that are
/// busy at once on one thread (32 request/response exchanges, or two bulk
/// streams), small next to the proxy's idle footprint (at most 1.25 MiB per
/// thread over all classes).
pub const KEEP_BYTES: usize = 256 * 1024;

thread_local! {
    static FREE: RefCell<[Vec<Box<[u8]>>; CLASSES]> = RefCell::new(Default::default());
}

#[cfg(test)]
thread_local! {
    /// Bytes taken and not given back on this thread (tests run the relay on
    /// one thread, so this is what the connections hold).
    static OUT: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

/// The size of class `class` (classes past the last are the last).
pub fn size(class: usize) -> usize {
    RELAY_BUFFER << class.min(CLASSES - 1)
}

/// A buffer of class `class`: a free one of this thread, or a new one.
pub fn take(class: usize) -> Box<[u8]> {
    let class = class.min(CLASSES - 1);
    let buf = FREE
        .try_with(|f| f.borrow_mut()[class].pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; size(class)].into_boxed_slice());
    #[cfg(test)]
    OUT.with(|o| o.set(o.get() + buf.len() as isize));
    buf
}

/// Gives a buffer back to this thread's pool, or frees it past the cap.
pub fn give(buf: Box<[u8]>) {
    let len = buf.len();
    #[cfg(test)]
    OUT.with(|o| o.set(o.get() - len as isize));
    if !len.is_power_of_two() || !(RELAY_BUFFER..=RELAY_BUFFER_MAX).contains(&len) {
        return;
    }
    let class = (len / RELAY_BUFFER).trailing_zeros() as usize;
    // During thread teardown the pool is gone and the buffer is just freed.
    let _ = FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        if (f[class].len() + 1) * len <= KEEP_BYTES.max(len) {
            f[class].push(buf);
        }
    });
}

/// Free bytes this thread's pool holds.
#[cfg(test)]
pub fn free_bytes() -> usize {
    FREE.with(|f| {
        f.borrow()
            .iter()
            .flat_map(|c| c.iter().map(|b| b.len()))
            .sum()
    })
}

/// Free buffers of class `class` this thread's pool holds.
#[cfg(test)]
pub fn free_count(class: usize) -> usize {
    FREE.with(|f| f.borrow()[class].len())
}

/// Bytes taken from this thread's pool and not given back.
#[cfg(test)]
pub fn out_bytes() -> isize {
    OUT.with(std::cell::Cell::get)
}

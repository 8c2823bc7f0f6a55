//! The frame decoder refuses an oversized declared length before it
//! allocates anything for it. A counting allocator watches the largest
//! single allocation made by this thread during `feed`.
#![allow(unsafe_code)] // the test's own allocator; the crate itself forbids unsafe
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should stop the test

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use cc_proto::frame::{FrameDecoder, FrameError, MAX_FRAME_LEN};

struct Counting;

thread_local! {
    // `const` initialisation: no lazy set-up, no destructor, so using it from
    // inside the allocator cannot recurse into the allocator.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged and only
// records the requested size in a thread-local cell.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.with(|l| l.set(l.get().max(layout.size())));
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn largest_allocation_during(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    f();
    LARGEST.with(Cell::get)
}

#[test]
fn oversized_declared_length_is_refused_without_allocating_it() {
    let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
    let mut result = None;
    let largest = largest_allocation_during(|| {
        result = Some(dec.feed(&u32::MAX.to_be_bytes()));
    });
    assert_eq!(
        result,
        Some(Err(FrameError::TooLarge {
            declared: u32::MAX as usize,
            max: MAX_FRAME_LEN
        }))
    );
    assert_eq!(
        largest, 0,
        "feeding a refused header allocated {largest} bytes"
    );
}

#[test]
fn the_counter_sees_the_reservation_of_an_accepted_length() {
    // Control: a declared length within the maximum is reserved in full, so
    // the test above would notice a decoder that reserved before checking.
    let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
    let declared = (MAX_FRAME_LEN as u32).to_be_bytes();
    let largest = largest_allocation_during(|| {
        dec.feed(&declared).unwrap();
    });
    assert_eq!(largest, MAX_FRAME_LEN);
}

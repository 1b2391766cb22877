//! The global allocator: mimalloc, called through its plain entry points where its
//! blocks already give the alignment asked for.

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// Every mimalloc block of at least 16 bytes is 16-byte aligned. Its `_aligned`
/// calls (which the `mimalloc` crate makes for every allocation) fall back to
/// over-allocating whenever a size class is not a power of two: ~16 times per
/// request in the load benchmark, and ~5% of weir's instructions in the allocator.
///
/// Rechecked for issue 9 before replacing this with the `mimalloc` crate: its
/// `GlobalAlloc` still calls `mi_malloc_aligned` for every layout, and the mimalloc
/// built here (v3, libmimalloc-sys 0.1.49's default) only takes the plain path for
/// blocks of a power-of-two size or a small block that happens to be free; in a C
/// loop of malloc/free, `mi_malloc_aligned(n, 8)` took ~2x `mi_malloc(n)` at 48 and
/// 1500 bytes. So the reason above still holds.
const MIN_ALIGN: usize = 16;

fn plain(l: &Layout) -> bool {
    l.align() <= MIN_ALIGN && l.align() <= l.size()
}

pub struct Mimalloc;

// SAFETY: each call forwards to mimalloc, which returns memory of at least the
// requested size and alignment (plain calls only where its blocks guarantee the
// alignment), or null on failure; `dealloc` and `realloc` receive pointers it made.
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        unsafe {
            if plain(&l) {
                mi::mi_malloc(l.size()) as *mut u8
            } else {
                mi::mi_malloc_aligned(l.size(), l.align()) as *mut u8
            }
        }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        unsafe {
            if plain(&l) {
                mi::mi_zalloc(l.size()) as *mut u8
            } else {
                mi::mi_zalloc_aligned(l.size(), l.align()) as *mut u8
            }
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
        unsafe { mi::mi_free(p as *mut c_void) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            if l.align() <= MIN_ALIGN && l.align() <= new_size {
                mi::mi_realloc(p as *mut c_void, new_size) as *mut u8
            } else {
                mi::mi_realloc_aligned(p as *mut c_void, new_size, l.align()) as *mut u8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_gets_its_alignment_and_keeps_its_bytes_through_realloc() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 15, 16, 24, 48, 100, 1000, 6368, 70_000] {
                let l = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = a.alloc(l);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    std::ptr::write_bytes(p, 0xab, size);
                    let bigger = size * 3 + 5;
                    let q = a.realloc(p, l, bigger);
                    assert_eq!(q as usize % align, 0, "realloc size {bigger} align {align}");
                    assert!(std::slice::from_raw_parts(q, size)
                        .iter()
                        .all(|b| *b == 0xab));
                    a.dealloc(q, Layout::from_size_align(bigger, align).unwrap());
                    let z = a.alloc_zeroed(l);
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    a.dealloc(z, l);
                }
            }
        }
    }
}

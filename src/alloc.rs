//! The process's allocator: glibc's malloc, except that every block of a page or more is a
//! mapping of its own.
//!
//! A TCP flow's socket buffers (1 MiB, 64 KiB or 4 KiB each way, `Limits::tcp_buffers`)
//! are allocated zeroed and stay untouched until data passes. As fresh anonymous mappings
//! their untouched pages are the kernel's shared zero page: an idle flow's buffers cost no
//! memory, and a buffer costs only what has been buffered in it since. glibc's own mmap
//! threshold does not give that: it serves a block from the heap's top or from a freed
//! chunk whenever one is large enough (and `calloc` then clears it, every page resident),
//! and puts its chunk header in the block's first page. Measured with 1000 idle flows, a
//! third of the 64 KiB buffers came from the heap fully resident (docs/performance.md,
//! "Footprint").
//!
//! The rule depends on the size (and alignment) alone, so `dealloc` and `realloc`, which
//! get the same layout, know where a block came from: size ≥ [`PAGE`] with alignment ≤ 16
//! is mapped, anything else is glibc's. Should mmap fail (vm.max_map_count reached, say),
//! the block comes from glibc instead, page-aligned plus 16 bytes, so its address tells
//! it apart from a mapping (those start on a page).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// Blocks of at least this size are mappings of their own (the smallest TCP buffer, 4 KiB,
/// included).
pub const PAGE: usize = 4096;

/// Offset of a fallback block (see the module comment) from its page-aligned allocation.
const FALLBACK_OFFSET: usize = 16;

pub struct Allocator;

fn mapped(layout: Layout) -> bool {
    layout.size() >= PAGE && layout.align() <= FALLBACK_OFFSET
}

fn round_up(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

/// A fresh mapping of `size` bytes (zero-filled by the kernel), or a fallback block.
///
/// # Safety
/// `size` ≥ [`PAGE`].
unsafe fn map(size: usize, zeroed: bool) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches
    // no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            round_up(size),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p != libc::MAP_FAILED {
        return p.cast();
    }
    let Ok(layout) = Layout::from_size_align(size + FALLBACK_OFFSET, PAGE) else {
        return ptr::null_mut();
    };
    // SAFETY: a non-zero size; the block is given back in `unmap` with the same layout.
    let base = unsafe {
        if zeroed {
            System.alloc_zeroed(layout)
        } else {
            System.alloc(layout)
        }
    };
    if base.is_null() {
        return base;
    }
    // SAFETY: within the block, which is FALLBACK_OFFSET bytes longer than asked.
    unsafe { base.add(FALLBACK_OFFSET) }
}

/// Give back a block of [`map`].
///
/// # Safety
/// `p` and `size` as returned by and given to `map`.
unsafe fn unmap(p: *mut u8, size: usize) {
    if (p as usize).is_multiple_of(PAGE) {
        // SAFETY: a whole mapping of `map`, no longer used by the caller.
        unsafe { libc::munmap(p.cast(), round_up(size)) };
    } else {
        // SAFETY: a fallback block: its allocation starts FALLBACK_OFFSET bytes before.
        unsafe {
            System.dealloc(
                p.sub(FALLBACK_OFFSET),
                Layout::from_size_align_unchecked(size + FALLBACK_OFFSET, PAGE),
            )
        }
    }
}

// SAFETY: every block is either glibc's (with its layout unchanged) or a mapping of at
// least its size, page-aligned; `mapped` decides by the layout alone, which the caller
// passes unchanged to dealloc and realloc, so each block is given back to where it came from.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            // SAFETY: size ≥ PAGE.
            unsafe { map(layout.size(), false) }
        } else {
            // SAFETY: the caller's contract (non-zero size).
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            // SAFETY: size ≥ PAGE. A fresh mapping is zero already; writing zeros would
            // make every page resident, which is what this allocator avoids.
            unsafe { map(layout.size(), true) }
        } else {
            // SAFETY: the caller's contract.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if mapped(layout) {
            // SAFETY: a block of `map` of this size (the caller's layout is the one it
            // was allocated with).
            unsafe { unmap(p, layout.size()) }
        } else {
            // SAFETY: the caller's contract.
            unsafe { System.dealloc(p, layout) }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract: the alignment is valid, the new size does not
        // overflow when rounded to it.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (mapped(layout), mapped(new_layout)) {
            // SAFETY: the caller's contract.
            (false, false) => unsafe { System.realloc(p, layout, new_size) },
            (true, true) if (p as usize).is_multiple_of(PAGE) => {
                // SAFETY: a whole mapping of `map`; the kernel moves it if it cannot grow
                // in place, its pages (and their zeros beyond the old end) kept.
                let q = unsafe {
                    libc::mremap(
                        p.cast(),
                        round_up(layout.size()),
                        round_up(new_size),
                        libc::MREMAP_MAYMOVE,
                    )
                };
                if q == libc::MAP_FAILED {
                    // SAFETY: as below, a copy.
                    unsafe { self.move_block(p, layout, new_layout) }
                } else {
                    q.cast()
                }
            }
            // SAFETY: the caller's contract.
            _ => unsafe { self.move_block(p, layout, new_layout) },
        }
    }
}

impl Allocator {
    /// A new block for `new`, the contents copied, the old one given back.
    ///
    /// # Safety
    /// `p` allocated with `old`; `new` of the same alignment and a non-zero size.
    unsafe fn move_block(&self, p: *mut u8, old: Layout, new: Layout) -> *mut u8 {
        // SAFETY: a valid layout of non-zero size.
        let q = unsafe { self.alloc(new) };
        if !q.is_null() {
            // SAFETY: both blocks hold at least the smaller size and do not overlap.
            unsafe {
                ptr::copy_nonoverlapping(p, q, old.size().min(new.size()));
                self.dealloc(p, old);
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `[p, p + len)` in memory (mincore).
    fn resident_pages(p: *mut u8, len: usize) -> usize {
        let pages = round_up(len) / PAGE;
        let mut vec = vec![0u8; pages];
        // SAFETY: `p` is page-aligned and the range mapped; `vec` has a byte per page.
        let rc = unsafe { libc::mincore(p.cast(), round_up(len), vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn a_zeroed_buffer_costs_only_the_pages_written() {
        let a = Allocator;
        for size in [PAGE, 64 << 10, 1 << 20] {
            let layout = Layout::from_size_align(size, 1).unwrap();
            // SAFETY: a valid layout; given back below.
            let p = unsafe { a.alloc_zeroed(layout) };
            assert!(!p.is_null());
            assert!((p as usize).is_multiple_of(PAGE), "a mapping of its own");
            assert_eq!(resident_pages(p, size), 0, "{size}: nothing resident");
            // SAFETY: within the block.
            let bytes = unsafe { std::slice::from_raw_parts_mut(p, size) };
            bytes[size - 1] = 1;
            assert_eq!(resident_pages(p, size), 1, "{size}: the page written");
            // (Reading maps the kernel's zero page, which mincore counts: read last.)
            assert!(bytes[..size - 1].iter().all(|&b| b == 0), "zeroed");
            // SAFETY: allocated above with this layout.
            unsafe { a.dealloc(p, layout) };
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_both_kinds() {
        let a = Allocator;
        let mut layout = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: valid layouts; each realloc passes the block's current layout.
        unsafe {
            let mut p = a.alloc(layout);
            for i in 0..100 {
                *p.add(i) = i as u8;
            }
            for size in [5000, 300_000, 9000, 200, 70_000] {
                p = a.realloc(p, layout, size);
                assert!(!p.is_null());
                layout = Layout::from_size_align(size, 8).unwrap();
                for i in 0..100 {
                    assert_eq!(*p.add(i), i as u8, "byte {i} after realloc to {size}");
                }
            }
            a.dealloc(p, layout);
        }
    }

    #[test]
    fn small_or_over_aligned_blocks_stay_with_glibc() {
        assert!(!mapped(Layout::from_size_align(PAGE - 1, 1).unwrap()));
        assert!(!mapped(Layout::from_size_align(PAGE, 64).unwrap()));
        assert!(mapped(Layout::from_size_align(PAGE, 16).unwrap()));
    }
}

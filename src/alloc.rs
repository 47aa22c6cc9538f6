//! The process's allocator: mimalloc, with the growth of large blocks made geometric
//! inside [`growing`] scopes.
//!
//! parquet's Arrow reader grows a leaf's value buffer by exactly each page's values
//! (`reserve_exact`). Our pages are small (8 KiB, for lookups), so decoding a span-level
//! leaf of a 67k-span row group reallocated and copied the whole buffer at each of its
//! ~65 pages: `realloc` was 13.5% of a selective search's CPU. Inside a [`growing`] scope,
//! a realloc that grows a block of at least 64 KiB past its usable size
//! asks for at least twice the old size, and growths that fit in what the block already
//! has stay in place: a buffer is copied about log2(pages) times instead of once a page.
//! Outside those scopes (ingest, where memory is budgeted) nothing changes.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

use mimalloc::MiMalloc;

/// Blocks smaller than this grow as asked: copying them is cheap, and most small
/// buffers grow through `Vec`'s own doubling anyway.
const GEOMETRIC_FROM: usize = 64 << 10;

thread_local! {
    // `const` and without a destructor: read inside the allocator, it must not allocate.
    static GROWING: Cell<bool> = const { Cell::new(false) };
}

/// mimalloc with geometric growth in [`growing`] scopes. Binaries that decode blocks declare
/// it as its `#[global_allocator]` (the server and the search bench).
pub struct Allocator;

// SAFETY: every call goes to mimalloc with the caller's arguments, except that a growing
// realloc may ask for more than `new_size`. The block returned is then larger than the
// caller's layout, which `GlobalAlloc` allows, and mimalloc frees a block whatever layout
// it is freed with.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        MiMalloc.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        MiMalloc.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        MiMalloc.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        let size = if new_size > old && old >= GEOMETRIC_FROM && GROWING.with(Cell::get) {
            // mimalloc keeps the block when the new size fits in it and wastes at most
            // half: an earlier geometric growth left room that the exact growths use.
            if new_size <= MiMalloc.usable_size(ptr) {
                new_size
            } else {
                new_size.max(old.saturating_mul(2))
            }
        } else {
            new_size
        };
        MiMalloc.realloc(ptr, layout, size)
    }
}

/// Runs `f` with geometric growth of large blocks on this thread (see the module doc).
/// For decodes whose buffers live as long as their result, not for memory held long.
pub fn growing<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            GROWING.with(|g| g.set(self.0));
        }
    }
    // Restored on unwind too: decodes run under `catch_unwind`.
    let _reset = Reset(GROWING.with(|g| g.replace(true)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The realloc a `Vec` makes on `reserve_exact`, through [`Allocator`] directly (unit
    /// tests run on the system allocator, and mimalloc's usable size needs its blocks).
    fn grow(ptr: *mut u8, old: usize, new: usize) -> *mut u8 {
        let layout = Layout::from_size_align(old, 8).unwrap();
        // SAFETY: `ptr` came from `Allocator` with `layout`.
        let p = unsafe { Allocator.realloc(ptr, layout, new) };
        assert!(!p.is_null());
        p
    }

    /// Grows a block page by page as parquet does; returns how many times it moved and
    /// checks that the contents moved with it.
    fn moves(pages: usize, page: usize) -> usize {
        let layout = Layout::from_size_align(page, 8).unwrap();
        // SAFETY: a non-zero layout.
        let mut ptr = unsafe { Allocator.alloc(layout) };
        // SAFETY: the block holds `page` bytes.
        unsafe { ptr.write_bytes(7, page) };
        let mut moved = 0;
        for n in 1..pages {
            let next = grow(ptr, n * page, (n + 1) * page);
            moved += usize::from(next != ptr);
            ptr = next;
            // SAFETY: the block now holds `(n + 1) * page` bytes.
            unsafe { ptr.add(n * page).write_bytes(7, page) };
        }
        // SAFETY: the block holds `pages * page` bytes, all written.
        let all = unsafe { std::slice::from_raw_parts(ptr, pages * page) };
        assert!(all.iter().all(|&b| b == 7), "contents kept across moves");
        // SAFETY: allocated by `Allocator`, last grown to this size.
        unsafe { Allocator.dealloc(ptr, Layout::from_size_align(pages * page, 8).unwrap()) };
        moved
    }

    #[test]
    fn page_by_page_growth_moves_a_block_log_times_in_a_growing_scope() {
        let (pages, page) = (128, 8 << 10);
        let scoped = growing(|| moves(pages, page));
        let exact = moves(pages, page);
        eprintln!("moves: {scoped} in a scope, {exact} outside");
        // Below 64 KiB a block moves at most once per page (7), then once per doubling
        // up to 1 MiB (4).
        assert!(scoped <= 11, "{scoped} moves for {pages} pages of 8 KiB");
        assert!(
            exact >= 2 * scoped,
            "{exact} moves outside a scope against {scoped} inside"
        );
        assert!(!GROWING.with(Cell::get), "the scope is reset after it");
    }

    #[test]
    fn the_scope_is_reset_after_a_panic() {
        let r = std::panic::catch_unwind(|| growing(|| panic!("decode failed")));
        assert!(r.is_err());
        assert!(!GROWING.with(Cell::get));
        growing(|| {
            growing(|| ());
            assert!(
                GROWING.with(Cell::get),
                "a nested scope keeps the outer one"
            );
        });
    }
}

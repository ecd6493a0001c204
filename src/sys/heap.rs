//! The daemon's heap, on glibc: one malloc arena, and freed memory given back after each
//! snapshot. The daemon idles for hours between snapshots; what a snapshot allocated (hook
//! output, HTTP buffers, reports) should not stay resident in the meantime.

#![allow(unsafe_code)]

/// Limits glibc's malloc to one arena. Call it while the process has one thread: the daemon's
/// threads (the runtime's, the log thread, tokio's blocking pool) would otherwise get an arena
/// each, a few hundred KiB of resident memory apiece, for no gain at this allocation rate.
pub fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator parameter; M_ARENA_MAX with a positive value
    // is valid at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the free pages of the heap to the kernel (glibc keeps them otherwise, except at the
/// heap's top). Called on the runtime thread once the snapshot's end is published, so no
/// step of the snapshot waits for it.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator does not use; it takes the
    // allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

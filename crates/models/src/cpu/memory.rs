//! How the process keeps the memory a training step frees.
//!
//! Every step on flex allocates and frees the same activations, gradients and im2col buffers.
//! glibc hands blocks of 128 KiB and more straight back to the kernel when they are freed (mmap,
//! then trimming the heap's top), so each step faulted its buffers in again, page by page, zeroed
//! them, and paid a TLB shootdown across the threads for every unmap: with `perf`, 28% of
//! ERFNet's step was in the kernel's page-fault, zeroing and unmap paths (issue #32).

/// Allocations under 32 MiB come from the heap, and up to 256 MiB freed at its top stays mapped:
/// freed buffers are reused by the next step instead of being returned and faulted in again. Peak
/// memory stays about the same (ERFNet's step: 372 → 377 MB resident), as the step's own peak is
/// reached again every step anyway.
/// Process-wide, so binaries (and benches standing in for them) call it first thing; a no-op
/// where the C library is not glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 32 << 20; // glibc's ceiling for this setting on 64-bit.
        const TRIM_THRESHOLD: libc::c_int = 256 << 20;
        // SAFETY: mallopt only changes the allocator's thresholds; it is called before any thread
        // of ours allocates, and a refused value (return 0) leaves glibc's defaults.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

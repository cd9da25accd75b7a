//! Process-wide settings for fast, repeatable arithmetic: the thread pool and
//! flush-to-zero for denormal floats.

/// Sets flush-to-zero and denormals-are-zero on this thread. Tiny gradients otherwise
/// fall into denormal range, where x86 arithmetic is many times slower.
pub fn flush_denormals() {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[allow(deprecated)]
    // SAFETY: only sets the FTZ (bit 15) and DAZ (bit 6) flags of this thread's MXCSR.
    unsafe {
        #[cfg(target_arch = "x86")]
        use std::arch::x86::{_mm_getcsr, _mm_setcsr};
        #[cfg(target_arch = "x86_64")]
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

/// Builds the global thread pool with `threads` workers (0 = one per core), each with
/// denormals flushed. Returns the number of threads in use. Safe to call more than once:
/// later calls keep the first pool.
pub fn init_threads(threads: usize) -> usize {
    flush_denormals();
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(|_| flush_denormals())
        .build_global();
    rayon::current_num_threads()
}

/// A thread pool of `threads` workers (0 = one per core), each with denormals flushed:
/// what a library caller's training runs in, whatever the global pool is.
pub fn pool(threads: usize) -> Result<rayon::ThreadPool, crate::Error> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(|_| flush_denormals())
        .build()
        .map_err(|e| crate::Error::Config(format!("cannot start {threads} threads: {e}")))
}

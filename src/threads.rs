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

/// What 0 threads means: inside a Slurm job, the CPUs it was given
/// (`SLURM_CPUS_PER_TASK`; the process itself sees every core of the node); elsewhere 0,
/// which rayon reads as one per core this process may run on (`RAYON_NUM_THREADS` first).
pub fn auto(threads: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    std::env::var("SLURM_CPUS_PER_TASK")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| (1..=1024).contains(&n))
        .unwrap_or(0)
}

/// How many threads `init_threads(threads)` will give, without starting any (asking rayon
/// would start its global pool with the default count, and a later `init_threads` could no
/// longer choose): for estimates made before the pool exists.
pub fn expected(threads: usize) -> usize {
    match auto(threads) {
        0 => std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => n,
    }
}

/// Builds the global thread pool with `threads` workers (0 = see `auto`), each with
/// denormals flushed. Returns the number of threads in use. Safe to call more than once:
/// later calls keep the first pool.
pub fn init_threads(threads: usize) -> usize {
    flush_denormals();
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(auto(threads))
        .start_handler(|_| flush_denormals())
        .build_global();
    rayon::current_num_threads()
}

/// Runs `work` on a worker of the global pool (`init_threads`), the caller waiting (on a
/// worker of any pool already, it runs right there, in that pool): the
/// parallel loops it starts then begin on that worker at once, where from another thread
/// each one is handed to the pool and its caller sleeps until it ends. On a 2-core AMD
/// EPYC VM an empty loop took 20-35 µs from outside the pool and under 1 µs inside; a
/// training step makes 30-40 of them (stages, optimiser, data).
pub fn on_pool<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    rayon::scope(|_| work())
}

/// A thread pool of `threads` workers (0 = one per core), each with denormals flushed:
/// what a library caller's training runs in, whatever the global pool is.
pub fn pool(threads: usize) -> Result<rayon::ThreadPool, crate::Error> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(auto(threads))
        .start_handler(|_| flush_denormals())
        .build()
        .map_err(|e| crate::Error::Config(format!("cannot start {threads} threads: {e}")))
}

#[cfg(test)]
mod tests {
    use super::on_pool;

    #[test]
    fn on_pool_runs_on_a_worker_of_the_pool_it_is_called_from() {
        assert_eq!(
            rayon::current_thread_index(),
            None,
            "tests run outside any pool"
        );
        let (index, value) = on_pool(|| (rayon::current_thread_index(), 6 * 7));
        assert!(
            index.is_some(),
            "work ran on the calling thread, not a pool worker"
        );
        assert_eq!(value, 42);
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let inside = three.install(|| on_pool(rayon::current_num_threads));
        assert_eq!(inside, 3, "inside a pool, on_pool stays in it");
    }
}

//! The thread pool every kernel runs in.
//!
//! rayon's global pool can be sized only once per process, so ferroformer
//! keeps its own pool behind a lock and rebuilds it when
//! `set_num_threads` asks for a new width.

use std::sync::{Arc, OnceLock, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

fn slot() -> &'static RwLock<Arc<ThreadPool>> {
    static POOL: OnceLock<RwLock<Arc<ThreadPool>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::env::var("FERROFORMER_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(default_threads);
        RwLock::new(Arc::new(build(n)))
    })
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn build(n: usize) -> ThreadPool {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("ferroformer-{i}"))
        .build()
        .expect("building a rayon thread pool")
}

/// Resizes the pool; `0` means one thread per available core.
pub fn set_num_threads(n: usize) {
    let n = if n == 0 { default_threads() } else { n };
    let mut guard = slot().write().unwrap_or_else(|e| e.into_inner());
    if guard.current_num_threads() != n {
        *guard = Arc::new(build(n));
    }
}

pub fn num_threads() -> usize {
    slot()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .current_num_threads()
}

/// Runs `f` inside the pool, so that its rayon loops use the pool's threads.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let pool = slot().read().unwrap_or_else(|e| e.into_inner()).clone();
    pool.install(f)
}

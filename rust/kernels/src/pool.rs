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
    let cpus = affinity::allowed();
    // One worker per allowed CPU, each kept on its own: left to the
    // scheduler, a worker woken by another is often placed on the waker's
    // CPU, and two workers then share one core (measured on a 2-vCPU VM:
    // about 40 context switches per GEMM call and half the speed, until
    // the load balancer moves one, milliseconds later). More workers than
    // CPUs, or FERROFORMER_PIN=0, leaves placement to the scheduler.
    let pin = n <= cpus.len() && std::env::var("FERROFORMER_PIN").as_deref() != Ok("0");
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("ferroformer-{i}"))
        .start_handler(move |i| {
            if pin {
                affinity::pin(cpus[i]);
            }
        })
        .build()
        .expect("building a rayon thread pool")
}

#[cfg(target_os = "linux")]
mod affinity {
    /// The CPUs this thread may run on.
    pub fn allowed() -> Vec<usize> {
        // SAFETY: `set` is a plain bitmask the call fills in.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    /// Keeps the calling thread on `cpu` (best effort: errors are ignored).
    pub fn pin(cpu: usize) {
        // SAFETY: as above; 0 names the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod affinity {
    pub fn allowed() -> Vec<usize> {
        Vec::new()
    }

    pub fn pin(_cpu: usize) {}
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

/// Runs `f` on the calling thread, for work too small to repay the trip
/// into the pool: handing a job to a sleeping worker and being woken when
/// it is done costs 15-30 us on a VM (the idle vCPUs must be woken), while
/// a LayerNorm of one 768-wide row takes well under a microsecond.
///
/// Only for work that the kernels do in a single task (their chunks are
/// [`crate::vec_math::CHUNK_ELEMS`] elements, and a product below the
/// parallel threshold runs on one thread): a rayon loop outside any pool
/// belongs to rayon's global pool, which is therefore built here with one
/// worker; a loop of one task runs inline and never wakes it, and one of
/// several would still be right, only slower.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        // Fails only if another part of this library built it first,
        // which it does not; either way the loops stay correct.
        let _ = ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "ferroformer-serial".to_string())
            .build_global();
    });
    f()
}

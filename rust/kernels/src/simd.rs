//! Which SIMD level this CPU offers, decided once at run time so that one
//! wheel runs on any x86-64 (and on other architectures through the
//! portable paths).

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Portable,
    Avx2Fma,
    Avx512,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2Fma => "avx2+fma",
            Level::Avx512 => "avx512",
        }
    }
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::env::var("FERROFORMER_SIMD").as_deref() == Ok("portable") {
            return Level::Portable;
        }
        let avx512 = is_x86_feature_detected!("avx512f");
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if avx512 && std::env::var("FERROFORMER_SIMD").as_deref() != Ok("avx2") {
            return Level::Avx512;
        }
        if avx2 {
            return Level::Avx2Fma;
        }
    }
    Level::Portable
}

/// The best level this CPU supports (lowered by `FERROFORMER_SIMD=avx2` or
/// `FERROFORMER_SIMD=portable`, which the tests use to exercise every path).
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

//! matmul kernels (to be written).

//! loss kernels (to be written).

//! activation kernels (to be written).

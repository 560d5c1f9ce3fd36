// common.cuh: what every ferroformer CUDA kernel shares: storage types and
// their float conversions, the row index of a thread, and the warp and row
// reductions.
//
// The cupy backend prepends this file to each kernel family's source before
// NVRTC compiles it (rather than #include-ing it), so that CuPy's compile
// cache, keyed by the source text, sees every byte that went in.
//
// Every kernel is templated on its storage type T and computes in float:
// float today; __half and __nv_bfloat16 when compiled with -DFERRO_HALF_TYPES
// (only then are the CUDA half-precision headers needed).
//
// Launch shapes (chosen by the backend, see _row_launch in cupy_backend.py):
//   row kernels     block (32, R): one warp per row, R rows per block, or
//                   block (N, 1): one block of N threads (a multiple of 32,
//                   at most 1024) per row; row = blockIdx.x * blockDim.y + threadIdx.y
//   flat kernels    block (256,), a grid-stride loop over n elements

#if defined(FERRO_HALF_TYPES)
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

typedef long long i64;

// -- storage <-> float --------------------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }

#if defined(FERRO_HALF_TYPES)
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
#endif

__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// -- indexing -------------------------------------------------------------------

__device__ __forceinline__ i64 row_index() {
    return (i64)blockIdx.x * blockDim.y + threadIdx.y;
}

#define GRID_STRIDE_LOOP(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)blockDim.x * gridDim.x)

// -- reductions -----------------------------------------------------------------

struct SumOp {
    static __device__ __forceinline__ float identity() { return 0.0f; }
    static __device__ __forceinline__ float apply(float a, float b) { return a + b; }
};

struct MaxOp {
    static __device__ __forceinline__ float identity() { return neg_inf(); }
    static __device__ __forceinline__ float apply(float a, float b) { return fmaxf(a, b); }
};

// A butterfly over the 32 lanes: every lane ends with the same bits (each
// step adds a pair in both orders, and float addition commutes exactly).
template <typename Op>
__device__ __forceinline__ float warp_reduce(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = Op::apply(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// Reduces v over the threads of one row (a warp, or the whole block when
// blockDim.x > 32, which then must have blockDim.y == 1); every thread of the
// row gets the result. scratch: 32 floats of shared memory. In block mode all
// threads of the block must call it (it synchronises).
template <typename Op>
__device__ __forceinline__ float row_reduce(float v, float* scratch) {
    v = warp_reduce<Op>(v);
    if (blockDim.x == 32) return v;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    __syncthreads();  // a previous call may still be reading scratch
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : Op::identity();
    return warp_reduce<Op>(v);
}

// Online log-sum-exp: (m, s) is a running max and the sum of exp(v - m) over
// the values seen so far; -inf values add nothing.
__device__ __forceinline__ void online_lse_update(float& m, float& s, float v) {
    if (v > m) {
        s = s * expf(m - v) + 1.0f;
        m = v;
    } else if (v != neg_inf()) {
        s += expf(v - m);
    }
}

// Merges the per-thread (m, s) of one row: returns the row's max in m_out
// and the row's sum of exp(v - m_out) (0 when the row saw no finite value).
__device__ __forceinline__ float online_lse_merge(float m, float s, float& m_out, float* scratch) {
    m_out = row_reduce<MaxOp>(m, scratch);
    return row_reduce<SumOp>(m == neg_inf() ? 0.0f : s * expf(m - m_out), scratch);
}

// Number of keys a query row may see: all C, or with the bottom-right causal
// mask j <= i + C - Tq for query i = row % Tq, clamped to [0, C].
__device__ __forceinline__ int visible_keys(i64 row, int C, int Tq, int causal) {
    if (!causal) return C;
    const i64 v = row % Tq + 1 + C - Tq;
    return (int)(v < 0 ? 0 : (v > C ? C : v));
}

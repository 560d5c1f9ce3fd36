// flash_common.cuh: what the flash attention kernels share (flash_attention.cu
// on CUDA cores, flash_attention_mma.cu on tensor cores): the layouts, the
// causal bound, the log2-domain constants and the dynamic shared memory.
// Prepended after common.cuh to both families.
//
// Layouts (the backend makes every input C-contiguous):
//   q, o, dq, d_out   (B, Hq, Tq, D)          k, v, dk, dv   (B, Hkv, Tk, D)
//   lse, delta        (B, Hq, Tq) float       key_mask       (B, Tk) bool or null, True = masked
// Query head h reads key/value head h / (Hq / Hkv) (GQA, MQA): k and v are
// never repeated. Causal masking is aligned to the bottom right: query i sees
// key j when j <= i + Tk - Tq. A query row that sees no key gets o = 0,
// lse = -inf and zero gradients.
//
// Scores live in the log2 domain, s2 = (q . k) * scale * log2(e), so that one
// exp2f replaces expf; lse is stored in natural log, lse = s2max * ln2 + ln(sum).
//
// Grids are one-dimensional (gridDim.x up to 2^31 - 1; a y dimension would cap
// B * H at 65535): block x takes tile x % tiles of head x / tiles. Query tiles
// run last-first, so that under a causal mask the longest rows start first.

#if !defined(FERRO_HOST)
// tests/cuda_host_shim.h defines it for the host emulation of the kernels
#define DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#define FLASH_LOG2E 1.4426950408889634f
#define FLASH_LN2 0.6931471805599453f

typedef unsigned int u32;

__device__ __forceinline__ int cdiv(int a, int b) { return (a + b - 1) / b; }

// Keys query i may see: j < causal_key_end(i), i.e. j <= i + Tk - Tq, clamped to [0, Tk].
__device__ __forceinline__ int causal_key_end(int i, int Tq, int Tk) {
    const i64 end = (i64)i + 1 + Tk - Tq;
    return (int)(end < 0 ? 0 : (end > Tk ? Tk : end));
}

// The first query that sees key j under the causal mask (may be >= Tq).
__device__ __forceinline__ int causal_first_query(int j, int Tq, int Tk) {
    const i64 first = (i64)j - Tk + Tq;
    return (int)(first < 0 ? 0 : first);
}

// Block x of a grid over query tiles of `rows` rows (see above): rows [m0, m0 + rows)
// of query head bh; k_head and v_head the first rows of its key/value head in k
// and v, mask_row its batch's row of key_mask (null without a mask).
template <typename T>
struct QueryTile {
    int bh, m0;
    const T* k_head;
    const T* v_head;
    const bool* mask_row;

    __device__ __forceinline__ QueryTile(const T* k, const T* v, const bool* key_mask, int rows,
                                         int Hq, int Hkv, int Tq, int Tk, int D) {
        const int tiles = cdiv(Tq, rows);
        bh = blockIdx.x / tiles;
        m0 = (tiles - 1 - (int)(blockIdx.x % tiles)) * rows;
        const int b = bh / Hq, hk = (bh % Hq) / (Hq / Hkv);
        k_head = k + ((i64)b * Hkv + hk) * Tk * D;
        v_head = v + ((i64)b * Hkv + hk) * Tk * D;
        mask_row = key_mask ? key_mask + (i64)b * Tk : nullptr;
    }
};

// lse (natural log) -> the log2-domain offset of p = exp2(s2 - offset); +inf
// for a row that saw no key, which makes every p of the row exactly 0.
__device__ __forceinline__ float lse_to_log2(float lse) {
    return isfinite(lse) ? lse * FLASH_LOG2E : pos_inf();
}

// key_bias (keys,) for keys [n0, n0 + keys): 0 where the key is below Tk and
// not masked, -inf elsewhere. key_mask: the batch's row of the mask (Tk,), or null.
__device__ __forceinline__ void load_key_bias(float* key_bias, const bool* key_mask, int n0,
                                              int keys, int Tk) {
    for (int j = threadIdx.x; j < keys; j += blockDim.x) {
        const int key = n0 + j;
        key_bias[j] = key < Tk && !(key_mask && key_mask[key]) ? 0.0f : neg_inf();
    }
}

// flash_attention.cu: flash attention on CUDA cores, for every storage type
// and head dims up to 256: the forward (online softmax, one lse per row), the
// FlashAttention-2 backward (delta = rowsum(dO * O), then dK/dV over key
// blocks and dQ over query blocks: no atomics, the same bits on every run),
// and the split-K decode path for one query row. Memory is linear in T: no
// (Tq, Tk) matrix is ever written. Compiled after common.cuh and
// flash_common.cuh; flash_attention_mma.cu is the tensor-core twin for
// float16 / bfloat16 on sm_80+.
//
// Thread layout of the row kernels here: ROW_THREADS = 8 consecutive lanes
// share a row (a query row, or a key row in attention_backward_kv_simt); lane
// c of the group owns columns d = c, c + 8, ... < D, so that the 8 lanes read
// 8 consecutive values. A dot product over D is a partial sum per lane and
// three xor-shuffles, which leave the same bits in all 8 lanes (float addition
// commutes exactly), so every lane of a row takes the same decisions.
// A block is SIMT_THREADS = 128 threads = SIMT_ROWS = 16 rows.

#define ROW_THREADS 8
#define SIMT_THREADS 128
#define SIMT_ROWS 16

// Keys per tile streamed through shared memory (float, D_MAX columns): 16 KB
// for K and 16 KB for V at D_MAX = 128, 256.
template <int D_MAX> struct SimtTiles {
    static constexpr int KEYS = D_MAX <= 128 ? 32 : 16;     // key tile of the forward and dQ
    static constexpr int QUERIES = D_MAX <= 128 ? 32 : 16;  // query tile of dK/dV
    static constexpr int COLS = D_MAX / ROW_THREADS;        // columns a lane owns
};

__device__ __forceinline__ float group_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 4);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v;
}

// The two dot products of the backward for one (query, key) pair, each summed
// over the 8 lanes of the row: s = a . b (q . k) and dp = c . e (dO . v), where
// a and c are a lane's COLS registers and b and e its columns of a tile row.
template <int COLS>
__device__ __forceinline__ void pair_dots(const float* a, const float* b, const float* c,
                                          const float* e, float& s, float& dp) {
    float s_part = 0.0f, dp_part = 0.0f;
    for (int col = 0; col < COLS; ++col) {
        s_part += a[col] * b[col * ROW_THREADS];
        dp_part += c[col] * e[col * ROW_THREADS];
    }
    s = group_sum(s_part);
    dp = group_sum(dp_part);
}

// rows (rows, D) of src -> tile (rows, D_MAX) in float; zero past n_rows and D.
template <typename T, int D_MAX>
__device__ __forceinline__ void load_rows_float(float* tile, const T* src, int row0, int rows,
                                                int n_rows, int D) {
    for (int idx = threadIdx.x; idx < rows * D_MAX; idx += blockDim.x) {
        const int r = idx / D_MAX, d = idx % D_MAX;
        const bool in = row0 + r < n_rows && d < D;
        tile[idx] = in ? to_float(src[(i64)(row0 + r) * D + d]) : 0.0f;
    }
}

// This lane's columns (see above) of one row of a and of b, starting at
// element `start`, into registers; 0 past D or where the row does not exist.
template <typename T, int COLS>
__device__ __forceinline__ void load_lane_pair(float* a_reg, float* b_reg, const T* a, const T* b,
                                               i64 start, bool exists, int lane_col, int D) {
    for (int c = 0; c < COLS; ++c) {
        const int d = lane_col + c * ROW_THREADS;
        a_reg[c] = exists && d < D ? to_float(a[start + d]) : 0.0f;
        b_reg[c] = exists && d < D ? to_float(b[start + d]) : 0.0f;
    }
}

// -- forward ------------------------------------------------------------------------

// What the two query-row kernels (the forward and dQ) share: K, V and the key
// bias of KEYS keys at a time in dynamic shared memory, the block's query tile,
// this thread's row and lane, and the keys the tile and the row may see.
template <typename T, int D_MAX>
struct SimtQueryRows : QueryTile<T> {
    typedef SimtTiles<D_MAX> Tiles;
    float* k_tile;    // (KEYS, D_MAX)
    float* v_tile;    // (KEYS, D_MAX)
    float* key_bias;  // (KEYS,)
    int row, lane_col, key_end, row_key_end;
    bool row_valid;

    __device__ __forceinline__ SimtQueryRows(unsigned char* shared, const T* k, const T* v,
                                             const bool* key_mask, int Hq, int Hkv, int Tq,
                                             int Tk, int D, int causal)
        : QueryTile<T>(k, v, key_mask, SIMT_ROWS, Hq, Hkv, Tq, Tk, D) {
        k_tile = reinterpret_cast<float*>(shared);
        v_tile = k_tile + Tiles::KEYS * D_MAX;
        key_bias = v_tile + Tiles::KEYS * D_MAX;
        row = this->m0 + (int)threadIdx.x / ROW_THREADS;
        lane_col = threadIdx.x % ROW_THREADS;
        row_valid = row < Tq;
        const int last_row = min(this->m0 + SIMT_ROWS, Tq) - 1;
        key_end = causal ? causal_key_end(last_row, Tq, Tk) : Tk;
        row_key_end = causal ? causal_key_end(row, Tq, Tk) : Tk;
    }

    // Keys [n0, n0 + KEYS) into the shared tiles, once every row is done with the previous ones.
    __device__ __forceinline__ void load_keys(int n0, int D) const {
        __syncthreads();
        load_rows_float<T, D_MAX>(k_tile, this->k_head, n0, Tiles::KEYS, key_end, D);
        load_rows_float<T, D_MAX>(v_tile, this->v_head, n0, Tiles::KEYS, key_end, D);
        load_key_bias(key_bias, this->mask_row, n0, Tiles::KEYS, key_end);
        __syncthreads();
    }
};

// grid (ceil(Tq / 16) * B * Hq), block 128, dynamic shared memory
// (2 * KEYS * D_MAX + KEYS) floats. Block x takes query rows [16 t, 16 t + 16)
// of head bh (t, bh from x, see flash_common.cuh); K and V tiles of KEYS keys
// stream through shared memory up to the block's causal limit. D <= D_MAX.
template <typename T, int D_MAX>
__global__ void attention_forward_simt(const T* q, const T* k, const T* v, const bool* key_mask,
                                       T* o, float* lse, int Hq, int Hkv, int Tq, int Tk, int D,
                                       float scale, int causal) {
    typedef SimtTiles<D_MAX> Tiles;
    DYNAMIC_SHARED(shared);
    const SimtQueryRows<T, D_MAX> tile(shared, k, v, key_mask, Hq, Hkv, Tq, Tk, D, causal);
    const int bh = tile.bh, row = tile.row, lane_col = tile.lane_col;
    const bool row_valid = tile.row_valid;

    const float scale_log2 = scale * FLASH_LOG2E;
    float q_reg[Tiles::COLS], acc[Tiles::COLS];
    for (int c = 0; c < Tiles::COLS; ++c) {
        const int d = lane_col + c * ROW_THREADS;
        q_reg[c] = row_valid && d < D ? to_float(q[((i64)bh * Tq + row) * D + d]) * scale_log2 : 0.0f;
        acc[c] = 0.0f;
    }

    float m = neg_inf(), l = 0.0f;
    for (int n0 = 0; n0 < tile.key_end; n0 += Tiles::KEYS) {
        tile.load_keys(n0, D);

        float s[Tiles::KEYS];
        float tile_max = neg_inf();
#pragma unroll
        for (int j = 0; j < Tiles::KEYS; ++j) {
            float part = 0.0f;
            for (int c = 0; c < Tiles::COLS; ++c) {
                part += q_reg[c] * tile.k_tile[j * D_MAX + lane_col + c * ROW_THREADS];
            }
            const float sj = group_sum(part);
            s[j] = tile.key_bias[j] == 0.0f && n0 + j < tile.row_key_end ? sj : neg_inf();
            tile_max = fmaxf(tile_max, s[j]);
        }
        const float m_new = fmaxf(m, tile_max);
        const float m_use = m_new == neg_inf() ? 0.0f : m_new;  // no key seen yet: every p is 0
        const float alpha = exp2f(m - m_use);
        l *= alpha;
        for (int c = 0; c < Tiles::COLS; ++c) acc[c] *= alpha;
#pragma unroll
        for (int j = 0; j < Tiles::KEYS; ++j) {
            const float p = exp2f(s[j] - m_use);
            l += p;
            for (int c = 0; c < Tiles::COLS; ++c) {
                acc[c] += p * tile.v_tile[j * D_MAX + lane_col + c * ROW_THREADS];
            }
        }
        m = m_new;
    }

    if (!row_valid) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    T* o_row = o + ((i64)bh * Tq + row) * D;
    for (int c = 0; c < Tiles::COLS; ++c) {
        const int d = lane_col + c * ROW_THREADS;
        if (d < D) o_row[d] = from_float<T>(acc[c] * inv);
    }
    if (lane_col == 0) lse[(i64)bh * Tq + row] = l > 0.0f ? (m + log2f(l)) * FLASH_LN2 : neg_inf();
}

// -- backward ---------------------------------------------------------------------

// d_out, out (rows, D); delta (rows,) = sum_d d_out * out, the row term of
// dS = P * (dP - delta). A row kernel (see common.cuh).
template <typename T>
__global__ void attention_backward_delta(const T* d_out, const T* out, float* delta, i64 rows,
                                         int D) {
    __shared__ float scratch[32];
    const i64 row = row_index();
    if (row >= rows) return;
    float sum = 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        sum += to_float(d_out[row * D + d]) * to_float(out[row * D + d]);
    }
    sum = row_reduce<SumOp>(sum, scratch);
    if (threadIdx.x == 0) delta[row] = sum;
}

// dK and dV: grid (ceil(Tk / 16) * B * Hkv), block 128, dynamic shared memory
// (2 * QUERIES * D_MAX + 2 * QUERIES) floats. Block x owns keys [16 t, 16 t + 16)
// of key/value head bhk; each key row keeps k, v, dk, dv in registers while
// the Q and dO tiles of every query head of its group stream past (GQA: the
// group's heads are summed here, in a fixed order). Queries before the first
// one that sees the block's keys are skipped under a causal mask.
template <typename T, int D_MAX>
__global__ void attention_backward_kv_simt(const T* q, const T* k, const T* v, const T* d_out,
                                           const float* lse, const float* delta,
                                           const bool* key_mask, T* dk, T* dv, int Hq, int Hkv,
                                           int Tq, int Tk, int D, float scale, int causal) {
    typedef SimtTiles<D_MAX> Tiles;
    DYNAMIC_SHARED(shared);
    float* q_tile = reinterpret_cast<float*>(shared);          // (QUERIES, D_MAX)
    float* do_tile = q_tile + Tiles::QUERIES * D_MAX;           // (QUERIES, D_MAX)
    float* lse2_tile = do_tile + Tiles::QUERIES * D_MAX;        // (QUERIES,)
    float* delta_tile = lse2_tile + Tiles::QUERIES;             // (QUERIES,)

    const int tiles = cdiv(Tk, SIMT_ROWS);
    const int bhk = blockIdx.x / tiles;
    const int n0 = (int)(blockIdx.x % tiles) * SIMT_ROWS;
    const int b = bhk / Hkv, hk = bhk % Hkv, group = Hq / Hkv;
    const int key = n0 + (int)threadIdx.x / ROW_THREADS;
    const int lane_col = threadIdx.x % ROW_THREADS;
    const bool key_exists = key < Tk;
    const bool key_valid = key_exists && !(key_mask && key_mask[(i64)b * Tk + key]);

    float k_reg[Tiles::COLS], v_reg[Tiles::COLS];
    float dk_acc[Tiles::COLS] = {}, dv_acc[Tiles::COLS] = {};
    load_lane_pair<T, Tiles::COLS>(k_reg, v_reg, k, v, ((i64)bhk * Tk + key) * D, key_exists,
                                   lane_col, D);
    const float scale_log2 = scale * FLASH_LOG2E;
    const int q_begin = causal ? causal_first_query(n0, Tq, Tk) : 0;

    for (int g = 0; g < group; ++g) {
        const i64 bh = (i64)b * Hq + hk * group + g;
        const T* q_head = q + bh * Tq * D;
        const T* do_head = d_out + bh * Tq * D;
        for (int m0 = q_begin; m0 < Tq; m0 += Tiles::QUERIES) {
            __syncthreads();  // every key row is done with the previous tile
            load_rows_float<T, D_MAX>(q_tile, q_head, m0, Tiles::QUERIES, Tq, D);
            load_rows_float<T, D_MAX>(do_tile, do_head, m0, Tiles::QUERIES, Tq, D);
            for (int i = threadIdx.x; i < Tiles::QUERIES; i += blockDim.x) {
                const bool in = m0 + i < Tq;
                lse2_tile[i] = in ? lse_to_log2(lse[bh * Tq + m0 + i]) : pos_inf();
                delta_tile[i] = in ? delta[bh * Tq + m0 + i] : 0.0f;
            }
            __syncthreads();

            for (int i = 0; i < Tiles::QUERIES; ++i) {
                const float* qi = q_tile + i * D_MAX + lane_col;
                const float* doi = do_tile + i * D_MAX + lane_col;
                float qk, dp;
                pair_dots<Tiles::COLS>(k_reg, qi, v_reg, doi, qk, dp);
                const float s = qk * scale_log2;
                const bool visible = key_valid && (!causal || key < causal_key_end(m0 + i, Tq, Tk));
                const float p = visible ? exp2f(s - lse2_tile[i]) : 0.0f;
                const float ds = p * (dp - delta_tile[i]);
                for (int c = 0; c < Tiles::COLS; ++c) {
                    dv_acc[c] += p * doi[c * ROW_THREADS];
                    dk_acc[c] += ds * qi[c * ROW_THREADS];
                }
            }
        }
    }

    if (!key_exists) return;
    for (int c = 0; c < Tiles::COLS; ++c) {
        const int d = lane_col + c * ROW_THREADS;
        if (d >= D) continue;
        const i64 at = ((i64)bhk * Tk + key) * D + d;
        dk[at] = from_float<T>(dk_acc[c] * scale);
        dv[at] = from_float<T>(dv_acc[c]);
    }
}

// dQ: grid (ceil(Tq / 16) * B * Hq), block 128, dynamic shared memory as the
// forward's. Each query row keeps q, dO and dq in registers while the K and V
// tiles stream past, recomputing P (from lse) and dP: dQ = scale * dS K.
template <typename T, int D_MAX>
__global__ void attention_backward_q_simt(const T* q, const T* k, const T* v, const T* d_out,
                                          const float* lse, const float* delta,
                                          const bool* key_mask, T* dq, int Hq, int Hkv, int Tq,
                                          int Tk, int D, float scale, int causal) {
    typedef SimtTiles<D_MAX> Tiles;
    DYNAMIC_SHARED(shared);
    const SimtQueryRows<T, D_MAX> tile(shared, k, v, key_mask, Hq, Hkv, Tq, Tk, D, causal);
    const int bh = tile.bh, row = tile.row, lane_col = tile.lane_col;
    const bool row_valid = tile.row_valid;

    float q_reg[Tiles::COLS], do_reg[Tiles::COLS], dq_acc[Tiles::COLS] = {};
    load_lane_pair<T, Tiles::COLS>(q_reg, do_reg, q, d_out, ((i64)bh * Tq + row) * D, row_valid,
                                   lane_col, D);
    const float scale_log2 = scale * FLASH_LOG2E;
    const float row_lse2 = row_valid ? lse_to_log2(lse[(i64)bh * Tq + row]) : pos_inf();
    const float row_delta = row_valid ? delta[(i64)bh * Tq + row] : 0.0f;

    for (int n0 = 0; n0 < tile.key_end; n0 += Tiles::KEYS) {
        tile.load_keys(n0, D);
        for (int j = 0; j < Tiles::KEYS; ++j) {
            const float* kj = tile.k_tile + j * D_MAX + lane_col;
            const float* vj = tile.v_tile + j * D_MAX + lane_col;
            float qk, dp;
            pair_dots<Tiles::COLS>(q_reg, kj, do_reg, vj, qk, dp);
            const float s = qk * scale_log2;
            const bool visible = tile.key_bias[j] == 0.0f && n0 + j < tile.row_key_end;
            const float p = visible ? exp2f(s - row_lse2) : 0.0f;
            const float ds = p * (dp - row_delta);
            for (int c = 0; c < Tiles::COLS; ++c) dq_acc[c] += ds * kj[c * ROW_THREADS];
        }
    }

    if (!row_valid) return;
    for (int c = 0; c < Tiles::COLS; ++c) {
        const int d = lane_col + c * ROW_THREADS;
        if (d < D) dq[((i64)bh * Tq + row) * D + d] = from_float<T>(dq_acc[c] * scale);
    }
}

// -- decode: one query row against a long KV cache ---------------------------------------

// Split-K, first pass: grid (splits * B * Hq), block 128 (4 warps), no shared
// memory beyond the static merge buffer. k, v (B, Hkv, Tcap, D) and key_mask
// (B, Tcap) may be KV-cache buffers read in place: only keys [0, Tk) of each
// head take part (Tk <= Tcap). Block x takes keys
// [s * chunk, min(Tk, (s + 1) * chunk)) of query head bh (s = x % splits);
// warp w takes the groups of DECODE_KEYS consecutive keys w, w + 4, ... of the
// chunk (their loads independent, in flight together), lane l the columns
// l, l + 32, ... < D. q (B, Hq, 1, D). The warps' states merge in warp order
// into partial (splits, B * Hq, D_MAX + 2): the unnormalised output, then the
// running max m (log2 domain, -inf when no key was seen) and sum l.
#define DECODE_KEYS 4
template <typename T, int D_MAX>
__global__ void attention_decode_partial(const T* q, const T* k, const T* v, const bool* key_mask,
                                         float* partial, int Hq, int Hkv, int Tk, int Tcap,
                                         int D, float scale, int chunk, int splits) {
    constexpr int WARPS = SIMT_THREADS / 32;
    constexpr int COLS = D_MAX / 32;
    __shared__ float warp_state[WARPS][D_MAX + 2];

    const i64 rows = gridDim.x / splits;
    const int bh = blockIdx.x / splits, split = blockIdx.x % splits;
    const int b = bh / Hq, hk = (bh % Hq) / (Hq / Hkv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const T* k_head = k + ((i64)b * Hkv + hk) * Tcap * D;
    const T* v_head = v + ((i64)b * Hkv + hk) * Tcap * D;
    const bool* mask_row = key_mask ? key_mask + (i64)b * Tcap : nullptr;
    const float scale_log2 = scale * FLASH_LOG2E;

    float q_reg[COLS], acc[COLS];
    for (int c = 0; c < COLS; ++c) {
        const int d = lane + 32 * c;
        q_reg[c] = d < D ? to_float(q[(i64)bh * D + d]) * scale_log2 : 0.0f;
        acc[c] = 0.0f;
    }
    const int begin = split * chunk;
    const int end = min(Tk, begin + chunk);
    float m = neg_inf(), l = 0.0f;
    for (int j0 = begin + warp * DECODE_KEYS; j0 < end; j0 += WARPS * DECODE_KEYS) {
        float s[DECODE_KEYS];
#pragma unroll
        for (int u = 0; u < DECODE_KEYS; ++u) {
            const int j = j0 + u;  // warp-uniform: every lane reads the same keys
            float part = 0.0f;
            for (int c = 0; c < COLS; ++c) {
                const int d = lane + 32 * c;
                if (j < end && d < D) part += q_reg[c] * to_float(k_head[(i64)j * D + d]);
            }
            s[u] = warp_reduce<SumOp>(part);
            if (j >= end || (mask_row && mask_row[j])) s[u] = neg_inf();
        }
        float m_new = m;
#pragma unroll
        for (int u = 0; u < DECODE_KEYS; ++u) m_new = fmaxf(m_new, s[u]);
        const float m_use = m_new == neg_inf() ? 0.0f : m_new;  // no key seen yet: every p is 0
        const float alpha = exp2f(m - m_use);
        l *= alpha;
        for (int c = 0; c < COLS; ++c) acc[c] *= alpha;
#pragma unroll
        for (int u = 0; u < DECODE_KEYS; ++u) {
            const float p = exp2f(s[u] - m_use);
            l += p;
            if (p == 0.0f) continue;  // warp-uniform, and skips the rows past end
            for (int c = 0; c < COLS; ++c) {
                const int d = lane + 32 * c;
                if (d < D) acc[c] += p * to_float(v_head[(i64)(j0 + u) * D + d]);
            }
        }
        m = m_new;
    }
    for (int c = 0; c < COLS; ++c) warp_state[warp][lane + 32 * c] = acc[c];
    if (lane == 0) {
        warp_state[warp][D_MAX] = m;
        warp_state[warp][D_MAX + 1] = l;
    }
    __syncthreads();

    // merge the warps in order 0, 1, 2, 3; the block's threads split the columns
    float m_all = neg_inf();
    for (int w = 0; w < WARPS; ++w) m_all = fmaxf(m_all, warp_state[w][D_MAX]);
    const float m_use = m_all == neg_inf() ? 0.0f : m_all;
    float* out = partial + (split * rows + bh) * (D_MAX + 2);
    for (int d = threadIdx.x; d < D_MAX + 2; d += blockDim.x) {
        float sum = 0.0f;
        if (d < D_MAX) {
            for (int w = 0; w < WARPS; ++w) sum += exp2f(warp_state[w][D_MAX] - m_use) * warp_state[w][d];
        } else if (d == D_MAX) {
            sum = m_all;
        } else {
            for (int w = 0; w < WARPS; ++w) sum += exp2f(warp_state[w][D_MAX] - m_use) * warp_state[w][D_MAX + 1];
        }
        out[d] = sum;
    }
}

// Split-K, second pass: a row kernel over rows = B * Hq (see common.cuh).
// partial (splits, rows, width) as written above, width = D_MAX + 2;
// o (rows, D), lse (rows,). The splits merge in order s = 0, 1, ...:
//   M = max_s m_s,  L = sum_s 2^(m_s - M) l_s,  o = sum_s 2^(m_s - M) o_s / L.
template <typename T>
__global__ void attention_decode_merge(const float* partial, T* o, float* lse, i64 rows, int D,
                                       int width, int splits) {
    const i64 row = row_index();
    if (row >= rows) return;
    const int m_at = width - 2, l_at = width - 1;
    float m_all = neg_inf();
    for (int s = 0; s < splits; ++s) m_all = fmaxf(m_all, partial[((i64)s * rows + row) * width + m_at]);
    const float m_use = m_all == neg_inf() ? 0.0f : m_all;
    float l_all = 0.0f;
    for (int s = 0; s < splits; ++s) {
        const float* part = partial + ((i64)s * rows + row) * width;
        l_all += exp2f(part[m_at] - m_use) * part[l_at];
    }
    const float inv = l_all > 0.0f ? 1.0f / l_all : 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float sum = 0.0f;
        for (int s = 0; s < splits; ++s) {
            const float* part = partial + ((i64)s * rows + row) * width;
            sum += exp2f(part[m_at] - m_use) * part[d];
        }
        o[row * D + d] = from_float<T>(sum * inv);
    }
    if (threadIdx.x == 0) lse[row] = l_all > 0.0f ? (m_all + log2f(l_all)) * FLASH_LN2 : neg_inf();
}

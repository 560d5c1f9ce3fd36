// flash_attention_mma.cu: flash attention on tensor cores for float16 and
// bfloat16 (sm_80 and later), head dims up to HEAD_DIM = 64 or 128 (D % 8 == 0):
// the forward and the FlashAttention-2 backward (dK/dV over key blocks, dQ over
// query blocks: deterministic, no atomics), with the semantics and grids of
// their CUDA-core twins in flash_attention.cu. Compiled after common.cuh and
// flash_common.cuh, with -DFERRO_HALF_TYPES.
//
// Each block is 4 warps. Products are mma.sync.m16n8k16 with float
// accumulators; operands come from shared memory through ldmatrix, tiles
// arrive by cp.async (16-byte chunks, zero-filled past the data). Shared rows
// are HEAD_DIM + 8 elements apart: the 8 rows one ldmatrix reads then start
// 16 bytes apart modulo 128, in distinct banks.
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16"): lane = 4 g + t;
//   A (16 x 16): a[0] = (row g, cols 2t, 2t+1), a[1] = (row g+8, same cols),
//                a[2] = (row g, cols 2t+8, 2t+9), a[3] = (row g+8, cols 2t+8, 2t+9)
//   B (16 x 8):  b[0] = (rows 2t, 2t+1, col g), b[1] = (rows 2t+8, 2t+9, col g)
//   C (16 x 8):  c[0], c[1] = (row g, cols 2t, 2t+1), c[2], c[3] = (row g+8, same cols)
// (two 16-bit values to a register, the lower column in the low half). So the
// accumulators of two adjacent n8 blocks of S are, packed in pairs, the A
// fragment of P for the next product: P never goes through shared memory.

#define MMA_THREADS 128

template <int HEAD_DIM> struct MmaTiles {
    static constexpr int LD = HEAD_DIM + 8;                // shared row stride, elements
    static constexpr int M = 64;                           // query rows of a forward / dQ block, 16 a warp
    static constexpr int N = 64;                           // keys of a forward tile
    static constexpr int N_DQ = HEAD_DIM <= 64 ? 64 : 32;  // keys of a dQ tile
    static constexpr int N_KV = 64;                        // keys of a dK/dV block, 16 a warp
    static constexpr int M_KV = HEAD_DIM <= 64 ? 64 : 16;  // queries of a dK/dV tile
};

// -- warp-level primitives (tests/cuda_host_shim.h emulates them on the host) --------------

#if !defined(FERRO_HOST)
__device__ __forceinline__ u32 shared_address(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}

// The four 8x8 matrices whose rows lanes 8i..8i+7 point at -> r[i]; lane 4 g + t
// receives (row g, cols 2t, 2t+1) of each, or with .trans (rows 2t, 2t+1, col g).
__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}

// 16 bytes global -> shared, asynchronously; bytes past src_bytes are zeros.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(shared_address(dst)), "l"(src), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits for every copy this thread issued (then a __syncthreads shares them).
__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// d += a b: A (16 x 16) and B (16 x 8) of T, D (16 x 8) float.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const u32 (&a)[4], u32 b0,
                                                         u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

__device__ __forceinline__ unsigned short bits_of(__half x) { return __half_as_ushort(x); }
__device__ __forceinline__ unsigned short bits_of(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }

// Two floats rounded to T, packed as one register (lo in the low half).
template <typename T>
__device__ __forceinline__ u32 pack2(float lo, float hi) {
    return (u32)bits_of(from_float<T>(lo)) | ((u32)bits_of(from_float<T>(hi)) << 16);
}

// -- fragments from shared memory ----------------------------------------------------------
// ld is the row stride of the stored tile, in elements; lane = 8 i + r names
// the row address it gives ldmatrix (matrix i, row r).

// A fragment of X (16 x 16) stored row-major: X[m][k] at tile[m * ld + k].
template <typename T>
__device__ __forceinline__ void load_a(u32 (&a)[4], const T* tile, int ld) {
    const int lane = threadIdx.x & 31, i = lane >> 3, r = lane & 7;
    ldmatrix_x4(a, tile + (r + 8 * (i & 1)) * ld + 8 * (i >> 1));
}

// B fragments of two adjacent n8 blocks of Y (16 x 16) stored n-major,
// Y[k][n] at tile[n * ld + k] (K for Q K^T): b[0], b[1] for columns 0-7,
// b[2], b[3] for columns 8-15.
template <typename T>
__device__ __forceinline__ void load_b_nmajor(u32 (&b)[4], const T* tile, int ld) {
    const int lane = threadIdx.x & 31, i = lane >> 3, r = lane & 7;
    ldmatrix_x4(b, tile + (r + 8 * (i >> 1)) * ld + 8 * (i & 1));
}

// The same for Y stored k-major, Y[k][n] at tile[k * ld + n] (V for P V).
template <typename T>
__device__ __forceinline__ void load_b_kmajor(u32 (&b)[4], const T* tile, int ld) {
    const int lane = threadIdx.x & 31, i = lane >> 3, r = lane & 7;
    ldmatrix_x4_trans(b, tile + (r + 8 * (i & 1)) * ld + 8 * (i >> 1));
}

// acc (16 x 8 n8 blocks) += A * Y (16 x 8 NB) for Y in shared memory.
template <typename T, int NB, bool N_MAJOR>
__device__ __forceinline__ void mma_row(float (&acc)[NB][4], const u32 (&a)[4], const T* tile, int ld) {
#pragma unroll
    for (int nb2 = 0; nb2 < NB / 2; ++nb2) {
        u32 b[4];
        if (N_MAJOR) {
            load_b_nmajor(b, tile + nb2 * 16 * ld, ld);
        } else {
            load_b_kmajor(b, tile + nb2 * 16, ld);
        }
        mma_16816<T>(acc[2 * nb2], a, b[0], b[1]);
        mma_16816<T>(acc[2 * nb2 + 1], a, b[2], b[3]);
    }
}

// The A fragments of a (16 x 16 KB) product operand from accumulators of
// (16 x 8) blocks: k-step kk packs blocks 2 kk and 2 kk + 1.
template <typename T, int NB>
__device__ __forceinline__ void accumulators_to_a(u32 (&a)[NB / 2][4], const float (&c)[NB][4]) {
#pragma unroll
    for (int kk = 0; kk < NB / 2; ++kk) {
        a[kk][0] = pack2<T>(c[2 * kk][0], c[2 * kk][1]);
        a[kk][1] = pack2<T>(c[2 * kk][2], c[2 * kk][3]);
        a[kk][2] = pack2<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
        a[kk][3] = pack2<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
    }
}

template <int NB>
__device__ __forceinline__ void zero(float (&c)[NB][4]) {
#pragma unroll
    for (int i = 0; i < NB; ++i) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.0f;
}

// Row r of the lane's accumulator fragments (r = 0: its row, 1: the row 8 below), times
// factor, to out_row: the lane's two columns 8 nb + 2 t, 8 nb + 2 t + 1 of each block nb,
// those below D (a multiple of 8 where these kernels run).
template <typename T, int NB>
__device__ __forceinline__ void store_row(T* out_row, const float (&c)[NB][4], int r, int t,
                                          int D, float factor) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
        const int col = nb * 8 + 2 * t;
        if (col < D) {
            out_row[col] = from_float<T>(c[nb][2 * r] * factor);
            out_row[col + 1] = from_float<T>(c[nb][2 * r + 1] * factor);
        }
    }
}

// Rows [row0, row0 + rows) of src (n_rows, D) -> tile (rows, HEAD_DIM + 8) by
// cp.async; zeros past n_rows and D. Columns [HEAD_DIM, HEAD_DIM + 8) are
// padding, never read.
template <typename T, int HEAD_DIM>
__device__ __forceinline__ void load_tile_async(T* tile, const T* src, int row0, int rows,
                                                int n_rows, int D) {
    constexpr int LD = MmaTiles<HEAD_DIM>::LD, CHUNKS = HEAD_DIM / 8;
    for (int c = threadIdx.x; c < rows * CHUNKS; c += MMA_THREADS) {
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        const bool in = row0 + r < n_rows && col < D;
        cp_async_16(tile + r * LD + col, in ? src + (i64)(row0 + r) * D + col : src, in ? 16 : 0);
    }
}

// The row max over the 4 lanes (t = 0..3) that hold one accumulator row.
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// -- forward -----------------------------------------------------------------------------

// grid (ceil(Tq / 64) * B * Hq), block 128, dynamic shared memory
// forward_mma_shared(HEAD_DIM) (cupy_backend.py). Warp w takes query rows
// [m0 + 16 w, m0 + 16 w + 16) with Q in registers; K and V tiles of 64 keys
// stream through shared memory: V(j) loads while S = Q K(j)^T runs, K(j + 1)
// while O += P V(j) runs.
template <typename T, int HEAD_DIM>
__global__ void attention_forward_mma(const T* q, const T* k, const T* v, const bool* key_mask,
                                      T* o, float* lse, int Hq, int Hkv, int Tq, int Tk, int D,
                                      float scale, int causal) {
    typedef MmaTiles<HEAD_DIM> Tiles;
    constexpr int LD = Tiles::LD, BM = Tiles::M, BN = Tiles::N;
    constexpr int KD = HEAD_DIM / 16, NS = BN / 8, NO = HEAD_DIM / 8;
    static_assert(BM == BN, "the Q tile is staged in the V tile");
    DYNAMIC_SHARED(shared);
    T* k_tile = reinterpret_cast<T*>(shared);                        // (BN, LD)
    T* v_tile = k_tile + BN * LD;                                    // (BN, LD): Q first
    float* key_bias = reinterpret_cast<float*>(v_tile + BN * LD);    // (BN,)

    const QueryTile<T> tile(k, v, key_mask, BM, Hq, Hkv, Tq, Tk, D);
    const int bh = tile.bh, m0 = tile.m0;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t = lane & 3;
    const int row0 = m0 + warp * 16 + (lane >> 2);  // rows row0 (c[0], c[1]) and row0 + 8 (c[2], c[3])
    const int key_end = causal ? causal_key_end(min(m0 + BM, Tq) - 1, Tq, Tk) : Tk;
    const int all_see = causal ? causal_key_end(m0, Tq, Tk) : Tk;  // keys below it: seen by every row
    const int row_end[2] = {causal ? causal_key_end(row0, Tq, Tk) : Tk,
                            causal ? causal_key_end(row0 + 8, Tq, Tk) : Tk};
    const float scale_log2 = scale * FLASH_LOG2E;

    load_tile_async<T, HEAD_DIM>(v_tile, q + (i64)bh * Tq * D, m0, BM, Tq, D);
    if (key_end > 0) {
        load_tile_async<T, HEAD_DIM>(k_tile, tile.k_head, 0, BN, key_end, D);
        load_key_bias(key_bias, tile.mask_row, 0, BN, key_end);
    }
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    u32 qf[KD][4];
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) load_a(qf[kk], v_tile + warp * 16 * LD + kk * 16, LD);
    __syncthreads();  // every warp holds its Q: the V tile is free

    float acc[NO][4];
    zero(acc);
    float m_run[2] = {neg_inf(), neg_inf()}, l_run[2] = {0.0f, 0.0f};
    for (int n0 = 0; n0 < key_end; n0 += BN) {
        if (n0 > 0) {
            cp_async_wait_all();
            __syncthreads();  // K(n0) landed; every warp is done with V(n0 - BN)
        }
        load_tile_async<T, HEAD_DIM>(v_tile, tile.v_head, n0, BN, key_end, D);
        cp_async_commit();

        float s[NS][4];
        zero(s);
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) mma_row<T, NS, true>(s, qf[kk], k_tile + kk * 16, LD);

        const bool edge = tile.mask_row != nullptr || n0 + BN > all_see;
        float tile_max[2] = {neg_inf(), neg_inf()};
#pragma unroll
        for (int nb = 0; nb < NS; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int j = nb * 8 + 2 * t + (e & 1);
                float x = s[nb][e] * scale_log2;
                if (edge && !(key_bias[j] == 0.0f && n0 + j < row_end[e >> 1])) x = neg_inf();
                s[nb][e] = x;
                tile_max[e >> 1] = fmaxf(tile_max[e >> 1], x);
            }
        }
        float m_use[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float m_new = fmaxf(m_run[r], quad_max(tile_max[r]));
            m_use[r] = m_new == neg_inf() ? 0.0f : m_new;  // no key seen yet: every p is 0
            const float alpha = exp2f(m_run[r] - m_use[r]);
            m_run[r] = m_new;
            l_run[r] *= alpha;
#pragma unroll
            for (int nb = 0; nb < NO; ++nb) {
                acc[nb][2 * r] *= alpha;
                acc[nb][2 * r + 1] *= alpha;
            }
        }
#pragma unroll
        for (int nb = 0; nb < NS; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[nb][e] = exp2f(s[nb][e] - m_use[e >> 1]);
                l_run[e >> 1] += s[nb][e];
            }
        }
        u32 pf[NS / 2][4];
        accumulators_to_a<T, NS>(pf, s);

        cp_async_wait_all();
        __syncthreads();  // V(n0) landed; every warp is done with K(n0) and its key_bias
        if (n0 + BN < key_end) {
            load_tile_async<T, HEAD_DIM>(k_tile, tile.k_head, n0 + BN, BN, key_end, D);
            load_key_bias(key_bias, tile.mask_row, n0 + BN, BN, key_end);
        }
        cp_async_commit();
#pragma unroll
        for (int kk = 0; kk < NS / 2; ++kk) mma_row<T, NO, false>(acc, pf[kk], v_tile + kk * 16 * LD, LD);
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float l = quad_sum(l_run[r]);
        const int row = row0 + 8 * r;
        if (row >= Tq) continue;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        store_row<T, NO>(o + ((i64)bh * Tq + row) * D, acc, r, t, D, inv);
        if (t == 0) lse[(i64)bh * Tq + row] = l > 0.0f ? (m_run[r] + log2f(l)) * FLASH_LN2 : neg_inf();
    }
}

// -- backward: dQ over query blocks --------------------------------------------------------

// grid (ceil(Tq / 64) * B * Hq), block 128, dynamic shared memory
// backward_q_mma_shared(HEAD_DIM). Q in registers and dO in shared memory
// for the block's 64 rows; per K/V tile: S = Q K^T, dP = dO V^T,
// dS = P (dP - delta) with P from lse, dQ += dS K; dQ = scale dQ at the end.
template <typename T, int HEAD_DIM>
__global__ void attention_backward_q_mma(const T* q, const T* k, const T* v, const T* d_out,
                                         const float* lse, const float* delta,
                                         const bool* key_mask, T* dq, int Hq, int Hkv, int Tq,
                                         int Tk, int D, float scale, int causal) {
    typedef MmaTiles<HEAD_DIM> Tiles;
    constexpr int LD = Tiles::LD, BM = Tiles::M, BN = Tiles::N_DQ;
    constexpr int KD = HEAD_DIM / 16, NS = BN / 8, NO = HEAD_DIM / 8;
    static_assert(BM <= 2 * BN, "the Q tile is staged in the K and V tiles");
    DYNAMIC_SHARED(shared);
    T* do_tile = reinterpret_cast<T*>(shared);                      // (BM, LD)
    T* k_tile = do_tile + BM * LD;                                  // (BN, LD); with V: Q first
    T* v_tile = k_tile + BN * LD;                                   // (BN, LD)
    float* key_bias = reinterpret_cast<float*>(v_tile + BN * LD);   // (BN,)

    const QueryTile<T> tile(k, v, key_mask, BM, Hq, Hkv, Tq, Tk, D);
    const int bh = tile.bh, m0 = tile.m0;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t = lane & 3;
    const int row0 = m0 + warp * 16 + (lane >> 2);
    const int key_end = causal ? causal_key_end(min(m0 + BM, Tq) - 1, Tq, Tk) : Tk;
    const int all_see = causal ? causal_key_end(m0, Tq, Tk) : Tk;
    const int row_end[2] = {causal ? causal_key_end(row0, Tq, Tk) : Tk,
                            causal ? causal_key_end(row0 + 8, Tq, Tk) : Tk};
    float row_lse2[2], row_delta[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + 8 * r;
        row_lse2[r] = row < Tq ? lse_to_log2(lse[(i64)bh * Tq + row]) : pos_inf();
        row_delta[r] = row < Tq ? delta[(i64)bh * Tq + row] : 0.0f;
    }
    const float scale_log2 = scale * FLASH_LOG2E;

    load_tile_async<T, HEAD_DIM>(k_tile, q + (i64)bh * Tq * D, m0, BM, Tq, D);
    load_tile_async<T, HEAD_DIM>(do_tile, d_out + (i64)bh * Tq * D, m0, BM, Tq, D);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    u32 qf[KD][4];
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) load_a(qf[kk], k_tile + warp * 16 * LD + kk * 16, LD);

    float dq_acc[NO][4];
    zero(dq_acc);
    for (int n0 = 0; n0 < key_end; n0 += BN) {
        __syncthreads();  // every warp is done with the previous K and V tiles (or with Q)
        load_tile_async<T, HEAD_DIM>(k_tile, tile.k_head, n0, BN, key_end, D);
        load_tile_async<T, HEAD_DIM>(v_tile, tile.v_head, n0, BN, key_end, D);
        load_key_bias(key_bias, tile.mask_row, n0, BN, key_end);
        cp_async_commit();
        cp_async_wait_all();
        __syncthreads();

        float s[NS][4], dp[NS][4];
        zero(s);
        zero(dp);
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
            u32 af[4];
            load_a(af, do_tile + warp * 16 * LD + kk * 16, LD);
            mma_row<T, NS, true>(s, qf[kk], k_tile + kk * 16, LD);
            mma_row<T, NS, true>(dp, af, v_tile + kk * 16, LD);
        }
        const bool edge = tile.mask_row != nullptr || n0 + BN > all_see;
#pragma unroll
        for (int nb = 0; nb < NS; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int j = nb * 8 + 2 * t + (e & 1), r = e >> 1;
                const bool visible = !edge || (key_bias[j] == 0.0f && n0 + j < row_end[r]);
                const float p = visible ? exp2f(s[nb][e] * scale_log2 - row_lse2[r]) : 0.0f;
                s[nb][e] = p * (dp[nb][e] - row_delta[r]);
            }
        }
        u32 dsf[NS / 2][4];
        accumulators_to_a<T, NS>(dsf, s);
#pragma unroll
        for (int kk = 0; kk < NS / 2; ++kk) mma_row<T, NO, false>(dq_acc, dsf[kk], k_tile + kk * 16 * LD, LD);
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + 8 * r;
        if (row >= Tq) continue;
        store_row<T, NO>(dq + ((i64)bh * Tq + row) * D, dq_acc, r, t, D, scale);
    }
}

// -- backward: dK and dV over key blocks -----------------------------------------------------

// grid (ceil(Tk / 64) * B * Hkv), block 128, dynamic shared memory
// backward_kv_mma_shared(HEAD_DIM). Warp w owns keys [n0 + 16 w, n0 + 16 w + 16)
// and their dK, dV accumulators; the Q and dO tiles of every query head of the
// group stream past (summed here in a fixed order: GQA needs no atomics):
// S^T = K Q^T, dP^T = V dO^T, P^T from lse, dV += P^T dO,
// dS^T = P^T (dP^T - delta), dK += dS^T Q; dK = scale dK at the end.
template <typename T, int HEAD_DIM>
__global__ void attention_backward_kv_mma(const T* q, const T* k, const T* v, const T* d_out,
                                          const float* lse, const float* delta,
                                          const bool* key_mask, T* dk, T* dv, int Hq, int Hkv,
                                          int Tq, int Tk, int D, float scale, int causal) {
    typedef MmaTiles<HEAD_DIM> Tiles;
    constexpr int LD = Tiles::LD, BN = Tiles::N_KV, BM = Tiles::M_KV;
    constexpr int KD = HEAD_DIM / 16, NS = BM / 8, NO = HEAD_DIM / 8;
    DYNAMIC_SHARED(shared);
    T* k_tile = reinterpret_cast<T*>(shared);                        // (BN, LD)
    T* v_tile = k_tile + BN * LD;                                    // (BN, LD)
    T* q_tile = v_tile + BN * LD;                                    // (BM, LD)
    T* do_tile = q_tile + BM * LD;                                   // (BM, LD)
    float* lse2_tile = reinterpret_cast<float*>(do_tile + BM * LD);  // (BM,)
    float* delta_tile = lse2_tile + BM;                              // (BM,)

    const int tiles = cdiv(Tk, BN);
    const int bhk = blockIdx.x / tiles;
    const int n0 = (int)(blockIdx.x % tiles) * BN;
    const int b = bhk / Hkv, hk = bhk % Hkv, group = Hq / Hkv;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t = lane & 3;
    const int key0 = n0 + warp * 16 + (lane >> 2);  // keys key0 (c[0], c[1]) and key0 + 8 (c[2], c[3])
    bool key_ok[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int key = key0 + 8 * r;
        key_ok[r] = key < Tk && !(key_mask && key_mask[(i64)b * Tk + key]);
    }
    const float scale_log2 = scale * FLASH_LOG2E;

    load_tile_async<T, HEAD_DIM>(k_tile, k + (i64)bhk * Tk * D, n0, BN, Tk, D);
    load_tile_async<T, HEAD_DIM>(v_tile, v + (i64)bhk * Tk * D, n0, BN, Tk, D);
    cp_async_commit();

    float dk_acc[NO][4], dv_acc[NO][4];
    zero(dk_acc);
    zero(dv_acc);
    const int q_begin = causal ? causal_first_query(n0, Tq, Tk) : 0;
    const int all_see = causal ? causal_first_query(n0 + BN - 1, Tq, Tk) : 0;  // queries from it see every key
    for (int g = 0; g < group; ++g) {
        const i64 bh = (i64)b * Hq + hk * group + g;
        for (int m0 = q_begin; m0 < Tq; m0 += BM) {
            __syncthreads();  // every warp is done with the previous Q and dO tiles
            load_tile_async<T, HEAD_DIM>(q_tile, q + bh * Tq * D, m0, BM, Tq, D);
            load_tile_async<T, HEAD_DIM>(do_tile, d_out + bh * Tq * D, m0, BM, Tq, D);
            cp_async_commit();
            for (int i = threadIdx.x; i < BM; i += MMA_THREADS) {
                const bool in = m0 + i < Tq;
                lse2_tile[i] = in ? lse_to_log2(lse[bh * Tq + m0 + i]) : pos_inf();
                delta_tile[i] = in ? delta[bh * Tq + m0 + i] : 0.0f;
            }
            cp_async_wait_all();
            __syncthreads();

            float st[NS][4], dpt[NS][4];
            zero(st);
            zero(dpt);
#pragma unroll
            for (int kk = 0; kk < KD; ++kk) {
                u32 ka[4], va[4];
                load_a(ka, k_tile + warp * 16 * LD + kk * 16, LD);
                load_a(va, v_tile + warp * 16 * LD + kk * 16, LD);
                mma_row<T, NS, true>(st, ka, q_tile + kk * 16, LD);
                mma_row<T, NS, true>(dpt, va, do_tile + kk * 16, LD);
            }
            const bool edge = causal && m0 < all_see;
#pragma unroll
            for (int nb = 0; nb < NS; ++nb) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = nb * 8 + 2 * t + (e & 1), r = e >> 1;
                    const bool visible =
                        key_ok[r] && (!edge || key0 + 8 * r < causal_key_end(m0 + i, Tq, Tk));
                    const float p = visible ? exp2f(st[nb][e] * scale_log2 - lse2_tile[i]) : 0.0f;
                    st[nb][e] = p;
                    dpt[nb][e] = p * (dpt[nb][e] - delta_tile[i]);
                }
            }
            u32 pa[NS / 2][4], dsa[NS / 2][4];
            accumulators_to_a<T, NS>(pa, st);
            accumulators_to_a<T, NS>(dsa, dpt);
#pragma unroll
            for (int kk = 0; kk < NS / 2; ++kk) {
                mma_row<T, NO, false>(dv_acc, pa[kk], do_tile + kk * 16 * LD, LD);
                mma_row<T, NO, false>(dk_acc, dsa[kk], q_tile + kk * 16 * LD, LD);
            }
        }
    }
    cp_async_wait_all();  // K and V may still be in flight when no query sees the block

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int key = key0 + 8 * r;
        if (key >= Tk) continue;
        const i64 at = ((i64)bhk * Tk + key) * D;
        store_row<T, NO>(dk + at, dk_acc, r, t, D, scale);
        store_row<T, NO>(dv + at, dv_acc, r, t, D, 1.0f);  // x * 1.0f is x, exactly
    }
}

// embedding.cu: embedding lookup (forward) and its deterministic scatter-add
// (backward). Row kernels, compiled after common.cuh.

// weight (V, C); ids (n,) int64, already checked to lie in [0, V); out (n, C).
template <typename T>
__global__ void embedding_forward(const T* weight, const i64* ids, T* out, i64 n, int C) {
    const i64 row = row_index();
    if (row >= n) return;
    const T* w = weight + ids[row] * C;
    T* o = out + row * C;
    for (int j = threadIdx.x; j < C; j += blockDim.x) o[j] = w[j];
}

// dy (n, C); dweight (V, C). The backend sorts the positions by (id, position)
// into order (n,) and counts them into offsets (V + 1,), so that the
// positions holding id v are order[offsets[v] : offsets[v + 1]], ascending.
// Row v of dweight is their sum in that order: no atomics, the same bits on
// every run, and the same order as a sequential scatter-add.
template <typename T>
__global__ void embedding_backward(const T* dy, const i64* order, const i64* offsets, T* dweight,
                                   i64 V, int C) {
    const i64 v = row_index();
    if (v >= V) return;
    const i64 begin = offsets[v], end = offsets[v + 1];
    T* dw = dweight + v * C;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float acc = 0.0f;
        for (i64 k = begin; k < end; ++k) acc += to_float(dy[order[k] * C + j]);
        dw[j] = from_float<T>(acc);
    }
}

// loss.cu: cross-entropy over rows of logits with ignore_index and label
// smoothing, forward and backward. Row kernels, compiled after common.cuh.

// logits (N, V); targets (N,) int64; lse, loss_rows (N,) float.
// One read of each row gives its log-sum-exp (online max / sum), the sum of
// its logits (for label smoothing) and, from thread 0, the target's logit:
//   loss_rows[r] = (1 - ls) * (lse - z[t]) + ls * (lse - mean(z)),
// and 0 where t == ignore_index. The mean over counted rows is taken by the
// backend.
template <typename T>
__global__ void cross_entropy_forward(const T* logits, const i64* targets, float* lse,
                                      float* loss_rows, i64 N, int V, i64 ignore_index,
                                      float smoothing) {
    __shared__ float scratch[32];
    const i64 row = row_index();
    if (row >= N) return;
    const T* zr = logits + row * V;

    float m = neg_inf(), s = 0.0f, sum_z = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float z = to_float(zr[j]);
        online_lse_update(m, s, z);
        sum_z += z;
    }
    float row_max;
    const float row_sum = online_lse_merge(m, s, row_max, scratch);
    sum_z = row_reduce<SumOp>(sum_z, scratch);

    if (threadIdx.x == 0) {
        const float l = row_max + logf(row_sum);
        lse[row] = l;
        const i64 t = targets[row];
        loss_rows[row] = t == ignore_index
            ? 0.0f
            : (1.0f - smoothing) * (l - to_float(zr[t])) + smoothing * (l - sum_z / V);
    }
}

// logits, dlogits (N, V); targets (N,) int64; lse (N,) float.
//   dlogits = scale * (exp(z - lse) - off - on * onehot(t)),
// with off = ls / V, on = 1 - ls and scale = grad / (counted rows), all
// rounded to float by the backend; rows with t == ignore_index are 0.
template <typename T>
__global__ void cross_entropy_backward(const T* logits, const i64* targets, const float* lse,
                                       T* dlogits, i64 N, int V, i64 ignore_index, float off,
                                       float on, float scale) {
    const i64 row = row_index();
    if (row >= N) return;
    const T* zr = logits + row * V;
    T* dr = dlogits + row * V;
    const i64 t = targets[row];
    if (t == ignore_index) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) dr[j] = from_float<T>(0.0f);
        return;
    }
    const float l = lse[row];
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float d = expf(to_float(zr[j]) - l) - off;
        if (j == t) d -= on;
        dr[j] = from_float<T>(d * scale);
    }
}

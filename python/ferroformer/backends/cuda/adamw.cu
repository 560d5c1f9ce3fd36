// adamw.cu: one AdamW step in place, PyTorch semantics (decoupled weight decay
// applied first, bias-corrected moments). A flat kernel, compiled after
// common.cuh.

// param, grad, m, v (n,). The backend rounds each coefficient to float once,
// as the NumPy reference does: decay = 1 - lr * weight_decay,
// one_minus_beta1 = 1 - beta1, bias1 = 1 - beta1^step (likewise for beta2).
//   param = param * decay - lr * (m / bias1) / (sqrt(v / bias2) + eps)
template <typename T>
__global__ void adamw_step(T* param, const T* grad, T* m, T* v, i64 n, float lr, float beta1,
                           float one_minus_beta1, float beta2, float one_minus_beta2, float eps,
                           float decay, float bias1, float bias2) {
    GRID_STRIDE_LOOP(i, n) {
        const float g = to_float(grad[i]);
        const float mi = beta1 * to_float(m[i]) + one_minus_beta1 * g;
        const float vi = beta2 * to_float(v[i]) + one_minus_beta2 * g * g;
        m[i] = from_float<T>(mi);
        v[i] = from_float<T>(vi);
        const float p = to_float(param[i]) * decay;
        param[i] = from_float<T>(p - lr * (mi / bias1) / (sqrtf(vi / bias2) + eps));
    }
}

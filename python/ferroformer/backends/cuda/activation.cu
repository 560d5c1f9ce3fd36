// activation.cu: elementwise activations, forward and backward: GELU (tanh
// and erf forms), ReLU, SiLU, and SwiGLU = silu(gate) * up. Flat kernels,
// compiled after common.cuh.
//
// Each activation is a struct with forward(x) and backward(dy, x) = dy * f'(x);
// activation_forward / activation_backward are instantiated per struct.

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), written as
// x * sigmoid(2u) (1 + tanh(u) = 2 sigmoid(2u)), which stays accurate in the
// negative tail where 1 + tanh(u) would cancel.
struct GeluTanh {
    static constexpr float k0 = 0.7978845608028654f;  // sqrt(2 / pi)
    static constexpr float k1 = 0.044715f;
    static __device__ __forceinline__ float forward(float x) {
        const float u = k0 * (x + k1 * x * x * x);
        return x * sigmoid(2.0f * u);
    }
    // d/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) u'
    //      = s + 2 x s (1 - s) u',  s = sigmoid(2u)
    static __device__ __forceinline__ float backward(float dy, float x) {
        const float u = k0 * (x + k1 * x * x * x);
        const float du = k0 * (1.0f + 3.0f * k1 * x * x);
        const float s = sigmoid(2.0f * u);
        return dy * (s + 2.0f * x * s * (1.0f - s) * du);
    }
};

// x * Phi(x), Phi(x) = 0.5 erfc(-x / sqrt(2)) (erfc keeps the negative tail).
struct GeluErf {
    static constexpr float rsqrt2 = 0.7071067811865476f;     // 1 / sqrt(2)
    static constexpr float rsqrt2pi = 0.3989422804014327f;   // 1 / sqrt(2 pi)
    static __device__ __forceinline__ float forward(float x) {
        return x * 0.5f * erfcf(-x * rsqrt2);
    }
    static __device__ __forceinline__ float backward(float dy, float x) {
        const float cdf = 0.5f * erfcf(-x * rsqrt2);
        const float pdf = rsqrt2pi * expf(-0.5f * x * x);
        return dy * (cdf + x * pdf);
    }
};

struct Relu {
    static __device__ __forceinline__ float forward(float x) { return x > 0.0f ? x : 0.0f; }
    static __device__ __forceinline__ float backward(float dy, float x) { return x > 0.0f ? dy : 0.0f; }
};

struct Silu {
    static __device__ __forceinline__ float forward(float x) { return x * sigmoid(x); }
    static __device__ __forceinline__ float backward(float dy, float x) {
        const float s = sigmoid(x);
        return dy * s * (1.0f + x * (1.0f - s));
    }
};

// x, y (n,)
template <typename T, typename Act>
__global__ void activation_forward(const T* x, T* y, i64 n) {
    GRID_STRIDE_LOOP(i, n) y[i] = from_float<T>(Act::forward(to_float(x[i])));
}

// dy, x, dx (n,)
template <typename T, typename Act>
__global__ void activation_backward(const T* dy, const T* x, T* dx, i64 n) {
    GRID_STRIDE_LOOP(i, n) dx[i] = from_float<T>(Act::backward(to_float(dy[i]), to_float(x[i])));
}

// gate, up, h (n,): h = silu(gate) * up
template <typename T>
__global__ void swiglu_forward(const T* gate, const T* up, T* h, i64 n) {
    GRID_STRIDE_LOOP(i, n) h[i] = from_float<T>(Silu::forward(to_float(gate[i])) * to_float(up[i]));
}

// dh, gate, up, dgate, dup (n,): dgate = silu'(gate) * dh * up, dup = dh * silu(gate)
template <typename T>
__global__ void swiglu_backward(const T* dh, const T* gate, const T* up, T* dgate, T* dup, i64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float g = to_float(gate[i]);
        const float d = to_float(dh[i]);
        dgate[i] = from_float<T>(Silu::backward(d * to_float(up[i]), g));
        dup[i] = from_float<T>(d * Silu::forward(g));
    }
}

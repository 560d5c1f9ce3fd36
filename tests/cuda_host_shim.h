// cuda_host_shim.h: runs CUDA kernels of the cupy backend on the CPU, for tests.
//
// tests/cuda_host.py compiles this header, then common.cuh and a kernel family,
// with g++ -DFERRO_HOST -DFERRO_HALF_TYPES into a shared library. Every CUDA
// thread of a block is a fiber with its own stack (switched by hand, x86-64
// System V); the blocks of a grid run one after another, so a function-local
// `static` is a block's shared memory.
//
// What it enforces while the kernel runs (a violation fails the launch):
//   - __syncthreads is reached by every thread of the block, none having exited;
//   - a warp-wide operation (shuffle, ldmatrix, mma) is reached by all 32 lanes
//     of the warp, all at the same operation, with a full mask;
//   - ldmatrix rows and cp.async destinations are 16-byte aligned addresses
//     inside the dynamic shared memory; cp.async sources are 16-byte aligned;
//   - cp.async data lands only at cp_async_wait_all (reading it before, or
//     without a barrier after it, reads stale bytes);
//   - dynamic shared memory starts as 0xff bytes (NaN in every float type) in
//     every block, so reading what no thread wrote poisons the results; so
//     does reading past its end, and writing past it fails the launch.
// Fibers run until they block, in ascending or descending thread order (the
// order argument), which exposes most missing barriers as stale reads. Not
// modelled: timing, divergence inside a warp between two collectives,
// memory ordering other than at barriers.
//
// The warp-level primitives follow the PTX ISA: fragments of
// mma.m16n8k16.row.col (f16 / bf16 operands, f32 accumulators) and of
// ldmatrix.m8n8.x4(.trans).b16, written here from the ISA's tables and not
// from the kernels, so that the two are independent.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <sys/mman.h>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) alignas(n)
#define __shared__ static
#define DYNAMIC_SHARED(name) unsigned char* name = ferro_host::shared_memory()

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

using std::isfinite;
using std::max;
using std::min;

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
inline float __fmul_rn(float a, float b) { return a * b; }

// -- half types: storage only, converted with round-to-nearest-even ---------------------------

struct __half {
    unsigned short bits;
};
struct __nv_bfloat16 {
    unsigned short bits;
};
inline float __half2float(__half h) {
    _Float16 f;
    std::memcpy(&f, &h.bits, 2);
    return (float)f;
}
inline __half __float2half_rn(float x) {
    const _Float16 f = (_Float16)x;
    __half h;
    std::memcpy(&h.bits, &f, 2);
    return h;
}
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline float __bfloat162float(__nv_bfloat16 b) { return __int_as_float((int)((unsigned)b.bits << 16)); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
    unsigned u = (unsigned)__float_as_int(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fc0};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(unsigned short)(u >> 16)};
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.bits; }

namespace ferro_host {

// -- fibers ------------------------------------------------------------------------------

extern "C" void ferro_host_swap(void** save_sp, void* load_sp);
extern "C" void ferro_host_trampoline();
asm(R"(
    .text
    .globl ferro_host_swap
    .type ferro_host_swap, @function
ferro_host_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ferro_host_swap, .-ferro_host_swap

    .globl ferro_host_trampoline
    .type ferro_host_trampoline, @function
ferro_host_trampoline:
    callq *%r12
    ud2
    .size ferro_host_trampoline, .-ferro_host_trampoline
)");

typedef void (*Complete)(const void* const* in, void* const* out);

enum State { RUNNABLE, AT_BARRIER, AT_WARP, DONE };

struct CpAsync {
    void* dst;
    const void* src;
    int bytes;
};

struct Fiber {
    void* sp = nullptr;
    char* stack = nullptr;
    State state = DONE;
    Complete complete = nullptr;  // the warp-wide operation the lane waits at
    const void* warp_in = nullptr;
    void* warp_out = nullptr;
    std::vector<CpAsync> pending;  // cp.async copies issued, not yet landed
};

constexpr size_t STACK_BYTES = 256 * 1024, GUARD_BYTES = 4096;
constexpr size_t SHARED_GUARD = 4096;  // 0xff bytes after the dynamic shared memory, checked after each block

struct Launch {
    std::vector<Fiber> fibers;
    int threads = 0, current = -1;
    void* scheduler_sp = nullptr;
    std::function<void()> body;
    unsigned char* shared = nullptr;
    size_t shared_bytes = 0, shared_capacity = 0;
    std::string error;
};
inline Launch L;

inline std::string where() {
    char buf[160];
    std::snprintf(buf, sizeof buf, " (block %u,%u,%u thread %u,%u,%u)", blockIdx.x, blockIdx.y,
                  blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    return buf;
}

inline void fail(const std::string& what) {
    if (L.error.empty()) L.error = what + where();
}

inline unsigned char* shared_memory() { return L.shared; }

inline Fiber& me() { return L.fibers[L.current]; }

inline void yield() { ferro_host_swap(&me().sp, L.scheduler_sp); }

inline void fiber_main() {
    L.body();
    me().state = DONE;
    yield();
    std::abort();  // a finished fiber is never resumed
}

inline void start_fiber(Fiber& f) {
    if (!f.stack) {
        void* mem = mmap(nullptr, STACK_BYTES + GUARD_BYTES, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) std::abort();
        mprotect(mem, GUARD_BYTES, PROT_NONE);  // a stack overflow faults instead of corrupting
        f.stack = static_cast<char*>(mem) + GUARD_BYTES;
    }
    unsigned mxcsr;
    unsigned short fpu_cw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpu_cw));
    // The frame ferro_host_swap pops: control words, r15..r12, rbx, rbp, then it
    // returns into the trampoline with rsp 16-byte aligned, which calls r12.
    uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack + STACK_BYTES) & ~uintptr_t(15)) - 16;
    uint64_t* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = reinterpret_cast<uint64_t>(&ferro_host_trampoline);
    *--sp = 0;                                           // rbp
    *--sp = 0;                                           // rbx
    *--sp = reinterpret_cast<uint64_t>(&fiber_main);     // r12
    *--sp = 0;                                           // r13
    *--sp = 0;                                           // r14
    *--sp = 0;                                           // r15
    *--sp = (uint64_t)mxcsr | ((uint64_t)fpu_cw << 32);  // control words
    f.sp = sp;
    f.state = RUNNABLE;
    f.complete = nullptr;
    f.pending.clear();
}

inline void set_thread_index(int i) {
    threadIdx.x = i % blockDim.x;
    threadIdx.y = (i / blockDim.x) % blockDim.y;
    threadIdx.z = i / (blockDim.x * blockDim.y);
}

inline void try_warp(int warp) {
    const int first = 32 * warp, last = std::min(first + 32, L.threads);
    int waiting = 0, done = 0;
    for (int i = first; i < last; ++i) {
        waiting += L.fibers[i].state == AT_WARP;
        done += L.fibers[i].state == DONE;
    }
    if (waiting == 0) return;
    if (done || last - first != 32) {
        fail("a warp-wide operation in a warp with exited or missing lanes");
        return;
    }
    if (waiting < 32) return;  // not every lane is there yet
    const void* in[32];
    void* out[32];
    for (int i = first; i < last; ++i) {
        if (L.fibers[i].complete != L.fibers[first].complete) {
            fail("lanes of one warp wait at different warp-wide operations");
            return;
        }
        in[i - first] = L.fibers[i].warp_in;
        out[i - first] = L.fibers[i].warp_out;
    }
    L.fibers[first].complete(in, out);
    for (int i = first; i < last; ++i) L.fibers[i].state = RUNNABLE;
}

inline void try_barrier() {
    int waiting = 0, done = 0;
    for (int i = 0; i < L.threads; ++i) {
        waiting += L.fibers[i].state == AT_BARRIER;
        done += L.fibers[i].state == DONE;
    }
    if (waiting == 0) return;
    if (done) {
        fail("__syncthreads while some threads of the block have exited");
        return;
    }
    if (waiting < L.threads) return;
    for (int i = 0; i < L.threads; ++i) L.fibers[i].state = RUNNABLE;
}

inline bool shared_guard_intact() {
    for (size_t i = L.shared_bytes; i < L.shared_bytes + SHARED_GUARD; ++i)
        if (L.shared[i] != 0xff) return false;
    return true;
}

inline bool run_block(int order) {
    std::memset(L.shared, 0xff, L.shared_bytes + SHARED_GUARD);
    for (int i = 0; i < L.threads; ++i) start_fiber(L.fibers[i]);
    for (;;) {
        bool ran = false;
        for (int n = 0; n < L.threads; ++n) {
            const int i = order ? L.threads - 1 - n : n;
            if (L.fibers[i].state != RUNNABLE) continue;
            L.current = i;
            set_thread_index(i);
            ferro_host_swap(&L.scheduler_sp, L.fibers[i].sp);
            ran = true;
            try_warp(i / 32);
            try_barrier();
            if (!L.error.empty()) return false;
        }
        int done = 0;
        for (int i = 0; i < L.threads; ++i) done += L.fibers[i].state == DONE;
        if (done == L.threads) {
            if (shared_guard_intact()) return true;
            set_thread_index(0);
            fail("a thread wrote past the dynamic shared memory the launch asked for");
            return false;
        }
        if (!ran) {
            set_thread_index(0);
            fail("deadlock: threads wait at barriers or warp-wide operations no one else reaches");
            return false;
        }
    }
}

inline int launch(const unsigned* grid, const unsigned* block, size_t shared_bytes, int order,
                  std::function<void()> body, char* error, size_t error_len) {
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    L.threads = (int)(block[0] * block[1] * block[2]);
    if ((int)L.fibers.size() < L.threads) L.fibers.resize(L.threads);
    if (shared_bytes + SHARED_GUARD > L.shared_capacity) {
        std::free(L.shared);
        L.shared_capacity = (shared_bytes + SHARED_GUARD + 127) / 128 * 128;
        L.shared = static_cast<unsigned char*>(std::aligned_alloc(128, L.shared_capacity));
    }
    L.shared_bytes = shared_bytes;
    L.body = std::move(body);
    L.error.clear();
    for (unsigned z = 0; z < grid[2]; ++z)
        for (unsigned y = 0; y < grid[1]; ++y)
            for (unsigned x = 0; x < grid[0]; ++x) {
                blockIdx = {x, y, z};
                if (!run_block(order)) {
                    std::snprintf(error, error_len, "%s", L.error.c_str());
                    return 1;
                }
            }
    return 0;
}

// Calls kernel k with its arguments read from args[i] (each points at a value of
// the parameter's type).
template <typename... P, size_t... I>
inline void call_kernel(void (*k)(P...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<P>*>(args[I])...);
}

template <typename... P>
inline void call_kernel(void (*k)(P...), void** args) {
    call_kernel(k, args, std::index_sequence_for<P...>{});
}

// -- warp-wide operations --------------------------------------------------------------------

inline void warp_op(Complete complete, const void* in, void* out) {
    Fiber& f = me();
    f.complete = complete;
    f.warp_in = in;
    f.warp_out = out;
    f.state = AT_WARP;
    yield();
}

struct ShuffleIn {
    unsigned mask, value;
    int lane_mask, width;
};

inline void complete_shuffle_xor(const void* const* in, void* const* out) {
    for (int lane = 0; lane < 32; ++lane) {
        const ShuffleIn* a = static_cast<const ShuffleIn*>(in[lane]);
        if (a->mask != 0xffffffffu || a->width != 32) {
            fail("__shfl_xor_sync with a partial mask or width");
            return;
        }
        const int from = lane ^ (a->lane_mask & 31);
        *static_cast<unsigned*>(out[lane]) = static_cast<const ShuffleIn*>(in[from])->value;
    }
}

inline bool in_shared(const void* p, size_t bytes) {
    const unsigned char* c = static_cast<const unsigned char*>(p);
    return c >= L.shared && c + bytes <= L.shared + L.shared_bytes;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

inline unsigned short load16(const unsigned char* p) {
    unsigned short v;
    std::memcpy(&v, p, 2);
    return v;
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lanes 8i..8i+7 give the
// addresses of rows 0..7 of matrix i (8 b16 values each); lane 4 g + t receives
// in register i the elements (row g, cols 2t, 2t+1) of matrix i, or with
// .trans the elements (rows 2t, 2t+1, col g), the lower index in the low half.
template <bool TRANS>
inline void complete_ldmatrix(const void* const* in, void* const* out) {
    const unsigned char* rows[32];
    for (int lane = 0; lane < 32; ++lane) {
        rows[lane] = *static_cast<const unsigned char* const*>(in[lane]);
        if (!aligned16(rows[lane]) || !in_shared(rows[lane], 16)) {
            fail("ldmatrix row address not 16-byte aligned inside dynamic shared memory");
            return;
        }
    }
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane & 3;
        unsigned* r = static_cast<unsigned*>(out[lane]);
        for (int i = 0; i < 4; ++i) {
            const unsigned char* const* m = rows + 8 * i;
            const unsigned lo = TRANS ? load16(m[2 * t] + 2 * g) : load16(m[g] + 2 * (2 * t));
            const unsigned hi = TRANS ? load16(m[2 * t + 1] + 2 * g) : load16(m[g] + 2 * (2 * t + 1));
            r[i] = lo | (hi << 16);
        }
    }
}

inline float half_bits_to_float(unsigned short b, __half) { return __half2float(__half{b}); }
inline float half_bits_to_float(unsigned short b, __nv_bfloat16) {
    return __bfloat162float(__nv_bfloat16{b});
}

struct MmaIn {
    const float* c;
    const unsigned* a;
    unsigned b0, b1;
};

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, lane 4 g + t:
//   A a0..a7 (4 registers): row g for a0, a1, a4, a5, row g + 8 otherwise;
//                           col 2t + (i & 1) for i < 4, + 8 for i >= 4
//   B b0..b3 (2 registers): row 2t + (i & 1) for i < 2, + 8 for i >= 2; col g
//   C c0..c3:               row g for c0, c1, g + 8 for c2, c3; col 2t + (i & 1)
template <typename T>
inline void complete_mma(const void* const* in, void* const* out) {
    float A[16][16], B[16][8], C[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const MmaIn* x = static_cast<const MmaIn*>(in[lane]);
        const int g = lane >> 2, t = lane & 3;
        unsigned short a[8];
        for (int r = 0; r < 4; ++r) {
            a[2 * r] = (unsigned short)(x->a[r] & 0xffff);
            a[2 * r + 1] = (unsigned short)(x->a[r] >> 16);
        }
        for (int i = 0; i < 8; ++i) {
            const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
            const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
            A[row][col] = half_bits_to_float(a[i], T{});
        }
        const unsigned short b[4] = {(unsigned short)(x->b0 & 0xffff), (unsigned short)(x->b0 >> 16),
                                     (unsigned short)(x->b1 & 0xffff), (unsigned short)(x->b1 >> 16)};
        for (int i = 0; i < 4; ++i) B[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g] = half_bits_to_float(b[i], T{});
        for (int i = 0; i < 4; ++i) C[i < 2 ? g : g + 8][2 * t + (i & 1)] = x->c[i];
    }
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane & 3;
        float* d = static_cast<float*>(out[lane]);
        for (int i = 0; i < 4; ++i) {
            const int row = i < 2 ? g : g + 8, col = 2 * t + (i & 1);
            float acc = C[row][col];
            for (int kk = 0; kk < 16; ++kk) acc += A[row][kk] * B[kk][col];
            d[i] = acc;
        }
    }
}

}  // namespace ferro_host

// -- the CUDA names the kernels call ------------------------------------------------------------

inline void __syncthreads() {
    ferro_host::me().state = ferro_host::AT_BARRIER;
    ferro_host::yield();
}

template <typename V>
inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32) {
    static_assert(sizeof(V) == 4, "32-bit shuffles only");
    ferro_host::ShuffleIn in{mask, 0, lane_mask, width};
    std::memcpy(&in.value, &v, 4);
    unsigned out;
    ferro_host::warp_op(ferro_host::complete_shuffle_xor, &in, &out);
    V r;
    std::memcpy(&r, &out, 4);
    return r;
}

inline void ldmatrix_x4(unsigned (&r)[4], const void* row) {
    ferro_host::warp_op(ferro_host::complete_ldmatrix<false>, &row, r);
}

inline void ldmatrix_x4_trans(unsigned (&r)[4], const void* row) {
    ferro_host::warp_op(ferro_host::complete_ldmatrix<true>, &row, r);
}

template <typename T>
inline void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    const ferro_host::MmaIn in{d, a, b0, b1};
    float out[4];
    ferro_host::warp_op(ferro_host::complete_mma<T>, &in, out);
    std::memcpy(d, out, sizeof out);
}

inline void cp_async_16(void* dst, const void* src, int src_bytes) {
    if (!ferro_host::aligned16(dst) || !ferro_host::in_shared(dst, 16)) {
        ferro_host::fail("cp.async destination not 16-byte aligned inside dynamic shared memory");
    } else if (!ferro_host::aligned16(src)) {
        ferro_host::fail("cp.async source not 16-byte aligned");
    } else if (src_bytes < 0 || src_bytes > 16) {
        ferro_host::fail("cp.async source size outside [0, 16]");
    } else {
        ferro_host::me().pending.push_back({dst, src, src_bytes});
    }
}

inline void cp_async_commit() {}

inline void cp_async_wait_all() {
    for (const ferro_host::CpAsync& c : ferro_host::me().pending) {
        std::memcpy(c.dst, c.src, c.bytes);
        std::memset(static_cast<unsigned char*>(c.dst) + c.bytes, 0, 16 - c.bytes);
    }
    ferro_host::me().pending.clear();
}

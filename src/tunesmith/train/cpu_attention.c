/* Causal attention inside documents ("varlen"), fp32, for training on the CPU.

   Compiled at first use by train/cpu_attention.py with HEAD_DIM fixed (-DHEAD_DIM=8 ...), so every
   loop over the head dimension has a constant length and vectorises. Layout (token-major, contiguous):
   q, out, dq [T, H, D]; k, v, dk, dv [T, HKV, D]; lse [T, H]; cu [documents + 1] token offsets.
   A task is (document, kv head): all query heads of that kv group over all of the document's queries,
   so a task owns its rows of dk and dv and tasks run on separate threads without locks. The tasks
   are spread over OpenMP threads (dynamic schedule, largest first); built with -fopenmp, the library
   binds to the libgomp.so.1 torch has already loaded, so it runs on torch's own thread pool (a second
   pool would fight torch's spinning OpenMP workers for the same cores).
   Each query attends to the keys of its own document up to itself, and to nothing else: work is
   sum(L^2) / 2 over the documents, not rows x S^2 as with a dense block-causal mask.

   No -ffast-math (with -shared, gcc 12 links crtfastmath, which turns on flush-to-zero for the whole
   process): the build asks for reassociation only, and exp is our own vectorisable polynomial. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<the model's head dimension>"
#endif
#define D ((int64_t)HEAD_DIM)

/* e^x for x <= 0 (scores minus their max, or minus the log-sum-exp): 2^(x log2 e) with a degree-6
   polynomial for 2^f on [0, 1); relative error ~2e-7. Inputs below -87 give ~1e-38 (never a denormal). */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float t = x * 1.4426950408889634f;
    float whole = floorf(t);
    float f = t - whole;
    float p = 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    union { float f; int32_t i; } bits = {p};
    bits.i += (int32_t)whole * (1 << 23);
    return bits.f;
}

/* One kv head of one document, transposed into [D, L] so score loops run along the keys. */
static void transpose_head(const float* restrict src, float* restrict dst, int64_t start, int64_t length,
                           int64_t num_kv_heads, int64_t kv_head) {
    for (int64_t j = 0; j < length; j++) {
        const float* row = src + ((start + j) * num_kv_heads + kv_head) * D;
        for (int64_t d = 0; d < D; d++) dst[d * length + j] = row[d];
    }
}

static int thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* work: num_threads x work_size floats, work_size >= 2 * D * L + L (L = the longest document). */
void attention_forward(const float* restrict q, const float* restrict k, const float* restrict v,
                       float* restrict out, float* restrict lse, const int64_t* restrict cu,
                       const int64_t* restrict tasks, int64_t num_tasks, int64_t num_heads,
                       int64_t num_kv_heads, float scale, float* restrict work_all, int64_t work_size,
                       int64_t num_threads) {
    const int64_t group = num_heads / num_kv_heads;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t t = 0; t < num_tasks; t++) {
        float* restrict work = work_all + thread_index() * work_size;
        const int64_t doc = tasks[t] / num_kv_heads, kv_head = tasks[t] % num_kv_heads;
        const int64_t start = cu[doc], length = cu[doc + 1] - start;
        float* restrict kt = work;
        float* restrict vt = kt + D * length;
        float* restrict p = vt + D * length;
        transpose_head(k, kt, start, length, num_kv_heads, kv_head);
        transpose_head(v, vt, start, length, num_kv_heads, kv_head);
        for (int64_t g = 0; g < group; g++) {
            const int64_t head = kv_head * group + g;
            for (int64_t i = 0; i < length; i++) {
                const int64_t row = (start + i) * num_heads + head;
                const int64_t n = i + 1; /* causal: keys 0..i of this document */
                float qs[D];
                for (int64_t d = 0; d < D; d++) qs[d] = q[row * D + d] * scale;
                for (int64_t j = 0; j < n; j++) {
                    float s = 0.f;
                    for (int64_t d = 0; d < D; d++) s += qs[d] * kt[d * length + j];
                    p[j] = s;
                }
                float top = -INFINITY;
                for (int64_t j = 0; j < n; j++) top = p[j] > top ? p[j] : top;
                float sum = 0.f;
                for (int64_t j = 0; j < n; j++) {
                    p[j] = exp_nonpositive(p[j] - top);
                    sum += p[j];
                }
                const float inverse = 1.f / sum;
                for (int64_t d = 0; d < D; d++) {
                    const float* restrict vd = vt + d * length;
                    float acc = 0.f;
                    for (int64_t j = 0; j < n; j++) acc += p[j] * vd[j];
                    out[row * D + d] = acc * inverse;
                }
                lse[row] = top + logf(sum);
            }
        }
    }
}

/* work: num_threads x work_size floats, work_size >= 4 * D * L + 2 * L. */
void attention_backward(const float* restrict q, const float* restrict k, const float* restrict v,
                        const float* restrict out, const float* restrict dout, const float* restrict lse,
                        float* restrict dq, float* restrict dk, float* restrict dv,
                        const int64_t* restrict cu, const int64_t* restrict tasks, int64_t num_tasks,
                        int64_t num_heads, int64_t num_kv_heads, float scale, float* restrict work_all,
                        int64_t work_size, int64_t num_threads) {
    const int64_t group = num_heads / num_kv_heads;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t t = 0; t < num_tasks; t++) {
        float* restrict work = work_all + thread_index() * work_size;
        const int64_t doc = tasks[t] / num_kv_heads, kv_head = tasks[t] % num_kv_heads;
        const int64_t start = cu[doc], length = cu[doc + 1] - start;
        float* restrict kt = work;
        float* restrict vt = kt + D * length;
        float* restrict dkt = vt + D * length;
        float* restrict dvt = dkt + D * length;
        float* restrict p = dvt + D * length;
        float* restrict ds = p + length;
        transpose_head(k, kt, start, length, num_kv_heads, kv_head);
        transpose_head(v, vt, start, length, num_kv_heads, kv_head);
        memset(dkt, 0, sizeof(float) * 2 * D * length);
        for (int64_t g = 0; g < group; g++) {
            const int64_t head = kv_head * group + g;
            for (int64_t i = 0; i < length; i++) {
                const int64_t row = (start + i) * num_heads + head;
                const float* restrict qi = q + row * D;
                const float* restrict doi = dout + row * D;
                const int64_t n = i + 1;
                /* delta = dO . O: the softmax backward's row term */
                float delta = 0.f;
                for (int64_t d = 0; d < D; d++) delta += doi[d] * out[row * D + d];
                for (int64_t j = 0; j < n; j++) {
                    p[j] = 0.f;
                    ds[j] = 0.f;
                }
                for (int64_t d = 0; d < D; d++) {
                    const float qd = qi[d] * scale, dod = doi[d];
                    const float* restrict kd = kt + d * length;
                    const float* restrict vd = vt + d * length;
                    for (int64_t j = 0; j < n; j++) {
                        p[j] += qd * kd[j];
                        ds[j] += dod * vd[j];
                    }
                }
                /* p = softmax row recomputed from the saved log-sum-exp; ds = dS (scaled) */
                const float row_lse = lse[row];
                for (int64_t j = 0; j < n; j++) {
                    p[j] = exp_nonpositive(p[j] - row_lse);
                    ds[j] = p[j] * (ds[j] - delta) * scale;
                }
                for (int64_t d = 0; d < D; d++) {
                    const float* restrict kd = kt + d * length;
                    float* restrict dkd = dkt + d * length;
                    float* restrict dvd = dvt + d * length;
                    const float qd = qi[d], dod = doi[d];
                    float acc = 0.f;
                    for (int64_t j = 0; j < n; j++) {
                        acc += ds[j] * kd[j];
                        dkd[j] += ds[j] * qd;
                        dvd[j] += p[j] * dod;
                    }
                    dq[row * D + d] = acc;
                }
            }
        }
        for (int64_t j = 0; j < length; j++)
            for (int64_t d = 0; d < D; d++) {
                dk[((start + j) * num_kv_heads + kv_head) * D + d] = dkt[d * length + j];
                dv[((start + j) * num_kv_heads + kv_head) * D + d] = dvt[d * length + j];
            }
    }
}

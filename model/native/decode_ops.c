/* Inference glue in native code: a decode step's grouped-query attention for one sequence in one
 * call, RMSNorm, a prefill's RoPE, and the int8 head's top-k and rescoring.
 *
 * A decode step's attention is small work (one query row against the cached keys) done through
 * many torch operations: views, the rotation, two cache writes, SDPA and its checks, each a
 * dispatch of a few microseconds, about 80 us a layer on a 2-core Xeon, more than the layer's
 * matmuls take on a small model. Here it is one pass: rotate the query and key heads, write the key
 * and value into the cache, and attend with a numerically safe softmax. Plain C compiled with each
 * kernel path's flags, its dot products and sums vectorized through `omp simd` (GCC 12 leaves the
 * exponential scalar), built into the same library as the matmul kernels (see native_build.py).
 *
 * Every decode of a sequence's token goes through here (the lone step, the batched step and the
 * speculative check row by row), so they agree bit for bit; a prompt's attention is prefill_attention.c's. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exp_poly.h"
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Rotate-half RoPE on the first `rot` dims of one head: cos and sin hold `rot` values (the
 * frequencies twice), as the engine's rotary table gives them for the position. */
static void rotate(float *restrict x, const float *restrict cos, const float *restrict sin, int64_t rot) {
    const int64_t half = rot / 2;
    for (int64_t i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* Rotate the query and key heads of one row's projection qkv [hq * d | hkv * d | hkv * d] in place
 * (cos, sin: `rot` values for its position) and write its key and value into the layer's cache
 * kc, vc [hkv, max_len, d] at `pos`. */
static void write_row(float *restrict qkv, const float *restrict cos, const float *restrict sin, int64_t rot,
                      float *restrict kc, float *restrict vc, int64_t max_len, int64_t pos, int64_t hq, int64_t hkv,
                      int64_t d) {
    float *q = qkv, *k = qkv + hq * d, *v = k + hkv * d;
    for (int64_t h = 0; h < hq; h++)
        rotate(q + h * d, cos, sin, rot);
    for (int64_t g = 0; g < hkv; g++) {
        rotate(k + g * d, cos, sin, rot);
        memcpy(kc + (g * max_len + pos) * d, k + g * d, sizeof(float) * (size_t)d);
        memcpy(vc + (g * max_len + pos) * d, v + g * d, sizeof(float) * (size_t)d);
    }
}

/* The lanes of a vector summed: the ISA's fixed tree of shuffles and adds on x86 (log2(VL) dependent
 * adds), lane order elsewhere; one order in a build, so the same bits wherever it runs. */
static inline float lanes_sum(vf a) {
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps((__m512)a);
#elif defined(__AVX2__)
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128((__m256)a), _mm256_extractf128_ps((__m256)a, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
#else
    float total = 0.0f;
    for (int e = 0; e < VL; e++)
        total += a[e];
    return total;
#endif
}

/* a . b over d floats: vectors of VL, then the tail, in that order. */
static inline float dot(const float *restrict a, const float *restrict b, int64_t d) {
    vf acc = {0};
    int64_t i = 0;
    for (; i + VL <= d; i += VL) {
        vf x, y;
        memcpy(&x, a + i, sizeof x);
        memcpy(&y, b + i, sizeof y);
        acc += x * y;
    }
    float total = lanes_sum(acc);
    for (; i < d; i++)
        total += a[i] * b[i];
    return total;
}

/* s[0..n) = e^(s - top) in place, returning their sum: vectors of VL, a short last one masked. */
static float exp_sum(float *restrict s, int64_t n, float top) {
    vf acc = {0};
    int64_t j = 0;
    for (; j + VL <= n; j += VL) {
        vf x;
        memcpy(&x, s + j, sizeof x);
        x = vexp_le0(x - top);
        memcpy(s + j, &x, sizeof x);
        acc += x;
    }
    float total = lanes_sum(acc);
    if (j < n) {
        vf x = {0};
        memcpy(&x, s + j, sizeof(float) * (size_t)(n - j));
        x = vexp_le0(x - top);
        for (int64_t e = 0; e < n - j; e++) {
            s[j + e] = x[e];
            total += x[e];
        }
    }
    return total;
}

#if defined(__AVX512F__) || defined(__AVX2__)
#define DOTS4 1
/* q . k[e] for four keys (d a multiple of the vector width): the four partial-sum vectors folded
 * together, so a key's sum runs in the same order in whichever slot it comes (and a short last block
 * repeats a key rather than reading past the cache). Four reductions for the price of about one.
 * (Several queries a pass, sharing the keys' loads, measured slower: their sums spill.) */
static inline void dots4(const float *restrict q, const float *const k[4], int64_t d, float out[4]) {
#if defined(__AVX512F__)
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t i = 0; i < d; i += 16) {
        const __m512 qv = _mm512_loadu_ps(q + i);
        for (int e = 0; e < 4; e++)
            a[e] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k[e] + i), a[e]);
    }
    /* quarters: t01 = [a0 q0+q2, a0 q1+q3, a1 q0+q2, a1 q1+q3], t23 likewise */
    const __m512 t01 = _mm512_add_ps(_mm512_shuffle_f32x4(a[0], a[1], 0x44), _mm512_shuffle_f32x4(a[0], a[1], 0xEE));
    const __m512 t23 = _mm512_add_ps(_mm512_shuffle_f32x4(a[2], a[3], 0x44), _mm512_shuffle_f32x4(a[2], a[3], 0xEE));
    /* quarter e: key e's four partial sums */
    __m512 u = _mm512_add_ps(_mm512_shuffle_f32x4(t01, t23, 0x88), _mm512_shuffle_f32x4(t01, t23, 0xDD));
    u = _mm512_add_ps(u, _mm512_permute_ps(u, 0x4E));
    u = _mm512_add_ps(u, _mm512_permute_ps(u, 0xB1));
    _mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), u)));
#else
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t i = 0; i < d; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        for (int e = 0; e < 4; e++)
            a[e] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[e] + i), a[e]);
    }
    const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)));
#endif
}
#endif

/* Scores of one key/value head for rows 0..m of a run: the `group` query heads of row r (q[r], group
 * * d floats) against keys [nmax, d] (row r sees the first n[r] of them, n rising with r), scaled,
 * into s + (r * group + h) * nmax. Each block of four keys is read from memory once for every row and
 * head; a key's score is computed alike whichever row, block or slot asks for it. */
static void run_scores(const float *const *q, int64_t m, int64_t group, const int64_t *n, int64_t nmax,
                       const float *restrict keys, int64_t d, float *restrict s) {
    const float scale = 1.0f / sqrtf((float)d);
#if defined(DOTS4)
    if (d % VL == 0) {
        for (int64_t j = 0; j < nmax; j += 4) {
            const float *k[4];
            for (int e = 0; e < 4; e++)
                k[e] = keys + (j + e < nmax ? j + e : nmax - 1) * d;
            for (int64_t r = 0; r < m; r++) {
                if (j >= n[r])
                    continue;
                for (int64_t h = 0; h < group; h++) {
                    float o[4], *row = s + (r * group + h) * nmax;
                    dots4(q[r] + h * d, k, d, o);
                    for (int64_t e = 0; e < 4 && j + e < n[r]; e++)
                        row[j + e] = o[e] * scale;
                }
            }
        }
        return;
    }
#endif
    for (int64_t j0 = 0; j0 < nmax; j0 += 16) /* 16 keys at a time, in L1 while every row uses them */
        for (int64_t r = 0; r < m; r++)
            for (int64_t h = 0; h < group; h++)
                for (int64_t j = j0; j < j0 + 16 && j < n[r]; j++)
                    s[(r * group + h) * nmax + j] = dot(q[r] + h * d, keys + j * d, d) * scale;
}

/* o[0..nv vectors) += sum over j in [j0, j1) of p[j] * v_j, in j's order, the sums in registers: a
 * tile of values read from memory once and applied to every row and head in turn. */
static inline void weigh_values(float *restrict o, const float *restrict p, const float *restrict vals, int64_t j0,
                                int64_t j1, int64_t d, int nv) {
    vf acc[8];
    for (int c = 0; c < nv; c++)
        memcpy(&acc[c], o + c * VL, sizeof(vf));
    for (int64_t j = j0; j < j1; j++) {
        const float *v = vals + j * d;
        for (int c = 0; c < nv; c++) {
            vf x;
            memcpy(&x, v + c * VL, sizeof x);
            acc[c] += p[j] * x;
        }
    }
    for (int c = 0; c < nv; c++)
        memcpy(o + c * VL, &acc[c], sizeof(vf));
}

/* up to eight vectors of sums in registers where there are registers for them (16 ymm, 32 zmm, 32
 * NEON q for 16); SSE's 16 xmm are too few (measured slower than the sums in memory) */
#if defined(__AVX2__) || defined(__AVX512F__) || defined(__aarch64__)
#define WEIGH_WIDE 1
#else
#define WEIGH_WIDE 0
#endif
#define VALUE_TILE 64 /* keys' values a tile: 16 KiB at d = 64, in L1 while every row uses them */

/* Rows 0..m of a run against one key/value head: scores (run_scores), each row and head's softmax
 * over its own n[r] keys, then the values in tiles; out[r] gets row r's group * d. s: m * group *
 * (nmax + 1) floats of scratch. A row's numbers depend on its own query and keys only, in a fixed order,
 * so a lone step, a batch row and a speculative check's row agree bit for bit. */
static void attend_run(const float *const *q, int64_t m, int64_t group, const int64_t *n, const float *restrict keys,
                       const float *restrict vals, int64_t d, float *restrict s, float *const *out) {
    const int64_t nmax = n[m - 1];
    float *inv = s + m * group * nmax;
    run_scores(q, m, group, n, nmax, keys, d, s);
    for (int64_t r = 0; r < m; r++) {
        for (int64_t h = 0; h < group; h++) {
            float *row = s + (r * group + h) * nmax, top = -INFINITY;
            for (int64_t j = 0; j < n[r]; j++)
                top = row[j] > top ? row[j] : top;
            inv[r * group + h] = 1.0f / exp_sum(row, n[r], top);
        }
        memset(out[r], 0, sizeof(float) * (size_t)(group * d));
    }
#if WEIGH_WIDE
    const int64_t dv = d / VL * VL;
#endif
    for (int64_t j0 = 0; j0 < nmax; j0 += VALUE_TILE) {
        const int64_t j1 = j0 + VALUE_TILE < nmax ? j0 + VALUE_TILE : nmax;
        for (int64_t r = 0; r < m; r++) {
            const int64_t jr = j1 < n[r] ? j1 : n[r];
            if (jr <= j0)
                continue;
            for (int64_t h = 0; h < group; h++) {
                const float *p = s + (r * group + h) * nmax;
                float *o = out[r] + h * d;
#if WEIGH_WIDE
                int64_t i = 0;
                for (; i + 8 * VL <= dv; i += 8 * VL)
                    weigh_values(o + i, p, vals + i, j0, jr, d, 8);
                for (; i + 4 * VL <= dv; i += 4 * VL)
                    weigh_values(o + i, p, vals + i, j0, jr, d, 4);
                for (; i < dv; i += VL)
                    weigh_values(o + i, p, vals + i, j0, jr, d, 1);
                for (; i < d; i++)
                    for (int64_t j = j0; j < jr; j++)
                        o[i] += p[j] * vals[j * d + i];
#else
                for (int64_t j = j0; j < jr; j++) {
                    const float *v = vals + j * d;
                    #pragma omp simd
                    for (int64_t i = 0; i < d; i++)
                        o[i] += p[j] * v[i];
                }
#endif
            }
        }
    }
    for (int64_t r = 0; r < m; r++)
        for (int64_t h = 0; h < group; h++)
            for (int64_t i = 0; i < d; i++)
                out[r][h * d + i] *= inv[r * group + h];
}

/* Float scratch of at least `count`, kept per thread between calls up to 4 MiB (a check's scores at
 * a few thousand positions) so that a step does not map and unmap pages; larger ones are the
 * caller's to free (*owned). */
static float *scratch_floats(size_t count, int *owned) {
    static __thread float *kept;
    static __thread size_t kept_count;
    *owned = 0;
    if (count <= kept_count)
        return kept;
    if (count > ((size_t)1 << 20)) {
        *owned = 1;
        return malloc(sizeof(float) * count);
    }
    float *grown = realloc(kept, sizeof(float) * count);
    if (!grown)
        return NULL;
    kept = grown;
    kept_count = count;
    return kept;
}

/* Row r - 1 and row r are one sequence's consecutive tokens (a speculative check): the same cache
 * and window start, the position one further. */
static int same_run(int64_t r, float *const *kcs, int64_t stride, const int64_t *max_len, const int64_t *pos,
                    const int64_t *lo) {
    return kcs[(r - 1) * stride] == kcs[r * stride] && max_len[r - 1] == max_len[r] && lo[r - 1] == lo[r] &&
           pos[r - 1] + 1 == pos[r];
}

/* Attention for `rows` decode rows whose keys and values are in their caches already (write_row):
 * row r's queries (qkv + r * width) against cache kcs[r * stride], vcs[r * stride] ([hkv, max_len[r],
 * d]) over positions lo[r]..pos[r], into out + r * hq * d. A speculative check's rows are a run of
 * one sequence, whose keys and values are read once for all of them (attend_run); a batch's rows are
 * runs of one. One parallel region for every (run, key/value head), runs cut into chunks of rows
 * when there are fewer of those than threads. */
static void attend_rows(int64_t rows, const float *restrict qkv, int64_t width, float *const *kcs,
                        float *const *vcs, int64_t stride, const int64_t *max_len, const int64_t *pos,
                        const int64_t *lo, int64_t hq, int64_t hkv, int64_t d, float *restrict out) {
    const int64_t group = hq / hkv;
    int64_t work = 0, runs = 0;
    for (int64_t r = 0; r < rows; r++) {
        work += (pos[r] - lo[r] + 1) * hq * d;
        runs += r == 0 || !same_run(r, kcs, stride, max_len, pos, lo);
    }
    int64_t threads = 1;
#if defined(_OPENMP)
    threads = omp_get_max_threads();
#endif
    const int64_t split = runs * hkv >= threads ? 1 : (threads + runs * hkv - 1) / (runs * hkv);
    int64_t start[rows + 1], chunks = 0; /* chunk c: rows start[c] .. start[c + 1] */
    for (int64_t a = 0, b; a < rows; a = b) {
        for (b = a + 1; b < rows && same_run(b, kcs, stride, max_len, pos, lo); b++)
            ;
        const int64_t pieces = split < b - a ? split : b - a;
        for (int64_t p = 0; p < pieces; p++)
            start[chunks++] = a + (b - a) * p / pieces;
    }
    start[chunks] = rows;
    #pragma omp parallel for collapse(2) schedule(static) if (work >= 65536)
    for (int64_t c = 0; c < chunks; c++)
        for (int64_t g = 0; g < hkv; g++) {
            const int64_t r0 = start[c], m = start[c + 1] - r0;
            const float *qs[m];
            float *outs[m];
            int64_t n[m];
            for (int64_t r = 0; r < m; r++) {
                qs[r] = qkv + (r0 + r) * width + g * group * d;
                outs[r] = out + (r0 + r) * hq * d + g * group * d;
                n[r] = pos[r0 + r] - lo[r0 + r] + 1;
            }
            int owned;
            float *s = scratch_floats((size_t)(m * group * (n[m - 1] + 1)), &owned);
            if (!s) { /* out of memory: zero rows, not a crash */
                for (int64_t r = 0; r < m; r++)
                    memset(outs[r], 0, sizeof(float) * (size_t)(group * d));
                continue;
            }
            const int64_t at = (g * max_len[r0] + lo[r0]) * d;
            attend_run(qs, m, group, n, kcs[r0 * stride] + at, vcs[r0 * stride] + at, d, s, outs);
            if (owned)
                free(s);
        }
}

/* qkv: the step's projection [hq * d | hkv * d | hkv * d] (rotated in place); cos, sin: `rot`
 * values for position `pos`; kc, vc: the layer's cache [hkv, max_len, d]. Writes the rotated key and
 * the value at `pos`, attends over positions lo..pos (lo > 0 for a sliding window) with scale
 * 1/sqrt(d), and writes [hq * d] to out: what `demi_decode_rows` does for each of its rows. */
void demi_attend_step(float *restrict qkv, const float *restrict cos, const float *restrict sin, int64_t rot,
                      float *restrict kc, float *restrict vc, int64_t max_len, int64_t pos, int64_t lo,
                      int64_t hq, int64_t hkv, int64_t d, float *restrict out) {
    write_row(qkv, cos, sin, rot, kc, vc, max_len, pos, hq, hkv, d);
    float *kcs[1] = {kc}, *vcs[1] = {vc};
    attend_rows(1, qkv, 0, kcs, vcs, 0, &max_len, &pos, &lo, hq, hkv, d, out);
}

/* RMSNorm of `rows` rows of n: y = (x / sqrt(mean(x^2) + eps)) * w, Hugging Face's order of
 * operations, in one pass over a row instead of torch's six (its CPU rms_norm is a composite of
 * pow, mean, add, rsqrt and two multiplies, ~12 us for one row of 896 on a 2-core Xeon). */
void demi_rms_norm(const float *restrict x, const float *restrict w, float eps, float *restrict y, int64_t rows,
                   int64_t n) {
    #pragma omp parallel for schedule(static) if (rows * n >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        float sq = 0.0f;
        #pragma omp simd reduction(+ : sq)
        for (int64_t i = 0; i < n; i++)
            sq += xr[i] * xr[i];
        const float inv = 1.0f / sqrtf(sq / (float)n + eps);
        #pragma omp simd
        for (int64_t i = 0; i < n; i++)
            yr[i] = (xr[i] * inv) * w[i];
    }
}

/* The k largest of x[0..n) (k <= n): their indices into idx, in no particular order; of equal
 * values the first one wins. A min-heap of the k best so far, and a scan that only looks closer at
 * a run of 64 values when one of them beats the heap's smallest: one pass over a 151,936-token
 * vocabulary's logits in a few microseconds, where torch's topk takes ~400 us on 2 cores. */
static void sift_down(float *val, int64_t *idx, int64_t k, int64_t i) {
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < k && (val[l] < val[m] || (val[l] == val[m] && idx[l] > idx[m])))
            m = l;
        if (r < k && (val[r] < val[m] || (val[r] == val[m] && idx[r] > idx[m])))
            m = r;
        if (m == i)
            return;
        float tv = val[i];
        val[i] = val[m];
        val[m] = tv;
        int64_t ti = idx[i];
        idx[i] = idx[m];
        idx[m] = ti;
        i = m;
    }
}

static void top_k(const float *restrict x, int64_t n, int64_t k, int64_t *restrict idx) {
    float *val = malloc(sizeof(float) * (size_t)k);
    if (!val)
        return;
    for (int64_t i = 0; i < k; i++) {
        val[i] = x[i];
        idx[i] = i;
    }
    for (int64_t i = k / 2 - 1; i >= 0; i--)
        sift_down(val, idx, k, i);
    int64_t i = k;
    for (; i + 64 <= n; i += 64) {
        float top = x[i];
        #pragma omp simd reduction(max : top)
        for (int j = 0; j < 64; j++)
            top = x[i + j] > top ? x[i + j] : top;
        if (!(top > val[0]))
            continue;
        for (int j = 0; j < 64; j++)
            if (x[i + j] > val[0]) {
                val[0] = x[i + j];
                idx[0] = i + j;
                sift_down(val, idx, k, 0);
            }
    }
    for (; i < n; i++)
        if (x[i] > val[0]) {
            val[0] = x[i];
            idx[0] = i;
            sift_down(val, idx, k, 0);
        }
    free(val);
}

/* An int8 head's decode logits from its int4 shadow's (quantize.RescoredHead), for `rows` rows: in
 * each row of logits [rows, V], the k largest shadow logits are replaced by the exact int8 scores
 * (x . q[i]) * scale[i], fp32, from the int8 rows. The candidates' rows are prefetched first (k rows
 * scattered over the head: one latency for all of them, not one a row), and a batch's rows run on
 * the threads side by side; each row's numbers are its lone step's. */
void demi_rescore_rows(const float *restrict x, int64_t rows, const int8_t *restrict q, const float *restrict scale,
                       int64_t K, float *restrict logits, int64_t V, int64_t k) {
    #pragma omp parallel for schedule(static) if (rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t stack[256];
        int64_t *idx = k <= 256 ? stack : malloc(sizeof(int64_t) * (size_t)k);
        if (!idx)
            continue; /* out of memory: the row keeps its shadow logits */
        float *row_logits = logits + r * V;
        const float *xr = x + r * K;
        top_k(row_logits, V, k, idx);
        for (int64_t j = 0; j < k; j++)
            for (int64_t b = 0; b < K; b += 64)
                __builtin_prefetch(q + idx[j] * K + b, 0, 2); /* into L2: k rows are more than L1 holds */
        for (int64_t j = 0; j < k; j++) {
            const int8_t *w = q + idx[j] * K;
            float dot = 0.0f;
            #pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < K; i++)
                dot += xr[i] * (float)w[i];
            row_logits[idx[j]] = dot * scale[idx[j]];
        }
        if (idx != stack)
            free(idx);
    }
}

/* Rotate-half RoPE in place on `heads` heads of d values in each of `rows` rows (row r at x + r *
 * stride, with cos and sin rows of `rot` values at cos + r * rot): the query and key heads of a
 * prefill's fused q/k/v projection, one pass instead of torch's slices, negation, concatenation,
 * two multiplies and an add, with the very rotation a decode step applies (`rotate`). */
void demi_rotate_heads(float *restrict x, int64_t rows, int64_t stride, int64_t heads, int64_t d,
                       const float *restrict cos, const float *restrict sin, int64_t rot) {
    #pragma omp parallel for schedule(static) if (rows * heads * d >= 65536)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t h = 0; h < heads; h++)
            rotate(x + r * stride + h * d, cos + r * rot, sin + r * rot, rot);
}

/* SwiGLU's middle for `rows` rows of gate|up [rows, 2 * inter]: out = silu(gate) * up, with silu(g) =
 * g * sigmoid(g), sigmoid from e^-|g| on vectors (exp_poly.h, about 2 ulp; libm's scalar expf took
 * 0.39 ms of a 0.5B decode step for one row and 1.54 ms for a batch's four on an AMD EPYC Zen 4).
 * Decode-sized rows take it here in every decode path (a lone step, a batch's rows, a speculative
 * check), so they agree bit for bit with `demi_decode_rows`; a prefill keeps torch's SiLU. */
static inline vf silu_mul_vector(vf g, vf u) {
    const vf e = vexp_le0((vf)((vi)g | ((vi){0} + INT32_MIN))); /* e^-|g|, in (0, 1] */
    return g * (vselect(g >= 0.0f, (vf){0} + 1.0f, e) / (1.0f + e)) * u;
}

void demi_silu_mul(const float *restrict gu, int64_t rows, int64_t inter, float *restrict out) {
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gu + r * 2 * inter, *u = g + inter;
        float *o = out + r * inter;
        int64_t i = 0;
        for (; i + VL <= inter; i += VL) {
            vf gv, uv;
            memcpy(&gv, g + i, sizeof gv);
            memcpy(&uv, u + i, sizeof uv);
            const vf ov = silu_mul_vector(gv, uv);
            memcpy(o + i, &ov, sizeof ov);
        }
        if (i < inter) { /* a short last vector, zeros beyond */
            vf gv = {0}, uv = {0};
            memcpy(&gv, g + i, sizeof(float) * (size_t)(inter - i));
            memcpy(&uv, u + i, sizeof(float) * (size_t)(inter - i));
            const vf ov = silu_mul_vector(gv, uv);
            memcpy(o + i, &ov, sizeof(float) * (size_t)(inter - i));
        }
    }
}

/* One quantized linear as the matmul kernels take it: int8 (bits 8: w, scale) or int4 (bits 4: w
 * packed, scale, zero = the offset, group), bias or NULL; y [n] = x [k] @ W.T + bias. */
typedef struct {
    int64_t bits;
    const void *w;
    const void *scale; /* int8: fp32 per row; int4: IEEE half per group (qmatmul.c) */
    const void *zero;  /* int4: the half offsets */
    int64_t group;
    const float *bias;
    int64_t n, k;
    int64_t one_row; /* read one weight row at a time (see demi_linear_q8) */
    int64_t packed;  /* int8 packed by demi_pack_q8p (packed.c), not row-major */
} demi_lin;

/* A dense decoder layer: RMSNorm weights and the fused projections (q|k|v, gate|up). */
typedef struct {
    const float *norm_in, *norm_post;
    demi_lin qkv, o, gate_up, down;
} demi_layer;

void demi_linear_q8(const void *x, int x_kind, int64_t M, const int8_t *w, const float *scale, const float *bias,
                    void *y, int y_kind, int64_t N, int64_t K, int one_row);
void demi_linear_q4(const void *x, int x_kind, int64_t M, const uint8_t *w, const uint16_t *scale, const uint16_t *zero,
                    int64_t group, const float *bias, void *y, int y_kind, int64_t N, int64_t K, int one_row);
void demi_linear_q8p(const void *x, int x_kind, int64_t M, const uint8_t *p, const float *scale, const float *bias,
                     void *y, int y_kind, int64_t N, int64_t K);

static void lin(const demi_lin *l, const float *x, int64_t rows, float *y) {
    if (l->bits == 4)
        demi_linear_q4(x, 0, rows, (const uint8_t *)l->w, (const uint16_t *)l->scale, (const uint16_t *)l->zero,
                       l->group, l->bias, y, 0, l->n, l->k, (int)l->one_row);
    else if (l->packed)
        demi_linear_q8p(x, 0, rows, (const uint8_t *)l->w, (const float *)l->scale, l->bias, y, 0, l->n, l->k);
    else
        demi_linear_q8(x, 0, rows, (const int8_t *)l->w, (const float *)l->scale, l->bias, y, 0, l->n, l->k,
                       (int)l->one_row);
}

static void add_rows(float *restrict x, const float *restrict y, int64_t count) {
    for (int64_t j = 0; j < count; j++)
        x[j] = x[j] + y[j];
}

/* Decode steps of `rows` tokens through every layer in one call: x [rows, hidden] (the tokens'
 * embeddings) becomes the last layer's output. Row r is a token at position pos[r] of a sequence
 * whose layer i cache is kcs[r * n_layers + i], vcs[...] ([hkv, max_len[r], d]), attending over
 * lo[r]..pos[r], rotated by cos/sin row r (`rot` values each). Rows may be different sequences (a
 * batch) or consecutive tokens of one (a speculative check: row r + 1 sees the key row r wrote, as
 * rows are attended in order). The same functions in the same order as the layer-by-layer path
 * (RMSNorm, the matmul kernels, which work row by row whatever the row count, demi_attend_step's,
 * demi_silu_mul, fp32 residual adds), so every row agrees bit for bit with a lone step of that
 * token; what goes is ~10 torch dispatches a layer. scratch holds rows * (hidden * 2 +
 * (hq + 2 hkv) d + hq d + 3 inter) floats. */
void demi_decode_rows(float *restrict x, int64_t rows, const demi_layer *layers, int64_t n_layers,
                      float *const *kcs, float *const *vcs, const int64_t *max_len, const int64_t *pos,
                      const int64_t *lo, float eps, const float *cos, const float *sin, int64_t rot, int64_t hq,
                      int64_t hkv, int64_t d, float *restrict scratch) {
    const int64_t hidden = layers[0].o.n, inter = layers[0].down.k, width = (hq + 2 * hkv) * d;
    float *h = scratch, *qkv = h + rows * hidden, *att = qkv + rows * width, *out = att + rows * hq * d;
    float *gu = out + rows * hidden, *act = gu + rows * 2 * inter;
    for (int64_t i = 0; i < n_layers; i++) {
        const demi_layer *L = layers + i;
        demi_rms_norm(x, L->norm_in, eps, h, rows, hidden);
        lin(&L->qkv, h, rows, qkv);
        for (int64_t r = 0; r < rows; r++) /* every row's key and value first: a check's row r + 1 sees row r's */
            write_row(qkv + r * width, cos + r * rot, sin + r * rot, rot, kcs[r * n_layers + i], vcs[r * n_layers + i],
                      max_len[r], pos[r], hq, hkv, d);
        attend_rows(rows, qkv, width, kcs + i, vcs + i, n_layers, max_len, pos, lo, hq, hkv, d, att);
        lin(&L->o, att, rows, out);
        add_rows(x, out, rows * hidden);
        demi_rms_norm(x, L->norm_post, eps, h, rows, hidden);
        lin(&L->gate_up, h, rows, gu);
        demi_silu_mul(gu, rows, inter, act);
        lin(&L->down, act, rows, out);
        add_rows(x, out, rows * hidden);
    }
}

/* Quantized matmul for CPU inference: y = x @ W.T with int8 weights, one source for every CPU.
 *
 * Weights are int8 [N, K], row-major, with one fp32 scale per output row (Demi's int8 format), or
 * int4 in blocks of 32 along K with an fp32 scale and zero per block (see demi_repack_int4).
 * Activations are quantized on the fly to int8 in blocks of 32 with one fp32 scale each (the
 * scheme llama.cpp calls Q8_0), so the inner loop multiplies int8 by int8 into int32: a vector
 * instruction does 32 (AVX2), 64 (AVX-512) or 16 (NEON) multiply-adds, which keeps decode bound by
 * memory bandwidth rather than by widening every weight to float.
 *
 * The same file is compiled once per instruction-set path with that path's flags (see
 * native_kernels.py); the preprocessor picks the inner loop:
 *   AVX512VNNI   vpdpbusd on |x| and sign(x)*w          (Ice Lake, Sapphire Rapids, Zen 4, ...)
 *   AVX512BW     vpmaddubsw + vpmaddwd on the same      (Skylake-X, Cascade Lake)
 *   AVXVNNI      256-bit vpdpbusd (VEX)                 (Alder Lake, Zen 5 client)
 *   AVX2         vpmaddubsw + vpmaddwd, 256-bit         (Haswell and later, Zen 1-3)
 *   NEON dotprod sdot on signed int8                    (Apple M1+, Graviton 2+, Cortex-A76+)
 *   NEON         widening multiply + pairwise add       (older ARMv8)
 *   generic      scalar C                               (anything else; correctness reference)
 * |x| is at most 127 (activations are clamped to [-127, 127]), so vpmaddubsw never saturates.
 */
#include "quant_common.h" /* the system and intrinsics headers, and the helpers both sources share */


#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define DEMI_PATH "avx512vnni"
#elif defined(__AVX512F__) && defined(__AVX512BW__)
#define DEMI_PATH "avx512"
#elif defined(__AVX2__) && defined(__AVXVNNI__)
#define DEMI_PATH "avxvnni"
#elif defined(__AVX2__) && defined(__FMA__)
#define DEMI_PATH "avx2"
#elif defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD)
#define DEMI_PATH "neon-dotprod"
#elif defined(__ARM_NEON)
#define DEMI_PATH "neon"
#else
#define DEMI_PATH "generic"
#endif



const char *demi_path(void) { return DEMI_PATH; }

void demi_set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n > 0 ? n : 1);
#else
    (void)n;
#endif
}

/* Ends the calling thread's idle OpenMP workers (its next parallel region starts them again); 0 when
 * done, -1 where the runtime cannot. libgomp lets idle workers spin between parallel regions only
 * while it manages no more threads than there are CPUs: the workers a model's loading thread kept
 * made every later region of the model runner's thread sleep and wake its workers (about 40 us a
 * region on a 2-core AMD EPYC; a 0.5B decode step 14-16 ms on the loading thread, 21 ms on another). */
int demi_release_threads(void) {
#if defined(_OPENMP) && (defined(__GNUC__) || defined(__clang__))
    return omp_pause_resource_all(omp_pause_soft);
#else
    return -1;
#endif
}



#if defined(__ARM_NEON)
/* 32 int8 products summed into four int32 lanes: sdot where the CPU has it, else widening multiplies. */
static inline int32x4_t neon_dot32(int8x16_t x0, int8x16_t x1, int8x16_t w0, int8x16_t w1) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), x0, w0), x1, w1);
#else
    int16x8_t s0 = vmull_s8(vget_low_s8(x0), vget_low_s8(w0));
    s0 = vmlal_s8(s0, vget_high_s8(x0), vget_high_s8(w0));
    int16x8_t s1 = vmull_s8(vget_low_s8(x1), vget_low_s8(w1));
    s1 = vmlal_s8(s1, vget_high_s8(x1), vget_high_s8(w1));
    return vpadalq_s16(vpaddlq_s16(s0), s1);
#endif
}
#endif

#if defined(__AVX2__)
static inline float hsum256(__m256 a) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* The unsigned-by-signed byte dot, four products summed into each int32 lane: vpdpbusd where the
 * CPU has VNNI, else vpmaddubsw + vpmaddwd (which never saturates here: the unsigned side is at most
 * 127 for int8 activations and 15 for int4 weights). */
static inline __m256i udot(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__)
static inline __m512i udot512(__m512i u, __m512i s) {
#if defined(__AVX512VNNI__)
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s);
#else
    return _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1));
#endif
}

/* w with the sign of x (x's sign bits in `neg`): AVX-512 has no vpsignb */
static inline __m512i sign512(__m512i w, __mmask64 neg) {
    return _mm512_mask_sub_epi8(w, neg, _mm512_setzero_si512(), w);
}
#endif


/* Sum over blocks of d_b * sum_k x[k] w[k]: the int8 row dot of one weight row and one activation row.
 * The signed-by-signed product is |x| times w with x's sign (llama.cpp's trick for the unsigned dot). */
static inline float dot_q8(const int8_t *restrict w, const int8_t *restrict xq, const float *restrict xs,
                           int64_t K) {
    int64_t nb = K / QB, b = 0;
    float total = 0.0f;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    __m512 acc = _mm512_setzero_ps();
    for (; b + 2 <= nb; b += 2) {
        PREFETCH(w + b * QB);
        __m512i xv = _mm512_loadu_si512((const void *)(xq + b * QB));
        __m512i wv = _mm512_loadu_si512((const void *)(w + b * QB));
        __m512i p = udot512(_mm512_abs_epi8(xv), sign512(wv, _mm512_movepi8_mask(xv)));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_loadu_ps(xs + b * 8), acc);
    }
    total = _mm512_reduce_add_ps(acc);
#endif
#if defined(__AVX2__)
    __m256 acc2 = _mm256_setzero_ps();
    for (; b < nb; b++) {
        PREFETCH(w + b * QB);
        __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + b * QB));
        __m256i wv = _mm256_loadu_si256((const __m256i *)(w + b * QB));
        __m256i p = udot(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(wv, xv));
        acc2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_loadu_ps(xs + b * 8), acc2);
    }
    total += hsum256(acc2);
#elif defined(__ARM_NEON)
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (; b < nb; b++) {
        PREFETCH(w + b * QB);
        int8x16_t x0 = vld1q_s8(xq + b * QB), x1 = vld1q_s8(xq + b * QB + 16);
        int8x16_t w0 = vld1q_s8(w + b * QB), w1 = vld1q_s8(w + b * QB + 16);
        int32x4_t p = neon_dot32(x0, x1, w0, w1);
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(p), xs[b * 8]);
    }
    total += vaddvq_f32(acc);
#else
    for (; b < nb; b++) {
        int32_t s = 0;
        for (int i = 0; i < QB; i++)
            s += (int32_t)xq[b * QB + i] * (int32_t)w[b * QB + i];
        total += (float)s * xs[b * 8];
    }
#endif
    return total;
}

/* Four weight rows against one activation row: the activation side (its load, |x|, its sign, the
 * block scales) is shared, so each weight byte costs a load, a sign flip, a dot and a scale. */
static inline void dot4_q8(const int8_t *restrict w, int64_t K, const int8_t *restrict xq,
                           const float *restrict xs, float out[4]) {
    int64_t nb = K / QB, b = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (; b + 2 <= nb; b += 2) {
        __m512i xv = _mm512_loadu_si512((const void *)(xq + b * QB));
        __m512i ax = _mm512_abs_epi8(xv);
        __mmask64 neg = _mm512_movepi8_mask(xv);
        __m512 sc = _mm512_loadu_ps(xs + b * 8);
        for (int r = 0; r < 4; r++) {
            const int8_t *wb = w + r * K + b * QB;
            PREFETCH(wb);
            __m512i p = udot512(ax, sign512(_mm512_loadu_si512((const void *)wb), neg));
            a[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sc, a[r]);
        }
    }
    for (int r = 0; r < 4; r++) {
        out[r] = _mm512_reduce_add_ps(a[r]);
        if (b < nb) /* an odd last block */
            out[r] += dot_q8(w + r * K + b * QB, xq + b * QB, xs + b * 8, QB);
    }
#elif defined(__AVX2__)
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (; b < nb; b++) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + b * QB));
        __m256i ax = _mm256_sign_epi8(xv, xv);
        __m256 sc = _mm256_loadu_ps(xs + b * 8);
        for (int r = 0; r < 4; r++) {
            const int8_t *wb = w + r * K + b * QB;
            PREFETCH(wb);
            __m256i p = udot(ax, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)wb), xv));
            a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, a[r]);
        }
    }
    for (int r = 0; r < 4; r++)
        out[r] = hsum256(a[r]);
#else
    (void)b;
    (void)nb;
    for (int r = 0; r < 4; r++)
        out[r] = dot_q8(w + r * K, xq, xs, K);
#endif
}



#if defined(__AVX2__) || (defined(__AVX512F__) && defined(__AVX512BW__))
#define Q8_TILES 1
#define TILE_W 3   /* weight rows of a tile */
#define TILE_X 3   /* activation rows of a tile: 9 accumulators, 3 |x| and the operands fit 16 ymm */
/* (AVX-512 builds: the same tiles in zmm; the 0.5B layers' matmuls from memory in the avx512vnni
 * build on Zen 4, 5 / 17 rows, 30.4 / 84.9 -> 23.1 / 62.7 ms against its row kernels) */
#define CHUNK_X 48 /* activation rows per pass over a band: their int8 rows and scales stay in L2 */
#define BAND_W 24  /* weight rows per task: a band stays in L1 or L2 across a chunk's activation rows */

/* TW weight rows by TX activation rows over the whole of K (TW <= TILE_W, TX <= TILE_X): each
 * weight block loaded serves TX activation rows and each activation block TW weight rows, where the
 * row-by-row kernels above load a weight block for every activation row. What this gains is memory
 * traffic (with demi_linear_q8's chunks and bands), not arithmetic: a pair of 32-byte blocks costs
 * the same instructions either way. Every pair's sum runs in dot_q8's order, so a row's numbers are
 * the same bit for bit whichever rows share its tile. */
#if defined(__AVX512F__) && defined(__AVX512BW__)
/* The AVX-512 builds' tile: two blocks of 32 a vector and an odd last block through dot_q8, as
 * dot4_q8 runs a row (the same order, so the same numbers bit for bit). */
static inline __attribute__((always_inline)) void tile_q8(const int TW, const int TX, const int8_t *restrict w,
                                                          const int8_t *restrict xq, const float *restrict xs,
                                                          int64_t K, float out[TILE_W][TILE_X]) {
    const int64_t nb = K / QB, xs_row = nb * 8;
    __m512 acc[TILE_W][TILE_X];
    for (int i = 0; i < TW; i++)
        for (int r = 0; r < TX; r++)
            acc[i][r] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m512i ax[TILE_X];
        __mmask64 neg[TILE_X];
        for (int r = 0; r < TX; r++) {
            __m512i xv = _mm512_loadu_si512((const void *)(xq + r * K + b * QB));
            ax[r] = _mm512_abs_epi8(xv);
            neg[r] = _mm512_movepi8_mask(xv);
        }
        for (int i = 0; i < TW; i++) {
            PREFETCH(w + i * K + b * QB);
            __m512i wv = _mm512_loadu_si512((const void *)(w + i * K + b * QB));
            for (int r = 0; r < TX; r++) {
                __m512i p = udot512(ax[r], sign512(wv, neg[r]));
                acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_loadu_ps(xs + r * xs_row + b * 8), acc[i][r]);
            }
        }
    }
    for (int i = 0; i < TW; i++)
        for (int r = 0; r < TX; r++) {
            out[i][r] = _mm512_reduce_add_ps(acc[i][r]);
            if (b < nb) /* an odd last block */
                out[i][r] += dot_q8(w + i * K + b * QB, xq + r * K + b * QB, xs + r * xs_row + b * 8, QB);
        }
}
#else
static inline __attribute__((always_inline)) void tile_q8(const int TW, const int TX, const int8_t *restrict w,
                                                          const int8_t *restrict xq, const float *restrict xs,
                                                          int64_t K, float out[TILE_W][TILE_X]) {
    const int64_t nb = K / QB, xs_row = nb * 8;
    __m256 acc[TILE_W][TILE_X];
    for (int i = 0; i < TW; i++)
        for (int r = 0; r < TX; r++)
            acc[i][r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i ax[TILE_X];
        for (int r = 0; r < TX; r++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + r * K + b * QB));
            ax[r] = _mm256_sign_epi8(xv, xv);
        }
        for (int i = 0; i < TW; i++) {
            PREFETCH(w + i * K + b * QB); /* a few rows (a speculative check, a batch): weights from DRAM */
            __m256i wv = _mm256_loadu_si256((const __m256i *)(w + i * K + b * QB));
            for (int r = 0; r < TX; r++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + r * K + b * QB));
                __m256i p = udot(ax[r], _mm256_sign_epi8(wv, xv));
                acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_loadu_ps(xs + r * xs_row + b * 8), acc[i][r]);
            }
        }
    }
    for (int i = 0; i < TW; i++)
        for (int r = 0; r < TX; r++)
            out[i][r] = hsum256(acc[i][r]);
}
#endif

/* The tile of this size (each size its own compiled copy, so its accumulators stay in registers). */
static void tile_any(int tw, int tx, const int8_t *w, const int8_t *xq, const float *xs, int64_t K,
                     float out[TILE_W][TILE_X]) {
#define TILE_CASE(a, b)                                                                                     \
    case (a) * 4 + (b):                                                                                     \
        tile_q8(a, b, w, xq, xs, K, out);                                                                   \
        return;
    switch (tw * 4 + tx) {
        TILE_CASE(3, 3) TILE_CASE(3, 2) TILE_CASE(3, 1) TILE_CASE(2, 3) TILE_CASE(2, 2) TILE_CASE(2, 1)
        TILE_CASE(1, 3) TILE_CASE(1, 2) TILE_CASE(1, 1)
    }
#undef TILE_CASE
}
#endif

/* y [M, N] = x [M, K] @ (w * scale).T + bias, for int8 w [N, K] (K % 32 == 0).
 * x and y are fp32 (kind 0) or bf16 (kind 1); scale and bias are fp32, bias may be NULL.
 * Rows of x are quantized once; each thread takes a band of weight rows and runs every row of x
 * against it, so a weight row is read from memory once per call whatever M is.
 * one_row: the dot products read one weight row at a time (one sequential stream, which some CPUs'
 * prefetchers keep far fuller: on an AMD EPYC Zen 4, 24 layers of the 0.5B shape from memory on 2
 * threads read 26.8 GB/s against 16.1 GB/s) instead of four side by side (one activation load
 * serving four rows, the faster from cache). The kernel plan measures both; either gives the same
 * numbers bit for bit, each row's sums running in the same order.
 * On x86 builds, TILE_X rows or more go through tiles of 3 weight rows by 3 activation rows, in
 * chunks of CHUNK_X activation rows per band of BAND_W weight rows: a 0.5B prefill's activation rows
 * (512 x 4,864 int8 plus as many bytes of scales) no longer stream from beyond L2 once per weight row
 * group. Measured on an AMD EPYC (Zen 4, 2 threads, DEMI_KERNEL=avx2), a 1,000-token prefill of the
 * 0.5B shape (avx2): 145 -> 217 tok/s. With the weights prefetched as the row kernels do, a few rows (a
 * speculative check, a batch step) gain too: the 0.5B layers' matmuls from memory, 3 / 5 / 9 / 17 rows,
 * 24.1 / 34.6 / 58.7 / 106.2 -> 22.3 / 26.2 / 41.4 / 73.4 ms; two rows stay on the row kernel (17.1
 * against 21.3 ms). The same numbers bit for bit (each pair's sum in dot_q8's order). */
void demi_linear_q8(const void *restrict x, int x_kind, int64_t M, const int8_t *restrict w,
                    const float *restrict scale, const float *restrict bias, void *restrict y, int y_kind,
                    int64_t N, int64_t K, int one_row) {
    int8_t *xq = malloc((size_t)(M * K));
    float *xs = malloc(sizeof(float) * (size_t)(M * (K / QB) * 8));
    if (!xq || !xs) {
        free(xq);
        free(xs);
        return;
    }
    size_t xbytes = x_kind ? 2 : 4;
    #pragma omp parallel for schedule(static) if (M > 1)
    for (int64_t m = 0; m < M; m++)
        quantize_row((const char *)x + m * K * xbytes, x_kind, K, xq + m * K, xs + m * (K / QB) * 8);
#if defined(Q8_TILES)
    if (M >= TILE_X) { /* two rows stream one weight row at a time faster (Zen 4: 17.1 against 21.3 ms) */
        const int64_t nb8 = (K / QB) * 8;
        #pragma omp parallel for schedule(static)
        for (int64_t n0 = 0; n0 < N; n0 += BAND_W) {
            const int64_t n1 = n0 + BAND_W < N ? n0 + BAND_W : N;
            for (int64_t m0 = 0; m0 < M; m0 += CHUNK_X) {
                const int64_t m1 = m0 + CHUNK_X < M ? m0 + CHUNK_X : M;
                for (int64_t n = n0; n < n1; n += TILE_W) {
                    const int tw = (int)(n1 - n < TILE_W ? n1 - n : TILE_W);
                    for (int64_t m = m0; m < m1; m += TILE_X) {
                        const int tx = (int)(m1 - m < TILE_X ? m1 - m : TILE_X);
                        float v[TILE_W][TILE_X];
                        tile_any(tw, tx, w + n * K, xq + m * K, xs + m * nb8, K, v);
                        for (int i = 0; i < tw; i++)
                            for (int r = 0; r < tx; r++)
                                store(y, y_kind, (m + r) * N + n + i, scaled(v[i][r], scale, bias, n + i));
                    }
                }
            }
        }
        free(xq);
        free(xs);
        return;
    }
#endif
    const int64_t band = 16; /* weight rows per task: 16 rows of K int8 stay in L1/L2 across x rows */
    #pragma omp parallel for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += band) {
        int64_t n1 = n0 + band < N ? n0 + band : N;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xr = xq + m * K;
            const float *sr = xs + m * (K / QB) * 8;
            int64_t n = n0;
            for (; !one_row && n + 4 <= n1; n += 4) {
                float v[4];
                dot4_q8(w + n * K, K, xr, sr, v);
                for (int r = 0; r < 4; r++)
                    store(y, y_kind, m * N + n + r, scaled(v[r], scale, bias, n + r));
            }
            for (; n < n1; n++) {
                store(y, y_kind, m * N + n, scaled(dot_q8(w + n * K, xr, sr, K), scale, bias, n));
            }
        }
    }
    free(xq);
    free(xs);
}

/* The glue of a prefill through torch's int8 GEMM (torch._int_mm, oneDNN's VNNI or AMX kernels).
 * Demi's int8 weights have one scale per output row, so with one scale per activation row the whole
 * K sum stays in int32 and is scaled once per output (per-32-block activation scales cost a float
 * multiply-add every 32 products: why the kernel above loses to fp32 at prefill). One int8 term per
 * row rounds too coarsely (demi-tiny's logits moved 1.9% from the unquantized model's, top-1 changed
 * on 4% of positions, against 0.7% and 0.8% for int8 weights alone), so each row is two terms:
 * x ~ q1 s + q2 s / 254, the second rounding what the first left (at most s / 2), which leaves the
 * activations about 15 bits; the GEMM runs on 2M rows. Each function is one pass over its rows,
 * where torch needs several passes for the same. */

/* q [2M, K]: rows 0..M-1 round(x / s), rows M..2M-1 round((x - q1 s) / (s / 254)); s [M] = max|x| /
 * 127 per row (0 for a zero row); x fp32 or bf16. */
void demi_quantize_rows(const void *restrict x, int x_kind, int64_t M, int64_t K, int8_t *restrict q,
                        float *restrict s) {
    #pragma omp parallel for schedule(static) if (M * K > 65536)
    for (int64_t m = 0; m < M; m++) {
        float buf[K];
        const float *row = (const float *)x + m * K;
        if (x_kind) {
            for (int64_t k = 0; k < K; k++)
                buf[k] = bf16_to_f32(((const uint16_t *)x)[m * K + k]);
            row = buf;
        }
        float amax = 0.0f;
        #pragma omp simd reduction(max : amax)
        for (int64_t k = 0; k < K; k++)
            amax = fmaxf(amax, fabsf(row[k]));
        const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int8_t *hi = q + m * K, *lo = q + (M + m) * K;
        #pragma omp simd
        for (int64_t k = 0; k < K; k++) {
            const float r1 = nearbyintf(row[k] * inv); /* |r1| <= 127 */
            const float r2 = nearbyintf((row[k] - r1 * d) * inv * 254.0f);
            hi[k] = (int8_t)(int32_t)r1;
            lo[k] = (int8_t)(int32_t)fminf(127.0f, fmaxf(-127.0f, r2));
        }
        s[m] = d;
    }
}

/* y [M, N] = (acc[m] + acc[M + m] / 254) * xs[m] * ws[n] + bias[n] for the two terms' int32 sums
 * acc [2M, N] (bias may be NULL); y fp32 or bf16. */
void demi_scale_rows(const int32_t *restrict acc, int64_t M, int64_t N, const float *restrict xs,
                     const float *restrict ws, const float *restrict bias, void *restrict y, int y_kind) {
    #pragma omp parallel for schedule(static) if (M * N > 65536)
    for (int64_t m = 0; m < M; m++) {
        const int32_t *a = acc + m * N, *b = acc + (M + m) * N;
        const float d = xs[m], d2 = xs[m] / 254.0f;
        if (y_kind) {
            for (int64_t n = 0; n < N; n++)
                ((uint16_t *)y)[m * N + n] =
                    f32_to_bf16(((float)a[n] * d + (float)b[n] * d2) * ws[n] + (bias ? bias[n] : 0.0f));
            continue;
        }
        float *out = (float *)y + m * N;
        if (bias) {
            #pragma omp simd
            for (int64_t n = 0; n < N; n++)
                out[n] = ((float)a[n] * d + (float)b[n] * d2) * ws[n] + bias[n];
        } else {
            #pragma omp simd
            for (int64_t n = 0; n < N; n++)
                out[n] = ((float)a[n] * d + (float)b[n] * d2) * ws[n];
        }
    }
}

/* int4 weights are unsigned nibbles q in 0..15 with W = q * scale + offset per group (offset is the
 * stored zero point minus 8 scales), so the unsigned-by-signed byte dot (vpmaddubsw, vpdpbusd) takes
 * them as they are: 15 * 127 * 2 never saturates. A row is packed in chunks of 128 weights in 64
 * bytes, byte i holding k = i in its low nibble and k = 64 + i in its high one, so one 64-byte load
 * and two masks give two runs of 64 weights in k order (no shuffles); the rest of the row (K % 128, a
 * multiple of 32) in blocks of 32 weights in 16 bytes, byte i holding k = i low and k = 16 + i high.
 * These return sum over blocks of scale_g * d_b * sum_k q[k] xq[k]; the offsets are added by the
 * caller from each group's sum of x. */
#define QC 128 /* int4 chunk */

#if defined(__AVX2__)
/* One tail block of 32 weights (16 bytes) as a vector of 32 nibbles in k order. */
static inline __m256i nibbles(const uint8_t *p) {
    __m128i raw = _mm_loadu_si128((const __m128i *)p);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
}
#endif

/* The tail blocks (from block b0 on) of one row. */
static inline float tail_q4(const uint8_t *restrict w, const uint16_t *restrict ws, int64_t group,
                            const int8_t *restrict xq, const float *restrict xs, int64_t b0, int64_t nb) {
    float total = 0.0f;
    for (int64_t b = b0; b < nb; b++) {
        const uint8_t *wb = w + b * 16;
        float f = xs[b * 8] * h2f(ws[b * QB / group]);
#if defined(__AVX2__)
        __m256i p = udot(nibbles(wb), _mm256_loadu_si256((const __m256i *)(xq + b * QB)));
        total += hsum256(_mm256_cvtepi32_ps(p)) * f;
#elif defined(__ARM_NEON)
        uint8x16_t raw = vld1q_u8(wb);
        int8x16_t w0 = vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(0x0F)));
        int8x16_t w1 = vreinterpretq_s8_u8(vshrq_n_u8(raw, 4));
        total += (float)vaddvq_s32(neon_dot32(vld1q_s8(xq + b * QB), vld1q_s8(xq + b * QB + 16), w0, w1)) * f;
#else
        int32_t s = 0;
        for (int i = 0; i < 16; i++) {
            s += (int32_t)xq[b * QB + i] * (int32_t)(wb[i] & 0x0F);
            s += (int32_t)xq[b * QB + 16 + i] * (int32_t)(wb[i] >> 4);
        }
        total += (float)s * f;
#endif
    }
    return total;
}

/* R (1 or 4) int4 rows (row stride K / 2 bytes, scale stride `groups`) against one activation row:
 * the activation side (its loads and block scales) is shared by the rows. */
static inline __attribute__((always_inline)) void dotn_q4(int R, const uint8_t *restrict w,
                                                          const uint16_t *restrict ws, int64_t groups,
                                                          int64_t group, const int8_t *restrict xq,
                                                          const float *restrict xs, int64_t K, float *out) {
    const int64_t nc = K / QC, stride = K / 2;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t c = 0; c < nc; c++) {
        const int64_t k0 = c * QC, g0 = k0 / group, g1 = (k0 + 64) / group;
        /* a run of 64 weights spans two groups only when groups are 32 (or not a multiple of 64) */
        const int split0 = (k0 + 32) / group != g0, split1 = (k0 + 96) / group != g1;
        __m512i x0 = _mm512_loadu_si512((const void *)(xq + k0)), x1 = _mm512_loadu_si512((const void *)(xq + k0 + 64));
        __m512 s0 = _mm512_loadu_ps(xs + (k0 / QB) * 8), s1 = _mm512_loadu_ps(xs + (k0 / QB + 2) * 8);
        for (int r = 0; r < R; r++) {
            PREFETCH(w + r * stride + c * 64);
            __m512i raw = _mm512_loadu_si512((const void *)(w + r * stride + c * 64));
            __m512i p0 = udot512(_mm512_and_si512(raw, low), x0);
            __m512i p1 = udot512(_mm512_and_si512(_mm512_srli_epi16(raw, 4), low), x1);
            const uint16_t *wr = ws + r * groups;
            __m512 gs0 = split0 ? _mm512_insertf32x8(_mm512_set1_ps(h2f(wr[g0])), _mm256_set1_ps(h2f(wr[(k0 + 32) / group])), 1)
                                : _mm512_set1_ps(h2f(wr[g0]));
            __m512 gs1 = split1 ? _mm512_insertf32x8(_mm512_set1_ps(h2f(wr[g1])), _mm256_set1_ps(h2f(wr[(k0 + 96) / group])), 1)
                                : _mm512_set1_ps(h2f(wr[g1]));
            a[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(p0), s0), gs0, a[r]);
            a[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(p1), s1), gs1, a[r]);
        }
    }
    for (int r = 0; r < R; r++)
        out[r] = _mm512_reduce_add_ps(a[r]);
#elif defined(__AVX2__)
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const __m256i low = _mm256_set1_epi8(0x0F);
    for (int64_t c = 0; c < nc; c++) {
        const int64_t k0 = c * QC, b0 = k0 / QB;
        for (int h = 0; h < 2; h++) { /* bytes 32h..32h+31: blocks b0 + h (low) and b0 + 2 + h (high) */
            __m256i xl = _mm256_loadu_si256((const __m256i *)(xq + k0 + 32 * h));
            __m256i xh = _mm256_loadu_si256((const __m256i *)(xq + k0 + 64 + 32 * h));
            __m256 sl = _mm256_loadu_ps(xs + (b0 + h) * 8), sh = _mm256_loadu_ps(xs + (b0 + 2 + h) * 8);
            const int64_t gl = (k0 + 32 * h) / group, gh = (k0 + 64 + 32 * h) / group;
            for (int r = 0; r < R; r++) {
                if (h == 0)
                    PREFETCH(w + r * stride + c * 64);
                __m256i raw = _mm256_loadu_si256((const __m256i *)(w + r * stride + c * 64 + 32 * h));
                __m256 fl = _mm256_mul_ps(_mm256_cvtepi32_ps(udot(_mm256_and_si256(raw, low), xl)), sl);
                __m256 fh = _mm256_mul_ps(
                    _mm256_cvtepi32_ps(udot(_mm256_and_si256(_mm256_srli_epi16(raw, 4), low), xh)), sh);
                const uint16_t *wr = ws + r * groups;
                a[r] = _mm256_fmadd_ps(fl, _mm256_set1_ps(h2f(wr[gl])), a[r]);
                a[r] = _mm256_fmadd_ps(fh, _mm256_set1_ps(h2f(wr[gh])), a[r]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        out[r] = hsum256(a[r]);
#elif defined(__ARM_NEON)
    float32x4_t a[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    const uint8x16_t low = vdupq_n_u8(0x0F);
    for (int64_t c = 0; c < nc; c++) {
        const int64_t k0 = c * QC, b0 = k0 / QB;
        for (int h = 0; h < 2; h++) { /* bytes 32h..32h+31: blocks b0 + h (low) and b0 + 2 + h (high) */
            const int8_t *xl = xq + k0 + 32 * h, *xh = xq + k0 + 64 + 32 * h;
            int8x16_t xl0 = vld1q_s8(xl), xl1 = vld1q_s8(xl + 16), xh0 = vld1q_s8(xh), xh1 = vld1q_s8(xh + 16);
            const float sl = xs[(b0 + h) * 8], sh = xs[(b0 + 2 + h) * 8];
            const int64_t gl = (k0 + 32 * h) / group, gh = (k0 + 64 + 32 * h) / group;
            for (int r = 0; r < R; r++) {
                const uint8_t *wb = w + r * stride + c * 64 + 32 * h;
                if (h == 0)
                    PREFETCH(wb);
                uint8x16_t r0 = vld1q_u8(wb), r1 = vld1q_u8(wb + 16);
                int32x4_t pl = neon_dot32(xl0, xl1, vreinterpretq_s8_u8(vandq_u8(r0, low)),
                                          vreinterpretq_s8_u8(vandq_u8(r1, low)));
                int32x4_t ph = neon_dot32(xh0, xh1, vreinterpretq_s8_u8(vshrq_n_u8(r0, 4)),
                                          vreinterpretq_s8_u8(vshrq_n_u8(r1, 4)));
                const uint16_t *wr = ws + r * groups;
                a[r] = vmlaq_n_f32(a[r], vcvtq_f32_s32(pl), sl * h2f(wr[gl]));
                a[r] = vmlaq_n_f32(a[r], vcvtq_f32_s32(ph), sh * h2f(wr[gh]));
            }
        }
    }
    for (int r = 0; r < R; r++)
        out[r] = vaddvq_f32(a[r]);
#else
    for (int r = 0; r < R; r++) {
        const uint8_t *wr = w + r * stride;
        float total = 0.0f;
        for (int64_t c = 0; c < nc; c++)
            for (int half = 0; half < 2; half++)
                for (int blk = 0; blk < 2; blk++) { /* the 32-block at k0 = c * 128 + 64 * half + 32 * blk */
                    int64_t k0 = c * QC + 64 * half + 32 * blk;
                    int32_t s = 0;
                    for (int i = 0; i < QB; i++) {
                        uint8_t byte = wr[c * 64 + 32 * blk + i];
                        s += (int32_t)xq[k0 + i] * (int32_t)(half ? byte >> 4 : byte & 0x0F);
                    }
                    total += (float)s * xs[(k0 / QB) * 8] * h2f(ws[r * groups + k0 / group]);
                }
        out[r] = total;
    }
#endif
    for (int r = 0; r < R; r++)
        out[r] += tail_q4(w + r * stride, ws + r * groups, group, xq, xs, nc * QC / QB, K / QB);
}

/* sum over groups of offset_g * (sum of x over group g) */
static inline float offsets(const uint16_t *restrict off, const float *restrict xsum, int64_t groups) {
    float o = 0.0f;
    for (int64_t g = 0; g < groups; g++)
        o += h2f(off[g]) * xsum[g];
    return o;
}

/* y [M, N] = x [M, K] @ W.T + bias for int4 W in groups of `group` along K (a multiple of 32):
 * W[n, k] = q * scale[n, g] + offset[n, g], q in 0..15 packed in chunks of 128 as dotn_q4 reads them
 * (w is [N, K / 2] bytes), scale and offset IEEE half [N, K / group]. The offset term is exact: each
 * group's sum of x is taken in float before x is quantized. one_row as for demi_linear_q8. */
void demi_linear_q4(const void *restrict x, int x_kind, int64_t M, const uint8_t *restrict w,
                    const uint16_t *restrict scale, const uint16_t *restrict zero, int64_t group,
                    const float *restrict bias, void *restrict y, int y_kind, int64_t N, int64_t K, int one_row) {
    int64_t groups = K / group;
    int8_t *xq = malloc((size_t)(M * K));
    float *xs = malloc(sizeof(float) * (size_t)(M * (K / QB) * 8));
    float *xg = malloc(sizeof(float) * (size_t)(M * groups));
    if (!xq || !xs || !xg) {
        free(xq);
        free(xs);
        free(xg);
        return;
    }
    size_t xbytes = x_kind ? 2 : 4;
    #pragma omp parallel for schedule(static) if (M > 1)
    for (int64_t m = 0; m < M; m++) {
        const char *xr = (const char *)x + m * K * xbytes;
        quantize_row(xr, x_kind, K, xq + m * K, xs + m * (K / QB) * 8);
        for (int64_t g = 0; g < groups; g++) {
            float s = 0.0f;
            for (int64_t k = g * group; k < (g + 1) * group; k++)
                s += x_kind ? bf16_to_f32(((const uint16_t *)xr)[k]) : ((const float *)xr)[k];
            xg[m * groups + g] = s;
        }
    }
    const int64_t band = 16;
    #pragma omp parallel for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += band) {
        int64_t n1 = n0 + band < N ? n0 + band : N;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xr = xq + m * K;
            const float *sr = xs + m * (K / QB) * 8, *gr = xg + m * groups;
            float v[4];
            int64_t n = n0;
            for (; !one_row && n + 4 <= n1; n += 4) {
                dotn_q4(4, w + n * (K / 2), scale + n * groups, groups, group, xr, sr, K, v);
                for (int r = 0; r < 4; r++)
                    store(y, y_kind, m * N + n + r, v[r] + offsets(zero + (n + r) * groups, gr, groups) +
                                                        (bias ? bias[n + r] : 0.0f));
            }
            for (; n < n1; n++) {
                dotn_q4(1, w + n * (K / 2), scale + n * groups, groups, group, xr, sr, K, v);
                store(y, y_kind, m * N + n, v[0] + offsets(zero + n * groups, gr, groups) + (bias ? bias[n] : 0.0f));
            }
        }
    }
    free(xq);
    free(xs);
    free(xg);
}

/* out [N, K] = q * scale + offset from the packed int4 layout (demi_linear_q4's), fp32 (kind 0) or
 * bf16 (kind 1): a float prefill's weight, in one pass per row where torch's unpacking takes a dozen
 * ops over the whole matrix (0.5B shape, Zen 4: 37 ms a layer's weights through torch). */
/* One packed run of `n` weights (a 128-weight chunk or a 32-weight block) in k order: byte i holds
 * k = i in its low nibble and k = n / 2 + i in its high one. */
static inline void unpack_nibbles(const uint8_t *restrict bytes, int n, float *restrict q) {
    for (int i = 0; i < n / 2; i++) {
        q[i] = (float)(bytes[i] & 0x0F);
        q[n / 2 + i] = (float)(bytes[i] >> 4);
    }
}

void demi_dequantize_q4(const uint8_t *restrict w, const uint16_t *restrict scale, const uint16_t *restrict offset,
                        int64_t group, int64_t N, int64_t K, void *restrict out, int out_kind) {
    const int64_t groups = K / group, main = K / QC * QC;
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *row = w + n * (K / 2);
        float q[K];
        for (int64_t c = 0; c < main; c += QC)
            unpack_nibbles(row + c / 2, QC, q + c);
        for (int64_t c = main; c < K; c += QB)
            unpack_nibbles(row + c / 2, QB, q + c);
        for (int64_t g = 0; g < groups; g++) {
            const float sc = h2f(scale[n * groups + g]), off = h2f(offset[n * groups + g]);
            const float *qg = q + g * group;
            if (out_kind) {
                uint16_t *o = (uint16_t *)out + n * K + g * group;
                for (int64_t i = 0; i < group; i++)
                    o[i] = f32_to_bf16(qg[i] * sc + off);
            } else {
                float *o = (float *)out + n * K + g * group;
                #pragma omp simd
                for (int64_t i = 0; i < group; i++)
                    o[i] = qg[i] * sc + off;
            }
        }
    }
}

/* A self-check run in a child process before the library is used: the vector path against a
 * scalar reference on fixed data. A CPU flag that lies kills the child with SIGILL instead of
 * the user's process; a wrong result returns non-zero. */
int demi_prefill_attention_selftest(void); /* prefill_attention.c */
int demi_q8p_selftest(const float *x, const int8_t *w, const float *scale, const float *bias, int64_t M, int64_t N,
                      int64_t K); /* packed.c */
int demi_q4p_selftest(const float *x, const int8_t *w, const uint16_t *scale, const uint16_t *offset,
                      const float *bias, int64_t M, int64_t N, int64_t K, int64_t group); /* packed.c */

/* The half with the bits of a float that one represents exactly (normal or zero; the self-check's values). */
static uint16_t half_of(float f) {
    union { float f; uint32_t u; } v = {f};
    if (f == 0.0f)
        return 0;
    return (uint16_t)(((v.u >> 16) & 0x8000u) | ((((v.u >> 23) & 0xFFu) - 112u) << 10) | ((v.u >> 13) & 0x3FFu));
}

int demi_selftest(void) {
    enum { M = 6, N = 83, K = 192 }; /* 6 rows: a tile of 4 and one of 2; 83 outputs: 6 groups, the last partly padding */
    static float x[M * K], scale[N], bias[N], y[M * N];
    static int8_t w[N * K];
    uint32_t s = 12345u;
    for (int i = 0; i < M * K; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)((int32_t)(s >> 8) % 2001 - 1000) / 250.0f;
    }
    for (int i = 0; i < N * K; i++) {
        s = s * 1664525u + 1013904223u;
        w[i] = (int8_t)((int32_t)(s >> 9) % 255 - 127);
    }
    for (int n = 0; n < N; n++) {
        scale[n] = 0.01f + 0.001f * (float)n;
        bias[n] = (float)n * 0.5f - 3.0f;
    }
    if (demi_q8p_selftest(x, w, scale, bias, 1, N, K) || demi_q8p_selftest(x, w, scale, bias, M, N, K))
        return 7;
    demi_linear_q8(x, 0, M, w, scale, bias, y, 0, N, K, 0);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double ref = bias[n], mag = 0.0;
            for (int k = 0; k < K; k++) {
                ref += (double)x[m * K + k] * w[n * K + k] * scale[n];
                mag += fabs((double)x[m * K + k] * w[n * K + k] * scale[n]);
            }
            if (fabs(y[m * N + n] - ref) > 0.02 * mag / sqrt((double)K) + 1e-3)
                return 1;
        }
    /* int4: the low nibble of each int8 weight, packed as dotn_q4 reads it (a chunk of 128 and two
     * tail blocks), groups of 64 */
    static uint8_t w4[N * K / 2];
    static float s4[N * K / 64], z4[N * K / 64];
    static uint16_t s4h[N * K / 64], z4h[N * K / 64];
    for (int n = 0; n < N; n++) {
        const int8_t *src = w + n * K;
        uint8_t *dst = w4 + n * K / 2;
        int k = 0;
        for (; k + QC <= K; k += QC, dst += 64)
            for (int i = 0; i < 64; i++)
                dst[i] = (uint8_t)((src[k + i] & 0x0F) | ((src[k + 64 + i] & 0x0F) << 4));
        for (; k < K; k += QB, dst += 16)
            for (int i = 0; i < 16; i++)
                dst[i] = (uint8_t)((src[k + i] & 0x0F) | ((src[k + 16 + i] & 0x0F) << 4));
    }
    for (int i = 0; i < N * K / 64; i++) { /* scales (1..7) / 64 and offsets (-2..2) / 8, exact in half */
        s4[i] = (float)(1 + i % 7) / 64.0f;
        s4h[i] = half_of(s4[i]);
        z4[i] = (float)(i % 5 - 2) / 8.0f;
        z4h[i] = half_of(z4[i]);
    }
    for (int i = 0; i < N * K / 64; i++)
        if (h2f(s4h[i]) != s4[i] || h2f(z4h[i]) != z4[i])
            return 6;
    if (demi_q4p_selftest(x, w, s4h, z4h, bias, 1, N, K, 64) || demi_q4p_selftest(x, w, s4h, z4h, bias, M, N, K, 64))
        return 8;
    /* int8mm's glue: the two terms give x back within a quarter of a second-term step */
    static int8_t xq[2 * M * K];
    float xs[M];
    static int32_t acc[2 * M * N];
    demi_quantize_rows(x, 0, M, K, xq, xs);
    for (int i = 0; i < M * K; i++)
        if (fabsf((float)xq[i] * xs[i / K] + (float)xq[M * K + i] * xs[i / K] / 254.0f - x[i]) >
            0.5001f * xs[i / K] / 254.0f + 1e-6f)
            return 3;
    for (int i = 0; i < 2 * M * N; i++)
        acc[i] = (int32_t)(s % 20001u) - 10000, s = s * 1664525u + 1013904223u;
    demi_scale_rows(acc, M, N, xs, scale, bias, y, 0);
    for (int i = 0; i < M * N; i++) {
        float want = ((float)acc[i] + (float)acc[M * N + i] / 254.0f) * xs[i / N] * scale[i % N] + bias[i % N];
        if (fabsf(y[i] - want) > 1e-3f * (fabsf(want) + 1.0f))
            return 4;
    }
    demi_linear_q4(x, 0, M, w4, s4h, z4h, 64, bias, y, 0, N, K, 0);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double ref = bias[n], mag = 0.0;
            for (int k = 0; k < K; k++) {
                int g = n * (K / 64) + k / 64;
                double wk = (w[n * K + k] & 0x0F) * (double)s4[g] + z4[g];
                ref += (double)x[m * K + k] * wk;
                mag += fabs((double)x[m * K + k] * wk);
            }
            if (fabs(y[m * N + n] - ref) > 0.02 * mag / sqrt((double)K) + 1e-3)
                return 2;
        }
    return demi_prefill_attention_selftest() ? 5 : 0;
}

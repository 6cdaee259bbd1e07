/* Quantized matmuls on weights packed for several activation rows at once: int8 (y = x @ (w * scale).T
 * + bias, every int8 layer a native kernel runs) and int4 (RescoredHead's shadow head).
 *
 * Why a second layout: the row-major kernels (qmatmul.c) take the dot product of one weight row and
 * one activation row, so every 32 products end in a float conversion, a scale and an add, and a
 * second activation row redoes all of it. Here 16 output rows are interleaved four bytes at a time
 * (a 64-byte unit holds k..k+3 of 16 outputs; int4: k..k+7 in two nibbles), the activation's four
 * bytes are broadcast, and one byte dot (vpdpbusd on VNNI) adds 32 products into 8 per-output int32
 * sums; the float work is once per block of 32 k for 16 outputs, and each weight vector loaded serves
 * up to four activation rows. Measured on an AMD EPYC (Zen 4, 2 threads), the 0.5B shape's 24 layers
 * of int8 matmuls from memory, 1 / 4 / 8 rows, row-major (one row: one weight row at a time, its
 * faster setting) against packed, alternated in one process: avx512vnni 9.8-10.1 / 21.3-21.7 /
 * 33.2-33.9 against 9.4-10.0 / 13.7-14.6 / 21.8-23.3 ms; avx2 9.8-9.9 / 23.2-23.3 / 38.7-39.1 against
 * 9.2-9.8 / 17.1-17.5 / 31.0-31.9 ms.
 *
 * Layout (demi_pack_q8p): N rounded up to 16 (zero rows), then for each group of 16 outputs and each
 * quad of k: 64 bytes, byte 4j + t = w[16 g + j][4 q + t] XOR 0x80 (w + 128 as an unsigned byte:
 * vpdpbusd's unsigned operand; sum (w + 128) x = sum w x + 128 sum x, the second term taken off per
 * block). The same bytes on every path, so a model switches kernel paths without repacking.
 *
 * Numbers: a row's int32 block sums are exact whatever the order, and its float work (per block
 * f = f + sum * d, fused; then y = f * scale + bias, fused) runs in block order, so every row gives
 * the same bits whichever rows share its call: a batch's rows, a speculative check's and a lone
 * decode step agree. */
#if defined(__x86_64__)
/* The weights prefetched 8 KB ahead into L2, not 4 KB into L1 as the row-major kernels do: measured on
 * an AMD EPYC (Zen 4, 2 threads), the 0.5B shape's 24 layers of int8 matmuls from memory, 1 / 2 / 3 /
 * 4 rows, alternated in one process (two runs): avx512vnni 10.55-10.85 / 11.6-11.9 / 13.1-13.3 /
 * 15.4-15.5 -> 10.2-10.5 / 10.6-10.7 / 10.8-10.9 / 13.3 ms (a batch step's rows and a speculative
 * check's), avx2 within noise either way. Other CPUs keep the shared setting (unmeasured). */
#define PREFETCH_BYTES 8192
#define PREFETCH_LOCALITY 1
#endif
#include "quant_common.h"

#define PG 16      /* outputs interleaved in a group */
#define BAND 4     /* groups per task (64 outputs) */
#define RMAX 4     /* activation rows per tile */
#define CHUNK 64   /* activation rows per pass over the weights (their bytes stay in L2) */
#define GBYTES(K) ((K) / 4 * 64) /* bytes of one group */

void demi_pack_q8p(const int8_t *restrict w, int64_t N, int64_t K, uint8_t *restrict p) {
    const int64_t groups = (N + PG - 1) / PG;
    #pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < groups; g++)
        for (int64_t q = 0; q < K / 4; q++)
            for (int j = 0; j < PG; j++) {
                const int64_t n = g * PG + j;
                for (int t = 0; t < 4; t++)
                    p[g * GBYTES(K) + q * 64 + j * 4 + t] = (uint8_t)((n < N ? w[n * K + q * 4 + t] : 0) ^ 0x80);
            }
}

/* The weight back, row-major: fp32 times its scale (kind 0), bf16 of the int8 value (kind 1), or
 * int8 (kind 2); for a float prefill's copy and torch's int8 GEMM. */
void demi_unpack_q8p(const uint8_t *restrict p, const float *restrict scale, int64_t N, int64_t K,
                     void *restrict out, int kind) {
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *src = p + (n / PG) * GBYTES(K) + (n % PG) * 4;
        for (int64_t q = 0; q < K / 4; q++)
            for (int t = 0; t < 4; t++) {
                const int8_t v = (int8_t)(src[q * 64 + t] ^ 0x80);
                const int64_t i = n * K + q * 4 + t;
                if (kind == 0)
                    ((float *)out)[i] = (float)v * scale[n];
                else if (kind == 1)
                    ((uint16_t *)out)[i] = f32_to_bf16((float)v);
                else
                    ((int8_t *)out)[i] = v;
            }
    }
}

/* One activation row's side of the packed dot: its int8 values, each block's scale d (xs, 8 copies a
 * block as quantize_row writes them), 128 times each block's sum (VNNI's correction) and |x| (the
 * unsigned operand where there is no VNNI). */
typedef struct {
    const int8_t *xq;
    const uint8_t *ax;
    const float *xs;
    const int32_t *xsum;
} xrow;

#if defined(__ARM_NEON)
/* Four outputs' sums of four int8 products each (w holds output c's four bytes at 4c): sdot where
 * the CPU has it, else widening multiplies and two pairwise adds. */
static inline int32x4_t dot4(int32x4_t acc, int8x16_t w, int8x16_t x) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, w, x);
#else
    int16x8_t lo = vmull_s8(vget_low_s8(w), vget_low_s8(x)), hi = vmull_s8(vget_high_s8(w), vget_high_s8(x));
    return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)));
#endif
}
#endif

/* One group (16 outputs) by R activation rows over the whole of K: f[r][0..15] = sum over blocks of
 * (int32 block sum) * d (int8: the block's activation scale; int4: times the group's weight scales,
 * `ws` [K / group][16] halves), in block order. A 64-byte unit holds four k of 16 outputs (int8) or
 * eight (int4: k..k+3 in the low nibbles, k+4..k+7 in the high ones). */
#if defined(__AVX2__)
/* 256-bit on every x86 build, a group two vectors of 8 outputs (bytes 0..31 and 32..63). The AVX-512
 * builds' 512-bit version (a group a vector, up to 4 groups a tile) was slower on an AMD EPYC (Zen 4,
 * which runs 512-bit operations as two halves): the 0.5B layers' int8 matmuls, 4 / 8 rows, 14.3-15.2 /
 * 19.8-21.3 ms against 13.1-15.8 / 18.2-19.2 here, one row alike (12-13 ms, memory bound). */
#if defined(__AVX512VNNI__)
#define DPBUSD(s, u, x) _mm256_dpbusd_epi32(s, u, x)
#elif defined(__AVXVNNI__)
#define DPBUSD(s, u, x) _mm256_dpbusd_avx_epi32(s, u, x)
#else /* vpmaddubsw's pairs stay under 2^15 for an unsigned side of at most 127 (int8's |x|) or 15 (int4) */
#define DPBUSD(s, u, x) _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)))
#define NO_VNNI 1
#endif

static inline __m256i bcast4(const void *p) {
    int32_t four;
    memcpy(&four, p, 4);
    return _mm256_set1_epi32(four);
}

static inline __attribute__((always_inline)) void tile(const int bits, const int R, const uint8_t *restrict p,
                                                       const uint16_t *restrict ws, int64_t K, int64_t group,
                                                       const xrow *x, float f[RMAX][PG]) {
    const int64_t nb = K / QB;
    const int units = bits == 8 ? QB / 4 : QB / 8; /* 64-byte units a block */
    __m256 acc[RMAX][2];
    for (int r = 0; r < R; r++)
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i s[RMAX][2];
        for (int r = 0; r < R; r++)
            s[r][0] = s[r][1] = _mm256_setzero_si256();
        for (int u = 0; u < units; u++) {
            const int64_t at = (b * units + u) * 64;
            PREFETCH(p + at);
            for (int h = 0; h < 2; h++) {
                __m256i wv = _mm256_loadu_si256((const __m256i *)(p + at + 32 * h));
                if (bits == 4) {
                    const __m256i low = _mm256_set1_epi8(0x0F);
                    __m256i lo = _mm256_and_si256(wv, low), hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), low);
                    for (int r = 0; r < R; r++) {
                        const int8_t *xk = x[r].xq + b * QB + u * 8;
                        s[r][h] = DPBUSD(DPBUSD(s[r][h], lo, bcast4(xk)), hi, bcast4(xk + 4));
                    }
                    continue;
                }
#if defined(NO_VNNI) /* |x| times w with x's sign, as the row-major kernels multiply */
                __m256i sw = _mm256_xor_si256(wv, _mm256_set1_epi8((char)0x80));
                for (int r = 0; r < R; r++) {
                    const int64_t k = b * QB + u * 4;
                    s[r][h] = DPBUSD(s[r][h], bcast4(x[r].ax + k), _mm256_sign_epi8(sw, bcast4(x[r].xq + k)));
                }
#else
                for (int r = 0; r < R; r++)
                    s[r][h] = DPBUSD(s[r][h], wv, bcast4(x[r].xq + b * QB + u * 4));
#endif
            }
        }
        __m256 scale[2] = {_mm256_set1_ps(1.0f), _mm256_set1_ps(1.0f)};
        if (bits == 4)
            for (int h = 0; h < 2; h++)
                scale[h] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(ws + (b * QB / group) * PG + 8 * h)));
        for (int r = 0; r < R; r++) {
            const __m256 d = _mm256_set1_ps(x[r].xs[b * 8]);
            for (int h = 0; h < 2; h++) {
#if !defined(NO_VNNI)
                if (bits == 8) /* (w + 128) x summed: take 128 sum x off */
                    s[r][h] = _mm256_sub_epi32(s[r][h], _mm256_set1_epi32(x[r].xsum[b]));
#endif
                const __m256 m = bits == 4 ? _mm256_mul_ps(scale[h], d) : d;
                acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r][h]), m, acc[r][h]);
            }
        }
    }
    for (int r = 0; r < R; r++) {
        _mm256_storeu_ps(f[r], acc[r][0]);
        _mm256_storeu_ps(f[r] + 8, acc[r][1]);
    }
}
#else
/* NEON (dot4) and plain C: the same sums, four outputs a vector. */
static inline __attribute__((always_inline)) void tile(const int bits, const int R, const uint8_t *restrict p,
                                                       const uint16_t *restrict ws, int64_t K, int64_t group,
                                                       const xrow *x, float f[RMAX][PG]) {
    const int64_t nb = K / QB;
    const int units = bits == 8 ? QB / 4 : QB / 8;
    for (int r = 0; r < R; r++)
        for (int j = 0; j < PG; j++)
            f[r][j] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *wb = p + b * units * 64;
        PREFETCH(wb);
        for (int r = 0; r < R; r++) {
            const int8_t *xb = x[r].xq + b * QB;
            int32_t s[PG];
#if defined(__ARM_NEON)
            int32x4_t v[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
            for (int u = 0; u < units; u++) {
                int32_t four;
                for (int c = 0; c < 4; c++) {
                    uint8x16_t raw = vld1q_u8(wb + u * 64 + 16 * c);
                    if (bits == 8) {
                        memcpy(&four, xb + u * 4, 4);
                        v[c] = dot4(v[c], vreinterpretq_s8_u8(veorq_u8(raw, vdupq_n_u8(0x80))),
                                    vreinterpretq_s8_s32(vdupq_n_s32(four)));
                    } else {
                        memcpy(&four, xb + u * 8, 4);
                        v[c] = dot4(v[c], vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(0x0F))),
                                    vreinterpretq_s8_s32(vdupq_n_s32(four)));
                        memcpy(&four, xb + u * 8 + 4, 4);
                        v[c] = dot4(v[c], vreinterpretq_s8_u8(vshrq_n_u8(raw, 4)), vreinterpretq_s8_s32(vdupq_n_s32(four)));
                    }
                }
            }
            for (int c = 0; c < 4; c++)
                vst1q_s32(s + 4 * c, v[c]);
#else
            for (int j = 0; j < PG; j++)
                s[j] = 0;
            for (int u = 0; u < units; u++)
                for (int j = 0; j < PG; j++)
                    for (int t = 0; t < 4; t++) {
                        const uint8_t byte = wb[u * 64 + j * 4 + t];
                        if (bits == 8)
                            s[j] += (int32_t)(int8_t)(byte ^ 0x80) * (int32_t)xb[u * 4 + t];
                        else
                            s[j] += (int32_t)(byte & 0x0F) * xb[u * 8 + t] + (int32_t)(byte >> 4) * xb[u * 8 + 4 + t];
                    }
#endif
            const float d = x[r].xs[b * 8];
            for (int j = 0; j < PG; j++)
                f[r][j] = fmaf((float)s[j], bits == 4 ? h2f(ws[(b * QB / group) * PG + j]) * d : d, f[r][j]);
        }
    }
}
#endif

/* Whether int8's tile reads |x| (x86 without VNNI) or 128 * the block sums (VNNI): the rest need
 * neither, and the driver skips that pass over every activation row. */
#if defined(__AVX2__)
#define X_SIDE 1
/* A row's |x| and 128 times each block's sum (a sum of absolute differences from 0 of x + 128 gives
 * the sum plus 32 * 128), a block a vector. */
static void x_side(const int8_t *restrict xq, int64_t nb, uint8_t *restrict ax, int32_t *restrict xsum) {
    for (int64_t b = 0; b < nb; b++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(xq + b * QB));
        _mm256_storeu_si256((__m256i *)(ax + b * QB), _mm256_abs_epi8(v));
        const __m256i s = _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
        const __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        xsum[b] = 128 * ((int32_t)(_mm_cvtsi128_si64(h) + _mm_extract_epi64(h, 1)) - QB * 128);
    }
}
#else
#define X_SIDE 0
#endif

static void tile_any(int bits, int R, const uint8_t *p, const uint16_t *ws, int64_t K, int64_t group, const xrow *x,
                     float f[RMAX][PG]) {
#define TILE_CASE(b, r)                                                                                     \
    case (b) * 8 + (r):                                                                                     \
        tile(b, r, p, ws, K, group, x, f);                                                                  \
        return;
    switch (bits * 8 + R) { /* each size its own compiled copy, so its sums stay in registers */
        TILE_CASE(8, 1) TILE_CASE(8, 2) TILE_CASE(8, 3) TILE_CASE(8, 4)
        TILE_CASE(4, 1) TILE_CASE(4, 2) TILE_CASE(4, 3) TILE_CASE(4, 4)
    default:
        abort(); /* a size without a case is a bug: the self-check dies rather than pass on stale sums */
    }
#undef TILE_CASE
}

/* o[j] = sum over the kg groups of off[q][j] * xg[q] for 16 outputs (offsets [kg][16] halves), one
 * fused multiply-add a group in group order: the same bits vectorized or not. */
static inline void offsets16(const uint16_t *restrict off, const float *restrict xg, int64_t kg, float o[PG]) {
#if defined(__AVX2__)
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    for (int64_t q = 0; q < kg; q++) {
        const __m256 x = _mm256_set1_ps(xg[q]);
        a = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(off + q * PG))), x, a);
        b = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(off + q * PG + 8))), x, b);
    }
    _mm256_storeu_ps(o, a);
    _mm256_storeu_ps(o + 8, b);
#else
    for (int j = 0; j < PG; j++)
        o[j] = 0.0f;
    for (int64_t q = 0; q < kg; q++)
        for (int j = 0; j < PG; j++)
            o[j] = fmaf(h2f(off[q * PG + j]), xg[q], o[j]);
#endif
}

/* The shared driver: rows quantized once; each task a band of BAND groups; rows in chunks of CHUNK
 * (their int8 copies stay in L2 across the band), tiles of RMAX. int8: y = f * scale + bias; int4:
 * y = f + sum over groups of offset * (the group's float sum of x) + bias. */
static void linear_packed(int bits, const void *restrict x, int x_kind, int64_t M, const uint8_t *restrict p,
                          const float *restrict scale, const uint16_t *restrict ws, const uint16_t *restrict wo,
                          int64_t group, const float *restrict bias, void *restrict y, int y_kind, int64_t N,
                          int64_t K) {
    const int64_t nb = K / QB, groups = (N + PG - 1) / PG, kg = bits == 4 ? K / group : 0;
    const int64_t gbytes = bits == 8 ? K / 4 * 64 : K / 8 * 64;
    int8_t *xq = malloc((size_t)(M * K));
    uint8_t *ax = malloc((size_t)(M * K));
    float *xs = malloc(sizeof(float) * (size_t)(M * nb * 8)), *xg = malloc(sizeof(float) * (size_t)(M * kg + 1));
    int32_t *xsum = malloc(sizeof(int32_t) * (size_t)(M * nb));
    if (!xq || !ax || !xs || !xg || !xsum) {
        free(xq), free(ax), free(xs), free(xg), free(xsum);
        return;
    }
    const size_t xbytes = x_kind ? 2 : 4;
    #pragma omp parallel for schedule(static) if (M > 8)
    for (int64_t m = 0; m < M; m++) {
        const char *xr = (const char *)x + m * K * xbytes;
        quantize_row(xr, x_kind, K, xq + m * K, xs + m * nb * 8);
#if X_SIDE
        if (bits == 8) /* int8's x side: only the tile that reads it */
            x_side(xq + m * K, nb, ax + m * K, xsum + m * nb);
#endif
        for (int64_t g = 0; g < kg; g++) {
            float s = 0.0f;
            for (int64_t k = g * group; k < (g + 1) * group; k++)
                s += x_kind ? bf16_to_f32(((const uint16_t *)xr)[k]) : ((const float *)xr)[k];
            xg[m * kg + g] = s;
        }
    }
    for (int64_t m0 = 0; m0 < M; m0 += CHUNK) {
        const int64_t m1 = m0 + CHUNK < M ? m0 + CHUNK : M;
        #pragma omp parallel for schedule(static)
        for (int64_t g0 = 0; g0 < groups; g0 += BAND) {
            const int64_t g1 = g0 + BAND < groups ? g0 + BAND : groups;
            for (int64_t m = m0; m < m1; m += RMAX) {
                const int R = (int)(m1 - m < RMAX ? m1 - m : RMAX);
                xrow rows[RMAX];
                for (int r = 0; r < R; r++)
                    rows[r] = (xrow){xq + (m + r) * K, ax + (m + r) * K, xs + (m + r) * nb * 8, xsum + (m + r) * nb};
                for (int64_t g = g0; g < g1; g++) {
                    float f[RMAX][PG];
                    tile_any(bits, R, p + g * gbytes, ws ? ws + g * kg * PG : NULL, K, group, rows, f);
                    for (int r = 0; r < R; r++) {
                        float o[PG]; /* int4: sum over groups of offset * the group's sum of x, fused, in group order */
                        if (bits == 4)
                            offsets16(wo + g * kg * PG, xg + (m + r) * kg, kg, o);
                        for (int j = 0; j < PG && g * PG + j < N; j++) {
                            const int64_t n = g * PG + j;
                            const float v = bits == 8 ? scaled(f[r][j], scale, bias, n) : f[r][j] + o[j] + (bias ? bias[n] : 0.0f);
                            store(y, y_kind, (m + r) * N + n, v);
                        }
                    }
                }
            }
        }
    }
    free(xq), free(ax), free(xs), free(xg), free(xsum);
}

/* y [M, N] = x [M, K] @ (w * scale).T + bias for w packed by demi_pack_q8p (K % 32 == 0); x and y
 * fp32 (kind 0) or bf16 (kind 1); scale fp32 [N]; bias fp32 [N] or NULL. */
void demi_linear_q8p(const void *restrict x, int x_kind, int64_t M, const uint8_t *restrict p,
                     const float *restrict scale, const float *restrict bias, void *restrict y, int y_kind,
                     int64_t N, int64_t K) {
    linear_packed(8, x, x_kind, M, p, scale, NULL, NULL, 1, bias, y, y_kind, N, K);
}

/* int4 packed (q in 0..15, W = q * scale + offset per group of `group` k, a multiple of 32): N rounded
 * up to 16; per group of 16 outputs and 8 k, 64 bytes, byte 4j + t = q[16 g + j][k + t] | q[..][k + 4
 * + t] << 4; scales and offsets IEEE half [N / 16][K / group][16] (padding rows 0). q is [N, K], one
 * value a byte; scale and offset [N, K / group] halves. */
void demi_pack_q4p(const uint8_t *restrict q, const uint16_t *restrict scale, const uint16_t *restrict offset,
                   int64_t N, int64_t K, int64_t group, uint8_t *restrict p, uint16_t *restrict ps,
                   uint16_t *restrict po) {
    const int64_t groups = (N + PG - 1) / PG, kg = K / group;
    #pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        for (int64_t o = 0; o < K / 8; o++)
            for (int j = 0; j < PG; j++) {
                const int64_t n = g * PG + j;
                for (int t = 0; t < 4; t++)
                    p[g * (K / 8) * 64 + o * 64 + j * 4 + t] =
                        n < N ? (uint8_t)((q[n * K + o * 8 + t] & 0x0F) | (q[n * K + o * 8 + 4 + t] << 4)) : 0;
            }
        for (int64_t c = 0; c < kg; c++)
            for (int j = 0; j < PG; j++) {
                const int64_t n = g * PG + j;
                ps[(g * kg + c) * PG + j] = n < N ? scale[n * kg + c] : 0;
                po[(g * kg + c) * PG + j] = n < N ? offset[n * kg + c] : 0;
            }
    }
}

/* y [M, N] = x [M, K] @ W.T + bias for W packed by demi_pack_q4p; kinds as demi_linear_q8p. */
void demi_linear_q4p(const void *restrict x, int x_kind, int64_t M, const uint8_t *restrict p,
                     const uint16_t *restrict ps, const uint16_t *restrict po, int64_t group,
                     const float *restrict bias, void *restrict y, int y_kind, int64_t N, int64_t K) {
    linear_packed(4, x, x_kind, M, p, NULL, ps, po, group, bias, y, y_kind, N, K);
}

/* The self-check's part: against a float64 reference, and every row of a 5-row call equal bit for
 * bit to the same row alone. Returns 0 when both hold. */
int demi_q8p_selftest(const float *x, const int8_t *w, const float *scale, const float *bias, int64_t M,
                      int64_t N, int64_t K) {
    uint8_t *p = malloc((size_t)(((N + PG - 1) / PG) * GBYTES(K)));
    float *y = malloc(sizeof(float) * (size_t)(M * N)), *one = malloc(sizeof(float) * (size_t)N);
    int8_t *back = malloc((size_t)(N * K));
    int bad = !p || !y || !one || !back;
    if (!bad) {
        demi_pack_q8p(w, N, K, p);
        demi_unpack_q8p(p, scale, N, K, back, 2);
        bad = memcmp(back, w, (size_t)(N * K)) != 0;
    }
    if (!bad) {
        demi_linear_q8p(x, 0, M, p, scale, bias, y, 0, N, K);
        for (int64_t m = 0; m < M && !bad; m++) {
            demi_linear_q8p(x + m * K, 0, 1, p, scale, bias, one, 0, N, K);
            bad = memcmp(one, y + m * N, sizeof(float) * (size_t)N) != 0;
            for (int64_t n = 0; n < N && !bad; n++) {
                double ref = bias[n], mag = 0.0;
                for (int64_t k = 0; k < K; k++) {
                    ref += (double)x[m * K + k] * w[n * K + k] * scale[n];
                    mag += fabs((double)x[m * K + k] * w[n * K + k] * scale[n]);
                }
                bad = fabs(y[m * N + n] - ref) > 0.02 * mag / sqrt((double)K) + 1e-3;
            }
        }
    }
    free(p), free(y), free(one), free(back);
    return bad;
}

/* int4's part of the self-check: q = w & 15 with half scales and offsets [N, K / group], against a
 * float64 reference, and every row of an M-row call equal bit for bit to the same row alone. */
int demi_q4p_selftest(const float *x, const int8_t *w, const uint16_t *scale, const uint16_t *offset,
                      const float *bias, int64_t M, int64_t N, int64_t K, int64_t group) {
    const int64_t padded = (N + PG - 1) / PG * PG, kg = K / group;
    uint8_t *q = malloc((size_t)(N * K)), *p = malloc((size_t)(padded * K / 2));
    uint16_t *ps = malloc(sizeof(uint16_t) * (size_t)(padded * kg)), *po = malloc(sizeof(uint16_t) * (size_t)(padded * kg));
    float *y = malloc(sizeof(float) * (size_t)(M * N)), *one = malloc(sizeof(float) * (size_t)N);
    int bad = !q || !p || !ps || !po || !y || !one;
    if (!bad) {
        for (int64_t i = 0; i < N * K; i++)
            q[i] = (uint8_t)(w[i] & 0x0F);
        demi_pack_q4p(q, scale, offset, N, K, group, p, ps, po);
        demi_linear_q4p(x, 0, M, p, ps, po, group, bias, y, 0, N, K);
        for (int64_t m = 0; m < M && !bad; m++) {
            demi_linear_q4p(x + m * K, 0, 1, p, ps, po, group, bias, one, 0, N, K);
            bad = memcmp(one, y + m * N, sizeof(float) * (size_t)N) != 0;
            for (int64_t n = 0; n < N && !bad; n++) {
                double ref = bias[n], mag = 0.0;
                for (int64_t k = 0; k < K; k++) {
                    const int64_t c = n * kg + k / group;
                    const double wk = q[n * K + k] * (double)h2f(scale[c]) + h2f(offset[c]);
                    ref += (double)x[m * K + k] * wk;
                    mag += fabs((double)x[m * K + k] * wk);
                }
                bad = fabs(y[m * N + n] - ref) > 0.02 * mag / sqrt((double)K) + 1e-3;
            }
        }
    }
    free(q), free(p), free(ps), free(po), free(y), free(one);
    return bad;
}

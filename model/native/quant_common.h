/* What the quantized matmul sources share (qmatmul.c, packed.c): the system and intrinsics headers,
 * bf16 and half conversions, the weight prefetch, activation quantization to int8 blocks of 32, and the
 * output store; static inline, so each source gets its own copy. */
#ifndef DEMI_QUANT_COMMON_H
#define DEMI_QUANT_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#define QB 32 /* activation (and int4 weight) block */

/* Software prefetch of the weights, PREFETCH_BYTES ahead of each row stream (a few rows ahead: a
 * row is K or K / 2 bytes), into every cache level. One core alone cannot keep enough misses in
 * flight to stream memory, so without it decode reads weights well below the machine's bandwidth.
 * Measured on a Xeon (AVX-512 VNNI, 2 cores), 600,000 x 896 weights from memory, GB/s int8 / int4
 * (int4 counting its scales): none 21.0 / 14.4; 1 KB ahead 23.7 / -; 2 KB 25.5 / 22.6; 4 KB
 * 28.5 / 24.5; 8 KB 28.2 / 24.1; 16 KB 27.7 / 23.8 (the AVX2 build alike: 4 KB 25.8 / 24.9 against
 * 20.9 / 13.8). A non-temporal prefetch (locality 0) is worse than none for int8. */
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 4096
#endif
#ifndef PREFETCH_LOCALITY /* __builtin_prefetch's: 3 every level (prefetcht0), 1 L2 and beyond (prefetcht2) */
#define PREFETCH_LOCALITY 3
#endif
#if PREFETCH_BYTES > 0 && defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch((const char *)(p) + PREFETCH_BYTES, 0, PREFETCH_LOCALITY)
#else
#define PREFETCH(p) ((void)0)
#endif

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

static inline uint16_t f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = {f};
    return (uint16_t)((v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16); /* round to nearest even */
}

/* An IEEE half (int4's per-group scales and offsets: half the bytes of fp32 beside 32 nibble bytes a
 * group of 64, which decode streams from memory) as a float: F16C's conversion on x86 builds that
 * have it, the hardware's on ARM, else by its bits (subnormals included). */
static inline float h2f(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#elif defined(__ARM_NEON) && defined(__aarch64__)
    __fp16 v;
    memcpy(&v, &h, sizeof v);
    return (float)v;
#else
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    union { uint32_t u; float f; } v;
    if (exp == 0x1Fu)
        v.u = sign | 0x7F800000u | (man << 13); /* inf, nan */
    else if (exp)
        v.u = sign | ((exp + 112u) << 23) | (man << 13);
    else { /* zero or subnormal: man * 2^-24 */
        v.f = (float)man * 5.9604644775390625e-8f;
        v.u |= sign;
    }
    return v.f;
#endif
}

/* One row of activations to int8 blocks of 32: xq = round(x / d), d = max|x| / 127 per block.
 * xs gets each block's d repeated 8 times, so a vector of int32 block sums (8 lanes per block on
 * x86) is scaled by a plain vector load. x86 builds take a block in four vectors (the scalar loop
 * left the max unvectorized: 1.7 ns a value, a tenth of a 0.5B decode step's matmul time on an AMD
 * EPYC Zen 4); the same operations, so the same bytes and scales as the scalar loop. */
#if defined(__AVX2__)
static inline __m256 load8(const void *x, int kind, int64_t k) {
    if (kind) /* bf16: the high half of a float */
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)x + k))), 16));
    return _mm256_loadu_ps((const float *)x + k);
}

static void quantize_row(const void *x, int kind, int64_t K, int8_t *xq, float *xs) {
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* the two packs' dwords back in k order */
    for (int64_t b = 0; b < K / QB; b++) {
        __m256 v[4], top = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = load8(x, kind, b * QB + 8 * i);
            top = _mm256_max_ps(top, _mm256_and_ps(v[i], magnitude));
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
        const float amax = _mm_cvtss_f32(h);
        const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        __m256i q[4];
        for (int i = 0; i < 4; i++) {
            __m256 r = _mm256_round_ps(_mm256_mul_ps(v[i], _mm256_set1_ps(id)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            q[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
        }
        const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)(xq + b * QB), _mm256_permutevar8x32_epi32(bytes, order));
        _mm256_storeu_ps(xs + b * 8, _mm256_set1_ps(d));
    }
}
#else
static void quantize_row(const void *x, int kind, int64_t K, int8_t *xq, float *xs) {
    float tmp[QB];
    for (int64_t b = 0; b < K / QB; b++) {
        float amax = 0.0f;
        for (int i = 0; i < QB; i++) {
            int64_t k = b * QB + i;
            tmp[i] = kind ? bf16_to_f32(((const uint16_t *)x)[k]) : ((const float *)x)[k];
            float a = fabsf(tmp[i]);
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int i = 0; i < QB; i++) {
            float v = nearbyintf(tmp[i] * id);
            xq[b * QB + i] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
        }
        for (int i = 0; i < 8; i++)
            xs[b * 8 + i] = d;
    }
}
#endif

/* An int8 output: a row's sum times its weight row's scale, plus the bias, as one explicit fused
 * multiply-add. Written `v * s + b`, whether the compiler fuses it depends on the code around it, so
 * the tiles and the row-by-row loops rounded differently with a bias, and a batch's rows stopped
 * equalling lone steps. */
static inline float scaled(float v, const float *scale, const float *bias, int64_t n) {
    return fmaf(v, scale[n], bias ? bias[n] : 0.0f);
}

static inline void store(void *y, int kind, int64_t i, float v) {
    if (kind)
        ((uint16_t *)y)[i] = f32_to_bf16(v);
    else
        ((float *)y)[i] = v;
}

#endif

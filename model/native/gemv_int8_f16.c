/* Weight-only int8 GEMV for batch-1 decoding on CPUs with AVX-512 FP16 (Sapphire Rapids and later).
 *
 * y[n] = scale[n] * sum_k x[k] * w[n, k] (+ bias[n]), w int8 [N, K] row-major, K % 64 == 0.
 * Each int8 weight widens to fp16 (exact) and is multiplied-added 32 lanes at a time; partial
 * sums stay in fp16 for at most 4 blocks of 64 weights, then move to an fp32 accumulator, which
 * keeps the error far below the int8 quantization error (tests check it). torch's own int8 kernel
 * widens to fp32, 16 lanes at a time, and was measured 1.3x slower on this shape of work.
 */
#include <stdint.h>
#include <stdlib.h>
#include <immintrin.h>
#include <omp.h>

/* Weights are read once per token, so they come from DRAM: asking for them 4 KB ahead (into the
 * next rows, which the same thread reads next) took a 0.5B model's int8 decode from ~32 to ~34.5
 * tokens/s here (2,048 to 8,192 bytes all measured alike; 1,024 gained little). A prefetch past
 * the end of the weights is harmless: it never faults. */
#define PREFETCH_BYTES 4096

void demi_set_threads(int n) { omp_set_num_threads(n); }

static inline float row_dot(const int8_t *restrict wr, const _Float16 *restrict x, int64_t K) {
    __m512 total = _mm512_setzero_ps();
    for (int64_t kb = 0; kb < K; kb += 256) {
        int64_t end = kb + 256 < K ? kb + 256 : K;
        __m512h a0 = _mm512_setzero_ph(), a1 = _mm512_setzero_ph();
        for (int64_t k = kb; k < end; k += 64) {
            _mm_prefetch((const char *)(wr + k + PREFETCH_BYTES), _MM_HINT_T0);
            __m512i raw = _mm512_loadu_si512((const void *)(wr + k));
            __m512h w0 = _mm512_cvtepi16_ph(_mm512_cvtepi8_epi16(_mm512_castsi512_si256(raw)));
            __m512h w1 = _mm512_cvtepi16_ph(_mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(raw, 1)));
            a0 = _mm512_fmadd_ph(w0, _mm512_loadu_ph(x + k), a0);
            a1 = _mm512_fmadd_ph(w1, _mm512_loadu_ph(x + k + 32), a1);
        }
        __m512i s = _mm512_castph_si512(_mm512_add_ph(a0, a1));
        total = _mm512_add_ps(total, _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_castsi512_si256(s))));
        total = _mm512_add_ps(total, _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_extracti64x4_epi64(s, 1))));
    }
    return _mm512_reduce_add_ps(total);
}

/* The whole batch-1 Linear in one call, so decoding pays one foreign call per projection instead
 * of a handful of torch ops (dtype casts, a bias add, an output cast): x and y are fp32
 * (kind 0) or bf16 (kind 1), bias is fp32 or NULL. Each thread scales, biases and stores the rows
 * it computed, so no serial pass over N and no scratch buffer follow the parallel loop.
 * (Four rows per step, sharing the x loads, was tried and measured 5% slower on a whole model:
 * the weights stream from DRAM, one row after another.) */
static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}

static inline uint16_t f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = { f };
    return (uint16_t)((v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16);  /* round to nearest even */
}

void demi_linear_int8(const void *restrict x, int x_kind, const int8_t *restrict w,
                      const float *restrict scale, const float *restrict bias, void *restrict y, int y_kind,
                      int64_t N, int64_t K) {
    _Float16 xh[K];
    for (int64_t k = 0; k < K; k++)
        xh[k] = (_Float16)(x_kind ? bf16_to_f32(((const uint16_t *)x)[k]) : ((const float *)x)[k]);
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float out = row_dot(w + n * K, xh, K) * scale[n] + (bias ? bias[n] : 0.0f);
        if (y_kind)
            ((uint16_t *)y)[n] = f32_to_bf16(out);
        else
            ((float *)y)[n] = out;
    }
}

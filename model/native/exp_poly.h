/* e^x for x <= 0 (scores minus their maximum, -|g| for a sigmoid), to about 2 ulp, shared by
 * decode_ops.c and prefill_attention.c: x = n ln 2 + r with |r| <= ln 2 / 2, e^r by a degree-6
 * polynomial (Cephes' coefficients), 2^n built in the exponent field. The macros take a float or a
 * vector of floats alike; `vexp_le0` is the whole of it on GCC vector types, for loops GCC 12 leaves
 * scalar around a scalar exponential even under `omp simd`. */
#ifndef DEMI_EXP_POLY_H
#define DEMI_EXP_POLY_H

#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* vector arguments of static helpers on builds without AVX */
#endif

#define DEMI_LOG2E 1.44269504088896341f
#define DEMI_EXP_LOWEST (-87.0f) /* below it e^x is under float's smallest normal */
/* r = x - n ln 2, ln 2 in two parts so that n * the first is exact */
#define DEMI_EXP_REDUCE(x, n) ((x) - (n) * 0.693359375f + (n) * 2.12194440e-4f)
#define DEMI_EXP_POLY(r)                                                                                     \
    ((((((1.9875691500e-4f * (r) + 1.3981999507e-3f) * (r) + 8.3334519073e-3f) * (r) + 4.1665795894e-2f) * (r) + \
       1.6666665459e-1f) * (r) + 5.0000001201e-1f) * (r) * (r) + (r) + 1.0f)

#if defined(__AVX512F__)
typedef float vf __attribute__((vector_size(64))); /* 16 floats: zmm */
typedef int32_t vi __attribute__((vector_size(64)));
#define VL 16
#else
typedef float vf __attribute__((vector_size(32))); /* 8 floats: ymm on AVX2, two q registers on NEON */
typedef int32_t vi __attribute__((vector_size(32)));
#define VL 8
#endif

static inline vf vselect(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }

/* e^x for x <= 0 on a vector, n rounded by the 1.5 * 2^23 trick (the vector extension has no floor) */
static inline vf vexp_le0(vf x) {
    const vf lowest = (vf){0} + DEMI_EXP_LOWEST, magic = (vf){0} + 12582912.0f;
    x = vselect(x < lowest, lowest, x);
    const vf n = (x * DEMI_LOG2E + magic) - magic;
    const vf r = DEMI_EXP_REDUCE(x, n);
    const vf p = DEMI_EXP_POLY(r);
    const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)bits;
}

#endif

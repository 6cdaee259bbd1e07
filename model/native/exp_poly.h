/* e^x for x <= 0 (scores minus their maximum), to about 2 ulp, shared by decode_ops.c (scalar, in
 * loops the compiler vectorizes) and prefill_attention.c (GCC vector types): x = n ln 2 + r with
 * |r| <= ln 2 / 2, e^r by a degree-6 polynomial (Cephes' coefficients), 2^n built in the exponent
 * field by the caller. The macros take a float or a vector of floats alike. */
#ifndef DEMI_EXP_POLY_H
#define DEMI_EXP_POLY_H

#define DEMI_LOG2E 1.44269504088896341f
#define DEMI_EXP_LOWEST (-87.0f) /* below it e^x is under float's smallest normal */
/* r = x - n ln 2, ln 2 in two parts so that n * the first is exact */
#define DEMI_EXP_REDUCE(x, n) ((x) - (n) * 0.693359375f + (n) * 2.12194440e-4f)
#define DEMI_EXP_POLY(r)                                                                                     \
    ((((((1.9875691500e-4f * (r) + 1.3981999507e-3f) * (r) + 8.3334519073e-3f) * (r) + 4.1665795894e-2f) * (r) + \
       1.6666665459e-1f) * (r) + 5.0000001201e-1f) * (r) * (r) + (r) + 1.0f)

#endif

/* Runs the native kernels on inputs from a file, for tests on CPUs this machine cannot run natively
 * (ARM under qemu-user). Input: int64 M, N, K, group; fp32 x [M, K]; int8 w [N, K]; fp32 scale [N];
 * uint8 packed int4 [N, K / 2]; IEEE half scale4 and offset4 [N, K / group]. Output: the path's name
 * (16 bytes, NUL-padded), then fp32 y8 [M, N] and y4 [M, N]. The library's own self-check (every kernel
 * against a scalar reference, the prompt attention too) runs first: exit 4 when it fails. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void demi_linear_q8(const void *x, int x_kind, int64_t M, const int8_t *w, const float *scale, const float *bias,
                    void *y, int y_kind, int64_t N, int64_t K, int one_row);
void demi_linear_q4(const void *x, int x_kind, int64_t M, const uint8_t *w, const uint16_t *scale, const uint16_t *zero,
                    int64_t group, const float *bias, void *y, int y_kind, int64_t N, int64_t K, int one_row);
const char *demi_path(void);
int demi_selftest(void);

static void *take(FILE *f, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "short input\n");
        exit(2);
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    if (!in || !out)
        return 2;
    if (demi_selftest())
        return 4;
    int64_t *dims = take(in, 4 * sizeof(int64_t));
    int64_t M = dims[0], N = dims[1], K = dims[2], G = dims[3];
    float *x = take(in, sizeof(float) * M * K);
    int8_t *w = take(in, N * K);
    float *scale = take(in, sizeof(float) * N);
    uint8_t *w4 = take(in, N * K / 2);
    uint16_t *s4 = take(in, sizeof(uint16_t) * N * (K / G)), *o4 = take(in, sizeof(uint16_t) * N * (K / G));
    float *y8 = calloc(M * N, sizeof(float)), *y4 = calloc(M * N, sizeof(float));
    demi_linear_q8(x, 0, M, w, scale, NULL, y8, 0, N, K, 0);
    demi_linear_q4(x, 0, M, w4, s4, o4, G, NULL, y4, 0, N, K, 0);
    /* one weight row at a time: the same numbers bit for bit, or exit 3 */
    float *z8 = calloc(M * N, sizeof(float)), *z4 = calloc(M * N, sizeof(float));
    demi_linear_q8(x, 0, M, w, scale, NULL, z8, 0, N, K, 1);
    demi_linear_q4(x, 0, M, w4, s4, o4, G, NULL, z4, 0, N, K, 1);
    if (memcmp(y8, z8, sizeof(float) * M * N) || memcmp(y4, z4, sizeof(float) * M * N))
        return 3;
    char name[16] = {0};
    strncpy(name, demi_path(), sizeof(name) - 1);
    fwrite(name, 1, sizeof(name), out);
    fwrite(y8, sizeof(float), M * N, out);
    fwrite(y4, sizeof(float), M * N, out);
    return fclose(out) != 0;
}

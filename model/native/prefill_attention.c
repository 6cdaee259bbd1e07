/* A prefill's causal grouped-query attention in one native call.
 *
 * torch's SDPA on a CPU runs a prompt's attention as blocked GEMMs per query head, reading each key
 * and value block once for every head of a group and computing the masked upper half of the blocks
 * on the diagonal. Here the query heads that share a key head are tiled together: a tile of MR query
 * vectors (positions times the group's heads) is scored against blocks of NB keys, the keys read
 * once for the whole tile from a transposed copy (so the scores of one query are a vector over keys),
 * with an online softmax (running maximum and sum per query, as flash attention does) and the values
 * accumulated per tile. Key blocks past a tile's last position are never visited.
 *
 * Plain C with fixed tile sizes that the compiler vectorizes with each kernel path's flags (the
 * same build as qmatmul.c and decode_ops.c, see native_build.py). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exp_poly.h"

#define MR 6 /* query vectors per tile: MR x 2 score vectors and MR x 2 value accumulators in registers */
#define MAX_D 256

#define NB (2 * VL) /* keys per block: two vectors of scores per query */

static inline float hmax(vf a) {
    float top = a[0];
    for (int e = 1; e < VL; e++)
        top = a[e] > top ? a[e] : top;
    return top;
}

static inline float hsum(vf a) {
    float total = 0.0f;
    for (int e = 0; e < VL; e++)
        total += a[e];
    return total;
}

/* One tile of query vectors and its running softmax: MR vectors (positions times the group's heads)
 * already scaled, each with the first and last key it may see (first > 0 for a sliding window). */
typedef struct {
    vf o[MR][MAX_D / VL]; /* vector-typed, so the accumulators' stores and loads forward */
    float qv[MR][MAX_D];
    float m[MR], l[MR];
    int64_t first[MR], last[MR];
    float *out[MR];
    int rows; /* real vectors (a short last tile repeats its last one) */
    int64_t lo, hi; /* the keys any of them sees */
} Tile;

/* One block of NB keys from j0 for tile `t`: keys kt [d][ldk] (transposed, zero past the end), values
 * at vals + j * v_row. Scores stay in registers (MR x NB / VL vectors); the values are accumulated two
 * vectors of columns at a time over the block's keys, MR rows at once, so each value vector loaded
 * serves MR rows. */
static void tile_block(Tile *restrict t, int64_t j0, const float *restrict kt, int64_t ldk,
                       const float *restrict vals, int64_t v_row, int64_t d) {
    vf s[MR][NB / VL];
    for (int i = 0; i < MR; i++)
        for (int b = 0; b < NB / VL; b++)
            s[i][b] = (vf){0};
    for (int64_t k = 0; k < d; k++) {
        const float *kr = kt + k * ldk + j0;
        vf kv[NB / VL];
        for (int b = 0; b < NB / VL; b++)
            memcpy(&kv[b], kr + b * VL, sizeof(vf));
        for (int i = 0; i < MR; i++) {
            const float qik = t->qv[i][k];
            for (int b = 0; b < NB / VL; b++)
                s[i][b] += qik * kv[b];
        }
    }
    vf p[MR][NB / VL];
    float corr[MR];
    vi lane;
    for (int e = 0; e < VL; e++)
        lane[e] = e;
    for (int i = 0; i < MR; i++) {
        /* the keys of the block this row sees: jj in [from, to] */
        const int32_t from = (int32_t)(t->first[i] - j0 < 0 ? 0 : t->first[i] - j0);
        const int32_t to = (int32_t)(t->last[i] - j0 > NB - 1 ? NB - 1 : t->last[i] - j0);
        vi seen[NB / VL];
        vf top_v = (vf){0} + t->m[i];
        for (int b = 0; b < NB / VL; b++) {
            const vi jj = lane + b * VL;
            seen[b] = (jj >= from) & (jj <= to);
            const vf x = vselect(seen[b], s[i][b], (vf){0} - INFINITY);
            top_v = vselect(x > top_v, x, top_v);
        }
        const float top = hmax(top_v);
        if (i >= t->rows || top == -INFINITY) { /* a pad row, or nothing seen yet (a window's start) */
            corr[i] = 1.0f;
            for (int b = 0; b < NB / VL; b++)
                p[i][b] = (vf){0};
            continue;
        }
        corr[i] = vexp_le0((vf){0} + (t->m[i] - top))[0];
        vf sum = (vf){0};
        for (int b = 0; b < NB / VL; b++) {
            p[i][b] = vselect(seen[b], vexp_le0(s[i][b] - top), (vf){0});
            sum += p[i][b];
        }
        t->l[i] = t->l[i] * corr[i] + hsum(sum);
        t->m[i] = top;
    }
    /* keys past the tile's last position have p = 0 and may lie past the cache: not read */
    const int jj_end = (int)(t->hi - j0 + 1 < NB ? t->hi - j0 + 1 : NB);
    for (int64_t c = 0; c < d / VL; c += 2) {
        vf acc[MR][2];
        for (int i = 0; i < MR; i++) {
            acc[i][0] = t->o[i][c] * corr[i];
            acc[i][1] = t->o[i][c + 1] * corr[i];
        }
        for (int jj = 0; jj < jj_end; jj++) {
            const float *vj = vals + (j0 + jj) * v_row + c * VL;
            vf v0, v1;
            memcpy(&v0, vj, sizeof v0);
            memcpy(&v1, vj + VL, sizeof v1);
            for (int i = 0; i < MR; i++) {
                acc[i][0] += p[i][jj / VL][jj % VL] * v0;
                acc[i][1] += p[i][jj / VL][jj % VL] * v1;
            }
        }
        for (int i = 0; i < MR; i++) {
            t->o[i][c] = acc[i][0];
            t->o[i][c + 1] = acc[i][1];
        }
    }
}

/* Tiles per task: they take each key block in turn while it is in L1 (a tile alone streamed every
 * key and value from L2 once per MR query vectors) */
#define TILES 4

/* Causal attention for `count` query rows at positions start .. start + count - 1.
 * q: row t's heads at q + t * q_row (hq heads of d side by side, rotated); keys of kv head g at
 * position j at k + g * k_head + j * k_row (d floats), values likewise, for positions
 * 0 .. start + count - 1; window: 0, or the sliding window (a row at p sees p - window + 1 .. p);
 * out [count, hq * d]. Returns 0, or -1 (out untouched) when d is not a multiple of two vectors or
 * over MAX_D, hq is not a multiple of hkv, or memory runs out. */
int demi_prefill_attention(const float *restrict q, int64_t q_row, const float *restrict k, int64_t k_row,
                           int64_t k_head, const float *restrict v, int64_t v_row, int64_t v_head, int64_t start,
                           int64_t count, int64_t hq, int64_t hkv, int64_t d, int64_t window, float *restrict out) {
    if (d > MAX_D || d % (2 * VL) || hkv < 1 || hq % hkv)
        return -1;
    const int64_t keys = start + count, ldk = (keys + NB - 1) / NB * NB, group = hq / hkv;
    float *kt = calloc((size_t)(hkv * d * ldk), sizeof(float));
    if (!kt)
        return -1;
    #pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < hkv; g++)
        for (int64_t j = 0; j < keys; j++)
            for (int64_t c = 0; c < d; c++)
                kt[(g * d + c) * ldk + j] = k[g * k_head + j * k_row + c];
    const float scale = 1.0f / sqrtf((float)d);
    const int64_t vecs = count * group, span = MR * TILES, tasks = (vecs + span - 1) / span;
    /* later tasks see more keys: they go first, dynamically, so both cores finish together; one kv
     * head's tasks after another's, so a core's keys and values are one head's */
    #pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < hkv * tasks; task++) {
        const int64_t g = task / tasks, v0 = (tasks - 1 - task % tasks) * span;
        Tile tiles[TILES];
        int used = 0;
        int64_t lo = INT64_MAX, hi = -1;
        for (int n = 0; n < TILES && v0 + n * MR < vecs; n++, used++) {
            Tile *t = &tiles[n];
            t->rows = 0;
            for (int i = 0; i < MR; i++) {
                const int64_t vec = v0 + n * MR + i < vecs ? v0 + n * MR + i : vecs - 1;
                const int64_t row = vec / group, h = g * group + vec % group;
                const float *src = q + row * q_row + h * d;
                for (int64_t c = 0; c < d; c++)
                    t->qv[i][c] = src[c] * scale;
                t->last[i] = start + row;
                t->first[i] = window > 0 && t->last[i] - window + 1 > 0 ? t->last[i] - window + 1 : 0;
                t->out[i] = out + row * hq * d + h * d;
                t->rows += v0 + n * MR + i < vecs;
                t->m[i] = -INFINITY;
                t->l[i] = 0.0f;
                for (int64_t c = 0; c < d / VL; c++)
                    t->o[i][c] = (vf){0};
            }
            t->lo = t->first[0];
            t->hi = t->last[MR - 1];
            for (int i = 0; i < MR; i++) {
                t->lo = t->first[i] < t->lo ? t->first[i] : t->lo;
                t->hi = t->last[i] > t->hi ? t->last[i] : t->hi;
            }
            lo = t->lo < lo ? t->lo : lo;
            hi = t->hi > hi ? t->hi : hi;
        }
        for (int64_t j0 = lo - lo % NB; j0 <= hi; j0 += NB)
            for (int n = 0; n < used; n++)
                if (j0 + NB > tiles[n].lo && j0 <= tiles[n].hi)
                    tile_block(&tiles[n], j0, kt + g * d * ldk, ldk, v + g * v_head, v_row, d);
        for (int n = 0; n < used; n++) {
            const Tile *t = &tiles[n];
            for (int i = 0; i < t->rows; i++) {
                const float inv = t->l[i] > 0.0f ? 1.0f / t->l[i] : 0.0f;
                for (int64_t c = 0; c < d / VL; c++) {
                    const vf r = t->o[i][c] * inv;
                    memcpy(t->out[i] + c * VL, &r, sizeof r);
                }
            }
        }
    }
    free(kt);
    return 0;
}

/* The self-check's part for this file (demi_selftest runs it): a small prefill with a chunk before it
 * and a sliding window, against a scalar two-pass softmax in double. */
int demi_prefill_attention_selftest(void) {
    enum { T = 21, START = 4, HQ = 4, HKV = 2, D = 64, LEN = START + T, WINDOW = 9 };
    static float q[T * HQ * D], kc[HKV * LEN * D], vc[HKV * LEN * D], out[T * HQ * D];
    uint32_t s = 777u;
    float *all[3] = {q, kc, vc};
    const int sizes[3] = {T * HQ * D, HKV * LEN * D, HKV * LEN * D};
    for (int a = 0; a < 3; a++)
        for (int i = 0; i < sizes[a]; i++) {
            s = s * 1664525u + 1013904223u;
            all[a][i] = (float)((int32_t)(s >> 8) % 2001 - 1000) / 300.0f;
        }
    if (demi_prefill_attention(q, HQ * D, kc, D, LEN * D, vc, D, LEN * D, START, T, HQ, HKV, D, WINDOW, out))
        return 1;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < HQ; h++) {
            const int g = h / (HQ / HKV), pos = START + t, lo = pos - WINDOW + 1 > 0 ? pos - WINDOW + 1 : 0;
            double sc[LEN], top = -INFINITY, total = 0.0;
            for (int j = lo; j <= pos; j++) {
                double dot = 0.0;
                for (int k = 0; k < D; k++)
                    dot += (double)q[(t * HQ + h) * D + k] * kc[(g * LEN + j) * D + k];
                sc[j] = dot / sqrt((double)D);
                top = sc[j] > top ? sc[j] : top;
            }
            for (int j = lo; j <= pos; j++)
                total += sc[j] = exp(sc[j] - top);
            for (int k = 0; k < D; k++) {
                double want = 0.0;
                for (int j = lo; j <= pos; j++)
                    want += sc[j] / total * vc[(g * LEN + j) * D + k];
                if (fabs(out[(t * HQ + h) * D + k] - want) > 1e-4 * (fabs(want) + 1.0))
                    return 1;
            }
        }
    return 0;
}

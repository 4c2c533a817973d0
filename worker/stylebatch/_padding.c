/* Padded copies of channels-last pictures for fast_nets' convolutions: only copies, so the same bits
 * on every CPU. Part of the _native library (setup.py); loaded by stylebatch/native.py.
 *
 * row_strip(x, h, w, c, size, r0, r1, pad, mode, extra, out): x [h][w][c] values of `size` bytes
 * (channels last); out [r1 - r0][w + 2 pad + extra][c] = rows [r0, r1) of x padded by `pad` columns
 * each side, rows and columns outside x mapped back into it as `mode` pads them (REFLECT: -1 -> 1,
 * h -> h - 2; REPLICATE: the nearest edge), then `extra` columns of zeros on the right. F.pad(x,
 * [pad] * 4, mode) is the strip of rows [-pad, h + pad). The caller keeps reflected indices to one
 * reflection (-(h - 1) <= r0, r1 <= 2h - 1, pad < w). torch's reflection pad of a channels-last
 * picture and its strips by indexing (fast_nets._row_strip) were ~5% of a bf16 frame with AMX.
 *
 * The input of a network's first layer as fast_nets.column_pair_conv convolves it in bf16.
 *
 * A KxK convolution of a picture of few channels (3: RGB) wastes oneDNN's bf16 kernel: it pads the
 * input channels to an even count (bf16 dot products take pairs), so 3 channels cost 4. Placing the
 * reflection-padded picture beside itself shifted `shift` = (K + 1) / 2 columns gives 2C channels
 * (6, no padding), on which the same layer is a K x shift convolution: half the columns of taps,
 * (about 18 against 22 ms for the built-in net's 9x9 layer at 640x360 on a Zen 4).
 *
 * column_pairs(x, h, w, c, pad, shift, out, ow): x [h][w][c] bf16 (16 bits a value, channels last);
 * out [h + 2 pad][ow][2c]: out[r][m][0:c] = xpad[r][m], out[r][m][c:2c] = xpad[r][m + shift] (0 past
 * the padded width), xpad being x reflection-padded by `pad` on every side (pad < h, pad < w; the
 * caller keeps shift <= w so that every index reflects once at most).
 * For a K x K layer (K = 2 pad + 1) ow = w + shift - 1 columns give w outputs.
 */
#include <stdint.h>
#include <string.h>

#include "_native.h"

enum { REFLECT = 0, REPLICATE = 1 };

static inline long reflect(long i, long n)
{
    if (i < 0)
        i = -i;
    if (i > n - 1)
        i = 2 * (n - 1) - i;
    return i;
}

static inline long edge(long i, long n, int mode)
{
    if (mode == REFLECT)
        return reflect(i, n);
    return i < 0 ? 0 : i > n - 1 ? n - 1 : i;
}

CLONES void stylebatch_row_strip(const unsigned char *x, long h, long w, long c, long size, long r0, long r1,
                                 long pad, int mode, long extra, unsigned char *out)
{
    long px = c * size, ow = (w + 2 * pad + extra) * px; /* bytes a pixel, a row of out */
    for (long r = r0; r < r1; r++) {
        const unsigned char *row = x + edge(r, h, mode) * w * px;
        unsigned char *o = out + (r - r0) * ow;
        for (long m = 0; m < pad; m++) {
            memcpy(o + m * px, row + edge(m - pad, w, mode) * px, px);
            memcpy(o + (pad + w + m) * px, row + edge(w + m, w, mode) * px, px);
        }
        memcpy(o + pad * px, row, w * px);
        memset(o + (w + 2 * pad) * px, 0, extra * px);
    }
}

/* out pixel m of a row (o) from its picture row: either half reflected, the second 0 past the padding */
static void edge_pixel(const uint16_t *row, long w, long c, long pad, long shift, long padded, uint16_t *o, long m)
{
    memcpy(o + m * 2 * c, row + reflect(m - pad, w) * c, c * sizeof *o);
    if (m + shift < padded)
        memcpy(o + m * 2 * c + c, row + reflect(m + shift - pad, w) * c, c * sizeof *o);
    else
        memset(o + m * 2 * c + c, 0, c * sizeof *o);
}

CLONES void stylebatch_column_pairs(const uint16_t *x, long h, long w, long c, long pad, long shift,
                                    uint16_t *out, long ow)
{
    long padded = w + 2 * pad;
    for (long r = 0; r < h + 2 * pad; r++) {
        const uint16_t *row = x + reflect(r - pad, h) * w * c;
        uint16_t *o = out + r * ow * 2 * c;
        long m = 0, inside = w + pad - shift < ow ? w + pad - shift : ow; /* [pad, inside): both halves in x */
        for (; m < pad && m < ow; m++)
            edge_pixel(row, w, c, pad, shift, padded, o, m);
        if (c == 3) { /* RGB: the common case, values moved one by one (memcpy of 6 bytes costs a call) */
            const uint16_t *a = row + (m - pad) * 3, *b = row + (m - pad + shift) * 3;
            for (uint16_t *d = o + m * 6; m < inside; m++, a += 3, b += 3, d += 6) {
                d[0] = a[0], d[1] = a[1], d[2] = a[2];
                d[3] = b[0], d[4] = b[1], d[5] = b[2];
            }
        }
        for (; m < ow; m++)
            edge_pixel(row, w, c, pad, shift, padded, o, m);
    }
}

/* interleave(y, n, w, co, size, out): the four phases of fast_nets.UpsampleConv2x's band of rows into
 * its upsampled picture. y [n + 1][w + 1][4 co] (channels last, the channels phase-major: phase
 * 2a + b, then channel), out [n][2][w][2][co] (rows 2i + a, columns 2j + b):
 * out[i][a][j][b][k] = y[i + a][j + b][(2a + b) co + k]; values of `size` bytes (2 or 4). */
#define INTERLEAVE(T)                                                                                      \
    for (long i = 0; i < n; i++)                                                                           \
        for (long a = 0; a < 2; a++) {                                                                     \
            T *o = (T *)out + (i * 2 + a) * w * 2 * co;                                                    \
            for (long j = 0; j < w; j++)                                                                   \
                for (long b = 0; b < 2; b++) {                                                             \
                    const T *s = (const T *)y + ((i + a) * (w + 1) + j + b) * 4 * co + (2 * a + b) * co;   \
                    for (long k = 0; k < co; k++)                                                          \
                        *o++ = s[k];                                                                       \
                }                                                                                          \
        }

CLONES void stylebatch_interleave(const void *y, long n, long w, long co, long size, void *out)
{
    if (size == 2) {
        INTERLEAVE(uint16_t)
    } else {
        INTERLEAVE(uint32_t)
    }
}

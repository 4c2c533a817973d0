/* The input of a network's first layer as fast_nets.column_pair_conv convolves it in bf16.
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
 * For a K x K layer (K = 2 pad + 1) ow = w + shift - 1 columns give w outputs. Only copies: the same
 * bits on every CPU. Part of the _native library (setup.py); loaded by stylebatch/native.py.
 */
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

static inline long reflect(long i, long n)
{
    if (i < 0)
        i = -i;
    if (i > n - 1)
        i = 2 * (n - 1) - i;
    return i;
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

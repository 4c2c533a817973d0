/* A frame's conversions on its way into and out of a network (models.Stylizer), each one pass where
 * torch's operations take two to four (about 2 ms of a bf16 frame of 640x360 on one core with AMX,
 * ~7% of it; docs/benchmarks.md). Part of the _native library (setup.py); loaded by stylebatch/native.py.
 *
 * frames_to_unit(u, n, out): out[i] = u[i] / 255 in fp32 (n values): the decoder's uint8 RGB as the
 *     networks' 0..1 input. IEEE division, so torch's `.float().div_(255)` gives the same bits.
 * centred(x, pixels, c, dtype, out): x [pixels][c] fp32 (channels last, c <= MAX_CHANNELS); out (same
 *     shape, fp32 if dtype is 0, bf16 if 1) = x less its channel's mean, rounded once: the input of a
 *     shift-invariant network in reduced precision, centred before rounding (models.Stylizer._paint).
 *     The means are summed in doubles, 16 pixels' lanes in turn; models.centred_means (torch, another
 *     order) gets the same means wherever the sums are exact, as for frames as decoded (k/255 values)
 *     up to 4 M pixels; elsewhere a mean may differ in its last bit.
 * frames_from_unit(y, n, out): out[i] = y[i] * 255 clamped to 0..255, rounded to nearest even (NaN:
 *     0), as uint8: `y.mul_(255).round_().clamp_(0, 255).to(torch.uint8)`, the same bits.
 */
#include <stdint.h>

#include "_native.h"

#define MAX_CHANNELS 16
#define BLOCK_PIXELS 16 /* pixels a step: whole pixels, whole vectors, the channels' pattern repeating */

CLONES void stylebatch_frames_to_unit(const uint8_t *u, long n, float *out)
{
    for (long i = 0; i < n; i++)
        out[i] = (float)u[i] / 255.0f;
}

CLONES int stylebatch_centred(const float *x, long pixels, long c, int dtype, void *out)
{
    if (c < 1 || c > MAX_CHANNELS || pixels < 1)
        return -1;
    long step = c * BLOCK_PIXELS, whole = pixels / BLOCK_PIXELS * step, n = pixels * c;
    double sums[MAX_CHANNELS * BLOCK_PIXELS] = {0};
    long i = 0;
    for (; i < whole; i += step)
        for (long j = 0; j < step; j++)
            sums[j] += x[i + j];
    for (long j = 0; i + j < n; j++)
        sums[j] += x[i + j];
    float pattern[MAX_CHANNELS * BLOCK_PIXELS];
    for (long k = 0; k < c; k++) {
        double total = 0;
        for (long j = k; j < step; j += c)
            total += sums[j];
        float mean = (float)(total / (double)pixels);
        for (long j = k; j < step; j += c)
            pattern[j] = mean;
    }
    if (dtype == 0) {
        float *o = out;
        for (i = 0; i < whole; i += step)
            for (long j = 0; j < step; j++)
                o[i + j] = x[i + j] - pattern[j];
        for (long j = 0; i + j < n; j++)
            o[i + j] = x[i + j] - pattern[j];
    } else {
        uint16_t *o = out;
        for (i = 0; i < whole; i += step)
            for (long j = 0; j < step; j++)
                o[i + j] = f32_to_bf16(x[i + j] - pattern[j]);
        for (long j = 0; i + j < n; j++)
            o[i + j] = f32_to_bf16(x[i + j] - pattern[j]);
    }
    return 0;
}

CLONES void stylebatch_frames_from_unit(const float *y, long n, uint8_t *out)
{
    for (long i = 0; i < n; i++) {
        float v = y[i] * 255.0f;
        v = v > 0.0f ? v : 0.0f; /* NaN too */
        v = v < 255.0f ? v : 255.0f;
        v = (v + 8388608.0f) - 8388608.0f; /* 2^23: to the nearest integer, ties to even (0 <= v < 2^23) */
        out[i] = (uint8_t)(int32_t)v;
    }
}

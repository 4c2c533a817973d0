/* Instance norm of one picture in place, in one call: the CPU kernel behind fast_nets.instance_norm_.
 *
 * A plain C library (no Python API), loaded with ctypes by stylebatch/native_norm.py; built by pip
 * as an optional extension (pyproject.toml), so that an install without a C compiler still works,
 * with torch's operations instead (the same statistics, several times slower: docs/benchmarks.md).
 *
 * What it computes is fast_nets.instance_norm_'s contract, in one pass for the statistics and one
 * for the normalisation, each in cache-sized rows and vectorised across them:
 *   - each channel is shifted by the mean of every `sample_stride`-th pixel (a value near its mean),
 *     and the statistics are those of the deviations, so that the variance (mean square minus squared
 *     mean) does not cancel away on low-contrast pictures; partial sums in fp32 over at most
 *     FLUSH_VALUES values, totals in double;
 *   - a channel whose variance is at most `flat` * (mean^2 + 1) is constant but for rounding: scale 0,
 *     it becomes its bias (fast_nets.FLAT_VARIANCE);
 *   - y = (x - shift) * scale + beta, scale = weight / sqrt(variance + eps), beta = bias - (mean -
 *     shift) * scale (x * scale + bias - mean * scale would cancel away on low-contrast pictures),
 *     then the ReLU (`relu`) and then `+ residual` (a picture of the same shape, type and layout, or
 *     NULL), rounded once to the picture's type: bf16 to nearest even, as torch rounds.
 * One thread, one fixed order: the same bits however many threads torch has.
 *
 * Pictures: `x` holds n pixels of c channels, either as pixels (channels last: [n][c]) or as rows
 * (NCHW: [c][n]); dtype 0 is fp32, 1 is bf16 (its 16 bits). Returns 0, or -1 for what it does not
 * take (more than MAX_CHANNELS channels, an unknown dtype or layout, no pixels): the caller then
 * uses torch's operations.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_CHANNELS 1024
#define ROW_VALUES 64      /* a pixel row's width in values: whole pixels, a multiple of 16 where it can */
#define FLUSH_VALUES 8192  /* values summed in fp32 before their sum goes into the double total */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
/* one build for every x86-64 node: AVX-512, AVX2 or SSE2 chosen at load time */
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

static inline float bf16_to_f32(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc0; /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* The loops, once per picture type: LOAD(p, i) reads value i as fp32, STORE(p, i, f) writes it. */
#define LOAD_F32(p, i) (((const float *)(p))[i])
#define STORE_F32(p, i, f) (((float *)(p))[i] = (f))
#define LOAD_BF16(p, i) bf16_to_f32(((const uint16_t *)(p))[i])
#define STORE_BF16(p, i, f) (((uint16_t *)(p))[i] = f32_to_bf16(f))

/* a pixel row's width: whole pixels, a multiple of 16 values where that stays within ROW_VALUES */
static long row_width(long c)
{
    long w = c;
    while (w % 16 != 0 && w + c <= ROW_VALUES)
        w += c;
    if (w % 16 != 0)
        w = c;
    while (w + w <= ROW_VALUES)
        w += w;
    return w;
}

/* scale and beta of each channel from its shift and the deviations' sums over n pixels: a pixel's
 * value is then (x - shift) * scale + beta, which does not cancel away where the mean is large against
 * the spread (x * scale' + beta' would: both terms near mean / spread) */
static void affine(long c, long n, const double *shift, const double *sums, const double *squares,
                   const float *weight, const float *bias, double flat, double eps, float *scale, float *beta)
{
    for (long k = 0; k < c; k++) {
        double residual = sums[k] / n;
        double variance = squares[k] / n - residual * residual;
        double mean = shift[k] + residual;
        if (variance < 0)
            variance = 0;
        double s = variance <= flat * (mean * mean + 1) ? 0.0 : weight[k] / sqrt(variance + eps);
        scale[k] = (float)s;
        beta[k] = (float)(bias[k] - residual * s);
    }
}

/* y = x * scale + beta, the ReLU where RELU, + residual where RES (constants: one loop each, vectorised) */
#define NORMALISE_PIXELS(LOAD, STORE, RELU, RES)                                                           \
    do {                                                                                                   \
    for (long r = 0; r < rows; r++) {                                                                      \
        long at = r * width;                                                                               \
        for (long j = 0; j < width; j++) {                                                                 \
            float y = (LOAD(x, at + j) - row_shift[j]) * scale[j] + beta[j];                               \
            if (RELU)                                                                                      \
                y = y < 0 ? 0 : y;                                                                         \
            if (RES)                                                                                       \
                y += LOAD(residual, at + j);                                                               \
            STORE(x, at + j, y);                                                                           \
        }                                                                                                  \
    }                                                                                                      \
    } while (0)

#define NORMALISE_ROW(LOAD, STORE, RELU, RES)                                                              \
    do {                                                                                                   \
    for (long p = 0; p < n; p++) {                                                                         \
        float y = (LOAD(x, at + p) - sh) * scale + beta;                                                   \
        if (RELU)                                                                                          \
            y = y < 0 ? 0 : y;                                                                             \
        if (RES)                                                                                           \
            y += LOAD(residual, at + p);                                                                   \
        STORE(x, at + p, y);                                                                               \
    }                                                                                                      \
    } while (0)

#define PIXELS_KERNEL(NAME, LOAD, STORE)                                                                   \
    CLONES static void NAME(void *x, long n, long c, const float *weight, const float *bias, int relu,    \
                            const void *residual, long sample_stride, double flat, double eps)           \
    {                                                                                                      \
        double shift[MAX_CHANNELS], sums[MAX_CHANNELS], squares[MAX_CHANNELS];                             \
        float row_shift[MAX_CHANNELS], s[MAX_CHANNELS], q[MAX_CHANNELS], scale[MAX_CHANNELS],              \
            beta[MAX_CHANNELS];                                                                            \
        long width = row_width(c), lanes = width / c, rows = n / lanes, samples = 0;                       \
        long flush = FLUSH_VALUES / width > 0 ? FLUSH_VALUES / width : 1;                                  \
        for (long k = 0; k < c; k++)                                                                       \
            shift[k] = sums[k] = squares[k] = 0;                                                           \
        for (long p = 0; p < n; p += sample_stride, samples++)                                             \
            for (long k = 0; k < c; k++)                                                                   \
                shift[k] += LOAD(x, p * c + k);                                                            \
        for (long k = 0; k < c; k++)                                                                       \
            shift[k] = (float)(shift[k] / samples);                                                        \
        for (long j = 0; j < width; j++)                                                                   \
            row_shift[j] = (float)shift[j % c];                                                            \
        for (long block = 0; block < rows; block += flush) {                                               \
            long end = block + flush < rows ? block + flush : rows;                                        \
            for (long j = 0; j < width; j++)                                                               \
                s[j] = q[j] = 0;                                                                           \
            for (long r = block; r < end; r++)                                                             \
                for (long j = 0; j < width; j++) {                                                         \
                    float d = LOAD(x, r * width + j) - row_shift[j];                                       \
                    s[j] += d;                                                                             \
                    q[j] += d * d;                                                                         \
                }                                                                                          \
            for (long j = 0; j < width; j++) {                                                             \
                sums[j % c] += s[j];                                                                       \
                squares[j % c] += q[j];                                                                    \
            }                                                                                              \
        }                                                                                                  \
        for (long i = rows * width; i < n * c; i++) { /* the pixels left over from whole rows */          \
            double d = LOAD(x, i) - row_shift[i % c];                                                      \
            sums[i % c] += d;                                                                              \
            squares[i % c] += d * d;                                                                       \
        }                                                                                                  \
        affine(c, n, shift, sums, squares, weight, bias, flat, eps, scale, beta);                          \
        for (long j = c; j < width; j++) {                                                                 \
            scale[j] = scale[j % c];                                                                       \
            beta[j] = beta[j % c];                                                                         \
        }                                                                                                  \
        if (relu && residual)                                                                              \
            NORMALISE_PIXELS(LOAD, STORE, 1, 1);                                                           \
        else if (relu)                                                                                     \
            NORMALISE_PIXELS(LOAD, STORE, 1, 0);                                                           \
        else if (residual)                                                                                 \
            NORMALISE_PIXELS(LOAD, STORE, 0, 1);                                                           \
        else                                                                                               \
            NORMALISE_PIXELS(LOAD, STORE, 0, 0);                                                           \
        for (long i = rows * width; i < n * c; i++) {                                                      \
            float y = (LOAD(x, i) - row_shift[i % c]) * scale[i % c] + beta[i % c];                        \
            y = relu && y < 0 ? 0 : y;                                                                     \
            y = residual ? y + LOAD(residual, i) : y;                                                      \
            STORE(x, i, y);                                                                                \
        }                                                                                                  \
    }

#define ROWS_KERNEL(NAME, LOAD, STORE)                                                                     \
    CLONES static void NAME(void *x, long n, long c, const float *weight, const float *bias, int relu,    \
                            const void *residual, long sample_stride, double flat, double eps)           \
    {                                                                                                      \
        for (long k = 0; k < c; k++) {                                                                     \
            long at = k * n, samples = 0, whole = n - n % ROW_VALUES;                                      \
            double shift = 0, sums = 0, squares = 0;                                                       \
            float s[ROW_VALUES], q[ROW_VALUES], scale, beta;                                               \
            for (long p = 0; p < n; p += sample_stride, samples++)                                         \
                shift += LOAD(x, at + p);                                                                  \
            float sh = (float)(shift / samples);                                                           \
            shift = sh;                                                                                    \
            for (long block = 0; block < whole; block += FLUSH_VALUES) { /* ROW_VALUES lanes: 4 vectors */ \
                long end = block + FLUSH_VALUES < whole ? block + FLUSH_VALUES : whole;                    \
                for (long j = 0; j < ROW_VALUES; j++)                                                      \
                    s[j] = q[j] = 0;                                                                       \
                for (long p = block; p < end; p += ROW_VALUES)                                             \
                    for (long j = 0; j < ROW_VALUES; j++) {                                                \
                        float d = LOAD(x, at + p + j) - sh;                                                \
                        s[j] += d;                                                                         \
                        q[j] += d * d;                                                                     \
                    }                                                                                      \
                for (long j = 0; j < ROW_VALUES; j++) {                                                    \
                    sums += s[j];                                                                          \
                    squares += q[j];                                                                       \
                }                                                                                          \
            }                                                                                              \
            for (long p = whole; p < n; p++) {                                                             \
                double d = LOAD(x, at + p) - sh;                                                           \
                sums += d;                                                                                 \
                squares += d * d;                                                                          \
            }                                                                                              \
            affine(1, n, &shift, &sums, &squares, weight + k, bias + k, flat, eps, &scale, &beta);         \
            if (relu && residual)                                                                          \
                NORMALISE_ROW(LOAD, STORE, 1, 1);                                                          \
            else if (relu)                                                                                 \
                NORMALISE_ROW(LOAD, STORE, 1, 0);                                                          \
            else if (residual)                                                                             \
                NORMALISE_ROW(LOAD, STORE, 0, 1);                                                          \
            else                                                                                           \
                NORMALISE_ROW(LOAD, STORE, 0, 0);                                                          \
        }                                                                                                  \
    }

PIXELS_KERNEL(pixels_f32, LOAD_F32, STORE_F32)
PIXELS_KERNEL(pixels_bf16, LOAD_BF16, STORE_BF16)
ROWS_KERNEL(rows_f32, LOAD_F32, STORE_F32)
ROWS_KERNEL(rows_bf16, LOAD_BF16, STORE_BF16)

/* The one entry point (see the top of this file). layout: 0 pixels (channels last), 1 rows (NCHW). */
int stylebatch_instance_norm(void *x, int dtype, int layout, long n, long c, const float *weight,
                             const float *bias, int relu, const void *residual, long sample_stride,
                             double flat, double eps)
{
    if (n < 1 || c < 1 || c > MAX_CHANNELS || sample_stride < 1)
        return -1;
    if (layout == 0 && dtype == 0)
        pixels_f32(x, n, c, weight, bias, relu, residual, sample_stride, flat, eps);
    else if (layout == 0 && dtype == 1)
        pixels_bf16(x, n, c, weight, bias, relu, residual, sample_stride, flat, eps);
    else if (layout == 1 && dtype == 0)
        rows_f32(x, n, c, weight, bias, relu, residual, sample_stride, flat, eps);
    else if (layout == 1 && dtype == 1)
        rows_bf16(x, n, c, weight, bias, relu, residual, sample_stride, flat, eps);
    else
        return -1;
    return 0;
}

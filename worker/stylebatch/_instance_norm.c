/* Instance norm of one picture in place, in one call: the CPU kernel behind fast_nets.instance_norm_.
 *
 * Plain C (no Python API), part of the _native library loaded with ctypes by stylebatch/native.py;
 * built by pip as an optional extension (setup.py), so that an install without a C compiler still works,
 * with torch's operations instead (the same statistics, several times slower: docs/benchmarks.md).
 *
 * What it computes is fast_nets.instance_norm_'s contract, in one pass for the statistics and one
 * for the normalisation, vectorised across rows of ROW_VALUES values:
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
 *
 * Threads: up to `threads` (torch's thread count), for pictures of at least PARALLEL_VALUES values.
 * The sums are made in parts fixed by the picture's size (PART_VALUES) and added in part order, NCHW
 * channels each by one thread: the same bits however many threads run it (a run resumed with another
 * rank or thread count paints what it would have).
 *
 * Pictures: `x` holds n pixels of c channels, either as pixels (channels last: [n][c]) or as rows
 * (NCHW: [c][n]); dtype 0 is fp32, 1 is bf16 (its 16 bits). Returns 0, or -1 for what it does not
 * take (more than MAX_CHANNELS channels, an unknown dtype or layout, no pixels) or no memory for its
 * sums, with x untouched.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_native.h"

#define MAX_CHANNELS 1024
#define MAX_THREADS 64
#define ROW_VALUES 64            /* a pixel row's width in values: whole pixels, a multiple of 16 where it can */
#define FLUSH_VALUES 8192        /* values summed in fp32 before their sum goes into a double */
#define PART_VALUES (1L << 18)   /* values a part of the statistics (channels-last): fixed by size, not threads */
#define PARALLEL_VALUES (1L << 20) /* smaller pictures take one thread: starting threads would cost more */

#define LOAD_F32(p, i) (((const float *)(p))[i])
#define STORE_F32(p, i, f) (((float *)(p))[i] = (f))
#define LOAD_BF16(p, i) bf16_to_f32(((const uint16_t *)(p))[i])
#define STORE_BF16(p, i, f) (((uint16_t *)(p))[i] = f32_to_bf16(f))

/* What one norm needs, shared by its threads. */
typedef struct {
    void *x;
    const void *residual;
    long n, c, width, rows, parts, part_rows;
    int dtype, relu;
    const float *weight, *bias;
    long sample_stride;
    double flat, eps;
    float row_shift[MAX_CHANNELS], scale[MAX_CHANNELS], beta[MAX_CHANNELS];
    double *part_sums; /* [parts][2][width]: each part's sums and sums of squares per lane */
} Norm;

/* --- the loops, once per picture type: LOAD(p, i) reads value i as fp32, STORE(p, i, f) writes it --- */

/* sums and sums of squares per lane of `width` values over rows [r0, r1) of deviations from row_shift;
 * W: `width`, or ROW_VALUES as a constant (the common case: loops the compiler unrolls whole) */
#define STATS_LOOP(LOAD, W)                                                                                \
    for (long block = r0; block < r1; block += flush) {                                                    \
        long end = block + flush < r1 ? block + flush : r1;                                                \
        for (long j = 0; j < W; j++)                                                                       \
            s[j] = q[j] = 0;                                                                               \
        for (long r = block; r < end; r++)                                                                 \
            for (long j = 0; j < W; j++) {                                                                 \
                float d = LOAD(x, r * W + j) - row_shift[j];                                               \
                s[j] += d;                                                                                 \
                q[j] += d * d;                                                                             \
            }                                                                                              \
        for (long j = 0; j < W; j++) {                                                                     \
            sums[j] += s[j];                                                                               \
            squares[j] += q[j];                                                                            \
        }                                                                                                  \
    }

#define STATS_ROWS(NAME, LOAD)                                                                             \
    CLONES static void NAME(const void *x, long r0, long r1, long width, const float *row_shift,          \
                            double *sums, double *squares)                                                \
    {                                                                                                      \
        float s[MAX_CHANNELS], q[MAX_CHANNELS];                                                            \
        long flush = FLUSH_VALUES / width > 0 ? FLUSH_VALUES / width : 1;                                  \
        for (long j = 0; j < width; j++)                                                                   \
            sums[j] = squares[j] = 0;                                                                      \
        if (width == ROW_VALUES)                                                                           \
            STATS_LOOP(LOAD, ROW_VALUES)                                                                   \
        else                                                                                               \
            STATS_LOOP(LOAD, width)                                                                        \
    }

/* value i: (x - SHIFT) * SCALE + BETA, the ReLU where RELU, + residual where RES */
#define NORMALISE_VALUE(LOAD, STORE, RELU, RES, i, SHIFT, SCALE, BETA)                                      \
    {                                                                                                      \
        float y = (LOAD(x, i) - (SHIFT)) * (SCALE) + (BETA);                                               \
        if (RELU)                                                                                          \
            y = y < 0 ? 0 : y;                                                                             \
        if (RES)                                                                                           \
            y += LOAD(residual, i);                                                                        \
        STORE(x, i, y);                                                                                    \
    }

/* LOOP(LOAD, STORE, RELU, RES) with RELU and RES as constants: one vectorised loop each */
#define BY_FLAGS(LOOP, LOAD, STORE)                                                                        \
    if (relu && residual)                                                                                  \
        LOOP(LOAD, STORE, 1, 1)                                                                            \
    else if (relu)                                                                                         \
        LOOP(LOAD, STORE, 1, 0)                                                                            \
    else if (residual)                                                                                     \
        LOOP(LOAD, STORE, 0, 1)                                                                            \
    else                                                                                                   \
        LOOP(LOAD, STORE, 0, 0)

/* values [v0, v1) of a picture whose lanes repeat every `width` values (whole rows of ROW_VALUES values
 * apart, as the compiler unrolls them) */
#define PIXELS_LOOP(LOAD, STORE, RELU, RES)                                                                \
    {                                                                                                      \
        long v = v0;                                                                                       \
        if (width == ROW_VALUES)                                                                           \
            for (; v + ROW_VALUES <= v1; v += ROW_VALUES)                                                  \
                for (long j = 0; j < ROW_VALUES; j++)                                                      \
                    NORMALISE_VALUE(LOAD, STORE, RELU, RES, v + j, row_shift[j], scale[j], beta[j])        \
        for (; v < v1; v += width)                                                                         \
            for (long j = 0, e = v1 - v < width ? v1 - v : width; j < e; j++)                              \
                NORMALISE_VALUE(LOAD, STORE, RELU, RES, v + j, row_shift[j], scale[j], beta[j])            \
    }

/* one NCHW channel's n values (scalars: fewer loads) */
#define CHANNEL_LOOP(LOAD, STORE, RELU, RES)                                                               \
    for (long i = 0; i < n; i++)                                                                           \
        NORMALISE_VALUE(LOAD, STORE, RELU, RES, i, shift, scale, beta)

#define NORMALISE(NAME, LOAD, STORE)                                                                       \
    CLONES static void NAME(void *x, const void *residual, long v0, long v1, long width,                  \
                            const float *row_shift, const float *scale, const float *beta, int relu)      \
    {                                                                                                      \
        BY_FLAGS(PIXELS_LOOP, LOAD, STORE)                                                                 \
    }

#define NORMALISE_CHANNEL(NAME, LOAD, STORE)                                                               \
    CLONES static void NAME(void *x, const void *residual, long n, float shift, float scale, float beta,  \
                            int relu)                                                                      \
    {                                                                                                      \
        BY_FLAGS(CHANNEL_LOOP, LOAD, STORE)                                                                \
    }

STATS_ROWS(stats_f32, LOAD_F32)
STATS_ROWS(stats_bf16, LOAD_BF16)
NORMALISE(normalise_f32, LOAD_F32, STORE_F32)
NORMALISE(normalise_bf16, LOAD_BF16, STORE_BF16)
NORMALISE_CHANNEL(normalise_channel_f32, LOAD_F32, STORE_F32)
NORMALISE_CHANNEL(normalise_channel_bf16, LOAD_BF16, STORE_BF16)

static double load(const Norm *m, long i)
{
    return m->dtype ? bf16_to_f32(((const uint16_t *)m->x)[i]) : ((const float *)m->x)[i];
}

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

/* channel k's scale and beta from its shift and the sums of its deviations over n pixels */
static void affine(Norm *m, long k, double shift, double sums, double squares)
{
    double residual = sums / m->n;
    double variance = squares / m->n - residual * residual;
    double mean = shift + residual;
    if (variance < 0)
        variance = 0;
    double s = variance <= m->flat * (mean * mean + 1) ? 0.0 : m->weight[k] / sqrt(variance + m->eps);
    m->scale[k] = (float)s;
    m->beta[k] = (float)(m->bias[k] - residual * s);
}

/* --- channels last: parts of rows (statistics), then slices of values (normalisation) --- */

typedef struct {
    Norm *m;
    int thread, threads, phase; /* phase 0: statistics of parts; 1: normalisation */
} Task;

static void pixels_phase(const Task *t)
{
    Norm *m = t->m;
    if (t->phase == 0) {
        for (long p = t->thread; p < m->parts; p += t->threads) {
            long r0 = p * m->part_rows, r1 = r0 + m->part_rows < m->rows ? r0 + m->part_rows : m->rows;
            double *out = m->part_sums + p * 2 * m->width;
            (m->dtype ? stats_bf16 : stats_f32)(m->x, r0, r1, m->width, m->row_shift, out, out + m->width);
        }
        return;
    }
    long values = m->n * m->c, rows_each = (m->rows + t->threads - 1) / t->threads;
    long v0 = t->thread * rows_each * m->width, v1 = v0 + rows_each * m->width;
    if (t->thread == t->threads - 1 || v1 > values)
        v1 = values; /* the last slice takes the pixels left over from whole rows */
    if (v0 < v1)
        (m->dtype ? normalise_bf16 : normalise_f32)(m->x, m->residual, v0, v1, m->width, m->row_shift, m->scale,
                                                    m->beta, m->relu);
}

/* --- NCHW: each channel, statistics and normalisation, by one thread --- */

static void rows_channel(Norm *m, long k)
{
    long n = m->n, whole = n - n % ROW_VALUES, samples = 0;
    double shift = 0, sums = 0, squares = 0, part[2 * ROW_VALUES];
    for (long p = 0; p < n; p += m->sample_stride, samples++)
        shift += load(m, k * n + p);
    float sh = (float)(shift / samples);
    float row_shift[ROW_VALUES];
    for (long j = 0; j < ROW_VALUES; j++)
        row_shift[j] = sh;
    void *x = m->dtype ? (void *)((uint16_t *)m->x + k * n) : (void *)((float *)m->x + k * n);
    (m->dtype ? stats_bf16 : stats_f32)(x, 0, whole / ROW_VALUES, ROW_VALUES, row_shift, part, part + ROW_VALUES);
    for (long j = 0; j < ROW_VALUES; j++) {
        sums += part[j];
        squares += part[ROW_VALUES + j];
    }
    for (long p = whole; p < n; p++) {
        double d = load(m, k * n + p) - sh;
        sums += d;
        squares += d * d;
    }
    affine(m, k, sh, sums, squares);
    const void *res = m->residual == NULL ? NULL
                      : m->dtype          ? (const void *)((const uint16_t *)m->residual + k * n)
                                          : (const void *)((const float *)m->residual + k * n);
    (m->dtype ? normalise_channel_bf16 : normalise_channel_f32)(x, res, n, sh, m->scale[k], m->beta[k], m->relu);
}

static void rows_phase(const Task *t)
{
    for (long k = t->thread; k < t->m->c; k += t->threads)
        rows_channel(t->m, k);
}

static void *pixels_thread(void *task)
{
    pixels_phase(task);
    return NULL;
}

static void *rows_thread(void *task)
{
    rows_phase(task);
    return NULL;
}

/* Runs `phase` of `work` in `threads` threads, this one among them; a task no new thread could take
 * (the process is out of threads) runs in this one. */
static void in_threads(Norm *m, int threads, int phase, void (*work)(const Task *), void *(*start)(void *))
{
    Task tasks[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started = 1;
    threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    for (int i = 0; i < threads; i++)
        tasks[i] = (Task){m, i, threads, phase};
    for (int i = 1; i < threads && pthread_create(&ids[i], NULL, start, &tasks[i]) == 0; i++)
        started = i + 1;
    for (int i = started; i < threads; i++)
        work(&tasks[i]);
    work(&tasks[0]);
    for (int i = 1; i < started; i++)
        pthread_join(ids[i], NULL);
}

static int pixels(Norm *m, int threads)
{
    long n = m->n, c = m->c, samples = 0;
    double shift[MAX_CHANNELS], sums[MAX_CHANNELS], squares[MAX_CHANNELS];
    m->width = row_width(c);
    m->rows = n / (m->width / c);
    m->part_rows = PART_VALUES / m->width;
    m->parts = m->rows ? (m->rows + m->part_rows - 1) / m->part_rows : 0;
    if (threads > m->parts)
        threads = m->parts > 0 ? (int)m->parts : 1;
    for (long k = 0; k < c; k++)
        shift[k] = sums[k] = squares[k] = 0;
    for (long p = 0; p < n; p += m->sample_stride, samples++)
        for (long k = 0; k < c; k++)
            shift[k] += load(m, p * c + k);
    for (long k = 0; k < c; k++)
        shift[k] = (float)(shift[k] / samples);
    for (long j = 0; j < m->width; j++)
        m->row_shift[j] = (float)shift[j % c];
    m->part_sums = malloc(sizeof(double) * 2 * m->width * (m->parts ? m->parts : 1));
    if (m->part_sums == NULL)
        return -1;
    if (m->parts)
        in_threads(m, threads, 0, pixels_phase, pixels_thread);
    for (long p = 0; p < m->parts; p++) /* in part order: the same bits with any thread count */
        for (long j = 0; j < m->width; j++) {
            sums[j % c] += m->part_sums[p * 2 * m->width + j];
            squares[j % c] += m->part_sums[(p * 2 + 1) * m->width + j];
        }
    free(m->part_sums);
    for (long i = m->rows * m->width; i < n * c; i++) { /* the pixels left over from whole rows */
        double d = load(m, i) - m->row_shift[i % c];
        sums[i % c] += d;
        squares[i % c] += d * d;
    }
    for (long k = 0; k < c; k++)
        affine(m, k, shift[k], sums[k], squares[k]);
    for (long j = c; j < m->width; j++) {
        m->scale[j] = m->scale[j % c];
        m->beta[j] = m->beta[j % c];
    }
    in_threads(m, threads, 1, pixels_phase, pixels_thread);
    return 0;
}

/* The one entry point (see the top of this file). layout: 0 pixels (channels last), 1 rows (NCHW). */
int stylebatch_instance_norm(void *x, int dtype, int layout, long n, long c, const float *weight,
                             const float *bias, int relu, const void *residual, long sample_stride,
                             double flat, double eps, int threads)
{
    if (n < 1 || c < 1 || c > MAX_CHANNELS || sample_stride < 1 || (dtype != 0 && dtype != 1) ||
        (layout != 0 && layout != 1))
        return -1;
    static Norm zero;
    Norm *m = malloc(sizeof *m);
    if (m == NULL)
        return -1;
    *m = zero;
    m->x = x;
    m->residual = residual;
    m->n = n;
    m->c = c;
    m->dtype = dtype;
    m->relu = relu;
    m->weight = weight;
    m->bias = bias;
    m->sample_stride = sample_stride;
    m->flat = flat;
    m->eps = eps;
    if (threads < 1 || n * c < PARALLEL_VALUES)
        threads = 1;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    int done;
    if (layout == 0) {
        done = pixels(m, threads);
    } else {
        in_threads(m, threads > c ? (int)c : threads, 0, rows_phase, rows_thread);
        done = 0;
    }
    free(m);
    return done;
}

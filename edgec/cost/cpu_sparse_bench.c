/* Dense float32 GEMV/GEMM against CSR sparse, timed on the host CPU (edgec.cost.break_even).
 *
 * Usage: cpu_sparse_bench ROWS COLS POSITIONS REPEATS SEED TARGET_NS RATIO [RATIO ...]
 *
 * Computes Y[ROWS][POSITIONS] = W[ROWS][COLS] x X[COLS][POSITIONS] (a Dense layer when POSITIONS is
 * 1, a convolution as an im2col GEMM otherwise) with W stored dense (zeros included) and in CSR
 * (row pointers, int32 column indices, float32 values) at every pruning RATIO: exactly
 * round(RATIO * ROWS * COLS) weights, chosen uniformly at random (seeded), are zero.
 *
 * Kernels (plain C, vectorized by the compiler with `omp simd`, built with -fopenmp-simd so the
 * reductions vectorize without -ffast-math):
 * - dense GEMV: four rows at a time, each a SIMD dot product (four independent vector
 *   accumulators, one load of x for four rows);
 * - dense GEMM: one row at a time, a SIMD multiply-add over the positions per weight (register
 *   tiling over rows or positions was slower with gcc 12 on an AMD EPYC host);
 * - CSR SpMV: one row at a time, scalar with four partial sums (a vector gather is slower than
 *   scalar loads on the hosts this was written on);
 * - CSR SpMM: one row at a time, a SIMD multiply-add over the positions per non-zero.
 *
 * Timing: at every ratio, REPEATS pairs of samples (dense, then sparse) are taken; a sample runs
 * its kernel as many times as fill about TARGET_NS nanoseconds (calibrated once per kernel and
 * ratio) and gives ns per call. Pairing makes the sparse/dense ratio robust to the host's speed
 * drifting (shared or virtual CPUs). Prints one JSON object on stdout: per ratio the median dense
 * and sparse ns per call and the median of the paired sparse/dense ratios, plus the largest
 * difference between the dense and the sparse result (both must compute the same product).
 */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t rng_state;

static uint64_t next_random(void) { /* xorshift64* (Vigna 2016) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static float uniform_pm1(void) { return (float)((next_random() >> 40) * (2.0 / 16777216.0) - 1.0); }

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

typedef struct {
    int rows, cols, positions;
    const float *w;        /* rows x cols, dense */
    const int32_t *rowptr; /* rows + 1 */
    const int32_t *colidx; /* non-zeros */
    const float *vals;     /* non-zeros */
    const float *x;        /* cols x positions */
    float *y;              /* rows x positions */
} problem_t;

typedef void (*kernel_t)(const problem_t *);

static void dense_kernel(const problem_t *p) {
    const int rows = p->rows, cols = p->cols, positions = p->positions;
    const float *restrict x = p->x;
    float *restrict y = p->y;
    if (positions == 1) {
        int r = 0;
        for (; r + 4 <= rows; r += 4) {
            const float *restrict w0 = p->w + (size_t)r * cols, *restrict w1 = w0 + cols, *restrict w2 = w1 + cols, *restrict w3 = w2 + cols;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
            for (int c = 0; c < cols; c++) {
                a0 += w0[c] * x[c];
                a1 += w1[c] * x[c];
                a2 += w2[c] * x[c];
                a3 += w3[c] * x[c];
            }
            y[r] = a0;
            y[r + 1] = a1;
            y[r + 2] = a2;
            y[r + 3] = a3;
        }
        for (; r < rows; r++) {
            const float *restrict wr = p->w + (size_t)r * cols;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int c = 0; c < cols; c++) acc += wr[c] * x[c];
            y[r] = acc;
        }
        return;
    }
    for (int r = 0; r < rows; r++) {
        float *restrict yr = y + (size_t)r * positions;
        memset(yr, 0, sizeof(float) * positions);
        const float *restrict wr = p->w + (size_t)r * cols;
        for (int c = 0; c < cols; c++) {
            const float wv = wr[c];
            const float *restrict xc = x + (size_t)c * positions;
#pragma omp simd
            for (int q = 0; q < positions; q++) yr[q] += wv * xc[q];
        }
    }
}

static void sparse_kernel(const problem_t *p) {
    const int rows = p->rows, positions = p->positions;
    const float *restrict x = p->x, *restrict vals = p->vals;
    const int32_t *restrict colidx = p->colidx;
    float *restrict y = p->y;
    if (positions == 1) {
        for (int r = 0; r < rows; r++) {
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            int k = p->rowptr[r];
            const int end = p->rowptr[r + 1];
            for (; k + 4 <= end; k += 4) {
                a0 += vals[k] * x[colidx[k]];
                a1 += vals[k + 1] * x[colidx[k + 1]];
                a2 += vals[k + 2] * x[colidx[k + 2]];
                a3 += vals[k + 3] * x[colidx[k + 3]];
            }
            for (; k < end; k++) a0 += vals[k] * x[colidx[k]];
            y[r] = (a0 + a1) + (a2 + a3);
        }
        return;
    }
    for (int r = 0; r < rows; r++) {
        float *restrict yr = y + (size_t)r * positions;
        memset(yr, 0, sizeof(float) * positions);
        for (int k = p->rowptr[r]; k < p->rowptr[r + 1]; k++) {
            const float wv = vals[k];
            const float *restrict xc = x + (size_t)colidx[k] * positions;
#pragma omp simd
            for (int q = 0; q < positions; q++) yr[q] += wv * xc[q];
        }
    }
}

static int compare_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *values, int n) {
    qsort(values, n, sizeof(double), compare_double);
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

static volatile float sink;

/* Calls of `kernel` that take about target_ns (at least one). */
static long calls_for(kernel_t kernel, const problem_t *p, double target_ns) {
    kernel(p); /* warm the caches */
    double start = now_ns();
    kernel(p);
    const double one = now_ns() - start;
    const long calls = one > 0 ? (long)(target_ns / one) : 1;
    return calls < 1 ? 1 : calls;
}

/* ns per call of one sample of `calls` calls. */
static double sample(kernel_t kernel, const problem_t *p, long calls) {
    const double start = now_ns();
    for (long i = 0; i < calls; i++) kernel(p);
    const double elapsed = now_ns() - start;
    sink += p->y[0];
    return elapsed / (double)calls;
}

int main(int argc, char **argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: %s ROWS COLS POSITIONS REPEATS SEED TARGET_NS RATIO [RATIO ...]\n", argv[0]);
        return 2;
    }
    const int rows = atoi(argv[1]), cols = atoi(argv[2]), positions = atoi(argv[3]), repeats = atoi(argv[4]);
    rng_state = (uint64_t)strtoull(argv[5], NULL, 10) * 0x9E3779B97F4A7C15ULL + 1;
    const double target_ns = atof(argv[6]);
    const int n_ratios = argc - 7;
    if (rows < 1 || cols < 1 || positions < 1 || repeats < 1 || target_ns <= 0) {
        fprintf(stderr, "rows, cols, positions, repeats and target_ns must be positive\n");
        return 2;
    }
    const size_t n = (size_t)rows * cols;
    if (n > (size_t)INT32_MAX) {
        fprintf(stderr, "at most 2^31 - 1 weights (int32 CSR indices)\n");
        return 2;
    }
    float *original = malloc(sizeof(float) * n), *w = malloc(sizeof(float) * n);
    float *x = malloc(sizeof(float) * (size_t)cols * positions);
    float *y_dense = malloc(sizeof(float) * (size_t)rows * positions), *y = malloc(sizeof(float) * (size_t)rows * positions);
    int32_t *rowptr = malloc(sizeof(int32_t) * (rows + 1)), *colidx = malloc(sizeof(int32_t) * n);
    float *vals = malloc(sizeof(float) * n);
    size_t *order = malloc(sizeof(size_t) * n);
    double *dense_samples = malloc(sizeof(double) * repeats), *sparse_samples = malloc(sizeof(double) * repeats);
    double *relative = malloc(sizeof(double) * repeats);
    if (!original || !w || !x || !y_dense || !y || !rowptr || !colidx || !vals || !order || !dense_samples || !sparse_samples || !relative) {
        fprintf(stderr, "out of memory\n");
        return 3;
    }
    for (size_t i = 0; i < n; i++) original[i] = uniform_pm1();
    for (size_t i = 0; i < (size_t)cols * positions; i++) x[i] = uniform_pm1();
    /* one random order of the weights: ratio r zeroes its first round(r * n) entries (Fisher-Yates) */
    for (size_t i = 0; i < n; i++) order[i] = i;
    for (size_t i = n - 1; i > 0; i--) {
        const size_t j = (size_t)(next_random() % (i + 1));
        const size_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    const problem_t unpruned = {rows, cols, positions, original, rowptr, colidx, vals, x, y};
    const long dense_calls = calls_for(dense_kernel, &unpruned, target_ns);
    printf("{\"rows\": %d, \"cols\": %d, \"positions\": %d, \"repeats\": %d, \"target_ns\": %.0f, \"points\": [", rows, cols, positions,
           repeats, target_ns);
    double worst_diff = 0.0;
    for (int k = 0; k < n_ratios; k++) {
        const double ratio = atof(argv[7 + k]);
        const size_t zeros = (size_t)llround(ratio * (double)n);
        memcpy(w, original, sizeof(float) * n);
        for (size_t i = 0; i < zeros && i < n; i++) w[order[i]] = 0.0f;
        int32_t nnz = 0;
        for (int r = 0; r < rows; r++) {
            rowptr[r] = nnz;
            for (int c = 0; c < cols; c++) {
                const float v = w[(size_t)r * cols + c];
                if (v != 0.0f) {
                    colidx[nnz] = c;
                    vals[nnz] = v;
                    nnz++;
                }
            }
        }
        rowptr[rows] = nnz;
        /* Both kernels write the same output buffer: where it sits relative to x decides how often
         * their stores alias x's loads modulo 4 KiB, which moved one kernel's time by 1.6x here. */
        const problem_t dense_p = {rows, cols, positions, w, rowptr, colidx, vals, x, y};
        const problem_t sparse_p = {rows, cols, positions, w, rowptr, colidx, vals, x, y};
        const long sparse_calls = calls_for(sparse_kernel, &sparse_p, target_ns);
        for (int s = 0; s < repeats; s++) {
            dense_samples[s] = sample(dense_kernel, &dense_p, dense_calls);
            sparse_samples[s] = sample(sparse_kernel, &sparse_p, sparse_calls);
            relative[s] = sparse_samples[s] / dense_samples[s];
        }
        const problem_t check_p = {rows, cols, positions, w, rowptr, colidx, vals, x, y_dense};
        dense_kernel(&check_p);
        sparse_kernel(&sparse_p);
        for (size_t i = 0; i < (size_t)rows * positions; i++) {
            const double d = fabs((double)y[i] - (double)y_dense[i]);
            if (d > worst_diff) worst_diff = d;
        }
        printf("%s{\"ratio\": %.6f, \"nonzeros\": %d, \"dense_ns\": %.3f, \"sparse_ns\": %.3f, \"sparse_over_dense\": %.6f}", k ? ", " : "",
               ratio, nnz, median(dense_samples, repeats), median(sparse_samples, repeats), median(relative, repeats));
    }
    printf("], \"max_abs_diff\": %.9g}\n", worst_diff);
    free(original);
    free(w);
    free(x);
    free(y_dense);
    free(y);
    free(rowptr);
    free(colidx);
    free(vals);
    free(order);
    free(dense_samples);
    free(sparse_samples);
    free(relative);
    return 0;
}

/* The few-row kernel of grpo/fast/native.py: y = W x^T for decoding's products. */

#include <immintrin.h>

/* Six weight rows (w0 and the five after it, K floats apart) times 16 columns of xt (row
   stride N), into six rows of y (row stride N). With `fetch`, the weight rows two blocks ahead
   are prefetched, one cache line per row every 16 floats (a prefetch past the end of W is
   harmless: it never faults). */
static inline void block6(const float *restrict w0, const float *restrict xt, float *restrict y,
                          long K, long N, int fetch) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps();
    __m256 c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps();
    __m256 c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    const float *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K, *w4 = w3 + K, *w5 = w4 + K;
    for (long k = 0; k < K; k++) {
        if (fetch && (k & 15) == 0) {
            const float *p = w0 + 12 * K + k;
            for (int i = 0; i < 6; i++) _mm_prefetch((const char *)(p + i * K), _MM_HINT_T0);
        }
        __m256 b0 = _mm256_loadu_ps(xt + k * N), b1 = _mm256_loadu_ps(xt + k * N + 8), a;
        a = _mm256_broadcast_ss(w0 + k); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
        a = _mm256_broadcast_ss(w1 + k); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
        a = _mm256_broadcast_ss(w2 + k); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
        a = _mm256_broadcast_ss(w3 + k); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
        a = _mm256_broadcast_ss(w4 + k); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41);
        a = _mm256_broadcast_ss(w5 + k); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51);
    }
    _mm256_storeu_ps(y, c00); _mm256_storeu_ps(y + 8, c01); y += N;
    _mm256_storeu_ps(y, c10); _mm256_storeu_ps(y + 8, c11); y += N;
    _mm256_storeu_ps(y, c20); _mm256_storeu_ps(y + 8, c21); y += N;
    _mm256_storeu_ps(y, c30); _mm256_storeu_ps(y + 8, c31); y += N;
    _mm256_storeu_ps(y, c40); _mm256_storeu_ps(y + 8, c41); y += N;
    _mm256_storeu_ps(y, c50); _mm256_storeu_ps(y + 8, c51);
}

/* One weight row times 16 columns of xt. */
static inline void block1(const float *restrict w0, const float *restrict xt, float *restrict y,
                          long K, long N) {
    __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
    for (long k = 0; k < K; k++) {
        __m256 a = _mm256_broadcast_ss(w0 + k);
        c0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(xt + k * N), c0);
        c1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(xt + k * N + 8), c1);
    }
    _mm256_storeu_ps(y, c0); _mm256_storeu_ps(y + 8, c1);
}

/* y (O x N) = W (O x K, rows contiguous) @ xt (K x N); N a multiple of 16. Blocks of six weight
   rows are split between the OpenMP threads; each block meets every 16 columns while it is in
   cache. */
void grpo_wxt(const float *W, const float *xt, float *y, long O, long K, long N) {
    long blocks = O / 6;
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < blocks; b++)
        for (long n = 0; n < N; n += 16)
            block6(W + b * 6 * K, xt + n, y + b * 6 * N + n, K, N, n == 0);
    for (long o = blocks * 6; o < O; o++)
        for (long n = 0; n < N; n += 16)
            block1(W + o * K, xt + n, y + o * N + n, K, N);
}

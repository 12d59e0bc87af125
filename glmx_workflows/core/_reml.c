/* The REML fit of glmx_workflows.core.mixed in compiled code.
 *
 * Same steps, same constants and same stopping rules as the numpy path (core/mixed.py: _fit_block, _climb; read
 * there why each step is what it is), on tiles of TILE voxels instead of every voxel at once: a tile's data and
 * all its work arrays stay in L1/L2, and every loop over a tile's voxels ("lanes") is innermost and contiguous,
 * so that the compiler vectorises it (also for AVX2, chosen at load time where the processor has it). numpy
 * instead pays 15-20 passes over the (subjects, voxels) arrays in memory per likelihood evaluation.
 * tests/test_group_mixed.py checks both paths against each other and against PyMARE.
 *
 * Layout: a tile holds its lanes' data subject-major (y[i * TILE + j]: subject i, lane j); small matrices are
 * stored entry-major (A[(a * p + b) * TILE + j]). An absent subject has y = 0 and v = +inf: its weight
 * 1 / (v + tau2) is exactly 0.
 *
 * Plain C and Python's buffer protocol: no numpy headers at build time. The GIL is released while fitting.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SECOND_PEAK_Z (-1.0)
#define SCAN 8
#define SCAN_FROM 0.05
#define SCAN_TO 4.0
#define QUAD_TOL 1e-10
#define TILE 64

#if defined(__GNUC__)
/* inlined with its constant arguments, which removes the branches on them */
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

/* CALL(k) with k the literal 3, 2 or 1 for order >= 3, 2, else: an inlined body specialised on each */
#define BY_ORDER(order, CALL)                                                                                    \
    do {                                                                                                         \
        if ((order) >= 3) CALL(3);                                                                               \
        else if ((order) == 2) CALL(2);                                                                          \
        else CALL(1);                                                                                            \
    } while (0)

/* Work arrays of one tile (all lanes-last). */
typedef struct {
    int n, p;
    const double *X;                       /* n x p */
    double *y, *v, *m;                     /* n x TILE: residuals, variances (+inf absent), presence (0/1) */
    double *w, *wy, *u, *uy;               /* TILE: weights and scratch */
    double *A1, *A2, *A3, *Ainv, *G2, *L;  /* p*p x TILE */
    double *xwy, *xw2y, *xw3y, *b, *xw2r, *t1;  /* p x TILE */
    double *sw1, *sw2, *ywy, *yw2y, *yw3y, *slog, *logdet, *ok;  /* TILE */
    /* results of an evaluation */
    double *score, *observed, *fisher, *trP, *rwr, *loglik;      /* TILE */
    double *spare;                                               /* 9 x TILE scratch */
} Tile;

/* Per-voxel state arrays of a tile (TILE each), indexed by the tile's voxel. */
typedef struct {
    double *tau, *scale, *vharm, *count, *s2, *vbar, *score0, *start, *lo, *hi, *s_lo, *s_hi;
    int *positive, *near, *interior, *climbing;
} State;

/* Work memory handed out in order; with no base it only counts (the first pass of layout()). */
typedef struct {
    double *base;
    size_t used;
} Arena;

static double *bump(Arena *a, size_t count)
{
    double *r = a->base ? a->base + a->used : NULL;
    a->used += count;
    return r;
}

/* Cholesky inverse (and log-determinant) of the symmetric p x p matrices A of lanes 0..m; ok[j] = 0 where A is not
 * finite positive definite (inverse NaN there). */
static void inverse(Tile *t, const double *A, int m, int want_logdet)
{
    const int p = t->p;
    double *L = t->L, *inv = t->Ainv, *ok = t->ok, *ld = t->logdet;
    for (int j = 0; j < m; j++) ok[j] = 1.0, ld[j] = 0.0;
    if (p == 1) {
        for (int j = 0; j < m; j++) {
            const double a = A[j];
            ok[j] = (a > 0.0) && isfinite(a);
            inv[j] = 1.0 / a;
        }
        if (want_logdet)
            for (int j = 0; j < m; j++) ld[j] = log(A[j]);
    } else if (p == 2) {
        const double *a = A, *b = A + TILE, *d = A + 3 * TILE;
        for (int j = 0; j < m; j++) {
            const double det = a[j] * d[j] - b[j] * b[j], r = 1.0 / det;
            ok[j] = (a[j] > 0.0) && (det > 0.0) && isfinite(det);
            inv[j] = d[j] * r, inv[3 * TILE + j] = a[j] * r, inv[TILE + j] = inv[2 * TILE + j] = -b[j] * r;
            ld[j] = det;
        }
        if (want_logdet)
            for (int j = 0; j < m; j++) ld[j] = log(ld[j]);
    } else {
        /* L L' = A, then A^-1 = L^-T L^-1 (M = L^-1 in the upper part of inv's storage, then the product) */
        for (int i = 0; i < p; i++)
            for (int k = 0; k <= i; k++) {
                double *lik = L + (i * p + k) * TILE;
                const double *aik = A + (i * p + k) * TILE;
                for (int j = 0; j < m; j++) lik[j] = aik[j];
                for (int l = 0; l < k; l++) {
                    const double *a = L + (i * p + l) * TILE, *b = L + (k * p + l) * TILE;
                    for (int j = 0; j < m; j++) lik[j] -= a[j] * b[j];
                }
                if (i == k) {
                    for (int j = 0; j < m; j++) {
                        const double s = lik[j];
                        ok[j] = ok[j] * ((s > 0.0) && isfinite(s));
                        ld[j] += want_logdet ? log(s) : 0.0;
                        lik[j] = sqrt(s);
                    }
                } else {
                    const double *kk = L + (k * p + k) * TILE;
                    for (int j = 0; j < m; j++) lik[j] /= kk[j];
                }
            }
        /* M = L^-1, lower triangular, stored in G2 (scratch here) */
        double *M = t->G2;
        for (int c = 0; c < p; c++)
            for (int i = c; i < p; i++) {
                double *mic = M + (i * p + c) * TILE;
                for (int j = 0; j < m; j++) mic[j] = (i == c) ? 1.0 : 0.0;
                for (int l = c; l < i; l++) {
                    const double *a = L + (i * p + l) * TILE, *b = M + (l * p + c) * TILE;
                    for (int j = 0; j < m; j++) mic[j] -= a[j] * b[j];
                }
                const double *ii = L + (i * p + i) * TILE;
                for (int j = 0; j < m; j++) mic[j] /= ii[j];
            }
        for (int a = 0; a < p; a++)
            for (int b = 0; b <= a; b++) {
                double *out = inv + (a * p + b) * TILE;
                for (int j = 0; j < m; j++) out[j] = 0.0;
                for (int k = a; k < p; k++) {
                    const double *ka = M + (k * p + a) * TILE, *kb = M + (k * p + b) * TILE;
                    for (int j = 0; j < m; j++) out[j] += ka[j] * kb[j];
                }
                if (a != b) memcpy(inv + (b * p + a) * TILE, out, m * sizeof(double));
            }
    }
    for (int j = 0; j < m; j++)
        if (!(ok[j] > 0.0))
            for (int e = 0; e < p * p; e++) inv[e * TILE + j] = NAN;
}

/* out = A x per lane (A: p x p, x: p). */
static void matvec(int p, const double *A, const double *x, double *out, int m)
{
    for (int a = 0; a < p; a++) {
        double *o = out + a * TILE;
        for (int j = 0; j < m; j++) o[j] = 0.0;
        for (int b = 0; b < p; b++) {
            const double *ab = A + (a * p + b) * TILE, *xb = x + b * TILE;
            for (int j = 0; j < m; j++) o[j] += ab[j] * xb[j];
        }
    }
}

/* out[j] (+)= sum_a x[a][j] y[a][j] */
static void dot(int p, const double *x, const double *y, double *out, int m, double sign)
{
    for (int a = 0; a < p; a++) {
        const double *xa = x + a * TILE, *ya = y + a * TILE;
        for (int j = 0; j < m; j++) out[j] += sign * xa[j] * ya[j];
    }
}

static void mirror(int p, double *A, int m)
{
    for (int a = 0; a < p; a++)
        for (int b = 0; b < a; b++) memcpy(A + (b * p + a) * TILE, A + (a * p + b) * TILE, m * sizeof(double));
}

static inline void weights(const double *restrict v, const double *restrict y, const double *restrict tau,
                           double *restrict w, double *restrict wy, double *restrict sw1, double *restrict ywy, int m)
{
    for (int j = 0; j < m; j++) {
        const double wj = 1.0 / (v[j] + tau[j]), wyj = wj * y[j];
        w[j] = wj, wy[j] = wyj;
        sw1[j] += wj;
        ywy[j] += wyj * y[j];
    }
}

/* The next power of the weights: u = w a, uy = w b, su += u, suy += uy y (a, b: the last power and its y
 * product; u, uy may be a, b themselves) */
static inline void powers(const double *restrict w, const double *a, const double *b, const double *restrict y,
                          double *u, double *uy, double *restrict su, double *restrict suy, int m)
{
    if (su)
        for (int j = 0; j < m; j++) {
            const double uj = w[j] * a[j], uyj = w[j] * b[j];
            u[j] = uj, uy[j] = uyj;
            su[j] += uj;
            suy[j] += uyj * y[j];
        }
    else
        for (int j = 0; j < m; j++) {
            const double uj = w[j] * a[j], uyj = w[j] * b[j];
            u[j] = uj, uy[j] = uyj;
            suy[j] += uyj * y[j];
        }
}

/* One subject's contribution to the moments of lanes 0..m for p = 2 (two = 1) or p = 1 (two = 0: the second
 * column's pointers are never touched). Every pointer a parameter of its own, restrict: so the compiler
 * vectorises the loop. */
static ALWAYS_INLINE void lanes(
    const int order, const int two, int m, const double *restrict y, const double *restrict v,
    const double *restrict tau, double x0, double xb, double *restrict sw1, double *restrict ywy,
    double *restrict sw2, double *restrict yw2y, double *restrict yw3y,
    double *restrict p1a, double *restrict p1b, double *restrict p2a, double *restrict p2b, double *restrict p3a,
    double *restrict p3b, double *restrict a1aa, double *restrict a1ba, double *restrict a1bb,
    double *restrict a2aa, double *restrict a2ba, double *restrict a2bb, double *restrict a3aa,
    double *restrict a3ba, double *restrict a3bb)
{
    const double eaa = x0 * x0, eba = xb * x0, ebb = xb * xb;
    for (int j = 0; j < m; j++) {
        const double w = 1.0 / (v[j] + tau[j]), wy = w * y[j];
        sw1[j] += w, ywy[j] += wy * y[j];
        p1a[j] += x0 * wy, a1aa[j] += eaa * w;
        if (two) p1b[j] += xb * wy, a1ba[j] += eba * w, a1bb[j] += ebb * w;
        if (order >= 2) {
            const double u = w * w, uy = w * wy;
            sw2[j] += u, yw2y[j] += uy * y[j];
            p2a[j] += x0 * uy, a2aa[j] += eaa * u;
            if (two) p2b[j] += xb * uy, a2ba[j] += eba * u, a2bb[j] += ebb * u;
            if (order >= 3) {
                const double u3 = u * w, uy3 = uy * w;
                yw3y[j] += uy3 * y[j];
                p3a[j] += x0 * uy3, a3aa[j] += eaa * u3;
                if (two) p3b[j] += xb * uy3, a3ba[j] += eba * u3, a3bb[j] += ebb * u3;
            }
        }
    }
}

/* The weighted moments at tau of lanes 0..m: X'W^k X (A1..A3), X'W^k y, sum w^k and y'W^k y, k up to order, for
 * p = 1 (one-sample designs) and p = 2: one vectorised loop over the lanes per subject updating every moment.
 * Other p: moments_any(), one loop per moment. */
static ALWAYS_INLINE void moments_small(Tile *t, const double *restrict tau, int m, int order, const int two)
{
    const int p = t->p;
    double *A1 = t->A1, *A2 = t->A2, *A3 = t->A3, *X1 = t->xwy, *X2 = t->xw2y, *X3 = t->xw3y;
    /* p = 1: the second column's moments point to scratch (never touched) */
    double *d = t->spare, *X1b = two ? X1 + TILE : d, *X2b = two ? X2 + TILE : d + TILE;
    double *X3b = two ? X3 + TILE : d + 2 * TILE, *A1b = two ? A1 + 2 * TILE : d + 3 * TILE;
    double *A1c = two ? A1 + 3 * TILE : d + 4 * TILE, *A2b = two ? A2 + 2 * TILE : d + 5 * TILE;
    double *A2c = two ? A2 + 3 * TILE : d + 6 * TILE, *A3b = two ? A3 + 2 * TILE : d + 7 * TILE;
    double *A3c = two ? A3 + 3 * TILE : d + 8 * TILE;
    for (int i = 0; i < t->n; i++) {
        const double *y = t->y + (size_t)i * TILE, *v = t->v + (size_t)i * TILE;
        const double x0 = t->X[i * p], xb = two ? t->X[i * p + 1] : 0.0;
#define LANES(K) lanes(K, two, m, y, v, tau, x0, xb, t->sw1, t->ywy, t->sw2, t->yw2y, t->yw3y, X1, X1b, X2, X2b, \
                       X3, X3b, A1, A1b, A1c, A2, A2b, A2c, A3, A3b, A3c)
        BY_ORDER(order, LANES);
#undef LANES
    }
}

CLONES static void moments1(Tile *t, const double *restrict tau, int m, int order) { moments_small(t, tau, m, order, 0); }
CLONES static void moments2(Tile *t, const double *restrict tau, int m, int order) { moments_small(t, tau, m, order, 1); }

/* One subject's share of X'W^k y (xwky) and the lower triangle of X'W^k X (Ak), from its lanes of W^k (wk)
 * and W^k y (wky). */
static ALWAYS_INLINE void accumulate(const double *x, int p, const double *restrict wk, const double *restrict wky,
                                     double *restrict xwky, double *restrict Ak, int m)
{
    for (int a = 0; a < p; a++) {
        double *restrict o = xwky + a * TILE;
        const double xa = x[a];
        for (int j = 0; j < m; j++) o[j] += xa * wky[j];
        for (int b = 0; b <= a; b++) {
            double *restrict A = Ak + (a * p + b) * TILE;
            const double xab = xa * x[b];
            for (int j = 0; j < m; j++) A[j] += xab * wk[j];
        }
    }
}

/* Any p: one pass per subject and moment over the lanes. */
CLONES static void moments_any(Tile *t, const double *restrict tau, int m, int order)
{
    const int n = t->n, p = t->p;
    double *restrict w = t->w, *restrict wy = t->wy, *restrict u = t->u, *restrict uy = t->uy;
    for (int i = 0; i < n; i++) {
        const double *restrict y = t->y + (size_t)i * TILE, *restrict v = t->v + (size_t)i * TILE;
        const double *x = t->X + i * p;
        weights(v, y, tau, w, wy, t->sw1, t->ywy, m);
        accumulate(x, p, w, wy, t->xwy, t->A1, m);
        if (order < 2) continue;
        powers(w, w, wy, y, u, uy, t->sw2, t->yw2y, m);
        accumulate(x, p, u, uy, t->xw2y, t->A2, m);
        if (order < 3) continue;
        powers(w, u, uy, y, u, uy, NULL, t->yw3y, m);
        accumulate(x, p, u, uy, t->xw3y, t->A3, m);
    }
}

/* The moments of lanes 0..m (zeroed, accumulated, the matrices made symmetric); with want_loglik also
 * sum log(v + tau) over the present subjects. */
static void moments(Tile *t, const double *restrict tau, int m, int order, int want_loglik)
{
    const int n = t->n, p = t->p;
    const size_t lanes = (size_t)m * sizeof(double);
    memset(t->sw1, 0, lanes), memset(t->sw2, 0, lanes), memset(t->ywy, 0, lanes), memset(t->yw2y, 0, lanes);
    memset(t->yw3y, 0, lanes), memset(t->slog, 0, lanes);
    for (int a = 0; a < p; a++)
        memset(t->xwy + a * TILE, 0, lanes), memset(t->xw2y + a * TILE, 0, lanes), memset(t->xw3y + a * TILE, 0, lanes);
    for (int e = 0; e < p * p; e++)
        memset(t->A1 + e * TILE, 0, lanes), memset(t->A2 + e * TILE, 0, lanes), memset(t->A3 + e * TILE, 0, lanes);
    (p == 1 ? moments1 : p == 2 ? moments2 : moments_any)(t, tau, m, order);
    if (want_loglik)
        for (int i = 0; i < n; i++) {
            const double *restrict pm = t->m + (size_t)i * TILE, *restrict v = t->v + (size_t)i * TILE;
            for (int j = 0; j < m; j++) t->slog[j] += pm[j] > 0.0 ? log(v[j] + tau[j]) : 0.0;
        }
    mirror(p, t->A1, m);
    if (order >= 2) mirror(p, t->A2, m);
    if (order >= 3) mirror(p, t->A3, m);
}

/* evaluate()'s algebra for p = 2 (one = 0) and p = 1 (one = 1), one loop over the lanes (vectorised): the 2 x 2
 * inverse in closed form, then the same formulas as the general code below. */
static ALWAYS_INLINE void algebra_small(
    const int one, const int order, int m, const double *restrict a1, const double *restrict a2,
    const double *restrict a3, const double *restrict xwy, const double *restrict xw2y, const double *restrict xw3y,
    const double *restrict sw1, const double *restrict sw2, const double *restrict ywy, const double *restrict yw2y,
    const double *restrict yw3y, double *restrict inv, double *restrict b, double *restrict rwr,
    double *restrict score, double *restrict trP, double *restrict fisher, double *restrict observed,
    double *restrict ok)
{
    for (int j = 0; j < m; j++) {
        /* p = 1 is p = 2 with the second column's moments 0 and 1 on its diagonal: the formulas below then
         * reduce to the scalar ones (the second coefficient and every product with it are 0) */
        const double a = a1[j], c = one ? 0.0 : a1[2 * TILE + j], d = one ? 1.0 : a1[3 * TILE + j];
        const double det = a * d - c * c, r = 1.0 / det;
        const int good = (a > 0.0) && (det > 0.0) && isfinite(det);
        const double i00 = good ? d * r : NAN, i11 = good ? a * r : NAN, i01 = good ? -c * r : NAN;
        const double x0 = xwy[j], x1 = one ? 0.0 : xwy[TILE + j];
        const double b0 = i00 * x0 + i01 * x1, b1 = one ? 0.0 : i01 * x0 + i11 * x1;
        ok[j] = good;
        inv[j] = i00, b[j] = b0, rwr[j] = ywy[j] - b0 * x0 - b1 * x1;
        if (!one) inv[TILE + j] = inv[2 * TILE + j] = i01, inv[3 * TILE + j] = i11, b[TILE + j] = b1;
        if (order < 2) continue;
        const double h00 = a2[j], h01 = one ? 0.0 : a2[2 * TILE + j], h11 = one ? 0.0 : a2[3 * TILE + j];
        const double z0 = xw2y[j], z1 = one ? 0.0 : xw2y[TILE + j];
        const double q0 = z0 - (h00 * b0 + h01 * b1), q1 = z1 - (h01 * b0 + h11 * b1);  /* xw2r */
        const double r2 = yw2y[j] - (b0 * z0 + b1 * z1) - (b0 * q0 + b1 * q1);
        const double g00 = i00 * h00 + i01 * h01, g01 = i00 * h01 + i01 * h11;
        const double g10 = i01 * h00 + i11 * h01, g11 = i01 * h01 + i11 * h11;
        const double tp = sw1[j] - (g00 + g11);
        trP[j] = tp, score[j] = 0.5 * (r2 - tp);
        if (order < 3) continue;
        const double k00 = a3[j], k01 = one ? 0.0 : a3[2 * TILE + j], k11 = one ? 0.0 : a3[3 * TILE + j];
        const double u0 = xw3y[j], u1 = one ? 0.0 : xw3y[TILE + j];
        const double r3 = yw3y[j] - 2.0 * (b0 * u0 + b1 * u1) + b0 * (k00 * b0 + k01 * b1) + b1 * (k01 * b0 + k11 * b1);
        const double f = 0.5 * (sw2[j] - 2.0 * (i00 * k00 + 2.0 * i01 * k01 + i11 * k11)
                                + (g00 * g00 + 2.0 * g01 * g10 + g11 * g11));
        fisher[j] = f;
        observed[j] = r3 - (q0 * (i00 * q0 + i01 * q1) + q1 * (i01 * q0 + i11 * q1)) - f;
    }
}

#define ALGEBRA_ARGS(T) (T)->A1, (T)->A2, (T)->A3, (T)->xwy, (T)->xw2y, (T)->xw3y, (T)->sw1, (T)->sw2, (T)->ywy, \
    (T)->yw2y, (T)->yw3y, (T)->Ainv, (T)->b, (T)->rwr, (T)->score, (T)->trP, (T)->fisher, (T)->observed, (T)->ok

CLONES static void algebra1(Tile *t, int m, int order)
{
#define ALGEBRA(K) algebra_small(1, K, m, ALGEBRA_ARGS(t))
    BY_ORDER(order, ALGEBRA);
#undef ALGEBRA
}

CLONES static void algebra2(Tile *t, int m, int order)
{
#define ALGEBRA(K) algebra_small(0, K, m, ALGEBRA_ARGS(t))
    BY_ORDER(order, ALGEBRA);
#undef ALGEBRA
}

/* The restricted likelihood's pieces at tau for lanes 0..m (core.mixed._Eval): order 1 b, Ainv, rwr (and loglik);
 * 2 also score and trP; 3 also the observed and Fisher information. */
static void evaluate(Tile *t, const double *tau, int m, int order, int want_loglik)
{
    const int p = t->p;
    moments(t, tau, m, order, want_loglik);
    if (p <= 2 && !want_loglik) {  /* the likelihood's log-determinant: the general code */
        (p == 1 ? algebra1 : algebra2)(t, m, order);
        return;
    }
    inverse(t, t->A1, m, want_loglik);
    matvec(p, t->Ainv, t->xwy, t->b, m);
    for (int j = 0; j < m; j++) t->rwr[j] = t->ywy[j];
    dot(p, t->b, t->xwy, t->rwr, m, -1.0);
    if (want_loglik)
        for (int j = 0; j < m; j++) {
            const double ll = -0.5 * (t->slog[j] + t->logdet[j] + t->rwr[j]);
            t->loglik[j] = isnan(ll) ? -INFINITY : ll;
        }
    if (order < 2) return;
    /* xw2r = xw2y - H2 b; r'W^2 r = y'W^2 y - b'xw2y - b'xw2r; G2 = Ainv H2; trP = sum w - tr G2 */
    matvec(p, t->A2, t->b, t->t1, m);
    for (int a = 0; a < p; a++)
        for (int j = 0; j < m; j++) t->xw2r[a * TILE + j] = t->xw2y[a * TILE + j] - t->t1[a * TILE + j];
    double *r2 = t->u;  /* scratch: r'W^2 r */
    for (int j = 0; j < m; j++) r2[j] = t->yw2y[j];
    dot(p, t->b, t->xw2y, r2, m, -1.0);
    dot(p, t->b, t->xw2r, r2, m, -1.0);
    for (int a = 0; a < p; a++)
        for (int c = 0; c < p; c++) {
            double *g = t->G2 + (a * p + c) * TILE;
            for (int j = 0; j < m; j++) g[j] = 0.0;
            for (int b = 0; b < p; b++) {
                const double *ia = t->Ainv + (a * p + b) * TILE, *h = t->A2 + (b * p + c) * TILE;
                for (int j = 0; j < m; j++) g[j] += ia[j] * h[j];
            }
        }
    for (int j = 0; j < m; j++) t->trP[j] = t->sw1[j];
    for (int a = 0; a < p; a++)
        for (int j = 0; j < m; j++) t->trP[j] -= t->G2[(a * p + a) * TILE + j];
    for (int j = 0; j < m; j++) t->score[j] = 0.5 * (r2[j] - t->trP[j]);
    if (order < 3) return;
    /* r'W^3 r = y'W^3 y - 2 b'xw3y + b'H3 b; tr(P^2) = sum w^2 - 2 tr(Ainv H3) + tr(G2 G2) */
    double *r3 = t->uy;  /* scratch */
    matvec(p, t->A3, t->b, t->t1, m);
    for (int j = 0; j < m; j++) r3[j] = t->yw3y[j];
    dot(p, t->b, t->xw3y, r3, m, -2.0);
    dot(p, t->b, t->t1, r3, m, 1.0);
    for (int j = 0; j < m; j++) t->fisher[j] = t->sw2[j];
    for (int a = 0; a < p; a++)
        for (int b = 0; b < p; b++) {
            const double *ia = t->Ainv + (a * p + b) * TILE, *h = t->A3 + (b * p + a) * TILE;
            const double *g = t->G2 + (a * p + b) * TILE, *gt = t->G2 + (b * p + a) * TILE;
            for (int j = 0; j < m; j++) t->fisher[j] += -2.0 * ia[j] * h[j] + g[j] * gt[j];
        }
    for (int j = 0; j < m; j++) t->fisher[j] *= 0.5;
    /* observed = r'W^3 r - xw2r' Ainv xw2r - fisher */
    matvec(p, t->Ainv, t->xw2r, t->t1, m);
    for (int j = 0; j < m; j++) t->observed[j] = r3[j] - t->fisher[j];
    dot(p, t->xw2r, t->t1, t->observed, m, -1.0);
}

/* core.mixed._newton_step */
static double newton_step(double score, double observed, double fisher, double offset, double tau)
{
    const double info = observed > 0.0 ? observed : fisher;
    const double den = info - 2.0 * score / (tau + offset);
    return score / (den > 0.0 ? den : info);
}

static double clip(double x, double lo, double hi)
{
    if (isnan(x)) return x;
    return x < lo ? lo : (x > hi ? hi : x);
}

/* Copy lane columns: dst lane d <- src lane s (n x TILE arrays; in place when dst == src with d <= s). */
static void move_lanes(const Tile *src, Tile *dst, const int *from, int count)
{
    const int n = src->n;
    for (int i = 0; i < n; i++) {
        const size_t o = (size_t)i * TILE;
        for (int d = 0; d < count; d++) {
            dst->y[o + d] = src->y[o + from[d]];
            dst->v[o + d] = src->v[o + from[d]];
            dst->m[o + d] = src->m[o + from[d]];
        }
    }
}

/* core.mixed._climb on the lanes of `work` (count lanes; lane d is the tile's voxel vox[d]): Newton steps to the
 * root of the score, inside the bracket (lo, hi); the state arrays are the tile's, indexed by voxel. Converged
 * lanes are dropped by compaction when fewer than 70 % are active. */
static int climb(Tile *work, int count, int *vox, State *s, const double *offset, int max_iter, double tol,
                 double *prev, double *tau_lane)
{
    int active = count, width = count, iterations = 0;
    int lanes[TILE];  /* active lane indices into the working columns */
    for (int d = 0; d < count; d++) lanes[d] = d, prev[vox[d]] = INFINITY;
    for (int it = 1; it <= max_iter; it++) {
        iterations = it;
        if (active < 0.7 * width) {  /* compact: the active lanes' columns to the front */
            int from[TILE], newvox[TILE];
            for (int d = 0; d < active; d++) from[d] = lanes[d], newvox[d] = vox[lanes[d]];
            move_lanes(work, work, from, active);
            for (int d = 0; d < active; d++) vox[d] = newvox[d], lanes[d] = d;
            width = active;
        }
        for (int d = 0; d < width; d++) tau_lane[d] = 0.0;
        for (int a = 0; a < active; a++) tau_lane[lanes[a]] = s->tau[vox[lanes[a]]];
        evaluate(work, tau_lane, width, 3, 0);
        int still = 0;
        for (int a = 0; a < active; a++) {
            const int d = lanes[a], k = vox[d];
            const double sc_ = work->score[d], observed = work->observed[d], fisher = work->fisher[d];
            const double info = observed > 0.0 ? observed : fisher, cur = s->tau[k];
            if (sc_ > 0.0) s->lo[k] = cur, s->s_lo[k] = sc_;
            else s->hi[k] = cur, s->s_hi[k] = sc_;
            const double lo = s->lo[k], hi = s->hi[k];
            double step = newton_step(sc_, observed, fisher, offset[k], cur), next = cur + step;
            int outside = !((next > lo) && (next < hi));
            if (outside) {
                const double plain = cur + sc_ / info;
                step = plain - cur, next = plain;
                outside = !((next > lo) && (next < hi));
            }
            outside = outside || ((observed <= 0.0) && isfinite(s->s_lo[k]) && isfinite(s->s_hi[k]));
            const double size = fabs(step), last = prev[k], sc = s->scale[k];
            const int squared = isfinite(last) && (size < last) && (size <= 1e-2 * sc)
                                && (size * size * size <= QUAD_TOL * sc * last * last);
            const int small = size <= tol * sc;
            const int take = (small || squared) && !outside;
            const int done = take || small || (hi - lo <= tol * sc) || (sc_ == 0.0) || !isfinite(sc_);
            prev[k] = outside ? INFINITY : size;
            if (outside) {
                const double wdt = hi - lo;
                double frac = clip(s->s_lo[k] / (s->s_lo[k] - s->s_hi[k]), 0.05, 0.95);
                if (!(isfinite(s->s_lo[k]) && isfinite(s->s_hi[k]) && !isinf(last))) frac = 0.5;
                if (isfinite(wdt)) {
                    next = lo + frac * wdt;
                } else {
                    const double twice = 2.0 * cur, moved = lo + sc;
                    next = (isnan(twice) || isnan(moved)) ? NAN : (twice > moved ? twice : moved);
                }
            }
            if (!done || take) s->tau[k] = next;
            if (!done) lanes[still++] = d;
        }
        active = still;
        if (active == 0) break;
    }
    return iterations;
}

static void tile_init(Tile *t, int n, int p, const double *X, Arena *at)
{
    t->n = n, t->p = p, t->X = X;
    t->y = bump(at, (size_t)n * TILE), t->v = bump(at, (size_t)n * TILE), t->m = bump(at, (size_t)n * TILE);
    t->w = bump(at, TILE), t->wy = bump(at, TILE), t->u = bump(at, TILE), t->uy = bump(at, TILE);
    t->A1 = bump(at, p * p * TILE), t->A2 = bump(at, p * p * TILE), t->A3 = bump(at, p * p * TILE);
    t->Ainv = bump(at, p * p * TILE), t->G2 = bump(at, p * p * TILE), t->L = bump(at, p * p * TILE);
    t->xwy = bump(at, p * TILE), t->xw2y = bump(at, p * TILE), t->xw3y = bump(at, p * TILE);
    t->b = bump(at, p * TILE), t->xw2r = bump(at, p * TILE), t->t1 = bump(at, p * TILE);
    t->sw1 = bump(at, TILE), t->sw2 = bump(at, TILE), t->ywy = bump(at, TILE), t->yw2y = bump(at, TILE);
    t->yw3y = bump(at, TILE), t->slog = bump(at, TILE), t->logdet = bump(at, TILE), t->ok = bump(at, TILE);
    t->score = bump(at, TILE), t->observed = bump(at, TILE), t->fisher = bump(at, TILE), t->trP = bump(at, TILE);
    t->rwr = bump(at, TILE), t->loglik = bump(at, TILE), t->spare = bump(at, 9 * TILE);
}

typedef struct {
    int n, p, max_iter;
    double tol;
    const double *X, *A0inv;  /* (X'X)^-1 of all subjects, or NULL when not invertible */
    Tile src, work;
    State s;
    double *prev, *tau_lane;
    double *b0;               /* p x TILE: the tile's OLS coefficients */
    double *A0buf;            /* p x p */
} Ctx;

/* Every work array of a fit: counted with an empty arena, placed with a real one. */
static void layout(Ctx *c, Arena *at)
{
    const int n = c->n, p = c->p;
    State *s = &c->s;
    tile_init(&c->src, n, p, c->X, at);
    tile_init(&c->work, n, p, c->X, at);
    s->tau = bump(at, TILE), s->scale = bump(at, TILE), s->vharm = bump(at, TILE), s->count = bump(at, TILE);
    s->s2 = bump(at, TILE), s->vbar = bump(at, TILE), s->score0 = bump(at, TILE), s->start = bump(at, TILE);
    s->lo = bump(at, TILE), s->hi = bump(at, TILE), s->s_lo = bump(at, TILE), s->s_hi = bump(at, TILE);
    c->prev = bump(at, TILE), c->tau_lane = bump(at, TILE);
    c->b0 = bump(at, (size_t)p * TILE), c->A0buf = bump(at, (size_t)p * p);
}

/* One subject's row of a tile: y, v, presence (absent: y 0, v +inf) from the voxel columns cols. */
static inline void gather_row(const double *restrict yr, const double *restrict vr, const unsigned char *restrict mr,
                              const long long *restrict cols, int count, double *restrict y, double *restrict v,
                              double *restrict pm)
{
    const long long c0 = cols[0];
    if (cols[count - 1] - c0 == count - 1) {  /* a run of consecutive voxels (the usual case) */
        memcpy(y, yr + c0, count * sizeof(double));
        memcpy(v, vr + c0, count * sizeof(double));
        if (!mr) {
            for (int j = 0; j < count; j++) pm[j] = 1.0;
            return;
        }
        for (int j = 0; j < count; j++) {
            const int here = mr[c0 + j] != 0;
            pm[j] = here, y[j] = here ? y[j] : 0.0, v[j] = here ? v[j] : INFINITY;
        }
        return;
    }
    for (int j = 0; j < count; j++) {
        const long long col = cols[j];
        const int here = mr ? mr[col] != 0 : 1;
        pm[j] = here, y[j] = here ? yr[col] : 0.0, v[j] = here ? vr[col] : INFINITY;
    }
}

/* Per-lane sums over the present subjects: count, sum v, sum 1 / v and whether every v > 0 (nonpos counts
 * those that are not). */
static inline void row_stats(const double *restrict v, const double *restrict pm, int count, double *restrict cnt,
                             double *restrict vsum, double *restrict inv, double *restrict nonpos)
{
    for (int j = 0; j < count; j++) {
        const double here = pm[j], vj = here > 0.0 ? v[j] : 1.0;
        cnt[j] += here, vsum[j] += here * vj, inv[j] += here / vj, nonpos[j] += here * (vj > 0.0 ? 0.0 : 1.0);
    }
}

/* y = (y - fit) m, ss += y^2 */
static inline void residual(double *restrict y, const double *restrict fit, const double *restrict pm,
                            double *restrict ss, int count)
{
    for (int j = 0; j < count; j++) {
        const double r = (y[j] - fit[j]) * pm[j];
        y[j] = r, ss[j] += r * r;
    }
}

static inline void axpy(double a, const double *restrict x, double *restrict y, int count)
{
    for (int j = 0; j < count; j++) y[j] += a * x[j];
}

/* Gather a tile of voxel columns, fit the OLS of each voxel's present subjects and keep the residuals. */
static void load_tile(Ctx *c, const double *Y, const double *V, const unsigned char *M, Py_ssize_t ld,
                      const long long *cols, int count, double *b0)
{
    const int n = c->n, p = c->p;
    Tile *t = &c->src;
    State *s = &c->s;
    double *nonpos = t->sw2;  /* scratch */
    for (int j = 0; j < count; j++) s->count[j] = s->vbar[j] = s->vharm[j] = nonpos[j] = 0.0;
    for (int i = 0; i < n; i++) {
        double *y = t->y + (size_t)i * TILE, *v = t->v + (size_t)i * TILE, *pm = t->m + (size_t)i * TILE;
        gather_row(Y + (size_t)i * ld, V + (size_t)i * ld, M ? M + (size_t)i * ld : NULL, cols, count, y, v, pm);
        row_stats(v, pm, count, s->count, s->vbar, s->vharm, nonpos);
    }
    for (int j = 0; j < count; j++) s->positive[j] = nonpos[j] == 0.0;
    /* OLS: (X_m'X_m)^-1 X_m'y per voxel; with every subject present (X'X)^-1 is shared */
    double *xy = t->t1;
    for (int a = 0; a < p; a++) memset(xy + a * TILE, 0, count * sizeof(double));
    for (int i = 0; i < n; i++)
        for (int a = 0; a < p; a++) axpy(c->X[i * p + a], t->y + (size_t)i * TILE, xy + a * TILE, count);
    int all = c->A0inv != NULL;
    for (int j = 0; j < count && all; j++) all = s->count[j] == n;
    double *inv = t->Ainv;
    if (all) {
        for (int e = 0; e < p * p; e++)
            for (int j = 0; j < count; j++) inv[e * TILE + j] = c->A0inv[e];
        for (int j = 0; j < count; j++) t->ok[j] = 1.0;
    } else {
        for (int e = 0; e < p * p; e++) memset(t->A1 + e * TILE, 0, count * sizeof(double));
        for (int i = 0; i < n; i++)
            for (int a = 0; a < p; a++)
                for (int b = 0; b <= a; b++)
                    axpy(c->X[i * p + a] * c->X[i * p + b], t->m + (size_t)i * TILE, t->A1 + (a * p + b) * TILE,
                         count);
        mirror(p, t->A1, count);
        inverse(t, t->A1, count, 0);
    }
    matvec(p, inv, xy, b0, count);
    double *ss = t->u, *fit = t->w;
    memset(ss, 0, count * sizeof(double));
    for (int i = 0; i < n; i++) {
        double *y = t->y + (size_t)i * TILE;
        const double *pm = t->m + (size_t)i * TILE;
        memset(fit, 0, count * sizeof(double));
        for (int a = 0; a < p; a++) axpy(c->X[i * p + a], b0 + a * TILE, fit, count);
        residual(y, fit, pm, ss, count);
    }
    for (int j = 0; j < count; j++) {
        const double cnt = s->count[j];
        s->s2[j] = ss[j] / (cnt - p > 1.0 ? cnt - p : 1.0);
        s->vbar[j] /= cnt;
        s->scale[j] = s->s2[j] + s->vbar[j] + DBL_MIN;
        s->vharm[j] = s->positive[j] ? cnt / s->vharm[j] : 0.0;
        s->tau[j] = 0.0;
        s->interior[j] = 0, s->near[j] = 0, s->climbing[j] = 1;
        s->score0[j] = INFINITY;
        const double d = s->s2[j] - s->vbar[j];
        s->start[j] = d > 0.0 ? d : 0.0;
    }
}

/* Copy the chosen voxels of the tile (idx) into the work tile; vox gets them. */
static void pick(Ctx *c, const int *idx, int count, int *vox)
{
    move_lanes(&c->src, &c->work, idx, count);
    for (int d = 0; d < count; d++) vox[d] = idx[d];
}

/* The tile's voxels whose flag is set, in order; returns how many. */
static int select_voxels(const int *flag, int count, int *idx)
{
    int k = 0;
    for (int j = 0; j < count; j++)
        if (flag[j]) idx[k++] = j;
    return k;
}

/* Voxel k's estimate, (X'WX)^-1 and r'Wr from lane d of the work tile's last evaluation. */
static void store(const Tile *w, int p, int d, int k, double *beta_out, double *ainv_out, double *rwr_out)
{
    for (int a = 0; a < p; a++) beta_out[k * p + a] = w->b[a * TILE + d];
    for (int e = 0; e < p * p; e++) ainv_out[k * p * p + e] = w->Ainv[e * TILE + d];
    rwr_out[k] = w->rwr[d];
}

/* Fit a tile of `count` voxels (core.mixed._fit_block's steps 1-4); outputs per voxel. Returns iterations. */
static int fit_tile(Ctx *c, int count, double *b0, double *tau_out, double *beta_out, double *ainv_out,
                    double *rwr_out)
{
    const int p = c->p;
    State *s = &c->s;
    Tile *w = &c->work;
    int idx[TILE], vox[TILE], nidx, iterations = 0;
    double *zeros = c->tau_lane;
    /* 1. tau2 = 0 for voxels whose variances are all positive */
    nidx = select_voxels(s->positive, count, idx);
    if (nidx) {
        pick(c, idx, nidx, vox);
        for (int d = 0; d < nidx; d++) zeros[d] = 0.0;
        evaluate(w, zeros, nidx, 3, 0);
        for (int d = 0; d < nidx; d++) {
            const int k = vox[d];
            const double sc = w->score[d];
            if (!(sc > 0.0)) {
                s->climbing[k] = 0;
                store(w, p, d, k, beta_out, ainv_out, rwr_out);
                s->near[k] = sc / sqrt(w->fisher[d]) > SECOND_PEAK_Z;
            }
            const double dl = (w->rwr[d] - (s->count[k] - p)) / w->trP[d];
            const double first = newton_step(sc, w->observed[d], w->fisher[d], s->vharm[k], 0.0);
            if (isfinite(dl) && dl > 0.0) s->start[k] = dl;
            else if (isfinite(first) && first > 0.0) s->start[k] = first;
            s->score0[k] = sc;
        }
    }
    /* 2. interior voxels climb from the moment start */
    nidx = select_voxels(s->climbing, count, idx);
    if (nidx) {
        pick(c, idx, nidx, vox);
        for (int d = 0; d < nidx; d++) {
            const int k = vox[d];
            s->tau[k] = s->start[k] > 0.0 ? s->start[k] : 0.5 * s->scale[k];
            s->lo[k] = 0.0, s->hi[k] = INFINITY, s->s_lo[k] = s->score0[k], s->s_hi[k] = -INFINITY;
            s->interior[k] = 1;
        }
        const int it = climb(w, nidx, vox, s, s->vharm, c->max_iter, c->tol, c->prev, c->tau_lane);
        if (it > iterations) iterations = it;
    }
    /* 3. a second maximum of near-boundary voxels: scan the score, climb where it rises */
    nidx = select_voxels(s->near, count, idx);
    if (nidx) {
        double first[TILE], ratio[TILE], point[TILE];
        pick(c, idx, nidx, vox);
        for (int d = 0; d < nidx; d++) {
            const int k = vox[d];
            s->lo[k] = NAN, s->s_lo[k] = NAN, s->hi[k] = INFINITY, s->s_hi[k] = -INFINITY;
            first[d] = SCAN_FROM * s->vharm[k];
            const double top = SCAN_TO * (s->s2[k] > s->vbar[k] ? s->s2[k] : s->vbar[k]) / first[d];
            ratio[d] = pow(top > 1.0 ? top : 1.0, 1.0 / (SCAN - 1));
        }
        for (int i = 0; i < SCAN; i++) {
            int open = 0;  /* lanes whose bracket is not yet closed (later points change nothing for the rest) */
            for (int d = 0; d < nidx; d++) {
                point[d] = first[d] * pow(ratio[d], i);
                open += isinf(s->hi[vox[d]]);
            }
            if (!open) break;
            evaluate(w, point, nidx, 2, 0);
            for (int d = 0; d < nidx; d++) {
                const int k = vox[d], rising = w->score[d] > 0.0;
                if (!rising && isfinite(s->lo[k]) && isinf(s->hi[k])) s->hi[k] = point[d], s->s_hi[k] = w->score[d];
                else if (rising && isinf(s->hi[k])) s->lo[k] = point[d], s->s_lo[k] = w->score[d];
            }
        }
        int found[TILE], nf = 0;
        for (int d = 0; d < nidx; d++)
            if (isfinite(s->lo[vox[d]])) found[nf++] = vox[d];
        if (nf) {
            double saved[TILE];
            for (int d = 0; d < nf; d++) saved[d] = s->tau[found[d]], s->tau[found[d]] = s->lo[found[d]];
            pick(c, found, nf, vox);
            const int it = climb(w, nf, vox, s, s->vharm, c->max_iter, c->tol, c->prev, c->tau_lane);
            if (it > iterations) iterations = it;
            /* keep the interior maximum where its restricted likelihood beats tau2 = 0's (picked again: the
             * climb compacted the work tile) */
            pick(c, found, nf, vox);
            double inside[TILE], ll_in[TILE];
            for (int d = 0; d < nf; d++) inside[d] = s->tau[vox[d]];
            evaluate(w, inside, nf, 1, 1);
            for (int d = 0; d < nf; d++) ll_in[d] = w->loglik[d];
            for (int d = 0; d < nf; d++) zeros[d] = 0.0;
            evaluate(w, zeros, nf, 1, 1);
            for (int d = 0; d < nf; d++) {
                const int k = vox[d];
                if (ll_in[d] > w->loglik[d]) s->interior[k] = 1;
                else s->tau[k] = saved[d];
            }
        }
    }
    /* 4. the estimate, its covariance and r'Wr at the interior voxels' tau2 */
    nidx = select_voxels(s->interior, count, idx);
    if (nidx) {
        double taus[TILE];
        pick(c, idx, nidx, vox);
        for (int d = 0; d < nidx; d++) taus[d] = s->tau[vox[d]];
        evaluate(w, taus, nidx, 1, 0);
        for (int d = 0; d < nidx; d++) store(w, p, d, vox[d], beta_out, ainv_out, rwr_out);
    }
    for (int j = 0; j < count; j++) {
        for (int a = 0; a < p; a++) beta_out[j * p + a] += b0[a * TILE + j];
        tau_out[j] = s->tau[j];
    }
    return iterations;
}


static int need(Py_buffer *b, Py_ssize_t bytes, const char *name)
{
    if (b->len < bytes) {
        PyErr_Format(PyExc_ValueError, "%s: buffer of %zd bytes, need %zd", name, b->len, bytes);
        return 0;
    }
    return 1;
}

/* fit(Y, V, M or None, X, cols, n, p, ld, max_iter, tol, tau2, beta, ainv, rwr) -> iterations
 * Y, V: float64 (n, ld) C order; M: uint8 (n, ld) or None; X: float64 (n, p); cols: int64 voxel columns (k,);
 * outputs float64: tau2 (k,), beta (k, p), ainv (k, p, p), rwr (k,). */
static PyObject *fit(PyObject *self, PyObject *args)
{
    Py_buffer Yb, Vb, Xb, Cb, tb, bb, ab, rb;
    PyObject *Mobj;
    Py_buffer Mb = {0};
    int n, p, max_iter;
    Py_ssize_t ld;
    double tol;
    if (!PyArg_ParseTuple(args, "y*y*Oy*y*iinidw*w*w*w*", &Yb, &Vb, &Mobj, &Xb, &Cb, &n, &p, &ld, &max_iter, &tol,
                          &tb, &bb, &ab, &rb))
        return NULL;
    PyObject *result = NULL;
    int have_mask = Mobj != Py_None;
    const Py_ssize_t k = Cb.len / (Py_ssize_t)sizeof(long long);
    if (have_mask && PyObject_GetBuffer(Mobj, &Mb, PyBUF_SIMPLE) < 0) goto done_nomask;
    if (p < 1 || p > 64 || n < 1 || ld < 1) {
        PyErr_SetString(PyExc_ValueError, "bad shapes");
        goto done;
    }
    if (!need(&Yb, (Py_ssize_t)n * ld * 8, "Y") || !need(&Vb, (Py_ssize_t)n * ld * 8, "V")
        || (have_mask && !need(&Mb, (Py_ssize_t)n * ld, "M")) || !need(&Xb, (Py_ssize_t)n * p * 8, "X")
        || !need(&tb, k * 8, "tau2") || !need(&bb, k * p * 8, "beta") || !need(&ab, k * p * p * 8, "ainv")
        || !need(&rb, k * 8, "rwr"))
        goto done;
    const long long *cols = Cb.buf;
    for (Py_ssize_t t = 0; t < k; t++)
        if (cols[t] < 0 || cols[t] >= ld) {
            PyErr_SetString(PyExc_ValueError, "voxel column out of range");
            goto done;
        }
    Ctx c;
    const double *X = Xb.buf;
    c.n = n, c.p = p, c.max_iter = max_iter, c.tol = tol, c.X = X;
    Arena count = {NULL, 0};
    layout(&c, &count);
    double *mem = malloc(sizeof(double) * count.used);
    int *imem = malloc(sizeof(int) * 4 * TILE);
    if (!mem || !imem) {
        free(mem);
        free(imem);
        PyErr_NoMemory();
        goto done;
    }
    Arena place = {mem, 0};
    layout(&c, &place);
    State *s = &c.s;
    double *b0 = c.b0, *A0inv = c.A0buf;
    s->positive = imem, s->near = imem + TILE, s->interior = imem + 2 * TILE, s->climbing = imem + 3 * TILE;
    /* (X'X)^-1 once, through lane 0 of the work tile */
    for (int e = 0; e < p * p; e++) c.work.A1[e * TILE] = 0.0;
    for (int i = 0; i < n; i++)
        for (int a = 0; a < p; a++)
            for (int b = 0; b < p; b++) c.work.A1[(a * p + b) * TILE] += X[i * p + a] * X[i * p + b];
    inverse(&c.work, c.work.A1, 1, 0);
    c.A0inv = NULL;
    if (c.work.ok[0] > 0.0) {
        for (int e = 0; e < p * p; e++) A0inv[e] = c.work.Ainv[e * TILE];
        c.A0inv = A0inv;
    }
    int iterations = 0;
    const double *Y = Yb.buf, *V = Vb.buf;
    const unsigned char *M = have_mask ? Mb.buf : NULL;
    double *tau2 = tb.buf, *beta = bb.buf, *ainv = ab.buf, *rwr = rb.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t0 = 0; t0 < k; t0 += TILE) {
        const int count = k - t0 < TILE ? (int)(k - t0) : TILE;
        load_tile(&c, Y, V, M, ld, cols + t0, count, b0);
        const int it = fit_tile(&c, count, b0, tau2 + t0, beta + t0 * p, ainv + t0 * p * p, rwr + t0);
        if (it > iterations) iterations = it;
    }
    Py_END_ALLOW_THREADS
    free(mem);
    free(imem);
    result = PyLong_FromLong(iterations);
done:
    if (have_mask) PyBuffer_Release(&Mb);
done_nomask:
    PyBuffer_Release(&Yb);
    PyBuffer_Release(&Vb);
    PyBuffer_Release(&Xb);
    PyBuffer_Release(&Cb);
    PyBuffer_Release(&tb);
    PyBuffer_Release(&bb);
    PyBuffer_Release(&ab);
    PyBuffer_Release(&rb);
    return result;
}

static PyMethodDef methods[] = {
    {"fit", fit, METH_VARARGS, "REML mixed-effects fit of the given voxel columns (see core.mixed)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_reml", "Compiled REML fit of core.mixed.", -1, methods};

/* setup.py passes the SHA-256 of this file, so a test can tell a build of an older source (an edit whose
   rebuild failed leaves the previous .so importable) from a current one. */
#ifndef GLMX_REML_SOURCE_SHA256
#define GLMX_REML_SOURCE_SHA256 ""
#endif

PyMODINIT_FUNC PyInit__reml(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_SHA256", GLMX_REML_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

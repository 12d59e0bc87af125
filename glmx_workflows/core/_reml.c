/* The REML climb of glmx_workflows.core.mixed, voxel by voxel in compiled code.
 *
 * Same steps, same constants and same stopping rules as the vectorised numpy path (core/mixed.py, _fit_block
 * and _climb; read there why each step is what it is). numpy pays 15-20 passes over the (subjects, voxels)
 * arrays per likelihood evaluation and about five evaluations per voxel; here a voxel's subjects sit in L1
 * and every evaluation is one loop over them. tests/test_group_mixed.py checks both paths against each other
 * and against PyMARE.
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
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

typedef struct Ctx Ctx;
typedef struct Sums Sums;
typedef struct Ev Ev;
struct Ctx {
    int n, p, q;            /* subjects, design columns, p (p + 1) / 2 */
    const double *X;        /* n x p */
    const double *xx;       /* n x q: the lower triangle of x_i x_i' */
    double *y, *v;          /* the voxel's OLS residuals and variances, present subjects only */
    double *w, *wy;         /* weights 1 / (v + tau2), and w y */
    int np_;                /* present subjects */
    int packed;             /* xs, xxs hold only the last voxel's present subjects' rows */
    double *A0inv;          /* (X'X)^-1 of all subjects (valid when full_ok) */
    int full_ok;
    double *xs;             /* their design rows, np_ x p */
    double *xxs;            /* their xx rows, np_ x q */
    /* work */
    double *A1, *A2, *A3, *Ainv, *G2;   /* p x p */
    double *xwy, *xw2y, *xw3y, *b, *xw2r, *tmp;  /* p */
    double *tri1, *tri2, *tri3;        /* q */
    int (*evaluate)(Ctx *, double, int, int, Ev *);
};

struct Ev {
    double score, observed, fisher, tr_P, rwr, loglik;
};

/* Inverse and log-determinant of a symmetric p x p matrix by Cholesky; 0 when not finite positive definite. */
INLINE int spd_inverse(const double *A, int p, double *inv, double *logdet, double *L)
{
    if (p == 1) {
        if (!(A[0] > 0.0) || !isfinite(A[0])) return 0;
        inv[0] = 1.0 / A[0];
        if (logdet) *logdet = log(A[0]);
        return 1;
    }
    if (p == 2) {
        const double a = A[0], b = A[1], d = A[3], det = a * d - b * b;
        if (!(a > 0.0) || !(det > 0.0) || !isfinite(det)) return 0;
        const double r = 1.0 / det;
        inv[0] = d * r, inv[3] = a * r, inv[1] = inv[2] = -b * r;
        if (logdet) *logdet = log(det);
        return 1;
    }
    double ld = 0.0;
    for (int i = 0; i < p; i++) {
        for (int j = 0; j <= i; j++) {
            double s = A[i * p + j];
            for (int k = 0; k < j; k++) s -= L[i * p + k] * L[j * p + k];
            if (i == j) {
                if (!(s > 0.0) || !isfinite(s)) return 0;
                L[i * p + i] = sqrt(s);
                if (logdet) ld += log(s);
            } else {
                L[i * p + j] = s / L[j * p + j];
            }
        }
    }
    /* inv = L^-T L^-1, column by column of L^-1 */
    for (int c = 0; c < p; c++) {
        double *col = inv + c * p;  /* temporarily the c-th column of L^-1, stored as a row */
        for (int i = 0; i < p; i++) {
            double s = (i == c) ? 1.0 : 0.0;
            for (int k = 0; k < i; k++) s -= L[i * p + k] * col[k];
            col[i] = s / L[i * p + i];
        }
    }
    /* rows of inv hold the columns of M = L^-1 (inv[c][i] = M[i][c]); A^-1 = M' M */
    double *M = L;  /* L no longer needed: reuse as M */
    for (int c = 0; c < p; c++)
        for (int i = 0; i < p; i++) M[i * p + c] = inv[c * p + i];
    for (int i = 0; i < p; i++)
        for (int j = 0; j <= i; j++) {
            double s = 0.0;
            for (int k = 0; k < p; k++) s += M[k * p + i] * M[k * p + j];
            inv[i * p + j] = inv[j * p + i] = s;
        }
    if (logdet) *logdet = ld;
    return 1;
}

INLINE void unpack(const double *tri, int p, double *A)
{
    int t = 0;
    for (int i = 0; i < p; i++)
        for (int j = 0; j <= i; j++, t++) A[i * p + j] = A[j * p + i] = tri[t];
}

INLINE double dotp(const double *a, const double *b, int p)
{
    double s = 0.0;
    for (int i = 0; i < p; i++) s += a[i] * b[i];
    return s;
}

INLINE void matvec(const double *A, const double *x, int p, double *out)
{
    for (int i = 0; i < p; i++) out[i] = dotp(A + i * p, x, p);
}

struct Sums {
    double sw1, sw2, ywy, yw2y, yw3y, slog;
};

/* The weighted moments of one evaluation: X'W^j X (lower triangles tri1..3), X'W^j y (xwy, xw2y, xw3y), sum w^j
 * and y'W^j y, j up to ``order``. One loop over the present subjects; the accumulators are locals of a size
 * known at compile time (one function per p up to 4), so that they live in registers: through the context's
 * pointers every += would be a store and a load. */
#define ACCUMULATE(NAME, P)                                                                                       \
    static void NAME(Ctx *c, double tau, int order, int want_loglik, Sums *s)                                    \
    {                                                                                                             \
        enum { Q = (P) * ((P) + 1) / 2 };                                                                         \
        double t1[Q] = {0}, t2[Q] = {0}, t3[Q] = {0}, x1[P] = {0}, x2[P] = {0}, x3[P] = {0};                      \
        double sw1 = 0.0, sw2 = 0.0, ywy = 0.0, yw2y = 0.0, yw3y = 0.0, slog = 0.0;                               \
        const double *restrict y = c->y, *restrict v = c->v, *restrict xs = c->xs, *restrict xxs = c->xxs;       \
        double *restrict ws = c->w, *restrict wys = c->wy;                                                        \
        const int n = c->np_;                                                                                     \
        /* one pass per order: each holds few enough accumulators to stay in registers */                         \
        for (int i = 0; i < n; i++) {                                                                             \
            const double w = 1.0 / (v[i] + tau), wy = w * y[i];                                                   \
            const double *x = xs + i * (P), *xx = xxs + i * Q;                                                    \
            ws[i] = w, wys[i] = wy;                                                                               \
            sw1 += w;                                                                                             \
            ywy += wy * y[i];                                                                                     \
            for (int a = 0; a < (P); a++) x1[a] += x[a] * wy;                                                     \
            for (int t = 0; t < Q; t++) t1[t] += w * xx[t];                                                       \
        }                                                                                                         \
        if (order >= 2)                                                                                           \
            for (int i = 0; i < n; i++) {                                                                         \
                const double w = ws[i], w2 = w * w, w2y = w * wys[i];                                             \
                const double *x = xs + i * (P), *xx = xxs + i * Q;                                                \
                sw2 += w2;                                                                                        \
                yw2y += w2y * y[i];                                                                               \
                for (int a = 0; a < (P); a++) x2[a] += x[a] * w2y;                                                \
                for (int t = 0; t < Q; t++) t2[t] += w2 * xx[t];                                                  \
            }                                                                                                     \
        if (order >= 3)                                                                                           \
            for (int i = 0; i < n; i++) {                                                                         \
                const double w = ws[i], w2 = w * w, w3 = w2 * w, w3y = w2 * wys[i];                               \
                const double *x = xs + i * (P), *xx = xxs + i * Q;                                                \
                yw3y += w3y * y[i];                                                                               \
                for (int a = 0; a < (P); a++) x3[a] += x[a] * w3y;                                                \
                for (int t = 0; t < Q; t++) t3[t] += w3 * xx[t];                                                  \
            }                                                                                                     \
        if (want_loglik)                                                                                          \
            for (int i = 0; i < n; i++) slog += log(v[i] + tau);                                                 \
        memcpy(c->tri1, t1, sizeof t1);                                                                           \
        memcpy(c->tri2, t2, sizeof t2);                                                                           \
        memcpy(c->tri3, t3, sizeof t3);                                                                           \
        memcpy(c->xwy, x1, sizeof x1);                                                                            \
        memcpy(c->xw2y, x2, sizeof x2);                                                                           \
        memcpy(c->xw3y, x3, sizeof x3);                                                                           \
        s->sw1 = sw1, s->sw2 = sw2, s->ywy = ywy, s->yw2y = yw2y, s->yw3y = yw3y, s->slog = slog;                 \
    }

ACCUMULATE(accumulate1, 1)
ACCUMULATE(accumulate2, 2)
ACCUMULATE(accumulate3, 3)
ACCUMULATE(accumulate4, 4)

/* Any p (the accumulators in the context's arrays). */
static void accumulate_any(Ctx *c, double tau, int order, int want_loglik, Sums *s)
{
    const int n = c->np_, p = c->p, q = c->q;
    double sw1 = 0.0, sw2 = 0.0, ywy = 0.0, yw2y = 0.0, yw3y = 0.0, slog = 0.0;
    double *restrict t1 = c->tri1, *restrict t2 = c->tri2, *restrict t3 = c->tri3;
    double *restrict x1 = c->xwy, *restrict x2 = c->xw2y, *restrict x3 = c->xw3y;
    memset(t1, 0, q * sizeof(double));
    memset(t2, 0, q * sizeof(double));
    memset(t3, 0, q * sizeof(double));
    memset(x1, 0, p * sizeof(double));
    memset(x2, 0, p * sizeof(double));
    memset(x3, 0, p * sizeof(double));
    for (int i = 0; i < n; i++) {
        const double d = c->v[i] + tau, w = 1.0 / d, yi = c->y[i], wy = w * yi;
        const double *x = c->xs + i * p, *xx = c->xxs + i * q;
        sw1 += w;
        ywy += wy * yi;
        if (want_loglik) slog += log(d);
        for (int a = 0; a < p; a++) x1[a] += x[a] * wy;
        for (int t = 0; t < q; t++) t1[t] += w * xx[t];
        if (order >= 2) {
            const double w2 = w * w, w2y = w * wy;
            sw2 += w2;
            yw2y += w2y * yi;
            for (int a = 0; a < p; a++) x2[a] += x[a] * w2y;
            for (int t = 0; t < q; t++) t2[t] += w2 * xx[t];
            if (order >= 3) {
                const double w3 = w2 * w, w3y = w2 * wy;
                yw3y += w3y * yi;
                for (int a = 0; a < p; a++) x3[a] += x[a] * w3y;
                for (int t = 0; t < q; t++) t3[t] += w3 * xx[t];
            }
        }
    }
    s->sw1 = sw1, s->sw2 = sw2, s->ywy = ywy, s->yw2y = yw2y, s->yw3y = yw3y, s->slog = slog;
}

/* The restricted likelihood's pieces at tau (core.mixed._Eval): order 1 beta, Ainv, rwr (and loglik);
 * 2 also score and tr_P; 3 also observed and Fisher information. Returns 0 where X'WX is not invertible
 * (everything NaN). */
INLINE int evaluate_body(Ctx *c, double tau, int order, int want_loglik, Ev *e, const int p,
                         void (*accumulate)(Ctx *, double, int, int, Sums *))
{
    Sums sums;
    accumulate(c, tau, order, want_loglik, &sums);
    const double sw1 = sums.sw1, sw2 = sums.sw2, ywy = sums.ywy, yw2y = sums.yw2y, yw3y = sums.yw3y;
    const double slog = sums.slog;
    double logdet = 0.0;
    unpack(c->tri1, p, c->A1);
    if (!spd_inverse(c->A1, p, c->Ainv, want_loglik ? &logdet : NULL, c->G2)) {
        e->score = e->observed = e->fisher = e->tr_P = e->rwr = NAN;
        e->loglik = -INFINITY;
        for (int a = 0; a < p; a++) c->b[a] = NAN;
        for (int a = 0; a < p * p; a++) c->Ainv[a] = NAN;
        return 0;
    }
    matvec(c->Ainv, c->xwy, p, c->b);
    e->rwr = ywy - dotp(c->b, c->xwy, p);
    if (want_loglik) {
        const double ll = -0.5 * (slog + logdet + e->rwr);
        e->loglik = isnan(ll) ? -INFINITY : ll;
    }
    if (order < 2) return 1;
    unpack(c->tri2, p, c->A2);  /* H2 */
    matvec(c->A2, c->b, p, c->tmp);
    for (int a = 0; a < p; a++) c->xw2r[a] = c->xw2y[a] - c->tmp[a];
    const double r_w2_r = yw2y - dotp(c->b, c->xw2y, p) - dotp(c->b, c->xw2r, p);
    /* G2 = Ainv H2 */
    double trG2 = 0.0;
    for (int i = 0; i < p; i++)
        for (int j = 0; j < p; j++) {
            double s = 0.0;
            for (int k = 0; k < p; k++) s += c->Ainv[i * p + k] * c->A2[k * p + j];
            c->G2[i * p + j] = s;
        }
    for (int i = 0; i < p; i++) trG2 += c->G2[i * p + i];
    e->tr_P = sw1 - trG2;
    e->score = 0.5 * (r_w2_r - e->tr_P);
    if (order < 3) return 1;
    unpack(c->tri3, p, c->A3);  /* H3 */
    matvec(c->A3, c->b, p, c->tmp);
    const double r_w3_r = yw3y - 2.0 * dotp(c->b, c->xw3y, p) + dotp(c->b, c->tmp, p);
    double trAH3 = 0.0, trG2G2 = 0.0;
    for (int i = 0; i < p; i++)
        for (int j = 0; j < p; j++) {
            trAH3 += c->Ainv[i * p + j] * c->A3[j * p + i];
            trG2G2 += c->G2[i * p + j] * c->G2[j * p + i];
        }
    e->fisher = 0.5 * (sw2 - 2.0 * trAH3 + trG2G2);
    matvec(c->Ainv, c->xw2r, p, c->tmp);
    e->observed = r_w3_r - dotp(c->xw2r, c->tmp, p) - e->fisher;
    return 1;
}

/* evaluate_body with p known at compile time (its small loops unrolled), and for any p */
static int evaluate1(Ctx *c, double tau, int order, int l, Ev *e) { return evaluate_body(c, tau, order, l, e, 1, accumulate1); }
static int evaluate2(Ctx *c, double tau, int order, int l, Ev *e) { return evaluate_body(c, tau, order, l, e, 2, accumulate2); }
static int evaluate3(Ctx *c, double tau, int order, int l, Ev *e) { return evaluate_body(c, tau, order, l, e, 3, accumulate3); }
static int evaluate4(Ctx *c, double tau, int order, int l, Ev *e) { return evaluate_body(c, tau, order, l, e, 4, accumulate4); }
static int evaluate_any(Ctx *c, double tau, int order, int l, Ev *e)
{
    return evaluate_body(c, tau, order, l, e, c->p, accumulate_any);
}

static int evaluate(Ctx *c, double tau, int order, int want_loglik, Ev *e)
{
    return c->evaluate(c, tau, order, want_loglik, e);
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

/* core.mixed._climb for one voxel; *iterations gets the iteration it stopped at. */
static double climb(Ctx *c, double tau, double lo, double hi, double s_lo, double s_hi, double scale,
                    double offset, int max_iter, double tol, int *iterations)
{
    double prev = INFINITY;
    Ev e;
    int it;
    for (it = 1; it <= max_iter; it++) {
        evaluate(c, tau, 3, 0, &e);
        const double s = e.score, observed = e.observed, fisher = e.fisher;
        const double info = observed > 0.0 ? observed : fisher;
        const double cur = tau;
        if (s > 0.0) { lo = cur; s_lo = s; } else { hi = cur; s_hi = s; }
        double step = newton_step(s, observed, fisher, offset, cur);
        double next = cur + step;
        int outside = !((next > lo) && (next < hi));
        if (outside) {
            const double plain = cur + s / info;
            step = plain - cur;
            next = plain;
            outside = !((next > lo) && (next < hi));
        }
        outside = outside || ((observed <= 0.0) && isfinite(s_lo) && isfinite(s_hi));
        const double size = fabs(step), last = prev, sc = scale;
        const int squared = isfinite(last) && (size < last) && (size <= 1e-2 * sc)
                            && (size * size * size <= QUAD_TOL * sc * last * last);
        const int small = size <= tol * sc;
        const int take = (small || squared) && !outside;
        const int done = take || small || (hi - lo <= tol * sc) || (s == 0.0) || !isfinite(s);
        prev = outside ? INFINITY : size;
        if (outside) {
            const double width = hi - lo;
            double frac = clip(s_lo / (s_lo - s_hi), 0.05, 0.95);
            if (!(isfinite(s_lo) && isfinite(s_hi) && !isinf(last))) frac = 0.5;
            if (isfinite(width)) {
                next = lo + frac * width;
            } else {
                const double twice = 2.0 * cur, moved = lo + scale;
                next = twice > moved ? twice : moved;
                if (isnan(twice) || isnan(moved)) next = NAN;
            }
        }
        if (!done || take) tau = next;
        if (done) break;
    }
    *iterations = it > max_iter ? max_iter : it;
    return tau;
}

/* One voxel (core.mixed._fit_block's steps 1-4). Y, V, M: the voxel's n values (M may be NULL: all present). */
static int fit_voxel(Ctx *c, const double *Y, const double *V, const unsigned char *M, int max_iter, double tol,
                     double *tau_out, double *beta_out, double *ainv_out, double *rwr_out)
{
    const int n = c->n, p = c->p, q = c->q;
    int np_ = 0, positive = 1, iterations = 0, it;
    double vsum = 0.0, inv_vsum = 0.0;
    if (c->packed) {  /* xs and xxs hold every subject's rows unless the last voxel packed them */
        memcpy(c->xs, c->X, (size_t)n * p * sizeof(double));
        memcpy(c->xxs, c->xx, (size_t)n * q * sizeof(double));
        c->packed = 0;
    }
    /* the present subjects' values, and their OLS fit */
    memset(c->xwy, 0, p * sizeof(double));
    for (int i = 0; i < n; i++) {
        if (M && !M[i]) continue;
        const double yi = Y[i], vi = V[i];
        c->y[np_] = yi;
        c->v[np_] = vi;
        if (np_ != i) {  /* an absent subject before: the present subjects' design rows, packed */
            memcpy(c->xs + np_ * p, c->X + i * p, p * sizeof(double));
            memcpy(c->xxs + np_ * q, c->xx + i * q, q * sizeof(double));
            c->packed = 1;
        }
        for (int a = 0; a < p; a++) c->xwy[a] += c->X[i * p + a] * yi;
        vsum += vi;
        if (vi > 0.0) inv_vsum += 1.0 / vi; else positive = 0;
        np_++;
    }
    c->np_ = np_;
    const double count = np_;
    double b0[64];
    const double *A0inv = c->A0inv;  /* every subject present: (X'X)^-1, computed once */
    if (np_ < n || !c->full_ok) {
        memset(c->tri1, 0, q * sizeof(double));
        for (int i = 0; i < np_; i++)
            for (int t = 0; t < q; t++) c->tri1[t] += c->xxs[i * q + t];
        unpack(c->tri1, p, c->A1);
        if (!spd_inverse(c->A1, p, c->Ainv, NULL, c->G2)) {
            *tau_out = NAN;
            *rwr_out = NAN;
            for (int a = 0; a < p; a++) beta_out[a] = NAN;
            for (int a = 0; a < p * p; a++) ainv_out[a] = NAN;
            return 0;
        }
        A0inv = c->Ainv;
    }
    matvec(A0inv, c->xwy, p, b0);
    double ss = 0.0;
    for (int i = 0; i < np_; i++) {
        c->y[i] -= dotp(c->xs + i * p, b0, p);
        ss += c->y[i] * c->y[i];
    }
    const double s2 = ss / (count - p > 1.0 ? count - p : 1.0);
    const double vbar = vsum / count;
    const double scale = s2 + vbar + DBL_MIN;
    const double vharm = positive ? count / inv_vsum : 0.0;

    double tau = 0.0, start = s2 - vbar > 0.0 ? s2 - vbar : 0.0, score0 = INFINITY;
    int climbing = 1, near = 0, interior = 0;
    Ev e;
    /* 1. tau2 = 0 */
    if (positive) {
        evaluate(c, 0.0, 3, 0, &e);
        if (!(e.score > 0.0)) {
            climbing = 0;
            for (int a = 0; a < p; a++) beta_out[a] = c->b[a];
            memcpy(ainv_out, c->Ainv, p * p * sizeof(double));
            *rwr_out = e.rwr;
            const double z0 = e.score / sqrt(e.fisher);
            near = z0 > SECOND_PEAK_Z;
        }
        const double dl = (e.rwr - (count - p)) / e.tr_P;
        const double first = newton_step(e.score, e.observed, e.fisher, vharm, 0.0);
        if (isfinite(dl) && dl > 0.0) start = dl;
        else if (isfinite(first) && first > 0.0) start = first;
        score0 = e.score;
    }
    /* 2. interior voxels */
    if (climbing) {
        const double tau0 = start > 0.0 ? start : 0.5 * scale;
        tau = climb(c, tau0, 0.0, INFINITY, score0, -INFINITY, scale, vharm, max_iter, tol, &it);
        if (it > iterations) iterations = it;
        interior = 1;
    }
    /* 3. a second maximum of a near-boundary voxel */
    if (near) {
        double lo = NAN, s_lo = NAN, hi = INFINITY, s_hi = -INFINITY;
        const double first = SCAN_FROM * vharm;
        double top = SCAN_TO * (s2 > vbar ? s2 : vbar) / first;
        const double ratio = pow(top > 1.0 ? top : 1.0, 1.0 / (SCAN - 1));
        for (int i = 0; i < SCAN; i++) {
            const double point = first * pow(ratio, i);
            evaluate(c, point, 2, 0, &e);
            const int rising = e.score > 0.0;
            if (!rising && isfinite(lo) && isinf(hi)) { hi = point; s_hi = e.score; }
            else if (rising && isinf(hi)) { lo = point; s_lo = e.score; }
            if (isfinite(hi)) break;  /* the bracket is set: later points change nothing */
        }
        if (isfinite(lo)) {
            const double t = climb(c, lo, lo, hi, s_lo, s_hi, scale, vharm, max_iter, tol, &it);
            if (it > iterations) iterations = it;
            Ev e_in, e_0;
            evaluate(c, t, 1, 1, &e_in);
            evaluate(c, 0.0, 1, 1, &e_0);
            if (e_in.loglik > e_0.loglik) {
                tau = t;
                interior = 1;
            }
        }
    }
    /* 4. the estimate, its covariance and r'Wr at the reported tau2 */
    if (interior) {
        evaluate(c, tau, 1, 0, &e);
        for (int a = 0; a < p; a++) beta_out[a] = c->b[a];
        memcpy(ainv_out, c->Ainv, p * p * sizeof(double));
        *rwr_out = e.rwr;
    }
    for (int a = 0; a < p; a++) beta_out[a] += b0[a];
    *tau_out = tau;
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
    const int q = p * (p + 1) / 2;
    double *mem = malloc(sizeof(double) * ((size_t)n * (4 + p + q) + (size_t)n * q + 6 * p * p + 6 * p + 3 * q));
    if (!mem) {
        PyErr_NoMemory();
        goto done;
    }
    double *tile = malloc(sizeof(double) * (size_t)TILE * n * 3);
    if (!tile) {
        free(mem);
        PyErr_NoMemory();
        goto done;
    }
    Ctx c;
    double *at = mem;
    const double *X = Xb.buf;
    double *xx = at; at += (size_t)n * q;
    for (int i = 0; i < n; i++) {
        int t = 0;
        for (int a = 0; a < p; a++)
            for (int b = 0; b <= a; b++, t++) xx[i * q + t] = X[i * p + a] * X[i * p + b];
    }
    c.n = n; c.p = p; c.q = q; c.X = X; c.xx = xx;
    c.y = at; at += n;
    c.w = at; at += n;
    c.wy = at; at += n;
    c.v = at; at += n;
    c.xs = at; at += (size_t)n * p;
    c.xxs = at; at += (size_t)n * q;
    c.packed = 1;
    c.A0inv = at; at += p * p;
    c.A1 = at; at += p * p;
    c.A2 = at; at += p * p;
    c.A3 = at; at += p * p;
    c.Ainv = at; at += p * p;
    c.G2 = at; at += p * p;
    c.xwy = at; at += p;
    c.xw2y = at; at += p;
    c.xw3y = at; at += p;
    c.b = at; at += p;
    c.xw2r = at; at += p;
    c.tmp = at; at += p;
    c.tri1 = at; at += q;
    c.tri2 = at; at += q;
    c.tri3 = at; at += q;
    memset(c.tri1, 0, q * sizeof(double));
    for (int i = 0; i < n; i++)
        for (int t = 0; t < q; t++) c.tri1[t] += xx[i * q + t];
    unpack(c.tri1, p, c.A1);
    c.full_ok = spd_inverse(c.A1, p, c.A0inv, NULL, c.G2);
    c.evaluate = p == 1 ? evaluate1 : p == 2 ? evaluate2 : p == 3 ? evaluate3 : p == 4 ? evaluate4 : evaluate_any;
    int iterations = 0;
    const double *Y = Yb.buf, *V = Vb.buf;
    const unsigned char *M = have_mask ? Mb.buf : NULL;
    double *tau2 = tb.buf, *beta = bb.buf, *ainv = ab.buf, *rwr = rb.buf;
    /* TILE voxels' columns are copied voxel-major first: row by row they are runs of the (subjects, voxels)
     * arrays, where reading each voxel's column directly strides through one cache line per subject */
    double *ty = tile, *tv = tile + (size_t)TILE * n;
    unsigned char *tm = (unsigned char *)(tile + (size_t)2 * TILE * n);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t0 = 0; t0 < k; t0 += TILE) {
        const int width = k - t0 < TILE ? (int)(k - t0) : TILE;
        for (int i = 0; i < n; i++) {
            const double *yr = Y + (size_t)i * ld, *vr = V + (size_t)i * ld;
            for (int t = 0; t < width; t++) {
                const long long j = cols[t0 + t];
                ty[(size_t)t * n + i] = yr[j];
                tv[(size_t)t * n + i] = vr[j];
                if (M) tm[(size_t)t * n + i] = M[(size_t)i * ld + j];
            }
        }
        for (int t = 0; t < width; t++) {
            const Py_ssize_t o = t0 + t;
            const int it = fit_voxel(&c, ty + (size_t)t * n, tv + (size_t)t * n, M ? tm + (size_t)t * n : NULL,
                                     max_iter, tol, tau2 + o, beta + o * p, ainv + o * p * p, rwr + o);
            if (it > iterations) iterations = it;
        }
    }
    Py_END_ALLOW_THREADS
    free(tile);
    free(mem);
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

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_reml", "Compiled REML climb of core.mixed.", -1, methods};

PyMODINIT_FUNC PyInit__reml(void) { return PyModule_Create(&module); }

"""nilearn's own GLM engine behind glmx's fit container: the reference estimator (``estimator: nilearn``).

It runs ``nilearn.glm.first_level.run_glm`` (what FirstLevelModel calls on the masked data) and
stores its per-bin results in a :class:`~glmx_workflows.core.glm.GLMFit`, so contrasts, fixed
effects and outputs downstream are the same code for both estimators.
"""

import numpy as np

from .errors import GlmxError
from .glm import GLMFit


def fit_glm_nilearn(Y, X, noise_model="ar1", bins=100):
    """Fit with nilearn's ``run_glm``.

    Parameters
    ----------
    Y : numpy.ndarray of shape (n_scans, n_voxels)
    X : numpy.ndarray of shape (n_scans, n_regressors)
    noise_model : {'ar1', 'ols'}
    bins : int
        AR(1) histogram bins, as nilearn.

    Returns
    -------
    GLMFit
    """
    from nilearn.glm.first_level import run_glm

    if Y.shape[0] != X.shape[0]:
        raise GlmxError(f"data have {Y.shape[0]} scans but the design has {X.shape[0]} rows")
    labels, results = run_glm(np.asarray(Y), X, noise_model=noise_model, bins=bins)
    keys = sorted(results, key=float)
    index = {k: i for i, k in enumerate(keys)}
    n_vox = Y.shape[1]
    beta = np.empty((X.shape[1], n_vox), dtype=np.float64)
    dispersion = np.empty(n_vox, dtype=np.float64)
    vox_labels = np.array([index[k] for k in labels], dtype=np.int64)
    for key in keys:
        sel = vox_labels == index[key]
        res = results[key]
        beta[:, sel] = res.theta
        dispersion[sel] = res.dispersion
    return GLMFit(
        beta=beta, dispersion=dispersion, labels=vox_labels,
        bin_rho=np.array([float(k) for k in keys]),
        bin_cov=np.stack([np.asarray(results[k].cov, dtype=np.float64) for k in keys]),
        bin_df=np.array([float(results[k].df_residuals) for k in keys]),
        noise_model=noise_model,
    )

"""Several maps of one run in one file, in the run's own form (single-trial beta series).

``io.geometry`` writes one (locations,) map at a time; a beta series is one map per trial, which users open as
one file:

========== ======================================================== ==============================================
form       file                                                     read back with
========== ======================================================== ==============================================
volume     ``stem.nii.gz``: 4D NIfTI, one volume per map            ``nibabel.load(...).get_fdata()[..., i]``
cifti      ``stem.dscalar.nii``: one scalar map per map, named,     ``nibabel.load(...).get_fdata()[i]``;
           the run's brain-model axis                               ``header.get_axis(0).name`` the map names
gifti      ``stem_hemi-L.func.gii`` and ``stem_hemi-R.func.gii``:   ``nilearn.surface.load_surf_data``
           one data array per map (its ``Name`` meta the map name)  → (n_vertices, n_maps)
========== ======================================================== ==============================================

A CIFTI dense scalar (not a dtseries) because trials are not evenly spaced in time; GIfTI with one data array
per map as fMRIPrep writes ``.func.gii`` series and as nilearn and Connectome Workbench read them.
"""

import numpy as np

from .atomic import atomic_path


def write_series(geometry, values, stem, names):
    """Write ``values`` (one row per map) where ``geometry``'s locations are.

    Parameters
    ----------
    geometry : VolumeGeometry or CiftiGeometry or GiftiGeometry
        From :func:`glmx_workflows.io.geometry.read_run`.
    values : array of shape (n_maps, n_locations)
        One row per map, one column per location of ``geometry.mask`` (zero elsewhere in the file).
    stem : str
        Path without extension.
    names : list of str
        One name per map (CIFTI map names, GIfTI data-array names; not kept in NIfTI).

    Returns
    -------
    list of (str, dict)
        ``[(path, extra entities)]``: one file, or the two hemispheres with ``{'hemi': 'L'|'R'}``.
    """
    import nibabel as nb

    values = np.asarray(values, dtype=np.float32)
    if geometry.form == "volume":
        from .images import unmask_series, write_image

        path = f"{stem}.nii.gz"
        write_image(unmask_series(values, geometry.mask, geometry.affine), path)
        return [(path, {})]
    full = np.zeros((values.shape[0], len(geometry.mask)), np.float32)
    full[:, geometry.mask] = values
    if geometry.form == "cifti":
        path = f"{stem}.dscalar.nii"
        img = nb.Cifti2Image(full, header=(nb.cifti2.ScalarAxis([str(n) for n in names]), geometry.axis))
        img.set_data_dtype(np.float32)
        with atomic_path(path) as tmp:
            nb.save(img, str(tmp))
        return [(path, {})]
    out = []
    n_left = geometry.n_vertices[0]
    for hemi, part, structure in (("L", full[:, :n_left], "CortexLeft"), ("R", full[:, n_left:], "CortexRight")):
        img = nb.gifti.GiftiImage(meta=nb.gifti.GiftiMetaData({"AnatomicalStructurePrimary": structure}))
        for name, row in zip(names, part):
            img.add_gifti_data_array(nb.gifti.GiftiDataArray(
                np.ascontiguousarray(row), intent="NIFTI_INTENT_ESTIMATE", datatype="NIFTI_TYPE_FLOAT32",
                meta=nb.gifti.GiftiMetaData({"Name": str(name)})))
        path = f"{stem}_hemi-{hemi}.func.gii"
        with atomic_path(path) as tmp:
            nb.save(img, str(tmp))
        out.append((path, {"hemi": hemi}))
    return out

"""Where the data of a run lives: a NIfTI volume and its mask, a CIFTI-2 brain-model axis, or a pair of
GIfTI hemispheres.

Every form is read into a (time × locations) array for the fit and written back, one (locations,) map at
a time, in the input's own form: a NIfTI image on the mask's grid, a CIFTI dense scalar file with the
input's brain-model axis, or one GIfTI per hemisphere. A run is named by two files, as the first-level
workflow carries them (``bold_file``, ``mask_file``):

========== ============================== =================================================================
form       bold_file                      mask_file ("where the locations are")
========== ============================== =================================================================
volume     4D NIfTI                       fmriprep brain mask on the BOLD's grid
cifti      ``.dtseries.nii``              the dtseries itself (its grayordinates are the mask)
gifti      ``hemi-L`` ``.func.gii``       the ``hemi-R`` ``.func.gii`` of the same run
========== ============================== =================================================================

After the fit, a run's locations are one file (:func:`load_geometry`): the brain mask, the dtseries, or
for GIfTI pairs a small ``.npz`` recording the vertex counts and which vertices were kept (those whose
series is finite and not constant). core never learns which form it was given.
"""

from pathlib import Path

import numpy as np

from ..core.errors import GlmxError

#: Vertices per hemisphere of the FreeSurfer fsaverage meshes fMRIPrep resamples to.
FSAVERAGE_VERTICES = {"fsaverage3": 642, "fsaverage4": 2562, "fsaverage5": 10242, "fsaverage6": 40962,
                      "fsaverage": 163842}
#: Vertices per hemisphere of the fsLR meshes behind fMRIPrep's CIFTI densities (``den-91k``: 32k meshes).
FSLR_VERTICES = {"91k": 32492, "170k": 59292}
CIFTI_EXTENSIONS = (".dtseries.nii", ".dscalar.nii", ".dlabel.nii", ".pscalar.nii", ".ptseries.nii")
_CORTEX = {"CIFTI_STRUCTURE_CORTEX_LEFT": "L", "CIFTI_STRUCTURE_CORTEX_RIGHT": "R"}


def space_form(space):
    """The form of the data a space names: 'cifti' (fsLR), 'gifti' (fsaverage*) or 'volume'.

    Parameters
    ----------
    space : str
        Space name, without modifiers (``fsLR``, ``fsaverage5``, ``MNI152NLin2009cAsym``).

    Returns
    -------
    str
    """
    if space == "fsLR":
        return "cifti"
    if space in FSAVERAGE_VERTICES:
        return "gifti"
    return "volume"


def file_form(path):
    """'cifti', 'gifti' or 'volume' from a file's name."""
    name = str(path)
    if name.endswith(CIFTI_EXTENSIONS):
        return "cifti"
    if name.endswith(".gii"):
        return "gifti"
    return "volume"


# ---------------------------------------------------------------------------------------------- CIFTI
def load_cifti(path, what="CIFTI file"):
    """A CIFTI-2 image (data not read), with an error naming the file."""
    import nibabel as nb

    path = Path(path)
    if not path.is_file():
        raise GlmxError(f"{what} not found", file=path)
    try:
        img = nb.load(str(path))
    except Exception as exc:  # nibabel raises many types
        raise GlmxError(f"{what} is not a readable CIFTI-2 file ({exc})", file=path) from None
    if not isinstance(img, nb.Cifti2Image) or len(img.shape) != 2:
        raise GlmxError(f"{what} is not a CIFTI-2 file of two axes", file=path)
    return img


_CIFTI = {}


def _cifti_entry(path):
    import os

    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _CIFTI:
        img = load_cifti(path)
        _CIFTI.clear()  # one file at a time is what the callers reuse
        _CIFTI[key] = {"img": img, "axes": None}
    return _CIFTI[key]


def cifti_image(path):
    """A CIFTI image (header parsed, data not read), loaded once per file version in a process.

    nibabel parses (and deep-copies) the CIFTI XML, every vertex and voxel index as text, at each load: a
    second or more for 91k grayordinates. Planning, reading and writing ask for the same file several times.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    nibabel.Cifti2Image
    """
    return _cifti_entry(path)["img"]


def cifti_axes(path):
    """(series or scalar axis, brain-model axis) of a CIFTI file, built once per file version in a process.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    tuple of 2 nibabel.cifti2 axes
    """
    entry = _cifti_entry(path)
    if entry["axes"] is None:
        entry["axes"] = (entry["img"].header.get_axis(0), entry["img"].header.get_axis(1))
    return entry["axes"]


def cifti_header(path, what="CIFTI file"):
    """The NIfTI-2 header fields and CIFTI XML of a file, without nibabel's parse of the XML.

    nibabel turns every vertex and voxel index of the XML into Python objects at each load (0.6 s for 91k
    grayordinates, more than reading the data). Reading a run's data and writing maps on its axis need only
    the data's place and type and the XML as text: the brain-model map is copied into outputs byte for byte.

    Parameters
    ----------
    path : str or Path
    what : str
        How errors name the file.

    Returns
    -------
    dict
        ``shape`` (tuple of 2 int: the CIFTI's two dimensions), ``dtype`` (numpy dtype with byte order),
        ``offset`` (int, bytes before the data), ``slope``, ``inter`` (float, NIfTI scaling; 1, 0 when unset),
        ``xml`` (bytes, the CIFTI extension without padding).

    Raises
    ------
    GlmxError
        Not a NIfTI-2 file with a CIFTI extension of two dimensions, naming the file.
    """
    import os
    import struct

    import nibabel as nb

    path = Path(path)
    if not path.is_file():
        raise GlmxError(f"{what} not found", file=path)
    st = os.stat(path)
    key = ("header", os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key in _HEADERS:
        return _HEADERS[key]
    with open(path, "rb") as fh:
        block = fh.read(544)
        if len(block) < 544:
            raise GlmxError(f"{what} is not a CIFTI-2 file (shorter than a NIfTI-2 header)", file=path)
        order = "<" if struct.unpack("<i", block[:4])[0] == 540 else ">"
        if struct.unpack(order + "i", block[:4])[0] != 540:
            raise GlmxError(f"{what} is not a CIFTI-2 file (no NIfTI-2 header)", file=path)
        hdr = nb.Nifti2Header(block[:540], check=False)
        dims = [int(d) for d in hdr["dim"]]
        offset = int(hdr["vox_offset"])
        xml = None
        pos = 540
        if block[540] and offset > 544:  # extensions: (esize, ecode, content) records up to the data
            rest = fh.read(offset - 544)
            ext = block[540:] + rest
            pos = 4
            while pos + 8 <= len(ext):
                esize, ecode = struct.unpack(order + "ii", ext[pos:pos + 8])
                if esize < 8:
                    break
                if ecode == 32:
                    xml = ext[pos + 8:pos + esize].rstrip(b"\x00")
                    break
                pos += esize
    if xml is None or dims[0] < 6 or any(d != 1 for d in dims[1:5]):
        raise GlmxError(f"{what} is not a CIFTI-2 file (no CIFTI extension, or not two dimensions)", file=path)
    slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    if not np.isfinite(slope) or slope == 0:
        slope, inter = 1.0, 0.0
    out = {"shape": (dims[5], dims[6]), "dtype": hdr.get_data_dtype(), "offset": offset,
           "slope": slope, "inter": inter if np.isfinite(inter) else 0.0, "xml": xml}
    _HEADERS.clear()
    _HEADERS[key] = out
    return out


_HEADERS = {}


def cifti_map_kinds(xml):
    """The index type of each of the two dimensions of a CIFTI XML (``CIFTI_INDEX_TYPE_...``), from its text."""
    import xml.etree.ElementTree as ET

    kinds = [None, None]
    for element in ET.fromstring(xml).iter("MatrixIndicesMap"):
        for dim in element.get("AppliesToMatrixDimension", "").split(","):
            if dim.strip() in ("0", "1"):
                kinds[int(dim)] = element.get("IndicesMapToDataType")
    return kinds


def scalar_map_xml(xml, names=("map",)):
    """A CIFTI XML with its dimension 0 replaced by named scalar maps, the brain-model map's text unchanged.

    Parameters
    ----------
    xml : bytes
        XML of a dense file (``dtseries``/``dscalar``): dimension 0 its own ``MatrixIndicesMap``.
    names : sequence of str

    Returns
    -------
    bytes or None
        None when dimension 0 shares its map with dimension 1 (not a dense file).
    """
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    matrix = root.find("Matrix")
    if matrix is None:
        return None
    maps = matrix.findall("MatrixIndicesMap")
    first = [m for m in maps if m.get("AppliesToMatrixDimension", "").strip() == "0"]
    if len(first) != 1:
        return None
    index = list(matrix).index(first[0])
    scalar = ET.Element("MatrixIndicesMap", {"AppliesToMatrixDimension": "0",
                                             "IndicesMapToDataType": "CIFTI_INDEX_TYPE_SCALARS"})
    for name in names:
        ET.SubElement(ET.SubElement(scalar, "NamedMap"), "MapName").text = str(name)
    matrix.remove(first[0])
    matrix.insert(index, scalar)
    return ET.tostring(root)


def dense_scalar_header(xml, n_locations):
    """Header bytes (NIfTI-2 + CIFTI extension) of a one-map float32 dense scalar file; the data follow them.

    Parameters
    ----------
    xml : bytes
        From :func:`scalar_map_xml`.
    n_locations : int

    Returns
    -------
    bytes
    """
    import struct

    import nibabel as nb

    esize = -(-(len(xml) + 8) // 16) * 16  # the extension's size, a multiple of 16 including its 8-byte head
    hdr = nb.Nifti2Header()
    hdr.set_data_dtype(np.float32)
    hdr["dim"] = [6, 1, 1, 1, 1, 1, int(n_locations), 1]
    hdr["pixdim"] = 1.0
    hdr["vox_offset"] = 544 + esize
    hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
    hdr["intent_code"], hdr["intent_name"] = 3006, b"ConnDenseScalar"  # NIFTI_INTENT_CONNECTIVITY_DENSE_SCALARS
    return (hdr.binaryblock[:540] + struct.pack("<i", 1) + struct.pack("<ii", esize, 32) + xml
            + b"\x00" * (esize - 8 - len(xml)))


def read_cifti_data(path, what="CIFTI BOLD run"):
    """A CIFTI file's data as float32 (dimension 0 × dimension 1), read once from the file in its own order.

    The file stores dimension 0 fastest (a dtseries: each grayordinate's series contiguous); the array is that
    block seen as (n_0, n_1) in Fortran order -- no transpose, no second copy.

    Parameters
    ----------
    path : str or Path
    what : str

    Returns
    -------
    numpy.ndarray of float32, shape (n_0, n_1), Fortran-ordered
    """
    import os

    info = cifti_header(path, what)
    n0, n1 = info["shape"]
    dtype = info["dtype"]
    need = info["offset"] + n0 * n1 * dtype.itemsize
    if os.path.getsize(path) < need:
        raise GlmxError(f"{what} is truncated ({os.path.getsize(path)} bytes, the header needs {need})", file=path)
    # one copy out of the page cache through a memory map (a buffered readinto measured 7x slower)
    stored = np.memmap(path, dtype=dtype, mode="r", offset=info["offset"], shape=(n0 * n1,))
    data = np.array(stored, dtype=np.float32)
    del stored
    if info["slope"] != 1.0 or info["inter"] != 0.0:
        data *= np.float32(info["slope"])
        data += np.float32(info["inter"])
    return data.reshape((n0, n1), order="F")


def cifti_density(axis):
    """The fsLR density of a brain-model axis from its cortex meshes' vertex counts ('91k', '170k'), or None."""
    counts = {n for name, _, bm in axis.iter_structures() if name in _CORTEX for n in [axis.nvertices[name]]}
    for den, n in FSLR_VERTICES.items():
        if counts == {n}:
            return den
    return None


def check_cifti_run(path, density=None):
    """A dense time series: series axis × brain-model axis, of the expected density.

    Parameters
    ----------
    path : str or Path
        ``.dtseries.nii``.
    density : str, optional
        Expected fsLR density (``'91k'``); checked against the cortex meshes' vertex counts.

    Returns
    -------
    n_scans : int
    step : float or None
        The series axis' step in seconds (None when its unit is not seconds).

    Raises
    ------
    GlmxError
        Not a dense time series, or another density.
    """
    import nibabel as nb

    if not Path(path).is_file():
        load_cifti(path, "CIFTI BOLD run")  # raises, naming the file
    series, models = cifti_axes(path)
    if not isinstance(series, nb.cifti2.SeriesAxis) or not isinstance(models, nb.cifti2.BrainModelAxis):
        raise GlmxError(f"expected a dense time series (series × brain models), got {type(series).__name__} × "
                        f"{type(models).__name__}", file=path, field="CIFTI axes")
    if density is not None:
        have = cifti_density(models)
        if have != density:
            counts = sorted({int(models.nvertices[n]) for n in models.nvertices if n in _CORTEX})
            raise GlmxError(f"the file's brain models are not fsLR den-{density} (cortex meshes of {counts} vertices, "
                            f"den-{density} has {FSLR_VERTICES.get(density, '?')})", file=path, field="den")
    step = float(series.step) if str(series.unit).upper() == "SECOND" else None
    return int(series.size), step


# ---------------------------------------------------------------------------------------------- GIfTI
def load_gifti(path, what="GIfTI file"):
    """A GIfTI image, with an error naming the file."""
    import nibabel as nb

    path = Path(path)
    if not path.is_file():
        raise GlmxError(f"{what} not found", file=path)
    try:
        img = nb.load(str(path))
    except Exception as exc:
        raise GlmxError(f"{what} is not a readable GIfTI file ({exc})", file=path) from None
    if not getattr(img, "darrays", None):
        raise GlmxError(f"{what} holds no data array", file=path)
    return img


def gifti_series(path, what="GIfTI BOLD run"):
    """A ``.func.gii`` time series as (time × vertices) float32: one data array per volume, or one 2D array."""
    img = load_gifti(path, what)
    arrays = [np.asarray(d.data) for d in img.darrays]
    if len(arrays) == 1 and arrays[0].ndim == 2:
        return np.ascontiguousarray(arrays[0].T, dtype=np.float32)
    if any(a.shape != arrays[0].shape or a.ndim != 1 for a in arrays):
        raise GlmxError("data arrays of different shapes; expected one array of vertex values per volume",
                        file=path)
    return np.stack(arrays).astype(np.float32, copy=False)


def gifti_shape(path):
    """(n_volumes, n_vertices) of a ``.func.gii`` run, from its data arrays' shapes."""
    img = load_gifti(path, "GIfTI BOLD run")
    first = img.darrays[0].data
    if len(img.darrays) == 1 and first.ndim == 2:
        return int(first.shape[1]), int(first.shape[0])
    return len(img.darrays), int(first.shape[0])


def check_gifti_pair(left, right, space=None):
    """Two hemispheres of one run: same number of volumes, the space's vertex count.

    Parameters
    ----------
    left, right : str or Path
        ``hemi-L`` and ``hemi-R`` ``.func.gii`` files.
    space : str, optional
        ``fsaverage5`` etc.: each hemisphere must have its vertex count.

    Returns
    -------
    n_scans : int

    Raises
    ------
    GlmxError
        Lengths differ, or a hemisphere has another vertex count than the space, naming the file.
    """
    (tl, vl), (tr, vr) = gifti_shape(left), gifti_shape(right)
    if tl != tr:
        raise GlmxError(f"hemispheres have different lengths: {tl} volumes in {Path(left).name}, {tr} in this file",
                        file=right, field="hemi")
    want = FSAVERAGE_VERTICES.get(space)
    for path, n in ((left, vl), (right, vr)):
        if want is not None and n != want:
            raise GlmxError(f"{n} vertices but {space} has {want} per hemisphere", file=path, field="space")
    return tl


def run_length(path):
    """Volumes of a CIFTI or GIfTI run (header or data arrays).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    int
    """
    if file_form(path) == "cifti":
        return check_cifti_run(path)[0]
    return gifti_shape(path)[0]


# ------------------------------------------------------------------------------------------ geometries
class VolumeGeometry:
    """In-mask voxels of a 3D grid.

    Parameters
    ----------
    mask : numpy.ndarray of bool, 3D
    affine : numpy.ndarray of shape (4, 4)
    """

    form = "volume"

    def __init__(self, mask, affine):
        self.mask, self.affine = mask, affine

    def write(self, values, stem, mask=None):
        """One map: ``stem.nii.gz`` (zero outside the mask).

        Parameters
        ----------
        values : array of shape (n_locations,)
            One value per location of ``mask`` (default ``self.mask``).
        stem : str
            Path without extension.
        mask : numpy.ndarray of bool, optional
            A sub-mask of the grid (e.g. the voxels all runs share).

        Returns
        -------
        list of (str, dict)
            ``[(path, extra entities)]``.
        """
        from .images import unmask, write_image

        path = f"{stem}.nii.gz"
        write_image(unmask(np.asarray(values, dtype=np.float32), self.mask if mask is None else mask,
                           self.affine), path)
        return [(path, {})]


class CiftiGeometry:
    """The grayordinates of a CIFTI-2 brain-model axis.

    Parameters
    ----------
    axis : nibabel.cifti2.BrainModelAxis
    mask : numpy.ndarray of bool of shape (n_grayordinates,), optional
        Grayordinates with data (default all).
    """

    form = "cifti"

    def __init__(self, axis, mask=None):
        self._axis = axis
        self.mask = np.ones(len(axis), bool) if mask is None else mask

    @classmethod
    def of_file(cls, path):
        """The geometry of a CIFTI file, its brain-model axis built only when a map is written or edges asked.

        Parameters
        ----------
        path : str or Path
            A dense CIFTI file.

        Returns
        -------
        CiftiGeometry
        """
        geometry = cls.__new__(cls)
        geometry._axis = str(path)
        geometry.mask = np.ones(cifti_header(path)["shape"][1], bool)
        return geometry

    @property
    def axis(self):
        """The brain-model axis (nibabel.cifti2.BrainModelAxis)."""
        if isinstance(self._axis, str):
            self._axis = cifti_axes(self._axis)[1]
        return self._axis

    def edges(self, meshes=None):
        """Neighbour pairs over the grayordinates (cortex mesh edges, subcortical voxel faces).

        Parameters
        ----------
        meshes : dict, optional
            ``{'L': (coordinates, faces), 'R': ...}`` of the fsLR meshes; needed when the axis has cortex.

        Returns
        -------
        numpy.ndarray of int64, shape (n_edges, 2)

        Raises
        ------
        GlmxError
            No meshes for the cortex, saying what to provide.
        """
        return _cifti_edges(self.axis, meshes)

    def locate(self, locations):
        """Where grayordinates are: their structure, and vertex (cortex) or voxel indices (the rest).

        Parameters
        ----------
        locations : array of int, shape (n,)
            Indices into the grayordinates.

        Returns
        -------
        dict of str to list
            ``structure`` (e.g. ``CORTEX_LEFT``), ``vertex`` (int or None), ``voxel`` ("i j k" or None).
        """
        return _cifti_locate(self.axis, locations)

    def write(self, values, stem, mask=None):
        """One map: ``stem.dscalar.nii`` with the input's brain-model axis (zero where not in ``mask``).

        Parameters
        ----------
        values, stem, mask
            As for :meth:`VolumeGeometry.write`.

        Returns
        -------
        list of (str, dict)
        """
        from .atomic import atomic_path

        mask = self.mask if mask is None else mask
        full = np.zeros(len(self.mask), "<f4")
        full[mask] = values
        path = f"{stem}.dscalar.nii"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(self._header_bytes())
                fh.write(full.tobytes())
        return [(path, {})]

    def _header_bytes(self):
        """NIfTI-2 header + CIFTI extension of a one-map dense scalar file on this axis, made once.

        nibabel writes the CIFTI XML (every vertex and voxel index) at each save: seconds for 91k
        grayordinates, and a first level writes dozens of maps. Every map of a geometry has the same header
        (one scalar map named 'map', float32), so it is made once and the values follow it: from the input file's
        XML text when the geometry was read from a file (its brain-model map copied unchanged), else by nibabel.
        """
        if getattr(self, "_header", None) is None and isinstance(self._axis, str):
            # the input's XML with a scalar map in place of its series: no parse of the indices by nibabel
            info = cifti_header(self._axis)
            if "scalar_header" not in info:  # once per file version and process (every node's maps share it)
                xml = scalar_map_xml(info["xml"])
                info["scalar_header"] = None if xml is None else dense_scalar_header(xml, info["shape"][1])
            if info["scalar_header"] is not None and len(self.mask) == info["shape"][1]:
                self._header = info["scalar_header"]
        if getattr(self, "_header", None) is None:
            import os
            import tempfile

            import nibabel as nb

            img = nb.Cifti2Image(np.zeros((1, len(self.mask)), np.float32),
                                 header=(nb.cifti2.ScalarAxis(["map"]), self.axis))
            img.set_data_dtype(np.float32)
            with tempfile.TemporaryDirectory() as folder:
                probe = os.path.join(folder, "probe.dscalar.nii")
                nb.save(img, probe)
                offset = int(nb.load(probe).dataobj.offset)
                with open(probe, "rb") as fh:
                    self._header = fh.read(offset)
        return self._header


def _cifti_locate(axis, locations):
    """Structure, vertex and voxel of grayordinates (see :meth:`CiftiGeometry.locate`)."""
    locations = np.asarray(locations, np.int64)
    out = {"structure": [], "vertex": [], "voxel": []}
    names = np.empty(len(axis), object)
    for name, sl, _ in axis.iter_structures():
        names[sl] = name.replace("CIFTI_STRUCTURE_", "")
    for loc in locations:
        out["structure"].append(names[loc])
        surface = bool(axis.surface_mask[loc])
        out["vertex"].append(int(axis.vertex[loc]) if surface else None)
        out["voxel"].append(None if surface else " ".join(str(int(v)) for v in axis.voxel[loc]))
    return out


def _cifti_edges(axis, meshes):
    """Neighbours of a brain-model axis: mesh edges of the cortex structures, voxel faces of the rest."""
    from .meshes import mesh_edges, voxel_face_edges

    out = []
    for name, sl, bm in axis.iter_structures():
        start = sl.start or 0
        if name in _CORTEX:
            hemi = _CORTEX[name]
            if not meshes or hemi not in meshes:
                raise GlmxError("cluster and TFCE methods on fsLR need the midthickness meshes of both hemispheres: set "
                                "'surface_meshes' to {\"L\": \"...hemi-L_space-fsLR_den-32k_midthickness.surf.gii\", "
                                "\"R\": ...}, or choose a voxel-wise method (perm_fwe, fdr, bonferroni, uncorrected)",
                                field="surface_meshes")
            coords, faces = meshes[hemi]
            if len(coords) != axis.nvertices[name]:
                raise GlmxError(f"the {hemi} mesh has {len(coords)} vertices but the CIFTI's {name} has "
                                f"{axis.nvertices[name]}", field="surface_meshes")
            index = np.full(len(coords), -1, np.int64)
            index[bm.vertex] = np.arange(len(bm.vertex)) + start
            e = index[mesh_edges(faces)]
            out.append(e[(e >= 0).all(axis=1)])
    volume = axis.volume_mask
    if volume.any():  # every subcortical voxel on one grid: face neighbours, across structures too
        rows = np.flatnonzero(volume)
        out.append(rows[voxel_face_edges(axis.voxel[volume])])
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


class GiftiGeometry:
    """Vertices of two hemispheres (left then right), the kept ones in ``mask``.

    Parameters
    ----------
    n_vertices : tuple of 2 int
        Left and right vertex counts.
    mask : numpy.ndarray of bool of shape (sum(n_vertices),), optional
    """

    form = "gifti"

    def __init__(self, n_vertices, mask=None):
        self.n_vertices = tuple(int(n) for n in n_vertices)
        self.mask = np.ones(sum(self.n_vertices), bool) if mask is None else mask

    def write(self, values, stem, mask=None):
        """One map: ``stem_hemi-L.func.gii`` and ``stem_hemi-R.func.gii`` (one data array of the vertex count).

        Parameters
        ----------
        values, stem, mask
            As for :meth:`VolumeGeometry.write`.

        Returns
        -------
        list of (str, dict)
            One per hemisphere, with ``{'hemi': 'L'|'R'}``.
        """
        import nibabel as nb

        from .atomic import atomic_path

        mask = self.mask if mask is None else mask
        full = np.zeros(sum(self.n_vertices), np.float32)
        full[mask] = values
        out = []
        for hemi, part, structure in (("L", full[:self.n_vertices[0]], "CortexLeft"),
                                      ("R", full[self.n_vertices[0]:], "CortexRight")):
            img = nb.gifti.GiftiImage(meta=nb.gifti.GiftiMetaData({"AnatomicalStructurePrimary": structure}))
            img.add_gifti_data_array(nb.gifti.GiftiDataArray(np.ascontiguousarray(part), intent="NIFTI_INTENT_NONE",
                                                             datatype="NIFTI_TYPE_FLOAT32"))
            path = f"{stem}_hemi-{hemi}.func.gii"
            with atomic_path(path) as tmp:
                nb.save(img, str(tmp))
            out.append((path, {"hemi": hemi}))
        return out

    def edges(self, meshes=None):
        """Mesh edges over the two hemispheres' vertices (right ones offset by the left count).

        Parameters
        ----------
        meshes : dict, optional
            ``{'L': (coordinates, faces), 'R': ...}``; default the fsaverage mesh of this vertex count that
            nilearn ships (fsaverage5).

        Returns
        -------
        numpy.ndarray of int64, shape (n_edges, 2)

        Raises
        ------
        GlmxError
            No mesh of this vertex count is packaged and none was given.
        """
        from .meshes import mesh_edges, packaged_mesh

        if meshes is None:
            space = next((s for s, n in FSAVERAGE_VERTICES.items() if self.n_vertices == (n, n)), None)
            meshes = packaged_mesh(space) if space else None
        if meshes is None:
            raise GlmxError(f"cluster and TFCE methods need the mesh of these {self.n_vertices[0]}-vertex hemispheres; "
                            "nilearn ships fsaverage5 only: set 'surface_meshes' to the pair of .surf.gii files, or "
                            "choose a voxel-wise method (perm_fwe, fdr, bonferroni, uncorrected)", field="surface_meshes")
        out = []
        for (hemi, offset), n in zip((("L", 0), ("R", self.n_vertices[0])), self.n_vertices):
            coords, faces = meshes[hemi]
            if len(coords) != n:
                raise GlmxError(f"the {hemi} mesh has {len(coords)} vertices, the maps {n}", field="surface_meshes")
            out.append(mesh_edges(faces) + offset)
        return np.concatenate(out)

    def locate(self, locations):
        """Hemisphere and vertex of locations.

        Parameters
        ----------
        locations : array of int, shape (n,)
            Indices into the two hemispheres' vertices (left first).

        Returns
        -------
        dict of str to list
            ``hemi`` ('L' or 'R') and ``vertex`` (index in its hemisphere's mesh).
        """
        locations = np.asarray(locations, np.int64)
        right = locations >= self.n_vertices[0]
        return {"hemi": ["R" if r else "L" for r in right],
                "vertex": [int(v) for v in np.where(right, locations - self.n_vertices[0], locations)]}

    def save(self, path):
        """Record the vertex counts and kept vertices (``.npz``) for :func:`load_geometry`."""
        from .atomic import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, n_vertices=np.array(self.n_vertices), mask=self.mask)
        return str(path)


def load_geometry(path):
    """The locations a run's maps live on, from its ``mask_file`` (after the fit).

    Parameters
    ----------
    path : str or Path
        A NIfTI brain mask, a CIFTI file (its brain-model axis), or a GIfTI pair's ``.npz`` record.

    Returns
    -------
    VolumeGeometry or CiftiGeometry or GiftiGeometry
    """
    form = file_form(path)
    if form == "cifti":
        return CiftiGeometry.of_file(path)
    if str(path).endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return GiftiGeometry(data["n_vertices"], data["mask"].astype(bool))
    from .images import load_mask

    return VolumeGeometry(*load_mask(path))


def read_run(bold_path, mask_path, keep=None, smoothing_fwhm=None):
    """Read a run once into percent signal change, whatever its form.

    Parameters
    ----------
    bold_path, mask_path : str or Path
        The run's two files (see the module's table).
    keep : array of shape (n_scans,) of bool, optional
        Volumes to keep (censoring).
    smoothing_fwhm : float, optional
        Volumes only; surfaces are refused when planning.

    Returns
    -------
    Y : numpy.ndarray of float32 or ScaledIntegerRun, shape (n_kept, n_locations)
        Percent signal change, as :func:`glmx_workflows.io.images.load_scaled_bold`.
    mean : numpy.ndarray of shape (n_locations,)
    geometry : VolumeGeometry or CiftiGeometry or GiftiGeometry
        Where the columns of ``Y`` live.
    """
    from ..core.signal import mean_scaling

    form = file_form(bold_path)
    if form == "volume":
        from .images import load_scaled_bold

        Y, mean, mask, affine = load_scaled_bold(bold_path, mask_path, keep, smoothing_fwhm)
        return Y, mean, VolumeGeometry(mask, affine)
    if smoothing_fwhm:
        raise GlmxError("smoothing_fwhm is not available on surfaces", file=bold_path, field="smoothing_fwhm")
    if form == "cifti":
        info = cifti_header(bold_path, "CIFTI BOLD run")
        if "kinds" not in info:  # parsed once per file version (the header is cached by cifti_header)
            info["kinds"] = cifti_map_kinds(info["xml"])
        kinds = info["kinds"]
        if kinds != ["CIFTI_INDEX_TYPE_SERIES", "CIFTI_INDEX_TYPE_BRAIN_MODELS"]:
            raise GlmxError(f"expected a dense time series (series × brain models), got {' × '.join(map(str, kinds))}",
                            file=bold_path, field="CIFTI axes")
        # read once, straight from the file, scaled in place below; in the file's order (time fastest: each
        # grayordinate's series contiguous), which the fit reads column block by column block without a transpose
        Y = read_cifti_data(bold_path)
        geometry = CiftiGeometry.of_file(bold_path)
    else:
        left, right = gifti_series(bold_path), gifti_series(mask_path)
        if left.shape[0] != right.shape[0]:
            raise GlmxError(f"hemispheres have different lengths: {left.shape[0]} volumes in {Path(bold_path).name}, "
                            f"{right.shape[0]} in this file", file=mask_path, field="hemi")
        geometry = GiftiGeometry((left.shape[1], right.shape[1]))
        Y = np.concatenate([left, right], axis=1)
        del left, right
    if keep is not None and not np.all(keep):
        keep = np.asarray(keep, bool)
        # rows of a time-fastest (Fortran) array: gathered along the transpose so the copy keeps that order
        Y = np.compress(keep, Y.T, axis=1).T if Y.flags.f_contiguous and not Y.flags.c_contiguous else Y[keep]
    if form == "gifti":
        # vertices without a usable series (medial wall zeros, NaN) are left out, as outside a volume's mask
        good = np.isfinite(Y).all(axis=0) & (Y.max(axis=0) > Y.min(axis=0))
        if not good.any():
            raise GlmxError("no vertex has a non-constant finite series", file=bold_path)
        geometry.mask = good
        Y = np.ascontiguousarray(Y[:, good])
    Y, mean = mean_scaling(Y, copy=False)
    if form == "cifti" and not np.isfinite(mean).all():  # a NaN or inf anywhere in a series makes its mean one
        raise GlmxError(f"{int((~np.isfinite(mean)).sum())} grayordinate(s) have non-finite values", file=bold_path)
    return Y, mean, geometry


def run_size(bold_path, mask_path):
    """(n_locations, n_scans) of a run without reading its data (GIfTI: all vertices of both hemispheres).

    Parameters
    ----------
    bold_path, mask_path : str or Path

    Returns
    -------
    tuple of 2 int
    """
    form = file_form(bold_path)
    if form == "cifti":
        shape = cifti_image(bold_path).shape
        return int(shape[1]), int(shape[0])
    if form == "gifti":
        (t, nl), (_, nr) = gifti_shape(bold_path), gifti_shape(mask_path)
        return nl + nr, t
    from .images import load_image, load_mask

    return int(load_mask(mask_path)[0].sum()), int(load_image(bold_path, "BOLD run").shape[3])


def check_run_locations(bold_path, mask_path, space=None, density=None):
    """Before any work: the mask fits the BOLD grid, the CIFTI has the density, the hemispheres agree.

    Parameters
    ----------
    bold_path, mask_path : str or Path
    space : str, optional
        Space name (GIfTI vertex counts).
    density : str, optional
        fsLR density (CIFTI).

    Raises
    ------
    GlmxError
        Naming the offending file.
    """
    form = file_form(bold_path)
    if form == "cifti":
        check_cifti_run(bold_path, density)
    elif form == "gifti":
        check_gifti_pair(bold_path, mask_path, space)
    else:
        from .images import load_image, load_mask

        load_mask(mask_path, reference=load_image(bold_path, "BOLD run"), reference_path=bold_path)


def is_surface_file(path):
    """Whether a map or run is a CIFTI or GIfTI file (by name).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    bool
    """
    return file_form(path) != "volume"


def right_of(left):
    """The ``hemi-R`` sibling of a ``hemi-L`` GIfTI (work-folder ``..._hemi-L.func.gii`` or BIDS ``_hemi-L_`` names)."""
    import re

    name = Path(left).name
    right = re.sub(r"_hemi-L([_.])", r"_hemi-R\1", name, count=1)
    if right == name:
        raise GlmxError("expected a hemi-L GIfTI file standing for its pair", file=left, field="hemi")
    return str(Path(left).with_name(right))


def read_map(path):
    """One surface map (first map of a CIFTI, or a GIfTI pair named by its left file) and its geometry.

    Parameters
    ----------
    path : str or Path
        ``.dscalar.nii``, or the ``hemi-L`` ``.func.gii`` of a pair (the ``hemi-R`` file beside it).

    Returns
    -------
    values : numpy.ndarray of float64, shape (n_locations,)
    geometry : CiftiGeometry or GiftiGeometry
        All locations in ``mask``.

    Raises
    ------
    GlmxError
        Unreadable file or missing right hemisphere, naming the file.
    """
    if file_form(path) == "cifti":
        return read_cifti_data(path, "CIFTI map")[0].astype(np.float64), CiftiGeometry.of_file(path)
    right = right_of(path)
    parts = [np.asarray(load_gifti(p, "GIfTI map").darrays[0].data, dtype=np.float64).ravel() for p in (path, right)]
    return np.concatenate(parts), GiftiGeometry((len(parts[0]), len(parts[1])))

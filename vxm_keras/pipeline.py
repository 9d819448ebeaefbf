"""Scans in, results out: register.py's whole registration as one library call.

    import vxm_keras
    result = vxm_keras.register('sub-07/brainmask.mgz')                # to the shipped atlas
    result = vxm_keras.register('t1.nii.gz', 'other_t1.nii.gz', model='models/vm2_scan2scan.h5')
    result.moved        # the moving scan resampled on the fixed scan's grid (its own intensities)
    result.warp         # (*model_grid, 3) displacement on the model grid: voxels, ij indexing
    result.forward      # Chain fixed voxels -> moving voxels: .resample(labels, order=0),
                        # .displacement_mm() for ANTs/ITK (vxm_keras.native.save_itk_warp)

Scans may be paths (NIfTI, MGZ, npz, npy), nibabel images, :class:`~vxm_keras.native.Scan`\\ s,
``(array, affine)`` pairs, or bare arrays (taken to be on the model grid, as
``python -m vxm_keras.prepare`` writes them). A scan off the model grid is affinely aligned and
resampled onto it (``affine='auto'``), registered (network, then the refinement of
:mod:`vxm_keras.settings`), and the result comes back on the fixed scan's own grid in one
interpolation. For many moving scans to one fixed scan, make one :class:`Registrar`: the model
loads and the fixed scan is aligned once.
"""

import os

import numpy as np

from . import native
from .grid import TARGET_AFFINE, is_model_grid
from .io import check_not_constant, load_volfile
from .registration import Registration
from .settings import CONTRAST_FREE, DEFAULT, Refinement

__all__ = ['load_scan', 'Registrar', 'register']


def load_scan(source, name=None) -> native.Scan:
    """A :class:`~vxm_keras.native.Scan` from a path, a nibabel image, a ``Scan``, an
    ``(array, affine)`` pair or an array (``affine`` ``None``: on the model grid).

    Raises:
        VolumeError: an unreadable file, one holding non-finite values, or one of a single
            intensity (no image term can compare it; names the file).
    """
    if isinstance(source, native.Scan):
        scan = source
    elif isinstance(source, (str, os.PathLike)):
        vol, affine = load_volfile(source, ret_affine=True, check_finite=True)
        scan = native.Scan(vol, affine, name or os.fspath(source))
    elif hasattr(source, 'affine') and hasattr(source, 'dataobj'):  # a nibabel image
        filename = source.get_filename() if hasattr(source, 'get_filename') else None
        scan = native.Scan(np.asarray(source.dataobj, np.float32), np.asarray(source.affine, np.float64),
                           name or filename or 'image')
    elif isinstance(source, tuple) and len(source) == 2:
        vol, affine = source
        scan = native.Scan(np.asarray(vol), None if affine is None else np.asarray(affine, np.float64),
                           name or 'array')
    else:
        scan = native.Scan(np.asarray(source), None, name or 'array')
    check_not_constant(scan.vol, scan.name)
    return scan


class Registrar:
    """One model and one fixed scan, for any number of moving scans of any grid.

    Args:
        model: a path, a :class:`~vxm_keras.networks.RegistrationModel` or a
            :class:`~vxm_keras.registration.Registration` (default the shipped
            ``models/vm2_atlas.h5``).
        fixed: the fixed scan in any form :func:`load_scan` takes (default the shipped atlas).
        affine: ``'auto'`` aligns the scans that are not on the model grid, ``'on'`` every moving
            scan, ``'off'`` none (scans must then be on the grid).
        dof: degrees of freedom of the alignment (6, 9, 12).
        check: refuse alignments that look wrong (:class:`~vxm_keras.native.AlignmentError`).
        xla: compile the network's prediction with XLA.

    Raises:
        ValueError: the fixed scan does not suit the model (naming it).
    """

    def __init__(self, model=None, fixed=None, *, affine: str = 'auto', dof: int = 12, check: bool = True,
                 xla: bool = False):
        from .shipped import DEFAULT_ATLAS, DEFAULT_MODEL
        if affine not in ('auto', 'on', 'off'):
            raise ValueError(f"affine must be 'auto', 'on' or 'off', got {affine!r}")
        if dof not in (6, 9, 12):
            raise ValueError(f'dof must be 6, 9 or 12, got {dof}')
        self.engine = (model if isinstance(model, Registration)
                       else Registration(DEFAULT_MODEL if model is None else model, xla=xla))
        self.fixed = load_scan(DEFAULT_ATLAS if fixed is None else fixed, None if fixed is not None else 'atlas')
        self.affine, self.dof, self.check = affine, dof, check
        shape = tuple(self.engine.inshape)
        fixed_vol = self.fixed.vol
        if affine == 'off' or fixed_vol.ndim != 3 or len(shape) != 3:  # else a fixed scan off the grid is aligned
            self.engine.check(fixed_vol, self.fixed.name)
        if is_model_grid(shape):
            # scans of any grid can be aligned to the atlas, which lies on this grid
            self.grid_affine = TARGET_AFFINE
            self.grid_name = (f'on the model grid ({"x".join(map(str, shape))} at 1 mm, as python -m '
                              'vxm_keras.prepare writes scans)')
            self._reference = lambda: load_volfile(DEFAULT_ATLAS, ret_affine=True)
        else:
            if affine == 'on':
                raise ValueError(f'{self.engine.name}: affine alignment of every scan needs a model on the vxm-keras grid '
                                 f'(160x192x224); this one takes {shape}')
            if fixed_vol.shape != shape:
                raise ValueError(f'{self.fixed.name}: shape {fixed_vol.shape}, but the model takes {shape}, a grid '
                                 'vxm-keras cannot align scans to; give scans on that grid')
            self.grid_affine = (self.fixed.affine if self.fixed.affine is not None
                                else np.eye(len(shape) + 1))
            self.grid_name = ("on the fixed scan's grid" if self.fixed.affine is not None
                              else 'on a grid of 1 mm voxels along the world axes (identity affine)')
            self._reference = None
        self._placements = {}

    @property
    def fixed_placement(self) -> native.Placement:
        """The fixed scan on the model grid: as it is, or aligned to the atlas by NCC (once)."""
        return self.placement('ncc')

    def placement(self, alignment: str = 'ncc') -> native.Placement:
        """The fixed scan on the model grid, aligned to the atlas by ``alignment`` (``'ncc'`` or
        ``'mi'``) when it is off the grid; computed once per metric."""
        if alignment not in self._placements:
            shape = tuple(self.engine.inshape)
            reference = None
            if not native.on_grid(self.fixed, shape, self.grid_affine):
                reference = self._reference() if self._reference is not None else None
            self._placements[alignment] = native.place_fixed(self.fixed, shape, self.grid_affine, reference,
                                                             self.affine, self.dof, self.check, alignment)
        return self._placements[alignment]

    def register(self, moving, inverse: bool = False, settings: Refinement = DEFAULT, alignment: str = None,
                 **changes) -> native.NativeResult:
        """Register one moving scan (any form :func:`load_scan` takes) to the fixed scan.

        Args:
            moving: the moving scan.
            inverse: also the inverse chain (diffeomorphic models).
            settings: the refinement (:mod:`vxm_keras.settings`; ``NETWORK_ALONE``,
                ``CROSS_CONTRAST`` for a T2/FLAIR/PD moving scan and a T1 fixed scan).
            alignment: the metric of the affine alignments of scans off the model grid: ``'ncc'``
                or ``'mi'`` (mutual information); default ``'mi'`` when the image term compares
                contrasts (``settings.CONTRAST_FREE``: NGF, MIND; NCC misplaces a T2 by millimetres), else
                ``'ncc'`` (as accurate on one contrast, and faster).
            changes: single settings changed from ``settings`` (``optimize=50``, ``lam=1``, ...).

        Returns:
            :class:`~vxm_keras.native.NativeResult`; ``notes`` says what was assumed (a scan
            without an affine beside one with).

        Raises:
            ValueError: a scan that does not suit the model or the options (naming it);
            AlignmentError: with ``check``, an alignment that looks wrong.
        """
        moving = load_scan(moving, 'moving')
        settings = settings.replace(**changes)
        if alignment is None:
            alignment = 'mi' if settings.image_loss in CONTRAST_FREE else 'ncc'
        if alignment not in ('ncc', 'mi'):
            raise ValueError(f"alignment must be 'ncc' or 'mi', got {alignment!r}")
        shape = tuple(self.engine.inshape)
        if moving.vol.ndim != len(shape):
            raise ValueError(f'{moving.name}: a {moving.vol.ndim}-D scan, but the model registers '
                             f'{len(shape)}-D volumes {shape}')
        if not is_model_grid(shape):  # no atlas to align to: the pair must be on the model's grid
            if moving.vol.shape != self.fixed.vol.shape:
                raise ValueError(f'{moving.name}: shape {moving.vol.shape} differs from the fixed scan '
                                 f'{self.fixed.name} {self.fixed.vol.shape}')
            self.engine.check(moving.vol, moving.name)
        if inverse and not self.engine.model.diffeomorphic:
            raise ValueError(f'{self.engine.name}: this model has no inverse; a diffeomorphic model '
                             '(train.py --model vm2diff) does')
        first = not self._placements
        result = native.register_scans(self.engine, moving, self.placement(alignment), None, self.grid_affine,
                                       affine=self.affine, dof=self.dof, inverse=inverse, check=self.check,
                                       alignment=alignment, **settings.as_kwargs())
        # a scan used as it is must already be scaled as the models expect; the fixed scan is told once
        used_as_is = [scan for scan in ((moving, self.fixed) if first else (moving,))
                      if native.on_grid(scan, shape, self.grid_affine)]
        result.notes = [warning for warning in map(_range_warning, used_as_is) if warning]
        result.notes += native.assumed_grid_note((moving, self.fixed), shape, self.grid_affine, self.grid_name)
        return result


def _range_warning(scan):
    vol = scan.vol
    if vol.size and (vol.max() > 1.5 or vol.min() < -0.5):
        return (f'warning: {scan.name} has intensities in [{vol.min():.3g}, {vol.max():.3g}]; '
                'models expect [0, 1] (python -m vxm_keras.prepare)')
    return None


def register(moving, fixed=None, model=None, *, inverse: bool = False, settings: Refinement = DEFAULT,
             alignment: str = None, affine: str = 'auto', dof: int = 12, check: bool = True,
             **changes) -> native.NativeResult:
    """Register ``moving`` to ``fixed`` as register.py does, in one call.

    Args:
        moving, fixed: paths, nibabel images, :class:`~vxm_keras.native.Scan`\\ s,
            ``(array, affine)`` pairs, or arrays on the model grid (``fixed`` default: the shipped
            atlas).
        model: a path or a loaded model (default the shipped ``models/vm2_atlas.h5``).
        inverse, settings, alignment, changes: as in :meth:`Registrar.register`; ``optimize=0``
            is the network alone; ``settings=vxm_keras.settings.CROSS_CONTRAST`` for a T2, FLAIR
            or PD moving scan and a T1 fixed scan.
        affine, dof, check: as in :class:`Registrar`.

    Returns:
        :class:`~vxm_keras.native.NativeResult`: ``moved`` on the fixed scan's grid, ``warp``
        the displacement on the model grid, ``forward`` the chain to resample labels or write
        ANTs/ITK transforms, ``grid`` the :class:`~vxm_keras.registration.Result` on the model
        grid (``seconds``, ``losses``, ``stages``).
    """
    return Registrar(model, fixed, affine=affine, dof=dof, check=check).register(
        moving, inverse=inverse, settings=settings, alignment=alignment, **changes)

"""Scans in their own space: onto the model's grid, and results back to the scans' grids.

The networks register scans on one grid (:data:`vxm_keras.grid.TARGET_SHAPE`
in MNI305 at 1 mm, the *model grid*). A scan straight from a scanner or BIDS
has any orientation, voxel size and field of view. Each scan is therefore
*placed* on the model grid by a world map ``W`` (4x4, mm): the model grid's
world point ``g`` lies at ``W g`` in the scan's world. The fixed scan's ``W``
comes from an affine alignment to the default atlas (or is the identity when
the fixed scan is on the grid already), the moving scan's from its affine
alignment to the fixed scan, composed with the fixed scan's.

Results go back to the scans' own grids in one interpolation: for a voxel
``x`` of the fixed scan the chain

    x -> fixed world A_f x -> model grid voxel p -> p + u(p) -> moving world -> moving voxel

gives the point of the moving scan to sample (``u``: the network's
displacement on the model grid, voxel units). The same chain in millimetres
is the transform other tools apply: :func:`vxm_keras.transforms.save_itk_warp` writes it as the
displacement field ANTs and ITK read (5-D NIfTI, vector intent, LPS mm, on
the fixed scan's grid), :func:`~vxm_keras.transforms.save_itk_affine` the affine part alone as an
ITK text transform.

Conventions: affines are 4x4 voxel-to-world (RAS mm) matrices as nibabel
gives them; world maps and transforms map *fixed* points to *moving* points
(the direction of resampling); displacements on the model grid are in voxel
units, ``ij`` indexing; ITK files are in LPS millimetres.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from . import affine as affine_mod
from . import spatial
from .errors import UserError
# the transform files (kept importable from here, where they lived first)
from .transforms import load_itk_affine, load_itk_warp, save_itk_affine, save_itk_warp, save_ras_warp  # noqa: F401

__all__ = ['SLAB', 'GRID_TOLERANCE', 'MAX_OUTSIDE', 'MIN_CORRELATION', 'AlignmentError', 'Scan', 'Placement',
           'on_grid', 'off_grid_reason', 'assumed_grid_note', 'place', 'align_to', 'outside_fraction',
           'map_points', 'sample', 'Chain', 'on_moving_grid', 'NativeResult', 'register_scans', 'place_fixed']

# slices of the output grid resampled at a time: bounds the memory of a 0.5 mm scan
SLAB = 32
# at most this far (mm) from the grid's affine a scan still counts as on the grid
GRID_TOLERANCE = 1e-3
# Checks of an alignment, measured against the shipped atlas (models/README.md): skull-stripped T1
# brains put 0.2 % (Colin27 ch2bet) to 3 % (the FreeSurfer brainmasks) of their intensity outside the
# atlas's brain grown by 6 mm, the same head with its skull (Colin27 ch2) 42 %; all of them correlate
# 0.82-0.89 with the atlas over that region, so a correlation below 0.5 means a failed alignment
MAX_OUTSIDE = 0.15
MIN_CORRELATION = 0.5


class AlignmentError(UserError):
    """An affine alignment too poor to register from (a scan with skull, another contrast)."""


@dataclasses.dataclass
class Scan:
    """A scan as read: ``vol`` ``(*spatial)``, ``affine`` 4x4 voxel-to-world, ``name`` for messages."""
    vol: np.ndarray
    affine: np.ndarray
    name: str = 'scan'


@dataclasses.dataclass
class Placement:
    """A scan on the model grid: ``vol`` ``(*grid_shape)`` float32 in [0, 1]; ``world_map`` 4x4
    from the grid's world to the scan's world; ``alignment`` the
    :class:`~vxm_keras.affine.AffineResult` that found it (``None``: the scan was on the grid)."""
    scan: Scan
    vol: np.ndarray
    world_map: np.ndarray
    alignment: object = None


def on_grid(scan, grid_shape, grid_affine):
    """Whether ``scan`` is already on the grid (its shape, and its affine unless it has none)."""
    if tuple(scan.vol.shape) != tuple(grid_shape):
        return False
    return scan.affine is None or np.allclose(scan.affine, grid_affine, atol=GRID_TOLERANCE)


def off_grid_reason(scan, grid_shape, grid_affine):
    """Why ``scan`` is not on the grid, for messages (``None`` when it is)."""
    if tuple(scan.vol.shape) != tuple(grid_shape):
        return f'shape {tuple(scan.vol.shape)} is not the model grid {tuple(grid_shape)}'
    if not on_grid(scan, grid_shape, grid_affine):
        return (f'its affine (orientation, voxel size or origin) is not the model grid\'s, although its shape '
                f'{tuple(grid_shape)} is')
    return None


def assumed_grid_note(scans, grid_shape, grid_affine, grid_name):
    """Notes for the scans without an affine (``.npz``/``.npy``) paired with a scan whose affine
    puts it elsewhere: the scan without one is taken to be ``grid_name`` (``grid_affine``), and the
    other is placed in that space by its affine. Silence would hide that guess."""
    placed = [scan.name for scan in scans if scan.affine is not None and not on_grid(scan, grid_shape, grid_affine)]
    if not placed:
        return []
    return [f'note: {scan.name} carries no voxel-to-world affine: it is taken to be {grid_name}, and '
            f'{" and ".join(placed)} is placed in that space by its own affine'
            for scan in scans if scan.affine is None]


def place(scan, grid_shape, grid_affine, world_map=np.eye(4), normalise=True):
    """Resample ``scan`` onto the grid through ``world_map`` (trilinear, zero outside the scan).

    Returns:
        :class:`Placement`; intensities scaled to [0, 1] by the 99.5th percentile of the
        positive voxels when ``normalise``.
    """
    world_map = np.asarray(world_map, np.float64)
    grid_to_scan = np.linalg.inv(scan.affine) @ world_map @ np.asarray(grid_affine, np.float64)
    vol = sample(scan.vol, grid_to_scan, grid_shape, order=1)
    if normalise:
        vol = affine_mod.robust_scale(vol)
    return Placement(scan=scan, vol=vol, world_map=world_map)


def _as_is(scan, grid_affine):
    """The placement of a scan already on the grid (a file without an affine gets the grid's)."""
    if scan.affine is None:
        scan = dataclasses.replace(scan, affine=np.asarray(grid_affine, np.float64))
    return Placement(scan=scan, vol=np.asarray(scan.vol, np.float32), world_map=np.eye(4))


def align_to(scan, reference, reference_affine, grid_shape, grid_affine, reference_map=np.eye(4), dof=12,
             init='moments', check=True, reference_name='the reference', loss='ncc'):
    """Affinely align ``scan`` to ``reference`` (its own grid and affine; ``reference_map`` its
    placement's world map) and place it on the model grid.

    ``loss`` is the alignment's metric (:func:`vxm_keras.affine.align`): ``'ncc'`` for scans of one
    contrast, ``'mi'`` (mutual information) for a T2, FLAIR or PD scan aligned to a T1.

    Returns:
        :class:`Placement` with ``alignment`` set.

    Raises:
        AlignmentError: with ``check``, when the aligned scan correlates less than
            :data:`MIN_CORRELATION` with the reference (NCC only: other contrasts need not
            correlate), or (a reference on the model grid) puts
            more than :data:`MAX_OUTSIDE` of its intensity outside the reference's brain.
    """
    if scan.affine is None:
        raise ValueError(f'{scan.name}: not on the model grid {tuple(grid_shape)} and without a voxel-to-world '
                         'affine to align it by (give a NIfTI or MGZ file, or an .npz with an affine key)')
    if scan.vol.ndim != 3:
        raise ValueError(f'{scan.name}: a {scan.vol.ndim}-D array of shape {scan.vol.shape}; only 3-D scans '
                         'are aligned')
    found = affine_mod.align(scan.vol, scan.affine, reference, reference_affine, dof=dof, init=init, loss=loss)
    placement = place(scan, grid_shape, grid_affine, found.matrix @ np.asarray(reference_map, np.float64))
    placement.alignment = found
    if check:
        advice = ('The models were trained on skull-stripped T1 brains: strip the skull first (e.g. '
                  'mri_synthstrip, FSL bet)')
        if loss == 'ncc' and -found.loss < MIN_CORRELATION:
            raise AlignmentError(f'{scan.name}: after affine alignment it correlates only {-found.loss:.2f} with '
                                 f'{reference_name}: another contrast, or not a brain? {advice}')
        if tuple(np.shape(reference)) == tuple(grid_shape) and np.allclose(reference_affine, grid_affine):
            outside = outside_fraction(placement.vol, reference)
            if outside > MAX_OUTSIDE:
                raise AlignmentError(f'{scan.name}: after affine alignment {outside:.0%} of its intensity lies '
                                     f'outside the brain of {reference_name} (skull-stripped brains: 0.2-3 %): '
                                     f'a head with its skull? {advice}')
    return placement


def outside_fraction(vol, reference):
    """Share of ``vol``'s intensity outside ``reference``'s foreground grown by 6 mm (both on the
    model grid, 1 mm; computed at 2 mm)."""
    from scipy import ndimage
    region = ndimage.binary_dilation(np.asarray(reference)[::2, ::2, ::2] > 0.01, iterations=3)
    coarse = np.clip(np.asarray(vol, np.float32)[::2, ::2, ::2], 0, None)
    total = coarse.sum()
    return float(coarse[~region].sum() / total) if total > 0 else 0.0


def _apply(mat, points):
    mat = tf.constant(np.asarray(mat, np.float64), tf.float32) if not tf.is_tensor(mat) else mat
    return tf.linalg.matvec(mat[:3, :3], points) + mat[:3, 3]


def _points(shape, start, stop):
    """Voxel indices ``(stop - start, *shape[1:], 3)`` of slices ``start:stop`` along axis 0, as a tensor."""
    axes = [tf.range(start, stop, dtype=tf.float32)] + [tf.range(n, dtype=tf.float32) for n in shape[1:]]
    return tf.stack(tf.meshgrid(*axes, indexing='ij'), -1)


@tf.function(autograph=False, jit_compile=True)
def _through_grid(points, pre, post, disp):
    p = _apply(pre, points)
    p = p + spatial.interpn(disp[None], p[None], 'linear')[0]
    return _apply(post, p)


@tf.function(autograph=False, jit_compile=True)
def _affine_only(points, mat):
    return _apply(mat, points)


@tf.function(autograph=False, jit_compile=True)
def _sample_linear(source, coords):
    return spatial.interpn(source, coords[None], 'linear', fill_value=0.0)[0, ..., 0]


@tf.function(autograph=False, jit_compile=True)
def _sample_nearest(source, coords):
    return spatial.interpn(source, coords[None], 'nearest', fill_value=0.0)[0, ..., 0]


def map_points(points, pre, post, disp=None):
    """Source voxel coordinates of target voxels through the model grid.

    Args:
        points: ``(..., 3)`` target voxel indices.
        pre: 4x4 target voxel -> model grid voxel.
        post: 4x4 model grid voxel -> source voxel.
        disp: ``(*grid_shape, 3)`` displacement on the model grid (voxel units, ``ij``),
            sampled trilinearly (edge values beyond the grid); ``None`` for the affine alone.

    Returns:
        ``(..., 3)`` float32 tensor.
    """
    points = tf.convert_to_tensor(points, tf.float32)
    pre = tf.constant(np.asarray(pre, np.float64), tf.float32)
    post = tf.constant(np.asarray(post, np.float64), tf.float32)
    if disp is None:
        return _affine_only(points, post @ pre)
    return _through_grid(points, pre, post, tf.convert_to_tensor(disp, tf.float32))


def sample(vol, target_to_source, target_shape, order=1, disp=None, post=None):
    """Resample ``vol`` ``(*spatial)`` on a target grid, one slab of slices at a time.

    Without ``disp``, ``target_to_source`` is the 4x4 target voxel -> source voxel map; with it,
    ``target_to_source`` is the map to the model grid (``pre`` of :func:`map_points`) and
    ``post`` the map from the grid to the source. ``order`` 1 (trilinear, float32) or 0
    (nearest, labels keep their dtype). Zero outside the source. ``vol`` may be a list of
    ``(volume, order)`` pairs sharing the grid: the coordinates are then computed once and a
    list is returned.
    """
    many = isinstance(vol, list)
    jobs = vol if many else [(vol, order)]
    sources = [tf.constant(np.asarray(v, np.float32)[None, ..., None]) for v, _ in jobs]
    outs = [np.zeros(tuple(target_shape), np.float32 if o else np.asarray(v).dtype) for v, o in jobs]
    if disp is None:
        mat = tf.constant(np.asarray(target_to_source, np.float64), tf.float32)
    else:
        pre = tf.constant(np.asarray(target_to_source, np.float64), tf.float32)
        post_t = tf.constant(np.asarray(post, np.float64), tf.float32)
        disp_t = tf.convert_to_tensor(disp, tf.float32)
    for start in range(0, target_shape[0], SLAB):
        stop = min(start + SLAB, target_shape[0])
        points = _points(target_shape, start, stop)
        coords = _affine_only(points, mat) if disp is None else _through_grid(points, pre, post_t, disp_t)
        for source, (_, o), out in zip(sources, jobs, outs):
            values = (_sample_linear if o else _sample_nearest)(source, coords).numpy()
            out[start:stop] = values if o else np.rint(values).astype(out.dtype)
    return outs if many else outs[0]


@dataclasses.dataclass
class Chain:
    """The map from a target scan's voxels to a source scan's voxels through the model grid:
    ``target`` and ``source`` :class:`Placement`\\ s, ``grid_affine`` the model grid's affine,
    ``disp`` the displacement on the model grid (``None``: the affine part alone)."""
    target: Placement
    source: Placement
    grid_affine: np.ndarray
    disp: np.ndarray = None

    @property
    def identity(self):
        """Both scans on the model grid, unmoved: the chain is the displacement alone."""
        return (self.target.alignment is None and self.source.alignment is None
                and np.allclose(self.pre, np.eye(4)) and np.allclose(self.post, np.eye(4)))

    @property
    def pre(self):
        """target voxel -> model grid voxel"""
        return np.linalg.inv(self.grid_affine) @ np.linalg.inv(self.target.world_map) @ self.target.scan.affine

    @property
    def post(self):
        """model grid voxel -> source voxel"""
        return np.linalg.inv(self.source.scan.affine) @ self.source.world_map @ self.grid_affine

    @property
    def world_affine(self):
        """4x4 RAS map target world -> source world of the affine part."""
        return self.source.world_map @ np.linalg.inv(self.target.world_map)

    def resample(self, vol=None, order=1):
        """The source scan (or ``vol`` on its grid) on the target scan's grid; ``vol`` may be a list
        of ``(volume, order)`` pairs (one pass over the coordinates for all, a list returned)."""
        vol = self.source.scan.vol if vol is None else vol
        shape = self.target.scan.vol.shape
        if self.disp is None:
            return sample(vol, self.post @ self.pre, shape, order)
        return sample(vol, self.pre, shape, order, disp=self.disp, post=self.post)

    def sample_on_target(self, grid_map, order=1):
        """A map on the model grid ``(*grid_shape)`` (e.g. uncertainty) on the target scan's grid."""
        return sample(grid_map, self.pre, self.target.scan.vol.shape, order)

    def displacement_mm(self, lps=True):
        """``(*target_shape, 3)`` displacement in mm on the target grid: target world point
        ``x`` maps to ``x + d(x)`` in the source world (LPS components, ITK's convention, or RAS)."""
        shape = self.target.scan.vol.shape
        out = np.zeros((*shape, 3), np.float32)
        target_affine = self.target.scan.affine
        for start in range(0, shape[0], SLAB):
            stop = min(start + SLAB, shape[0])
            points = _points(shape, start, stop)
            src = map_points(points, self.pre, self.post, self.disp)
            out[start:stop] = (_apply(self.source.scan.affine, src) - _apply(target_affine, points)).numpy()
        if lps:
            out[..., :2] *= -1
        return out


def on_moving_grid(chain):
    """``chain`` (fixed -> moving) with its target replaced by the moving scan's own grid carried into
    the fixed scan's space by the inverse of the affine part: results there are in the fixed scan's
    space at the moving scan's voxel size and extent. The new target's affine (fixed world) is
    ``inv(chain.world_affine) @ moving_affine``."""
    moving = chain.source.scan
    affine = np.linalg.inv(chain.world_affine) @ np.asarray(moving.affine, np.float64)
    grid = Scan(np.broadcast_to(np.float32(0), moving.vol.shape), affine, f'{moving.name} grid')
    target = Placement(scan=grid, vol=None, world_map=chain.target.world_map, alignment=chain.target.alignment)
    return Chain(target, chain.source, chain.grid_affine, chain.disp)


@dataclasses.dataclass
class NativeResult:
    """A registration of two scans in their own spaces: ``moved`` the moving scan on the fixed
    scan's grid (its own intensities); ``fixed`` and ``moving`` their placements (:class:`Placement`);
    ``grid`` the :class:`~vxm_keras.registration.Result` on the model grid; ``forward`` the
    :class:`Chain` fixed voxels -> moving voxels, ``inverse`` moving -> fixed (diffeomorphic
    models, when asked for); ``notes`` what was assumed or looks wrong, one line each, for the user."""
    moved: np.ndarray
    fixed: Placement
    moving: Placement
    grid: object
    forward: Chain
    inverse: Chain = None
    notes: list = dataclasses.field(default_factory=list)

    @property
    def warp(self):
        """``(*grid_shape, ndim)`` the displacement on the model grid (voxel units, ``ij``)."""
        return self.grid.warp


def register_scans(engine, moving, fixed, reference, grid_affine, affine='auto', dof=12, inverse=False,
                   check=True, alignment='ncc', **options):
    """Register two scans of any grid through the model grid.

    Args:
        engine: a :class:`~vxm_keras.registration.Registration`.
        moving: :class:`Scan` (3-D, any shape, orientation and voxel size).
        fixed: :class:`Scan`, or its :class:`Placement` from :func:`place_fixed` (batches).
        reference: ``(vol, affine)`` on the model grid that a fixed scan off the grid is aligned
            to (the default atlas).
        grid_affine: 4x4 voxel-to-world matrix of the model grid.
        affine: ``'auto'`` (align the scans that are not on the model grid), ``'on'`` (always
            align the moving scan to the fixed scan) or ``'off'`` (both must be on the grid).
        dof: degrees of freedom of the alignment (6, 9, 12).
        inverse: also build the inverse chain (diffeomorphic models).
        check: refuse poor alignments (:func:`align_to`).
        alignment: the metric of the affine alignments (:func:`align_to`'s ``loss``).
        options: passed to :meth:`Registration.register` (``optimize``, ``cascade``, ...).

    Returns:
        :class:`NativeResult`.
    """
    shape = engine.inshape
    fixed_p = (fixed if isinstance(fixed, Placement)
               else place_fixed(fixed, shape, grid_affine, reference, affine, dof, check, alignment))
    fixed = fixed_p.scan
    if affine == 'auto' and on_grid(moving, shape, grid_affine) and fixed_p.alignment is None:
        moving_p = _as_is(moving, grid_affine)
    elif affine == 'off':
        if not on_grid(moving, shape, grid_affine):
            raise ValueError(f'{moving.name}: {off_grid_reason(moving, shape, grid_affine)} (--affine off)')
        moving_p = _as_is(moving, grid_affine)
    else:
        # aligned to the fixed scan as placed on the grid: the grid's world is the reference's world,
        # and the grid is smaller than most raw scans (256^3 with a wide background)
        moving_p = align_to(moving, fixed_p.vol, grid_affine, shape, grid_affine, dof=dof,
                            check=check, reference_name=f'the fixed scan {fixed.name}', loss=alignment)
    grid = engine.register(moving_p.vol, fixed_p.vol, inverse=inverse, **options)
    forward = Chain(fixed_p, moving_p, grid_affine, grid.warp)
    backward = Chain(moving_p, fixed_p, grid_affine, grid.inverse) if inverse else None
    # both scans on the grid: the network's own result, as without this module
    moved = grid.moved if forward.identity else forward.resample()
    return NativeResult(moved=moved, fixed=fixed_p, moving=moving_p, grid=grid, forward=forward, inverse=backward)


def place_fixed(fixed, grid_shape, grid_affine, reference, affine='auto', dof=12, check=True, loss='ncc'):
    """The fixed scan's :class:`Placement`: as it is when on the grid, else aligned to
    ``reference`` (``(vol, affine)`` on the grid) by ``loss`` (:func:`align_to`); ``affine='off'``
    refuses a scan off the grid."""
    if on_grid(fixed, grid_shape, grid_affine):
        return _as_is(fixed, grid_affine)
    if affine == 'off':
        raise ValueError(f'{fixed.name}: {off_grid_reason(fixed, grid_shape, grid_affine)} (--affine off)')
    return align_to(fixed, reference[0], reference[1], grid_shape, grid_affine, dof=dof,
                    check=check, reference_name='the atlas', loss=loss)

"""Scans in their own space (vxm_keras.native): the chain target voxel -> model grid -> source
voxel against a numpy/scipy brute force, ITK files read back, applied by ANTs, and register.py on
raw scans of another orientation and voxel size."""

import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import REPO, SHARED_DATA, script, smooth_field, user_error
from vxm_keras import native

GRID_SHAPE = (14, 16, 18)
GRID_AFFINE = np.array([[-1.0, 0, 0, 7], [0, 0, 1, -8], [0, -1, 0, 9], [0, 0, 0, 1]])


def _rigid(deg, shift):
    a = np.radians(deg)
    mat = np.eye(4)
    mat[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    mat[:3, 3] = shift
    return mat


@pytest.fixture
def chain(rng):
    """A target scan (1.5 mm, RAS) and a source scan (0.8 mm, axes swapped), each placed on the grid
    by a world map of its own, and a smooth displacement on the grid."""
    target_affine = np.diag([1.5, 1.5, 1.5, 1.0])
    target_affine[:3, 3] = [-9, -10, -8]
    source_affine = np.array([[0, 0.8, 0, -12], [0.8, 0, 0, -12], [0, 0, -0.8, 13], [0, 0, 0, 1]])
    target = native.Placement(native.Scan(rng.random((10, 12, 11)).astype(np.float32), target_affine), None,
                              _rigid(5, [1, -2, 0.5]))
    source = native.Placement(native.Scan(ndimage.gaussian_filter(rng.random((30, 30, 32)), 1.5).astype(np.float32),
                                          source_affine), None, _rigid(-4, [0.5, 1, -1]))
    disp = smooth_field(rng, GRID_SHAPE, 1.5)
    return native.Chain(target, source, GRID_AFFINE, disp)


def _brute_force_source_voxels(chain):
    """Each target voxel through the chain with numpy, the displacement sampled by scipy."""
    shape = chain.target.scan.vol.shape
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing='ij'), -1).reshape(-1, 3).astype(float)
    hom = np.c_[idx, np.ones(len(idx))]
    world = hom @ chain.target.scan.affine.T
    grid_vox = world @ np.linalg.inv(chain.target.world_map).T @ np.linalg.inv(chain.grid_affine).T
    u = np.stack([ndimage.map_coordinates(chain.disp[..., d], grid_vox[:, :3].T, order=1, mode='nearest')
                  for d in range(3)], -1)
    moved_vox = np.c_[grid_vox[:, :3] + u, np.ones(len(idx))]
    source_world = moved_vox @ chain.grid_affine.T @ chain.source.world_map.T
    source_vox = source_world @ np.linalg.inv(chain.source.scan.affine).T
    return world[:, :3], source_world[:, :3], source_vox[:, :3], shape


def test_chain_resamples_as_the_brute_force(chain):
    _, _, source_vox, shape = _brute_force_source_voxels(chain)
    expected = ndimage.map_coordinates(chain.source.scan.vol, source_vox.T, order=1, mode='constant').reshape(shape)
    inside = np.all((source_vox >= 0) & (source_vox <= np.array(chain.source.scan.vol.shape) - 1), axis=1)
    assert inside.mean() > 0.9  # the case tests the interior, not the fill value
    np.testing.assert_allclose(chain.resample(), expected, atol=2e-5)


def test_chain_displacement_in_mm(chain):
    world, source_world, _, shape = _brute_force_source_voxels(chain)
    ras = (source_world - world).reshape(*shape, 3)
    np.testing.assert_allclose(chain.displacement_mm(lps=False), ras, atol=1e-3)
    lps = chain.displacement_mm(lps=True)
    np.testing.assert_allclose(lps[..., :2], -ras[..., :2], atol=1e-3)
    np.testing.assert_allclose(lps[..., 2], ras[..., 2], atol=1e-3)


def test_chain_labels_keep_their_values(chain, rng):
    labels = rng.choice([0, 3, 17, 1000], size=chain.source.scan.vol.shape).astype(np.int32)
    _, _, source_vox, shape = _brute_force_source_voxels(chain)
    # nearest neighbour: rounding half up, as spatial.interpn does; zero outside the source
    expected = ndimage.map_coordinates(labels, np.floor(source_vox.T + 0.5), order=0, mode='constant')
    out = chain.resample(labels, order=0)
    assert out.dtype == np.int32
    # float32 against float64 may round a point that lies on a half voxel, or on the border, either way
    frac = np.abs(source_vox - np.floor(source_vox) - 0.5)
    border = np.any((source_vox < 0) | (source_vox > np.array(labels.shape) - 1), axis=1)
    ambiguous = np.any(frac < 1e-4, axis=1) | border
    differ = out.ravel() != expected
    assert not np.any(differ & ~ambiguous)
    assert (~ambiguous).mean() > 0.85


def test_results_on_the_moving_grid(chain):
    """--moved-grid moving: the moving scan's own grid, carried into the fixed space by the affine part,
    sampled through the same chain (brute force again)."""
    moved_grid = native.on_moving_grid(chain)
    source = chain.source.scan
    assert moved_grid.target.scan.vol.shape == source.vol.shape
    np.testing.assert_allclose(moved_grid.target.scan.affine, np.linalg.inv(chain.world_affine) @ source.affine)
    _, _, source_vox, shape = _brute_force_source_voxels(moved_grid)
    expected = ndimage.map_coordinates(source.vol, source_vox.T, order=1, mode='constant').reshape(shape)
    np.testing.assert_allclose(moved_grid.resample(), expected, atol=2e-5)
    # without the deformation the moving scan comes back onto its own voxels
    unmoved = native.on_moving_grid(native.Chain(chain.target, chain.source, GRID_AFFINE))
    np.testing.assert_allclose(unmoved.resample()[1:-1, 1:-1, 1:-1], source.vol[1:-1, 1:-1, 1:-1], atol=1e-4)


def test_affine_part_alone(chain):
    part = native.Chain(chain.target, chain.source, chain.grid_affine)
    world_map = part.world_affine
    np.testing.assert_allclose(world_map, chain.source.world_map @ np.linalg.inv(chain.target.world_map))
    vox = np.linalg.inv(chain.source.scan.affine) @ world_map @ chain.target.scan.affine
    expected = ndimage.affine_transform(chain.source.scan.vol, vox[:3, :3], vox[:3, 3],
                                        output_shape=chain.target.scan.vol.shape, order=1)
    np.testing.assert_allclose(part.resample(), expected, atol=2e-5)


def test_itk_files_round_trip(tmp_path, chain):
    field = chain.displacement_mm()
    native.save_itk_warp(tmp_path / 'w.nii.gz', field, chain.target.scan.affine)
    img = nib.load(tmp_path / 'w.nii.gz')
    assert img.shape == (*chain.target.scan.vol.shape, 1, 3)
    assert img.header.get_intent()[0] == 'vector'
    back, aff = native.load_itk_warp(tmp_path / 'w.nii.gz')
    np.testing.assert_array_equal(back, field)
    np.testing.assert_allclose(aff, chain.target.scan.affine)
    native.save_itk_affine(tmp_path / 'a.txt', chain.world_affine)
    np.testing.assert_allclose(native.load_itk_affine(tmp_path / 'a.txt'), chain.world_affine, atol=1e-12)
    with pytest.raises(FileExistsError):
        native.save_itk_affine(tmp_path / 'a.txt', chain.world_affine)


def test_every_warp_format_writes_what_its_entry_says(tmp_path, chain):
    """The --warp-format table: each writer's file holds the chain's field in its convention, and
    paths and scans a format cannot take are named before any work."""
    from vxm_keras import transforms
    from vxm_keras.io import load_volfile
    assert set(transforms.WARP_FORMATS) == {'voxel', 'itk', 'ras'}
    expected = {'voxel': chain.disp, 'itk': chain.displacement_mm(lps=True), 'ras': chain.displacement_mm(lps=False)}
    for name, fmt in transforms.WARP_FORMATS.items():
        path = tmp_path / f'{name}.nii.gz'
        transforms.write_warp(name, path, chain, chain.disp)
        written, affine = (transforms.load_itk_warp(path) if name == 'itk'
                           else load_volfile(path, ret_affine=True))
        np.testing.assert_allclose(written, expected[name], atol=1e-5)
        np.testing.assert_allclose(affine, chain.target.scan.affine if fmt.world else chain.grid_affine)
        assert transforms.warp_format_problem(name, path) is None
        if fmt.extensions:
            assert transforms.warp_format_problem(name, 'w.npz') == \
                f'--warp-format {name} writes {"NIfTI or MGZ" if ".mgz" in fmt.extensions else "NIfTI"} ' \
                f'({", ".join(fmt.extensions)})'
        assert (transforms.warp_format_problem(name, 'w.npz', ndim=2) is None) == (not fmt.world)
    # the LPS and RAS fields differ in the sign of the first two axes, and are not all zero
    assert np.abs(expected['ras'][..., :2]).max() > 0.5


def test_itk_affine_with_a_centre(tmp_path):
    """ITK's T(x) = A (x - c) + c + t, as ANTs writes it, read into one matrix."""
    lin, t, c = _rigid(10, [0, 0, 0])[:3, :3], np.array([1.0, 2, 3]), np.array([5.0, -4, 2])
    (tmp_path / 'c.txt').write_text('#Insight Transform File V1.0\n#Transform 0\n'
                                    'Transform: AffineTransform_double_3_3\n'
                                    f'Parameters: {" ".join(map(str, [*lin.ravel(), *t]))}\n'
                                    f'FixedParameters: {" ".join(map(str, c))}\n')
    ras = native.load_itk_affine(tmp_path / 'c.txt')
    x_lps = np.array([3.0, 7, -2])
    y_lps = lin @ (x_lps - c) + c + t
    flip = np.array([-1, -1, 1.0])
    np.testing.assert_allclose((ras @ np.append(x_lps * flip, 1))[:3], y_lps * flip, atol=1e-12)


def test_ants_applies_our_itk_files_as_we_do(tmp_path, chain):
    ants = pytest.importorskip('ants', reason='antspyx (the peers extra) not installed')
    nib.save(nib.Nifti1Image(chain.target.scan.vol, chain.target.scan.affine), tmp_path / 'fixed.nii.gz')
    nib.save(nib.Nifti1Image(chain.source.scan.vol, chain.source.scan.affine), tmp_path / 'moving.nii.gz')
    fixed, moving = ants.image_read(str(tmp_path / 'fixed.nii.gz')), ants.image_read(str(tmp_path / 'moving.nii.gz'))
    native.save_itk_warp(tmp_path / 'w.nii.gz', chain.displacement_mm(), chain.target.scan.affine)
    native.save_itk_affine(tmp_path / 'a.txt', chain.world_affine)
    # ITK and vxm-keras treat points within a voxel of the source's border differently: compared inside
    _, _, source_vox, shape = _brute_force_source_voxels(chain)
    inside = np.all((source_vox > 1) & (source_vox < np.array(chain.source.scan.vol.shape) - 2), axis=1)
    inside = inside.reshape(shape)
    assert inside.mean() > 0.8
    by_ants = ants.apply_transforms(fixed, moving, [str(tmp_path / 'w.nii.gz')]).numpy()
    np.testing.assert_allclose(by_ants[inside], chain.resample()[inside], atol=1e-4)
    affine_part = native.Chain(chain.target, chain.source, GRID_AFFINE)
    by_ants = ants.apply_transforms(fixed, moving, [str(tmp_path / 'a.txt')]).numpy()
    np.testing.assert_allclose(by_ants[inside], affine_part.resample()[inside], atol=0.02)


# --- register.py on raw scans -----------------------------------------------------------------------

def _raw_copy(path, out, deg=6.0, shift=(5.0, -7.0, 4.0), voxel=1.5):
    """The scan of an ``.npz`` on the model grid, as a scanner might give it: RAS axes, ``voxel`` mm,
    rotated and shifted in the world, written as NIfTI. Returns the world map (grid world -> raw world)."""
    from vxm_keras.io import load_volfile
    vol, aff = load_volfile(path, ret_affine=True)
    world_map = _rigid(deg, shift)
    shape = tuple(int(np.ceil(s / voxel)) for s in (176, 208, 176))
    raw_affine = np.diag([voxel, voxel, voxel, 1.0])
    raw_affine[:3, 3] = [-88, -120, -80]
    # raw voxel -> raw world -> grid world -> grid voxel
    mat = np.linalg.inv(aff) @ np.linalg.inv(world_map) @ raw_affine
    raw = ndimage.affine_transform(vol, mat[:3, :3], mat[:3, 3], output_shape=shape, order=1)
    nib.save(nib.Nifti1Image((raw * 200).astype(np.float32), raw_affine), out)
    return world_map


def test_register_a_raw_scan_to_the_atlas(tmp_path):
    """The shipped example scan, rotated, shifted, at 1.5 mm in RAS order, goes through register.py in one
    command: the moved image on the atlas grid matches the atlas as well as the one from the scan on
    the grid does."""
    example = os.path.join(REPO, 'data', 'example_moving.npz')
    _raw_copy(example, tmp_path / 'raw.nii.gz')
    script('register.py', '--moving', tmp_path / 'raw.nii.gz', '--moved', tmp_path / 'moved.nii.gz',
           '--warp', tmp_path / 'warp.nii.gz', '--warp-format', 'itk', '--save-affine', tmp_path / 'affine.txt',
           '--optimize', 0)
    script('register.py', '--moving', example, '--moved', tmp_path / 'moved_grid.npz', '--optimize', 0)
    from vxm_keras.io import load_volfile
    atlas, atlas_affine = load_volfile(os.path.join(REPO, 'data', 'atlas.npz'), ret_affine=True)
    moved = nib.load(tmp_path / 'moved.nii.gz')
    assert moved.shape == atlas.shape
    np.testing.assert_allclose(moved.affine, atlas_affine)
    on_grid = load_volfile(tmp_path / 'moved_grid.npz')
    brain = atlas > 0.05

    def corr(vol):
        return np.corrcoef(vol[brain], atlas[brain])[0, 1]
    # measured: 0.70 from the raw copy (its own affine alignment included), 0.64 from the scan on the
    # grid, 0.50 before registration
    assert corr(moved.get_fdata()) > corr(on_grid) - 0.02
    assert corr(moved.get_fdata()) > corr(load_volfile(example)) + 0.1
    # the library call does what the command does: the nibabel image in, the atlas and model by default
    import vxm_keras
    result = vxm_keras.register(nib.load(tmp_path / 'raw.nii.gz'), optimize=0)
    np.testing.assert_allclose(result.moved, moved.get_fdata(), atol=1e-5)
    assert result.warp.shape == (*atlas.shape, 3) and result.moving.alignment is not None and not result.notes
    warp = nib.load(tmp_path / 'warp.nii.gz')
    assert warp.shape == (*atlas.shape, 1, 3) and warp.header.get_intent()[0] == 'vector'
    world_affine = native.load_itk_affine(tmp_path / 'affine.txt')
    # the same at the raw scan's own voxel size and extent, placed in the atlas's space by that affine
    script('register.py', '--moving', tmp_path / 'raw.nii.gz', '--moved', tmp_path / 'moved_raw_grid.nii.gz',
           '--moved-grid', 'moving', '--optimize', 0)
    raw, out = nib.load(tmp_path / 'raw.nii.gz'), nib.load(tmp_path / 'moved_raw_grid.nii.gz')
    assert out.shape == raw.shape
    np.testing.assert_allclose(out.affine, np.linalg.inv(world_affine) @ raw.affine, atol=1e-3)


def test_register_raw_moving_to_raw_fixed(tmp_path):
    """Both scans off the grid: the outputs are on the fixed scan's own grid, labels included."""
    example = os.path.join(REPO, 'data', 'example_moving.npz')
    atlas = os.path.join(REPO, 'data', 'atlas.npz')
    _raw_copy(example, tmp_path / 'moving.nii.gz', deg=-5, shift=(-4, 3, 6), voxel=1.25)
    fixed_map = _raw_copy(atlas, tmp_path / 'fixed.nii.gz', deg=4, shift=(3, 2, -5), voxel=1.5)
    from vxm_keras.io import load_volfile
    seg, grid_affine = load_volfile(atlas, key='seg'), load_volfile(atlas, ret_affine=True)[1]
    # the atlas labels on the raw fixed grid: what the moved labels should match
    fixed_img = nib.load(tmp_path / 'fixed.nii.gz')
    mat = np.linalg.inv(grid_affine) @ np.linalg.inv(fixed_map) @ fixed_img.affine
    fixed_seg = ndimage.affine_transform(seg, mat[:3, :3], mat[:3, 3], output_shape=fixed_img.shape, order=0)
    nib.save(nib.Nifti1Image(fixed_seg.astype(np.int32), fixed_img.affine), tmp_path / 'fixed_seg.nii.gz')
    proc = script('register.py', '--moving', tmp_path / 'moving.nii.gz', '--fixed', tmp_path / 'fixed.nii.gz',
                  '--moving-seg', tmp_path / 'fixed_seg.nii.gz', '--moved-seg', tmp_path / 'x.nii.gz',
                  '--moved', tmp_path / 'moved.nii.gz', '--optimize', 0, check=False)
    # a label map on another grid than its scan is refused before any work
    assert 'differs from the moving scan' in user_error(proc)
    script('register.py', '--moving', tmp_path / 'fixed.nii.gz', '--fixed', tmp_path / 'moving.nii.gz',
           '--moving-seg', tmp_path / 'fixed_seg.nii.gz', '--moved-seg', tmp_path / 'moved_seg.nii.gz',
           '--moved', tmp_path / 'moved.nii.gz', '--optimize', 0)
    moved_seg = nib.load(tmp_path / 'moved_seg.nii.gz')
    moving_img = nib.load(tmp_path / 'moving.nii.gz')
    assert moved_seg.shape == moving_img.shape
    np.testing.assert_allclose(moved_seg.affine, moving_img.affine)
    # the atlas's labels, carried onto the example scan's own grid, cover its brain
    brain = moving_img.get_fdata() > 0.1 * moving_img.get_fdata().max()
    labelled = np.asarray(moved_seg.dataobj) > 0
    assert 2 * (brain & labelled).sum() / (brain.sum() + labelled.sum()) > 0.85
    assert set(np.unique(np.asarray(moved_seg.dataobj))) <= {0, 1, 2, 3}


def test_a_head_with_its_skull_is_refused(tmp_path):
    head = os.path.join(SHARED_DATA, 'templates', 'colin27', 'ch2.nii.gz')
    if not os.path.isfile(head):
        pytest.skip(f'{head} not found (the shared templates)')
    proc = script('register.py', '--moving', head, '--moved', tmp_path / 'moved.nii.gz', '--optimize', 0,
                  check=False)
    line = user_error(proc)
    assert 'ch2.nii.gz' in line and 'skull' in line and '--allow-poor-alignment' in line
    assert not os.path.exists(tmp_path / 'moved.nii.gz')


def test_a_t2_scan_off_the_grid_is_aligned_to_a_t1_by_mutual_information():
    """The MNI152 T2 and T1 share one grid, so the right alignment of the T2 to the T1 is the
    identity; with the cross-contrast settings the pipeline aligns by mutual information and lands
    there (measured 0.24 mm mean, 0.42 mm max; NCC, the same-contrast default, is 4.0 mm off on
    average and 8.0 mm at worst on this pair)."""
    import vxm_keras
    from vxm_keras.settings import CROSS_CONTRAST
    folder = os.path.join(SHARED_DATA, 'multicontrast')
    t1, t2 = (os.path.join(folder, f'MNI152_{c}_1mm_brain.nii.gz') for c in ('T1', 'T2'))
    if not os.path.isfile(t2):
        pytest.skip(f'{t2} not found (the shared multicontrast scans)')
    result = vxm_keras.register(t2, t1, os.path.join(REPO, 'models', 'vm2_scan2scan.h5'), settings=CROSS_CONTRAST,
                                optimize=1, coarse=0, fine=0)
    image = nib.load(t1)
    brain = np.argwhere(np.asarray(image.dataobj) > 0)[::50]
    world = np.c_[brain, np.ones(len(brain))] @ image.affine.T
    # model-grid world -> each scan's world: the T2's map after the T1's inverse should be the identity
    moved = world @ (result.moving.world_map @ np.linalg.inv(result.fixed.world_map)).T
    error = np.linalg.norm((moved - world)[:, :3], axis=1)
    assert error.mean() < 1.0 and error.max() < 2.0, (error.mean(), error.max())
    assert result.moved.shape == image.shape


def test_inverse_chain_undoes_the_forward_chain(chain):
    """The chain built from the inverse displacement (as register.py builds it for --inverse-warp) maps
    the source scan's points back: forward then inverse is the identity, in millimetres."""
    u = chain.disp.astype(np.float64)
    # the inverse displacement by fixed-point iteration: v(y) = -u(y + v(y))
    v = -u.copy()
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in GRID_SHAPE], indexing='ij'), -1)
    for _ in range(40):
        pts = (grid + v).reshape(-1, 3).T
        v = -np.stack([ndimage.map_coordinates(u[..., d], pts, order=1, mode='nearest') for d in range(3)],
                      -1).reshape(u.shape)
    backward = native.Chain(chain.source, chain.target, GRID_AFFINE, v.astype(np.float32))
    # target world x -> source world y = x + d(x); then y -> y + d'(y) should give x back
    shape = chain.target.scan.vol.shape
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing='ij'), -1).reshape(-1, 3).astype(float)
    x = idx @ chain.target.scan.affine[:3, :3].T + chain.target.scan.affine[:3, 3]
    y = x + chain.displacement_mm(lps=False).reshape(-1, 3)
    y_vox = (y - chain.source.scan.affine[:3, 3]) @ np.linalg.inv(chain.source.scan.affine[:3, :3]).T
    back = backward.displacement_mm(lps=False)
    d_back = np.stack([ndimage.map_coordinates(back[..., d], y_vox.T, order=1, mode='nearest') for d in range(3)], -1)
    inside = np.all((y_vox > 1) & (y_vox < np.array(chain.source.scan.vol.shape) - 2), axis=1)
    error = np.linalg.norm(y + d_back - x, axis=1)[inside]
    assert inside.mean() > 0.8
    # the map's own displacement reaches about 2 mm (1.5 grid voxels plus the affine parts)
    assert np.linalg.norm(y - x, axis=1).max() > 2.0
    # measured 0.19 (95th percentile) and 0.22 mm: the fields are sampled twice, linearly, on 0.8-1.5 mm
    # grids; a chain built the wrong way round is off by the world maps' millimetres
    assert np.percentile(error, 95) < 0.3 and error.max() < 0.5, (np.percentile(error, 95), error.max())


def test_test_py_takes_freesurfer_folders_as_they_are(tmp_path):
    """test.py on FreeSurfer subject folders (prepared on the fly) scores as on the prepared .npz files."""
    import csv
    folder = os.path.join(SHARED_DATA, 'freesurfer')
    if not os.path.isdir(folder):
        pytest.skip(f'{folder} not found (the shared FreeSurfer subjects)')
    from vxm_keras.prepare import prepare_freesurfer_subject, write_prepared
    write_prepared(prepare_freesurfer_subject(os.path.join(folder, 'sub-08')), str(tmp_path / 'sub-08.npz'))
    (tmp_path / 'list.txt').write_text(f'{os.path.join(folder, "sub-07")}\nsub-08.npz\n')
    script('test.py', '--model', os.path.join(REPO, 'models', 'vm2_scan2scan.h5'), '--test-list',
           tmp_path / 'list.txt', '--atlas', 'none', '--out-dir', tmp_path / 'eval')
    rows = list(csv.DictReader(open(tmp_path / 'eval' / 'dice.csv')))
    by = {(r['pair'], r['method']): [] for r in rows}
    for r in rows:
        by[(r['pair'], r['method'])].append(float(r['dice']))
    assert set(by) == {('sub-07->sub-08', 'affine'), ('sub-07->sub-08', 'model'),
                       ('sub-08->sub-07', 'affine'), ('sub-08->sub-07', 'model')}
    # the affine rows are the Dice of the two prepared label maps; models/README: 0.648, network 0.725
    assert np.mean(by[('sub-07->sub-08', 'affine')]) == pytest.approx(0.648, abs=0.005)
    assert np.mean(by[('sub-07->sub-08', 'model')]) > 0.7


def test_registrar_registers_many_scans_as_the_engine_does(dataset):
    """Scans on the model's grid through the pipeline: the engine's own result with the settings'
    defaults, the fixed scan placed once, the refinement changed per call."""
    import vxm_keras
    from vxm_keras.io import load_volfile
    from vxm_keras.settings import DEFAULT
    registrar = vxm_keras.Registrar(str(dataset / 'run' / '0002.h5'), str(dataset / 'atlas.npz'))
    atlas = load_volfile(dataset / 'atlas.npz')
    first = registrar.register(str(dataset / 'train' / 's0.npz'))
    placed = registrar.fixed_placement
    second = registrar.register((load_volfile(dataset / 'train' / 's1.npz'), None), optimize=0)
    assert registrar.fixed_placement is placed and first.forward.identity and not first.notes
    engine = registrar.engine
    expected = engine.register(load_volfile(dataset / 'train' / 's0.npz'), atlas, **DEFAULT.as_kwargs())
    np.testing.assert_allclose(first.moved, expected.moved, atol=1e-5)
    np.testing.assert_allclose(first.warp, expected.warp, atol=1e-4)
    assert len(first.grid.losses) == DEFAULT.coarse + DEFAULT.optimize + DEFAULT.fine
    network = engine.register(load_volfile(dataset / 'train' / 's1.npz'), atlas)
    np.testing.assert_allclose(second.warp, network.warp, atol=1e-5)
    assert second.grid.losses == []
    with pytest.raises(ValueError, match='differs from the fixed scan'):
        registrar.register(np.random.default_rng(0).random((32, 32, 30)).astype(np.float32))
    with pytest.raises(ValueError, match='moving: every voxel is 0.25: a constant image'):
        registrar.register(np.full((32, 32, 32), 0.25, np.float32))
    with pytest.raises(ValueError, match='image_loss must be one of'):
        registrar.register(atlas, image_loss='nmi')

"""Training pair generators."""
import numpy as np
import pytest

from vxm_keras import generators
from vxm_keras.io import VolumeError, save_volfile


def test_scan_to_atlas_and_scan_to_scan(rng):
    vols = rng.random((5, 8, 8, 8)).astype(np.float32)
    atlas = rng.random((8, 8, 8)).astype(np.float32)
    (moving, fixed), (target, zeros) = next(generators.scan_to_atlas(vols, atlas, 3, flow_shape=(4, 4, 4), rng=rng))
    assert moving.shape == fixed.shape == (3, 8, 8, 8, 1) and zeros.shape == (3, 4, 4, 4, 3)
    assert np.all(fixed == atlas[None, ..., None]) and np.all(target == fixed) and not zeros.any()
    assert all(any(np.array_equal(m[..., 0], v) for v in vols) for m in moving)
    gen = generators.scan_to_scan(vols, 2, rng=rng)
    for _ in range(20):
        (moving, fixed), (target, _) = next(gen)
        assert np.array_equal(target, fixed)
        for m, f in zip(moving, fixed):
            assert not np.array_equal(m, f)
    with pytest.raises(ValueError, match='at least 2'):
        next(generators.scan_to_scan(vols[:1]))
    # one scan, augmented on each side by the training pipeline: paired with itself
    (moving, fixed), _ = next(generators.scan_to_scan(vols[:1], 2, rng=rng, self_pairs=True))
    assert np.array_equal(moving, fixed) and np.array_equal(moving[1, ..., 0], vols[0])


def test_list_and_load(tmp_path, rng):
    for i in range(3):
        save_volfile(tmp_path / f's{i}.npz', rng.random((6, 6, 6)).astype(np.float32))
    files = generators.list_volumes(data_dir=str(tmp_path))
    assert [f.split('/')[-1] for f in files] == ['s0.npz', 's1.npz', 's2.npz']
    (tmp_path / 'list.txt').write_text('s2.npz\n# comment\ns0.npz\n')
    listed = generators.list_volumes(train_list=str(tmp_path / 'list.txt'))
    assert listed == [str(tmp_path / 's2.npz'), str(tmp_path / 's0.npz')]
    vols = generators.load_volumes(listed)
    assert vols.shape == (2, 6, 6, 6) and vols.dtype == np.float32
    save_volfile(tmp_path / 'odd.npz', np.zeros((6, 6, 5), np.float32))
    with pytest.raises(VolumeError, match=r'odd.npz: shape \(6, 6, 5\) differs'):
        generators.load_volumes(listed + [str(tmp_path / 'odd.npz')])


def test_dataset_yields_generator_batches(rng):
    vols = rng.random((4, 8, 8)).astype(np.float32)
    gen = generators.scan_to_scan(vols, 2, rng=np.random.default_rng(3))
    ref = generators.scan_to_scan(vols, 2, rng=np.random.default_rng(3))
    ds = generators.as_dataset(gen)
    for (m, f), (t, z) in ds.take(3):
        (rm, rf), (rt, rz) = next(ref)
        np.testing.assert_array_equal(m.numpy(), rm)
        np.testing.assert_array_equal(f.numpy(), rf)
        assert z.shape == (2, 8, 8, 2)


def test_sampler_resumed_draws_what_a_straight_run_draws():
    straight = generators.Sampler(seed=5).indices(10, 3)
    draws = [next(straight) for _ in range(12)]
    resumed = generators.Sampler(seed=5, start=7).indices(10, 3)
    for k in range(7, 12):
        np.testing.assert_array_equal(next(resumed), draws[k])
    # another worker of the same run draws its own batches; the draws cover the items
    other = generators.Sampler(seed=5, worker=1).indices(10, 3)
    assert any(not np.array_equal(next(other), d) for d in draws)
    assert set(np.concatenate(draws).tolist()) <= set(range(10)) and len(set(np.concatenate(draws).tolist())) > 5
    # the scan-to-scan generator through the sampler: same pairs when resumed
    vols = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 5, 5), np.float32)
    gen = generators.scan_to_scan(vols, 2, sampler=generators.Sampler(seed=1))
    firsts = [next(gen)[0][0][:, 0, 0, 0] for _ in range(4)]
    gen = generators.scan_to_scan(vols, 2, sampler=generators.Sampler(seed=1, start=3))
    np.testing.assert_array_equal(next(gen)[0][0][:, 0, 0, 0], firsts[3])

"""Volume IO round trips and bad-input errors."""
import gzip
import os

import numpy as np
import pytest

from vxm_keras.io import VolumeError, load_volfile, save_volfile

AFFINE = np.array([[-1.0, 0, 0, 90.5], [0, 0, 1.0, -126], [0, -1.0, 0, 72], [0, 0, 0, 1]])


@pytest.mark.parametrize('ext', ['.npz', '.npy', '.nii', '.nii.gz', '.mgz'])
@pytest.mark.parametrize('dtype', [np.float32, np.int32, np.uint8])
def test_round_trip(tmp_path, rng, ext, dtype):
    vol = (rng.random((9, 10, 11)) * 100).astype(dtype)
    path = tmp_path / ('v' + ext)
    save_volfile(path, vol, affine=AFFINE)
    out, affine = load_volfile(path, ret_affine=True)
    np.testing.assert_array_equal(out, vol)
    if ext == '.npy':
        assert affine is None
    else:
        np.testing.assert_allclose(affine, AFFINE, atol=1e-5)
    assert os.listdir(tmp_path) == [path.name], 'no temporary file left behind'


def test_npz_is_a_compressed_numpy_archive(tmp_path, rng):
    import zipfile
    smooth = np.cumsum(rng.random((20, 24, 28)), axis=0).astype(np.float32)
    labels = (smooth > smooth.mean()).astype(np.int32) * 17
    fortran = np.asfortranarray(smooth[:, ::2])
    path = tmp_path / 's.npz'
    save_volfile(path, smooth, affine=AFFINE, extra={'seg': labels, 'strided': fortran})
    with np.load(path) as plain:  # numpy's own reader
        assert sorted(plain.files) == ['affine', 'seg', 'strided', 'vol']
        np.testing.assert_array_equal(plain['vol'], smooth)
        np.testing.assert_array_equal(plain['seg'], labels)
        np.testing.assert_array_equal(plain['strided'], fortran)
        assert plain['vol'].dtype == np.float32 and plain['seg'].dtype == np.int32
    with zipfile.ZipFile(path) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}
        seg_info = archive.getinfo('seg.npy')
        assert seg_info.compress_size < seg_info.file_size / 10


def test_npz_keys(tmp_path, rng):
    vol, seg = rng.random((6, 7, 8)).astype(np.float32), rng.integers(0, 5, (6, 7, 8))
    path = tmp_path / 'subject.npz'
    save_volfile(path, vol, extra={'seg': seg})
    np.testing.assert_array_equal(load_volfile(path), vol)
    np.testing.assert_array_equal(load_volfile(path, key='seg'), seg)
    with pytest.raises(VolumeError, match=r"subject.npz: no key 'label' \(keys found: vol, seg\)"):
        load_volfile(path, key='label')
    # the original release's key
    old = tmp_path / 'old.npz'
    np.savez(old, vol_data=vol)
    np.testing.assert_array_equal(load_volfile(old), vol)
    ambiguous = tmp_path / 'amb.npz'
    np.savez(ambiguous, a=vol, b=vol)
    with pytest.raises(VolumeError, match='keys found: a, b'):
        load_volfile(ambiguous)


def test_existing_file_not_overwritten(tmp_path):
    path = tmp_path / 'v.nii.gz'
    save_volfile(path, np.zeros((4, 4, 4), np.float32))
    with pytest.raises(FileExistsError, match='v.nii.gz'):
        save_volfile(path, np.ones((4, 4, 4), np.float32))
    assert load_volfile(path).max() == 0
    save_volfile(path, np.ones((4, 4, 4), np.float32), overwrite=True)
    assert load_volfile(path).min() == 1


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.nii.gz'):
        load_volfile(tmp_path / 'nope.nii.gz')
    (tmp_path / 'x.txt').write_text('hello')
    with pytest.raises(VolumeError, match='x.txt: unknown volume format'):
        load_volfile(tmp_path / 'x.txt')
    (tmp_path / 'empty.npz').write_bytes(b'')
    with pytest.raises(VolumeError, match='empty.npz: file is empty'):
        load_volfile(tmp_path / 'empty.npz')
    # truncated files
    good = tmp_path / 'good.npz'
    save_volfile(good, np.random.rand(20, 20, 20))
    (tmp_path / 'trunc.npz').write_bytes(good.read_bytes()[:200])
    with pytest.raises(VolumeError, match='trunc.npz: cannot read'):
        load_volfile(tmp_path / 'trunc.npz')
    nii = tmp_path / 'good.nii.gz'
    save_volfile(nii, np.random.rand(20, 20, 20).astype(np.float32))
    (tmp_path / 'trunc.nii.gz').write_bytes(nii.read_bytes()[:300])
    with pytest.raises(VolumeError, match='trunc.nii.gz: cannot read'):
        load_volfile(tmp_path / 'trunc.nii.gz')
    (tmp_path / 'junk.mgz').write_bytes(gzip.compress(b'junk' * 10))
    with pytest.raises(VolumeError, match='junk.mgz'):
        load_volfile(tmp_path / 'junk.mgz')


def test_dimensionality_and_finite_checks(tmp_path):
    flat = tmp_path / 'slice.npy'
    np.save(flat, np.zeros((16, 16), np.float32))
    with pytest.raises(VolumeError, match=r'slice.npy: expected a 3-D volume, got an array of shape \(16, 16\)'):
        load_volfile(flat, ndim=3)
    assert load_volfile(flat, ndim=2).shape == (16, 16)
    nan = tmp_path / 'nan.npy'
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 2, 3] = np.nan
    np.save(nan, arr)
    with pytest.raises(VolumeError, match='nan.npy: contains NaN'):
        load_volfile(nan, check_finite=True)


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        save_volfile(tmp_path / 'no' / 'v.npz', np.zeros(3))


def _claiming_nifti(path, shape):
    """A ``.nii.gz`` whose header declares ``shape`` (uint8) but which holds 64 bytes of data."""
    import nibabel as nib
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    header['vox_offset'] = 352
    with gzip.open(path, 'wb') as f:
        f.write(header.binaryblock + b'\0' * 4 + bytes(64))


def test_a_header_declaring_a_huge_volume_is_refused_before_reading(tmp_path, monkeypatch):
    """A damaged header makes a tiny file claim gigabytes: refused from the header, with the
    file, the declared size and the reason, not a MemoryError after decompressing."""
    import vxm_keras.io as io
    huge = tmp_path / 'huge.nii.gz'
    _claiming_nifti(huge, (4096, 4096, 2048))  # 32 GiB of uint8
    assert os.path.getsize(huge) < 1000
    with pytest.raises(VolumeError, match=r'huge\.nii\.gz: its header declares a 4096x4096x2048 uint8 array '
                                          r'\(32 GiB\), beyond the 16 GiB'):
        load_volfile(huge)
    # within the absolute bound, but more than this machine's free memory can work on
    big = tmp_path / 'big.nii.gz'
    _claiming_nifti(big, (1024, 1024, 512))  # 0.5 GiB of uint8, 8 GiB to work on
    monkeypatch.setattr(io, 'available_memory', lambda: 2 * 2 ** 30)
    with pytest.raises(VolumeError, match=r'big\.nii\.gz: .* needs about 8 GiB, more than the 2 GiB of memory'):
        load_volfile(big)
    monkeypatch.setattr(io, 'available_memory', lambda: 64 * 2 ** 30)
    with pytest.raises(VolumeError, match=r'big\.nii\.gz: cannot read image'):  # then the truncated data
        load_volfile(big)


def test_available_memory_is_what_the_system_reports():
    from vxm_keras.io import available_memory
    if not os.path.exists('/proc/meminfo'):
        pytest.skip('no /proc/meminfo (not Linux)')
    with open('/proc/meminfo') as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemTotal:'))
    assert 0 < available_memory() <= total

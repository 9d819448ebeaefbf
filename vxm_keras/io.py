"""Reading and writing volumes: ``.npz``, ``.npy``, ``.nii``, ``.nii.gz``, ``.mgz``.

Arrays are returned as stored: ``(*spatial)`` for a single-channel volume or
``(*spatial, channels)``; a trailing singleton axis of a NIfTI/MGZ image is
dropped. Affines are 4x4 voxel-to-world (RAS, mm) matrices; ``.npz`` files
carry one under the key ``affine`` when :func:`save_volfile` was given one.

Every error names the file. :class:`VolumeError` (a :class:`~vxm_keras.errors.UserError`, so a
``ValueError``) covers unreadable files, unknown extensions, missing keys and wrong shapes.
"""

import contextlib
import os
import tempfile
import zipfile

import numpy as np

from .errors import UserError

__all__ = ['EXTENSIONS', 'DEFAULT_NPZ_KEYS', 'InputFileError', 'VolumeError', 'ModelFileError', 'TEMP_PATTERN',
           'atomic_path', 'atomic_paths', 'volume_extension', 'MAX_ARRAY_BYTES', 'WORKING_BYTES_PER_VOXEL',
           'available_memory', 'load_volfile', 'check_not_constant', 'save_volfile', 'load_idx']

EXTENSIONS = ('.npz', '.npy', '.nii', '.nii.gz', '.mgz')
# keys tried, in order, when an npz is read without an explicit key
DEFAULT_NPZ_KEYS = ('vol', 'vol_data')


class InputFileError(UserError):
    """An input file that cannot be used: the message names the file and the problem."""


class VolumeError(InputFileError):
    """A volume file that cannot be used: the message names the file and the problem."""


class ModelFileError(InputFileError):
    """A model file that cannot be loaded: the message names the file and the problem."""


# names of the temporary files of atomic_path: hidden, the writer's pid, the final name
TEMP_PATTERN = r'\.tmp\d+-.+'


@contextlib.contextmanager
def atomic_path(path, overwrite=True):
    """Yield a temporary path beside ``path`` (same folder, ending in ``path``'s name, so
    libraries that pick a format from the suffix still do); on success it is renamed to
    ``path``, on any error removed. Readers never see a partial file. Without
    ``overwrite`` the final step cannot replace a file another process wrote meanwhile.
    Errors name ``path``, never the temporary file.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f'{path}: exists (use overwrite to replace it)')
    if os.path.islink(path) and not os.path.exists(path):
        raise FileExistsError(f'{path}: a broken symbolic link (to {os.readlink(path)}); remove it or choose '
                              'another name')
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'{path}: folder {folder} does not exist')
    try:
        fd, tmp = tempfile.mkstemp(prefix=f'.tmp{os.getpid()}-', suffix='-' + os.path.basename(path), dir=folder)
    except OSError as err:  # e.g. /proc, a read-only mount: name the user's path, not the temporary one
        raise type(err)(err.errno, f'{path}: cannot create a file in {folder} ({err.strerror})') from None
    os.close(fd)
    os.unlink(tmp)  # writers (Keras, h5py, nibabel) create the file themselves
    try:
        yield tmp
        # give the result the usual umask-based mode, not mkstemp's 0600
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:  # a hard link fails if the name exists: no race with another writer
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f'{path}: exists (another process wrote it meanwhile)') from None
            except OSError:  # file systems without hard links
                if os.path.exists(path):
                    raise FileExistsError(f'{path}: exists (another process wrote it meanwhile)') from None
                os.replace(tmp, path)
    except OSError as err:
        if err.filename == tmp or tmp in str(err):
            raise type(err)(err.errno, f'{path}: {err.strerror or err}') from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_paths(paths, overwrite=True):
    """:func:`atomic_path` for a set of outputs written together: yields ``{path: temporary
    path}``; only when the block ends without error are all of them renamed into place, so a
    failure (disk full, Ctrl-C) leaves none of the set, not some. Errors name the user's paths."""
    paths = [os.fspath(p) for p in paths]
    with contextlib.ExitStack() as stack:
        tmps = {}
        for path in paths:
            tmps[path] = stack.enter_context(atomic_path(path, overwrite=overwrite))
        try:
            yield tmps
        except OSError as err:
            for path, tmp in tmps.items():
                if err.filename == tmp or tmp in str(err):
                    raise type(err)(err.errno, f'{path}: {err.strerror or err}') from None
            raise


def volume_extension(path: str | os.PathLike) -> str:
    """The recognised extension of ``path`` (``'.nii.gz'`` counts as one), or raise."""
    name = os.fspath(path).lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    raise VolumeError(f'{path}: unknown volume format (expected one of {", ".join(EXTENSIONS)})')


def _read_npz(path, key):
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            if key is None:
                found = [k for k in DEFAULT_NPZ_KEYS if k in keys]
                if found:
                    key = found[0]
                elif len(keys) == 1 and keys[0] in ('seg', 'affine'):
                    raise VolumeError(f'{path}: holds only {"a label map" if keys[0] == "seg" else "an affine"} '
                                      f"({keys[0]!r}), no image ('vol')")
                elif len(keys) == 1:
                    key = keys[0]
                else:
                    raise VolumeError(f'{path}: no volume key {" or ".join(DEFAULT_NPZ_KEYS)} '
                                      f'(keys found: {", ".join(keys) or "none"}); pass the key to use')
            elif key not in keys:
                raise VolumeError(f'{path}: no key {key!r} (keys found: {", ".join(keys) or "none"})')
            with npz.zip.open(key + '.npy') as member:
                _check_header(path, member)
            vol = npz[key]
            affine = npz['affine'] if 'affine' in keys and key != 'affine' else None
    except VolumeError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise VolumeError(f'{path}: cannot read as .npz ({_plain(err)})') from err
    return vol, affine


# arrays larger than this are refused before any memory is allocated
MAX_ARRAY_BYTES = 16 * 2 ** 30


def _plain(err):
    """numpy's error text without its advice to unpickle (never safe for a file from elsewhere)."""
    text = str(err)
    if 'allow_pickle' in text or 'pickle' in text:
        return 'not a numeric array (it holds Python objects or is not an array file)'
    return text


def _check_header(path, stream):
    """Read an ``.npy`` header from ``stream`` and refuse object arrays and arrays whose
    claimed size is beyond :data:`MAX_ARRAY_BYTES`, before numpy allocates anything."""
    try:
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(stream, max_header_size=100000)
    except (ValueError, OSError, EOFError) as err:
        raise VolumeError(f'{path}: not a numpy array file ({_plain(err)})') from None
    if dtype.hasobject:
        raise VolumeError(f'{path}: holds Python objects, not a numeric array')
    _check_size(path, shape, dtype)


# registering a volume holds several float32 copies of it (read, resampled, warped, gradients)
WORKING_BYTES_PER_VOXEL = 16


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation (Linux ``MemAvailable``, else the physical
    memory), or ``None`` when the system does not say."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):
        return None


def _check_size(path, shape, dtype):
    """Refuse, from its header alone, an array beyond :data:`MAX_ARRAY_BYTES` or one this machine
    has no memory to register (a damaged or hostile header makes a tiny compressed file claim
    gigabytes, which reading would decompress until memory runs out)."""
    voxels = float(np.prod(shape, dtype=np.float64))
    nbytes = voxels * np.dtype(dtype).itemsize
    described = f'a {"x".join(map(str, shape))} {np.dtype(dtype)} array ({nbytes / 2 ** 30:.3g} GiB)'
    if nbytes > MAX_ARRAY_BYTES:
        raise VolumeError(f'{path}: its header declares {described}, beyond the '
                          f'{MAX_ARRAY_BYTES / 2 ** 30:.0f} GiB a volume may have; a damaged file?')
    need = voxels * max(WORKING_BYTES_PER_VOXEL, np.dtype(dtype).itemsize)
    free = available_memory()
    if free is not None and need > free:
        raise VolumeError(f'{path}: its header declares {described}; working on it needs about '
                          f'{need / 2 ** 30:.3g} GiB, more than the {free / 2 ** 30:.3g} GiB of memory free here '
                          '(a damaged header, or a volume to crop or downsample first)')


def _described(err):
    """An exception as one readable phrase (``MemoryError()`` has no text of its own)."""
    if isinstance(err, MemoryError):
        return 'out of memory'
    return f'{type(err).__name__}: {err}' if str(err) else type(err).__name__


def _read_image(path):
    import nibabel as nib  # imported here: only header formats need it
    try:
        img = nib.load(path)  # the header only
    except Exception as err:  # nibabel raises many types for corrupt files
        raise VolumeError(f'{path}: cannot read image ({_described(err)})') from err
    _check_size(path, img.shape, img.get_data_dtype())
    try:
        vol = np.asanyarray(img.dataobj)
    except Exception as err:
        raise VolumeError(f'{path}: cannot read image ({_described(err)})') from err
    if vol.ndim == 4 and vol.shape[-1] == 1:
        vol = vol[..., 0]
    return vol, np.asarray(img.affine, dtype=np.float64)


def check_not_constant(vol: np.ndarray, name: str) -> None:
    """Raise :class:`VolumeError` naming ``name`` if every voxel of the scan ``vol`` has one value:
    no image term (NCC, NGF, MIND, mutual information) can compare it, and the registration would
    return the network's guess alone."""
    vol = np.asarray(vol)
    if vol.size and np.issubdtype(vol.dtype, np.number) and vol.min() == vol.max():
        raise VolumeError(f'{name}: every voxel is {float(vol.flat[0]):g}: a constant image has nothing to register')


def load_volfile(path: str | os.PathLike, key: str | None = None, ret_affine: bool = False, ndim: int | None = None,
                 check_finite: bool = False):
    """Load a volume or label map.

    Args:
        path: ``.npz``, ``.npy``, ``.nii``, ``.nii.gz`` or ``.mgz`` file.
        key: for ``.npz``: the array to read (e.g. ``'seg'``); by default
            ``'vol'``, then ``'vol_data'``, then the only array in the file.
        ret_affine: also return the 4x4 affine (``None`` when the file has
            none, as for ``.npy``).
        ndim: if given, the number of spatial dimensions required (2 or 3);
            an extra trailing axis is accepted as channels.
        check_finite: refuse arrays containing NaN or Inf.

    Returns:
        ``array`` or ``(array, affine)``.

    Raises:
        FileNotFoundError: missing file.
        VolumeError: unreadable file, unknown extension, missing key, wrong
            dimensionality, empty or non-finite data.
    """
    path = os.fspath(path)
    ext = volume_extension(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: file not found')
    if os.path.getsize(path) == 0:
        raise VolumeError(f'{path}: file is empty')
    if ext == '.npz':
        vol, affine = _read_npz(path, key)
    elif ext == '.npy':
        try:
            with open(path, 'rb') as f:
                _check_header(path, f)
            vol, affine = np.load(path, allow_pickle=False), None
        except (OSError, ValueError, EOFError) as err:
            if isinstance(err, VolumeError):
                raise
            raise VolumeError(f'{path}: cannot read as .npy ({_plain(err)})') from err
    else:
        vol, affine = _read_image(path)
    vol = np.asarray(vol)
    if np.iscomplexobj(vol):
        raise VolumeError(f'{path}: complex values ({vol.dtype}); give a real image (e.g. the magnitude)')
    if vol.size == 0:
        raise VolumeError(f'{path}: volume is empty (shape {vol.shape})')
    if ndim is not None and vol.ndim not in (ndim, ndim + 1):
        raise VolumeError(f'{path}: expected a {ndim}-D volume, got an array of shape {vol.shape}')
    if check_finite and np.issubdtype(vol.dtype, np.floating) and not np.all(np.isfinite(vol)):
        raise VolumeError(f'{path}: contains NaN or Inf values')
    return (vol, affine) if ret_affine else vol


def _image_dtype(array, ext):
    """Cast to a dtype the header format can store."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32) if array.dtype != np.float32 else array
    if ext == '.mgz' and array.dtype not in (np.uint8, np.int16, np.int32) or array.dtype in (np.int64, np.uint64):
        # MGZ stores at most int32, and so do most NIfTI readers: refuse values that would wrap
        if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
            raise VolumeError(f'values in [{array.min()}, {array.max()}] do not fit the 32-bit integers of '
                              f'{ext} files; write an .npz or .npy instead')
        return array.astype(np.int32)
    return array


def _write_npz(path, arrays):
    """An ``.npz`` as ``np.savez_compressed`` writes it, but at zlib level 1 (nibabel's
    level for ``.nii.gz`` and ``.mgz``): on a brain scan 4x faster than numpy's level 6
    for a file about 10 % larger."""
    import zipfile
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, value in arrays.items():
            with archive.open(name + '.npy', 'w', force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def save_volfile(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray | None = None, overwrite: bool = False,
                 key: str = 'vol', extra: dict | None = None) -> None:
    """Write a volume atomically (temporary file in the same folder, then rename).

    Args:
        path: destination; the format follows the extension.
        array: ``(*spatial)`` or ``(*spatial, channels)`` numpy array.
        affine: 4x4 voxel-to-world matrix for NIfTI/MGZ (identity when
            ``None``); stored under ``'affine'`` in an ``.npz``.
        overwrite: replace an existing file; otherwise raise
            ``FileExistsError``.
        key: array name inside an ``.npz``.
        extra: dict of further arrays for an ``.npz`` (e.g. ``{'seg': seg}``).
    """
    path = os.fspath(path)
    ext = volume_extension(path)
    array = np.asarray(array)
    if ext not in ('.npz', '.npy'):
        try:
            array = _image_dtype(array, ext)
        except VolumeError as err:
            raise VolumeError(f'{path}: {err}') from None
    with atomic_path(path, overwrite=overwrite) as tmp:
        if ext == '.npz':
            arrays = {key: array, **(extra or {})}
            if affine is not None:
                arrays['affine'] = np.asarray(affine, dtype=np.float64)
            _write_npz(tmp, arrays)
        elif ext == '.npy':
            with open(tmp, 'wb') as f:
                np.save(f, array)
        else:
            import nibabel as nib
            aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
            img = (nib.MGHImage if ext == '.mgz' else nib.Nifti1Image)(array, aff)
            nib.save(img, tmp)


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (MNIST / Fashion-MNIST format, optionally gzip-compressed).

    Returns a numpy array: ``(n, rows, cols)`` uint8 images or ``(n,)`` labels.
    """
    import gzip
    import struct
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: file not found')
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack('>HBB', data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError('not an unsigned-byte IDX file')
        shape = struct.unpack('>' + 'I' * ndim, data[4:4 + 4 * ndim])
        array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return array.reshape(shape)
    except (OSError, ValueError, EOFError, struct.error) as err:
        raise VolumeError(f'{path}: cannot read as IDX ({err})') from err

"""Output paths, checked before any work: nothing a user has is lost.

Every command checks all its outputs before it reads a scan or loads a model: two outputs are
never one file, an output never replaces an input (not even with ``--overwrite``), an existing
file is replaced only with ``--overwrite``, and a folder where no file can be made is named at
once. The writing itself is atomic (:func:`vxm_keras.io.atomic_path`). Problems raise
:class:`~vxm_keras.errors.UserError` naming the path.
"""

import os

from .errors import fail

__all__ = ['same_path', 'check_outputs', 'check_output']


def same_path(a, b):
    """Whether two paths name the same file: real paths compared (symlinks resolved), and
    for existing files their device and inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs, inputs=(), overwrite=False):
    """Check every output of a command before anything is written.

    Args:
        outputs: ``{path: what}`` or a list of paths (``None`` entries are skipped).
        inputs: ``{path: flag}`` of the command's input files (``None`` skipped).
        overwrite: ``--overwrite`` was given.

    Fails (one line, exit 2) when two outputs are one file, an output is one of the inputs
    (``--overwrite`` replaces old outputs, never inputs), an output exists without
    ``overwrite``, or its folder is missing or read-only.
    """
    outputs = [o for o in outputs if o]
    inputs = {p: flag for p, flag in dict(inputs).items() if p} if not isinstance(inputs, dict) \
        else {p: flag for p, flag in inputs.items() if p}
    for i, out in enumerate(outputs):
        for other in outputs[:i]:
            if same_path(out, other):
                fail(f'{out}: given for two outputs; each output needs its own path')
        for path, flag in inputs.items():
            if same_path(out, path):
                fail(f'{out}: is also an input ({flag}); outputs never replace inputs, even with --overwrite')
        check_output(out, overwrite)


def _can_create_in(folder):
    """Whether a file can be created in ``folder``: tried, not asked of ``os.access``, which says
    yes to root for folders no file can be made in (``/proc``, read-only mounts)."""
    import tempfile
    try:
        fd, probe = tempfile.mkstemp(prefix='.vxm-probe-', dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def check_output(path, overwrite):
    """Refuse an output path that exists (without ``overwrite``) or whose folder is missing or read-only."""
    if path is None:
        return
    if not os.path.basename(os.fspath(path)):
        fail(f'{path!r}: not a file name')
    if os.path.islink(path) and not os.path.exists(path):
        fail(f'{path}: a broken symbolic link (to {os.readlink(path)}); remove it or choose another name')
    if os.path.isdir(path):
        fail(f'{path}: is a folder, not a file name')
    if os.path.exists(path) and not overwrite:
        fail(f'{path}: exists (use --overwrite to replace it)')
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        fail(f'{path}: folder {folder} does not exist')
    if not _can_create_in(folder):
        fail(f'{path}: folder {folder} is not writable')

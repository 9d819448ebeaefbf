"""XLA's persistent compilation cache for the commands, so a one-scan ``register.py`` does not
compile the same kernels in every process.

The refinement's elementwise parts run as XLA-compiled functions (:mod:`vxm_keras.fusion`); in a
fresh process each one is compiled at each resolution before it runs, about 4 s of a single
registration (``bench/CPU.md``). TensorFlow can keep the compiled executables on disk
(``TF_XLA_FLAGS=--tf_xla_persistent_cache_directory=DIR``) and load them in the next process.
Three things make that unsafe as TensorFlow does it, and :func:`enable` handles each:

* its key is the computation, not the machine: an executable compiled for AVX-512 loads on an
  AVX2-only CPU of a cluster sharing a home directory, with a warning and then a crash. The
  directory is therefore named by the TensorFlow version, the CPU's model and instruction sets,
  and ``XLA_FLAGS``.
* an unreadable entry (a truncated file after a crash) or a failed write (disk full) fails the
  registration itself. Entries that are not complete protocol buffers are removed before
  TensorFlow starts, and the cache is not used below :data:`MIN_FREE_BYTES` of free space or
  where the directory cannot be written.
* loading an entry logs two error lines that mean nothing to a user (a text-format parse attempt
  and the tuning hints ``prefer-no-scatter``/``prefer-no-gather``), so unless ``--verbose`` the
  command's TensorFlow log level is raised to hide errors; real failures still raise.

``VXM_XLA_CACHE``: ``off`` (or ``0``) to disable, a folder to use instead of the default
``$XDG_CACHE_HOME/vxm_keras/xla`` (``~/.cache/vxm_keras/xla``). A ``TF_XLA_FLAGS`` that names its
own ``--tf_xla_persistent_cache_directory`` is left as it is.
"""

import hashlib
import os
import platform
import shutil
import time

__all__ = ['VARIABLE', 'MIN_FREE_BYTES', 'MAX_BYTES', 'machine_tag', 'cache_root', 'tidy', 'enable']

VARIABLE = 'VXM_XLA_CACHE'
_TF_FLAG = '--tf_xla_persistent_cache_directory'
# a registration's entries take about 40 MB; below this much free space a failed write would fail it
MIN_FREE_BYTES = 1 << 30
# one machine's folder is trimmed (oldest entries first) past this size
MAX_BYTES = 1 << 30
# TensorFlow writes an entry to NAME.tmp... and renames it; one left this long belongs to a dead process
_STALE_TMP_SECONDS = 3600
# entries written before this file's time were parsed by an earlier tidy: parsing them all at every
# start cost up to 1.5 s with a full folder
_CHECKED = '.checked'
# entries written this long before a tidy are checked again by the next one (writers it did not see)
_CHECK_OVERLAP_SECONDS = 60


def _cpu_description():
    """The CPU's model name and instruction-set flags as text (Linux: /proc/cpuinfo)."""
    try:
        with open('/proc/cpuinfo') as f:
            text = f.read()
    except OSError:
        return f'{platform.machine()} {platform.processor()}'
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(':')
        key = key.strip()
        if key in ('model name', 'flags', 'Features', 'CPU implementer', 'CPU part') and key not in fields:
            fields[key] = ' '.join(sorted(value.split())) if key in ('flags', 'Features') else value.strip()
    return f'{platform.machine()} ' + ' | '.join(f'{k}={v}' for k, v in sorted(fields.items()))


def _tensorflow_version():
    from importlib import metadata
    for name in ('tensorflow', 'tensorflow-cpu', 'tensorflow-intel', 'tensorflow-macos'):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return 'unknown'


def machine_tag(cpu=None, tf_version=None, xla_flags=None):
    """The cache folder's name: ``tf-VERSION-HASH``, the hash over the CPU's model and instruction
    sets and ``XLA_FLAGS`` (arguments default to this machine's), so executables are only ever
    loaded by the kind of CPU and the TensorFlow they were compiled for."""
    cpu = _cpu_description() if cpu is None else cpu
    tf_version = _tensorflow_version() if tf_version is None else tf_version
    xla_flags = os.environ.get('XLA_FLAGS', '') if xla_flags is None else xla_flags
    digest = hashlib.sha256(f'{cpu}\n{xla_flags}'.encode()).hexdigest()[:16]
    return f'tf-{tf_version}-{digest}'


def cache_root():
    """The folder holding each machine's cache folder, or ``None`` when ``VXM_XLA_CACHE`` is off."""
    value = os.environ.get(VARIABLE, '').strip()
    if value.lower() in ('off', '0', 'false', 'no'):
        return None
    if value:
        return os.path.abspath(os.path.expanduser(value))
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'vxm_keras', 'xla')


def _complete(path):
    """Whether ``path`` parses as a protocol buffer (a truncated one does not)."""
    from google.protobuf import empty_pb2
    from google.protobuf.message import DecodeError
    try:
        with open(path, 'rb') as f:
            data = f.read()
        if not data:
            return False
        empty_pb2.Empty().ParseFromString(data)  # unknown fields are kept: a wire-format check
        return True
    except (OSError, DecodeError):
        return False


def tidy(folder, max_bytes=MAX_BYTES, now=None):
    """Remove from ``folder`` what would make TensorFlow fail or the folder grow without bound:
    entries that are not complete protocol buffers, temporary files of dead writers, and the
    oldest entries past ``max_bytes`` (by when they were written: reading them here changes
    their access times). Entries older than the previous tidy are not parsed again. Returns the
    names removed."""
    now = time.time() if now is None else now
    marker = os.path.join(folder, _CHECKED)
    try:
        checked_until = os.stat(marker).st_mtime
    except OSError:
        checked_until = float('-inf')
    removed, kept = [], []
    for entry in os.scandir(folder):
        if not entry.is_file():
            continue
        stat = entry.stat()
        if entry.name.endswith('.pb'):
            if stat.st_mtime < checked_until or _complete(entry.path):
                kept.append((stat.st_mtime, stat.st_size, entry))
                continue
        elif '.pb.tmp' not in entry.name and not entry.name.endswith('.tmp'):
            continue
        elif now - stat.st_mtime < _STALE_TMP_SECONDS:
            continue
        try:
            os.remove(entry.path)
            removed.append(entry.name)
        except OSError:
            pass
    total = sum(size for _, size, _ in kept)
    for _, size, entry in sorted(kept, key=lambda k: k[0]):
        if total <= max_bytes:
            break
        try:
            os.remove(entry.path)
            removed.append(entry.name)
            total -= size
        except OSError:
            pass
    try:
        with open(marker, 'a'):
            pass
        os.utime(marker, (now - _CHECK_OVERLAP_SECONDS,) * 2)
    except OSError:
        pass
    return removed


def _writable(folder):
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f'.probe-{os.getpid()}')
        with open(probe, 'wb') as f:
            f.write(b'0')
        os.remove(probe)
        return True
    except OSError:
        return False


def enable(verbose=False):
    """Point TensorFlow's XLA at this machine's cache folder; call before TensorFlow is imported
    (its flags are read once). Returns the folder, or ``None`` when the cache is off, TensorFlow
    is already loaded, ``TF_XLA_FLAGS`` names a cache of its own, or the folder cannot be used
    (not writable, less than :data:`MIN_FREE_BYTES` free)."""
    import sys
    flags = os.environ.get('TF_XLA_FLAGS', '')
    root = cache_root()
    if root is None or 'tensorflow' in sys.modules or _TF_FLAG in flags:
        return None
    folder = os.path.join(root, machine_tag())
    # TensorFlow splits TF_XLA_FLAGS at white space
    if any(c.isspace() or c in '\'"' for c in folder) or not _writable(folder):
        return None
    try:
        if shutil.disk_usage(folder).free < MIN_FREE_BYTES:
            return None
    except OSError:
        return None
    tidy(folder)
    os.environ['TF_XLA_FLAGS'] = f'{flags} {_TF_FLAG}={folder}'.strip()
    if not verbose:
        # loading an entry logs two meaningless error lines (module docstring)
        os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    return folder

"""The package's Keras objects (layers, losses, models) registered as soon as Keras and TensorFlow
are loaded, without loading them.

``import vxm_keras`` stays cheap: the commands answer ``--help`` and argument errors, and
``python -m vxm_keras.prepare`` does its work, without starting TensorFlow. Saved models still
load by name after ``import vxm_keras``, whichever of the two is imported first::

    import vxm_keras
    import keras
    model = keras.models.load_model('models/vm2_atlas.h5', compile=False)

If Keras and TensorFlow are loaded already, :func:`register_when_loaded` registers at once;
otherwise it watches their import and the package's own modules' (a finder on ``sys.meta_path``
that only wraps their loaders) and registers when none of them is executing any more: not in the
middle of a module of the package that imports TensorFlow at its top, whose names the
registered modules may need (``vxm_keras.fusion`` for ``vxm_keras.spatial``).
"""

import importlib
import importlib.abc
import sys
import threading

__all__ = ['register_keras_objects', 'register_when_loaded']

_WATCHED = ('keras', 'tensorflow')
# importing these registers the package's Keras objects (keras.saving.register_keras_serializable)
_MODULES = ('vxm_keras.layers', 'vxm_keras.losses', 'vxm_keras.networks')
_LOCK = threading.RLock()
_STATE = {'registered': False, 'executing': set()}


def register_keras_objects():
    """Import the modules that register the package's Keras objects (this loads TensorFlow)."""
    with _LOCK:
        if _STATE['registered']:
            return
        _STATE['registered'] = True  # first: the imports below pass through the watch again
        try:
            for name in _MODULES:
                importlib.import_module(name)
        except BaseException:
            _STATE['registered'] = False
            raise
        sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _Watch)]


def _loaded():
    return all(name in sys.modules for name in _WATCHED) and not _STATE['executing']


def register_when_loaded():
    """Register now if Keras and TensorFlow are loaded, else as soon as they are."""
    if _loaded():
        register_keras_objects()
        return
    with _LOCK:
        if not any(isinstance(finder, _Watch) for finder in sys.meta_path):
            sys.meta_path.insert(0, _Watch())


class _Watch(importlib.abc.MetaPathFinder):
    """Finds ``keras``, ``tensorflow`` and the package's modules with the other finders and wraps
    their loaders so that the end of their execution is seen; every other import passes by."""

    def find_spec(self, name, path=None, target=None):
        if _STATE['registered'] or not (name in _WATCHED or name.startswith('vxm_keras.')):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
                    spec.loader = _Loader(name, spec.loader)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    """A module's own loader, and a look at the end of its execution; once it has run, the module
    gets its own loader back."""

    def __init__(self, name, loader):
        self._name = name
        self._loader = loader

    def __getattr__(self, attr):  # resource readers, is_package, get_code, ...
        return getattr(self._loader, attr)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        _STATE['executing'].add(self._name)
        try:
            self._loader.exec_module(module)
        finally:
            _STATE['executing'].discard(self._name)
            module.__loader__ = self._loader
            if getattr(module, '__spec__', None) is not None:
                module.__spec__.loader = self._loader
        if _loaded():
            register_keras_objects()

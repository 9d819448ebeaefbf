"""Where the shipped files (default atlas, example scan, trained models) are found.

In a source checkout or an editable install (``pip install -e .``) they sit beside the
package, in ``data/`` and ``models/`` of the repository. A plain install
(``pip install .``) copies them to ``<prefix>/share/vxm-keras/`` (``setup.py``'s
``data_files``), where ``<prefix>`` is the environment's ``sys.prefix`` (or the user
base for ``pip install --user``). ``VXM_KERAS_HOME`` in the environment names another
folder holding ``data/`` and ``models/``.
"""

import os
import site
import sys

__all__ = ['REPO', 'SHARE', 'shipped_file', 'DEFAULT_ATLAS', 'DEFAULT_MODEL']

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARE = os.path.join('share', 'vxm-keras')


def _roots():
    if os.environ.get('VXM_KERAS_HOME'):
        yield os.environ['VXM_KERAS_HOME']
    yield REPO
    for prefix in (sys.prefix, getattr(site, 'USER_BASE', None) or '', sys.base_prefix):
        if prefix:
            yield os.path.join(prefix, SHARE)


def shipped_file(relative):
    """Path of a shipped file such as ``'data/atlas.npz'`` or ``'models/vm2_atlas.h5'``: the
    first place of the lookup above that has it, else the repository path (so an error
    message names where it was expected)."""
    for root in _roots():
        path = os.path.join(root, relative)
        if os.path.isfile(path):
            return path
    return os.path.join(REPO, relative)


DEFAULT_ATLAS = shipped_file(os.path.join('data', 'atlas.npz'))
DEFAULT_MODEL = shipped_file(os.path.join('models', 'vm2_atlas.h5'))

"""TensorFlow's CPU kernels: oneDNN wherever TensorFlow has it, chosen before TensorFlow loads.

TensorFlow's x86 packages hold two sets of CPU kernels, oneDNN's and Eigen's, and turn oneDNN on
by default only on CPUs with AVX512-VNNI, AVX512-BF16 or AMX; on other x86 CPUs (AMD Zen 2/3,
older Intel, and Windows packages) the Eigen kernels run, and some of the operations this
package uses are several times slower there (``bench/CPU.md``; a VM-2 training step at 32^3 on
an AVX2-only AMD EPYC: 2.2 s with Eigen, 0.2 s with oneDNN). Importing :mod:`vxm_keras` therefore
asks for oneDNN on x86 unless ``TF_ENABLE_ONEDNN_OPTS`` is set either way; it takes effect only
if TensorFlow is not loaded yet (import vxm_keras first, or set the variable yourself).
"""

import os
import platform
import sys

ONEDNN_VARIABLE = 'TF_ENABLE_ONEDNN_OPTS'
_X86 = ('x86_64', 'amd64', 'i386', 'i686', 'x86')


def prefer_onednn():
    """Set ``TF_ENABLE_ONEDNN_OPTS=1`` on x86 machines unless it is set already or TensorFlow
    is already imported (the variable is read once, at import). Returns the value in force
    afterwards (``None``: TensorFlow decides)."""
    if ONEDNN_VARIABLE not in os.environ and 'tensorflow' not in sys.modules \
            and platform.machine().lower() in _X86:
        os.environ[ONEDNN_VARIABLE] = '1'
    return os.environ.get(ONEDNN_VARIABLE)

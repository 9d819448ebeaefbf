#!/usr/bin/env python
"""Learn a (conditional) template with registration: see ``python train_template.py --help``."""
import os
import sys

# answer --help and argument errors without loading TensorFlow (see vxm_keras/__init__.py)
os.environ.setdefault('VXM_KERAS_DEFER_IMPORTS', '1')

from vxm_keras.commands.train_template import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())

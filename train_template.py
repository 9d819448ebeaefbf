#!/usr/bin/env python
"""Learn a (conditional) template with registration: see ``python train_template.py --help``."""
import sys

from vxm_keras.commands.train_template import main

if __name__ == '__main__':
    sys.exit(main())

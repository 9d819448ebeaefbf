#!/usr/bin/env python
"""Register a moving scan to a fixed scan: see ``python register.py --help``."""
import sys

from vxm_keras.commands.register import main

if __name__ == '__main__':
    sys.exit(main())

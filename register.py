#!/usr/bin/env python
"""Register a moving scan to a fixed scan: see ``python register.py --help``."""
import os
import sys

from vxm_keras.commands.register import main

if __name__ == '__main__':
    code = main()
    # every output is written, renamed into place and closed by now: skip the interpreter's teardown,
    # where TensorFlow's took 1.4 s of a 13 s registration of the example scan
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

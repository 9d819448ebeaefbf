#!/usr/bin/env python
"""Evaluate a trained model with Dice: see ``python test.py --help``."""
import sys

from vxm_keras.commands.evaluate import main

if __name__ == '__main__':
    sys.exit(main())

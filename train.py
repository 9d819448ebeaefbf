#!/usr/bin/env python
"""Train a VoxelMorph network: see ``python train.py --help``."""
import sys

from vxm_keras.commands.train import main

if __name__ == '__main__':
    sys.exit(main())

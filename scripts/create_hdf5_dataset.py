#!/usr/bin/env python
"""Create an HDF5 dataset from subject folders (see ``--help`` and docs/data.md)."""

from dwi_mtl.cli.create_hdf5_dataset import main

raise SystemExit(main())

#!/usr/bin/env python
"""Thin wrapper of :mod:`dwi_mtl.cli.track_from_model` (also installed as a console script)."""

from dwi_mtl.cli.track_from_model import main

if __name__ == "__main__":
    raise SystemExit(main())

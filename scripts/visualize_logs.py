#!/usr/bin/env python
"""Thin wrapper of :mod:`dwi_mtl.cli.visualize_logs` (also installed as a console script)."""

from dwi_mtl.cli.visualize_logs import main

if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Thin wrapper of :mod:`dwi_mtl.cli.upload_logs_to_comet` (also installed as a console script)."""

from dwi_mtl.cli.upload_logs_to_comet import main

if __name__ == "__main__":
    raise SystemExit(main())

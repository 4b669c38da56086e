"""Sphinx configuration of the dwi_mtl documentation (Markdown pages through MyST).

Build: ``make -C docs html`` or ``python -m sphinx -W -b html docs docs/_build/html``
(needs ``pip install sphinx myst-parser``). The API pages under ``api/`` are regenerated from
the package's modules, and the table of ``benchmarks.md`` from the scripts of
``benchmarks/``, at every build (``gen_api.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))
sys.path.insert(0, str(DOCS.parent))
# Importing modules for autodoc must never reach Comet's servers or open a window.
os.environ.setdefault("COMET_AUTO_LOG_ENV_DETAILS", "false")
os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from gen_api import write_api_pages, write_benchmarks_page  # noqa: E402

import dwi_mtl  # noqa: E402

write_api_pages(DOCS / "api")
if (DOCS.parent / "benchmarks").is_dir():  # a source checkout: list the benchmark scripts
    write_benchmarks_page(DOCS, DOCS.parent / "benchmarks")

project = "dwi_mtl"
author = "dwi_mtl developers"
copyright = "dwi_mtl developers"  # noqa: A001 (Sphinx's name)
release = dwi_mtl.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "README.md"]

# Markdown: `#anchor` links to headings, ::: fences, definition lists.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

# Google-style docstrings.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields: no duplicates of dataclass members
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"undoc-members": False}
# Heavy optional imports stay real (torch, h5py, ...): the docs import the package as users do.

html_theme = "alabaster"
html_title = f"dwi_mtl {release}"

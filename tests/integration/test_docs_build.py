"""The Sphinx site builds with warnings as errors, and its reference pages cover the package."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
#: Public modules the API reference must document (issue 12).
PUBLIC = ("dwi_mtl.data", "dwi_mtl.training", "dwi_mtl.logging", "dwi_mtl.mtl.architectures",
          "dwi_mtl.mtl.weighting", "dwi_mtl.models", "dwi_mtl.demo", "dwi_mtl.state",
          "dwi_mtl.errors")


def _require_sphinx() -> None:
    for module in ("sphinx", "myst_parser"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install sphinx myst-parser)")


def test_docs_build_with_warnings_as_errors(tmp_path):
    """Build a copy of docs/ (generated pages are regenerated there, the tree is untouched)."""
    _require_sphinx()
    source = tmp_path / "docs"
    shutil.copytree(DOCS, source, ignore=shutil.ignore_patterns("_build"))
    shutil.copytree(REPO / "benchmarks", tmp_path / "benchmarks",
                    ignore=shutil.ignore_patterns("_work", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", "-E",
         str(source), str(tmp_path / "html")],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )
    assert result.returncode == 0, f"Sphinx warnings or errors:\n{result.stderr[-6000:]}"
    html = tmp_path / "html"
    for page in ("index", "getting_started", "troubleshooting", "benchmarks", "api/index"):
        assert (html / f"{page}.html").is_file(), page
    reference = (html / "api" / "training.html").read_text(encoding="utf-8")
    assert "AbstractTrainer" in reference and "compute_batch_loss" in reference


def test_api_pages_cover_the_public_modules(tmp_path):
    sys.path.insert(0, str(DOCS))
    try:
        from gen_api import public_modules, write_api_pages
    finally:
        sys.path.remove(str(DOCS))
    written = write_api_pages(tmp_path)
    text = "\n".join(path.read_text(encoding="utf-8") for path in written)
    for module in PUBLIC:
        assert f".. automodule:: {module}\n" in text, module
        for submodule in public_modules(module):
            assert f".. automodule:: {submodule}\n" in text, submodule
    index = (tmp_path / "index.md").read_text(encoding="utf-8")
    assert all(f"\n{path.stem}\n" in index for path in written if path.stem != "index")


def test_every_page_is_reachable_and_benchmarks_listed():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    assert "\n*\n" in index  # the catch-all entry: a new page joins the table of contents
    sys.path.insert(0, str(DOCS))
    try:
        from gen_api import render_benchmarks_page
    finally:
        sys.path.remove(str(DOCS))
    page = render_benchmarks_page(REPO / "benchmarks")
    for script in sorted((REPO / "benchmarks").glob("*.py")):
        if not script.name.startswith("_"):
            assert f"| `{script.name}` | " in page, script.name
    assert "(no docstring)" not in page, "a benchmark script has no docstring"

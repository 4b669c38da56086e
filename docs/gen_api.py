"""Write the generated pages of the docs: the API reference and the list of benchmarks.

``docs/api/*.md`` come from the modules of the dwi_mtl package; the table of
``docs/benchmarks.md`` from the docstrings of ``benchmarks/*.py``.

Run by ``docs/conf.py`` at every build (and runnable by hand: ``python docs/gen_api.py``), so a
module added to a public subpackage appears in the reference without editing any page. Each
page documents one subpackage: its docstring, then every public submodule with its members
(``autodoc``, Google-style docstrings through ``napoleon``). Members are documented in the
module that defines them only, so the lazy re-exports of the package ``__init__`` files do
not produce duplicate descriptions.
"""

from __future__ import annotations

import ast
import pkgutil
from importlib import import_module
from pathlib import Path

#: (page name, package or module, one-line description), in the order of the index.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("data", "dwi_mtl.data", "HDF5 creation, MultiSubjectDataset, streamline operations."),
    ("training", "dwi_mtl.training",
     "Batch sampler and loader, trainers, checkpoints, policies, train_model."),
    ("logging", "dwi_mtl.logging", ".npy histories, Comet.ml, TensorBoard, progress, plots."),
    ("mtl", "dwi_mtl.mtl", "Multi-task learning: tasks and trainer."),
    ("mtl_architectures", "dwi_mtl.mtl.architectures",
     "LibMTL architectures: HPS, Cross_stitch, MMoE, MTAN, CGC, PLE, DSelect_k."),
    ("mtl_weighting", "dwi_mtl.mtl.weighting", "Loss-weighting and gradient-combination methods."),
    ("models", "dwi_mtl.models", "Reference models for tractography."),
    ("demo", "dwi_mtl.demo", "The embedded demo datasets built from dipy's data."),
    ("cli", "dwi_mtl.cli", "Command-line tools (the console scripts)."),
    ("core", "dwi_mtl.state", "State protocol and seeds."),
    ("errors", "dwi_mtl.errors", "Exception types."),
)

#: Subpackages documented on pages of their own (not repeated under their parent).
_OWN_PAGES = {"dwi_mtl.mtl.architectures", "dwi_mtl.mtl.weighting"}


def public_modules(package: str) -> list[str]:
    """Return ``package``'s public, non-package submodules (sorted; ``_x`` and ``__main__`` out).

    Subpackages with a page of their own are left out of their parent's list.
    """
    module = import_module(package)
    paths = getattr(module, "__path__", None)
    if paths is None:
        return []
    names = []
    for info in pkgutil.iter_modules(paths, f"{package}."):
        leaf = info.name.rsplit(".", 1)[1]
        if leaf.startswith("_") or info.name in _OWN_PAGES:
            continue
        if info.ispkg:
            names.extend(public_modules(info.name))
        else:
            names.append(info.name)
    return sorted(names)


def all_sections() -> list[tuple[str, str, str]]:
    """:data:`SECTIONS` plus a page for any other public top-level module or subpackage.

    A subpackage added to ``dwi_mtl`` (``dwi_mtl.tracking``, ...) gets a page without
    editing this file, described by the first line of its docstring.
    """
    import dwi_mtl

    sections = [s for s in SECTIONS if _importable(s[1])]
    known = {target for _, target, _ in sections}
    for info in pkgutil.iter_modules(dwi_mtl.__path__, "dwi_mtl."):
        leaf = info.name.rsplit(".", 1)[1]
        if leaf.startswith("_") or info.name in known or not _importable(info.name):
            continue
        doc = (import_module(info.name).__doc__ or "").strip().split("\n")[0]
        sections.append((leaf, info.name, doc or f"The {info.name} module."))
    return sections


def render_page(title: str, target: str, description: str) -> str:
    """Return the Markdown (MyST) text of one API page."""
    lines = [f"# {title}", "", description, "", "```{eval-rst}", f".. automodule:: {target}"]
    submodules = public_modules(target)
    if not submodules:
        lines += ["   :members:", "   :show-inheritance:"]
    for name in submodules:
        lines += ["", f".. automodule:: {name}", "   :members:", "   :show-inheritance:"]
    lines += ["```", ""]
    return "\n".join(lines)


def render_index() -> str:
    """Return the API index page with its toctree."""
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings of the package (`docs/gen_api.py` writes these pages",
        "at every build). Importing a subpackage is cheap: names are re-exported lazily, so",
        "`from dwi_mtl.training import AbstractTrainer` and",
        "`from dwi_mtl.training.trainer import AbstractTrainer` are the same class.",
        "",
        "```{toctree}",
        ":maxdepth: 1",
        "",
    ]
    lines += [page for page, _, _ in all_sections()]
    lines += ["```", ""]
    return "\n".join(lines)


def _importable(target: str) -> bool:
    try:
        import_module(target)
    except ImportError:
        return False
    return True


def write_api_pages(api_dir: Path) -> list[Path]:
    """Write ``index.md`` and one page per section into ``api_dir``; return changed files.

    A file is rewritten only when its content changes (keeps Sphinx's incremental builds and
    ``git status`` quiet).
    """
    api_dir.mkdir(parents=True, exist_ok=True)
    pages = {"index": render_index()}
    for page, target, description in all_sections():
        pages[page] = render_page(target, target, description)
    changed = []
    for page, text in pages.items():
        path = api_dir / f"{page}.md"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


BENCHMARKS_INTRO = """# Benchmarks

Speed is promised by benchmarks, not by tests: each script in `benchmarks/` measures its
figures **side by side in one run** (dwi_mtl against the raw library call or the hand-written
loop it replaces, on the same machine under the same load) and prints ratios, so the numbers
stay meaningful on a shared or busy machine. The measured figures, with the machine they were
taken on, are collected in `benchmarks/RESULTS.md` in the repository.

The standard workload of the data benchmarks is the file written by
{func}`dwi_mtl.data.synthetic.write_synthetic_hdf5` with its defaults: 3 subjects, 64x64x48
volumes with 28 features, 5,000 streamlines of 60-160 mm at 1 mm steps per subject.

Every script has `--help` and a `--quick` mode (a short smoke run). Run them on an otherwise
idle machine for the figures you report, and give the machine (CPU, GPU, disk) with them.
What each figure means for your choices: [MTL weighting](mtl_weighting.md) (the cost of each
method), [Trainers](trainers.md) (the trainer's overhead and checkpoints),
[Batch sampler and loader](batch_pipeline.md) (lazy reading, workers),
[Distributed training](distributed.md) (collectives) and [Reliability](reliability.md)
(fault injection).

## Measured figures

```{include} ../benchmarks/RESULTS.md
:heading-offset: 1
```

## The scripts

This table is generated from the scripts' docstrings at every build.

| script | what it measures |
| --- | --- |
"""


def render_benchmarks_page(benchmarks_dir: Path) -> str:
    """Return ``benchmarks.md``: the introduction and one row per ``benchmarks/*.py`` script."""
    rows = []
    for script in sorted(benchmarks_dir.glob("*.py")):
        if script.name.startswith("_"):
            continue
        docstring = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
        summary = " ".join(docstring.split("\n\n")[0].split()) or "(no docstring)"
        rows.append(f"| `{script.name}` | {summary.replace('|', '/')} |")
    return BENCHMARKS_INTRO + "\n".join(rows) + "\n"


def write_benchmarks_page(docs_dir: Path, benchmarks_dir: Path) -> bool:
    """Write ``docs_dir/benchmarks.md`` when its content changes; return whether it did."""
    path = docs_dir / "benchmarks.md"
    text = render_benchmarks_page(benchmarks_dir)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    for written in write_api_pages(here / "api"):
        print(f"wrote {written}")
    if write_benchmarks_page(here, here.parent / "benchmarks"):
        print(f"wrote {here / 'benchmarks.md'}")

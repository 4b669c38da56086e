"""Every ```python block of the documentation (docs/**/*.md) runs, so the examples never rot.

Shell blocks are not run (they install packages or train for minutes), but every documented
``dwi_mtl_*`` command line is parsed by its script's own argument parser, so a renamed or
removed option fails here too.

Conventions (also described in docs/index.md, "Writing documentation"):

- The blocks of one page run in order in one namespace (a fresh module registered in
  ``sys.modules``, so classes defined on a page can be rebuilt from their import path), in a
  fresh temporary working folder, offline: any internet connection attempt fails the page.
- ``<!-- not-runnable: reason -->`` on the line(s) just before a fence skips that block; the
  reason is required (a marker without one fails the test).
- ``<!-- test-setup`` ... ``-->``: Python code hidden from readers (an HTML comment), run at
  its place in the page, for context a fragment needs (a small dataset file, a ``batch``).
"""

from __future__ import annotations

import importlib
import re
import shlex
import socket
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs"
PYTHON_LANGUAGES = {"python", "py", "python3", "pycon"}
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_NOT_RUNNABLE = re.compile(r"^\s*<!--\s*not-runnable\b\s*:?(?P<reason>.*?)-->\s*$")
_SETUP_START = re.compile(r"^\s*<!--\s*test-setup\s*$")


@dataclass
class CodeBlock:
    """One piece of code of a page: a fenced block or a hidden setup."""

    path: Path
    line: int  # 1-based line of the first code line
    code: str
    language: str
    skip_reason: str | None = None
    hidden_setup: bool = False

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(DOCS.parent)}:{self.line}"


def extract_blocks(path: Path, text: str | None = None) -> list[CodeBlock]:
    """Return the fenced code blocks and hidden setups of a Markdown page, in order.

    Raises:
        ValueError: an unclosed fence or setup comment, or a not-runnable marker without a
            reason, naming the file and line.
    """
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[CodeBlock] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if _SETUP_START.match(line):
            end = _find(lines, index + 1, lambda s: s.strip() == "-->", path, "test-setup")
            code = "\n".join(lines[index + 1:end])
            blocks.append(CodeBlock(path, index + 2, code, "python", hidden_setup=True))
            index = end + 1
            continue
        match = _FENCE.match(line)
        if match:
            fence = match.group("fence")
            end = _find(lines, index + 1,
                        lambda s, f=fence: s.strip().startswith(f) and not s.strip(f[0]).strip(),
                        path, "code fence")
            info = match.group("info").strip()
            language = _language(info)
            code = "\n".join(_dedent(lines[index + 1:end], len(match.group("indent"))))
            blocks.append(CodeBlock(path, index + 2, code, language,
                                    skip_reason=_skip_reason(lines, index, path)))
            index = end + 1
            continue
        index += 1
    return blocks


def _find(lines: list[str], start: int, predicate, path: Path, what: str) -> int:  # type: ignore[no-untyped-def]
    for index in range(start, len(lines)):
        if predicate(lines[index]):
            return index
    raise ValueError(f"{path}:{start}: unclosed {what}")


def _language(info: str) -> str:
    """``python``, ``{code-block} python`` ... -> ``python``; anything else lower-cased."""
    words = info.replace("{code-block}", "").replace("{code}", "").split()
    return words[0].lower() if words else ""


def _dedent(lines: list[str], indent: int) -> list[str]:
    return [line[indent:] if line[:indent].isspace() else line for line in lines]


def _skip_reason(lines: list[str], fence_index: int, path: Path) -> str | None:
    index = fence_index - 1
    while index >= 0 and not lines[index].strip():
        index -= 1
    if index < 0:
        return None
    match = _NOT_RUNNABLE.match(lines[index])
    if match is None:
        return None
    reason = match.group("reason").strip()
    if not reason:
        raise ValueError(f"{path}:{index + 1}: '<!-- not-runnable: reason -->' needs a reason")
    return reason


def python_blocks(path: Path) -> list[CodeBlock]:
    """The blocks of ``path`` the test runs or skips: Python fences and hidden setups."""
    blocks = [b for b in extract_blocks(path) if b.language in PYTHON_LANGUAGES or b.hidden_setup]
    for block in blocks:
        if block.language == "pycon":  # interactive session: run the input lines only
            block.code = "\n".join(_pycon_input(line) for line in block.code.splitlines())
    return blocks


def _pycon_input(line: str) -> str:
    """``>>> x`` / ``... x`` -> ``x``; output lines become blank (line numbers kept)."""
    for prompt in (">>> ", "... "):
        if line.startswith(prompt):
            return line[len(prompt):]
    return ""


def documentation_pages() -> list[Path]:
    """Markdown pages of the docs that hold at least one Python block."""
    pages = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
    return [p for p in pages if python_blocks(p)]


# -- the tests -------------------------------------------------------------------------------
@pytest.fixture
def offline(monkeypatch):
    """Refuse every connection except local (Unix sockets, loopback)."""
    original = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in (
                "127.0.0.1", "::1", "localhost"):
            raise OSError(f"documentation code tried to reach the network: {address}")
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """One demo-data cache for every page (the demo builders write there, never in $HOME)."""
    return tmp_path_factory.mktemp("dwi_mtl_cache")


@pytest.mark.parametrize("page", documentation_pages(), ids=lambda p: p.name)
def test_page_code_blocks_run(page, tmp_path, monkeypatch, offline, demo_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DWI_MTL_CACHE", str(demo_cache))
    module_name = f"docs_page_{re.sub(r'[^0-9a-zA-Z_]', '_', page.stem)}"
    module = types.ModuleType(module_name)
    module.__file__ = str(tmp_path / f"{module_name}.py")
    monkeypatch.setitem(sys.modules, module_name, module)
    ran = 0
    for block in python_blocks(page):
        if block.skip_reason is not None:
            continue
        # Pad with blank lines so tracebacks point at the line in the .md file.
        code = compile("\n" * (block.line - 1) + block.code, str(page), "exec")
        try:
            exec(code, module.__dict__)
        except Exception as exc:
            raise AssertionError(f"{block.where}: documentation code failed: {exc!r}") from exc
        ran += not block.hidden_setup
    _close_figures()
    if ran == 0:
        pytest.skip(f"{page.name}: every Python block is marked not-runnable")


def _close_figures() -> None:
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, console script, arguments)`` of every ``dwi_mtl_*`` line of a shell block."""
    commands = []
    for page in sorted(DOCS.rglob("*.md")):
        if "_build" in page.parts:
            continue
        for block in extract_blocks(page):
            if block.language not in SHELL_LANGUAGES:
                continue
            text = block.code.replace("\\\n", " ")  # line continuations
            for offset, line in enumerate(text.splitlines()):
                words = shlex.split(line.lstrip("$ "), comments=True)
                for command in _split_commands(words):
                    if command and command[0].startswith("dwi_mtl_"):
                        where = f"{block.where.rsplit(':', 1)[0]}:{block.line + offset}"
                        commands.append((where, command[0], command[1:]))
    return commands


def _split_commands(words: list[str]) -> list[list[str]]:
    """Split ``a && b ; c | d`` into its commands; ``[--option value]`` usage brackets dropped."""
    commands: list[list[str]] = [[]]
    for word in words:
        word = word.removeprefix("[").removesuffix("]") if word not in ("[", "]") else ""
        if not word:
            continue
        if word in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(word)
    return commands


def _script_module(console_script: str) -> str:
    """The module of a console script: from setup.py, else ``dwi_mtl.cli.<name>``."""
    setup = (DOCS.parent / "setup.py").read_text(encoding="utf-8")
    match = re.search(rf'"{console_script}=([\w.]+):main"', setup)
    return match.group(1) if match else f"dwi_mtl.cli.{console_script.removeprefix('dwi_mtl_')}"


@pytest.mark.parametrize("where, script, arguments", documented_commands(),
                         ids=lambda value: value if isinstance(value, str) else None)
def test_documented_command_lines_parse(where, script, arguments):
    try:
        module = importlib.import_module(_script_module(script))
    except ImportError as exc:
        raise AssertionError(f"{where}: no command {script!r}: {exc}") from exc
    try:
        module.build_parser().parse_args(arguments)
    except SystemExit as exc:
        raise AssertionError(f"{where}: `{script} {shlex.join(arguments)}` does not parse "
                             f"(exit {exc.code})") from exc


def test_every_not_runnable_block_gives_a_reason():
    """Parsing every page raises on a marker without a reason; list the skipped blocks."""
    skipped = [b for p in sorted(DOCS.rglob("*.md")) if "_build" not in p.parts
               for b in extract_blocks(p) if b.skip_reason]
    for block in skipped:
        assert len(block.skip_reason) >= 5, f"{block.where}: reason too short"


def test_conventions_are_parsed(tmp_path):
    page = tmp_path / "page.md"
    text = "\n".join([
        "# Title", "", "```python", "x = 1", "```", "",
        "<!-- not-runnable: needs a GPU -->", "", "```python", "y = cuda()", "```",
        "<!-- test-setup", "z = 3", "-->", "", "~~~~{code-block} python", "    w = 4", "~~~~",
        "```bash", "ls", "```",
    ])
    blocks = extract_blocks(page, text)
    assert [(b.language, b.code, b.skip_reason, b.hidden_setup) for b in blocks] == [
        ("python", "x = 1", None, False),
        ("python", "y = cuda()", "needs a GPU", False),
        ("python", "z = 3", None, True),
        ("python", "    w = 4", None, False),
        ("bash", "ls", None, False),
    ]
    assert [b.line for b in blocks] == [4, 10, 13, 17, 20]
    with pytest.raises(ValueError, match="needs a reason"):
        extract_blocks(page, "<!-- not-runnable -->\n```python\nx\n```")
    with pytest.raises(ValueError, match="unclosed code fence"):
        extract_blocks(page, "```python\nx = 1\n")


def test_command_lines_are_split():
    words = shlex.split("dwi_mtl_demo --quick && dwi_mtl_x a [--opt 3] # comment", comments=True)
    assert _split_commands(words) == [["dwi_mtl_demo", "--quick"], ["dwi_mtl_x", "a", "--opt", "3"]]
    assert _script_module("dwi_mtl_demo") == "dwi_mtl.cli.demo"
    assert [_pycon_input(x) for x in (">>> a = 1", "...     b", "1", ">>>")] == ["a = 1", "    b",
                                                                            "", ""]
    assert _script_module("dwi_mtl_resume_training_from_checkpoint") == \
        "dwi_mtl.cli.resume_training"

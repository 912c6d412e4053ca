"""The code checks, run with the suite so that CI runs them: ruff, mypy and the import contracts (import-linter),
all configured in pyproject.toml; and every `noqa` or `type: ignore` names what it silences and says why."""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import tokenize
import tomllib
from collections.abc import Iterator

import pytest
from harness import ROOT

# Folders that hold no code of ours (virtual environments, caches, build output, run data).
SKIPPED_FOLDERS = {"build", "dist", "node_modules", "renderq-data", "renderq-demo", "__pycache__"}

# A silencer names its codes, then says why (a noqa as "noqa: E402, F401 - why", a type ignore as
# "type: ignore[arg-type]  # why"); the reason may also stand in a comment line of its own just above.
# Each row: the silencer, its codes, the reason after them.
SILENCERS = (
    (re.compile(r"#\s*noqa\b", re.IGNORECASE), re.compile(r":\s*[A-Z]+[0-9]+(\s*,\s*[A-Z]+[0-9]+)*"),
     re.compile(r"\s+-\s+\S")),
    (re.compile(r"#\s*type:\s*ignore\b"), re.compile(r"\[[a-z-]+(\s*,\s*[a-z-]+)*\]"), re.compile(r"\s+#\s*\S")),
)


def run_tool(*command: str, timeout: float = 120) -> None:
    """Run one of the checks from the repository's root; fail with its whole output when it finds anything."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}", pytrace=False)


def test_ruff_finds_nothing() -> None:
    run_tool(sys.executable, "-m", "ruff", "check", "--no-fix", ".")


def test_mypy_finds_nothing() -> None:
    # Its cache (.mypy_cache, ignored by git) makes a run after the first take a second or two.
    run_tool(sys.executable, "-m", "mypy")


def test_the_import_contracts_hold() -> None:
    # What the lint-imports command runs, started from this Python wherever its scripts folder is.
    run_tool(sys.executable, "-c", "from importlinter.cli import lint_imports_command as run; run()")


def python_files() -> Iterator[str]:
    """Every .py file of the repository, as a path relative to its root."""
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = sorted(name for name in subfolders
                               if not name.startswith(".") and name not in SKIPPED_FOLDERS
                               and not name.endswith(".egg-info"))
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(folder, name), ROOT)


def unexplained_silencers(path: str) -> Iterator[str]:
    """"path:line: comment" for each noqa or type: ignore without its codes and a reason on the line, or a comment
    line of its own just above it."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        source = handle.read()
    comment_lines = set()
    comments = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments.append(token)
            if not token.line[:token.start[1]].strip():
                comment_lines.add(token.start[0])
    for token in comments:
        line = token.start[0]
        for silencer, codes, reason in SILENCERS:
            found = silencer.search(token.string)
            if found is None:
                continue
            named = codes.match(token.string, found.end())
            if named and (line - 1 in comment_lines or reason.match(token.string, named.end())):
                continue
            yield f"{path}:{line}: {token.string}"


def test_every_noqa_and_type_ignore_names_its_codes_and_says_why() -> None:
    found = [problem for path in python_files() for problem in unexplained_silencers(path)]
    assert not found, "say why beside each (\"# noqa: BLE001 - why\", \"# type: ignore[code]  # why\"):\n" + "\n".join(
        found)


def test_the_kernel_contract_covers_every_module_the_add_on_bundles() -> None:
    # The add-on carries these modules into Blender, where only the standard library (and the bundled BAT) exists.
    with open(os.path.join(ROOT, "build_addon.py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    vendored = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    and any(getattr(target, "id", "") == "VENDORED_RENDERQ" for target in node.targets))
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        contracts = tomllib.load(handle)["tool"]["importlinter"]["contracts"]
    kernel = next(contract for contract in contracts if contract["type"] == "standard_library_only")
    assert set(kernel["source_modules"]) == {"renderq", "renderq.*"}
    modules = {"renderq" if name == "__init__.py" else "renderq." + name.removesuffix(".py") for name in vendored}
    assert not modules & set(kernel.get("exclude_modules", ())), "a bundled module is left out of the kernel"

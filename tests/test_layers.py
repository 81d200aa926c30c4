"""The package's layers: each subpackage imports only from those before it in the data flow
(README "Architecture"), the foundation modules from nothing of unochat, and only the CLI imports
lazily (inside a function), to keep torch off the commands that do not train."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from unochat.paths import REPO

PACKAGE = REPO / "host" / "unochat"
ORDER = ("data", "model", "train", "codegen", "firmware", "board", "measure", "cli")
FOUNDATION = ("unochat", "unochat.paths", "unochat.boards")  # imported by all, importing nothing of unochat
LAZY_ALLOWED = ("cli",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.Module, name: str, is_package: bool) -> list[tuple[str, bool, int]]:
    """(absolute module, at module level?, line) of every unochat module `name`'s source imports."""
    package = name if is_package else name.rpartition(".")[0]
    module_level = {id(node) for node in tree.body}
    module_level |= {id(n) for node in tree.body if isinstance(node, ast.If) for n in node.body}  # TYPE_CHECKING
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            # `from . import reference` and `from unochat.model import formats` import modules;
            # `from .x import name` imports from the module x
            targets = [_submodule(root, alias.name) for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "unochat" or target.startswith("unochat."):
                found.append((target, id(node) in module_level, node.lineno))
    return found


def _submodule(root: str, name: str) -> str:
    """root.name if that is a module of the package, else root (name is an attribute of it)."""
    candidate = PACKAGE.parent.joinpath(*f"{root}.{name}".split("."))
    return f"{root}.{name}" if candidate.with_suffix(".py").is_file() or candidate.is_dir() else root


def layer(module: str) -> str | None:
    """The subpackage a module belongs to, or None for a foundation module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def violations(path: Path, source: str) -> list[str]:
    name = module_name(path)
    tree = ast.parse(source, filename=str(path))
    own = layer(name)
    problems = []
    for target, at_top, line in imported_modules(tree, name, path.name == "__init__.py"):
        where = f"{path.relative_to(REPO)}:{line}"
        theirs = layer(target)
        if own is None and name in FOUNDATION and target != name:
            problems.append(f"{where}: foundation module {name} imports {target}")
        elif own is not None and theirs is not None and ORDER.index(theirs) > ORDER.index(own):
            problems.append(f"{where}: {own} imports {target}, which comes later ({theirs})")
        elif theirs is None and target not in FOUNDATION:
            problems.append(f"{where}: {target} belongs to no layer")
        if not at_top and own not in LAZY_ALLOWED:
            problems.append(f"{where}: {target} imported inside a function (only the CLI imports lazily)")
    return problems


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer() -> None:
    for path in package_files():
        name = module_name(path)
        assert layer(name) is not None or name in FOUNDATION, f"{name} belongs to no layer"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ORDER)


def test_imports_follow_the_data_flow() -> None:
    problems = [p for path in package_files() for p in violations(path, path.read_text())]
    assert problems == []


@pytest.mark.parametrize("where,source,expected", [
    ("model/reference.py", "from ..train.fit import fit\n", "model imports unochat.train.fit, which comes later"),
    ("codegen/plan.py", "def f():\n    from ..model import reference\n", "imported inside a function"),
    ("data/dataset.py", "from unochat.measure import bench\n", "data imports unochat.measure.bench"),
    ("paths.py", "from .data import dataset\n", "foundation module unochat.paths imports"),
])
def test_the_check_finds_what_breaks_the_order(where: str, source: str, expected: str) -> None:
    """The checker itself: a planted import against the order is found."""
    found = violations(PACKAGE / where, source)
    assert len(found) == 1 and expected in found[0]


def test_the_cli_may_import_lazily() -> None:
    assert violations(PACKAGE / "cli" / "main.py", "def f():\n    from ..train import fit\n") == []

"""The house rules of scanner/, checked over the tree: one package per layer, imports only downwards, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SCANNER = Path(__file__).resolve().parents[2] / "scanner"
MAX_LINES = 600
MAX_LOOSE_MODULES = 8  # besides __init__ and __main__

# What each layer may import from the program, besides the loose helpers below. Data flows one way:
# config → targets → results → engine → state → tiers → output → web → daemon → cli.
HELPERS = {"errors", "logs", "protocols", "hostport"}
ALLOWED: dict[str, set[str]] = {
    "helpers": set(),
    "config": set(),
    "targets": {"config"},
    "results": {"config"},
    "engine": {"config", "results"},
    "state": {"config", "results"},
    "tiers": {"config", "results", "engine", "state"},
    "output": {"config", "targets", "results", "state", "tiers"},
    "web": {"config", "targets", "results", "state", "tiers", "output"},
    "daemon": {"config", "targets", "results", "engine", "state", "tiers", "output", "web"},
}
SSL_LIBRARIES = {"sslyze", "nassl"}


def modules() -> list[Path]:
    return sorted(p for p in SCANNER.rglob("*.py") if "__pycache__" not in p.parts)


def layer_of(path: Path) -> str:
    """The layer a module belongs to: its sub-package, or the module itself when loose at the top."""
    parts = path.relative_to(SCANNER).parts
    if len(parts) > 1:
        return parts[0]
    name = path.stem
    return "helpers" if name in HELPERS else name


def imported(path: Path) -> set[str]:
    """Every module this file imports, at any depth of its code (lazy imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def program_layer(module: str) -> str | None:
    """The layer of an imported `scanner…` module, or None for `scanner` itself and outside modules."""
    parts = module.split(".")
    if parts[0] != "scanner" or len(parts) < 2 or parts[1].startswith("__"):
        return None  # the package itself (its __version__) belongs to no layer
    return "helpers" if parts[1] in HELPERS else parts[1]


def test_every_sub_package_says_what_it_owns_and_may_import() -> None:
    packages = [p for p in SCANNER.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    assert {p.name for p in packages} >= {"config", "engine", "results", "state", "output", "web", "daemon"}
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
        assert len(doc.split()) >= 15, f"{package.name}/__init__.py: say what it owns and what it may import"
        assert "import" in doc.lower(), f"{package.name}/__init__.py: say what it may import"


def test_few_modules_stay_loose_at_the_top() -> None:
    loose = [p.stem for p in SCANNER.glob("*.py") if p.stem not in ("__init__", "__main__")]
    assert len(loose) <= MAX_LOOSE_MODULES, loose


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SCANNER)))
def test_no_module_is_over_the_limit(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_sslyze_and_nassl_are_imported_in_the_engine_only() -> None:
    users = {
        str(p.relative_to(SCANNER)) for p in modules() if any(m.split(".")[0] in SSL_LIBRARIES for m in imported(p))
    }
    assert users, "the engine must use sslyze somewhere"
    assert {u.split("/")[0] for u in users} == {"engine"}, users


def test_layers_import_only_the_layers_above_them() -> None:
    wrong = []
    for path in modules():
        layer = layer_of(path)
        allowed = ALLOWED.get(layer)
        if allowed is None:
            continue  # cli and __main__ wire everything together
        for module in imported(path):
            target = program_layer(module)
            if target is not None and target not in (layer, "helpers") and target not in allowed:
                wrong.append(f"{path.relative_to(SCANNER)} imports {module}")
    assert wrong == []


def test_the_rules_see_a_wrong_import(tmp_path: Path) -> None:
    """The checker itself: a state module importing the engine is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f() -> None:\n    from scanner.engine.sweep import SweepEngine\n")
    layers = {program_layer(m) for m in imported(bad)}
    assert "engine" in layers and "engine" not in ALLOWED["state"]

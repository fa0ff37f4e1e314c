"""The line between the catalogue and flashing, read from the source: the catalogue imports
nothing of flashing; flashing imports of the catalogue only its models and its interface
(``catalogue.interface``), so the catalogue's services and storage can move behind it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_IN_FLASHING = {"catalogue.models", "catalogue.interface"}


def imported_modules(package: str) -> dict[str, set[str]]:
    """Every module each source file of ``package`` imports (migrations left out: they are
    history), including those imported inside functions."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_the_catalogue_imports_nothing_of_flashing():
    offending = {
        path: sorted(n for n in names if n == "flashing" or n.startswith("flashing."))
        for path, names in imported_modules("catalogue").items()
    }
    assert {path: names for path, names in offending.items() if names} == {}


def test_the_catalogue_looks_up_no_flashing_model_by_name():
    sources = {
        str(path.relative_to(ROOT)): path.read_text()
        for path in (ROOT / "catalogue").rglob("*.py")
        if "migrations" not in path.parts
    }
    assert [path for path, text in sources.items() if 'get_model("flashing"' in text] == []


def deep_imports(names: set[str]) -> list[str]:
    """The catalogue modules imported that are neither the models nor the interface."""
    modules = {n for n in names if n == "catalogue" or n.startswith("catalogue.")}
    return sorted(
        n
        for n in modules
        if n not in ALLOWED_IN_FLASHING
        and not any(n.startswith(f"{allowed}.") for allowed in ALLOWED_IN_FLASHING)
        and n != "catalogue"
    )


def test_flashing_uses_only_the_catalogues_models_and_interface():
    offending = {path: deep_imports(names) for path, names in imported_modules("flashing").items()}
    assert {path: names for path, names in offending.items() if names} == {}

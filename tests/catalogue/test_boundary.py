"""The line between the catalogue and flashing, read from the source: the catalogue imports
nothing of flashing; flashing imports of the catalogue only its models and its interface
(``catalogue.interface``), so the catalogue's services and storage can move behind it."""

from __future__ import annotations

import ast
import re
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


# --- Paths under the image root: only the store builds them -------------------------

STORE = "catalogue/storage/"
# Asking the store for these is building a path under the root (or naming its files).
PATH_BUILDERS = (
    "image_dir(",
    "beside_path(",
    "map_path(",
    "held_part(",
    "stored_names(",
    "part_name(",
    "catalogue.storage.names",
    "PART_SUFFIX",
    "MAP_SUFFIX",
    "RAW_SUFFIX",
    "RAW_MAP_SUFFIX",
)
# Names only files under the root have, as literals (``.img…`` also names downloads, and a
# ``.part`` of another root, flashing's NBD directory, is built there).
STORED_NAME_LITERALS = {".part", ".map.json", ".raw.map.json"}
# Modules that hand a version's path to a reader that takes a path (a program, an
# extractor, a log line), and why they may have it.
VERSION_PATH_READERS = {
    "catalogue/services/bootfiles.py",  # the boot-file extractor reads the stored file
    "catalogue/services/delivery.py",  # names the missing file in the log
    "catalogue/services/digests.py",  # file_digest also reads renditions' scratch files
    "catalogue/services/files.py",  # a copy's store, not the image root
}
# Modules that take ``.parent`` of paths of their own roots (not the image root).
OTHER_ROOTS = {"catalogue/services/bootfiles.py"}  # BAAS_BOOT_CACHE_DIR


def server_sources() -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text()
        for package in ("catalogue", "flashing", "accounts", "baas_site")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.parts and not str(path.relative_to(ROOT)).startswith(STORE)
    }


def builders_in(text: str) -> list[str]:
    return [token for token in PATH_BUILDERS if re.search(rf"\b{re.escape(token)}", text)]


def test_only_the_store_builds_paths_under_the_image_root():
    offending = {path: builders_in(text) for path, text in server_sources().items()}
    assert {path: tokens for path, tokens in offending.items() if tokens} == {}


def test_only_readers_that_need_a_path_ask_for_a_versions_path():
    asking = {path for path, text in server_sources().items() if "version_path(" in text}
    assert asking <= VERSION_PATH_READERS


def test_no_code_beside_the_store_walks_or_tests_the_paths_it_gets():
    """Who has the store takes no ``.parent`` of its paths nor checks them with
    ``.exists()``: the store answers (``version_file``, ``has_map``, ``prune_image_dir``)."""
    offending = []
    for path, text in server_sources().items():
        if "get_storage" not in text and "LocalStorage" not in text:
            continue
        if ".parent" in text and path not in OTHER_ROOTS:
            offending.append(f"{path}: .parent")
        for line in text.splitlines():
            if re.search(r"(version_path|version_file|stat)\(.*\)\.(exists|parent)", line):
                offending.append(f"{path}: {line.strip()}")
            if re.search(r"\bstored\.path\.exists\(", line):
                offending.append(f"{path}: {line.strip()}")
    assert offending == []


def test_no_code_beside_the_store_spells_the_names_of_stored_files():
    offending = []
    for path, text in server_sources().items():
        if not path.startswith("catalogue/"):
            continue  # flashing's NBD directory is another root, with its own .part files
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, ast.Constant) and node.value in STORED_NAME_LITERALS:
                offending.append(f"{path}:{node.lineno}: {node.value!r}")
    assert offending == []


def test_the_boundary_tests_see_a_path_built_outside_the_store(tmp_path):
    """The checks above read text: make sure they would catch the forms they are about."""
    sample = 'directory = get_storage().image_dir(x)\npart = directory / f".{h}.part"\n'
    assert builders_in(sample) == ["image_dir("]
    assert builders_in("storage.prune_image_dir(x)") == []
    literals = {
        node.value
        for node in ast.walk(ast.parse(sample))
        if isinstance(node, ast.Constant) and node.value in STORED_NAME_LITERALS
    }
    assert literals == {".part"}

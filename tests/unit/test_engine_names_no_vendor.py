"""The engine never names a vendor: adding a system is one folder plus one registry entry.

Checked over the engine's code (``worker/``, ``shared/domain/``, ``producers/`` and the
top-level modules of ``shared/integrations/``): no import of a vendor folder, and no identifier
or string literal that contains a vendor's name. Docstrings and comments may name vendors as
examples; code may not. A vendor is any system in the registry, plus the ones being built next.

``ALLOWED`` lists what could not move into its vendor's folder yet, each with the reason. It
only ever shrinks: an entry that no longer finds anything fails the test too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from shared.integrations import registry

ROOT = Path(__file__).resolve().parents[2]
# The registry is the one place that lists the vendor folders (BUILTIN_SYSTEMS): not checked.
REGISTRY = ROOT / "shared" / "integrations" / "registry.py"
ENGINE = [path for path in (
    *sorted((ROOT / "worker").rglob("*.py")),
    *sorted((ROOT / "shared" / "domain").rglob("*.py")),
    *sorted((ROOT / "producers").rglob("*.py")),
    *sorted((ROOT / "shared" / "integrations").glob("*.py")),
) if path != REGISTRY]
# The systems being built next on the registry (their simulators are under sandbox/).
UPCOMING = ("traede", "brex", "billdiary")

# path (from the repository root) -> why it still names a vendor. Remove an entry when its
# vendor-specific part moves into the vendor's folder.
ALLOWED = {
}


def _vendor_names() -> set[str]:
    names = set(UPCOMING)
    for name, system in {**registry.targets(), **registry.sources()}.items():
        names.add(name.lower())
        names.add(system.display_name.lower())
    return names


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                ids.add(id(body[0].value))
    return ids


def vendor_mentions(path: Path, vendors: set[str]) -> list[str]:
    label = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstring_nodes(tree)
    found = []

    def check(text: str, what: str, line: int) -> None:
        lowered = text.lower()
        for vendor in vendors:
            if vendor in lowered:
                found.append(f"{label}:{line}: {what} {text!r} names {vendor}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(alias.name, "import", node.lineno)
        elif isinstance(node, ast.ImportFrom):
            check(node.module or "", "import from", node.lineno)
            for alias in node.names:
                check(alias.name, "import", node.lineno)
        elif isinstance(node, ast.Name):
            check(node.id, "name", node.lineno)
        elif isinstance(node, ast.Attribute):
            check(node.attr, "attribute", node.lineno)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            check(node.name, "definition", node.lineno)
        elif isinstance(node, ast.arg):
            check(node.arg, "argument", node.lineno)
        elif isinstance(node, ast.keyword) and node.arg:
            check(node.arg, "keyword", node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            check(node.value, "string", node.lineno)
    return found


def test_the_engine_names_no_vendor():
    vendors = _vendor_names()
    problems = []
    for path in ENGINE:
        relative = str(path.relative_to(ROOT))
        if relative in ALLOWED:
            continue
        problems += vendor_mentions(path, vendors)
    assert not problems, "the engine names a vendor; move it into the vendor's folder and ask " \
                         "shared.integrations.registry instead:\n" + "\n".join(problems)


def test_every_allowlist_entry_is_still_needed():
    vendors = _vendor_names()
    stale = [path for path in ALLOWED if not (ROOT / path).exists()
             or not vendor_mentions(ROOT / path, vendors)]
    assert not stale, f"remove these from ALLOWED, they name no vendor any more: {stale}"


def test_the_check_catches_a_vendor_import_and_a_vendor_string(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""Docstrings may say Tripletex."""\n'
                      "from shared.integrations.tripletex import SYSTEM\n"
                      'if x == "tripletex":\n    pass\n')
    found = vendor_mentions(sample, {"tripletex"})
    assert [f.split(": ", 1)[1].split(" ", 1)[0] for f in found] == ["import", "string"], found

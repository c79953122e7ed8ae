"""The layers import downwards only (docs/ARCHITECTURE.md, "Layers"):

producers (API, webhooks, CLI) and worker -> shared.domain (services, statuses, errors) ->
shared.integrations (adapters) / shared.db (ORM). Nothing under ``shared/`` or ``producers/``
imports the worker (the CLI asks the worker for work through the queue); vendor folders never
import the ORM (the statuses they need are the domain's); domain errors carry no HTTP status
(the API maps them).
"""

from __future__ import annotations

import ast
from pathlib import Path

from producers.api.errors import DOMAIN_ERROR_STATUSES, domain_error_status
from shared.domain import errors as domain_errors
from shared.integrations.errors import IntegrationError

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def _offenders(folders: list[Path], forbidden: str) -> list[str]:
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            bad = sorted(m for m in _imports(path) if m == forbidden or m.startswith(forbidden + "."))
            if bad:
                found.append(f"{path.relative_to(ROOT)}: {', '.join(bad)}")
    return found


def test_nothing_outside_the_worker_imports_the_worker():
    assert _offenders([ROOT / "shared", ROOT / "producers"], "worker") == []


def test_vendor_folders_do_not_import_the_orm():
    vendors = [p for p in (ROOT / "shared" / "integrations").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()]
    assert vendors
    assert _offenders(vendors, "shared.db.models") == []


def test_domain_errors_carry_no_http_status():
    carriers = []
    for path in sorted((ROOT / "shared").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                for statement in node.body:
                    targets = (statement.targets if isinstance(statement, ast.Assign)
                               else [statement.target] if isinstance(statement, ast.AnnAssign)
                               else [])
                    if any(isinstance(t, ast.Name) and t.id == "http_status" for t in targets):
                        carriers.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert carriers == []


def test_a_mapping_error_is_a_domain_error_answered_422():
    error = domain_errors.MappingError("account 7140 is not mapped")
    assert isinstance(error, domain_errors.DomainError)
    assert not isinstance(error, IntegrationError)
    assert domain_error_status(error) == 422


def test_every_domain_error_has_a_status_through_its_nearest_ancestor():
    from shared.domain.exports import AlreadyExported, BatchTooLarge

    assert domain_error_status(AlreadyExported("x")) == DOMAIN_ERROR_STATUSES[domain_errors.Conflict]
    assert domain_error_status(BatchTooLarge("x")) == 413
    assert domain_error_status(domain_errors.DomainError("x")) == 400

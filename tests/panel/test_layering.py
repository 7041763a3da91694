"""The commune core knows no service app: services report to it, never the other way round."""

from __future__ import annotations

import ast
from pathlib import Path

PANEL = Path(__file__).resolve().parents[2] / "panel"
SERVICE_APPS = {"provisioning", "telephony", "newsletters"}


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_panel_imports_no_service_app_anywhere():
    offenders = {
        f"{path.relative_to(PANEL.parent)}: {module}"
        for path in PANEL.rglob("*.py")
        for module in imported_modules(path)
        if module.split(".")[0] in SERVICE_APPS
    }
    assert not offenders, sorted(offenders)

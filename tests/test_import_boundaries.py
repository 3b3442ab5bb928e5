"""The two boundary rules of ARCHITECTURE.md, checked by parsing every import statement."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):  # walk: imports inside functions count too
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(folder: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted((root / folder).rglob("*.py")):
        for line, module in imported_modules(path):
            if any(module == name or module.startswith(name + ".") for name in forbidden):
                bad.append(f"{path.relative_to(root)}:{line} imports {module}")
    return bad


def test_the_worker_core_never_imports_django_the_apps_the_site_or_the_tasks():
    assert violations("workers/core", ("django", "apps", "puyu_site", "workers.tasks", "celery", "channels")) == []


def test_the_apps_never_import_the_worker_core():
    assert violations("apps", ("workers.core",)) == []


@pytest.mark.parametrize("snippet, expected", [
    ("import django.db\n", ["pkg/x.py:1 imports django.db"]),
    ("def f():\n    from apps.jobs import models\n", ["pkg/x.py:2 imports apps.jobs"]),
    ("from . import sibling\nimport djangoish\n", []),
])
def test_the_checker_sees_top_level_and_nested_imports_and_ignores_relative_ones(tmp_path, snippet, expected):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "x.py").write_text(snippet)
    assert violations("pkg", ("django", "apps"), root=tmp_path) == expected


def test_importing_the_core_job_registry_loads_neither_django_nor_torch():
    code = "import sys, workers.core.kinds; print(sorted(m for m in ('django', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_the_web_process_loads_every_page_and_api_module_without_importing_ml_libraries():
    code = ("import os, sys, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'puyu_site.settings'; django.setup(); "
            "import puyu_site.urls, puyu_site.asgi; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'torchao', 'plotly') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr

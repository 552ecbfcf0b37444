"""Repository-wide checks: lint-clean, typed package, lazy optional imports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [ruff, "check", "--output-format", "concise", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_is_typed_and_exports_its_public_names() -> None:
    import wsgi_deferred

    assert (ROOT / "wsgi_deferred" / "py.typed").exists()
    assert {"DeferredMiddleware", "wrap", "DeferredError"} <= set(wsgi_deferred.__all__)
    for name in wsgi_deferred.__all__:
        assert hasattr(wsgi_deferred, name), name


def test_importing_the_package_imports_neither_redis_nor_gunicorn() -> None:
    code = (
        "import sys, wsgi_deferred, wsgi_deferred.stores.memory; "
        "print(sorted(m for m in ('redis', 'gunicorn', 'flask') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"

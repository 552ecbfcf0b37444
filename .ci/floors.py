"""The lowest versions pyproject.toml admits for the runtime dependencies, as a pip constraints
file; and, with --check, whether the running interpreter has exactly those installed.

    python .ci/floors.py constraints.txt     # writes e.g. "werkzeug==2.3"
    python .ci/floors.py --check             # exit 1 unless every floor is what is installed

Runtime means ``[project].dependencies`` and every optional extra except the development ones
(``test``, ``test-*``, ``bench``): what a user installs. Each requirement needs a lower bound
(``>=``, ``~=`` or ``==``); one without is an error, since nothing would test its floor. A
package named in several extras takes the highest of its floors. Standard library only, 3.10+.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser as tomli
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
#: Extras that are for developing this project, not for its users (and every ``test-*``).
DEVELOPMENT_EXTRAS = {"test", "bench"}
_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*)(?:;(?P<marker>.*))?$"
)
_LOWER = re.compile(r"(>=|~=|==)\s*([0-9][0-9A-Za-z.!+-]*)")


def canonical(name: str) -> str:
    """PEP 503 normalised name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def version_key(version: str) -> tuple[int, ...]:
    """Release numbers, trailing zeros dropped: "21" and "21.0.0" are the same version."""
    parts = [int(part) for part in re.findall(r"\d+", version.split("+")[0])]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def floors(pyproject: Path = PYPROJECT) -> dict[str, tuple[str, str]]:
    """``{canonical name: (floor version, marker)}`` for every runtime requirement."""
    project = tomllib.loads(pyproject.read_text())["project"]
    self_name = canonical(project["name"])
    requirements = list(project.get("dependencies", []))
    for extra, items in project.get("optional-dependencies", {}).items():
        if extra not in DEVELOPMENT_EXTRAS and not extra.startswith("test-"):
            requirements.extend(items)
    found: dict[str, tuple[str, str]] = {}
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise SystemExit(f"floors: cannot read requirement {requirement!r}")
        name = canonical(match["name"])
        if name == self_name:
            continue  # "wsgi_deferred[redis]": the extras are read on their own
        lower = _LOWER.search(match["spec"])
        if lower is None:
            raise SystemExit(f"floors: {requirement!r} has no lower bound to test")
        version, marker = lower.group(2), (match["marker"] or "").strip()
        if name not in found or version_key(version) > version_key(found[name][0]):
            found[name] = (version, marker)
    return found


def constraints(pyproject: Path = PYPROJECT) -> str:
    lines = []
    for name, (version, marker) in sorted(floors(pyproject).items()):
        lines.append(f"{name}=={version}" + (f"; {marker}" if marker else ""))
    return "\n".join(lines) + "\n"


def check() -> int:
    """Print each floor beside the installed version; 1 if any differs."""
    wrong = 0
    for name, (version, _) in sorted(floors().items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        same = version_key(installed) == version_key(version)
        wrong += not same
        verdict = "ok" if same else "DIFFERS"
        print(f"floors: {name:<16} floor {version:<8} installed {installed:<14} {verdict}")
    return 1 if wrong else 0


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        return check()
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    Path(argv[0]).write_text(constraints())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

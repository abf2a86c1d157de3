"""Print pip constraints that pin every direct dependency of latentq to its lowest allowed version.

    python .ci/lowest_constraints.py [extra ...] > lowest.txt && pip install -e ".[test]" -c lowest.txt

pip's equivalent of ``uv pip install --resolution lowest-direct`` (uv does not look where this machine keeps
torch): each requirement's ``>=`` bound becomes ``==`` for the project's dependencies and the named extras;
their own dependencies resolve as usual. torch is left out: it is installed first, at the build the machine
has (README). A requirement without a lower bound is an error: every direct dependency must have one.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

SKIP = {"torch"}  # installed before the project, from the machine's own wheel
LOWER = re.compile(r">=\s*([0-9][^,;\s]*)")


def lowest_pins(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    pins = []
    for requirement in requirements:
        requirement = requirement.split("#")[0].strip()
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
        if name.lower() in SKIP:
            continue
        bound = LOWER.search(requirement)
        if bound is None:
            raise SystemExit(f"{requirement!r} has no lower bound")
        pins.append(f"{name}=={bound.group(1)}")
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    print("\n".join(lowest_pins(root / "pyproject.toml", sys.argv[1:])))

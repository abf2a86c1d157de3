"""requirements.lock (what the Docker images install) agrees with pyproject's ranges and is fully hashed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes), from requirements.lock."""
    entries: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", (ROOT / "requirements.lock").read_text()):
        found = re.match(r"([A-Za-z0-9_.-]+)==([^\s\\;]+)", block)
        if found:
            entries[canonicalize_name(found.group(1))] = (found.group(2), block.count("--hash=sha256:"))
    return entries


def test_every_runtime_dependency_is_locked_within_its_range_with_hashes():
    entries = locked()
    assert entries, "requirements.lock lists no package"
    assert all(hashes > 0 for _, hashes in entries.values()), "a package without a hash"
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == "torch":  # the Dockerfile installs it from the PyTorch index of its flavour
            assert name not in entries
            continue
        assert name in entries, f"{name} is not in requirements.lock: run `bash .ci/lock`"
        version = entries[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} in requirements.lock is outside {requirement.specifier}: run `bash .ci/lock`")


def test_no_cuda_wheel_is_locked_and_the_dockerfile_installs_the_lock():
    assert not [name for name in locked() if name.startswith("nvidia-") or name in ("torch", "triton")]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes --no-deps -r requirements.lock" in dockerfile
    assert "COPY requirements.lock" in dockerfile

"""The lock files pin every dependency pyproject.toml names, exactly and within its range."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;\\]+)")
# The platform the locks are compiled for (scripts/lock): markers are judged there.
LOCK_ENV = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux"}


def parse_lock(text: str) -> dict[str, Version]:
    """Name -> pinned version; a requirement line that is not an exact pin raises."""
    pins: dict[str, Version] = {}
    for line in text.splitlines():
        if not line.strip() or line[0].isspace() or line.startswith(("#", "-")):
            continue  # hashes, "# via" comments, options
        match = PIN.match(line)
        if match is None:
            raise ValueError(f"not an exact == pin: {line!r}")
        pins[canonicalize_name(match["name"])] = Version(match["version"])
    return pins


def problems(requirements: list[str], pins: dict[str, Version]) -> list[str]:
    """What is wrong between pyproject's requirements and a lock's pins (nothing: [])."""
    found = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(LOCK_ENV):
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            found.append(f"{req.name} is not in the lock")
        elif not req.specifier.contains(pinned, prereleases=True):
            found.append(f"{req.name}=={pinned} is outside {req.specifier}")
    return found


def project() -> dict[str, list[str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"runtime": data["dependencies"], "test": data["optional-dependencies"]["test"]}


def lock(name: str) -> dict[str, Version]:
    return parse_lock((ROOT / name).read_text())


def test_runtime_lock_pins_every_runtime_dependency_within_its_range() -> None:
    assert problems(project()["runtime"], lock("requirements.lock")) == []


def test_test_lock_pins_runtime_and_test_dependencies_within_their_ranges() -> None:
    deps = project()
    assert problems(deps["runtime"] + deps["test"], lock("requirements-test.lock")) == []


def test_the_two_locks_agree_on_every_shared_package() -> None:
    runtime, test = lock("requirements.lock"), lock("requirements-test.lock")
    assert set(runtime) <= set(test)
    assert {name: test[name] for name in runtime} == runtime


def test_locks_carry_hashes_for_every_pin() -> None:
    # scripts/install and the Dockerfile install with --require-hashes: one bare pin breaks both.
    for name in ("requirements.lock", "requirements-test.lock"):
        text = (ROOT / name).read_text()
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[-1])
        bare = [b.split()[0] for b in blocks if PIN.match(b) and "--hash=sha256:" not in b]
        assert bare == [], f"{name}: no hashes for {bare}"


def test_the_checks_catch_a_missing_package_a_pin_outside_its_range_and_a_loose_pin() -> None:
    pins = parse_lock("quart==0.22.0 \\\n    --hash=sha256:00\n    # via x\nHypercorn==0.19.1\n")
    assert pins == {"quart": Version("0.22.0"), "hypercorn": Version("0.19.1")}
    assert problems(["quart>=0.20", "hypercorn>=0.17,<0.19", "redis>=5.0"], pins) == [
        "hypercorn==0.19.1 is outside <0.19,>=0.17",
        "redis is not in the lock",
    ]
    with pytest.raises(ValueError, match="not an exact == pin"):
        parse_lock("quart>=0.20\n")

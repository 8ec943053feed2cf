"""The dependency bounds: every requirement has an upper bound, constraints.txt pins a tested
version of each within its bounds, requirements-cpu.txt stays the CPU twin of pyproject.toml,
and what is installed fits."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPOSITORY_ROOT / "pyproject.toml").read_text())["project"]
BASE = [Requirement(text) for text in PROJECT["dependencies"]]
EXTRAS = {extra: [Requirement(text) for text in texts] for extra, texts in PROJECT["optional-dependencies"].items()}
EXTERNAL = BASE + [requirement for requirements in EXTRAS.values() for requirement in requirements
                   if canonicalize_name(requirement.name) != canonicalize_name(PROJECT["name"])]


def requirement_lines(path: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


def pins() -> dict:
    result = {}
    for line in requirement_lines(REPOSITORY_ROOT / "constraints.txt"):
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", line
        result[canonicalize_name(requirement.name)] = specifier.version
    return result


def test_every_requirement_has_an_upper_bound():
    for requirement in EXTERNAL:
        assert any(spec.operator in ("<", "<=", "~=", "==") for spec in requirement.specifier), str(requirement)


def test_constraints_pin_every_requirement_within_its_bounds():
    pinned = pins()
    for requirement in EXTERNAL:
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} outside {requirement}"
    tensorflow = next(r for r in BASE if r.name == "tensorflow")
    assert pinned["tensorflow-cpu"] == pinned["tensorflow"] and tensorflow.specifier.contains(pinned["tensorflow-cpu"])


def test_cpu_requirements_are_pyproject_with_tensorflow_cpu():
    expected = [str(r).replace("tensorflow<", "tensorflow-cpu<").replace("tensorflow>", "tensorflow-cpu>")
                if r.name == "tensorflow" else str(r) for r in BASE]
    found = [str(Requirement(line)) for line in requirement_lines(REPOSITORY_ROOT / "requirements-cpu.txt")]
    assert found == expected


def installed_by_the_test_command() -> list[Requirement]:
    """The base requirements and those of the `test` extra, with the extras it names of its own
    (`pip install -e ".[test]"`); other extras, such as `peers`, need not be installed."""
    extras, pending = set(), ["test"]
    while pending:
        extra = pending.pop()
        extras.add(extra)
        pending += [name for requirement in EXTRAS[extra] if canonicalize_name(requirement.name)
                    == canonicalize_name(PROJECT["name"]) for name in requirement.extras if name not in extras]
    return BASE + [requirement for extra in sorted(extras) for requirement in EXTRAS[extra]
                   if canonicalize_name(requirement.name) != canonicalize_name(PROJECT["name"])]


def test_installed_versions_fit_the_bounds():
    for requirement in installed_by_the_test_command():
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            assert requirement.name == "tensorflow", f"{requirement.name} is not installed"
            installed = version("tensorflow-cpu")  # the CPU-only install
        assert requirement.specifier.contains(installed, prereleases=True), f"{requirement.name} {installed}"

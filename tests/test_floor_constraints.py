"""pyproject.toml's dependency floors are the versions .ci/floor-constraints.txt pins, the set .ci/floor_check.sh
runs the whole suite under: a floor raised or lowered without that run cannot go unnoticed."""
import os
import re
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised as pip compares them (``torch_geometric`` is ``torch-geometric``)."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def floors() -> dict:
    """Each dependency of pyproject.toml (the test extra's too) and the version its ``>=`` names."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    out = {}
    for req in project["dependencies"] + project["optional-dependencies"]["test"]:
        floor = re.search(r">=\s*([0-9][^,;\s]*)", req)
        assert floor, f"pyproject.toml: {req!r} names no >= floor; give it one and pin it in .ci/floor-constraints.txt"
        out[_name(req)] = floor.group(1)
    return out


def pins() -> dict:
    """The ``name==version`` lines of .ci/floor-constraints.txt, by normalised name."""
    out = {}
    for line in open(os.path.join(ROOT, ".ci", "floor-constraints.txt")):
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[_name(name)] = version.strip()
    return out


def _same(floor: str, pin: str) -> bool:
    """``2.10`` and ``2.10.0`` name the same release."""
    def parts(v):
        p = [int(x) for x in v.split(".")]
        while p and p[-1] == 0:
            p.pop()
        return p
    return parts(floor) == parts(pin)


def test_every_floor_is_the_version_the_floor_run_pinned():
    have, pinned = floors(), pins()
    missing = sorted(set(have) - set(pinned))
    assert not missing, f".ci/floor-constraints.txt pins no version of {missing}: add the floors and rerun .ci/floor_check.sh"
    differ = {n: (have[n], pinned[n]) for n in have if not _same(have[n], pinned[n])}
    assert not differ, (f"pyproject.toml floor vs .ci/floor-constraints.txt pin: {differ}; a floor is only what "
                        ".ci/floor_check.sh passed under: change both and rerun it")


def test_requires_python_is_the_oldest_python_the_code_parses_under():
    """BaseException.add_note (Python 3.11) is called throughout adaptive/."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["requires-python"] == ">=3.11"


def test_the_comparison_reads_floors_as_releases():
    assert _same("2.10", "2.10.0") and _same("6.0", "6.0") and not _same("0.4", "0.4.3")
    assert _name("torch_geometric>=2.7") == "torch-geometric" and _name("PyYAML") == "pyyaml"

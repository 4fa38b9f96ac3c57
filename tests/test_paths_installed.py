"""Data beside the repository is looked for only where there is a repository: an installed
package's folder is site-packages, and ``../shared/data`` from there is a folder inside the venv."""
import importlib.util
import shutil
import sys

from adaptive import paths


def _paths_installed_at(tmp_path):
    """adaptive/paths.py loaded from a copy in a site-packages-like folder (no pyproject.toml beside it)."""
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    (site / "adaptive").mkdir(parents=True)
    shutil.copy(paths.__file__, site / "adaptive" / "paths.py")
    (tmp_path / "venv" / "lib" / "python3.11" / "shared" / "data").mkdir(parents=True)  # what it pointed at
    spec = importlib.util.spec_from_file_location("_installed_paths", site / "adaptive" / "paths.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_an_installed_package_does_not_look_for_data_inside_its_venv(tmp_path, monkeypatch):
    monkeypatch.delenv("ADAPTIVE_DATA", raising=False)
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    installed = _paths_installed_at(tmp_path)
    assert not installed.IN_CHECKOUT
    assert installed.candidate_data_dirs() == [tmp_path / "cache" / "data"]
    assert installed.resolve_data_dir() == tmp_path / "cache" / "data"


def test_a_checkout_looks_beside_the_repository(monkeypatch):
    monkeypatch.delenv("ADAPTIVE_DATA", raising=False)
    assert paths.IN_CHECKOUT and paths.SHARED_DATA in paths.candidate_data_dirs()
    assert sys.modules["adaptive.paths"] is paths

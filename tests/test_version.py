"""One version, set in pyproject.toml: the package metadata, ``kdpipe.__version__`` and
``kdpipe --version`` all report it."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import kdpipe
from kdpipe.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_kdpipe_version_is_the_package_metadata_version():
    assert kdpipe.__version__ == metadata.version("kdpipe")


def test_the_command_prints_the_metadata_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"kdpipe {metadata.version('kdpipe')}"


def test_the_changelog_has_a_section_for_the_pyproject_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(version)}\]", changelog, flags=re.MULTILINE), version
    assert "## [Unreleased]" in changelog

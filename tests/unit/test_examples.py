"""Every shipped config loads and validates; local data paths it names exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.data.load import looks_like_hub_id

from ..conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
PLACEHOLDERS = {"my_data.jsonl", "my_data.csv", "my_corpus/"}


def test_there_are_examples_for_every_task():
    tasks = {load_config(path).task for path in EXAMPLES}
    assert "instruct" in tasks


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_is_valid_and_its_local_paths_exist(path: Path):
    config = load_config(path)
    specs = [source.path for source in config.data.train_sources()] + [config.data.eval]
    for spec in specs:
        for item in [spec] if isinstance(spec, str) else (spec or []):
            if item in PLACEHOLDERS or looks_like_hub_id(item):
                continue
            if item.startswith("../shared") and not (REPO / item).exists():
                pytest.skip("../shared is not present")
            assert (REPO / item).exists() or any(REPO.glob(item)), f"{path.name}: {item} does not exist"


def test_readme_config_reference_is_current():
    from tunesmith.config import config_reference

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert config_reference() in readme, "regenerate the README table with `tunesmith config-reference`"

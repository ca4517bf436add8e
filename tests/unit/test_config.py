"""The typed config: YAML loading, dotted overrides, unknown keys, redaction."""

from __future__ import annotations

import pytest

from tunesmith.config import config_to_yaml, load_config, parse_overrides
from tunesmith.errors import UserError


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_and_dotted_overrides(tmp_path):
    path = write(tmp_path, "task: instruct\ntrain:\n  learning_rate: 0.001\n  batch_size: 4\n")
    config = load_config(
        path, ["train.learning_rate=1e-4", "data.packing=false", "adapter.target_modules=[q_proj]"]
    )
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.train.batch_size == 4
    assert config.data.packing is False
    assert config.adapter.target_modules == ["q_proj"]


def test_unknown_key_names_the_key_and_suggests_the_closest(tmp_path):
    path = write(tmp_path, "train:\n  learnig_rate: 0.001\n")
    with pytest.raises(UserError) as error:
        load_config(path)
    message = str(error.value)
    assert "train.learnig_rate" in message and "train.learning_rate" in message and str(path) in message


def test_unknown_top_level_key_and_unknown_override(tmp_path):
    with pytest.raises(UserError, match="`modle`.*did you mean `model`"):
        load_config(write(tmp_path, "modle:\n  name: x\n"))
    with pytest.raises(UserError, match="did you mean `data.max_seq_len`"):
        load_config(None, ["data.max_seq_length=128"])


def test_wrong_value_names_key_and_value(tmp_path):
    with pytest.raises(UserError, match=r"`task`.*'instruction'"):
        load_config(write(tmp_path, "task: instruction\n"))
    with pytest.raises(UserError, match="train.batch_size"):
        load_config(None, ["train.batch_size=0"])


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(UserError, match=r"cfg.yaml:3: invalid YAML"):
        load_config(write(tmp_path, "task: instruct\ntrain:\n  batch_size: 4: 5\n"))


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(UserError, match="key.subkey=value"):
        parse_overrides(["train.learning_rate"])


def test_run_name_cannot_escape_the_output_dir():
    with pytest.raises(UserError, match="run_name"):
        load_config(None, ["run_name=../elsewhere"])


def test_resolved_config_redacts_tokens():
    config = load_config(None, ["model.token=hf_abcdefghijklmnopqrstuvwx"])
    text = config_to_yaml(config)
    assert "hf_abcdefghijklmnopqrstuvwx" not in text and "token: '***'" in text
    assert "max_general_tokens: 16384" in text  # a count, not a secret

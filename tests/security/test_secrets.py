"""Secrets (hub tokens, W&B keys) given by environment, CLI or config never appear in logs,
saved configs, reports or tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunesmith import api, cli

from ..conftest import tiny_config
from ..reliability.helpers import all_text, instruct_file

CONFIG_TOKEN = "hf" + "_ConfigTokenAbcdefghijklmnopqrstuv12"
CLI_TOKEN = "hf" + "_CliTokenAbcdefghijklmnopqrstuvwx34"
ENV_TOKEN = "hf" + "_EnvTokenAbcdefghijklmnopqrstuvwx56"
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"
SECRETS = (CONFIG_TOKEN, CLI_TOKEN, ENV_TOKEN, WANDB_KEY)
ENV = {"HF_TOKEN": ENV_TOKEN, "HUGGING_FACE_HUB_TOKEN": ENV_TOKEN, "WANDB_API_KEY": WANDB_KEY}


def _config_file(tiny_llama: Path, tmp_path: Path, token: str) -> Path:
    values = tiny_config(tiny_llama, instruct_file(tmp_path), tmp_path / "runs", train__max_steps=2)
    values["model"]["token"] = token
    values["eval"] = {
        "before": True,
        "after": True,
        "forgetting": False,
        "num_prompts": 1,
        "max_new_tokens": 4,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked into {where}"


def test_tokens_never_reach_output_or_run_files(tiny_llama, tmp_path):
    """Token in the config file, another on the command line, more in the environment."""
    config_file = _config_file(tiny_llama, tmp_path, CONFIG_TOKEN)
    result = CliRunner().invoke(cli.app, ["train", str(config_file), f"model.token={CLI_TOKEN}"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "token: '***'" in result.output  # the resolved config is printed, with the token redacted
    _assert_no_secret(result.output, "the terminal")
    run_dir = tmp_path / "runs" / "run"
    assert {"config.yaml", "metrics.jsonl", "environment.json", "summary.json", "final"} <= {
        p.name for p in run_dir.iterdir()
    }
    _assert_no_secret(
        all_text(run_dir), f"{run_dir} (config.yaml, metrics, environment, summary, report, final/)"
    )
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["token"] == "***"


@pytest.mark.parametrize("debug", [False, True])
def test_secrets_in_an_unexpected_error_are_redacted_from_the_traceback(
    tiny_llama, tmp_path, monkeypatch, debug
):
    config_file = _config_file(tiny_llama, tmp_path, CONFIG_TOKEN)

    def failing_train(config, **kwargs):
        raise RuntimeError(f"401 for {config.model.name} with token {config.model.token} and key {WANDB_KEY}")

    monkeypatch.setattr(api, "train", failing_train)
    result = CliRunner().invoke(
        cli.app, (["--debug"] if debug else []) + ["train", str(config_file)], env=ENV
    )
    assert result.exit_code == 1
    assert (
        "Traceback" in result.output and "RuntimeError: 401" in result.output
    )  # still useful for a bug report
    _assert_no_secret(result.output, "the traceback")


def test_secrets_in_a_user_error_message_are_redacted(tiny_llama, tmp_path, monkeypatch):
    from tunesmith.errors import UserError

    config_file = _config_file(tiny_llama, tmp_path, CONFIG_TOKEN)

    def failing_train(config, **kwargs):
        raise UserError(
            f"model.name: could not load {config.model.name} (token {config.model.token} rejected)"
        )

    monkeypatch.setattr(api, "train", failing_train)
    result = CliRunner().invoke(cli.app, ["train", str(config_file)], env=ENV)
    assert result.exit_code == 2
    assert "could not load" in result.output and "Traceback" not in result.output
    _assert_no_secret(result.output, "the error line")


def test_config_errors_do_not_echo_the_token(tmp_path):
    from tunesmith.config import load_config
    from tunesmith.errors import UserError

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"token": ["not", CONFIG_TOKEN]}}))
    with pytest.raises(UserError) as error:
        load_config(path)
    assert "model.token" in str(error.value)
    _assert_no_secret(str(error.value), "the config error")

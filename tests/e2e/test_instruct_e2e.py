"""Instruction finetuning end to end on tiny local models: what trains, what is saved, what loads."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tunesmith import api
from tunesmith.config import build_config
from tunesmith.tasks import instruct

from ..conftest import tiny_config, train_task_steps, write_jsonl


def test_lora_changes_every_adapter_weight_and_no_base_weight(tiny_llama, tmp_path, instruct_rows):
    train_file = write_jsonl(tmp_path / "train.jsonl", instruct_rows)
    config = build_config(tiny_config(tiny_llama, train_file, tmp_path / "runs"))
    model, _, _, before, records = train_task_steps(instruct, config)
    adapter, base = 0, 0
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            adapter += 1
            assert parameter.requires_grad and not torch.equal(parameter, before[name]), name
        else:
            base += 1
            assert not parameter.requires_grad and torch.equal(parameter, before[name]), name
    assert adapter > 0 and base > 0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


def test_full_finetuning_changes_the_weights(tiny_llama, tmp_path, instruct_rows):
    train_file = write_jsonl(tmp_path / "train.jsonl", instruct_rows)
    config = build_config(tiny_config(tiny_llama, train_file, tmp_path / "runs", adapter={"method": "full"}))
    model, _, _, before, _ = train_task_steps(instruct, config)
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad and not torch.equal(parameter, before[name]), name


@pytest.fixture(scope="module")
def lora_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-run")
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Count to {i % 5 + 1}."},
                {"role": "assistant", "content": " ".join(str(k) for k in range(1, i % 5 + 2))},
                {"role": "user", "content": "Again."},
                {"role": "assistant", "content": "Once more: done."},
            ]
        }
        for i in range(30)
    ]
    train_file = write_jsonl(root / "train.jsonl", rows)
    config = build_config(
        tiny_config(
            tiny_models["llama"],
            train_file,
            root / "runs",
            eval={"before": True, "after": True, "forgetting": True, "num_prompts": 2, "max_new_tokens": 8},
        )
    )
    return api.train(config, merge=True)


def test_run_directory_holds_what_it_promises(lora_run):
    run = lora_run.run_dir
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "eval/before.json",
        "eval/after.json",
        "final/adapter_config.json",
        "final/adapter_model.safetensors",
        "final/tokenizer.json",
        "final/tunesmith.json",
        "merged/config.json",
        "merged/model.safetensors",
        "merged/README.md",
    ):
        assert (run / name).is_file(), name
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r and "event" not in r] == [1, 2, 3]
    assert {"general", "loss", "generations"} <= set(lora_run.after)
    assert (
        not list(run.glob("**/*.bin"))
        and not list(run.glob("**/*.pt"))
        or all(p.parent.parent.name == "checkpoints" for p in run.glob("**/*.pt"))
    )


def test_adapter_loads_in_peft_and_merged_model_equals_base_plus_adapter(lora_run, tiny_models):
    adapter_dir, merged_dir = lora_run.final_dir, lora_run.merged_dir
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not hasattr(merged, "peft_config")
    input_ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        reference = with_adapter(input_ids=input_ids).logits
        plain_base = (
            AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()(input_ids=input_ids).logits
        )
        assert not torch.allclose(reference, plain_base, atol=1e-4)  # the adapter does something
        assert torch.allclose(merged(input_ids=input_ids).logits, reference, atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_other_architectures_train_without_code_changes(arch, tiny_models, tmp_path, instruct_rows):
    train_file = write_jsonl(tmp_path / "train.jsonl", instruct_rows)
    result = api.train(build_config(tiny_config(tiny_models[arch], train_file, tmp_path / "runs")))
    assert (result.final_dir / "adapter_model.safetensors").is_file()
    assert result.steps == 3


def test_real_pretrained_checkpoint_trains(shared_dir, tmp_path, instruct_rows):
    train_file = write_jsonl(tmp_path / "train.jsonl", instruct_rows)
    config = tiny_config(
        shared_dir / "models" / "stories260k",
        train_file,
        tmp_path / "runs",
        eval={"before": True, "after": True, "forgetting": False, "num_prompts": 1, "max_new_tokens": 4},
        train__max_steps=6,
        train__learning_rate=3e-3,
    )
    result = api.train(build_config(config))
    assert result.after["loss"] < result.before["loss"]
    reply = api.generate(str(result.run_dir), "Repeat the word red 2 times.", max_new_tokens=4)
    assert isinstance(reply, str)


def test_export_writes_a_checked_merged_model_with_a_card(lora_run, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export", str(lora_run.run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "parity check: merged == base + adapter" in result.output
    card = (out / "README.md").read_text()
    assert "held-out after:" in card and "max |logit difference|" in card
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def test_export_refuses_a_merge_that_changes_predictions(lora_run, tmp_path, monkeypatch):
    from tunesmith import export

    monkeypatch.setattr(export, "parity_error", lambda before, after: 1.0)
    with pytest.raises(RuntimeError, match="differs from base \\+ adapter"):
        api.merge_adapter(lora_run.run_dir, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.tmp").exists()


def test_the_parity_bar_admits_rounding_on_large_logits_and_not_a_wrong_merge():
    import torch

    from tunesmith.export import parity_bar, parity_error

    logits = torch.linspace(-30.0, 30.0, 1000)
    # fp32 rounding of reordered sums on logits of this size (measured 1.15e-4 on SmolLM2-135M) ...
    assert parity_error(logits, logits + 1.15e-4) <= parity_bar(logits)
    # ... but not a merge that moves a logit by a tenth, nor 1e-4 on logits that are all small.
    assert parity_error(logits, logits + 0.1) > parity_bar(logits)
    assert parity_error(logits / 100, logits / 100 + 1e-4) > parity_bar(logits / 100)

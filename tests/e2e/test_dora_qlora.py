"""DoRA and QLoRA through PEFT: what trains, what stays frozen, and an export that merges into the
full-precision base with the parity check (export.merge_adapter)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tunesmith import api
from tunesmith.config import build_config
from tunesmith.errors import UserError
from tunesmith.tasks import instruct

from ..conftest import tiny_config, train_task_steps, write_jsonl


def _bitsandbytes_4bit_runs_here() -> bool:
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or _cpu_4bit()


def _cpu_4bit() -> bool:
    # bitsandbytes >= 0.46 quantises and multiplies 4-bit NF4 on the CPU too.
    try:
        import bitsandbytes.functional as bnbf

        weights, state = bnbf.quantize_4bit(torch.randn(64, 64), quant_type="nf4")
        return bnbf.dequantize_4bit(weights, state).shape == (64, 64)
    except Exception:
        return False


needs_4bit = pytest.mark.skipif(not _bitsandbytes_4bit_runs_here(), reason="bitsandbytes 4-bit unavailable")


def _check_what_trained(model, before) -> tuple[int, int]:
    trained, frozen = 0, 0
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            trained += 1
            assert not torch.equal(parameter, before[name]), f"{name} did not change"
        else:
            frozen += 1
            assert torch.equal(parameter, before[name]), f"frozen {name} changed"
    return trained, frozen


def _merged_equals_base_plus_adapter(result, base_dir) -> None:
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir, dtype=torch.float32).eval()
    assert not hasattr(merged, "peft_config")
    assert all(p.dtype == torch.float32 for p in merged.parameters())  # never the 4-bit weights
    assert "quantization_config" not in merged.config.to_dict()
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, result.final_dir).eval()
    input_ids = torch.randint(
        0, merged.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        want = reference(input_ids=input_ids, use_cache=False).logits
        got = merged(input_ids=input_ids, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_dora_trains_its_magnitudes_and_adapters_and_nothing_else(tiny_llama, tmp_path, instruct_rows):
    train_file = write_jsonl(tmp_path / "train.jsonl", instruct_rows)
    adapter = {"method": "lora", "use_dora": True, "r": 4, "alpha": 8, "dropout": 0.0}
    config = build_config(tiny_config(tiny_llama, train_file, tmp_path / "runs", adapter=adapter))
    model, _, _, before, records = train_task_steps(instruct, config)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in names) and any("lora_A" in n for n in names)
    trained, frozen = _check_what_trained(model, before)
    assert trained > 0 and frozen > 0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


@pytest.mark.slow  # a whole run with its export: ~30 s on 2 busy cores
def test_dora_run_merges_with_parity(tiny_llama, tmp_path, instruct_rows):
    train_file = write_jsonl(tmp_path / "train.jsonl", instruct_rows)
    adapter = {"method": "lora", "use_dora": True, "r": 4, "alpha": 8, "dropout": 0.0}
    config = build_config(tiny_config(tiny_llama, train_file, tmp_path / "runs", adapter=adapter))
    result = api.train(config, merge=True)
    _merged_equals_base_plus_adapter(result, tiny_llama)


@needs_4bit
def test_qlora_trains_the_adapter_on_4bit_base_weights(tiny_llama, tmp_path, instruct_rows):
    import bitsandbytes as bnb

    train_file = write_jsonl(tmp_path / "train.jsonl", instruct_rows)
    adapter = {"method": "qlora", "r": 4, "alpha": 8, "dropout": 0.0}
    config = build_config(tiny_config(tiny_llama, train_file, tmp_path / "runs", adapter=adapter))
    model, _, _, before, records = train_task_steps(instruct, config)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(m.weight.quant_state.quant_type == "nf4" for m in quantized)
    assert all(m.weight.quant_state.nested for m in quantized)  # double quantisation
    assert all(m.compute_dtype == torch.bfloat16 for m in quantized)
    trained, frozen = _check_what_trained(model, before)
    assert trained > 0 and frozen > 0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


@pytest.mark.slow
@needs_4bit
def test_qlora_export_merges_into_the_full_precision_base(tiny_llama, tmp_path, instruct_rows):
    train_file = write_jsonl(tmp_path / "train.jsonl", instruct_rows)
    adapter = {"method": "qlora", "r": 4, "alpha": 8, "dropout": 0.0}
    config = build_config(tiny_config(tiny_llama, train_file, tmp_path / "runs", adapter=adapter))
    result = api.train(config, merge=True)
    _merged_equals_base_plus_adapter(result, tiny_llama)


def test_qlora_without_bitsandbytes_is_a_clear_config_error(tiny_llama, tmp_path, instruct_rows, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # find_spec then answers "not installed"
    values = tiny_config(tiny_llama, tmp_path / "t.jsonl", tmp_path / "runs", adapter={"method": "qlora"})
    with pytest.raises(UserError, match=r'adapter.*pip install "tunesmith\[gpu\]"'):
        build_config(values)
    # Through the CLI: exit code 2, one error line, no traceback.
    values["data"]["train"] = str(write_jsonl(tmp_path / "train.jsonl", instruct_rows))
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(values))
    code = "import sys; sys.modules['bitsandbytes'] = None; from tunesmith.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "train", str(config_file)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert 'pip install "tunesmith[gpu]"' in result.stderr.replace("\n", " ")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("adapter", "task", "fragment"),
    [
        ({"method": "full", "use_dora": True}, "instruct", "use_dora"),
        ({"method": "qlora"}, "classify", "qlora"),
    ],
)
def test_adapter_combinations_that_cannot_train_are_refused(adapter, task, fragment, tmp_path):
    values = {"task": task, "adapter": adapter, "data": {"train": "x.jsonl"}}
    with pytest.raises(UserError, match=fragment):
        build_config(values)

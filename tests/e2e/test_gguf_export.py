"""`tunesmith export --format gguf` on tiny trained runs: the file reloads with transformers and
predicts what the merged model predicts; the Modelfile matches the trained template; bad cases
give one clear error and leave nothing behind."""

from __future__ import annotations

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from tunesmith import api
from tunesmith.cli import app
from tunesmith.data.templates import encode_prompt, end_of_turn_ids, resolve_chat_template
from tunesmith.errors import UserError
from tunesmith.export import converter, modelfile
from tunesmith.export import gguf as gguf_export

from ..reliability.helpers import instruct_file, make_config
from ..unit.test_gguf_modelfile import CONVERSATION, ollama_render


def _converter_present() -> bool:
    try:
        converter.find_converter()
    except UserError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _converter_present(), reason="llama.cpp's converter is not fetched (make gguf-tools)"
)


@pytest.fixture(scope="module")
def lora_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-run")
    config = make_config(tiny_models["llama"], instruct_file(root), root / "runs", train__max_steps=4)
    return api.train(config)


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf-export") / "gguf"
    result = CliRunner().invoke(app, ["export", str(lora_run.run_dir), "--format", "gguf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "parity check: GGUF == merged model" in result.output
    return out


def _merged_reference(run_dir):
    model, tokenizer = api.load_for_inference(str(run_dir), device="cpu")
    return model.merge_and_unload().eval(), tokenizer


def test_f16_gguf_reloads_with_the_merged_models_logits_and_greedy_tokens(lora_run, exported, tiny_models):
    assert sorted(p.name for p in exported.iterdir()) == [
        ".tunesmith-output.json",  # the output marker: a later export may replace this folder
        "Modelfile",
        "README.md",
        "model.gguf",
        "tunesmith.json",
    ]
    assert not exported.with_name(exported.name + ".tmp").exists()
    reference, tokenizer = _merged_reference(lora_run.run_dir)
    loaded = AutoModelForCausalLM.from_pretrained(
        exported, gguf_file="model.gguf", dtype=torch.float32
    ).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    input_ids = torch.randint(0, tokenizer.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(input_ids=input_ids).logits
        scale = expected.abs().max()
        error = float((loaded(input_ids=input_ids).logits - expected).abs().max() / scale)
        adapter_effect = float((base(input_ids=input_ids).logits - expected).abs().max() / scale)
    assert error < gguf_export.LOGIT_TOLERANCE["f16"]
    assert adapter_effect > 10 * error  # the file is the merged model, not the base
    template = resolve_chat_template(tokenizer)
    prompt = torch.tensor([encode_prompt(tokenizer, template, CONVERSATION)])
    greedy = [
        model.generate(
            input_ids=prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0
        )
        for model in (reference, loaded)
    ]
    assert greedy[0].tolist() == greedy[1].tolist()


def test_gguf_carries_the_trained_template_and_its_end_of_turn_token(lora_run, exported):
    tokenizer = AutoTokenizer.from_pretrained(lora_run.final_dir)
    reader = gguf.GGUFReader(exported / "model.gguf")
    assert reader.fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    assert reader.fields["tokenizer.ggml.eot_token_id"].contents() == tokenizer.convert_tokens_to_ids(
        "<|im_end|>"
    )
    rebuilt = AutoTokenizer.from_pretrained(exported, gguf_file="model.gguf")
    text = resolve_chat_template(tokenizer).render(tokenizer, CONVERSATION, add_generation_prompt=True)
    assert (
        rebuilt(text, add_special_tokens=False)["input_ids"]
        == tokenizer(text, add_special_tokens=False)["input_ids"]
    )


def test_modelfile_template_and_stops_match_the_trained_template(lora_run, exported):
    tokenizer = AutoTokenizer.from_pretrained(lora_run.final_dir)
    template = resolve_chat_template(tokenizer)
    parsed = modelfile.parse_modelfile((exported / "Modelfile").read_text())
    assert parsed["from"] == "./model.gguf"
    for messages in (CONVERSATION, CONVERSATION[1:2]):
        expected = template.render(tokenizer, messages, add_generation_prompt=True)
        assert ollama_render(parsed["template"], messages) == expected
    stops = {tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(tokenizer, template)}
    assert set(parsed["stops"]) == stops and "<|im_end|>" in stops
    card = (exported / "README.md").read_text()
    assert "## GGUF" in card and "max |logit difference|" in card and "ollama create" in card


def test_q8_0_export_of_a_full_qwen2_model_stays_within_its_tolerance(tiny_models, tmp_path):
    result = gguf_export.export_gguf(tiny_models["qwen2"], tmp_path / "q8", quant="q8_0")
    assert result.gguf_file.is_file() and result.quant == "q8_0"
    assert result.logit_error <= gguf_export.LOGIT_TOLERANCE["q8_0"]
    f16 = gguf_export.export_gguf(tiny_models["qwen2"], tmp_path / "f16", quant="f16")
    assert f16.logit_error < result.logit_error  # quantising to 8 bits costs more than to 16
    assert result.size_bytes < f16.size_bytes


def test_a_corrupted_gguf_file_is_a_clear_error(lora_run, exported, tmp_path):
    hf_dir = api.merge_adapter(str(lora_run.run_dir), tmp_path / "hf")
    broken = tmp_path / "broken" / "model.gguf"
    broken.parent.mkdir()
    data = (exported / "model.gguf").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable GGUF model"):
        gguf_export.check_parity(hf_dir, broken, "f16")
    broken.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(UserError, match="not a readable GGUF model"):
        gguf_export.check_parity(hf_dir, broken, "f16")


def test_failed_parity_leaves_nothing_written(lora_run, tmp_path, monkeypatch):
    from tunesmith.outputs import write_marker

    out = tmp_path / "gguf"
    out.mkdir()
    (out / "keep.txt").write_text("an older export")
    write_marker(out, gguf_export.GGUF_PURPOSE)  # an earlier GGUF export: the only kind it may replace
    monkeypatch.setitem(gguf_export.LOGIT_TOLERANCE, "f16", 0.0)
    with pytest.raises(UserError, match="differs from the merged model"):
        gguf_export.export_gguf(lora_run.run_dir, out, quant="f16")
    assert sorted(p.name for p in out.iterdir()) == [".tunesmith-output.json", "keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_unsupported_architecture_is_refused_with_the_supported_list(tiny_models, tmp_path):
    out = tmp_path / "gpt2-gguf"
    result = CliRunner().invoke(
        app, ["export", str(tiny_models["gpt2"]), "--format", "gguf", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "GGUF export supports" in result.output and "GPT2LMHeadModel" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not (tmp_path / "gpt2-gguf.tmp").exists()


def test_an_unknown_quantisation_is_refused(lora_run, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "export",
            str(lora_run.run_dir),
            "--format",
            "gguf",
            "--quant",
            "q3_k",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "--quant q3_k" in result.output
    assert not (tmp_path / "o").exists()


def test_a_converter_folder_that_is_not_one_is_refused(lora_run, tmp_path):
    fake = tmp_path / "llama.cpp"
    fake.mkdir()
    result = CliRunner().invoke(
        app,
        [
            "export",
            str(lora_run.run_dir),
            "--format",
            "gguf",
            "--llama-cpp",
            str(fake),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "--llama-cpp" in result.output


def test_a_qwen3_model_exports_with_parity(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from ..conftest import _copy_tokenizer

    model_dir = tmp_path / "qwen3"
    model_dir.mkdir()
    _copy_tokenizer(model_dir)
    torch.manual_seed(0)
    # head_dim 128 as in every released Qwen3 (transformers' GGUF reader assumes it for qwen3).
    config = Qwen3Config(
        vocab_size=len(AutoTokenizer.from_pretrained(model_dir)),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=128,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    Qwen3ForCausalLM(config).save_pretrained(model_dir)
    result = gguf_export.export_gguf(model_dir, tmp_path / "out", quant="f16")
    assert result.logit_error < gguf_export.LOGIT_TOLERANCE["f16"] and result.greedy_check == "identical"
    reader = gguf.GGUFReader(result.gguf_file)
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "qwen3"

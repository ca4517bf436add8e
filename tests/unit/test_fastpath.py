"""The fast path gives the same loss and gradients as the plain path (train/fastpath.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from tunesmith.data.pack import collate_rows
from tunesmith.data.tokenize import Example
from tunesmith.errors import UserError
from tunesmith.train.fastpath import (
    choose_attention,
    choose_fast_path,
    compile_blocks,
    static_collate,
    use_attention,
)
from tunesmith.train.loss import CausalLMLoss, chunked_cross_entropy, fused_linear_cross_entropy


def _loss_and_grads(function, head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, chunk: int):
    head.zero_grad()
    hidden = hidden.clone().requires_grad_()
    loss, correct = function(hidden, head, targets, chunk)
    (loss * 0.37).backward()  # a scale like the loop's 1 / step_targets
    grads = [hidden.grad, head.weight.grad] + ([head.bias.grad] if head.bias is not None else [])
    return loss.detach(), int(correct), grads


@pytest.mark.parametrize("bias", [False, True])
def test_fused_cross_entropy_equals_chunked(bias: bool) -> None:
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=bias)
    hidden = torch.randn(70, 16)
    targets = torch.randint(0, 50, (70,))
    targets[::5] = -100  # ignored positions contribute neither loss nor gradient
    targets[3] = int(head(hidden[3]).argmax())  # at least one correct prediction to count
    expected = _loss_and_grads(chunked_cross_entropy, head, hidden, targets, 16)
    fused = _loss_and_grads(fused_linear_cross_entropy, head, hidden, targets, 16)
    assert fused[0].item() == pytest.approx(expected[0].item(), rel=1e-6)
    assert fused[1] == expected[1] >= 1
    for got, want in zip(fused[2], expected[2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_fused_cross_entropy_frozen_head_and_no_grad() -> None:
    torch.manual_seed(0)
    head = nn.Linear(8, 20, bias=False).requires_grad_(False)  # LoRA: the LM head is frozen
    hidden = torch.randn(9, 8, requires_grad=True)
    targets = torch.randint(0, 20, (9,))
    loss, _ = fused_linear_cross_entropy(hidden, head, targets, 4)
    loss.backward()
    assert head.weight.grad is None and hidden.grad is not None and hidden.grad.abs().sum() > 0
    with torch.no_grad():
        again, _ = fused_linear_cross_entropy(hidden, head, targets, 4)
    assert float(again) == pytest.approx(float(loss.detach()), rel=1e-6)
    # No supervised position: zero loss, still backpropagates (zero gradients).
    empty = torch.zeros(0, 8, requires_grad=True)
    zero, hits = fused_linear_cross_entropy(empty, head, targets[:0], 4)
    zero.backward()
    assert float(zero) == 0.0 and int(hits) == 0


def test_static_collate_pads_rows_without_changing_targets() -> None:
    examples = [Example([5, 6, 7], [-100, 6, 7]), Example([8, 9], [-100, 9])]
    plain = collate_rows([[0, 1]], examples, pad_id=0)
    padded = static_collate(lambda rows: collate_rows(rows, examples, pad_id=0), 12, pad_id=0)([[0, 1]])
    assert padded["input_ids"].shape == (1, 12)
    assert padded["input_ids"][0, :5].tolist() == plain["input_ids"][0].tolist()
    assert padded["input_ids"][0, 5:].tolist() == [0] * 7
    assert (padded["labels"][0, 5:] == -100).all()
    assert padded["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4, 5, 6]
    assert padded["num_targets"] == plain["num_targets"] == 3


def _tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    return model


@pytest.mark.slow  # inductor compiles C++ for the CPU: ~35 s cold on 2 busy cores, ~5 s with a warm cache
def test_compiled_blocks_train_like_eager() -> None:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length in (20, 35, 11, 40, 17, 9):
        ids = torch.randint(3, 300, (length,), generator=generator).tolist()
        examples.append(Example(ids, [-100] + ids[1:]))
    collate = static_collate(lambda rows: collate_rows(rows, examples, pad_id=0), 64, pad_id=0)
    eager_model = _tiny_llama()
    compiled_model = copy.deepcopy(eager_model)
    eager = CausalLMLoss(eager_model)
    compiled = CausalLMLoss(compiled_model, cross_entropy=fused_linear_cross_entropy)
    assert len(compile_blocks(compiled)) == 2
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (eager_model, compiled_model)]
    for rows in ([0, 1], [2, 3], [4, 5]):
        batch = collate([rows])
        del batch["num_targets"]
        losses = []
        for module, optimizer in zip((eager, compiled), optimizers, strict=True):
            out = module(**batch)
            out["loss_sum"].backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(out["loss_sum"].detach()))
        assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    # Parameter names are untouched: checkpoints of a compiled run load into an eager model.
    assert compiled_model.state_dict().keys() == eager_model.state_dict().keys()


def _config(compile: bool):
    from tunesmith.config import build_config

    return build_config(
        {
            "task": "instruct",
            "model": {"name": "embedded"},
            "data": {"train": "x.jsonl", "max_seq_len": 48},
            "train": {"compile": compile},
        }
    )


def test_the_fast_path_is_a_choice_the_loss_and_collate_are_built_with() -> None:
    model = _tiny_llama()
    plain = choose_fast_path(_config(False), "cpu", model, pad_id=0)
    # CPU: the pure-PyTorch fused cross-entropy; no compile, batches exactly as the task makes them.
    assert plain.cross_entropy is fused_linear_cross_entropy and not plain.compile
    examples = [Example([5, 6, 7], [-100, 6, 7]), Example([8, 9], [-100, 9])]

    def collate(rows):
        return collate_rows(rows, examples, pad_id=0)

    assert plain.wrap_collate(collate) is collate
    assert CausalLMLoss(model, cross_entropy=plain.cross_entropy).cross_entropy is fused_linear_cross_entropy
    static = choose_fast_path(_config(True), "cpu", model, pad_id=0)
    assert static.compile and static.wrap_collate(collate)([[0, 1]])["input_ids"].shape == (1, 48)
    # Soft-capped logits keep the chunked path, the only one applying the cap.
    model.config.final_logit_softcapping = 30.0
    assert choose_fast_path(_config(False), "cpu", model, pad_id=0).cross_entropy is chunked_cross_entropy


def _config_attention(attention: str):
    from tunesmith.config import build_config

    return build_config(
        {"task": "instruct", "model": {"attn_implementation": attention}, "data": {"train": "x.jsonl"}}
    )


def test_attention_is_chosen_once_flex_on_cuda_when_auto() -> None:
    model = _tiny_llama()
    # CUDA + auto: flex attention with the document BlockMask, for models that support it.
    assert choose_attention("auto", "cuda", model)[0] == "flex_attention"
    assert choose_attention("auto", "cuda:1", model)[0] == "flex_attention"
    # An explicit kernel is what the model was loaded with: nothing to switch.
    assert choose_attention("sdpa", "cuda", model) == (None, None)
    assert choose_attention("eager", "cpu", model) == (None, None)
    model._supports_flex_attn = False
    assert choose_attention("auto", "cuda", model) == (None, None)
    use_attention(model, "eager")
    assert model.config._attn_implementation == "eager"
    use_attention(model, None)
    assert model.config._attn_implementation == "eager"


def test_auto_on_the_cpu_picks_the_document_kernel_for_small_heads_and_says_why_not_otherwise() -> None:
    from tunesmith.train import cpu_attention

    small = _tiny_llama()  # head_dim 8 (test helpers): the C kernel, where it beats SDPA
    chosen = choose_fast_path(_config_attention("auto"), "cpu", small, pad_id=0)
    if cpu_attention._compiler() is None:
        assert chosen.attention is None and "no C compiler" in chosen.attention_note
        return
    assert chosen.attention == "cpu_varlen" and "cpu_varlen" in chosen.attention_note
    use_attention(small, chosen.attention)
    assert small.config._attn_implementation == "cpu_varlen"
    # Compiled blocks need attention dynamo can trace: auto keeps SDPA there.
    compiled = choose_fast_path(
        _config_attention("auto").model_copy(
            update={"train": _config_attention("auto").train.model_copy(update={"compile": True})}
        ),
        "cpu",
        _tiny_llama(),
        0,
    )
    assert compiled.attention is None
    # Head dimension 16 and up: SDPA is faster on long documents (benchmarks/RESULTS.md): auto keeps SDPA.
    wide = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )  # fmt: skip
    )
    attention, note = choose_attention("auto", "cpu", wide)
    assert attention is None and "head dimension 16 > 8" in note
    assert choose_attention("cpu_varlen", "cpu", wide)[0] == "cpu_varlen"  # asked for: it runs
    # Asked for explicitly, a model it cannot compute is an error naming the key and the reason.
    wide.config.sliding_window = 16
    with pytest.raises(UserError, match="model.attn_implementation: cpu_varlen .*sliding-window"):
        choose_attention("cpu_varlen", "cpu", wide)
    with pytest.raises(UserError, match="device is cuda"):
        choose_attention("cpu_varlen", "cuda", small)


def _packed_batch():
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length in (20, 35, 11, 40, 17, 9):
        ids = torch.randint(3, 300, (length,), generator=generator).tolist()
        examples.append(Example(ids, [-100] + ids[1:]))
    batch = collate_rows([[0, 1, 2], [3, 4, 5]], examples, pad_id=0)
    del batch["num_targets"]
    assert "attention_mask" not in batch  # packed: documents come from the restarting position_ids
    return batch


@pytest.mark.slow  # flex attention compiles its kernel (inductor, C++ on the CPU): ~30 s cold
def test_flex_attention_gives_the_reference_loss_on_a_packed_batch() -> None:
    batch = _packed_batch()
    model = _tiny_llama().eval()
    with torch.no_grad():  # flex attention has no backward on the CPU; the forward runs there
        reference = CausalLMLoss(model)(**batch)
        use_attention(model, "flex_attention")
        flex = CausalLMLoss(model, cross_entropy=fused_linear_cross_entropy)(**batch)
    assert model.config._attn_implementation == "flex_attention"
    torch.testing.assert_close(flex["loss_sum"], reference["loss_sum"], rtol=1e-5, atol=1e-5)
    assert int(flex["num_correct"]) == int(reference["num_correct"])


@pytest.mark.gpu
def test_flex_attention_trains_like_sdpa_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    batch = {k: v.cuda() for k, v in _packed_batch().items()}
    sdpa_model = _tiny_llama().cuda()
    flex_model = copy.deepcopy(sdpa_model)
    use_attention(flex_model, "flex_attention")
    results = []
    for model in (sdpa_model, flex_model):
        out = CausalLMLoss(model)(**batch)
        out["loss_sum"].backward()
        results.append((out["loss_sum"].detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    for got, want in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

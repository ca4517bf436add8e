"""The per-document CPU attention kernel (train/cpu_attention.py) against SDPA: values, gradients,
padding, a whole model in training and in generation, and how the kernel is built."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tunesmith.train import cpu_attention

pytestmark = pytest.mark.skipif(cpu_attention._compiler() is None, reason="no C compiler to build the kernel")


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """[T, H, D] tokens of consecutive documents: plain causal SDPA on each document alone."""
    outs, start = [], 0
    for length in lengths:
        part = [x[start : start + length].transpose(0, 1)[None] for x in (q, k, v)]
        out = F.scaled_dot_product_attention(*part, is_causal=True, enable_gqa=True)
        outs.append(out[0].transpose(0, 1))
        start += length
    return torch.cat(outs)


def _tokens(lengths: list[int], heads: int, kv_heads: int, head_dim: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, head_dim, generator=generator) for h in (heads, kv_heads, kv_heads))
    return [x.requires_grad_() for x in (q, k, v)], torch.randn(total, heads, head_dim, generator=generator)


@pytest.mark.parametrize(
    ("lengths", "heads", "kv_heads", "head_dim"),
    [
        ([13, 1, 40, 7, 27], 8, 4, 8),  # GQA, a one-token document
        ([64], 9, 3, 64),  # one long document, SmolLM2's head shape
        ([5, 33, 2], 4, 1, 16),  # MQA
        ([100, 3], 2, 2, 32),
    ],
)
def test_values_and_gradients_equal_sdpa_on_each_document(lengths, heads, kv_heads, head_dim) -> None:
    (q, k, v), grad = _tokens(lengths, heads, kv_heads, head_dim)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    plan = cpu_attention.make_plan(position_ids, None, 1, sum(lengths), kv_heads, num_threads=2)
    assert torch.equal(plan.offsets, offsets) and not plan.has_padding
    ours = cpu_attention._DocumentAttention.apply(q, k, v, plan, head_dim**-0.5)
    ours.backward(grad)
    ours_grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    reference = _reference(q, k, v, lengths)
    reference.backward(grad)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=2e-5)
    for mine, theirs in zip(ours_grads, (q.grad, k.grad, v.grad), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=5e-5)


def test_padding_is_skipped_and_real_tokens_see_only_real_tokens() -> None:
    batch, length, heads, kv_heads, head_dim = 3, 12, 4, 2, 8
    generator = torch.Generator().manual_seed(1)
    # transformers' layout: [B, H, S, D] views of [B, S, H, D] projections
    q = torch.randn(batch, length, heads, head_dim, generator=generator).transpose(1, 2).requires_grad_()
    k = torch.randn(batch, length, kv_heads, head_dim, generator=generator).transpose(1, 2).requires_grad_()
    v = torch.randn(batch, length, kv_heads, head_dim, generator=generator).transpose(1, 2).requires_grad_()
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 9:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    plan = cpu_attention.make_plan(None, mask, batch, length, kv_heads, num_threads=2)
    assert plan.has_padding
    out = cpu_attention.document_attention(q, k, v, plan, head_dim**-0.5)  # [B, S, H, D]
    (out * mask[:, :, None, None]).sum().backward()
    assert torch.count_nonzero(out[0, 9:]) == 0 and torch.count_nonzero(out[2, :4]) == 0
    for row, real in ((0, slice(0, 9)), (1, slice(0, 12)), (2, slice(4, 12))):
        alone = F.scaled_dot_product_attention(
            q[row : row + 1, :, real], k[row : row + 1, :, real], v[row : row + 1, :, real],
            is_causal=True, enable_gqa=True,
        )  # fmt: skip
        torch.testing.assert_close(out[row, real], alone[0].transpose(0, 1), rtol=1e-4, atol=2e-5)
    # Padding keys get no gradient: nothing attended to them.
    assert torch.count_nonzero(k.grad[0, :, 9:]) == 0 and torch.count_nonzero(v.grad[2, :, :4]) == 0


def _pair(num_layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=num_layers,
        num_attention_heads=8, num_key_value_heads=4, head_dim=8, attn_implementation="sdpa",
    )  # fmt: skip
    reference = LlamaForCausalLM(config)
    ours = copy.deepcopy(reference)
    cpu_attention.register()
    ours.set_attn_implementation(cpu_attention.NAME)
    return reference, ours


def test_a_model_trains_on_packed_rows_exactly_as_with_sdpa_and_its_block_mask() -> None:
    reference, ours = _pair()
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 120, (3, 40), generator=generator)
    position_ids = torch.cat([torch.arange(13), torch.arange(20), torch.arange(7)]).expand(3, 40).clone()
    position_ids[1] = torch.arange(40)
    results = []
    for model in (reference, ours):
        out = model(input_ids=ids, labels=ids, position_ids=position_ids, use_cache=False)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-6)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-6)


def test_generation_with_left_padding_matches_sdpa_token_for_token() -> None:
    # Prefill runs the kernel (the 2D mask reaches it), decode steps with a cache take SDPA.
    reference, ours = _pair()
    prompt = torch.randint(3, 120, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    with torch.no_grad():
        expected = reference.eval().generate(
            input_ids=prompt, attention_mask=mask, max_new_tokens=12, do_sample=False
        )
        got = ours.eval().generate(input_ids=prompt, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert torch.equal(got, expected)


def test_the_plan_is_made_once_per_forward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    _, ours = _pair(num_layers=3)
    made = []
    original = cpu_attention.make_plan
    monkeypatch.setattr(cpu_attention, "make_plan", lambda *a, **k: made.append(1) or original(*a, **k))
    ids = torch.randint(0, 120, (2, 16))
    with torch.no_grad():
        ours(input_ids=ids, use_cache=False)
        ours(input_ids=ids, use_cache=False)
    assert len(made) == 2  # 3 layers each time, one plan per forward pass


def test_models_it_cannot_compute_are_named_at_setup() -> None:
    from transformers import BertConfig, BertModel

    _, ours = _pair()
    assert cpu_attention.unsupported_reason(ours) is None
    ours.config.sliding_window = 32
    assert "sliding-window" in cpu_attention.unsupported_reason(ours)
    bert = BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    assert "not a causal decoder" in cpu_attention.unsupported_reason(bert)
    assert "bfloat16" in cpu_attention.unsupported_reason(copy.deepcopy(ours).to(torch.bfloat16))


def test_without_a_compiler_the_kernel_is_unavailable_with_the_reason(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(cpu_attention, "_compiler", lambda: None)
    monkeypatch.setattr(cpu_attention, "_libraries", {})
    with pytest.raises(cpu_attention.KernelUnavailable, match="no C compiler"):
        cpu_attention.kernel_library(8, cache_dir=tmp_path)


def test_the_build_is_cached_and_leaves_denormals_alone(tmp_path, monkeypatch) -> None:
    # -ffast-math with -shared links crtfastmath on gcc 12, which flushes denormals to zero in the
    # whole process as soon as the library loads; the build must not do that.
    monkeypatch.setattr(cpu_attention, "_libraries", {})
    cpu_attention.kernel_library(12, cache_dir=tmp_path)
    built = list(tmp_path.glob("cpu_attention-d12-*.so"))
    assert len(built) == 1 and not list(tmp_path.glob("*.partial-*"))
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    assert float(tiny * 1.0) > 0.0
    monkeypatch.setattr(cpu_attention, "_libraries", {})
    cpu_attention.kernel_library(12, cache_dir=tmp_path)  # reused, not rebuilt
    assert list(tmp_path.glob("cpu_attention-d12-*.so")) == built


def test_threads_share_torchs_openmp_runtime_and_give_identical_results() -> None:
    # Each (document, kv head) task runs whole on one thread: any thread count gives the same bits.
    lengths, heads, kv_heads, head_dim = [30, 5, 61, 12], 8, 4, 8
    (q, k, v), grad = _tokens(lengths, heads, kv_heads, head_dim, seed=4)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    results = []
    for threads in (1, 2):
        plan = cpu_attention.make_plan(position_ids, None, 1, sum(lengths), kv_heads, num_threads=threads)
        out = cpu_attention._DocumentAttention.apply(q, k, v, plan, head_dim**-0.5)
        out.backward(grad)
        results.append([out.detach().clone()] + [x.grad.clone() for x in (q, k, v)])
        for x in (q, k, v):
            x.grad = None
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)
    # Built with -fopenmp, the kernel binds to the libgomp.so.1 torch loaded: one OpenMP runtime, one
    # pool (a second runtime's threads would fight torch's spinning workers for the cores). Other
    # wheels (scikit-learn, sentencepiece) bring copies renamed libgomp-<hash>.so.1.0.0 of their own.
    maps = Path("/proc/self/maps")
    if maps.exists():
        plain = {line.split()[-1] for line in maps.read_text().splitlines() if line.endswith("/libgomp.so.1")}
        torch_copy = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
        assert plain <= {str(torch_copy)}, plain

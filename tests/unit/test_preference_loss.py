"""Preference losses against TRL's formulas, reply-only log-probs, and the LoRA reference.

TRL's formulas are written out here from its source (trl 1.16.0), independently of tunesmith:
- trl/trainer/dpo_trainer.py, `_compute_loss`: chosen_logratios = chosen_logps - ref_chosen_logps,
  delta = chosen_logratios - rejected_logratios; "sigmoid": -logsigmoid(beta * delta); "ipo": the
  log-ratios divided by the completion lengths, then (delta - 1 / (2 * beta)) ** 2. Label smoothing
  is the conservative-DPO form of TRL's earlier `dpo_loss` (trl <= 0.x "sigmoid").
- trl/experimental/cpo/cpo_trainer.py, `cpo_loss` with loss_type "simpo": average log-probs,
  logits = chosen - rejected - simpo_gamma / beta, then the label-smoothed logsigmoid.
"""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.data.preference import PairExample, collate_pairs
from tunesmith.data.tokenize import Example
from tunesmith.train.loss import sequence_logps
from tunesmith.train.preference_loss import PreferenceLoss, preference_losses


def _logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def trl_sigmoid(pc, pr, rc, rr, beta, label_smoothing):
    delta = (pc - rc) - (pr - rr)
    return -_logsigmoid(beta * delta) * (1 - label_smoothing) - _logsigmoid(-beta * delta) * label_smoothing


def trl_ipo(pc, pr, rc, rr, nc, nr, beta):
    delta = (pc - rc) / max(nc, 1) - (pr - rr) / max(nr, 1)
    return (delta - 1 / (2 * beta)) ** 2


def trl_simpo(pc, pr, nc, nr, beta, gamma, label_smoothing):
    logits = pc / nc - pr / nr - gamma / beta
    return -_logsigmoid(beta * logits) * (1 - label_smoothing) - _logsigmoid(-beta * logits) * label_smoothing


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(3)
    pc, pr, rc, rr = (-torch.rand(16, generator=generator, dtype=torch.float64) * 80 for _ in range(4))
    nc = torch.randint(1, 60, (16,), generator=generator).double()
    nr = torch.randint(1, 60, (16,), generator=generator).double()
    return pc, pr, rc, rr, nc, nr


@pytest.mark.parametrize("beta,label_smoothing", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)])
def test_dpo_equals_trl_sigmoid(batch, beta, label_smoothing):
    pc, pr, rc, rr, _, _ = batch
    losses, chosen_rewards, rejected_rewards = preference_losses("dpo", pc, pr, rc, rr, beta, label_smoothing)
    for i in range(len(pc)):
        expected = trl_sigmoid(*(float(t[i]) for t in (pc, pr, rc, rr)), beta, label_smoothing)
        assert float(losses[i]) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert float(chosen_rewards[i]) == pytest.approx(beta * float(pc[i] - rc[i]))
        assert float(rejected_rewards[i]) == pytest.approx(beta * float(pr[i] - rr[i]))


def test_ipo_equals_trl_on_length_normalised_logps(batch):
    pc, pr, rc, rr, nc, nr = batch
    # tunesmith feeds IPO per-token means (PreferenceLoss divides by the reply lengths).
    losses, _, _ = preference_losses("ipo", pc / nc, pr / nr, rc / nc, rr / nr, 0.3)
    for i in range(len(pc)):
        expected = trl_ipo(*(float(t[i]) for t in (pc, pr, rc, rr, nc, nr)), 0.3)
        assert float(losses[i]) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_equals_trl_cpo_simpo(batch, label_smoothing):
    pc, pr, _, _, nc, nr = batch
    losses, chosen_rewards, _ = preference_losses(
        "simpo", pc / nc, pr / nr, None, None, 2.0, label_smoothing, simpo_gamma=0.5
    )
    for i in range(len(pc)):
        expected = trl_simpo(
            float(pc[i]), float(pr[i]), float(nc[i]), float(nr[i]), 2.0, 0.5, label_smoothing
        )
        assert float(losses[i]) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert float(chosen_rewards[i]) == pytest.approx(2.0 * float(pc[i] / nc[i]))


def _pair_examples(vocab: int, count: int = 3) -> list[PairExample]:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for k in range(count):
        prompt = torch.randint(3, vocab, (4 + k,), generator=generator).tolist()
        sides = []
        for length in (3 + k, 5):
            reply = torch.randint(3, vocab, (length,), generator=generator).tolist()
            sides.append(Example(prompt + reply, [-100] * len(prompt) + reply))
        examples.append(PairExample(sides[0], sides[1], f"f:{k}"))
    return examples


def _manual_reply_logps(model, example: Example) -> float:
    """log p(reply) from the model's full logits, one sequence at a time (the slow, obvious way)."""
    ids = torch.tensor([example.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].double()
    logps = logits.log_softmax(-1)
    total = 0.0
    for position, label in enumerate(example.labels[1:]):
        if label != -100:
            total += float(logps[position, label])
    return total


@pytest.mark.parametrize("packed", [False, True])
def test_sequence_logps_count_only_reply_tokens(tiny_llama, packed):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    examples = _pair_examples(model.config.vocab_size)
    rows = [[0, 1], [2]] if packed else [[0], [1], [2]]
    batch = collate_pairs(rows, examples, pad_id=0)
    assert batch["num_targets"] == 3
    with torch.no_grad():
        sums, counts = sequence_logps(
            model, batch["input_ids"], batch["labels"], batch["sequence_index"], 6, batch["position_ids"]
        )
    order = [i for row in rows for i in row]
    for k, index in enumerate(order):
        for side, example in enumerate((examples[index].chosen, examples[index].rejected)):
            assert float(sums[k + side * 3]) == pytest.approx(_manual_reply_logps(model, example), abs=1e-4)
            assert int(counts[k + side * 3]) == example.num_supervised


def test_lora_reference_equals_base_model(tiny_llama):
    """With LoRA the reference log-probs are the base model's, even after the adapter has moved."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0),
    )
    with torch.no_grad():  # move the adapter away from zero so policy != base
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    loss = PreferenceLoss(policy, "dpo", beta=0.1, reference="adapter_disabled").eval()
    examples = _pair_examples(base.config.vocab_size)
    batch = collate_pairs([[0], [1], [2]], examples, pad_id=0)
    inputs = {k: v for k, v in batch.items() if k != "num_targets"}
    out = loss(**inputs)
    for k, example in enumerate(examples):
        for side, sequence in enumerate((example.chosen, example.rejected)):
            base_logps = _manual_reply_logps(base, sequence)
            assert float(out["reference_logps"][k + side * 3]) == pytest.approx(base_logps, abs=1e-4)
    # The policy itself differs from the base (the test would pass trivially otherwise).
    assert not torch.allclose(out["chosen_logps"], out["reference_logps"][:3], atol=1e-3)
    # The reported loss is DPO's on those log-probs.
    expected, _, _ = preference_losses(
        "dpo",
        out["chosen_logps"],
        out["rejected_logps"],
        out["reference_logps"][:3],
        out["reference_logps"][3:],
        0.1,
    )
    assert float(out["loss_sum"]) == pytest.approx(float(expected.sum()), rel=1e-5)
    assert int(out["num_targets"]) == 3


def test_gradients_flow_to_lora_only_and_reference_has_none(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0),
    )
    loss = PreferenceLoss(policy, "dpo", beta=0.1, reference="adapter_disabled")
    batch = collate_pairs([[0], [1]], _pair_examples(policy.config.vocab_size, 2), pad_id=0)
    out = loss(**{k: v for k, v in batch.items() if k != "num_targets"})
    out["loss_sum"].backward()
    assert out["reference_logps"].grad_fn is None
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if "lora_B" in n)  # lora_A: 0 while B = 0


def test_cached_reference_is_used_and_lm_rows_give_the_causal_lm_loss(tiny_llama):
    from transformers import AutoModelForCausalLM

    from tunesmith.data.pack import collate_rows
    from tunesmith.train.loss import CausalLMLoss

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    examples = _pair_examples(model.config.vocab_size, 2)
    for example in examples:
        example.reference_logps = (-1.0, -2.0)
    batch = collate_pairs([[0], [1]], examples, pad_id=0)
    assert batch["reference_logps"].tolist() == [-1.0, -1.0, -2.0, -2.0]
    loss = PreferenceLoss(model, "dpo", beta=0.1, reference="precomputed")
    with torch.no_grad():
        out = loss(**{k: v for k, v in batch.items() if k != "num_targets"})
    assert out["reference_logps"].tolist() == [-1.0, -1.0, -2.0, -2.0]
    # Plain LM rows (the forgetting probe): the next-token loss, as CausalLMLoss computes it.
    lm_batch = collate_rows([[0]], [examples[0].chosen], 0)
    lm_batch.pop("num_targets")
    with torch.no_grad():
        ours, theirs = loss(**lm_batch), CausalLMLoss(model)(**lm_batch)
    assert float(ours["loss_sum"]) == pytest.approx(float(theirs["loss_sum"]), rel=1e-6)
    assert int(ours["num_targets"]) == int(theirs["num_targets"])


def test_reference_token_kl_is_the_exact_next_token_kl(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.train.preference_loss import reference_token_kl

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0),
    ).eval()
    loss = PreferenceLoss(policy, "dpo", beta=0.1, reference="adapter_disabled")
    examples = _pair_examples(base.config.vocab_size, 2)
    batch = collate_pairs([[0], [1]], examples, pad_id=0)
    total, positions = reference_token_kl(loss, batch)
    assert positions == sum(e.chosen.num_supervised + e.rejected.num_supervised for e in examples)
    assert total == pytest.approx(0.0, abs=1e-6)  # a fresh adapter (B = 0) is the base model
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    total, _ = reference_token_kl(loss, batch)
    expected = 0.0
    with torch.no_grad():
        for example in examples:
            for sequence in (example.chosen, example.rejected):
                ids = torch.tensor([sequence.input_ids])
                keep = torch.tensor(sequence.labels[1:]) != -100
                p = policy(input_ids=ids, use_cache=False).logits[0, :-1][keep].double().log_softmax(-1)
                q = base(input_ids=ids, use_cache=False).logits[0, :-1][keep].double().log_softmax(-1)
                expected += float((p.exp() * (p - q)).sum())
    assert expected > 1e-3
    assert total == pytest.approx(expected, rel=1e-4)

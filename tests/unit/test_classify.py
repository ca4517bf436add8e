"""Classification pieces: label sets, class weights, the weighted loss, last-token pooling, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunesmith.config import build_config
from tunesmith.data.formats import LabeledText
from tunesmith.data.labels import LabelSet, build_label_set, class_weights, collate_inputs
from tunesmith.data.load import Source
from tunesmith.data.tokenize import Example
from tunesmith.errors import UserError
from tunesmith.models.heads import classifier_logits, last_token_index, load_sequence_classifier
from tunesmith.models.load import load_tokenizer
from tunesmith.tasks import classify

from ..conftest import tiny_config, write_jsonl


def records(labels, path="train.jsonl"):
    return [LabeledText(f"text {i}", label, None, Source(path, i + 1)) for i, label in enumerate(labels)]


def classify_config(model_dir, train_file, tmp_path, **overrides):
    values = tiny_config(model_dir, train_file, tmp_path / "runs", task="classify", **overrides)
    return build_config(values)


def test_label_set_sorts_integer_labels_numerically_and_keeps_configured_order():
    assert build_label_set(records([10, 2, 2, 10]), [], None, False).names == ["2", "10"]
    configured = build_label_set(records(["pos", "neg"]), [], ["pos", "neg"], False)
    assert configured.names == ["pos", "neg"]
    assert configured.encode(records(["neg"])[0]) == 1


def test_label_outside_configured_labels_names_file_and_line():
    label_set = build_label_set(records(["pos", "neg"]), [], ["pos", "neg"], False)
    with pytest.raises(UserError, match=r"train.jsonl:3: label 'maybe' is not one of data.labels"):
        label_set.encode(records(["pos", "neg", "maybe"])[2])


def test_single_class_in_train_is_a_clear_error_naming_the_file():
    with pytest.raises(UserError, match=r"train.jsonl: every training example has label 'pos'"):
        build_label_set(records(["pos", "pos", "pos"]), records(["neg"], "eval.jsonl"), None, False)


def test_label_only_in_eval_is_reported_with_its_place():
    label_set = build_label_set(records(["a", "b", "a"]), records(["a", "c"], "eval.jsonl"), None, False)
    assert label_set.names == ["a", "b", "c"]
    assert label_set.only_in_eval == {"c": "eval.jsonl:2"}
    warnings = classify._label_warnings(label_set)
    assert len(warnings) == 1 and "'c'" in warnings[0] and "eval.jsonl:2" in warnings[0]


def test_balanced_weights_are_inverse_frequency_with_mean_one_over_training_examples():
    label_set = build_label_set(records(["a", "a", "a", "b"]), [], None, False)
    weights = class_weights(label_set, "balanced", 4)
    assert weights[1] / weights[0] == pytest.approx(3.0)
    assert (3 * weights[0] + weights[1]) / 4 == pytest.approx(1.0)
    explicit = class_weights(label_set, {"b": 5.0}, 4)
    assert explicit[1] / explicit[0] == pytest.approx(5.0)
    with pytest.raises(UserError, match="data.class_weights.*unknown label 'c'"):
        class_weights(label_set, {"c": 2.0}, 4)


def test_multilabel_balanced_weights_are_negatives_over_positives():
    label_set = LabelSet(["x", "y"], multi_label=True, train_counts={"x": 1, "y": 3})
    assert class_weights(label_set, "balanced", 4) == [3.0, pytest.approx(1 / 3)]


def sentiment_rows(count=24):
    words = {"good": "positive", "bad": "negative", "fine": "neutral"}
    return [
        {"text": f"this is {w} number {i}", "label": label}
        for i, (w, label) in enumerate(list(words.items()) * (count // 3))
    ]


def test_class_weights_change_the_loss_as_computed_by_hand(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows())
    explicit = {"negative": 1.0, "neutral": 4.0, "positive": 0.5}
    config = classify_config(
        tiny_llama,
        train,
        tmp_path,
        data={"train": str(train), "eval_fraction": 0.0, "class_weights": explicit, "check": False},
    )
    tokenizer = load_tokenizer(str(tiny_llama), config.model)
    prepared = classify.prepare_data(config, tokenizer)
    model = classify.build_model(str(tiny_llama), config, "cpu", prepared)
    loss_module = classify.make_loss(model, config).eval()
    batch = prepared.collate([[0], [1], [2], [5]])
    with torch.no_grad():
        out = loss_module(**{k: v for k, v in batch.items() if k != "num_targets"})
        logits = classifier_logits(model, batch["input_ids"], batch["attention_mask"])
    names = prepared.label_set.names
    labels = batch["labels"].tolist()
    raw = [explicit[names[y]] for y in labels]
    per_example = F.cross_entropy(logits, batch["labels"], reduction="none").tolist()
    hand = sum(w * loss for w, loss in zip(raw, per_example, strict=True)) / sum(raw)
    # The loop divides loss_sum by the step's num_targets (the weights' sum): the weights'
    # overall scale cancels, so the hand formula uses the raw config weights.
    assert float(out["loss_sum"]) / batch["num_targets"] == pytest.approx(hand, rel=1e-5)
    assert float(out["num_targets"]) == pytest.approx(batch["num_targets"])
    unweighted = sum(per_example) / len(per_example)
    assert abs(hand - unweighted) > 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_last_token_pooling_is_the_same_with_left_and_right_padding(tiny_models, arch):
    tokenizer = load_tokenizer(str(tiny_models[arch]), build_config({}).model)
    model, new_modules = load_sequence_classifier(
        str(tiny_models[arch]), build_config({}).model, "cpu", ["a", "b", "c"], tokenizer.pad_token_id
    )
    model.eval()
    assert new_modules == ["score"]
    texts = ["a short one", "a much longer sentence with quite a few more tokens in it"]
    examples = [Example(tokenizer(t)["input_ids"]) for t in texts]
    right = collate_inputs(examples, tokenizer.pad_token_id)
    lengths = right["attention_mask"].sum(-1)
    width = right["input_ids"].shape[1]
    left_ids = torch.full_like(right["input_ids"], tokenizer.pad_token_id)
    left_mask = torch.zeros_like(right["attention_mask"])
    for row, n in enumerate(lengths.tolist()):
        left_ids[row, width - n :] = right["input_ids"][row, :n]
        left_mask[row, width - n :] = 1
    assert last_token_index(left_mask).tolist() == [width - 1, width - 1]
    assert last_token_index(right["attention_mask"]).tolist() == (lengths - 1).tolist()
    with torch.no_grad():
        from_right = classifier_logits(model, right["input_ids"], right["attention_mask"])
        from_left = classifier_logits(model, left_ids, left_mask)
        alone = classifier_logits(
            model, right["input_ids"][:1, : lengths[0]], right["attention_mask"][:1, : lengths[0]]
        )
        # transformers' own forward (what a plain reload runs) agrees on right padding.
        plain = model(input_ids=right["input_ids"], attention_mask=right["attention_mask"]).logits
    torch.testing.assert_close(from_left, from_right, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone[0], from_right[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(plain, from_right, atol=1e-6, rtol=1e-5)


def test_missing_label_column_names_file_and_line(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "hi", "label": "a"}, {"text": "there"}])
    config = classify_config(tiny_llama, train, tmp_path)
    tokenizer = load_tokenizer(str(tiny_llama), config.model)
    with pytest.raises(UserError, match=r"train.jsonl:2: missing field `label`.*data.fields.label"):
        classify.prepare_data(config, tokenizer)


def test_empty_label_names_file_and_line(tiny_llama, tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl", [{"text": "hi", "label": "a"}, {"text": "yo", "label": " "}]
    )
    config = classify_config(tiny_llama, train, tmp_path)
    tokenizer = load_tokenizer(str(tiny_llama), config.model)
    with pytest.raises(UserError, match=r"train.jsonl:2: field `label` is empty"):
        classify.prepare_data(config, tokenizer)


def test_label_columns_need_multi_label(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "hi", "x": 1, "y": 0}])
    config = classify_config(
        tiny_llama, train, tmp_path, data={"train": str(train), "label_columns": ["x", "y"]}
    )
    with pytest.raises(UserError, match="data.label_columns` needs data.multi_label"):
        classify.prepare_data(config, load_tokenizer(str(tiny_llama), config.model))


@pytest.mark.parametrize("name", ["classify_lora.yaml", "classify_sst2.yaml"])
def test_shipped_classify_configs_load_and_prepare(name, monkeypatch, request):
    from tunesmith.config import load_config

    from ..conftest import REPO

    if "sst2" in name:
        request.getfixturevalue("shared_dir")
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "examples" / name)
    assert config.task == "classify"
    tokenizer = load_tokenizer("src/tunesmith/assets/base-model", config.model)
    prepared = classify.prepare_data(config, tokenizer)
    assert prepared.label_set.names == config.data.labels
    assert prepared.stats.warnings == [] and len(prepared.eval) > 0

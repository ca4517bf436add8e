"""A classify run exports with its trained head; the chat verbs refuse it and name `predict`."""

from __future__ import annotations

import csv

import pytest
import torch

from tunesmith.config import build_config

from ..conftest import tiny_config, write_jsonl

WORDS = {"positive": ["great", "lovely", "superb"], "negative": ["awful", "bad", "poor"]}


def rows(count: int = 24) -> list[dict]:
    labels = list(WORDS)
    return [
        {"text": f"the film was {WORDS[labels[i % 2]][i % 3]} overall", "label": labels[i % 2]}
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory, tiny_models):
    from tunesmith import api

    root = tmp_path_factory.mktemp("classify-export")
    train = write_jsonl(root / "train.jsonl", rows())
    values = tiny_config(tiny_models["llama"], train, root / "runs", task="classify")
    values["train"].update(max_steps=4, batch_size=4)
    api.train(build_config(values))
    return root, root / "runs" / "run"


def test_export_of_a_classifier_loads_with_its_head_and_predicts_as_the_run(classify_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunesmith import api

    root, run = classify_run
    out = api.merge_adapter(run, root / "exported")
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    tokenizer = AutoTokenizer.from_pretrained(out)
    data = write_jsonl(root / "predict.jsonl", rows(6))
    predictions = api.predict(str(run), str(data), root / "preds.csv")
    assert predictions["rows"] == 6
    expected = [
        [float(r["prob_negative"]), float(r["prob_positive"])]
        for r in csv.DictReader(open(root / "preds.csv"))
    ]
    model.eval()
    with torch.no_grad():
        for row, probs in zip(rows(6), expected, strict=True):
            batch = tokenizer(row["text"], return_tensors="pt")
            got = model(**batch).logits.softmax(-1)[0].tolist()
            assert got == pytest.approx(probs, abs=1e-4)
    # The trained head, not a fresh one: its weights equal the run's.
    card = (out / "README.md").read_text()
    assert "AutoModelForSequenceClassification" in card


@pytest.mark.parametrize("verb", ["generate", "chat"])
def test_chat_verbs_refuse_a_classifier_and_name_predict(classify_run, verb):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    _, run = classify_run
    args = [verb, str(run), "--prompt", "hi"] if verb == "generate" else [verb, str(run)]
    result = CliRunner().invoke(app, args, input="hi\n")
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "tunesmith predict" in result.stderr and "Traceback" not in result.stderr


def test_serve_and_gguf_refuse_a_classifier(classify_run):
    from tunesmith import api
    from tunesmith.errors import UserError
    from tunesmith.serve import load_engine

    root, run = classify_run
    with pytest.raises(UserError, match="tunesmith predict"):
        load_engine(str(run))
    with pytest.raises(UserError, match="HF directory"):
        api.export_gguf(run, root / "gguf")
    assert not (root / "gguf").exists()

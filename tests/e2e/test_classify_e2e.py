"""Classification end to end on tiny local models (decoders and a BERT-style encoder):
what trains, what is saved, that a reload predicts exactly the same, the CLI and its errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from tunesmith import api
from tunesmith.config import build_config
from tunesmith.data.labels import collate_inputs
from tunesmith.models.load import load_tokenizer
from tunesmith.tasks import classify
from tunesmith.train.rundir import write_model_info

from ..conftest import tiny_config, train_task_steps, write_jsonl

WORDS = {
    "positive": ["good", "great", "lovely"],
    "negative": ["bad", "awful", "poor"],
    "neutral": ["plain", "usual", "okay"],
}


def labelled_rows(count: int = 36) -> list[dict]:
    rows = []
    for i in range(count):
        label = list(WORDS)[i % 3]
        rows.append({"text": f"the item was {WORDS[label][i % 3]} overall", "label": label})
    return rows


def config_for(model_dir, tmp_path, **overrides):
    train = write_jsonl(tmp_path / "train.jsonl", labelled_rows())
    values = tiny_config(model_dir, train, tmp_path / "runs", task="classify", **overrides)
    return build_config(values)


def probabilities(model, tokenizer, prepared):
    logits = classify.predict_logits(model, prepared.eval, tokenizer.pad_token_id, 4, "cpu")
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize(("arch", "method"), [("llama", "lora"), ("gpt2", "full")])
def test_reload_from_disk_gives_identical_probabilities(tiny_models, tmp_path, arch, method):
    config = config_for(
        tiny_models[arch],
        tmp_path,
        adapter={"method": method, "r": 4, "alpha": 8, "dropout": 0.0},
        data={"train": str(tmp_path / "train.jsonl"), "eval_fraction": 0.25, "check": False},
    )
    model, tokenizer, prepared, before, _ = train_task_steps(classify, config)
    # The head trained: with LoRA it is in modules_to_save, in full finetuning everything trains.
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("score" in n for n in changed) and any(n != "score" and "score" not in n for n in changed)
    frozen_changed = [
        n for n, p in model.named_parameters() if not p.requires_grad and not torch.equal(p, before[n])
    ]
    assert frozen_changed == []
    final = tmp_path / "final"
    final.mkdir()
    classify.save_final(model, tokenizer, final, prepared, config)
    # As the recipe does: the run's facts join the classifier's in the one metadata file.
    write_model_info(final, {"task": "classify", "base_model": str(tiny_models[arch])})
    expected = probabilities(model, tokenizer, prepared)

    reloaded, reloaded_tokenizer, info = classify.load_classifier(final)
    torch.testing.assert_close(
        probabilities(reloaded, reloaded_tokenizer, prepared), expected, atol=1e-6, rtol=0
    )
    assert info["labels"] == ["negative", "neutral", "positive"]

    # Plain transformers / peft, as a user without tunesmith would load it.
    labels = len(info["labels"])
    if method == "lora":
        base = AutoModelForSequenceClassification.from_pretrained(
            tiny_models[arch], num_labels=labels, pad_token_id=info["pad_token_id"]
        )
        plain = PeftModel.from_pretrained(base, final).eval()
    else:
        plain = AutoModelForSequenceClassification.from_pretrained(final).eval()
        assert plain.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    batch = collate_inputs(prepared.eval, tokenizer.pad_token_id)
    with torch.no_grad():
        plain_probs = torch.softmax(plain(**batch).logits, dim=-1)
    torch.testing.assert_close(plain_probs, expected, atol=1e-6, rtol=0)


def run_cli(*args):
    """The real CLI in a fresh process (what a user runs)."""
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, timeout=300
    )


def run_cli_here(*args):
    """The same CLI in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_train_reports_metrics_and_predict_writes_probabilities(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", labelled_rows())
    # An eval label that never occurs in train: reported, and counted in the metrics.
    evaluation = write_jsonl(
        tmp_path / "eval.jsonl", labelled_rows(9) + [{"text": "the item was odd", "label": "odd"}]
    )
    values = tiny_config(tiny_llama, train, tmp_path / "runs", task="classify", eval={"forgetting": False})
    values["data"].update(eval=str(evaluation), class_weights="balanced")
    values["train"].update(max_steps=6, batch_size=6)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps(values))
    result = run_cli("train", str(config_file))
    assert result.returncode == 0, result.stderr + result.stdout
    assert "label 'odd' occurs in the eval data (first at " in result.stdout.replace("\n", " ")
    run_dir = tmp_path / "runs" / "run"
    before = json.loads((run_dir / "eval" / "before.json").read_text())
    after = json.loads((run_dir / "eval" / "after.json").read_text())
    for metrics in (before, after):
        assert {
            "accuracy",
            "macro_f1",
            "per_class",
            "confusion_matrix",
            "majority_baseline",
            "examples",
        } <= set(metrics)
        assert metrics["confusion_matrix"]["labels"] == ["negative", "neutral", "odd", "positive"]
        assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 10
        assert set(metrics["examples"][0]) >= {"text", "label", "predicted", "correct"}
    assert after["labels_not_in_train"] == ["odd"]
    assert after["per_class"]["odd"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert after["majority_baseline"]["accuracy"] == pytest.approx(3 / 10)

    out = tmp_path / "preds.csv"
    code, _, stderr = run_cli_here(
        "predict", str(run_dir), "--data", str(evaluation), "--out", str(out), "--batch-size", "3"
    )
    assert code == 0, stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 10
    assert list(rows[0]) == [
        "text",
        "label",
        "predicted",
        "prob_negative",
        "prob_neutral",
        "prob_odd",
        "prob_positive",
    ]
    for row in rows:
        probs = [float(row[f"prob_{n}"]) for n in ("negative", "neutral", "odd", "positive")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row["predicted"] == ["negative", "neutral", "odd", "positive"][probs.index(max(probs))]
    # The CSV agrees with the run's own evaluation, example by example.
    assert [r["predicted"] for r in rows] == [e["predicted"] for e in after["examples"]]

    # Predicting again onto its own untouched CSV replaces it (the CSV has no tag: the ledger knows
    # its bytes); once the user edits the CSV, or for a CSV of the user's, it is refused and kept.
    args = ("predict", str(run_dir), "--data", str(evaluation), "--out")
    assert run_cli_here(*args, str(out))[0] == 0 and sorted(tmp_path.glob("preds.csv*")) == [out]
    out.write_text(out.read_text() + "my note,,,,,,\n")
    mine = tmp_path / "mine.csv"
    mine.write_text("text,label\nmy own,positive\n")
    for taken in (out, mine):
        kept = taken.read_bytes()
        code, _, stderr = run_cli_here(*args, str(taken))
        assert code == 2 and "already exists and tunesmith did not write it" in stderr.replace("\n", " ")
        assert taken.read_bytes() == kept


def test_bad_input_is_one_line_naming_the_file(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": f"t {i}", "label": "same"} for i in range(6)])
    values = tiny_config(tiny_llama, train, tmp_path / "runs", task="classify")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps(values))
    code, stdout, stderr = run_cli_here("train", str(config_file))
    assert code == 2
    assert "Traceback" not in stderr + stdout
    message = stderr.replace("\n", " ")
    assert f"{train}" in message and "every training example has label 'same'" in message
    assert not (tmp_path / "runs" / "run").exists()


def test_multi_label_end_to_end(tiny_llama, tmp_path):
    rows = []
    for i in range(30):
        tags = [t for t, on in (("red", i % 2 == 0), ("round", i % 3 == 0)) if on] or ["plain"]
        rows.append({"text": " ".join(tags) + f" thing {i}", "label": tags})
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    values = tiny_config(
        tiny_llama,
        train,
        tmp_path / "runs",
        task="classify",
        eval={"before": True, "after": True, "forgetting": False},
    )
    values["data"].update(multi_label=True, threshold=0.4, eval_fraction=0.2, class_weights="balanced")
    values["train"].update(max_steps=8, batch_size=6, learning_rate=3e-2)
    result = api.train(build_config(values))
    after = result.after
    assert after["labels"] == ["plain", "red", "round"]
    assert 0.0 <= after["accuracy"] <= 1.0 and "label_confusion" in after
    assert set(after["per_class"]) == {"plain", "red", "round"}
    assert isinstance(after["examples"][0]["label"], list)
    assert after["loss"] < result.before["loss"]
    # A classify step's targets are examples: its accuracy is logged as such, never as token accuracy.
    steps = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r and "lr" in r]
    assert steps and all("example_accuracy" in r and "token_accuracy" not in r for r in steps)

    # A column per label gives the same labels as the lists.
    columns = [
        {"text": r["text"], **{t: int(t in r["label"]) for t in ("plain", "red", "round")}} for r in rows
    ]
    csv_file = tmp_path / "columns.csv"
    with csv_file.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns[0]))
        writer.writeheader()
        writer.writerows(columns)
    column_config = build_config(
        tiny_config(
            tiny_llama,
            csv_file,
            tmp_path / "runs",
            task="classify",
            data={
                "train": str(csv_file),
                "multi_label": True,
                "label_columns": ["plain", "red", "round"],
                "eval_fraction": 0.0,
                "check": False,
            },
        )
    )
    prepared = classify.prepare_data(column_config, load_tokenizer(str(tiny_llama), column_config.model))
    assert [e.label for e in prepared.train[:3]] == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    # The data doctor's pre-flight reads the label columns the same way (no format errors).
    from tunesmith.data import doctor

    findings = doctor.preflight(column_config.data, prepared, "labeled", "classify").to_dict()
    assert findings["verdict"] != "not ready"
    assert not [f for f in findings["findings"] if f["id"] in ("schema", "no_usable_records")]

    out = tmp_path / "preds.csv"
    summary = api.predict(str(result.run_dir), str(train), out)
    predicted = list(csv.DictReader(out.open()))
    assert summary["rows"] == 30 and list(predicted[0])[-3:] == ["prob_plain", "prob_red", "prob_round"]
    for row in predicted:
        on = [n for n in ("plain", "red", "round") if float(row[f"prob_{n}"]) >= 0.4]
        assert row["predicted"] == ";".join(on)


def build_tiny_bert(directory):
    """A tiny random BERT with a WordPiece tokenizer made here (no downloads)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    directory.mkdir(parents=True)
    words = sorted({w for ws in WORDS.values() for w in ws} | {"the", "item", "was", "overall", "odd", "and"})
    (directory / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n"
    )
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    BertForMaskedLM(config).save_pretrained(directory)
    return directory


def test_encoder_with_text_pairs_trains_and_reloads_identically(tmp_path):
    bert = build_tiny_bert(tmp_path / "bert")
    rows = [
        {"premise": r["text"], "hypothesis": "and the item was okay", "label": r["label"]}
        for r in labelled_rows()
    ]
    train = write_jsonl(tmp_path / "pairs.jsonl", rows)
    values = tiny_config(
        bert, train, tmp_path / "runs", task="classify", eval={"after": True, "forgetting": False}
    )
    values["data"].update(fields={"text": "premise", "text_pair": "hypothesis"}, eval_fraction=0.25)
    values["train"].update(max_steps=4)
    config = build_config(values)
    prepared = classify.prepare_data(config, load_tokenizer(str(bert), config.model))
    # [CLS] premise [SEP] hypothesis [SEP], with segment ids for the second text.
    example = prepared.train[0]
    assert example.token_type_ids is not None and example.token_type_ids[-1] == 1
    result = api.train(config)
    assert {"accuracy", "macro_f1", "confusion_matrix"} <= set(result.after)
    # The checkpoint had no pooler (a masked-LM checkpoint): it trains in full and is saved.
    from safetensors import safe_open

    with safe_open(result.final_dir / "adapter_model.safetensors", "pt") as saved:
        names = list(saved.keys())
    assert any("pooler" in n and "lora" not in n for n in names) and any("classifier" in n for n in names)
    model, tokenizer, info = classify.load_classifier(result.final_dir)
    probs = torch.softmax(classify.predict_logits(model, prepared.eval, tokenizer.pad_token_id, 4, "cpu"), -1)
    predicted = [info["labels"][i] for i in probs.argmax(-1).tolist()]
    assert predicted == [e["predicted"] for e in result.after["examples"]]

"""The data doctor: every planted problem is found with the right count and place; clean data is ready."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import tiny_config, write_jsonl
from tunesmith.cli import app
from tunesmith.data import doctor
from tunesmith.data.doctor import detect
from tunesmith.errors import UserError

LONG_QUESTION = (
    "Summarise the maintenance schedule of the harbour crane including the weekly lubrication of the main "
    "hoist the monthly inspection of the wire ropes and the yearly load test by the certified inspector"
)


@functools.cache
def embedded_tokenizer() -> Any:
    from tunesmith.config import ModelConfig
    from tunesmith.models.load import load_tokenizer, resolve_model_path

    return load_tokenizer(resolve_model_path("embedded"), ModelConfig(name="embedded"))


def run_check(data: str, *args: Any, **kwargs: Any) -> tuple[doctor.CheckResult, dict | None]:
    """`tunesmith data check` as the CLI runs it: the task the data looks like, the embedded tokenizer."""
    from tunesmith.tasks import task_info, task_names

    kind = doctor.detect_kind(data)
    task = next(name for name in task_names() if task_info(name).record_kind == kind)
    return doctor.run_check(data, *args, kind=kind, task=task, tokenizer=embedded_tokenizer(), **kwargs)


def conversation(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def clean_rows(count: int, offset: int = 0) -> list[dict]:
    """Distinct arithmetic questions: no two are near-duplicates, eval looks like train."""
    rows = []
    for index in range(offset, offset + count):
        a, b = 3 + index * 7, 11 + index * 13
        rows.append(conversation(f"What is {a} plus {b}?", f"The sum of {a} and {b} is {a + b}."))
    return rows


def finding(report: dict, id_: str) -> dict:
    matches = [f for f in report["findings"] if f["id"] == id_]
    assert matches, f"no {id_} finding in {[f['id'] for f in report['findings']]}"
    return matches[0]


def ids(report: dict) -> set[str]:
    return {f["id"] for f in report["findings"]}


def test_clean_dataset_is_ready(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", clean_rows(60))
    evaluation = write_jsonl(tmp_path / "eval.jsonl", clean_rows(20, offset=100))
    result, _ = run_check(str(train), str(evaluation))
    report = result.report.to_dict()
    assert report["verdict"] == "ready", report["findings"]
    assert {f["severity"] for f in report["findings"]} <= {"info"}
    assert report["stats"]["num_train"] == 60 and report["stats"]["num_eval"] == 20
    assert report["stats"]["tokens"]["train"]["total"] > 60 * 10
    assert sum(report["stats"]["length_histogram"]["train"]) == 60
    for item in report["findings"]:
        assert set(item) == {"id", "severity", "title", "count", "examples", "detail"}


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path, dict, dict]:
    """Train and eval files with one planted problem per known line."""
    rows = clean_rows(60)
    lines = [json.dumps(r) for r in rows]  # lines 1..60 are clean
    near_base = conversation(LONG_QUESTION, "Lubricate weekly, inspect monthly and test the load yearly.")
    plants = {
        "near_base": json.dumps(near_base),
        "malformed_rows": '{"messages": [',
        "schema": json.dumps({"question": "no known fields"}),
        "field_types": json.dumps(
            conversation("fine", "x")
            | {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}
        ),
        "empty_fields": json.dumps(conversation("   ", "An answer to nothing.")),
        "unknown_roles": json.dumps(
            {"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "boop"}]}
        ),
        "no_assistant_turn": json.dumps({"messages": [{"role": "user", "content": "Anyone there?"}]}),
        "exact_duplicates": json.dumps(conversation("WHAT is  3 plus 11?", "the sum of 3 and 11 is 14.")),
        "near_duplicates": json.dumps(
            conversation(LONG_QUESTION, "Lubricate weekly, inspect monthly and test the load annually.")
        ),
        "truncated": json.dumps(conversation("Count.", " ".join(["one two three"] * 45))),
        "no_supervised_tokens": json.dumps(conversation(" ".join(["please read this"] * 40), "Done.")),
        "emails": json.dumps(conversation("Mail jane.doe@example.com please.", "I will write to her.")),
        "phone_numbers": json.dumps(conversation("Call me at +44 20 7946 0958 today.", "I will call you.")),
        "card_numbers": json.dumps(
            conversation("My card is 4111 1111 1111 1111.", "Never share card numbers.")
        ),
        "not_a_card": json.dumps(conversation("Order 4111 1111 1111 1112 shipped?", "It shipped yesterday.")),
        "api_keys": json.dumps(
            conversation("Use key sk" + "-abcdefghijklmnopqrstuvwxyz123456 for it.", "Rotate it.")
        ),
        "private_keys": json.dumps(
            conversation(
                "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
                "Never paste keys.",
            )
        ),
    }
    where = {}
    for name, line in plants.items():
        lines.append(line)
        where[name] = len(lines)
    train = tmp_path / "train.jsonl"
    data = ("\n".join(lines) + "\n").encode("utf-8")
    data += b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'  # Latin-1, not UTF-8
    where["encoding"] = len(lines) + 1
    train.write_bytes(data)
    eval_rows = clean_rows(20, offset=100) + [
        rows[4],
        conversation(LONG_QUESTION, "Lubricate weekly, inspect monthly and test the load every year."),
    ]
    evaluation = write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    eval_where = {"eval_leakage": 21, "eval_near_leakage": 22}
    return train, evaluation, where, eval_where


def test_planted_problems_are_found_with_count_and_location(planted: tuple) -> None:
    train, evaluation, where, eval_where = planted
    result, _ = run_check(str(train), str(evaluation), max_seq_len=128)
    report = result.report.to_dict()
    assert report["verdict"] == "not ready"
    single = [
        "malformed_rows",
        "schema",
        "field_types",
        "empty_fields",
        "unknown_roles",
        "no_assistant_turn",
        "encoding",
        "exact_duplicates",
        "near_duplicates",
        "emails",
        "phone_numbers",
        "card_numbers",
        "api_keys",
        "private_keys",
        "no_supervised_tokens",
    ]
    for id_ in single:
        item = finding(report, id_)
        assert item["count"] == 1, (id_, item)
        assert item["examples"] == [f"{train}:{where[id_]}"], (id_, item)
    truncated = finding(report, "truncated")
    assert truncated["count"] == 2
    assert set(truncated["examples"]) == {
        f"{train}:{where['truncated']}",
        f"{train}:{where['no_supervised_tokens']}",
    }
    for id_, line in eval_where.items():
        item = finding(report, id_)
        assert item["count"] == 1 and item["examples"] == [f"{evaluation}:{line}"], (id_, item)
    assert finding(report, "eval_leakage")["severity"] == "error"
    assert finding(report, "api_keys")["severity"] == "error"
    # Secrets are masked: the full values never appear anywhere in the report.
    text = json.dumps(report)
    for secret in (
        "jane.doe@example.com",
        "4111 1111 1111 1111",
        "sk" + "-abcdefghijklmnopqrstuvwxyz123456",
        "7946 0958",
    ):
        assert secret not in text
    assert "j***@e***.com" in finding(report, "emails")["detail"]


def test_fix_writes_clean_copy_and_reasons_without_touching_input(planted: tuple, tmp_path: Path) -> None:
    train, evaluation, where, eval_where = planted
    before = hashlib.sha256(train.read_bytes()).hexdigest()
    out = tmp_path / "fixed"
    _, fixed = run_check(str(train), str(evaluation), max_seq_len=128, fix=str(out))
    assert hashlib.sha256(train.read_bytes()).hexdigest() == before
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    reasons = {r["source"]: r["reason"] for r in removed}
    for id_ in ("malformed_rows", "schema", "empty_fields", "unknown_roles", "no_assistant_turn", "encoding"):
        assert f"{train}:{where[id_]}" in reasons, id_
    assert reasons[f"{train}:{where['exact_duplicates']}"].startswith(f"exact duplicate of {train}:1")
    assert reasons[f"{train}:{where['near_duplicates']}"].startswith("near duplicate of")
    assert "leakage" in reasons[f"{evaluation}:{eval_where['eval_leakage']}"]
    assert f"{evaluation}:{eval_where['eval_near_leakage']}" in reasons
    kept_eval = (out / "eval.jsonl").read_text().splitlines()
    assert len(kept_eval) == 20 and fixed["eval"]["removed"] == 2
    # The cleaned copy passes the format and duplicate checks.
    again, _ = run_check(str(out / "train.jsonl"), str(out / "eval.jsonl"), max_seq_len=128)
    left = ids(again.report.to_dict())
    assert not left & {
        "malformed_rows",
        "schema",
        "exact_duplicates",
        "near_duplicates",
        "eval_leakage",
        "eval_near_leakage",
        "unknown_roles",
        "no_assistant_turn",
        "encoding",
    }


def test_classify_labels(tmp_path: Path) -> None:
    rows = [{"text": f"great product number {i} works well", "label": "positive"} for i in range(40)]
    rows += [{"text": f"broken item {i} arrived late", "label": "negative"} for i in range(3)]
    rows.append(
        {"text": "Great product number 0 works well", "label": "negative"}
    )  # line 44 conflicts with 1
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    evaluation = write_jsonl(
        tmp_path / "eval.jsonl",
        [
            {"text": "great product number 99 works well", "label": "positive"},
            {"text": "meh it is fine i guess", "label": "neutral"},
            {"text": "okay ish thing overall", "label": "neutral"},
        ],
    )
    report = run_check(str(train), str(evaluation))[0].report.to_dict()
    assert report["task"] == "classify"
    assert report["stats"]["labels"]["train"] == {"positive": 40, "negative": 4}
    assert report["stats"]["labels"]["imbalance_ratio"] == 10.0
    assert finding(report, "label_imbalance")["severity"] == "warning"
    unseen = finding(report, "labels_only_in_eval")
    assert unseen["count"] == 2 and unseen["examples"] == [f"{evaluation}:2", f"{evaluation}:3"]
    conflict = finding(report, "conflicting_labels")
    assert conflict["count"] == 1 and conflict["examples"] == [f"{train}:1", f"{train}:44"]
    assert "exact_duplicates" not in ids(report)  # the conflicting pair is reported once, as a conflict
    assert finding(report, "too_few_examples")["count"] == 2  # both classes under ~100 examples

    single = write_jsonl(tmp_path / "single.jsonl", [{"text": f"t {i}", "label": "a"} for i in range(5)])
    assert finding(run_check(str(single))[0].report.to_dict(), "single_label")["severity"] == "error"


def test_size_rules_and_small_eval(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", clean_rows(20))
    evaluation = write_jsonl(tmp_path / "eval.jsonl", clean_rows(25, offset=200))
    report = run_check(str(train), str(evaluation))[0].report.to_dict()
    size = finding(report, "too_few_examples")
    assert size["severity"] == "warning" and size["count"] == 20
    assert "LIMA" in size["detail"] and "50" in size["detail"]
    small = finding(report, "small_eval")
    assert small["count"] == 25 and "10.0%" in small["detail"]  # sqrt(0.25 / 25)
    no_eval = run_check(str(train))[0].report.to_dict()
    assert "no_eval" in ids(no_eval) and no_eval["stats"]["num_eval"] == 0


def test_pretrain_folder_is_detected_and_counted(tmp_path: Path) -> None:
    folder = tmp_path / "domain"
    folder.mkdir()
    (folder / "a.txt").write_text("The pump must be primed before use. " * 50)
    (folder / "b.md").write_text("# Valves\nClose the valve slowly. " * 30)
    (folder / "c.txt").write_text("The pump must be primed before use. " * 50)  # duplicate document
    report = run_check(str(folder))[0].report.to_dict()
    assert report["task"] == "pretrain" and report["stats"]["num_train"] == 3
    assert finding(report, "exact_duplicates")["examples"] == [str(folder / "c.txt")]
    assert finding(report, "too_few_examples")["count"] == report["stats"]["tokens"]["train"]["total"]
    assert "truncated" not in ids(report)


def test_target_inputs_under_covered(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", clean_rows(60))
    target = tmp_path / "real.txt"
    target.write_text(
        "What is 5 plus 7?\n"
        + "\n".join(
            f"How do I reset my router password after the {name} firmware update?"
            for name in ("alpha", "beta", "gamma", "delta", "spring", "summer", "autumn", "winter", "night")
        )
        + "\n"
    )
    report = run_check(str(train), target=str(target))[0].report.to_dict()
    uncovered = finding(report, "uncovered_inputs")
    assert uncovered["count"] == 9 and uncovered["examples"][0] == f"{target}:2"
    assert uncovered["severity"] == "warning"
    assert "router" in uncovered["detail"] and "password" in uncovered["detail"]
    assert report["stats"]["representativeness"]["vocabulary_js"] > 0.5


def test_near_duplicate_threshold_and_lsh_recall() -> None:
    import random

    import numpy as np

    generator = random.Random(0)
    vocabulary = [f"word{i}" for i in range(3000)]
    texts = [" ".join(generator.choice(vocabulary) for _ in range(40)) for _ in range(400)]
    copies = []
    for text in texts[:100]:  # change one word near the end: Jaccard ~0.9
        words = text.split()
        words[-2] = "changed"
        copies.append(" ".join(words))
    signatures = detect.minhash_signatures(texts + copies, num_perm=128)
    pairs = {tuple(p) for p in detect.similar_pairs(signatures, 0.8).tolist()}
    planted_pairs = {(i, 400 + i) for i in range(100)}
    assert len(planted_pairs & pairs) >= 95
    assert len(pairs - planted_pairs) == 0
    assert len(detect.similar_pairs(signatures[:400], 0.8)) == 0
    assert np.array_equal(detect.minhash_signatures(texts[:3], 128), signatures[:3])  # deterministic


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("card 4242-4242-4242-4242 ok", ["card_number"]),
        ("card 4242-4242-4242-4241 no", []),  # fails Luhn
        ("on 2023-01-15 at 3.14159", []),
        ("call (415) 555-0123", ["phone_number"]),
        ("token hf" + "_abcdefghijklmnopqrstuvwxyzABCDEF12", ["api_key"]),
        ("aws AKIAIOSFODNN7EXAMPLE here", ["api_key"]),
        ("a@b.co and x.y@mail.example.org", ["email", "email"]),
    ],
)
def test_sensitive_patterns(text: str, kinds: list[str]) -> None:
    assert [kind for kind, _ in detect.find_sensitive(text)] == kinds


def test_cli_exit_codes_and_json(tmp_path: Path, planted: tuple) -> None:
    runner = CliRunner()
    train = write_jsonl(tmp_path / "clean.jsonl", clean_rows(60))
    evaluation = write_jsonl(tmp_path / "clean_eval.jsonl", clean_rows(20, offset=100))
    out = tmp_path / "check.json"
    result = runner.invoke(app, ["data", "check", str(train), "--eval", str(evaluation), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "verdict: ready" in result.output
    assert json.loads(out.read_text())["verdict"] == "ready"
    bad_train, bad_eval, _, _ = planted
    html_out = tmp_path / "check.html"
    result = runner.invoke(
        app,
        [
            "data",
            "check",
            str(bad_train),
            "--eval",
            str(bad_eval),
            "--max-seq-len",
            "128",
            "--html",
            str(html_out),
        ],
    )
    # The planted file has malformed JSON lines: exit 2, as for a malformed .json (issue 18).
    assert result.exit_code == 2, result.output
    assert "not ready" in result.output and "sk" + "-abcdefghijkl" not in result.output
    assert "Data check: not ready" in html_out.read_text()
    result = runner.invoke(app, ["data", "check", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2
    result = runner.invoke(app, ["data", "check", str(train), "--task", "nonsense"])
    assert result.exit_code == 2


def test_preflight_blocks_before_the_model_loads(tiny_llama: Path, tmp_path: Path, monkeypatch) -> None:
    from tunesmith import api
    from tunesmith.config import build_config
    from tunesmith.tasks import instruct

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load when the data check fails")

    monkeypatch.setattr(instruct, "TASK", dataclasses.replace(instruct.TASK, build_model=no_model))
    rows = clean_rows(60)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    evaluation = write_jsonl(tmp_path / "eval.jsonl", clean_rows(5, offset=100) + [rows[9]])
    config = build_config(
        tiny_config(tiny_llama, train, tmp_path / "runs", data__check=True, data__eval=str(evaluation))
    )
    with pytest.raises(UserError) as error:
        api.train(config)
    assert f"{evaluation}:6" in str(error.value) and "not ready" in str(error.value)
    assert not (tmp_path / "runs" / "run").exists()


def test_preflight_warnings_are_saved_in_the_run(tiny_llama: Path, tmp_path: Path) -> None:
    from tunesmith import api
    from tunesmith.config import build_config

    class Messages:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def start(self, total: int, done: int = 0, title: str = "train") -> None:
            pass

        def step(self, step: int, record: dict) -> None:
            pass

        def message(self, text: str, level: str = "info") -> None:
            self.lines.append(f"{level}: {text}")

        def close(self) -> None:
            pass

    rows = clean_rows(60)
    rows.append(rows[0])  # an exact duplicate: a warning, not a blocker
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    config = build_config(
        tiny_config(tiny_llama, train, tmp_path / "runs", data__check=True, data__eval_fraction=0.0)
    )
    messages = Messages()
    result = api.train(config, progress=messages)
    saved = json.loads((result.run_dir / "eval" / "data_check.json").read_text())
    assert saved["verdict"] == "ready with warnings"
    assert finding(saved, "exact_duplicates")["examples"] == [f"{train}:61"]
    printed = "\n".join(messages.lines)
    assert "data warning" in printed and f"{train}:61" in printed


def test_terminal_lines_name_file_and_line_unbroken_at_80_columns(tmp_path: Path) -> None:
    deep = tmp_path / "a_rather_long_folder_name_for_the_data" / "another_nested_folder_with_a_long_name"
    deep.mkdir(parents=True)
    rows = clean_rows(60)
    rows.append(rows[2])  # line 61 repeats line 3
    train = write_jsonl(deep / "customer_support_conversations_train.jsonl", rows)
    assert len(f"{train}:61: warning: exact duplicates in train") > 80
    result = CliRunner().invoke(app, ["data", "check", str(train)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"{train}:61: warning: exact duplicates in train" in lines
    assert "data check: info: no eval split" in lines
    table = lines.index(next(line for line in lines if line.lstrip().startswith("data check (instruct)")))
    assert all(len(line) <= 80 for line in lines[table:])  # the summary table fits the terminal
    assert lines[-1] == "verdict: ready with warnings"


def test_finding_lines_one_per_place() -> None:
    from tunesmith.ui import finding_lines

    report = doctor.CheckReport(
        "not ready",
        "instruct",
        [
            doctor.Finding("emails", "warning", "e-mail addresses", 7, ("a.jsonl:3", "b.jsonl:9"), "..."),
            doctor.Finding("no_eval", "info", "no eval split", 0, (), "..."),
        ],
    )
    assert finding_lines(report) == [
        "a.jsonl:3: warning: e-mail addresses",
        "b.jsonl:9: warning: e-mail addresses (and 5 more)",
        "data check: info: no eval split",
    ]


def test_checks_follow_the_record_kind_not_the_task_name(tmp_path: Path) -> None:
    rows = [{"text": f"item {i} is fine", "label": "ok"} for i in range(5)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    result, _ = doctor.run_check(str(train), kind="labeled", task="any-name", tokenizer=embedded_tokenizer())
    assert result.report.task == "any-name"
    assert {f.id for f in result.report.findings} >= {"single_label"}  # label checks: labeled records
    with pytest.raises(UserError):
        doctor.run_check(str(train), kind="pictures", task="x")


def test_findings_html_is_escaped_and_shared_with_the_run_report(tmp_path: Path) -> None:
    from tunesmith.report.findings import findings_page, render_findings

    check = {
        "verdict": "not ready",
        "task": "instruct",
        "stats": {"num_train": 3, "num_eval": 0},
        "findings": [
            {
                "id": "x",
                "severity": "error",
                "title": "<script>alert(1)</script>",
                "count": 1234,
                "examples": ["a<b>.jsonl:2", {"line": 9}],
                "detail": "fix & retry",
            },
            "not a finding",
        ],
    }
    fragment = render_findings(check)
    assert "<script>" not in fragment and "&lt;script&gt;" in fragment
    assert "a&lt;b&gt;.jsonl:2" in fragment and "fix &amp; retry" in fragment and "1,234" in fragment
    assert 'class="verdict bad"' in fragment
    page = findings_page(check)
    assert page.startswith("<!doctype html>") and "Data check: not ready" in page and fragment in page
    assert "No findings." in render_findings({"verdict": "ready", "findings": []})


def test_normalizing_a_huge_record_a_slice_at_a_time_is_exact():
    import random

    generator = random.Random(0)
    # whitespace runs and words straddling the slice boundaries; characters whose lowercase is longer
    pieces = ["word", "B", " ", "\n", "\t", "İ", "   ", "\u3000", "\x1c", "Ünïcode"]
    for size in (detect.SHINGLE_CHAR_LIMIT - 3, 3 * detect.SHINGLE_CHAR_LIMIT + 7):
        for _ in range(3):
            text = "".join(generator.choice(pieces) for _ in range(size // 3))
            assert detect.normalize_text(text) == " ".join(text.lower().split())
    boundary = "a" * (detect.SHINGLE_CHAR_LIMIT - 1) + " " + "b" * 10  # the space is the slice's last char
    assert detect.normalize_text(boundary + "  ") == boundary
    joined = "a" * detect.SHINGLE_CHAR_LIMIT + "b" * 10  # one word across the boundary stays one word
    assert detect.normalize_text(joined) == joined


def test_tfidf_similarities_are_scikit_learns() -> None:
    # The coverage check computes TF-IDF on scipy.sparse (importing scikit-learn costs the training
    # process ~100 MB); the similarities must be exactly those of TfidfVectorizer.
    sklearn_text = pytest.importorskip("sklearn.feature_extraction.text")
    import random

    import numpy as np

    from tunesmith.data.doctor.detect import tfidf_matrices

    rng = random.Random(0)
    words = ["the", "cat", "Sat", "on", "mat", "dog", "runs", "fast", "été", "café", "42", "x_y"]
    fit = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) for _ in range(50)] + ["", "!!"]
    other = [" ".join(rng.choice([*words, "unseen"]) for _ in range(rng.randint(0, 10))) for _ in range(30)]
    vectorizer = sklearn_text.TfidfVectorizer(sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    theirs_fit = vectorizer.fit_transform(fit)
    theirs_other = vectorizer.transform(other)
    ours_fit, ours_other = tfidf_matrices(fit, other)
    np.testing.assert_allclose(
        (ours_other @ ours_fit.T).toarray(), (theirs_other @ theirs_fit.T).toarray(), atol=1e-12
    )
    np.testing.assert_allclose(
        (ours_fit @ ours_fit.T).toarray(), (theirs_fit @ theirs_fit.T).toarray(), atol=1e-12
    )
    assert tfidf_matrices(["", "!!"], ["a b"]) is None  # no words to fit on


def _tool_rows() -> list[dict]:
    """Conversations calling a tool: declared, undeclared (a misspelt name), and with no `tools`."""
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}

    def calling(name: str, city: str, tools: list | None) -> dict:
        call = {"type": "function", "function": {"name": name, "arguments": {"city": city}}}
        row: dict = {
            "messages": [
                {"role": "user", "content": f"What is the weather in {city}?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "sunny"},
                {"role": "assistant", "content": f"It is sunny in {city}."},
            ]
        }
        if tools is not None:
            row["tools"] = tools
        return row

    return [calling("get_weather", "Oslo", [weather]), calling("get_wether", "Rome", [weather])] + [
        calling("get_weather", "Lima", None)
    ]


def test_tool_calls_the_row_does_not_declare_are_reported(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "tools.jsonl", clean_rows(60) + _tool_rows())
    report = run_check(str(data))[0].report.to_dict()
    undeclared = finding(report, "undeclared_tool_calls")
    assert undeclared["severity"] == "warning" and undeclared["count"] == 1
    assert undeclared["examples"] == [f"{data}:62"] and "get_wether" in undeclared["detail"]
    without = finding(report, "calls_without_tools")
    assert without["severity"] == "warning" and without["count"] == 1
    assert without["examples"] == [f"{data}:63"] and "get_weather" in without["detail"]


def test_tool_calls_the_row_does_not_declare_are_warned_in_training(
    tiny_llama: Path, tmp_path: Path, shared_dir
) -> None:
    from tests.reliability.helpers import RecordingProgress
    from tunesmith import api
    from tunesmith.config import build_config

    data = write_jsonl(tmp_path / "tools.jsonl", clean_rows(20) + _tool_rows())
    config = tiny_config(
        tiny_llama,
        data,
        tmp_path / "runs",
        data__check=True,
        data__max_seq_len=512,  # the template's tool prompt is long
        data__chat_template=str(shared_dir / "chat_templates" / "qwen2_5.jinja"),
        train__max_steps=1,
    )
    progress = RecordingProgress()
    api.train(build_config(config), progress=progress)
    warnings = [line for line in progress.lines if line.startswith("data warning")]
    assert any("tool calls to a function missing from the row's `tools`: 1" in w for w in warnings), warnings
    assert any("tool calls but no `tools`: 1" in w for w in warnings), warnings


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank"])
def test_an_empty_data_file_is_named_in_its_finding(tmp_path: Path, content: str) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(content)
    report = run_check(str(data))[0].report.to_dict()
    empty = finding(report, "no_usable_records")
    assert empty["severity"] == "error" and empty["examples"] == [str(data)]
    assert str(data) in empty["detail"] and "holds no rows" in empty["detail"]


def test_data_check_with_a_config_checks_every_source_with_its_own_fields(tmp_path: Path) -> None:
    """`data check --config`: the mix of data.train, each source read with its own fields, the task,
    and each source's rows counted; a pair mix and a reward prompt template alike; --fix refuses a mix."""
    import yaml

    mine = write_jsonl(
        tmp_path / "mine.jsonl", [{"q": f"What is {i} + 1?", "a": str(i + 1)} for i in range(12)]
    )
    general = write_jsonl(
        tmp_path / "general.jsonl", [{"instruction": f"Name {i}.", "output": f"n{i}"} for i in range(8)]
    )
    config = tmp_path / "mix.yaml"
    sources = [
        {"path": str(mine), "weight": 3, "fields": {"instruction": "q", "output": "a"}, "name": "mine"},
        {"path": str(general), "weight": 1, "name": "general"},
    ]
    config.write_text(yaml.safe_dump({"task": "instruct", "data": {"train": sources, "max_seq_len": 128}}))
    out = tmp_path / "findings.json"
    result = CliRunner().invoke(app, ["data", "check", "--config", str(config), "--json", str(out)])
    assert result.exit_code == 0, result.output
    stats = json.loads(out.read_text())["stats"]
    assert stats["sources"] == [{"source": "mine", "num_rows": 12}, {"source": "general", "num_rows": 8}]
    assert stats["num_train"] == 20 and stats["max_seq_len"] == 128
    fix = CliRunner().invoke(
        app, ["data", "check", "--config", str(config), "--fix", str(tmp_path / "clean")]
    )
    assert fix.exit_code == 2 and "on each source's file" in fix.output and not (tmp_path / "clean").exists()

    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"p": f"Say {i}.", "good": str(i), "bad": "no"} for i in range(6)]
    )
    pair_config = tmp_path / "pairs.yaml"
    pair_source = {"path": str(pairs), "fields": {"prompt": "p", "chosen": "good", "rejected": "bad"}}
    pair_config.write_text(yaml.safe_dump({"task": "preference", "data": {"train": [pair_source]}}))
    result = CliRunner().invoke(app, ["data", "check", "--config", str(pair_config)])
    assert result.exit_code == 0, result.output

    reviews = write_jsonl(
        tmp_path / "reviews.jsonl", [{"text": f"review {i}", "label": i % 2} for i in range(6)]
    )
    reward_config = tmp_path / "reward.yaml"
    reward_values = {
        "task": "reward",
        "data": {"train": str(reviews)},
        "reward": {
            "prompt_template": "Review: {text}\nPositive or negative?",
            "functions": [{"function": "length"}],
        },
    }
    reward_config.write_text(yaml.safe_dump(reward_values))
    result = CliRunner().invoke(app, ["data", "check", "--config", str(reward_config)])
    assert result.exit_code == 0, result.output
    # Without the template the same rows have no prompt: the config is what made them readable.
    assert CliRunner().invoke(app, ["data", "check", str(reviews), "--task", "reward"]).exit_code != 0

"""Several training sources with weights (data.train as a list of sources): config, the mix, the run."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pytest

from tunesmith.config import build_config
from tunesmith.data.mix import draw_order, mix_counts, mix_items
from tunesmith.errors import UserError

from ..conftest import tiny_config, write_jsonl


def test_plain_paths_stay_one_source_and_dicts_make_several():
    one = build_config({"data": {"train": ["a.jsonl", "b.jsonl"], "fields": {"output": "answer"}}})
    (source,) = one.data.train_sources()
    assert source.path == ["a.jsonl", "b.jsonl"] and source.weight == 1.0
    assert source.fields == {"output": "answer"} and source.format == "auto"

    mixed = build_config(
        {
            "data": {
                "train": [{"path": "domain.jsonl", "weight": 3}, "general.jsonl"],
                "format": "alpaca",
                "fields": {"output": "answer"},
            }
        }
    )
    first, second = mixed.data.train_sources()
    assert (first.path, first.weight, second.path, second.weight) == ("domain.jsonl", 3, "general.jsonl", 1)
    # Unset per-source format/fields fall back to data.format/data.fields; set ones win.
    assert first.format == "alpaca" and second.fields == {"output": "answer"}
    own = build_config(
        {"data": {"train": [{"path": "a.jsonl", "fields": {}}, {"path": "b", "format": "text"}]}}
    )
    assert own.data.train_sources()[0].fields == {} and own.data.train_sources()[1].format == "text"


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            [{"path": "a.jsonl", "wieght": 2}],
            "`data.train`: source 0: unknown key `wieght`; did you mean `weight`?",
        ),
        (["a.jsonl", {"path": "b.jsonl", "weight": 0}], "source 1: `weight`: Input should be greater than 0"),
        ([{"weight": 1}], "source 0: `path`: Field required"),
        (
            [{"path": "a.jsonl", "name": "web"}, {"path": "b.jsonl", "name": "web"}],
            "source 1: its name 'web' is source 0's too",
        ),
        (["a.jsonl", {"path": "a.jsonl", "weight": 2}], "source 1: its name 'a.jsonl' is source 0's too"),
    ],
)
def test_bad_sources_are_named(train, message):
    with pytest.raises(UserError, match=re.escape(message)):
        build_config({"data": {"train": train}})


def test_one_pass_takes_the_first_source_once_and_the_others_by_weight():
    assert mix_counts([100, 7, 10_000], [3.0, 1.0, 0.5]) == [100, 33, 17]
    # A small source is cycled (every item before any repeats), a large one sampled.
    order = draw_order(7, 33, seed=0, index=1)
    assert set(order[:7]) == set(range(7)) and Counter(order.tolist()).most_common(1)[0][1] == 5
    items, origin = mix_items([list(range(100)), list("abcdefg")], [3.0, 1.0], seed=5)
    assert items[:100] == list(range(100)) and origin == [0] * 100 + [1] * 33
    again, _ = mix_items([list(range(100)), list("abcdefg")], [3.0, 1.0], seed=5)
    other, _ = mix_items([list(range(100)), list("abcdefg")], [3.0, 1.0], seed=6)
    assert again == items and other != items


def _sources(tmp_path, num_domain: int = 60, num_general: int = 200):
    domain = write_jsonl(
        tmp_path / "domain.jsonl",
        [{"instruction": f"Say d{i}.", "output": f"d{i}"} for i in range(num_domain)],
    )
    general = write_jsonl(
        tmp_path / "general.jsonl",
        [{"question": f"What is g{i}?", "answer": f"g{i} is general."} for i in range(num_general)],
    )
    return domain, general


def test_a_run_trains_the_configured_proportions_within_sampling_error(tiny_llama, tmp_path):
    from tunesmith import api

    domain, general = _sources(tmp_path)
    values = tiny_config(tiny_llama, domain, tmp_path / "runs")
    values["data"]["train"] = [
        {"path": str(domain), "weight": 3},
        {"path": str(general), "weight": 1, "fields": {"instruction": "question", "output": "answer"}},
    ]
    values["data"].update(packing=False, check=True)
    # 54 domain + 18 general examples per pass; 10 steps x 8 rows = 80 rows: more than a pass.
    values["train"].update(max_steps=10, batch_size=8, learning_rate=1e-3)
    result = api.train(build_config(values))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    first, second = summary["data"]["mix"]
    assert (first["num_available"], first["num_drawn"]) == (54, 54)  # 6 of 60 held out, all from the first
    assert (second["num_available"], second["num_drawn"]) == (200, 18)
    trained = first["num_trained"] + second["num_trained"]
    assert trained == 80
    share = second["num_trained"] / trained
    assert abs(share - 0.25) <= 3 * math.sqrt(0.25 * 0.75 / trained), share
    # The doctor read each source with its own fields (the general one is question/answer) and the whole.
    check = json.loads((result.run_dir / "eval" / "data_check.json").read_text())
    assert [s["num_rows"] for s in check["stats"]["sources"]] == [60, 200]
    assert check["stats"]["num_train"] + check["stats"]["num_eval"] == 260
    report = (result.run_dir / "report.html").read_text()
    assert "general.jsonl" in report and "Training mix" in report


def test_the_held_out_share_comes_from_the_first_source(tiny_llama, tmp_path):
    from tunesmith.models.load import load_tokenizer
    from tunesmith.tasks import get_task

    domain, general = _sources(tmp_path)
    values = tiny_config(tiny_llama, domain, tmp_path / "runs")
    values["data"]["train"] = [
        {"path": str(domain), "weight": 1},
        {"path": str(general), "weight": 1, "fields": {"instruction": "question", "output": "answer"}},
    ]
    config = build_config(values)
    prepared = get_task("instruct").prepare_data(config, load_tokenizer(str(tiny_llama), config.model))
    assert all(str(r.source).startswith(str(domain)) for r in prepared.eval_records)
    assert prepared.source_of is not None
    by_source = Counter(prepared.source_of(i) for i in range(len(prepared.train)))
    assert by_source == {0: 54, 1: 54}


def test_resuming_mid_run_replays_the_same_mix(tiny_llama, tmp_path, monkeypatch):
    import os
    import signal

    from tunesmith import api
    from tunesmith.errors import TrainingInterrupted
    from tunesmith.train import loop as loop_module
    from tunesmith.train.loss import batch_to_device

    from ..reliability.helpers import RecordingProgress

    domain, general = _sources(tmp_path, num_domain=20, num_general=50)

    def config(name: str):
        values = tiny_config(tiny_llama, domain, tmp_path / "runs", run_name=name)
        values["data"]["train"] = [
            {"path": str(domain), "weight": 1},
            {"path": str(general), "weight": 1, "fields": {"instruction": "question", "output": "answer"}},
        ]
        values["data"]["packing"] = False
        values["train"].update(max_steps=6, batch_size=4)
        return build_config(values)

    seen: list[tuple[int, ...]] = []

    def record(batch, device):
        seen.append(tuple(batch["input_ids"].flatten().tolist()))
        return batch_to_device(batch, device)

    monkeypatch.setattr(loop_module, "batch_to_device", record)
    api.train(config("reference"))
    reference, seen[:] = list(seen), []

    def stop_after_three(step, _record):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        api.train(config("resumed"), progress=RecordingProgress(stop_after_three))
    assert len(seen) == 3
    api.train(config("resumed"), resume=True)
    assert seen == reference  # the same mixed examples in the same order, nothing skipped or repeated
    mixes = [
        json.loads((tmp_path / "runs" / name / "summary.json").read_text())["data"]["mix"]
        for name in ("reference", "resumed")
    ]
    assert mixes[0] == mixes[1] and sum(s["num_trained"] for s in mixes[0]) == 24


def test_a_sources_format_that_does_not_fit_the_task_names_the_source(tmp_path):
    from tunesmith.data.formats import load_records

    data = write_jsonl(tmp_path / "a.jsonl", [{"text": "plain text"}])
    with pytest.raises(UserError, match=re.escape("config key `data.train[1].format` (or `data.format`")):
        load_records(str(data), "conversation", "text", what="data.train[1]")

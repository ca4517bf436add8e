"""The output-path rule (tunesmith/outputs.py), tried as a hostile user would, on real folders.

Every verb that writes an output (export HF and GGUF, data check --fix/--json/--html, predict,
eval --out, select --out, data curve --out, report) may create a new path, fill an empty folder or
replace its own earlier output; anything else is refused with exit code 2, one line naming the
path, and every byte of the user's files is still there afterwards.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tunesmith.config import build_config

from ..conftest import tiny_config, write_jsonl


def run_cli(*args: str) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with the hash of its bytes (what must survive a refused verb)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".tunesmith.lock"
    }


def assert_refused(result: tuple[int, str, str], *fragments: str) -> None:
    code, stdout, stderr = result
    assert code == 2, stdout + stderr
    assert "Traceback" not in stdout + stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in stderr.replace("\n", " "), stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models):
    """A finished tiny instruct run (LoRA) in runs/run, next to another run and a notes file."""
    from tunesmith import api

    root = tmp_path_factory.mktemp("outputs")
    rows = [{"instruction": f"Say {w}.", "output": w} for w in ["red", "blue", "green", "gold"] * 5]
    train = write_jsonl(root / "data" / "train.jsonl", rows)
    for name in ("run", "other"):
        config = tiny_config(tiny_models["llama"], train, root / "runs", run_name=name)
        api.train(build_config(config))
    (root / "runs" / "notes.txt").write_text("my notes\n")
    return root


def user_folder(root: Path, name: str = "mine") -> Path:
    folder = root / name
    folder.mkdir(exist_ok=True)
    (folder / "thesis.tex").write_text("\\section{results}\n")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return folder


def test_export_refuses_every_folder_it_did_not_make(trained):
    root = trained
    run = root / "runs" / "run"
    before = snapshot(root)
    mine = user_folder(root)
    before_mine = snapshot(mine)
    assert_refused(run_cli("export", str(run), "--out", str(mine)), str(mine), "--overwrite")
    assert_refused(run_cli("export", str(run), "--out", str(root / "runs")), "input of this command")
    assert_refused(run_cli("export", str(run), "--out", str(run)), "input of this command")
    assert_refused(run_cli("export", str(run), "--out", str(run / "final")), "input of this command")
    assert_refused(
        run_cli("export", str(run), "--out", str(root / "runs" / "other")), "not written by tunesmith"
    )
    # --overwrite never takes a run, the run being read or a folder holding them.
    for target in (root / "runs", run, run / "final", root / "runs" / "other"):
        code, _, stderr = run_cli("export", str(run), "--out", str(target), "--overwrite")
        assert code == 2 and "Traceback" not in stderr, stderr
    assert_refused(
        run_cli("export", str(run), "--out", str(root / "runs" / "other"), "--overwrite"),
        "holds a tunesmith run",
    )
    # Nothing is written inside a run, nor under a file.
    assert_refused(run_cli("export", str(run), "--out", str(run / "final" / "sub")), "inside the run")
    assert_refused(run_cli("export", str(run), "--out", str(root / "runs" / "notes.txt" / "x")), "is a file")
    notes = root / "runs" / "notes.txt"
    assert_refused(run_cli("export", str(run), "--out", str(notes)), str(notes), "a file of yours")
    assert snapshot(mine) == before_mine
    assert {k: v for k, v in snapshot(root).items() if not k.startswith("mine/")} == before


def test_export_writes_new_and_empty_folders_and_replaces_only_its_own(trained):
    from transformers import AutoModelForCausalLM

    from tunesmith.outputs import OUTPUT_MARKER, folder_purpose

    root, run = trained, trained / "runs" / "run"
    out = root / "exports" / "merged"
    assert run_cli("export", str(run), "--out", str(out))[0] == 0
    assert folder_purpose(out) == "export"
    first = (out / "model.safetensors").stat().st_ino
    # Its own earlier export: replaced whole.
    code, _, stderr = run_cli("export", str(run), "--out", str(out))
    assert code == 0, stderr
    assert (out / "model.safetensors").stat().st_ino != first
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    AutoModelForCausalLM.from_pretrained(out)
    empty = root / "empty"
    empty.mkdir()
    assert run_cli("export", str(run), "--out", str(empty))[0] == 0
    assert (empty / OUTPUT_MARKER).is_file() and (empty / "config.json").is_file()


def test_overwrite_moves_the_users_folder_aside_and_deletes_nothing(trained):
    root, run = trained, trained / "runs" / "run"
    mine = user_folder(root, "taken")
    before = snapshot(mine)
    code, stdout, stderr = run_cli("export", str(run), "--out", str(mine), "--overwrite")
    assert code == 0, stderr
    kept = [p for p in root.iterdir() if p.name.startswith("taken.replaced-")]
    assert len(kept) == 1 and snapshot(kept[0]) == before
    assert (mine / "config.json").is_file()
    assert str(kept[0]) in (stdout + stderr).replace("\n", "")


def test_gguf_export_is_refused_before_any_work(trained):
    root, run = trained, trained / "runs" / "run"
    mine = user_folder(root, "ggufmine")
    before = snapshot(mine)
    assert_refused(run_cli("export", str(run), "--format", "gguf", "--out", str(mine)), str(mine))
    assert_refused(
        run_cli("export", str(run), "--format", "gguf", "--out", str(run)), "input of this command"
    )
    assert snapshot(mine) == before


def test_data_check_fix_never_touches_its_input(trained):
    root = trained
    data = root / "data"
    before = snapshot(data)
    train = data / "train.jsonl"
    assert_refused(run_cli("data", "check", str(train), "--fix", str(data)), str(data))
    assert_refused(
        run_cli("data", "check", str(train), "--fix", str(data), "--overwrite"), "input of this command"
    )
    assert_refused(run_cli("data", "check", str(train), "--fix", str(train)), "input of this command")
    assert_refused(run_cli("data", "check", str(train), "--json", str(train)), "input of this command")
    assert snapshot(data) == before
    fixed = root / "fixed"
    code, _, stderr = run_cli("data", "check", str(train), "--fix", str(fixed))
    assert code in (0, 1), stderr
    assert (fixed / "train.jsonl").is_file() and (fixed / "removed.jsonl").is_file()
    assert run_cli("data", "check", str(train), "--fix", str(fixed))[0] in (0, 1)  # its own: replaced


def test_data_check_reports_replace_their_own_files_only(trained):
    root = trained
    train = root / "data" / "train.jsonl"
    report, page = root / "check.json", root / "check.html"
    for _ in range(2):  # the second time the files are tunesmith's own and are replaced
        code, _, stderr = run_cli("data", "check", str(train), "--json", str(report), "--html", str(page))
        assert code in (0, 1), stderr
    assert json.loads(report.read_text())["verdict"]
    users = root / "users.json"
    users.write_text('{"mine": true}\n')
    assert_refused(run_cli("data", "check", str(train), "--json", str(users)), str(users), "--overwrite")
    assert users.read_text() == '{"mine": true}\n'


def test_report_refuses_a_report_html_of_the_users(trained):
    root = trained
    run = root / "runs" / "other"
    assert run_cli("report", str(run))[0] == 0  # its own report: rebuilt
    (run / "report.html").write_text("<html>my own page</html>")
    assert_refused(run_cli("report", str(run)), "report.html")
    assert (run / "report.html").read_text() == "<html>my own page</html>"


def test_select_curve_eval_and_bench_refuse_a_taken_folder_before_any_work(trained, tiny_models):
    from tunesmith import api
    from tunesmith.errors import UserError

    root = trained
    mine = user_folder(root, "picked")
    before = snapshot(mine)
    train = root / "data" / "train.jsonl"
    with pytest.raises(UserError, match="picked"):
        api.select("instruct", str(train), [str(tiny_models["llama"])], out_dir=mine, cpu=True)
    config = build_config(tiny_config(tiny_models["llama"], train, root / "runs", run_name="c"))
    with pytest.raises(UserError, match="picked"):
        api.data_curve(config, out_dir=mine)
    with pytest.raises(UserError, match="input of this command"):
        api.data_curve(config, out_dir=root / "data")
    assert_refused(
        run_cli("eval", str(root / "runs" / "run"), "--data", str(train), "--out", str(mine)), str(mine)
    )
    with pytest.raises(UserError, match="picked"):  # `tunesmith bench --out`: before the harness loads
        api.benchmark(str(root / "runs" / "run"), ["any_task"], out_dir=mine)
    assert snapshot(mine) == before


@pytest.fixture
def tmpfs(tmp_path):
    """A real tmpfs mount point (tests run as root in CI; skipped elsewhere)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_mount_point_with_files_is_refused_and_an_empty_one_is_filled(trained, tmpfs):
    run = trained / "runs" / "run"
    (tmpfs / "keep.txt").write_text("on the mount\n")
    assert_refused(run_cli("export", str(run), "--out", str(tmpfs)), str(tmpfs))
    assert_refused(run_cli("export", str(run), "--out", str(tmpfs), "--overwrite"), "mount point")
    assert (tmpfs / "keep.txt").read_text() == "on the mount\n"
    (tmpfs / "keep.txt").unlink()
    code, _, stderr = run_cli("export", str(run), "--out", str(tmpfs))
    assert code == 0, stderr
    assert (tmpfs / "config.json").is_file() and not [
        p for p in tmpfs.iterdir() if p.name.startswith(".tunesmith-tmp")
    ]


def test_an_untagged_file_is_ours_only_while_its_bytes_are_what_tunesmith_wrote(tmp_path):
    from tunesmith import outputs
    from tunesmith.errors import UserError

    csv = tmp_path / "preds.csv"
    outputs.write_output_file(outputs.claim_output(csv, "predictions", directory=False), "a,b\n1,2\n")
    assert outputs.claim_output(csv, "predictions", directory=False).state == "ours"
    # Another purpose, an edited byte, or a damaged ledger: the file counts as the user's.
    with pytest.raises(UserError, match="already exists and tunesmith did not write it"):
        outputs.claim_output(csv, "data-check-json", directory=False)
    csv.write_text("a,b\n1,3\n")
    with pytest.raises(UserError, match="already exists and tunesmith did not write it"):
        outputs.claim_output(csv, "predictions", directory=False)
    outputs.write_output_file(
        outputs.claim_output(csv, "predictions", directory=False, overwrite=True), "x\n"
    )
    assert [p.name for p in tmp_path.glob("preds.csv.replaced-*")] and csv.read_text() == "x\n"
    outputs.ledger_path().write_text("{not json")
    with pytest.raises(UserError, match="already exists and tunesmith did not write it"):
        outputs.claim_output(csv, "predictions", directory=False)

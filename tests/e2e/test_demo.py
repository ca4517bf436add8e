"""`tunesmith demo`: the embedded model, the embedded samples, a lower held-out loss after training."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tunesmith.cli import app


def test_demo_ends_with_a_lower_held_out_loss(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--output-dir", str(tmp_path), "--steps", "12"])
    assert result.exit_code == 0, result.output
    assert "(lower)" in result.output and "generations on held-out prompts" in result.output
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["after"]["loss"] < summary["before"]["loss"]
    assert len(summary["after"]["generations"]) == 4
    assert (tmp_path / "demo" / "report.html").is_file()

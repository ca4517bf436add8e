"""The `tunesmith` command line: a thin shell over `tunesmith.api`.

Heavy libraries (torch, transformers) are imported inside the commands, so `tunesmith --help`
answers at once. A user mistake prints one line and exits with code 2 (traceback with --debug).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from tunesmith.tasks import task_names  # the registry alone: no torch, `--help` stays quick

TASKS_HELP = " | ".join(task_names())
app = typer.Typer(
    name="tunesmith",
    help=f"Finetune pre-trained language models on your own data ({', '.join(task_names())}).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
OVERWRITE_HELP = (
    "take an output path that exists and tunesmith did not write for this verb: the old one is moved aside "
    "(<name>.replaced-<time>), never deleted; runs and the command's inputs are never taken"
)
data_app = typer.Typer(help="Look at and check training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_state = {"debug": False}


def _console(stderr: bool = False) -> Any:
    from tunesmith import ui

    return ui.console(stderr)


def _progress(console: Any, show_bar: bool = True) -> Any:
    from tunesmith.ui import ConsoleProgress

    return ConsoleProgress(console, show_bar)


def _run(action: Callable[[], Any]) -> Any:
    """Run a command; turn user errors into one red line and exit code 2. Whatever reaches the
    terminal (messages and tracebacks) has secrets (tokens, API keys) redacted."""
    from rich.markup import escape

    from tunesmith.config import redact
    from tunesmith.errors import NonFiniteError, TrainingInterrupted, UserError

    try:
        return action()
    except (UserError, NonFiniteError) as exc:
        if _state["debug"]:
            _print_traceback()
        else:
            # escape: a message's own brackets (`pip install "tunesmith[gpu]"`) are text, not markup.
            _console(stderr=True).print(
                f"[bold red]error:[/bold red] {escape(redact(str(exc)))}", soft_wrap=True
            )
        raise typer.Exit(exc.exit_code) from None
    except TrainingInterrupted as exc:
        _console(stderr=True).print(f"[yellow]{escape(redact(str(exc)))}[/yellow]")
        raise typer.Exit(TrainingInterrupted.exit_code) from None
    except KeyboardInterrupt:
        _console(stderr=True).print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None
    except Exception:
        # A bug of ours or a library's: the traceback is for the bug report, secrets taken out.
        _print_traceback()
        raise typer.Exit(1) from None


def _print_traceback() -> None:
    import traceback

    from tunesmith.config import redact

    sys.stderr.write(redact(traceback.format_exc()))
    sys.stderr.flush()


def _print_version(value: bool) -> None:
    if value:
        from tunesmith import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="show full tracebacks"),
    version: bool = typer.Option(
        False, "--version", help="print the version and exit", is_eager=True, callback=_print_version
    ),
) -> None:
    _state["debug"] = debug


def _load(config_path: str | None, overrides: list[str] | None) -> Any:
    from tunesmith.config import load_config

    return load_config(config_path, overrides or [])


@app.command()
def train(
    config: str = typer.Argument(..., help="YAML config (see examples/)"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. train.learning_rate=1e-4"),
    resume: bool = typer.Option(
        False, "--resume", help="continue the run from its newest complete checkpoint"
    ),
    resume_from: str = typer.Option(
        None, "--resume-from", help="continue the run from this checkpoint (a step-N folder of the run)"
    ),
    allow_data_change: bool = typer.Option(
        False, "--allow-data-change", help="resume although a data file changed since the checkpoint"
    ),
    merge: bool = typer.Option(
        False, "--merge", help="also write a merged model (adapter folded into the base)"
    ),
    nproc: int = typer.Option(1, "--nproc", help="processes (GPUs) on this node; >1 launches torchrun"),
) -> None:
    """Finetune a model as the config says."""
    if nproc > 1:
        _exec_torchrun(nproc, sys.argv[1:])

    def action() -> None:
        from tunesmith import api, ui
        from tunesmith.config import config_to_yaml
        from tunesmith.train.distributed import is_main_process

        cfg = _load(config, overrides)
        console = _console()
        console.quiet = not is_main_process()  # under torchrun, rank 0 alone prints
        console.print("[bold]resolved config[/bold]")
        console.print(config_to_yaml(cfg), markup=False)
        progress = _progress(console, cfg.logging.progress)
        result = api.train(
            cfg,
            resume=resume,
            merge=merge,
            progress=progress,
            resume_from=resume_from,
            allow_data_change=allow_data_change,
        )
        console.print(
            f"[bold green]done[/bold green]: {result.steps} steps in {result.seconds:.0f}s; "
            f"model in {result.final_dir}"
        )
        ui.print_prediction(console, result.run_dir)

    _run(action)


def _exec_torchrun(nproc: int, argv: list[str]) -> None:
    args = [
        a for i, a in enumerate(argv) if not (a.startswith("--nproc") or (i and argv[i - 1] == "--nproc"))
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # one node: a free local port, so two jobs on one machine never collide
        f"--nproc-per-node={nproc}",
        "-m",
        "tunesmith",
        *args,
    ]
    os.execv(sys.executable, command)


@app.command()
def demo(
    output_dir: str = typer.Option("runs", help="folder for the demo run"),
    steps: int = typer.Option(None, help="optimizer steps (default 250: about a minute on 2 idle cores)"),
) -> None:
    """Finetune the embedded model on the embedded sample instructions (CPU, about a minute)."""

    def action() -> None:
        from rich.table import Table

        from tunesmith import api

        console = _console()
        result = api.demo(output_dir, progress=_progress(console), max_steps=steps)
        table = Table(title="held-out data, before and after finetuning")
        table.add_column("metric")
        table.add_column("before", justify="right")
        table.add_column("after", justify="right")
        from tunesmith.tasks import metric_value, task_info

        for metric in task_info(result.task).metrics:  # what the task declares
            old, new = metric_value(result.before, metric.key), metric_value(result.after, metric.key)
            if old is not None and new is not None:
                table.add_row(metric.label, f"{old:.4f}", f"{new:.4f}")
        console.print(table)
        gens = Table(title="generations on held-out prompts", show_lines=True)
        gens.add_column("prompt")
        gens.add_column("before")
        gens.add_column("after")
        gens.add_column("reference")
        for old, new in zip(
            result.before.get("generations", []), result.after.get("generations", []), strict=False
        ):
            gens.add_row(old["prompt"], old["output"], new["output"], new.get("reference", ""))
        console.print(gens)
        improved = result.after.get("loss", 0) < result.before.get("loss", 0)
        verdict = "[green]lower[/green]" if improved else "[red]not lower[/red]"
        console.print(
            f"held-out loss {result.before.get('loss', float('nan')):.4f} -> "
            f"{result.after.get('loss', float('nan')):.4f} ({verdict}); run: {result.run_dir}"
        )

    _run(action)


@app.command()
def generate(
    model: str = typer.Argument(..., help="run directory, model/adapter directory, 'embedded' or hub id"),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="user message (repeat for several)"),
    system: str = typer.Option(None, help="system message"),
    max_new_tokens: int = typer.Option(128, help="tokens to generate"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
) -> None:
    """Generate replies through the chat template."""

    def action() -> None:
        from tunesmith import api

        loaded = api.load_for_inference(model)
        for text in prompt:
            reply = api.generate(model, text, system, max_new_tokens, temperature, loaded=loaded)
            typer.echo(reply)

    _run(action)


@app.command()
def chat(
    model: str = typer.Argument(..., help="run directory, model/adapter directory, 'embedded' or hub id"),
    system: str = typer.Option(None, help="system message"),
    max_new_tokens: int = typer.Option(256, help="tokens per reply"),
    temperature: float = typer.Option(0.7, help="sampling temperature; 0 = greedy"),
) -> None:
    """Talk to a model interactively (empty line or Ctrl-D to quit, /reset to start over)."""

    def action() -> None:
        from tunesmith import api

        console = _console()
        loaded = api.load_for_inference(model)
        messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        console.print("[dim]empty line or Ctrl-D to quit; /reset starts over[/dim]")
        while True:
            try:
                text = console.input("[bold]you>[/bold] ")
            except EOFError:
                break
            if not text.strip():
                break
            if text.strip() == "/reset":
                messages = messages[:1] if system else []
                continue
            messages.append({"role": "user", "content": text})
            reply = api.generate(model, messages, None, max_new_tokens, temperature, loaded=loaded)
            messages.append({"role": "assistant", "content": reply})
            console.print(f"[bold cyan]model>[/bold cyan] {reply}")

    _run(action)


@app.command("eval")
def eval_command(
    model: str = typer.Argument(..., help="run directory, adapter or model directory"),
    data: list[str] = typer.Option(
        ..., "--data", "-d", help="evaluation data (file or folder; repeat for several)"
    ),
    task: str = typer.Option(None, "--task", help=f"{TASKS_HELP} (default: the run's task)"),
    baseline: str = typer.Option(
        None, "--baseline", help="model to compare with (default: the run's base model)"
    ),
    out: str = typer.Option(
        None, "--out", help="folder for the JSON results (default: <run>/eval/eval-<data>/)"
    ),
    overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. eval.max_new_tokens=32"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Evaluate a tuned model on data, side by side with its base model."""

    def action() -> None:
        from tunesmith import api, ui

        console = _console()
        result = api.evaluate(
            model,
            data if len(data) > 1 else data[0],
            task,
            baseline,
            out,
            overrides,
            _progress(console),
            overwrite=overwrite,
        )
        ui.print_comparison(console, result)

    _run(action)


@app.command("bench")
def bench_command(
    model: str = typer.Argument(..., help="run directory, adapter or model directory"),
    tasks: str = typer.Option(
        None, "--tasks", help="harness tasks or groups, comma-separated (default: the run's eval.benchmarks)"
    ),
    include_path: list[str] = typer.Option(
        None, "--include-path", help="folder or file of your own task YAMLs (repeat for several)"
    ),
    limit: str = typer.Option(
        None,
        "--limit",
        help="examples per task (under 1: a share; `all`: every one, whatever the run's config says)",
    ),
    num_fewshot: int = typer.Option(None, "--num-fewshot", help="few-shot examples (default: the task's)"),
    batch_size: int = typer.Option(None, "--batch-size", help="requests per forward pass"),
    chat_template: bool = typer.Option(
        None, "--chat-template/--no-chat-template", help="wrap prompts in the model's chat template"
    ),
    baseline: str = typer.Option(
        None, "--baseline", help="model to compare with (default: the run's base model)"
    ),
    out: str = typer.Option(
        None, "--out", help="folder for the JSON results (default: <run>/eval/benchmarks-*/)"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Standard benchmarks (lm-evaluation-harness) on a tuned model and its base, with a verdict per row."""

    def action() -> None:
        from tunesmith import api, ui

        console = _console()
        result = api.benchmark(
            model,
            [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
            baseline,
            out,
            _progress(console),
            include_path=include_path or None,
            limit=_bench_limit(limit),
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            chat_template=chat_template,
            overwrite=overwrite,
        )
        ui.print_benchmarks(console, result)

    _run(action)


def _bench_limit(text: str | None) -> float | str | None:
    from tunesmith.errors import UserError

    if text is None or text.strip().lower() in ("all", "none"):
        return "all" if text is not None else None
    try:
        return float(text)
    except ValueError:
        raise UserError(
            f"--limit: {text!r} is not a number; give a count, a share under 1, or `all`"
        ) from None


@app.command()
def report(run: str = typer.Argument(..., help="run directory")) -> None:
    """Rebuild a run's report.html from the files in its directory; prints its path."""

    def action() -> None:
        from tunesmith import api

        typer.echo(str(api.write_report(run)))

    _run(action)


@app.command()
def export(
    run: str = typer.Argument(..., help="run directory or adapter directory"),
    out: str = typer.Option(..., "--out", help="where to write the merged model"),
    output_format: str = typer.Option(
        "hf", "--format", help="hf (merged HF directory) or gguf (llama.cpp/Ollama)"
    ),
    quant: str = typer.Option("f16", "--quant", help="GGUF only: f16 or q8_0"),
    llama_cpp: str = typer.Option(None, "--llama-cpp", help="GGUF only: folder with llama.cpp's converter"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Merge a LoRA adapter into its base model, check parity, write it with a model card.

    The result loads with plain transformers (and vLLM/TGI); the export stops if the merged
    model's logits differ from base + adapter. With --format gguf: DIR/model.gguf (llama.cpp's
    converter) and an Ollama Modelfile, checked against the merged model before it is kept."""

    def action() -> None:
        from tunesmith import api

        if output_format == "gguf":
            result = api.export_gguf(
                run,
                out,
                quant=quant,
                llama_cpp=llama_cpp,
                progress=_progress(_console()),
                overwrite=overwrite,
            )
            typer.echo(f"GGUF model: {result.gguf_file} ({result.size_bytes / 1e6:.1f} MB, {result.quant})")
            return
        if output_format != "hf":
            from tunesmith.errors import UserError

            raise UserError(f"--format {output_format}: choose hf or gguf")
        path = api.merge_adapter(run, out, progress=_progress(_console()), overwrite=overwrite)
        typer.echo(f"merged model: {path}")

    _run(action)


@app.command()
def serve(
    run: str = typer.Argument(..., help="run directory, adapter directory or model directory"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (localhost by default)"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    api_key: str = typer.Option(
        None, "--api-key", envvar="TUNESMITH_API_KEY", help="require `Authorization: Bearer KEY`"
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    name: str = typer.Option(None, "--name", help="model id clients ask for (default: the folder name)"),
) -> None:
    """Serve a trained model behind an OpenAI-compatible API (/v1/chat/completions, /v1/completions)."""

    def action() -> None:
        from tunesmith import api

        progress = _progress(_console(stderr=True))
        api.serve(run, host=host, port=port, api_key=api_key, device=device, name=name, progress=progress)

    _run(action)


app.command("merge", help="Same as export (fold a LoRA adapter into its base model).")(export)


@app.command("ui")
def web_ui(
    runs_dirs: list[str] = typer.Option(
        None,
        "--dir",
        "-d",
        help="output folder whose runs it shows and launches into (repeat; default: runs)",
    ),
    examples: str = typer.Option(
        None, "--examples", help="folder of example configs to start from (default: ./examples if there)"
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (localhost by default)"),
    port: int = typer.Option(7860, "--port", help="TCP port"),
    token: str = typer.Option(
        None,
        "--token",
        envvar="TUNESMITH_UI_TOKEN",
        help="require this token (made up when --host is not local)",
    ),
) -> None:
    """A local web app: watch, compare, launch, stop and resume runs from the browser (extra: ui)."""

    def action() -> None:
        import importlib.util
        from pathlib import Path

        from tunesmith.errors import UserError

        for module in ("fastapi", "uvicorn"):
            if importlib.util.find_spec(module) is None:
                raise UserError(
                    f'tunesmith ui needs {module}, which is not installed: pip install "tunesmith[ui]"'
                )
        # The web app is a client of the api, as this command line is: it sits above api.py.
        from tunesmith.webui.server import serve_ui

        folders = runs_dirs or ["runs"]
        chosen = examples if examples is not None else ("examples" if Path("examples").is_dir() else None)

        def ready(url: str) -> None:
            typer.echo(
                f"tunesmith ui: runs in {', '.join(folders)}; open {url} (Ctrl-C stops the page, not the runs)"
            )

        serve_ui(folders, examples=chosen, host=host, port=port, token=token, on_ready=ready)

    _run(action)


@app.command()
def predict(
    run: str = typer.Argument(..., help="run directory (or its final/ directory) of a classify run"),
    data: str = typer.Option(
        ..., "--data", help="file to classify: JSONL/CSV/TSV/Parquet with a text column"
    ),
    out: str = typer.Option(
        ..., "--out", help="CSV to write: text, predicted label(s), one probability per label"
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="rows per forward pass"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Classify every row of a file with a trained classifier."""

    def action() -> None:
        from tunesmith import api

        console = _console(stderr=True)
        progress = _progress(console)
        result = api.predict(
            run, data, out, batch_size=batch_size, device=device, progress=progress, overwrite=overwrite
        )
        line = f"{result['rows']} rows -> {result['out']}"
        if "kept_as" in result:
            line += f" (--overwrite: the old file is kept as {result['kept_as']})"
        if "accuracy" in result:
            line += f" (accuracy on the given labels: {result['accuracy']:.4f})"
        typer.echo(line)

    _run(action)


@data_app.command("preview")
def data_preview(
    config: str = typer.Argument(..., help="YAML config"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides"),
    num: int = typer.Option(2, "--num", "-n", help="samples to show"),
    as_json: bool = typer.Option(False, "--json", help="print [{source, text, trained: [spans]}] as JSON"),
) -> None:
    """Show tokenized samples: trained tokens highlighted, untrained tokens dimmed."""

    def action() -> None:
        from tunesmith import api, ui

        samples = api.preview(_load(config, overrides), num)
        if as_json:
            typer.echo(json.dumps([s["json"] for s in samples], ensure_ascii=False, indent=1))
            return
        ui.print_preview(_console(), samples)

    _run(action)


@data_app.command("check")
def data_check(
    data: str = typer.Argument(None, help="training data: file, folder or glob (or give --config)"),
    config: str = typer.Option(
        None,
        "--config",
        help="a training config: its data.train (every source of a mix, each with its format and fields), "
        "data.eval, task, model and data.max_seq_len, unless given here",
    ),
    eval: str = typer.Option(None, "--eval", help="held-out data, checked for leakage and coverage"),
    task: str = typer.Option(None, "--task", help=f"{TASKS_HELP} (default: from the fields)"),
    model: str = typer.Option(
        None, "--model", help="whose tokenizer counts tokens (weights never load) [default: embedded]"
    ),
    max_seq_len: int = typer.Option(
        None, "--max-seq-len", help="tokens per sequence (data.max_seq_len) [default: 512]"
    ),
    target: str = typer.Option(None, "--target", help="real inputs (.txt one per line, or JSONL) to compare"),
    near_dup_threshold: float = typer.Option(
        0.8, "--near-dup-threshold", help="MinHash Jaccard for near-dups"
    ),
    json_out: str = typer.Option(None, "--json", help="write the findings as JSON here (for CI)"),
    html_out: str = typer.Option(None, "--html", help="write the findings as an HTML page here"),
    fix: str = typer.Option(
        None, "--fix", help="folder for a cleaned copy + removed.jsonl (inputs untouched)"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Check data before training: format, duplicates, leakage, lengths, labels, size, coverage, secrets.

    Exit code 0: ready (or ready with warnings); 1: not ready (blocking errors); 2: usage error
    or a data file that does not parse (.jsonl or .json alike).
    """

    def action() -> int:

        from tunesmith import ui
        from tunesmith.config import ModelConfig
        from tunesmith.data import doctor
        from tunesmith.data.load import spec_paths
        from tunesmith.errors import UserError
        from tunesmith.models.load import load_tokenizer, resolve_model_path
        from tunesmith.outputs import claim_output, write_output_file
        from tunesmith.report.findings import FINDINGS_PURPOSE, JSON_PURPOSE, findings_json, findings_page
        from tunesmith.tasks import task_info

        if task is not None:
            task_info(task)  # an unknown task: one line naming the known ones
        train, held_out, name, tokenizer_model, seq_len, loaded = _check_inputs(
            data, config, eval, task, model, max_seq_len
        )
        if fix and not isinstance(train, str):
            raise UserError(
                "--fix writes a cleaned copy of one data path, and this config's data.train is several sources "
                "(or maps its fields): run `tunesmith data check PATH --fix DIR` on each source's file"
            )
        # Every output path is checked before any work: a taken path is refused, inputs never written.
        inputs = [*spec_paths(train), *spec_paths(held_out), target]
        fix_claim = (
            claim_output(fix, "data-fix", inputs=inputs, overwrite=overwrite, flag="--fix") if fix else None
        )
        json_claim = (
            claim_output(
                json_out, JSON_PURPOSE, inputs=inputs, overwrite=overwrite, directory=False, flag="--json"
            )
            if json_out
            else None
        )
        html_claim = (
            claim_output(
                html_out, FINDINGS_PURPOSE, inputs=inputs, overwrite=overwrite, directory=False, flag="--html"
            )
            if html_out
            else None
        )
        console = _console()
        if name is None:  # the task whose records the data looks like
            kind = doctor.detect_kind(spec_paths(train)[0])
            name = next(n for n in task_names() if task_info(n).record_kind == kind)
        else:
            kind = task_info(name).record_kind
        # Only the tokenizer, to count tokens: the model's weights never load.
        tokenizer = load_tokenizer(resolve_model_path(tokenizer_model), ModelConfig(name=tokenizer_model))
        result, fixed = doctor.run_check(
            train,
            held_out,
            target,
            kind=kind,
            task=name,
            tokenizer=tokenizer,
            max_seq_len=seq_len,
            near_duplicate_threshold=near_dup_threshold,
            fix=fix_claim,
            prompt_template=loaded.reward.prompt_template if loaded else None,
            system_prompt=loaded.data.system_prompt if loaded else None,
        )
        result.report.stats["model"] = tokenizer_model
        report = result.report.to_dict()
        ui.print_check(console, result.report)
        for claim, text in ((json_claim, findings_json), (html_claim, findings_page)):
            if claim is not None:
                write_output_file(claim, text(report))
                if claim.kept_as is not None:
                    console.print(f"--overwrite: the old {claim.path} is kept as {claim.kept_as}")
        if fixed:
            console.print(
                f"cleaned copy in {fix}: {fixed['removed']} rows removed (see {fixed['removed_list']})"
            )
            if fixed.get("kept_as"):
                console.print(f"--overwrite: the old {fix} is kept as {fixed['kept_as']}")
        if any(item.get("id") == "malformed_rows" for item in report.get("findings", [])):
            return 2  # a file that does not parse is a usage error, as for a malformed .json
        return 1 if report["verdict"] == "not ready" else 0

    code = _run(action)
    if code:
        raise typer.Exit(code)


def _check_inputs(
    data: str | None,
    config: str | None,
    eval: str | None,
    task: str | None,
    model: str | None,
    max_seq_len: int | None,
) -> tuple[Any, Any, str | None, str, int, Any]:
    """What `data check` checks: the arguments, or the --config's data, task, model and length under
    them; last, the loaded config (None without --config)."""
    from tunesmith.errors import UserError

    if config is None:
        if data is None:
            raise UserError("tunesmith data check: give the data (a file, folder or glob) or --config")
        return data, eval, task, model or "embedded", max_seq_len or 512, None
    loaded = _load(config, None)
    train: Any = data if data is not None else loaded.data.train_sources()
    if not train:
        raise UserError(f"{config}: data.train is not set; name your training data there or as the argument")
    if isinstance(train, list) and len(train) == 1 and not train[0].fields and train[0].format == "auto":
        train = train[0].path  # one source read as it is: a plain path, as given on the command line
    return (
        train,
        eval if eval is not None else loaded.data.eval,
        task or loaded.task,
        model or loaded.model.name,
        max_seq_len or loaded.data.max_seq_len,
        loaded,
    )


@data_app.command("curve")
def data_curve(
    config: str = typer.Argument(..., help="YAML config (its data, model and training settings)"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides"),
    fractions: str = typer.Option("0.125,0.25,0.5", "--fractions", help="subset sizes, e.g. 1/8,1/4,1/2"),
    max_minutes: float = typer.Option(30.0, "--max-minutes", help="bound on the whole curve's time"),
    out: str = typer.Option(
        None, "--out", help="folder for curve.json/png/html (default: output_dir/curve-<time>)"
    ),
    verify: bool = typer.Option(
        False, "--verify", help="also train on all the data and check the prediction"
    ),
    repeats: int = typer.Option(
        2, "--repeats", help="runs per size with other seeds: their spread is the seed noise in the band"
    ),
    json_output: bool = typer.Option(False, "--json", help="print the result as JSON"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Is my data enough? Short runs on nested subsets, a power-law fit, the metric at 1x/2x/4x the data."""

    def action() -> None:
        import json as json_module

        from tunesmith import api, ui
        from tunesmith.select.curve import parse_fractions

        console = _console(stderr=json_output)
        result = api.data_curve(
            _load(config, overrides),
            fractions=parse_fractions(fractions),
            max_minutes=max_minutes,
            out_dir=out,
            overwrite=overwrite,
            verify=verify,
            repeats=repeats,
            progress=_progress(console, show_bar=False),
        )
        if json_output:
            typer.echo(json_module.dumps(result, indent=2, default=str))
            return
        ui.print_curve(console, result)

    _run(action)


@app.command("select")
def select_command(
    task: str = typer.Option(None, "--task", help=TASKS_HELP + " (default: the --config's)"),
    data: list[str] = typer.Option(
        None,
        "--data",
        "-d",
        help="your training data, repeat for several (default: the --config's data.train)",
    ),
    config: str = typer.Option(
        None,
        "--config",
        help="your YAML config: its task, data and how the data reads (data.fields, format, templates) and "
        "the task's own settings (e.g. reward functions) are measured with and kept in the recommendation",
    ),
    candidates: list[str] = typer.Option(
        None, "--candidates", help="model dirs, 'embedded' or hub ids (default: the catalogue, filtered)"
    ),
    gpu_memory: str = typer.Option(
        None, "--gpu-memory", help="memory of the GPU you will train on, e.g. 24GiB"
    ),
    cpu: bool = typer.Option(False, "--cpu", help="you will train on this machine's CPU (fp32)"),
    time_budget: str = typer.Option(None, "--time-budget", help="longest acceptable training, e.g. 2h"),
    max_params: str = typer.Option(None, "--max-params", help="catalogue filter, e.g. 1B"),
    license: str = typer.Option(None, "--license", help="catalogue filter, e.g. apache-2.0"),
    min_context: int = typer.Option(None, "--min-context", help="catalogue filter: context length"),
    max_seq_len: int = typer.Option(None, "--max-seq-len", help="cap on the recommended sequence length"),
    sample: int = typer.Option(64, "--sample", help="held-out examples scored per candidate"),
    probe_seconds: float = typer.Option(
        20.0, "--probe-seconds", help="at most this long timing steady-state training steps per candidate"
    ),
    out: str = typer.Option(None, "--out", help="folder for select.json and a ready config.yaml"),
    json_output: bool = typer.Option(False, "--json", help="print the result as JSON instead of a table"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    more_candidates: list[str] = typer.Argument(
        None, help="further candidates: `--candidates A B C` reads B and C here", show_default=False
    ),
) -> None:
    """Rank base models by how well they fit your data, memory and time; recommend one with a config."""

    def action() -> None:
        import json as json_module

        from tunesmith import api, ui

        console = _console(stderr=json_output)
        extra_args = [c for c in [*(candidates or []), *(more_candidates or [])] if c]
        result = api.select(
            task,
            (data if len(data) > 1 else data[0]) if data else None,
            extra_args,
            config=_load(config, None) if config else None,
            gpu_memory=gpu_memory,
            cpu=cpu,
            time_budget=time_budget,
            max_params=max_params,
            license=license,
            min_context=min_context,
            max_seq_len=max_seq_len,
            sample=sample,
            probe_seconds=probe_seconds,
            out_dir=out,
            overwrite=overwrite,
            progress=_progress(console),
        )
        if json_output:
            typer.echo(json_module.dumps(result, indent=2, default=str))
            return
        ui.print_selection(console, result)

    _run(action)


@app.command()
def config_reference() -> None:
    """Print every config key with its default and description (Markdown)."""
    from tunesmith.config import config_reference as reference

    typer.echo(reference())


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""The tunesmith verbs as Python functions, each a few lines calling the room that does the work.

from tunesmith import api
result = api.train(api.load_config("examples/instruct_lora.yaml"))
print(api.generate(result.run_dir, "What is the opposite of hot?"))

Progress and messages go to the `Progress` given (tunesmith.progress; the CLI's is ui.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import Config, config_to_yaml, load_config  # noqa: F401  (re-exported)
from tunesmith.errors import UserError
from tunesmith.models.inference import quiet_libraries  # noqa: F401  (re-exported)
from tunesmith.progress import NoProgress, Progress
from tunesmith.train.run import RunResult  # noqa: F401  (re-exported)
from tunesmith.train.rundir import RunDir, base_model_of, resolve_trained  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from tunesmith.export.gguf import GgufExport


def train(
    config: Config,
    resume: bool = False,
    merge: bool = False,
    progress: Progress | None = None,
    resume_from: str | Path | None = None,
    allow_data_change: bool = False,
) -> RunResult:
    """Finetune as the config says; returns where the run went and the before/after metrics.
    `resume_from`: resume from this checkpoint of the run (a step-N folder) instead of the newest;
    `allow_data_change`: resume although a data file changed since the run recorded it."""
    from tunesmith.train.run import run

    return run(
        config,
        resume=resume,
        merge=merge,
        progress=progress,
        resume_from=resume_from,
        allow_data_change=allow_data_change,
    )


def demo(
    output_dir: str = "runs", progress: Progress | None = None, max_steps: int | None = None
) -> RunResult:
    """Finetune the embedded model on the embedded sample instructions and show before/after."""
    from tunesmith.demo import demo_config

    progress = progress or NoProgress()
    progress.message("tunesmith demo: instruction finetuning of the embedded model on CPU")
    return train(demo_config(output_dir, max_steps), progress=progress)


def load_for_inference(
    model_or_run: str, device: str = "auto", trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer) for a run, an adapter directory, a model directory, 'embedded' or a hub id."""
    from tunesmith.models import inference
    from tunesmith.tasks.trained import refuse_chat

    target = resolve_trained(model_or_run)
    refuse_chat(target)  # a classifier does not chat: the error names `predict`
    return inference.load_for_inference(target, model_or_run, device, trust_remote_code)


def generate(
    model_or_run: str,
    prompt: str | list[dict[str, str]],
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    loaded: tuple[Any, Any] | None = None,
) -> str:
    """The assistant's reply to `prompt` (a string or a list of messages), through the chat template."""
    from tunesmith.evaluate.generation import reply_to

    model, tokenizer = loaded or load_for_inference(str(model_or_run))
    return reply_to(model, tokenizer, prompt, system, max_new_tokens, temperature)


def merge_adapter(
    adapter_or_run: str | Path, out_dir: str | Path, progress: Progress | None = None, overwrite: bool = False
) -> Path:
    """Merge a LoRA adapter into its base weights (parity-checked) and write it with a model card;
    `out_dir` must be new, empty or an earlier export (`overwrite`: a user's path is moved aside)."""
    from tunesmith import export

    return export.merge_adapter(adapter_or_run, out_dir, progress, overwrite=overwrite)


def export_gguf(model_or_run: str | Path, out_dir: str | Path, **options: Any) -> GgufExport:
    """out_dir/model.gguf + Ollama Modelfile + card, parity-checked (quant, llama_cpp, progress: export/gguf.py)."""
    from tunesmith.export.gguf import export_gguf as export

    return export(model_or_run, out_dir, **options)


def serve(model_or_run: str, **options: Any) -> None:
    """Serve a trained model behind an OpenAI-compatible API until interrupted (options: serve.py)."""
    from tunesmith.serve import serve as run_server

    run_server(model_or_run, **options)


def predict(
    model_or_run: str,
    data: str,
    out: str | Path,
    batch_size: int = 32,
    device: str = "auto",
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Classify every row of `data` with a trained classifier into a CSV; see evaluate/predict.py."""
    from tunesmith.evaluate.predict import predict_file

    return predict_file(model_or_run, data, out, batch_size, device, progress, overwrite)


def preview(config: Config, num_samples: int = 3) -> list[dict[str, Any]]:
    """Tokenized samples with each token marked trained or not (for `tunesmith data preview`)."""
    from tunesmith.data.preview import sample_json
    from tunesmith.data.templates import IGNORE_INDEX
    from tunesmith.models.load import load_tokenizer, resolve_model_path
    from tunesmith.tasks import get_task

    tokenizer = load_tokenizer(resolve_model_path(config.model.name), config.model)
    task = get_task(config.task)
    prepared = task.prepare_data(config, tokenizer)
    samples = []
    # Indexing, not list(): a pretraining corpus's blocks are read from disk only when asked for.
    for example in (prepared.train[i] for i in range(min(num_samples, len(prepared.train)))):
        pieces = []
        if example.labels is not None:
            for token, label in zip(example.input_ids, example.labels, strict=True):
                pieces.append((tokenizer.decode([token]), label != IGNORE_INDEX))
        else:
            pieces.append((tokenizer.decode(example.input_ids), False))
        label = task.preview_label(prepared, example)
        sample = {"source": example.source, "pieces": pieces, "label": label}
        samples.append({**sample, "json": sample_json(tokenizer, example)})  # for `data preview --json`
    return samples


def write_report(run_dir: str | Path) -> Path:
    """Build report.html for a run from the files in its directory (again at any time)."""
    from tunesmith.report.html import write_report as write

    run = RunDir(Path(run_dir))
    if not run.is_run():
        raise UserError(
            f"{run.path} is not a tunesmith run directory (no {run.marker.name} or {run.metrics.name}); "
            "pass a folder under runs/"
        )
    return write(run.path)


def evaluate(
    model_or_run: str,
    data: str | list[str],
    task: str | None = None,
    baseline: str | None = None,
    out_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The task's metrics on `data` for a tuned model and, side by side, its baseline.

    `model_or_run` is a run directory (its final/ model), an adapter or a model directory. The
    baseline defaults to the base model the run recorded. Both models see the same tokenized
    data (the tuned model's tokenizer and chat template, as in training). Results go to
    `out_dir` (default: <run>/eval/eval-<data name>/ for a run) as tuned.json, baseline.json and
    comparison.json; the same dict is returned.
    """
    from tunesmith.evaluate.runner import evaluate_models

    return evaluate_models(model_or_run, data, task, baseline, out_dir, overrides, progress, overwrite)


def benchmark(
    model_or_run: str,
    tasks: list[str] | None = None,
    baseline: str | None = None,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Standard benchmarks (lm-evaluation-harness) for a tuned model and, under the same protocol, its base.

    `tasks` and `settings` (include_path, limit, num_fewshot, batch_size, chat_template: the keys of
    eval.benchmarks) default to the run's eval.benchmarks. Returns {rows: base vs tuned per task and
    metric with standard errors and a verdict, tuned, baseline, out_dir}; the files go to `out_dir`
    (default: <run>/eval/benchmarks-<tasks>/).
    """
    from tunesmith.evaluate.runner import benchmark_models

    overwrite = bool(settings.pop("overwrite", False))  # the output-path rule's --overwrite, not a setting
    return benchmark_models(
        model_or_run, {"tasks": tasks, **settings}, baseline, out_dir, progress, overwrite
    )


def select(
    task: str | None,
    data: Any,
    candidates: list[str] | None = None,
    overwrite: bool = False,
    config: Config | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Rank candidate base models on the user's data and hardware; see tunesmith.select.select.
    `config`: the user's config, whose task and data.train stand in for a missing `task` and `data`,
    and whose other settings (how the data reads, the task's own sections) every candidate is measured
    with and the recommended config keeps. `out_dir` follows the output-path rule (new, empty or an
    earlier select's folder)."""
    from tunesmith.select import select as run_select
    from tunesmith.select import user_settings

    if config is not None:
        task = task or config.task
        if data is None:
            data = config.model_dump(mode="json")["data"]["train"]
        options["settings"] = user_settings(config)
    if task is None or data is None:
        missing = "--task" if task is None else "--data"
        raise UserError(f"tunesmith select: give {missing}, or a --config that sets it")
    if options.get("out_dir"):
        from tunesmith.data.load import spec_paths

        inputs: list[Any] = spec_paths(data)
        options["out_dir"] = _output_folder(
            options["out_dir"], "select", [*inputs, *(candidates or [])], overwrite
        )
    return run_select(task, data, candidates, **options)


def data_curve(config: Config, overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Is the data enough? A learning curve from short nested-subset runs; see tunesmith.select.curve.
    `out_dir` follows the output-path rule (new, empty or an earlier curve's folder without runs)."""
    from tunesmith.select.curve import data_curve as run_curve

    if options.get("out_dir"):
        inputs = [config.data.train, config.data.eval, config.model.name]
        flat = [i for item in inputs for i in (item if isinstance(item, list) else [item])]
        options["out_dir"] = _output_folder(options["out_dir"], "curve", flat, overwrite)
    return run_curve(config, **options)


def _output_folder(out_dir: str | Path, purpose: str, inputs: list[Any], overwrite: bool) -> Path:
    """A folder a verb fills as it goes, claimed by the output-path rule and marked as its own."""
    from tunesmith.outputs import claim_output, open_output_folder

    paths = [i for i in inputs if isinstance(i, (str, Path))]
    return open_output_folder(claim_output(out_dir, purpose, inputs=paths, overwrite=overwrite))

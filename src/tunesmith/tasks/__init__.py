"""The typed task contract: everything about a kind of finetuning, declared by the task.

A task is two things, both registered here by name (`register`):

- `TaskInfo`: what the task declares, cheap to read (no torch): the readers outside tasks/ ask it
  instead of knowing tasks by name. `task_info(name)` gives it.

    name, module                the task's name and the module that holds its code (its `TASK`)
    description                 one line for help texts: what trains
    record_kind                 the canonical record its data converts into (data/formats.py)
    step_unit                   what a training step's targets are (STEP_UNITS: "token" |
                                "example" | "pair"; a task of a new shape adds its unit there);
                                the loop logs the step's accuracy as f"{step_unit}_accuracy"
    metrics                     the held-out metrics people read (`Metric`: key, label,
                                higher_is_better), in order: the before/after line, the report's
                                cards and bars, the model card, `tunesmith demo`
    headline                    the one metric `data curve` predicts (a key of `metrics`)
    config_keys                 config keys (dotted, or a whole section) only this task reads;
                                set for another task they are warned about and ignored
    four_bit_base               whether adapter.method: qlora (LoRA on a 4-bit base) applies
    catalogue_needs             what a catalogue model must offer (models/catalog.yaml `offers`)
    has_forgetting_probe        the general-text perplexity before/after (LM tasks)
    on_policy                   trains on its own samples: train/rl.py's fit phase instead of the
                                supervised loop on fixed batches (train/run.py picks it)

- `Task`: the task's functions, in its module as `TASK = Task(info=task_info(NAME), ...)`.
  `get_task(name)` imports the module and gives it. The recipe (train/run.py), evaluation,
  `select` and the previews call these and never branch on the task's name:

    prepare_data(config, tokenizer, progress) -> PreparedData  load, normalize, split, tokenize
    build_model(model_path, config, device, prepared)       base model (+ head) with the adapter
    make_loss(model, config, cross_entropy) -> nn.Module    the loss module (below)
    evaluate(EvalContext, phase) -> dict                    the task's metrics before/during/after
    save_final(model, tokenizer, out_dir, prepared, config) HF/PEFT directory
    load_for_eval(target, name, config, device, prepared)   a trained (or base) model ready for evaluate
    measure_fit(FitContext) -> dict                         select's probe of a base model's fit
    trained_data_settings(target) -> dict                   data settings a trained model fixes
    recommend_epochs, preview_label                         select's epochs; what previews show

The loss module's forward returns sums over its micro-batch, which the loop (train/loop.py) adds
up over the step's micro-batches and the ranks:

    loss_sum      the loss summed over the targets (the loop divides by the step's num_targets)
    num_targets   targets in the micro-batch (tokens, examples or pairs: the task's step_unit)
    num_correct   targets predicted right (logged as f"{step_unit}_accuracy")
    logged        optional {name: (sum, count)}: any other scalar to log each step; the loop sums
                  both over micro-batches and ranks and logs sum / count under `name`

Adding a task touches this package (its module and one `register` call below) and config.py (its
config section, if it has one) only; tests/unit/test_new_task.py registers a throwaway task in the
test and trains, logs and reports it to prove it. Readers that need only the declarations (config
validation, the report, the CLI's help) import this module alone: it imports no torch.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tunesmith.data.mix import SourceMix
from tunesmith.data.mix import summary as mix_summary

if TYPE_CHECKING:
    from peft import PeftModel
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tunesmith.config import Config
    from tunesmith.data.blocks import Blocks, CorpusStats
    from tunesmith.data.formats import Record
    from tunesmith.data.labels import ClassifyStats, LabelSet
    from tunesmith.data.preference import PairData, PairStats
    from tunesmith.data.prompts import PromptExample, PromptStats
    from tunesmith.data.templates import ChatTemplate
    from tunesmith.data.tokenize import Example, TokenizeStats
    from tunesmith.progress import Progress
    from tunesmith.train.loss import CrossEntropy

    TrainedModel = PreTrainedModel | PeftModel  # what build_model gives: a transformers model, maybe adapted

Phase = Literal["before", "during", "after"]
Collate = Callable[[Sequence[Sequence[int]]], dict[str, Any]]  # rows of example indices -> batch


STEP_UNITS = ("token", "example", "pair", "completion")
StepUnit = Literal["token", "example", "pair", "completion"]


@dataclass(frozen=True)
class Metric:
    """A held-out metric a task declares: a key of its evaluate result ("general.perplexity" for a
    nested one), what people read, and which way is better."""

    key: str
    label: str
    higher_is_better: bool


@dataclass(frozen=True)
class TaskInfo:
    """What a task declares (see the module docstring); cheap to import, no torch."""

    name: str
    module: str
    description: str
    record_kind: str
    step_unit: StepUnit
    metrics: tuple[Metric, ...]
    headline: str
    config_keys: tuple[str, ...] = ()
    four_bit_base: bool = False
    catalogue_needs: tuple[str, ...] = ("causal_lm",)
    has_forgetting_probe: bool = False
    on_policy: bool = False
    # select ranks base models on these keys of measure_fit's result, in order (the first decides,
    # the next break ties): by default the loss per character of the text that would be trained.
    fit_ranking: tuple[Metric, ...] = (
        Metric("loss_per_char", "loss per character on the tokens you would train", False),
    )

    @property
    def step_accuracy(self) -> str:
        """The key the loop logs a step's share of targets predicted right under."""
        return f"{self.step_unit}_accuracy"

    @property
    def headline_metric(self) -> Metric:
        return next(m for m in self.metrics if m.key == self.headline)

    def metric(self, key: str) -> Metric | None:
        return next((m for m in self.metrics if m.key == key), None)


@dataclass
class DataStats:
    """What the run trains and evaluates on: the data line, summary.json's `data` and the report."""

    train: TokenizeStats | ClassifyStats | CorpusStats | PairStats | PromptStats
    eval: TokenizeStats | ClassifyStats | CorpusStats | PairStats | PromptStats | None = None
    skipped_records: list[str] = field(default_factory=list)  # bad records skipped (data.on_error)
    warnings: list[str] = field(default_factory=list)
    chat_template: str | None = None  # where the chat template came from (conversation tasks)
    labels: list[str] | None = None  # the label order (classification tasks)
    class_weights: list[float] | None = None
    mix: list[SourceMix] | None = None  # several data.train sources: what each holds, gives and trained

    def summary(self) -> str:
        parts = [f"train: {self.train.summary()}"]
        if self.mix:
            parts.append(mix_summary(self.mix))
        if self.eval is not None:
            parts.append(f"eval: {self.eval.summary()}")
        if self.chat_template:
            parts.append(f"chat template: {self.chat_template}")
        if self.skipped_records:
            parts.append(f"{len(self.skipped_records)} bad records skipped")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values; fields a task does not have are left out."""
        values = {
            "train": asdict(self.train),
            "eval": asdict(self.eval) if self.eval is not None else None,
            "skipped_records": self.skipped_records,
            "warnings": self.warnings,
            "chat_template": self.chat_template,
            "labels": self.labels,
            "class_weights": self.class_weights,
            "mix": [source.as_dict() for source in self.mix] if self.mix else None,
        }
        return {k: v for k, v in values.items() if v is not None or k == "eval"}


@dataclass(frozen=True)
class PromptData:
    """An on-policy task's prompts, ready to sample from (train) and to score under the fixed protocol."""

    train: list[PromptExample]
    eval: list[PromptExample]


@dataclass(frozen=True)
class PreparedData:
    """A task's tokenized data. Typed fields only; those a task does not use stay None."""

    train: Sequence[Example]  # tokenized examples (pretrain: blocks read on demand)
    eval: Sequence[Example]
    rows: Sequence[list[int]]  # train examples grouped into rows (packed or one per row)
    collate: Collate  # rows -> batch tensors, from train examples
    stats: DataStats
    pad_id: int  # the padding token of batches
    eval_records: Sequence[Record] = ()  # canonical records behind `eval` (instruct, classify, preference)
    template: ChatTemplate | None = None  # the chat template (conversation tasks)
    label_set: LabelSet | None = None  # classification: label names and order
    class_weights: list[float] | None = None
    vocab_size: int | None = None  # classification: len(tokenizer), the embeddings' size
    eval_blocks: Blocks | None = None  # pretrain: the held-out documents as blocks
    pairs: PairData | None = None  # preference: the tokenized pairs (train/eval hold their chosen sides)
    source_of: Callable[[int], int] | None = None  # a mix: train example index -> its data.train source
    prompts: PromptData | None = None  # reward: the prompts answers are sampled for (train/eval: as examples)


@dataclass(frozen=True)
class EvalContext:
    """Everything a task's evaluate needs; one shape for every task and phase."""

    model: nn.Module
    loss: nn.Module  # the task's loss module around `model`
    prepared: PreparedData
    tokenizer: PreTrainedTokenizerBase
    config: Config
    device: str


@dataclass(frozen=True)
class FitContext:
    """What `select` measures a candidate base model with (the model is its plain causal LM)."""

    model: nn.Module
    prepared: PreparedData
    tokenizer: PreTrainedTokenizerBase
    config: Config
    device: str
    sample: int  # held-out examples to score


class PrepareData(Protocol):
    def __call__(
        self, config: Config, tokenizer: PreTrainedTokenizerBase, progress: Progress | None = None
    ) -> PreparedData: ...


class MakeLoss(Protocol):
    def __call__(
        self, model: nn.Module, config: Config, cross_entropy: CrossEntropy | None = None
    ) -> nn.Module: ...


@dataclass(frozen=True)
class Task:
    """One kind of finetuning (see the module docstring for each function's job)."""

    info: TaskInfo  # what the task declares (task_info(name))
    prepare_data: PrepareData
    build_model: Callable[[str, Config, str, PreparedData], TrainedModel]
    make_loss: MakeLoss
    evaluate: Callable[[EvalContext, Phase], dict[str, Any]]
    save_final: Callable[[TrainedModel, PreTrainedTokenizerBase, Path, PreparedData, Config], None]
    # (target: the resolved model directory, name: what the user gave, config, device, prepared)
    load_for_eval: Callable[[Path, str, Config, str, PreparedData], nn.Module]
    measure_fit: Callable[[FitContext], dict[str, Any]]
    # data settings a trained model fixes for evaluating it (classify: its label order), from its directory
    trained_data_settings: Callable[[Path], dict[str, Any]]
    # (epochs, why) recommended for this much data: (num_examples, num_tokens) -> ...
    recommend_epochs: Callable[[int, int], tuple[int, str]]
    # What a training example's label shows as in previews (LM examples have none: None).
    preview_label: Callable[[PreparedData, Example], Any]
    # What the trained model is for the verbs that use it: None = a causal LM (generate, chat,
    # serve, GGUF); otherwise (final_dir, device) -> (model, tokenizer) loads it with its head for
    # export, and `chat_refusal` says which verb fits instead of the chat verbs.
    load_trained: Callable[[Path, str], tuple[Any, Any]] | None = None
    chat_refusal: str | None = None

    # The declarations, read through the task (TaskInfo holds them).
    @property
    def name(self) -> str:
        return self.info.name

    @property
    def record_kind(self) -> str:
        return self.info.record_kind

    @property
    def has_forgetting_probe(self) -> bool:
        return self.info.has_forgetting_probe

    @property
    def headline_metric(self) -> str:
        """The held-out metric (a key of evaluate's result) that `data curve` fits and predicts."""
        return self.info.headline

    @property
    def higher_is_better(self) -> bool:
        return self.info.headline_metric.higher_is_better

    @property
    def on_policy(self) -> bool:
        return self.info.on_policy


# --------------------------------------------------------------------------------------------
# The registry: every task by name

_INFOS: dict[str, TaskInfo] = {}
_TASKS: dict[str, Task] = {}  # tasks registered with their code (others: their module's TASK)


def register(info: TaskInfo, task: Task | None = None) -> None:
    """Make a task known by its name: its declarations, and its code (`task`, or later from
    `info.module`'s TASK). Registering a name again replaces it."""
    if info.headline not in {m.key for m in info.metrics}:
        raise ValueError(f"task {info.name!r}: headline {info.headline!r} is not one of its metrics")
    if info.step_unit not in STEP_UNITS:
        raise ValueError(f"task {info.name!r}: step_unit {info.step_unit!r}; use one of {STEP_UNITS}")
    _INFOS[info.name] = info
    _TASKS.pop(info.name, None)
    if task is not None:
        _TASKS[info.name] = task


def unregister(name: str) -> None:
    """Forget a task (a test's throwaway task)."""
    _INFOS.pop(name, None)
    _TASKS.pop(name, None)


def task_names() -> tuple[str, ...]:
    """The registered tasks' names, in registration order."""
    return tuple(_INFOS)


def task_info(name: str) -> TaskInfo:
    """What task `name` declares; a UserError naming the choices for an unknown name."""
    if name not in _INFOS:
        from tunesmith.errors import UserError

        raise UserError(f"task {name!r}: use one of {', '.join(_INFOS)}")
    return _INFOS[name]


def get_task(name: str) -> Task:
    """Task `name`'s functions (its module is imported on first use)."""
    info = task_info(name)
    if name in _TASKS:
        return _TASKS[name]
    task: Task = importlib.import_module(info.module).TASK  # read each time: the module's TASK is the truth
    return task


def metric_value(metrics: dict[str, Any], key: str) -> float | None:
    """The number at `key` of an evaluate result ("general.perplexity" reads a nested dict), or None."""
    value: Any = metrics
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def metrics_line(info: TaskInfo, metrics: dict[str, Any]) -> str:
    """The task's declared metrics as one line ("loss 1.2345, perplexity 3.4361, ...")."""
    shown = []
    for metric in info.metrics:
        value = metric_value(metrics, metric.key)
        if value is not None:
            shown.append(f"{metric.label} {value:.4f}")
    return ", ".join(shown)


def held_out_count(num_items: int, fraction: float, max_items: int) -> int:
    """How many items (records or documents, never blocks) to hold out: the one rule.

    A share of the items, at least one and at most `max_items`, always leaving one to train on;
    none when the fraction is 0 or there are fewer than two items.
    """
    if fraction <= 0 or num_items < 2:
        return 0
    return min(max_items, max(1, round(fraction * num_items)), num_items - 1)


def hold_out(items: list[Any], fraction: float, max_items: int, seed: int) -> tuple[list[Any], list[Any]]:
    """Split records into train and held-out (seeded), each in the original order."""
    count = held_out_count(len(items), fraction, max_items)
    if not count:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def lm_epochs(num_examples: int, num_tokens: int) -> tuple[int, str]:
    """Epochs for example-based tasks: fewer passes as the data grows."""
    epochs = 3 if num_examples < 1000 else 2 if num_examples < 10_000 else 1
    return epochs, f"epochs {epochs}: {num_examples:,} training examples (< 1k: 3, < 10k: 2, else 1)"


def no_label(prepared: PreparedData, example: Example) -> Any:
    return example.label


def no_trained_settings(target: Path) -> dict[str, Any]:
    return {}


# --------------------------------------------------------------------------------------------
# The built-in tasks' declarations (their code: the module each names)

_LM_METRICS = (
    Metric("loss", "loss", False),
    Metric("perplexity", "perplexity", False),
    Metric("token_accuracy", "token accuracy", True),
)
_FORGETTING = Metric("general.perplexity", "general perplexity", False)

register(
    TaskInfo(
        name="instruct",
        module="tunesmith.tasks.instruct",
        description="conversations: a causal LM trained on the assistant's tokens",
        record_kind="conversation",
        step_unit="token",
        metrics=(
            *_LM_METRICS,
            Metric("exact_match", "exact match", True),
            Metric("rouge_l", "ROUGE-L", True),
            _FORGETTING,
        ),
        headline="loss",
        config_keys=("eval.benchmarks",),  # the harness scores causal LMs
        four_bit_base=True,
        catalogue_needs=("causal_lm", "chat"),
        has_forgetting_probe=True,
    )
)
register(
    TaskInfo(
        name="pretrain",
        module="tunesmith.tasks.pretrain",
        description="unlabelled text: continued pretraining of a causal LM on every token",
        record_kind="text",
        step_unit="token",
        metrics=(*_LM_METRICS, _FORGETTING),
        headline="loss",
        config_keys=("data.replay", "data.cache_dir", "eval.benchmarks"),
        four_bit_base=True,
        catalogue_needs=("causal_lm", "base"),
        has_forgetting_probe=True,
    )
)
register(
    TaskInfo(
        name="classify",
        module="tunesmith.tasks.classify",
        description="labelled text: a classification head (+ LoRA or the full body)",
        record_kind="labeled",
        step_unit="example",
        metrics=(Metric("accuracy", "accuracy", True), Metric("macro_f1", "macro-F1", True)),
        headline="accuracy",
        config_keys=(
            "data.labels",
            "data.multi_label",
            "data.label_columns",
            "data.threshold",
            "data.class_weights",
        ),
        catalogue_needs=("classification",),
        has_forgetting_probe=False,  # a classifier's head has no next-token perplexity to lose
        fit_ranking=(  # what the user will measure first, then how sure the model is of the labels
            Metric("zero_shot_accuracy", "zero-shot accuracy on your labels", True),
            Metric("loss_per_char", "label cross-entropy", False),
        ),
    )
)
register(
    TaskInfo(
        name="preference",
        module="tunesmith.tasks.preference",
        description="pairs of a better and a worse reply: DPO / IPO / SimPO",
        record_kind="preference",
        step_unit="pair",
        metrics=(
            # held-out pairs the implicit reward ranks right: what `data curve` predicts
            Metric("reward_accuracy", "reward accuracy", True),
            Metric("reward_margin", "reward margin", True),
            Metric("logp_accuracy", "log-prob accuracy", True),
            _FORGETTING,
        ),
        headline="reward_accuracy",
        config_keys=("preference", "eval.benchmarks"),
        catalogue_needs=("causal_lm", "chat"),
        has_forgetting_probe=True,
    )
)
register(
    TaskInfo(
        name="reward",
        module="tunesmith.tasks.reward",
        description="prompts and reward functions: the policy trained on its own sampled answers (GRPO family)",
        record_kind="prompt",
        step_unit="completion",
        metrics=(
            # held-out prompts, one greedy answer each, scored by the run's rewards (the fixed protocol)
            Metric("reward_mean", "held-out reward", True),
            Metric("truncated_share", "truncated answers", False),
        ),
        headline="reward_mean",
        config_keys=("reward",),
        catalogue_needs=("causal_lm", "chat"),
        has_forgetting_probe=False,  # the policy loss scores sampled answers, not plain text
        on_policy=True,
        fit_ranking=(  # the run's own rewards on held-out prompts, one greedy answer each
            Metric("reward_mean", "held-out reward (greedy, your reward functions)", True),
            Metric("truncated_share", "share of answers cut at max_completion_tokens", False),
        ),
    )
)

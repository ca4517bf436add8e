"""The typed task contract: what each kind of finetuning provides, as plain functions.

`get_task(name)` gives a `Task`: a frozen bundle of the task's functions and facts. The recipe
(train/run.py), evaluation, `select` and the previews call these and never branch on the task's
name; adding a task touches this package and config.py only.

    prepare_data(config, tokenizer, progress) -> PreparedData  load, normalize, split, tokenize
    build_model(model_path, config, device, prepared)       base model (+ head) with the adapter
    make_loss(model, config, cross_entropy) -> nn.Module    returns {loss_sum, num_targets, num_correct}
    evaluate(EvalContext, phase) -> dict                    the task's metrics before/during/after
    save_final(model, tokenizer, out_dir, prepared, config) HF/PEFT directory
    load_for_eval(target, name, config, device, prepared)   a trained (or base) model ready for evaluate
    measure_fit(FitContext) -> dict                         select's probe of a base model's fit
    trained_data_settings(target) -> dict                   data settings a trained model fixes
    headline_metric, higher_is_better                       the held-out metric `data curve` predicts
    on_policy                                               fits in train/rl.py (samples while it trains)
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

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

TASK_MODULES = {
    "instruct": "tunesmith.tasks.instruct",
    "pretrain": "tunesmith.tasks.pretrain",
    "classify": "tunesmith.tasks.classify",
    "preference": "tunesmith.tasks.preference",
    "reward": "tunesmith.tasks.reward",
}
TASK_NAMES = tuple(TASK_MODULES)

Phase = Literal["before", "during", "after"]
Collate = Callable[[Sequence[Sequence[int]]], dict[str, Any]]  # rows of example indices -> batch


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

    def summary(self) -> str:
        parts = [f"train: {self.train.summary()}"]
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

    name: str
    record_kind: str  # the canonical record the data converts into (data/formats.py RECORD_KINDS)
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
    has_forgetting_probe: bool  # the general-text perplexity before/after (LM tasks)
    # The held-out metric (a key of evaluate's result) that `data curve` fits and predicts, and
    # whether larger is better (accuracy) or smaller (loss).
    headline_metric: str = "loss"
    higher_is_better: bool = False
    # Trained on its own samples (train/rl.py's fit phase) instead of the supervised loop on fixed batches.
    on_policy: bool = False


def get_task(name: str) -> Task:
    if name not in TASK_MODULES:
        from tunesmith.errors import UserError

        raise UserError(f"task {name!r}: use one of {', '.join(TASK_NAMES)}")
    task: Task = importlib.import_module(TASK_MODULES[name]).TASK
    return task


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

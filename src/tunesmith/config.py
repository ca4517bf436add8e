"""The typed configuration schema, YAML loading and dotted command-line overrides.

Every knob a user can turn lives here, with a one-line description. The YAML maps onto
these models one to one; unknown keys are errors that suggest the closest valid key.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.errors import UserError
from tunesmith.tasks import task_info, task_names

DataFormat = Literal[
    "auto",
    "messages",
    "sharegpt",
    "alpaca",
    "prompt_completion",
    "text",
    "labeled",
    "trl",
    "openai",
    "prompt",
]  # trl, openai (and sharegpt): preference pairs (data/preference.py); prompt: task reward (data/prompts.py)

# What tunesmith passes to apply_chat_template itself: not for data.chat_template_kwargs.
RESERVED_TEMPLATE_ARGUMENTS = {
    "messages",
    "conversation",
    "tools",
    "documents",
    "chat_template",
    "add_generation_prompt",
    "continue_final_message",
    "tokenize",
    "return_dict",
}

# Keys whose values must never be printed or saved (tokens, API keys).
SECRET_KEY_PATTERN = re.compile(r"(^|_)(token|api_key|password|secret|hf_token)$", re.IGNORECASE)
SECRET_VALUE_PATTERN = re.compile(
    r"(hf_[A-Za-z0-9]{8,}|sk-[A-Za-z0-9_\-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|[0-9a-f]{40})"
)


class Section(BaseModel):
    # allow_inf_nan=False: learning_rate=inf, epochs=nan ... are refused, not trained on.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Section):
    name: str = Field(
        "embedded", description="base model: 'embedded', a local directory or a Hugging Face id"
    )
    revision: str | None = Field(
        None, description="hub revision (branch, tag or commit) when `name` is a hub id"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto = bf16 on GPUs that have it, fp32 on CPU"
    )
    attn_implementation: Literal[
        "auto", "sdpa", "eager", "flash_attention_2", "flex_attention", "cpu_varlen"
    ] = Field(
        "auto",
        description="attention kernel; auto = flex attention on CUDA (per-document BlockMask); on CPU in fp32 "
        "cpu_varlen (per-document C kernel, compiled once) for head dim 8, else sdpa; cpu_varlen also pays "
        "off at larger head dims on rows packed with short documents",
    )
    trust_remote_code: bool = Field(
        False, description="run Python code shipped with a model repo (off: only turn on for repos you trust)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available, else cpu")
    token: str | None = Field(None, description="hub token for private models (never logged or saved)")
    allow_longer_context: bool = Field(
        False, description="allow data.max_seq_len over the model's positions (a model with RoPE scaling)"
    )
    # A folder can hold several quantisations of one model: name the one to load.
    gguf_file: str | None = Field(
        None,
        description="GGUF file inside the `name` folder to load (dequantised); a .gguf `name` needs none",
    )


GPU_EXTRA_HINT = 'pip install "tunesmith[gpu]"'


class AdapterConfig(Section):
    method: Literal["lora", "full", "qlora"] = Field(
        "lora",
        description="lora = PEFT LoRA adapter; qlora = LoRA on 4-bit NF4 base weights (bitsandbytes); "
        "full = all weights",
    )
    use_dora: bool = Field(
        False, description="lora/qlora: DoRA (weight-decomposed LoRA: a learned magnitude per output)"
    )
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha; scaling is alpha / r")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout")
    target_modules: str | list[str] = Field(
        "all-linear", description="modules that get LoRA: 'all-linear' or a list of module names"
    )

    @model_validator(mode="after")
    def _check_method(self) -> AdapterConfig:
        if self.use_dora and self.method == "full":
            raise ValueError("use_dora applies to a LoRA adapter; set adapter.method: lora (or qlora)")
        if self.method == "qlora":
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise ValueError(
                    f"method qlora needs bitsandbytes (4-bit base weights), which is not installed; "
                    f"install it with `{GPU_EXTRA_HINT}`, or use adapter.method: lora"
                )
        return self


class ReplayConfig(Section):
    path: str = Field(..., description="general text mixed into continued pretraining")
    ratio: float = Field(0.1, gt=0.0, lt=1.0, description="fraction of training blocks taken from `path`")


class TrainSource(Section):
    """One source of a mix (data.train as a list of sources)."""

    path: str | list[str] = Field(..., description="files, folders, globs or a hub dataset of this source")
    # An epoch is one pass over the first source; the others are drawn to their weight relative to it.
    weight: float = Field(
        1.0, gt=0.0, description="share of the training examples drawn from this source (relative weight)"
    )
    format: DataFormat | None = Field(None, description="this source's record format; default data.format")
    fields: dict[str, str] | None = Field(
        None, description="this source's column mapping; default data.fields"
    )
    name: str | None = Field(None, description="the source's name in the report; default its path")

    def label(self) -> str:
        return self.name or (self.path if isinstance(self.path, str) else ", ".join(self.path))


class DataConfig(Section):
    train: str | list[str | TrainSource] | None = Field(
        None,
        description="training data: files, folders, globs or a hub dataset; or a list of sources "
        "{path, weight, format, fields} mixed by weight (an epoch is one pass over the first)",
    )
    eval: str | list[str] | None = Field(
        None, description="held-out data; when empty, eval_fraction of train"
    )
    eval_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="share of train held out when `eval` is empty"
    )
    max_eval_examples: int = Field(200, ge=1, description="cap on held-out examples (evaluation cost)")
    format: DataFormat = Field("auto", description="record format; auto detects it from the fields")
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="map canonical field -> your column, e.g. {instruction: question, output: answer}",
    )
    max_seq_len: int = Field(
        512, ge=8, le=1_048_576, description="tokens per sequence; longer samples are truncated"
    )
    packing: bool = Field(True, description="pack several samples per row (documents never see each other)")
    system_prompt: str | None = Field(
        None, description="system message prepended to conversations without one"
    )
    chat_template: str | None = Field(
        None,
        description="Jinja chat template, or the path of a .jinja file; default: the tokenizer's own, else ChatML",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="arguments passed to every render of the chat template (apply_chat_template's kwargs, e.g. "
        "{enable_thinking: false} for data without reasoning); the trained tokenizer's template takes them "
        "as its defaults",
    )
    # Off by default: reasoning traces are often distilled from another model; training on them
    # teaches its style of thinking, which a user should choose deliberately.
    train_on_reasoning: bool = Field(
        False, description="instruct: also train assistant `reasoning_content`/`thinking` (rendered always)"
    )
    on_error: Literal["raise", "skip"] = Field("raise", description="bad records: stop (raise) or skip them")
    max_skipped: int = Field(100, ge=0, description="with on_error: skip, stop after this many bad records")
    replay: ReplayConfig | None = Field(None, description="pretrain: mix general text into training")
    general_text: str | None = Field(
        None, description="general reference text for the forgetting probe; default: the embedded corpus"
    )
    labels: list[str] | None = Field(
        None, description="classify: label names in order; default: sorted from data"
    )
    multi_label: bool = Field(False, description="classify: each example may carry several labels")
    label_columns: list[str] | None = Field(
        None, description="classify multi-label: one 0/1 column per label (column names are the label names)"
    )
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="classify multi-label: decision threshold")
    class_weights: Literal["none", "balanced"] | dict[str, float] = Field(
        "none", description="classify: 'balanced', explicit {label: weight}, or none"
    )
    check: bool = Field(True, description="run the data doctor before training; errors stop the run")
    cache_dir: str | None = Field(
        None, description="pretrain: token cache folder; default ~/.cache/tunesmith"
    )

    @field_validator("train", "eval")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("is an empty list; give at least one path")
        return value

    @field_validator("chat_template_kwargs")
    @classmethod
    def _check_template_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(set(value) & RESERVED_TEMPLATE_ARGUMENTS)
        if taken:
            raise ValueError(f"{', '.join(taken)}: set by tunesmith for each render; leave them out")
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k))]
        if bad:
            raise ValueError(f"{', '.join(map(str, bad))}: not a template variable name")
        return value

    @field_validator("train", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        """A list with {path, weight, ...} entries: each entry a source, errors named by its index."""
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not any(isinstance(item, dict) for item in value):
            return value
        sources = []
        for index, item in enumerate(value):
            try:
                sources.append(TrainSource.model_validate({"path": item} if isinstance(item, str) else item))
            except ValidationError as exc:
                problems = []
                for error in exc.errors():
                    key = ".".join(str(p) for p in error["loc"])
                    if error["type"] == "extra_forbidden":
                        close = difflib.get_close_matches(key, list(TrainSource.model_fields), n=1)
                        hint = (
                            f"did you mean `{close[0]}`?"
                            if close
                            else f"use {', '.join(TrainSource.model_fields)}"
                        )
                        problems.append(f"unknown key `{key}`; {hint}")
                    else:
                        problems.append(f"`{key}`: {error['msg'].removeprefix('Value error, ')}")
                raise ValueError(f"source {index}: {'; '.join(problems)}") from None
        labels = [source.label() for source in sources]
        for index, label in enumerate(labels):
            if label in labels[:index]:
                raise ValueError(
                    f"source {index}: its name {label!r} is source {labels.index(label)}'s too; the report "
                    "and the resume record tell sources by name: give each its own `name`"
                )
        return sources

    @field_validator("eval")
    @classmethod
    def _eval_paths(cls, value: Any) -> Any:
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ValueError("takes paths only (weights apply to data.train's sources)")
        return value

    def train_sources(self) -> list[TrainSource]:
        """data.train as weighted sources, each with its format and fields resolved. A path or a list
        of plain paths is one source; a list with any {path, weight} entry makes each entry a source."""
        if self.train is None:
            return []
        items: list[str | TrainSource] = [self.train] if isinstance(self.train, str) else list(self.train)
        if all(isinstance(item, str) for item in items):
            items = [TrainSource(path=cast("str | list[str]", self.train))]
        sources = []
        for item in items:
            source = TrainSource(path=item) if isinstance(item, str) else item
            sources.append(
                source.model_copy(
                    update={
                        "format": source.format or self.format,
                        "fields": self.fields if source.fields is None else source.fields,
                    }
                )
            )
        return sources


class TrainConfig(Section):
    learning_rate: float = Field(2e-4, gt=0.0, description="peak learning rate (LoRA ~2e-4, full ~2e-5)")
    epochs: float = Field(
        1.0, gt=0.0, description="passes over the training data (ignored when max_steps is set)"
    )
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(8, ge=1, description="sequences (packed rows) per micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="share of steps with linear warmup")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warmup")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="final LR as a share of the peak")
    weight_decay: float = Field(
        0.0, ge=0.0, description="AdamW weight decay (not applied to norms and biases)"
    )
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="AdamW beta2")
    max_grad_norm: float = Field(1.0, ge=0.0, description="gradient clipping; 0 turns it off")
    seed: int = Field(42, description="seed for init, shuffling and dropout")
    eval_every: int = Field(50, ge=0, description="evaluate every N steps; 0 only at the end")
    log_every: int = Field(1, ge=1, description="write metrics every N steps")
    save_every: int = Field(
        0, ge=0, description="checkpoint every N steps; 0 only at the end and on interrupt"
    )
    keep_last: int = Field(
        2, ge=1, description="checkpoints kept; older ones are deleted after a successful save"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward to save memory"
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="NaN/inf loss or gradient: stop, or skip step"
    )
    max_skipped_steps: int = Field(
        10, ge=0, description="with on_nonfinite: skip, stop after this many skips"
    )
    num_threads: int | None = Field(None, ge=1, description="CPU threads; default: all cores")
    compile: bool = Field(False, description="torch.compile the model (GPU fast path)")
    predict: bool = Field(
        False,
        description="before training, time a short steady-state probe to predict tokens/s and wall time "
        "(summary.json's prediction; memory is always estimated)",
    )
    check_memory: bool = Field(
        True, description="refuse a run whose estimated memory is over what is free (false: start anyway)"
    )


class BenchmarkConfig(Section):
    """Standard benchmarks through EleutherAI's lm-evaluation-harness (extra: tunesmith[bench])."""

    tasks: list[str] = Field(
        default_factory=list,
        description="harness task or group names (its registry, or your YAMLs in include_path); empty: none",
    )
    include_path: str | list[str] | None = Field(
        None, description="folders (or files) of your own harness task YAMLs (offline or private benchmarks)"
    )
    # Each scored example is a forward pass (a generation for generate_until tasks): cap it on a CPU.
    limit: float | None = Field(
        None, gt=0.0, description="examples per task (a number under 1: a share of them); none = all"
    )
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples; none = each task's own")
    batch_size: int = Field(8, ge=1, description="requests per forward pass")
    chat_template: bool = Field(
        False,
        description="wrap every prompt in the run's chat template (instruction-tuned models); "
        "off: the harness's plain prompts",
    )


class EvalConfig(Section):
    before: bool = Field(True, description="evaluate the base model before training")
    after: bool = Field(True, description="evaluate the tuned model after training")
    prompts: list[str] = Field(
        default_factory=list, description="instruct: prompts generated before and after"
    )
    num_prompts: int = Field(
        4, ge=0, description="instruct: held-out prompts to generate for when none given"
    )
    max_new_tokens: int = Field(64, ge=1, description="generation length for the side-by-side generations")
    forgetting: bool = Field(
        True, description="perplexity on general text before and after (forgetting probe)"
    )
    max_general_tokens: int = Field(16384, ge=256, description="tokens of general text used by the probe")
    # Each scored call is one greedy generation: 50 keeps before/after under minutes on a CPU.
    max_tool_call_turns: int = Field(
        50,
        ge=0,
        description="instruct: held-out tool-call turns scored (well-formed, name, arguments); 0 = off",
    )
    tool_call_max_new_tokens: int = Field(96, ge=8, description="generation length for a scored tool call")
    benchmarks: BenchmarkConfig = Field(
        default_factory=BenchmarkConfig, description="lm-evaluation-harness benchmarks before and after"
    )


class LoggingConfig(Section):
    tensorboard: bool = Field(False, description="also log to TensorBoard (runs/<name>/tensorboard)")
    wandb: bool = Field(False, description="also log to Weights & Biases (extra: tunesmith[wandb])")
    wandb_project: str | None = Field(None, description="W&B project")
    mlflow: bool = Field(False, description="also log to MLflow (extra: tunesmith[mlflow])")
    progress: bool = Field(True, description="show the progress bar")


class DistributedConfig(Section):
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="multi-process: ddp (replicas) or fsdp (FSDP2 shards); auto: fsdp from 3B parameters",
    )
    timeout_minutes: float = Field(
        30.0,
        gt=0.0,
        description="a rank waiting longer than this in a collective fails the job instead of hanging",
    )


class PredictionConfig(Section):
    """What `tunesmith select` predicted for the config it wrote; `train` checks it against the run."""

    source: str = Field("select", description="who predicted: select")
    tokens_per_second: float | None = Field(None, ge=0.0, description="predicted steady-state tokens/s")
    seconds_per_step: float | None = Field(None, ge=0.0, description="predicted seconds per optimizer step")
    peak_memory_bytes: int | None = Field(None, ge=0, description="predicted peak training memory")
    wall_seconds: float | None = Field(None, ge=0.0, description="predicted training time")
    device: str | None = Field(None, description="the device the throughput was measured on")
    batch_size: int | None = Field(None, ge=1, description="train.batch_size the prediction was made for")
    gradient_accumulation_steps: int | None = Field(None, ge=1, description="the same for accumulation")
    max_seq_len: int | None = Field(None, ge=1, description="data.max_seq_len the prediction was made for")
    method: str | None = Field(None, description="adapter.method the prediction was made for")


class PreferenceConfig(Section):
    loss: Literal["dpo", "ipo", "simpo"] = Field(
        "dpo", description="dpo (sigmoid), ipo, or simpo (reference-free, length-normalised)"
    )
    beta: float = Field(0.1, gt=0.0, description="strength of the pull towards the reference (simpo: ~2.0)")
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="dpo: assumed share of flipped pairs (conservative DPO); 0 = plain DPO",
    )
    simpo_gamma: float = Field(0.5, ge=0.0, description="simpo: target reward margin")
    reference: Literal["auto", "adapter_disabled", "precomputed", "frozen_copy"] = Field(
        "auto",
        description="reference log-probs: auto = base with the adapter disabled (LoRA), else computed once "
        "before training (full); frozen_copy keeps a second copy of the weights",
    )


REWARD_BUILTINS = ("answer_match", "label_match", "regex", "tool_call", "length")
POLICY_LOSSES = ("grpo", "dr_grpo", "dapo", "gspo")


class RewardFunctionConfig(Section):
    function: str = Field(
        ...,
        description="a built-in (answer_match, label_match, regex, tool_call, length) or your own code as "
        "module:function or path/file.py:function (this runs your Python code, as a training script would)",
    )
    weight: float = Field(
        1.0, description="weight of this reward in the total the advantages are computed from"
    )
    name: str | None = Field(
        None, description="the reward's name in logs and the report; default: the function's"
    )
    reference: str | None = Field(
        None,
        description="answer_match / label_match: the column holding the reference (default: answer / label)",
    )
    pattern: str | None = Field(None, description="regex: the pattern a completion must contain (re.search)")
    labels: dict[str, str] | None = Field(
        None, description="label_match: the word each reference value stands for, e.g. {'0': negative}"
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="length: completions longer than this are penalised (default: half the budget)",
    )

    @model_validator(mode="after")
    def _check_function(self) -> RewardFunctionConfig:
        if self.function not in REWARD_BUILTINS and ":" not in self.function:
            raise ValueError(
                f"reward function {self.function!r}: use a built-in ({', '.join(REWARD_BUILTINS)}) or "
                "module:function / file.py:function"
            )
        if self.function == "regex" and not self.pattern:
            raise ValueError("reward function regex needs `pattern`, e.g. pattern: '^(positive|negative)$'")
        return self


class RewardConfig(Section):
    functions: list[RewardFunctionConfig] = Field(
        default_factory=list, description="the rewards a completion is scored with (weighted sum)"
    )
    prompt_template: str | None = Field(
        None,
        description="the user turn built from each row's columns, e.g. 'Review: {text}\\nPositive or "
        "negative? One word.'; default: the row's `prompt` (text or messages)",
    )
    loss: Literal["grpo", "dr_grpo", "dapo", "gspo"] = Field(
        "grpo",
        description="grpo (per-sequence mean), dr_grpo (constant normaliser, no std scaling), dapo "
        "(token-level, clip-higher), gspo (sequence-level ratio)",
    )
    group_size: int = Field(
        8, ge=2, description="completions sampled per prompt (the group advantages compare)"
    )
    max_completion_tokens: int = Field(128, ge=1, description="tokens sampled per completion at most")
    temperature: float = Field(1.0, gt=0.0, description="sampling temperature of the rollouts")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling of the rollouts")
    stop: list[str] = Field(
        default_factory=list, description="strings that end a completion (the end-of-turn token always does)"
    )
    # None picks each loss's published value: 0.2 (grpo, dr_grpo, dapo), 3e-4 (gspo's sequence ratio).
    epsilon: float | None = Field(None, gt=0.0, description="lower clip range of the ratio; default per loss")
    epsilon_high: float | None = Field(
        None, gt=0.0, description="upper clip range; default: epsilon (dapo: 0.28, clip-higher)"
    )
    beta: float = Field(
        0.0, ge=0.0, description="KL penalty to the reference (0: none, as DAPO and Dr. GRPO)"
    )
    num_iterations: int = Field(1, ge=1, description="optimisation passes over each batch of rollouts")
    skip_zero_spread: bool = Field(
        False, description="leave out groups whose rewards are all equal (they teach nothing)"
    )
    mask_truncated: bool = Field(
        False, description="leave completions cut at max_completion_tokens out of the loss"
    )
    preflight_prompts: int = Field(
        32, ge=0, description="prompts the base model samples a group for before training (0: no pre-flight)"
    )
    eval_prompts: int = Field(64, ge=0, description="held-out prompts scored greedily before and after")
    sample_completions: int = Field(4, ge=0, description="held-out completions shown in the report")


class Config(Section):
    task: str = Field(
        "instruct", description="a registered task (tasks/__init__.py): " + " | ".join(task_names())
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    prediction: PredictionConfig | None = Field(
        None, description="select's prediction for this config (written by `tunesmith select --out`)"
    )
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    output_dir: str = Field("runs", description="folder that holds run directories")
    run_name: str | None = Field(None, description="run directory name; default: <task>-<date>-<time>")

    @field_validator("task")
    @classmethod
    def _check_task(cls, value: str) -> str:
        if value not in task_names():
            raise ValueError(f"use one of {', '.join(task_names())}")
        return value

    @model_validator(mode="after")
    def _check_qlora_task(self) -> Config:
        if self.adapter.method == "qlora" and not task_info(self.task).four_bit_base:
            takes = " or ".join(n for n in task_names() if task_info(n).four_bit_base)
            raise ValueError(
                f"adapter.method: qlora trains causal LMs on a 4-bit base (task {takes}); use lora for {self.task}"
            )
        return self

    def batch_rows(self) -> int:
        """Rows of data.max_seq_len tokens a training micro-batch holds, for the memory estimate:
        train.batch_size; for a task that samples answers (on-policy), as many rows as hold each
        prompt once and its group's answers (run on the prompt's KV cache: train/policy_loss.py)."""
        if not task_info(self.task).on_policy:
            return self.train.batch_size
        reward, seq_len = self.reward, self.data.max_seq_len
        answers = min(reward.max_completion_tokens, seq_len)
        tokens = self.train.batch_size * (seq_len - answers + reward.group_size * answers)
        return max(1, -(-tokens // seq_len))

    @model_validator(mode="after")
    def _check_reward_functions(self) -> Config:
        if self.task == "reward" and not self.reward.functions:
            raise ValueError(
                "task reward needs at least one reward in `reward.functions`, e.g. "
                "[{function: answer_match, reference: answer}]"
            )
        return self

    @model_validator(mode="after")
    def _check_run_name(self) -> Config:
        if self.run_name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]*", self.run_name):
            raise ValueError(
                f"run_name {self.run_name!r} must be a plain name (letters, digits, '.', '_', '-'; no '/' or '..')"
            )
        return self


def task_only_keys() -> dict[str, tuple[str, ...]]:
    """Keys that only mean something for some tasks (each task declares its own, TaskInfo.config_keys):
    key -> the tasks that read it. Set for another task, they are ignored and warned about."""
    keys: dict[str, tuple[str, ...]] = {}
    for name in task_names():
        for key in task_info(name).config_keys:
            keys[key] = (*keys.get(key, ()), name)
    return keys


# Keys that only mean something for some adapter methods (warned about by config_warnings).
LORA_ONLY_KEYS = ("adapter.r", "adapter.alpha", "adapter.dropout", "adapter.target_modules")


def _set_to_non_default(section: BaseModel, name: str) -> bool:
    """Given (not defaulted) and unlike the default: a dumped-and-reloaded config warns about nothing."""
    field = type(section).model_fields[name]
    default = field.get_default(call_default_factory=True)
    return name in section.model_fields_set and getattr(section, name) != default


def _key_is_set(config: Config, key: str) -> bool:
    """Whether the user set `key` (a dotted key, or a whole section: any of its keys) to a non-default."""
    section_name, _, name = key.partition(".")
    section = getattr(config, section_name, None)
    if not isinstance(section, BaseModel):
        return False
    names = [name] if name else list(type(section).model_fields)
    return any(_set_to_non_default(section, n) for n in names)


def config_warnings(config: Config) -> list[str]:
    """Keys the user set that do not apply to this task or adapter method (they are ignored)."""
    warnings = []
    for key, tasks in task_only_keys().items():
        if config.task not in tasks and _key_is_set(config, key):
            warnings.append(
                f"{key} applies to task {' or '.join(tasks)} only; ignored for task {config.task}"
            )
    if config.adapter.method == "full":
        for key in LORA_ONLY_KEYS:
            if _set_to_non_default(config.adapter, key.split(".")[1]):
                warnings.append(f"{key} applies to adapter.method: lora only; ignored with full")
    return warnings


# --------------------------------------------------------------------------------------------
# Loading, overrides and errors


def _section_fields(model_cls: type[BaseModel], path: tuple[str | int, ...]) -> list[str]:
    """The valid keys at `path` (for 'did you mean' suggestions)."""
    cls: Any = model_cls
    for part in path:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        cls = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if cls is None:
            return []
    return list(cls.model_fields)


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            valid = _section_fields(Config, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            parent = ".".join(str(p) for p in loc[:-1])
            hint = f"did you mean `{parent + '.' if parent else ''}{close[0]}`?" if close else ""
            hint = hint or f"valid keys here: {', '.join(valid)}"
            lines.append(f"{source}: unknown config key `{key}`; {hint}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            value = item.get("input")
            shown = "" if isinstance(value, dict) or key.endswith("token") else f" (got {value!r})"
            lines.append(f"{source}: config key `{key}`: {message}{shown}")
    return "\n".join(lines)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ['train.learning_rate=1e-4', 'data.packing=false'] into a nested dict."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(
                f"override {item!r} must look like key.subkey=value, e.g. train.learning_rate=1e-4"
            )
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r} conflicts with an earlier override of `{part}`")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class DuplicateKeyError(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would silently keep the last)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(f"key `{key}` is given twice, on lines {seen[key]} and {line}")
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found; check the path (examples are in examples/)")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except DuplicateKeyError as exc:
        raise UserError(f"{path}: {exc}; keep one of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise UserError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file; a config must be YAML text") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a config must be a YAML mapping of keys (task:, model:, data: ...)")
    return raw


def build_config(values: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(values)
    except ValidationError as exc:
        raise UserError(_format_validation_error(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults) and apply dotted overrides."""
    values = read_yaml(path) if path is not None else {}
    if overrides:
        values = deep_merge(values, parse_overrides(overrides))
    return build_config(values, source=str(path) if path is not None else "overrides")


def redact(value: Any) -> Any:
    """Replace secrets (keys named like tokens, strings shaped like tokens) with '***'."""
    if isinstance(value, dict):
        return {
            k: ("***" if isinstance(v, str) and v and SECRET_KEY_PATTERN.search(str(k)) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return SECRET_VALUE_PATTERN.sub("***", value)
    return value


def config_to_yaml(config: Config) -> str:
    """The resolved config as YAML, secrets redacted (what is printed and saved in the run)."""
    return yaml.safe_dump(redact(config.model_dump(mode="json")), sort_keys=False, allow_unicode=True)


def config_reference() -> str:
    """A Markdown table of every key, its default and description (for the README)."""
    rows = ["| key | default | description |", "|---|---|---|"]

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, field in cls.model_fields.items():
            annotation = field.annotation
            sub = next(
                (
                    c
                    for c in [annotation, *getattr(annotation, "__args__", ())]
                    if isinstance(c, type) and issubclass(c, BaseModel)
                ),
                None,
            )
            if sub is not None and name != "replay":
                walk(sub, f"{prefix}{name}.")
                continue
            default = (
                "required" if field.is_required() else f"`{field.get_default(call_default_factory=True)!r}`"
            )
            rows.append(f"| `{prefix}{name}` | {default} | {field.description or ''} |")
            if cls is DataConfig and name == "train":
                walk(TrainSource, f"{prefix}{name}[].")

    walk(Config, "")
    return "\n".join(rows)

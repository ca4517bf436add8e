"""Instruction finetuning: conversations, loss on assistant tokens only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.config import Config
from tunesmith.data.formats import Conversation, Record, load_records
from tunesmith.data.load import ErrorPolicy
from tunesmith.data.pack import collate_rows, make_rows
from tunesmith.data.templates import ChatTemplate, resolve_chat_template
from tunesmith.data.tokenize import tokenize_conversations
from tunesmith.errors import UserError
from tunesmith.evaluate.generation import generate_reply
from tunesmith.evaluate.metrics import generation_metrics, lm_metrics, per_example_losses
from tunesmith.evaluate.toolcalls import evaluate_tool_calls
from tunesmith.models.adapters import apply_adapter, unwrap_causal_lm
from tunesmith.models.load import load_causal_lm
from tunesmith.progress import Progress
from tunesmith.tasks import (
    DataStats,
    EvalContext,
    FitContext,
    Phase,
    PreparedData,
    Task,
    hold_out,
    lm_epochs,
    no_label,
    no_trained_settings,
    task_info,
)
from tunesmith.train.loss import CausalLMLoss, CrossEntropy

if TYPE_CHECKING:
    from tunesmith.tasks import TrainedModel

MAX_COMPARED_EXAMPLES = 100  # held-out examples scored one by one for the fixed/broken lists


def prepare_data(
    config: Config, tokenizer: PreTrainedTokenizerBase, progress: Progress | None = None
) -> PreparedData:
    data = config.data
    policy = ErrorPolicy(data.on_error, data.max_skipped)
    if data.train is None:
        raise UserError("config key `data.train` is missing; point it at your instruction data file")
    records = _conversations(
        load_records(data.train, "conversation", data.format, data.fields, data.system_prompt, policy)
    )
    if data.eval is not None:
        eval_records = _conversations(
            load_records(
                data.eval,
                "conversation",
                data.format,
                data.fields,
                data.system_prompt,
                policy,
                what="data.eval",
            )
        )
    else:
        records, eval_records = hold_out(
            records, data.eval_fraction, data.max_eval_examples, config.train.seed
        )
    template = resolve_chat_template(tokenizer, data.chat_template, data.chat_template_kwargs)
    reasoning = data.train_on_reasoning
    train, train_stats = tokenize_conversations(
        records, tokenizer, template, data.max_seq_len, train_on_reasoning=reasoning
    )
    evaluation, eval_stats = (
        tokenize_conversations(eval_records, tokenizer, template, data.max_seq_len, "data.eval", reasoning)
        if eval_records
        else ([], None)
    )
    pad_id = tokenizer.pad_token_id
    return PreparedData(
        train=train,
        eval=evaluation,
        rows=make_rows(train, data.max_seq_len, data.packing),
        collate=lambda rows: collate_rows(rows, train, pad_id),
        stats=DataStats(
            train_stats, eval_stats, skipped_records=list(policy.skipped), chat_template=template.origin
        ),
        pad_id=pad_id,
        template=template,
        eval_records=eval_records,
    )


def build_model(model_path: str, config: Config, device: str, prepared: PreparedData) -> TrainedModel:
    model = load_causal_lm(model_path, config.model, device, quantize_4bit=config.adapter.method == "qlora")
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return apply_adapter(model, config.adapter, task_type="CAUSAL_LM")


def make_loss(model: nn.Module, config: Config, cross_entropy: CrossEntropy | None = None) -> nn.Module:
    return CausalLMLoss(model, cross_entropy=cross_entropy)


def generation_prompts(prepared: PreparedData, config: Config) -> list[list[dict[str, str]]]:
    """The fixed prompts generated before and after: the config's, else the first held-out ones."""
    if config.eval.prompts:
        return [[{"role": "user", "content": p}] for p in config.eval.prompts]
    prompts = []
    for record in _conversations(prepared.eval_records)[: config.eval.num_prompts]:
        # Everything up to the last assistant turn is the prompt; that turn is the reference.
        last = max(i for i, m in enumerate(record.messages) if m["role"] == "assistant")
        prompts.append(record.messages[:last])
    return prompts


def evaluate(ctx: EvalContext, phase: Phase = "after") -> dict[str, Any]:
    """Held-out loss, token accuracy and perplexity; before and after training (not during) also
    generations for the fixed prompts.

    Before and after it also scores the generations against their references (exact match,
    ROUGE-L) and keeps each held-out example's own loss, so the report can list the examples the
    tuning fixed and the ones it broke.
    """
    loss, prepared, tokenizer, config, device = ctx.loss, ctx.prepared, ctx.tokenizer, ctx.config, ctx.device
    metrics: dict[str, Any] = {}
    if prepared.eval:
        metrics.update(
            lm_metrics(
                loss,
                prepared.eval,
                tokenizer.pad_token_id,
                config.data.max_seq_len,
                config.train.batch_size,
                device,
                config.data.packing,
            )
        )
        if phase != "during":
            metrics["examples"] = _example_losses(loss, prepared, tokenizer, device)
    if phase != "during":
        generations = []
        for index, messages in enumerate(generation_prompts(prepared, config)):
            reply = generate_reply(
                ctx.model, tokenizer, _template(prepared), messages, config.eval.max_new_tokens
            )
            item = {"prompt": messages[-1]["content"], "output": reply}
            if not config.eval.prompts and index < len(prepared.eval_records):
                record = _conversations(prepared.eval_records)[index]
                item["reference"] = [m for m in record.messages if m["role"] == "assistant"][-1]["content"]
            generations.append(item)
        metrics.update(generation_metrics(generations))
        metrics["generations"] = generations
        # Held-out tool calls (when the data has them): well-formed, right name, exact arguments.
        if config.eval.max_tool_call_turns:
            metrics.update(
                evaluate_tool_calls(
                    ctx.model,
                    tokenizer,
                    _template(prepared),
                    _conversations(prepared.eval_records),
                    config.eval.max_tool_call_turns,
                    config.eval.tool_call_max_new_tokens,
                )
            )
    return metrics


def _example_losses(
    loss: nn.Module, prepared: PreparedData, tokenizer: PreTrainedTokenizerBase, device: str
) -> list[dict[str, Any]]:
    """[{prompt, reference, loss}] for the first held-out examples, in a fixed order."""
    examples = list(prepared.eval[:MAX_COMPARED_EXAMPLES])
    records = {str(r.source): r for r in _conversations(prepared.eval_records)}
    items = []
    for example, value in zip(
        examples, per_example_losses(loss, examples, tokenizer.pad_token_id, device), strict=True
    ):
        record = records.get(example.source)
        prompt = reference = ""
        if record is not None:
            last = max(i for i, m in enumerate(record.messages) if m["role"] == "assistant")
            prompt = next((m["content"] for m in reversed(record.messages[:last]) if m["role"] == "user"), "")
            reference = record.messages[last]["content"]
        items.append({"source": example.source, "prompt": prompt, "reference": reference, "loss": value})
    return items


def save_final(
    model: TrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    prepared: PreparedData,
    config: Config,
) -> None:
    """A PEFT adapter directory (LoRA) or a full model directory, with the tokenizer and template."""
    from tunesmith.data.templates import end_of_turn_ids

    causal_lm = unwrap_causal_lm(model)
    # Inference users want the KV cache; it is off only for packed training.
    causal_lm.config.use_cache = True
    if causal_lm.generation_config is not None:
        causal_lm.generation_config.eos_token_id = end_of_turn_ids(tokenizer, _template(prepared))
        causal_lm.generation_config.pad_token_id = tokenizer.pad_token_id
    # The tokenizer carries the template the model was trained with (data.chat_template_kwargs as its
    # defaults), so plain `apply_chat_template` gives the same prompts as tunesmith.
    tokenizer.chat_template = _template(prepared).exported()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    causal_lm.config.use_cache = False


def load_for_eval(target: Path, name: str, config: Config, device: str, prepared: PreparedData) -> nn.Module:
    """An adapter or model directory (or hub id / 'embedded': `name`) as the causal LM evaluate scores."""
    from tunesmith.models.inference import load_for_inference

    model, _ = load_for_inference(
        target, name, device=device, trust_remote_code=config.model.trust_remote_code
    )
    return model


def lm_fit(
    evaluate: Callable[[EvalContext, Phase], dict[str, Any]], ctx: FitContext, characters: int
) -> dict[str, Any]:
    """Loss on the trained tokens of the held-out sample, per token and per character of their text,
    so models with different tokenizers compare on the same text."""
    loss_module = CausalLMLoss(ctx.model)
    metrics = evaluate(
        EvalContext(ctx.model, loss_module, ctx.prepared, ctx.tokenizer, ctx.config, ctx.device), "during"
    )
    if "loss" not in metrics:
        raise UserError("the data has too few records to hold a sample out; give at least 2")
    characters = max(1, characters)
    tokens = int(metrics["num_tokens"])
    return {
        "loss": metrics["loss"],
        "perplexity": metrics["perplexity"],
        "num_tokens": tokens,
        "num_characters": characters,
        "loss_per_char": metrics["loss"] * tokens / characters,
        "tokens_per_char": tokens / characters,
    }


def measure_fit(ctx: FitContext) -> dict[str, Any]:
    """select's probe: the loss per character of the held-out assistant replies."""
    replies = sum(
        len(m["content"])
        for record in ctx.prepared.eval_records
        if isinstance(record, Conversation)
        for m in record.messages
        if m["role"] == "assistant"
    )
    return lm_fit(evaluate, ctx, replies)


TASK = Task(
    info=task_info("instruct"),
    prepare_data=prepare_data,
    build_model=build_model,
    make_loss=make_loss,
    evaluate=evaluate,
    save_final=save_final,
    load_for_eval=load_for_eval,
    measure_fit=measure_fit,
    trained_data_settings=no_trained_settings,
    recommend_epochs=lm_epochs,
    preview_label=no_label,
)


def _conversations(records: Sequence[Record]) -> list[Conversation]:
    """Conversation data's records, typed: load_records gives the union of every record kind."""
    return cast(list[Conversation], records)


def _template(prepared: PreparedData) -> ChatTemplate:
    assert prepared.template is not None, "instruct's prepare_data sets the chat template"
    return prepared.template

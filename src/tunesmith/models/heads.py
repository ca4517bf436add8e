"""Sequence-classification models: loading the base model with a head, and pooling.

Decoder LLMs (Llama, Qwen2, GPT-2 ...) get transformers' `score` head on the hidden state of
the last real token. transformers finds that token as the rightmost one that is not the pad
id, which goes wrong when pad == eos and a text ends in that token; here the attention mask
decides instead, and position ids are counted from the first real token, so a left-padded
row gives the same logits as a right-padded one. On right-padded input whose last token is
not the pad token (tunesmith's own batches), both ways pick the same token, so a saved model
predicts the same with plain transformers. Encoders (BERT-style) keep their own pooling
([CLS] + pooler) and are called as they are.
"""

from __future__ import annotations

from typing import Any

import torch

from tunesmith.config import ModelConfig
from tunesmith.errors import UserError
from tunesmith.models.adapters import unwrap_causal_lm
from tunesmith.models.load import (
    _first_line,
    check_remote_code,
    check_weight_files,
    model_load_kwargs,
    unsafe_pickle_error,
)

DECODER_HEAD = "score"  # the head attribute of transformers' decoder *ForSequenceClassification models


def load_sequence_classifier(
    path: str,
    config: ModelConfig,
    device: str,
    labels: list[str],
    pad_token_id: int,
    multi_label: bool = False,
    vocab_size: int | None = None,
) -> tuple[Any, list[str]]:
    """The base model with a fresh classification head of len(labels) outputs, on `device`,
    and the names of the modules the checkpoint did not have (the head; for BERT-style models
    from a masked-LM checkpoint also the pooler): these must train in full and be saved."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    check_remote_code(path, config.trust_remote_code)
    check_weight_files(path)
    problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    # The head is new, so transformers reports it as newly initialised: that is expected here.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, loading_info = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            problem_type=problem_type,
            pad_token_id=pad_token_id,
            output_loading_info=True,
            **model_load_kwargs(config, device),
        )
    except Exception as exc:
        refusal = unsafe_pickle_error(path, exc)
        if refusal is not None:
            raise refusal from None
        if not isinstance(exc, (OSError, ValueError)) and type(exc).__name__ != "SafetensorError":
            raise
        message = _first_line(exc)
        if "trust_remote_code" in message:
            raise UserError(
                f"model {path} needs its own Python code; set model.trust_remote_code: true if you trust it"
            ) from None
        raise UserError(f"model.name: could not load {path} as a sequence classifier ({message})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    model.config.pad_token_id = pad_token_id
    model.config.use_cache = False
    if vocab_size is not None and vocab_size > model.get_input_embeddings().num_embeddings:
        # The tokenizer gained a pad token; its embedding is never attended to.
        model.resize_token_embeddings(vocab_size)
    new_modules = sorted({key.rsplit(".", 1)[0] for key in loading_info["missing_keys"]})
    return model.to(device), new_modules


def uses_last_token_pooling(model: Any) -> bool:
    return hasattr(unwrap_causal_lm(model), DECODER_HEAD)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the position of the rightmost real token (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=-1)


def classifier_logits(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """[batch, num_labels] logits of a sequence classifier (LoRA-wrapped or not)."""
    classifier = unwrap_causal_lm(model)
    if not hasattr(classifier, DECODER_HEAD):
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return classifier(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
    body = getattr(classifier, classifier.base_model_prefix)
    # Positions count real tokens only, so left padding does not shift them.
    position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
    hidden = body(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )[0]
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
    # The head sees only the pooled states: [batch, hidden] instead of [batch, tokens, hidden].
    return getattr(classifier, DECODER_HEAD)(pooled)

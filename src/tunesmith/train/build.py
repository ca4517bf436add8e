"""One way to build a trainable model: what the recipe trains, the throughput probe times and the
final gathering after FSDP loads the full weights into.

    build_trainable(task, model_path, config, device, prepared) -> Trainable

  1. the task's model: the base (+ head) with the adapter (Task.build_model)
  2. the fast path, chosen once (train/fastpath.py): the attention kernel is set on the model
  3. the task's loss module around it, with the fast path's cross-entropy (Task.make_loss)
  4. with train.compile, every decoder block compiled in place
  5. the task's collate as the fast path wraps it (static shapes under compile)

Everything that trains or times a step builds through here, so a probe times what the run trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from tunesmith.config import Config
    from tunesmith.tasks import Collate, PreparedData, Task
    from tunesmith.train.fastpath import FastPath


@dataclass
class Trainable:
    """A model ready to train: the model, the loss module the loop runs, the batches' collate and
    the fast path chosen for them (its attention note says which kernel runs and why)."""

    model: Any  # the task's model (a transformers model, maybe a PeftModel)
    loss_module: nn.Module
    collate: Collate
    fast: FastPath


def build_trainable(
    task: Task, model_path: str, config: Config, device: str, prepared: PreparedData
) -> Trainable:
    """The task's model with its adapter, the fast path, attention, compiled blocks, loss and collate."""
    from tunesmith.train.fastpath import choose_fast_path, compile_blocks, use_attention

    model = task.build_model(model_path, config, device, prepared)
    # Chosen once here (fused loss, attention kernel, compiled blocks, static row shapes); the loop is the same.
    fast = choose_fast_path(config, device, model, prepared.pad_id)
    use_attention(model, fast.attention)
    loss_module = task.make_loss(model, config, fast.cross_entropy)
    if fast.compile:
        compile_blocks(loss_module)
    return Trainable(model, loss_module, fast.wrap_collate(prepared.collate), fast)

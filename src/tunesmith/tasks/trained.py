"""What a trained model directory is for the verbs that use it: the task that made it
(final/tunesmith.json), and the refusal of the chat verbs for models that do not generate text."""

from __future__ import annotations

from pathlib import Path

from tunesmith.tasks import Task, get_task, task_names
from tunesmith.train.rundir import read_model_info


def trained_model_task(model_dir: Path) -> Task | None:
    """The task a trained model directory was made by (final/tunesmith.json), None when unknown."""
    name = read_model_info(Path(model_dir)).get("task")
    return get_task(name) if isinstance(name, str) and name in task_names() else None


def refuse_chat(model_dir: Path) -> None:
    """Stop `generate`, `chat` and `serve` on a model that does not generate text (a classifier)."""
    from tunesmith.errors import UserError

    task = trained_model_task(model_dir)
    if task is not None and task.chat_refusal is not None:
        raise UserError(f"{model_dir} was trained with task: {task.name}; {task.chat_refusal}")

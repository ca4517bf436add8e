"""Error types for mistakes the user can fix (bad config, bad data, missing files)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake of the user's: the CLI prints the message on one line and exits with code 2.

    The message says what is wrong, where (file:line or config key) and how to fix it.
    """

    exit_code = 2


class TrainingInterrupted(Exception):
    """Raised by the loop after SIGTERM/SIGINT once a complete checkpoint is written."""

    exit_code = 130

    def __init__(self, checkpoint_dir: str):
        super().__init__(f"training interrupted; checkpoint saved at {checkpoint_dir} (resume with --resume)")
        self.checkpoint_dir = checkpoint_dir


class NonFiniteError(Exception):
    """A loss or gradient was NaN/inf; the step was not applied."""

    exit_code = 3

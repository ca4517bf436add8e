"""tunesmith: finetune pre-trained language models on your own data."""

__version__ = "0.1.0"

from tunesmith.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]

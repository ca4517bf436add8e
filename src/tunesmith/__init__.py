"""tunesmith: finetune pre-trained language models on your own data."""

import logging

__version__ = "0.1.0"

# peft imports bitsandbytes, which on a CPU-only machine warns at import that it could not fetch
# a 4-bit kernel from the hub: a line on every command, and 4-bit bases never run on a CPU here.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: "gemm_4bit_forward" not in record.getMessage()
)

from tunesmith.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]

"""Causal attention inside documents on the CPU ("varlen"): a fast path chosen once at setup.

PyTorch's CPU SDPA kernel computes every query of a row against every key of the row and masks
afterwards: the causal upper triangle and, for packed rows, the other documents' keys cost as much
as the keys attended to, and with small head dimensions its tiling overhead dominates
(stories260k, head_dim 8: attention is ~65% of a training step). Here each query attends only to
the keys of its own document up to itself (documents found where `position_ids` stop counting up,
or where the 2D padding mask changes), so the work is sum(L^2)/2 over the documents, and padding
is never attended to or computed. Values and gradients equal SDPA's with the block-causal mask
to ~1e-6 (tests/unit/test_cpu_attention.py).

The kernels are C (`cpu_attention.c`), compiled at first use for the model's head dimension with
the machine's C compiler (~1 s; cached under ~/.cache/tunesmith/kernels, keyed by source, flags,
head dimension and CPU) and called through ctypes. The (document, kv head) tasks, largest first,
run on `torch.get_num_threads()` OpenMP threads: built with -fopenmp the library binds to the
libgomp torch has loaded and shares its thread pool (threads of our own measured slower with two
threads than with one: torch's OpenMP workers spin on the same cores after each op). Without
OpenMP in the compiler it runs on one thread; without a C compiler the fast path is not chosen
(SDPA runs, and the run says why).

`attention_forward` is registered with transformers' AttentionInterface as `cpu_varlen`, with
transformers' varlen mask function (the 2D padding mask as it is, never a dense [S, S] mask;
without a mask function transformers would drop the padding mask). Calls outside its
scope (a KV cache longer than the queries during generation, another dtype, attention dropout)
go to transformers' SDPA function with an equivalent mask; models with sliding windows, logit
soft-capping or attention sinks are refused at setup (`unsupported_reason`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

NAME = "cpu_varlen"  # the attention implementation name, as in model.attn_implementation
SOURCE = Path(__file__).with_name("cpu_attention.c")
# Reassociation (vectorised sums) but no -ffast-math: with -shared, gcc 12 links crtfastmath,
# which turns on flush-to-zero for the whole process when the library loads.
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math",
         "-fno-signed-zeros", "-fPIC", "-shared")  # fmt: skip
OPENMP = "-fopenmp"  # tried first; a compiler without it builds the one-thread kernel
# Measured on a 2-core AMD EPYC (benchmarks/bench_cpu_attention.py, RESULTS.md "CPU attention"):
# at head dim 8 it beats SDPA on every row shape (2-3x on one document a row, 9x on packed rows);
# from 16 up it wins only on rows packed with short documents and loses on long ones (one query
# at a time re-reads the document's keys, where SDPA's tiled matmuls reuse them): `auto` stops here,
# and `model.attn_implementation: cpu_varlen` asks for it explicitly.
MAX_HEAD_DIM = 8

_libraries: dict[int, ctypes.CDLL] = {}
_build_lock = threading.Lock()


class KernelUnavailable(RuntimeError):
    """The kernel cannot be built here (no C compiler, or the build failed): use SDPA."""


def _cpu_signature() -> str:
    # -march=native code must not run on another CPU that shares the cache folder (NFS homes).
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features", "model name")):
                flags += line
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def _compiler() -> str | None:
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def kernel_library(head_dim: int, cache_dir: Path | None = None) -> ctypes.CDLL:
    """The compiled kernels for `head_dim`: built once per machine and cached; raises KernelUnavailable."""
    with _build_lock:
        if head_dim in _libraries:
            return _libraries[head_dim]
        compiler = _compiler()
        if compiler is None:
            raise KernelUnavailable("no C compiler (cc, gcc or clang) on PATH")
        source = SOURCE.read_bytes()
        key = hashlib.sha256(
            b"|".join([source, " ".join(FLAGS).encode(), str(head_dim).encode(), _cpu_signature().encode()])
        ).hexdigest()[:20]
        folder = (cache_dir or Path("~/.cache/tunesmith/kernels").expanduser()).resolve()
        target = folder / f"cpu_attention-d{head_dim}-{key}.so"
        if not target.exists():
            folder.mkdir(parents=True, exist_ok=True)
            # Built under a temporary name and renamed: a concurrent run never loads half a file.
            handle, partial = tempfile.mkstemp(prefix=target.name + ".partial-", dir=folder)
            os.close(handle)
            base = [compiler, *FLAGS, f"-DHEAD_DIM={head_dim}", str(SOURCE), "-o", partial, "-lm"]
            built = subprocess.run([*base, OPENMP], capture_output=True, text=True, check=False)
            if built.returncode != 0:
                built = subprocess.run(base, capture_output=True, text=True, check=False)
            if built.returncode != 0:
                Path(partial).unlink(missing_ok=True)
                raise KernelUnavailable(f"{Path(compiler).name} failed: {built.stderr.strip()[-500:]}")
            os.replace(partial, target)
        library = ctypes.CDLL(str(target))
        pointer, count, scale = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
        library.attention_forward.argtypes = [pointer] * 7 + [count] * 3 + [scale, pointer, count, count]
        library.attention_backward.argtypes = [pointer] * 11 + [count] * 3 + [scale, pointer, count, count]
        library.attention_forward.restype = library.attention_backward.restype = None
        _libraries[head_dim] = library
        return library


# --------------------------------------------------------------------------------------------
# Documents and the plan of a batch


@dataclass(frozen=True)
class Plan:
    """Where a batch's documents lie in its T = batch x length tokens, and who computes what."""

    offsets: torch.Tensor  # int64 [documents + 1]: token offsets, padding runs included
    tasks: torch.Tensor  # int64 task ids (document * kv_heads + kv_head), longest documents first
    longest: int  # the longest document attended to (sizes the work buffers)
    has_padding: bool  # some tokens are in no task: their outputs and gradients are zero
    num_threads: int


def document_starts(position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                    batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Per flattened token, True where a document starts (a row starts, positions stop counting
    up by one, or the padding mask changes), and the mask flattened (None: no padding)."""
    starts = torch.zeros(batch * length, dtype=torch.bool)
    starts[::length] = True
    if position_ids is not None:
        flat = position_ids.expand(batch, length).reshape(-1)
        starts[1:] |= (flat[1:] - flat[:-1]) != 1
    mask = None
    if attention_mask is not None and not bool(attention_mask.all()):
        mask = attention_mask.reshape(-1).bool()
        starts[1:] |= mask[1:] != mask[:-1]
    return starts, mask


def make_plan(position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch: int,
              length: int, num_kv_heads: int, num_threads: int) -> Plan:  # fmt: skip
    starts, mask = document_starts(position_ids, attention_mask, batch, length)
    first = starts.nonzero().squeeze(1)
    offsets = torch.cat([first, torch.tensor([batch * length])])
    sizes = (offsets[1:] - offsets[:-1]).tolist()
    attended = mask[first].tolist() if mask is not None else [True] * len(sizes)
    # Largest first (cost ~ L^2): the threads take the next task as they finish, so the small ones
    # at the end even out the load.
    order = sorted((i for i, keep in enumerate(attended) if keep), key=lambda i: -sizes[i])
    tasks = [document * num_kv_heads + kv_head for document in order for kv_head in range(num_kv_heads)]
    return Plan(
        offsets=offsets.to(torch.int64).contiguous(),
        tasks=torch.tensor(tasks, dtype=torch.int64),
        longest=max((sizes[i] for i in order), default=1),
        has_padding=not all(attended),
        num_threads=num_threads,
    )


_last_plan: dict[str, Any] = {}


def plan_for(position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch: int,
             length: int, num_kv_heads: int) -> Plan:  # fmt: skip
    """The batch's plan, made once per forward pass: every layer gets the same position_ids and
    mask objects, so later layers reuse it (weak references: a new batch never hits a stale plan)."""
    threads = max(1, torch.get_num_threads())
    key = (batch, length, num_kv_heads, threads)
    alive = _last_plan.get("key") == key and all(
        (ref() if ref is not None else None) is obj
        for ref, obj in (
            (_last_plan.get("position_ids"), position_ids),
            (_last_plan.get("mask"), attention_mask),
        )
    )
    if alive:
        return _last_plan["plan"]
    plan = make_plan(position_ids, attention_mask, batch, length, num_kv_heads, threads)
    _last_plan.update(
        key=key,
        plan=plan,
        position_ids=weakref.ref(position_ids) if position_ids is not None else None,
        mask=weakref.ref(attention_mask) if attention_mask is not None else None,
    )
    return plan


# --------------------------------------------------------------------------------------------
# The autograd function


def _pointer(tensor: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


class _DocumentAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, scale: float
    ) -> torch.Tensor:
        library = kernel_library(q.shape[-1])
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        num_heads, num_kv_heads, head_dim = q.shape[1], k.shape[1], q.shape[2]
        allocate = torch.zeros if plan.has_padding else torch.empty
        out = allocate(q.shape, dtype=q.dtype)
        lse = torch.empty(q.shape[:2], dtype=q.dtype)
        size = 2 * head_dim * plan.longest + plan.longest  # one thread's buffers
        work = torch.empty(plan.num_threads * size, dtype=q.dtype)
        library.attention_forward(
            _pointer(q), _pointer(k), _pointer(v), _pointer(out), _pointer(lse), _pointer(plan.offsets),
            _pointer(plan.tasks), plan.tasks.numel(), num_heads, num_kv_heads, scale, _pointer(work), size,
            plan.num_threads,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.scale = plan, scale
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        plan: Plan = ctx.plan
        library = kernel_library(q.shape[-1])
        grad_out = grad_out.contiguous()
        allocate = torch.zeros if plan.has_padding else torch.empty
        dq, dk, dv = (allocate(x.shape, dtype=x.dtype) for x in (q, k, v))
        num_heads, num_kv_heads, head_dim = q.shape[1], k.shape[1], q.shape[2]
        size = 4 * head_dim * plan.longest + 2 * plan.longest
        work = torch.empty(plan.num_threads * size, dtype=q.dtype)
        library.attention_backward(
            _pointer(q), _pointer(k), _pointer(v), _pointer(out), _pointer(grad_out), _pointer(lse),
            _pointer(dq), _pointer(dk), _pointer(dv), _pointer(plan.offsets), _pointer(plan.tasks),
            plan.tasks.numel(), num_heads, num_kv_heads, ctx.scale, _pointer(work), size, plan.num_threads,
        )  # fmt: skip
        return dq, dk, dv, None, None


def document_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: Plan,
                       scale: float) -> torch.Tensor:  # fmt: skip
    """query [B, H, S, D], key/value [B, Hkv, S, D] -> [B, S, H, D] (transformers' attention output)."""
    batch, num_heads, length, head_dim = query.shape
    # [B, H, S, D] views of [B, S, H, D] projections: transposing back is free.
    q = query.transpose(1, 2).reshape(batch * length, num_heads, head_dim)
    k = key.transpose(1, 2).reshape(batch * length, key.shape[1], head_dim)
    v = value.transpose(1, 2).reshape(batch * length, value.shape[1], head_dim)
    out = _DocumentAttention.apply(q, k, v, plan, scale)
    return out.view(batch, length, num_heads, head_dim)


# --------------------------------------------------------------------------------------------
# transformers' attention interface


def _in_scope(
    module: Any, query: torch.Tensor, key: torch.Tensor, dropout: float, kwargs: dict[str, Any]
) -> bool:
    """Whether the kernel computes this call; False sends it to SDPA with the same mask."""
    unsupported = [name for name in ("sliding_window", "softcap") if kwargs.get(name)]
    if unsupported or getattr(module, "sinks", None) is not None or not getattr(module, "is_causal", True):
        # unsupported_reason refuses such models at setup; neither path here could honour these.
        raise RuntimeError(
            f"{NAME} attention cannot compute {type(module).__name__} ({unsupported or 'sinks'})"
        )
    return (
        query.device.type == "cpu"
        and query.dtype == torch.float32
        and key.dtype == torch.float32
        and query.shape[2] == key.shape[2]  # no cache longer than the queries (generation's decode steps)
        and query.shape[1] % key.shape[1] == 0
        and not (dropout and module.training)
    )


def attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention function signature: -> ([B, S, H, D] output, no weights)."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    position_ids = kwargs.get("position_ids")
    if not _in_scope(module, query, key, dropout, kwargs):
        return _sdpa_fallback(module, query, key, value, attention_mask, position_ids, scale, dropout, kwargs)
    batch, _, length, _ = query.shape
    mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
    if attention_mask is not None and mask is None:
        # A prepared 4D mask (a caller's own): honour it exactly.
        return _sdpa_fallback(module, query, key, value, attention_mask, position_ids, scale, dropout, kwargs)
    plan = plan_for(position_ids, mask, batch, length, key.shape[1])
    return document_attention(query, key, value, plan, scale), None


def _sdpa_fallback(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    scale: float,
    dropout: float,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, Any]:
    """transformers' SDPA with the mask this implementation means: causal (offset by a cache),
    inside documents, padding excluded (each query may always see itself, so no row is empty)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    mask = attention_mask
    if mask is None or mask.dim() == 2:
        batch, _, q_len, _ = query.shape
        kv_len = key.shape[2]
        keys = torch.arange(kv_len, device=query.device)
        queries = torch.arange(q_len, device=query.device) + (kv_len - q_len)
        allowed = (keys[None, :] <= queries[:, None]).expand(batch, q_len, kv_len)
        if q_len == kv_len:
            starts, _ = document_starts(position_ids, None, batch, q_len)
            document = starts.view(batch, q_len).cumsum(dim=1)
            allowed = allowed & (document[:, :, None] == document[:, None, :])
        if mask is not None:
            allowed = allowed & mask[:, None, -kv_len:].bool()
        allowed = allowed | (keys[None, None, :] == queries[None, :, None])
        mask = allowed[:, None]
    extra = {k: v for k, v in kwargs.items() if k not in ("position_ids", "is_causal")}
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scale, is_causal=False,
                                  **extra)  # fmt: skip


def register() -> None:
    """Make `cpu_varlen` an attention implementation transformers models can switch to.

    Its mask function is transformers' own for varlen kernels: the 2D padding mask as it is (None
    without padding), never a dense [S, S] one. Without a mask function transformers would drop
    the padding mask altogether."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, flash_attention_mask)


def head_dimension(model_config: Any) -> int | None:
    head_dim = getattr(model_config, "head_dim", None)
    heads = getattr(model_config, "num_attention_heads", None)
    if head_dim is None and heads and getattr(model_config, "hidden_size", None):
        head_dim = model_config.hidden_size // heads
    return int(head_dim) if head_dim else None


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the kernel cannot train this model (None: it can). Checked once at setup."""
    model_config = model.config
    dtype = next(model.parameters()).dtype
    if head_dimension(model_config) is None:
        return "the model's config gives no head dimension"
    if dtype != torch.float32:
        return f"the weights are {dtype}, the kernel is fp32"
    if getattr(model_config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    attention = [m for m in model.modules() if hasattr(m, "is_causal") and hasattr(m, "scaling")]
    if not attention or not all(m.is_causal for m in attention):
        return "not a causal decoder (its attention layers are bidirectional or unknown)"
    if getattr(model_config, "attention_dropout", 0.0):
        return "attention dropout is on"
    if getattr(model_config, "attn_logit_softcapping", None):
        return "attention logits are soft-capped"
    if getattr(model_config, "sliding_window", None) and getattr(model_config, "use_sliding_window", True):
        return "the model uses sliding-window attention"
    return None

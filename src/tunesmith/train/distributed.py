"""Multi-process training on PyTorch's own stack: torchrun launches, DDP or FSDP2 shards, DCP saves.

`setup` is called once per run. Without torchrun it returns a one-process `Parallel` whose every
hook is a no-op, so the training loop reads the same for one process and for many:

    shard(micro_batches)         this rank's rows of each micro-batch (rank r takes rows r::world)
    sum_over_ranks(values)       all-reduce of a few step totals (targets, loss sum, tokens)
    micro_batch(index, count)    no gradient sync before the step's last micro-batch
    gradient_scale               undoes DDP/FSDP's averaging of gradients over ranks

The global batch, the rows of every step and the loss normaliser (all targets of the step, on
all ranks) do not depend on the number of processes, so 1, 2 or 8 processes train the same model.

Checkpoints of multi-process runs are torch.distributed.checkpoint (DCP) folders in the same
`checkpoints/step-N/` scheme (written to a temporary name, renamed by rank 0 once complete);
`load_checkpoint` reads either format into either topology, so a run can resume on another
number of processes.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist

from tunesmith.config import DistributedConfig
from tunesmith.errors import NonFiniteError, UserError
from tunesmith.outputs import fsync_dir, fsync_file
from tunesmith.train import checkpoint as single
from tunesmith.train.checkpoint import TrainerState

DCP_METADATA_FILE = ".metadata"  # written by torch.distributed.checkpoint: marks the DCP format
SCHEDULER_FILE = "scheduler.pt"  # DCP checkpoints: LR schedule state (identical on all ranks)
CHECKPOINT_FORMAT_KEY = "checkpoint_format"  # in trainer_state.json `extra`
FSDP_FROM_PARAMETERS = 3_000_000_000  # strategy auto: from here a replica per GPU stops fitting


@dataclass
class Parallel:
    """This process's place in the job and the few collectives the loop needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    strategy: str = "none"  # none (one process) | ddp | fsdp
    module: Any = None  # the module the loop calls: the DDP wrapper, or the FSDP-sharded loss module

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def gradient_scale(self) -> float:
        # DDP and FSDP average gradients over ranks; the loss is already normalised by the
        # targets of all ranks, so each rank's share is scaled back up to make a plain sum.
        return float(self.world_size)

    def shard(self, micro_batches: list[list[int]]) -> list[list[int]]:
        return [rows[self.rank :: self.world_size] for rows in micro_batches]

    def sum_over_ranks(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        totals = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)
        return totals.tolist()

    def micro_batch(self, index: int, count: int) -> Any:
        """Context for one micro-batch's forward and backward: sync gradients only on the last."""
        last = index == count - 1
        if self.strategy == "ddp" and not last:
            return self.module.no_sync()
        if self.strategy == "fsdp":
            self.module.set_requires_gradient_sync(last)
        return nullcontext()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _launch_environment() -> tuple[int, int, int]:
    # The one exception to "no module reads environment variables": torchrun's launch contract
    # (RANK, WORLD_SIZE, LOCAL_RANK) is how a process learns its place in the job. Everything
    # the user chooses still comes from the config.
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def is_main_process() -> bool:
    """True unless this is a torchrun worker other than rank 0 (for the CLI's console)."""
    return _launch_environment()[0] == 0


def setup(config: DistributedConfig, device: str) -> Parallel:
    """Join the torchrun job (gloo on CPU, NCCL on CUDA); one process when not launched by torchrun."""
    rank, world_size, local_rank = _launch_environment()
    if world_size == 1:
        return Parallel(device=device)
    if device == "cuda":
        torch.cuda.set_device(local_rank)  # "cuda" then means this rank's GPU everywhere
        backend, device = "nccl", f"cuda:{local_rank}"
    elif device == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"model.device: multi-process training runs on cpu or cuda, not {device}")
    # The timeout turns a rank stuck in a collective (its peer died) into an error, not a hang.
    dist.init_process_group(backend, timeout=timedelta(minutes=config.timeout_minutes))
    return Parallel(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def check_batch_size(parallel: Parallel, batch_size: int) -> None:
    if batch_size % parallel.world_size:
        raise UserError(
            f"config key `train.batch_size` ({batch_size}) must be divisible by the number of processes "
            f"({parallel.world_size}): each process takes batch_size / {parallel.world_size} rows of every "
            "micro-batch. Change train.batch_size or --nproc-per-node"
        )


def resolve_strategy(config: DistributedConfig, loss_module: torch.nn.Module) -> str:
    if config.strategy != "auto":
        return config.strategy
    total = sum(p.numel() for p in loss_module.parameters())
    return "fsdp" if total >= FSDP_FROM_PARAMETERS else "ddp"


def _blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks (HF's `_no_split_modules`): one FSDP unit each."""
    names: set[str] = set()
    for sub in module.modules():
        names.update(getattr(sub, "_no_split_modules", None) or [])
    return [sub for sub in module.modules() if type(sub).__name__ in names]


def parallelize(
    parallel: Parallel, loss_module: torch.nn.Module, config: DistributedConfig
) -> torch.nn.Module:
    """Wrap the loss module for the loop: DDP replicas or FSDP2 shards. Build the optimizer after this."""
    if parallel.world_size == 1:
        parallel.module = loss_module
        return loss_module
    parallel.strategy = resolve_strategy(config, loss_module)
    if parallel.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [parallel.local_rank] if parallel.device.startswith("cuda") else None
        parallel.module = DistributedDataParallel(loss_module, device_ids=device_ids)
        return parallel.module

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 compute with fp32 gradient reduction on GPUs; exact fp32 on CPU (no bf16 units there).
    policy = MixedPrecisionPolicy()
    if parallel.device.startswith("cuda") and torch.cuda.is_bf16_supported():
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    blocks = _blocks(loss_module)
    if not blocks:
        raise UserError(
            "distributed.strategy fsdp: the model declares no transformer blocks (_no_split_modules) to shard; "
            "use distributed.strategy: ddp"
        )
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    # The root holds what is left (embeddings, final norm, LM head or classifier head).
    fully_shard(loss_module, mp_policy=policy)
    parallel.module = loss_module
    return loss_module


# --------------------------------------------------------------------------------------------
# Checkpoints


def _state_options(**extra: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Trainable state only (LoRA weights, a head): frozen base weights come from the base model.
    return StateDictOptions(ignore_frozen_params=True, **extra)


def save_checkpoint(
    checkpoints_dir: Path,
    parallel: Parallel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    keep_last: int,
) -> Path:
    """Every rank writes its shard (DCP); rank 0 adds the schedule, RNG and trainer state, then renames."""
    if parallel.world_size == 1:
        return single.save_checkpoint(
            checkpoints_dir, parallel.module, optimizer, scheduler, state, keep_last
        )
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(parallel.module, optimizer, options=_state_options())
    local_bad = sum(
        1 for t in model_state.values() if not torch.isfinite(_local(cast(torch.Tensor, t))).all()
    )
    if parallel.sum_over_ranks([float(local_bad)])[0]:
        # Every rank agrees, so all of them stop here together.
        raise NonFiniteError(f"step {state.step}: refusing to checkpoint non-finite weights")
    final = checkpoints_dir / single.checkpoint_name(state.step)
    temp = checkpoints_dir / f".tmp-{single.checkpoint_name(state.step)}-dcp"
    if parallel.is_main:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    parallel.barrier()  # the folder exists before anyone writes into it
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=temp)
    # dcp.save returns once every rank's files and the metadata are written.
    if parallel.is_main:
        torch.save({"scheduler": scheduler.state_dict()}, temp / SCHEDULER_FILE)
        rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, temp / single.RNG_FILE)
        state.extra = {**state.extra, CHECKPOINT_FORMAT_KEY: "dcp", "world_size": parallel.world_size}
        (temp / single.STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        for child in temp.iterdir():
            fsync_file(child)
        fsync_dir(temp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(temp, final)
        fsync_dir(checkpoints_dir)
        single.rotate_checkpoints(checkpoints_dir, keep_last)
    parallel.barrier()  # nobody goes on (or fails) before the checkpoint is complete
    return final


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def load_checkpoint(
    path: Path,
    parallel: Parallel,
    loss_module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> TrainerState:
    """Resume from a checkpoint of either format, written by any number of processes."""
    if (path / DCP_METADATA_FILE).is_file():
        return _load_dcp(path, parallel, loss_module, optimizer, scheduler)
    if parallel.strategy != "fsdp":
        # One process, or DDP replicas: each loads the full single-process checkpoint.
        return single.load_checkpoint(path, loss_module, optimizer, scheduler)
    return _load_single_into_shards(path, loss_module, optimizer, scheduler)


def _trainer_state(path: Path) -> dict[str, Any]:
    if path.is_symlink():
        raise UserError(f"checkpoint {path} is a symlink; refusing to follow it")
    state_file = path / single.STATE_FILE
    if not state_file.is_file():
        raise UserError(f"{path} is not a complete tunesmith checkpoint (no {single.STATE_FILE})")
    try:
        raw = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"checkpoint {path} is damaged: {state_file} is empty or truncated") from None
    if raw.get("format_version") != single.FORMAT_VERSION:
        raise UserError(
            f"{path}: checkpoint format {raw.get('format_version')} is not {single.FORMAT_VERSION}"
        )
    return raw


def _load_plain(path: Path, name: str) -> Any:
    try:
        # weights_only=True: a checkpoint is data; a pickle that wants to run code is refused.
        return torch.load(path / name, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"{path}: refusing to load {name} ({type(exc).__name__}); it is not plain tensor data, which a "
            "tunesmith checkpoint always is. Do not resume from files you do not trust"
        ) from None


def _restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _load_dcp(
    path: Path,
    parallel: Parallel,
    loss_module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> TrainerState:
    """DCP reshards on load: the checkpoint's world size need not be this run's (1 included)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    raw = _trainer_state(path)
    module = parallel.module if parallel.module is not None else loss_module
    # strict=False: frozen weights are not in the checkpoint; missing trainable ones fail in dcp.load.
    options = _state_options(strict=False)
    model_state, optimizer_state = get_state_dict(module, optimizer, options=options)
    wanted: dict[str, Any] = {"model": model_state, "optimizer": optimizer_state}
    try:
        with warnings.catch_warnings():
            # One process reading a multi-process checkpoint is intended: DCP's warning says it is not.
            warnings.filterwarnings("ignore", message=r".*assuming the intent is to load in a single process")
            dcp.load(wanted, checkpoint_id=path, no_dist=parallel.world_size == 1)
    except Exception as exc:
        raise UserError(
            f"{path}: checkpoint does not match the model ({str(exc).strip().splitlines()[-1][:300]}); "
            "was it written with another model or adapter setting?"
        ) from None
    set_state_dict(
        module,
        optimizer,
        model_state_dict=wanted["model"],
        optim_state_dict=wanted["optimizer"],
        options=options,
    )
    scheduler.load_state_dict(_load_plain(path, SCHEDULER_FILE)["scheduler"])
    _restore_rng(_load_plain(path, single.RNG_FILE))
    return TrainerState(**raw)


def _load_single_into_shards(
    path: Path, loss_module: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> TrainerState:
    """A one-process checkpoint (full tensors) into FSDP shards: each rank keeps its own slice."""
    from safetensors.torch import load_file

    raw = _trainer_state(path)
    weights = load_file(str(path / single.TRAINABLE_FILE))
    parameters = dict(loss_module.named_parameters())  # fully_shard keeps the names
    expected = {n for n, p in parameters.items() if p.requires_grad}
    if set(weights) != expected:
        raise UserError(
            f"{path}: checkpoint does not match the model (missing {sorted(expected - set(weights))[:3]}, "
            f"unexpected {sorted(set(weights) - expected)[:3]}); was it written with another model or adapter setting?"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(_like(parameters[name], tensor))
    saved = _load_plain(path, single.OPTIMIZER_FILE)
    saved_optimizer = saved["optimizer"]
    # Optimizer state is keyed by position in the param groups, the same order on every topology.
    current = [p for group in optimizer.param_groups for p in group["params"]]
    saved_ids = [i for group in saved_optimizer["param_groups"] for i in group["params"]]
    state = {}
    for parameter, index in zip(current, saved_ids, strict=True):
        if index in saved_optimizer["state"]:
            state[index] = {
                key: _like(parameter, value) if value.shape == parameter.shape else value
                for key, value in saved_optimizer["state"][index].items()
            }
    optimizer.load_state_dict({"state": state, "param_groups": saved_optimizer["param_groups"]})
    scheduler.load_state_dict(saved["scheduler"])
    _restore_rng(_load_plain(path, single.RNG_FILE))
    return TrainerState(**raw)


def _like(parameter: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """A full tensor laid out like `parameter`: this rank's shard when the parameter is sharded."""
    full = full.to(device=parameter.device, dtype=parameter.dtype)
    if hasattr(parameter, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        # src_data_rank=None: every rank has the full tensor and slices its own, no communication.
        placements = parameter.placements  # type: ignore[attr-defined]  # a DTensor: has a device_mesh
        return distribute_tensor(full, parameter.device_mesh, placements, src_data_rank=None)
    return full


# --------------------------------------------------------------------------------------------
# The final model


def gather_full_state(parallel: Parallel, loss_module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Under FSDP, the full weights on rank 0's CPU (a collective: every rank calls it); else None."""
    if parallel.strategy != "fsdp":
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(loss_module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return cast(dict[str, torch.Tensor], full)


def load_full_state(loss_module: torch.nn.Module, full_state: dict[str, torch.Tensor]) -> None:
    """Load gathered weights into a freshly built, unsharded loss module (rank 0's final model)."""
    missing, unexpected = loss_module.load_state_dict(full_state, strict=False)
    named = loss_module.named_parameters(remove_duplicate=False)
    loaded = {id(p) for name, p in named if name in full_state}
    # A tied weight (embeddings = LM head) appears under one name only; any other gap is a bug.
    untied = [n for n in missing if id(loss_module.get_parameter(n)) not in loaded] if missing else []
    assert not unexpected and not untied, (
        f"gathered state does not fit the model: {unexpected[:3]} {untied[:3]}"
    )

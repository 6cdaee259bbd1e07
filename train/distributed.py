"""Training on many processes: the process group, the model wrapped for DDP or FSDP2, and the few
collectives the trainer needs (a mean of the logged losses, agreeing to stop, rank 0's errors).

Launch with torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous for each process:

    torchrun --nproc_per_node 8 -m demi train run ... --device cuda --parallel fsdp

The backend is NCCL on CUDA (each process on the GPU `LOCAL_RANK`) and gloo on the CPU.
`--parallel ddp` keeps a full copy of the model on every process and averages the gradients;
`--parallel fsdp` shards parameters, gradients and AdamW's state across the processes with
FSDP2 (`torch.distributed.fsdp.fully_shard`, one group per decoder block plus one for the
embeddings, final norm and head), so a model that does not fit on one device trains on several.

The math is the single-process trainer's: the global batch (`batch_size` x `grad_accum` x world
size rows) is the same rows a one-process run with that global batch reads, rank r taking the r-th
slice of each micro-batch (`data.take_shard`); both wrappers average the gradients over the ranks,
which is the gradient of the mean loss over the global batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from demi.model.errors import DemiError, DemiUserError
from demi.train.errors import TrainConfigError

PARALLEL_MODES = ("none", "ddp", "fsdp")

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: `mode` none (one process, no process group), ddp or fsdp."""

    mode: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.mode != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistEnv()


class PeerError(DemiError):
    """Rank 0 failed at a step the other ranks waited for; it has reported the reason itself."""

    def __init__(self, message: str, user: bool):
        super().__init__(message)
        self.user = user


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 for a plain process)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise TrainConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def resolve_mode(requested: str | None) -> str:
    """The parallel mode for `--parallel` (None: ddp under torchrun with several processes, else none)."""
    world = launched_world_size()
    under_torchrun = "RANK" in os.environ and "MASTER_ADDR" in os.environ
    mode = requested or ("ddp" if world > 1 else "none")
    if mode not in PARALLEL_MODES:
        raise TrainConfigError(f"--parallel must be one of {', '.join(PARALLEL_MODES)}, not {mode!r}")
    if mode == "none" and world > 1:
        raise TrainConfigError(
            f"{world} processes with --parallel none would each train alone; use --parallel ddp or fsdp"
        )
    if mode != "none" and not under_torchrun:
        raise TrainConfigError(
            f"--parallel {mode} runs under torchrun (RANK, WORLD_SIZE and MASTER_ADDR are not set); "
            "start it with `torchrun --nproc_per_node N -m demi train ...`"
        )
    return mode


def init(requested: str | None, device: str) -> tuple[DistEnv, str]:
    """Join the process group torchrun set up (when there is one to join); returns the environment
    and this process's device ("cuda" becomes "cuda:LOCAL_RANK")."""
    mode = resolve_mode(requested)
    if mode == "none":
        return SINGLE, device
    rank, world, local = int(os.environ["RANK"]), launched_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device(device) if cuda else None)
    return DistEnv(mode, rank, world, local), device


def shutdown(env: DistEnv) -> None:
    """Leave the process group together (a barrier, then destroy), so no rank tears gloo down while
    another still talks to it. This does not stop gloo's threads: torch itself keeps the default
    group alive past destroy_process_group (torch.distributed.nn.functional, imported during DDP's
    set-up, holds group.WORLD in its functions' defaults; DTensor's sharding caches hold FSDP2's
    device mesh), so a torchrun rank ends with `exit_rank`, not the interpreter's teardown."""
    if env.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_rank(env: DistEnv, code: int) -> int:
    """`code` for a process outside torchrun. A torchrun rank, its group left (`shutdown`) and its
    files written and closed, flushes its streams and logs and exits without the interpreter's
    teardown: gloo's threads, still alive (see `shutdown`), can need the GIL there as they drop a
    finished collective's tensors, and a thread that asks for it during finalization is ended by
    pthread_exit, which a C++ frame turns into "terminate called without an active exception"
    (SIGABRT on a rank that had finished its work: about 1 launch in 100-200 with busy cores, in CI
    twice). `exit_rank` does not return then."""
    if not env.active:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def wrap(net: nn.Module, blocks: list[nn.Module], env: DistEnv, amp: torch.dtype | None, moe: bool) -> nn.Module:
    """`net` (the training forward, see trainer.TrainingForward) made data parallel.

    FSDP2 shards each of `blocks` as its own group, then the rest of `net` (embeddings, final
    norm, head: one group, so a tied head stays one tensor); the optimizer must be built after
    this, on the sharded parameters. With bf16 the gathered copies are bf16 and the gradients
    are reduced in fp32; the sharded master weights and AdamW's state stay fp32."""
    if env.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device = next(net.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        # A mixture of experts leaves the experts no token was routed to without a gradient.
        return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=moe)
    if env.mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32) if amp else MixedPrecisionPolicy()
        for block in blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(net, mp_policy=policy)
        return net
    return net


def accumulating(net: nn.Module, env: DistEnv, last: bool) -> contextlib.AbstractContextManager[Any]:
    """Around a micro-batch's forward and backward: DDP's `no_sync` for every micro-batch but the
    last (the gradients are averaged once per step); nothing otherwise (FSDP2 reduce-scatters each
    micro-batch's gradients, which keeps them sharded)."""
    if env.mode == "ddp" and not last:
        from torch.nn.parallel import DistributedDataParallel

        assert isinstance(net, DistributedDataParallel)
        return net.no_sync()
    return contextlib.nullcontext()


def unwrapped(net: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (FSDP2 shards in place: the module itself)."""
    return getattr(net, "module", net) if type(net).__name__ == "DistributedDataParallel" else net


def _device(env: DistEnv) -> torch.device:
    return torch.device(f"cuda:{env.local_rank}") if dist.get_backend() == "nccl" else torch.device("cpu")


def mean(values: list[float], env: DistEnv) -> list[float]:
    """The mean of each value over the ranks (one all-reduce)."""
    if not env.active or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_device(env))
    dist.all_reduce(t)
    return [float(v) / env.world_size for v in t.cpu()]


def total(values: list[float], env: DistEnv) -> list[float]:
    """The sum of each value over the ranks."""
    if not env.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_device(env))
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when it is True on one (so all stop after the same step)."""
    return bool(total([1.0 if flag else 0.0], env)[0]) if env.active else flag


def barrier(env: DistEnv) -> None:
    if env.active:
        dist.barrier()


def gather(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's `obj` (small, picklable), in rank order."""
    if not env.active:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def agree(error: str | None, env: DistEnv, kind: type[Exception] = DemiUserError) -> None:
    """Raise `kind` on every rank when any rank found an error (the first one's message)."""
    errors = [e for e in gather(error, env) if e]
    if errors:
        raise kind(errors[0])


def on_main(env: DistEnv, fn: Callable[[], T], wait_hours: float = 12.0) -> T | None:
    """Run `fn` on rank 0 while the others wait (building the corpus and the tokenizer can take a
    while, hence a long-timeout gloo group for the wait); rank 0's error reaches every rank, as
    the error itself on rank 0 and as a `PeerError` elsewhere. Returns fn's result on rank 0."""
    if not env.active:
        return fn()
    group = dist.new_group(backend="gloo", timeout=timedelta(hours=wait_hours))
    result: T | None = None
    failure: BaseException | None = None
    if env.is_main:
        try:
            result = fn()
        except BaseException as exc:  # reported to the others, then raised here
            failure = exc
    message = [None if failure is None else (str(failure).strip().splitlines() or [type(failure).__name__])[0]]
    user = [isinstance(failure, DemiUserError)]
    dist.broadcast_object_list(message, src=0, group=group)
    dist.broadcast_object_list(user, src=0, group=group)
    dist.destroy_process_group(group)
    if failure is not None:
        raise failure
    if message[0] is not None:
        raise PeerError(f"rank 0 failed: {message[0]}", bool(user[0]))
    return result

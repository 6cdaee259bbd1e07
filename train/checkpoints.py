"""Training checkpoints: everything exact resume needs, written atomically, read back with checks.

A checkpoint is a directory `checkpoints/step-NNNNNNNN/` holding

    model.safetensors      the training weights (fp32 master copy; a tied head stored once)
    optimizer.safetensors  AdamW's per-parameter state, flattened to `state.<i>.<name>`
    rng.safetensors        torch's CPU (and CUDA) generator states
    state.json             step, data position, tokens seen, param groups, Python's random state,
                           the run's settings, and the SHA-256 of each file above

No pickle is written or read. The directory is written under a temporary name, every file is
fsynced, then it is renamed into place and `checkpoints/latest` (a one-line pointer) is replaced
atomically; a crash at any moment leaves the previous checkpoint intact. Loading verifies the
hashes, names and shapes, so a truncated or edited checkpoint is a one-line `ResumeError`.

A run on several processes (train/distributed.py) writes a sharded checkpoint instead, the same
directory with `dcp/` (torch.distributed.checkpoint: each rank writes its own shards of the
weights and of AdamW's state, keyed by parameter name, plus a `.metadata` index) in place of
model.safetensors and optimizer.safetensors, and `"layout": "sharded"` in state.json. The ranks
hash the files between them and rank 0 records the hashes. Either layout resumes at any world
size: DCP reshards on load (`restore_sharded`, a plain process included), and a single-process
checkpoint is read whole by every rank and scattered into its shards (`restore_full`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from demi.train import distributed
from demi.train.distributed import SINGLE, DistEnv
from demi.train.errors import ResumeError

FORMAT = "demi-train-checkpoint/1"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")
SHARDED_DIR = "dcp"
SHARDED_FILES = ("rng.safetensors",)  # plus every file under dcp/


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{idx}.{name}"] = t.detach().contiguous()
    groups: list[dict[str, Any]] = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, groups


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` points at (or None when the run has none yet)."""
    root = checkpoint_dir(run_dir)
    pointer = root / "latest"
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        path = root / name
        if not _STEP_DIR.match(name) or not path.is_dir():
            raise ResumeError(
                f"{pointer} names {name!r}, which is not a checkpoint directory; pass "
                f"--resume-from with one of: {_names(run_dir)}"
            )
        return path
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _names(run_dir: Path) -> str:
    return ", ".join(p.name for p in list_checkpoints(run_dir)) or "(none)"


def save(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep`."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    opt_tensors, groups = _optimizer_tensors(optimizer)
    save_file(model_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"format": "pt"})
    save_file(_rng_tensors(), str(tmp / "rng.safetensors"), metadata={"format": "pt"})
    pyrand = random.getstate()
    full = {
        **state,
        "format": FORMAT,
        "step": step,
        "param_groups": groups,
        "python_random": [pyrand[0], list(pyrand[1]), pyrand[2]],
        "sha256": {f: _sha256(tmp / f) for f in FILES},
    }
    (tmp / "state.json").write_text(json.dumps(full, indent=1), encoding="utf-8")
    for f in (*FILES, "state.json"):
        _fsync(tmp / f)
    _publish(root, tmp, final, run_dir, keep)
    return final


def saved_step(path: Path | None) -> int:
    """The step a checkpoint was saved at (0 for None), from its state.json alone: cheap enough to
    decide things before a resume, which verifies the files (`load_state`)."""
    return 0 if path is None else int(_read_state(Path(path))["step"])


def is_sharded(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's state.json describes the sharded (DCP) layout."""
    return state.get("layout") == "sharded"


def load_state(path: Path, env: DistEnv = SINGLE) -> dict[str, Any]:
    """state.json of a checkpoint, with its files verified against the recorded hashes (the ranks
    of a distributed run share the work on a sharded checkpoint and agree on the verdict)."""
    path = Path(path)
    state = _read_state(path)
    recorded = state.get("sha256", {}) if isinstance(state.get("sha256"), dict) else {}
    if is_sharded(state):
        names = sorted(set(recorded) | set(SHARDED_FILES))
        if not any(n.startswith(SHARDED_DIR + "/") for n in names):
            raise ResumeError(f"{path}: corrupt checkpoint (state.json lists no {SHARDED_DIR}/ files)")
        mine = names[env.rank :: env.world_size]
    else:
        names = mine = list(FILES)
    error = None
    for f in mine:
        file = path / f
        if not file.is_file():
            error = f"{path}: corrupt checkpoint ({f} is missing)"
        elif _sha256(file) != recorded.get(f):
            error = f"{path}: corrupt checkpoint ({f} does not match its recorded SHA-256: truncated or modified)"
        if error:
            break
    if is_sharded(state):
        distributed.agree(error, env, ResumeError)
    elif error:
        raise ResumeError(error)
    return state


def _read_state(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise ResumeError(f"{path}: no such checkpoint directory")
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResumeError(f"{path}: corrupt checkpoint (state.json is missing)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeError(f"{path}: corrupt checkpoint (state.json: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeError(
            f"{path}: not a Demi training checkpoint (format {state.get('format')!r})"
            if isinstance(state, dict)
            else f"{path}: corrupt checkpoint (state.json)"
        )
    return state


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ResumeError(f"{file}: corrupt checkpoint file ({exc})") from None


def restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load weights, optimizer state and RNG states into place; return state.json."""
    path = Path(path)
    state = load_state(path)
    weights = _load_tensors(path / "model.safetensors")
    expected = model_state(model)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise ResumeError(
            f"{path}: the checkpoint's weights do not match the model "
            f"(missing {missing[:2]}, unexpected {extra[:2]}); was it made with another shape?"
        )
    for k, v in expected.items():
        if tuple(weights[k].shape) != tuple(v.shape):
            raise ResumeError(f"{path}: weight {k} has shape {list(weights[k].shape)}, the model {list(v.shape)}")
    with torch.no_grad():
        params = dict(model.state_dict(keep_vars=True))
        for k, v in weights.items():
            params[k].copy_(v)
    opt_tensors = _load_tensors(path / "optimizer.safetensors")
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in opt_tensors.items():
        _, idx, name = key.split(".", 2)
        per_param.setdefault(int(idx), {})[name] = t
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in state["param_groups"]]
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    if sum(len(g["params"]) for g in groups) != n_params:
        raise ResumeError(f"{path}: the optimizer state is for another model (parameter count differs)")
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ResumeError(f"{path}: cannot restore the optimizer state ({exc})") from None
    _restore_rng(path, state)
    return state


def _restore_rng(path: Path, state: dict[str, Any]) -> None:
    rng = _load_tensors(path / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python_random"]
    random.setstate((version, tuple(internal), gauss))


# -- the sharded layout (several processes) --------------------------------------------------------


def _dcp_io(method: str, state_dict: dict[str, Any], directory: Path) -> None:
    """dcp.save or dcp.load; without a process group, a plain process reads or writes every shard
    itself (DCP warns that it assumes so each time: it is what is meant here)."""
    import warnings

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    no_dist = not dist.is_initialized()
    with warnings.catch_warnings():
        if no_dist:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        getattr(dcp, method)(state_dict, checkpoint_id=str(directory), no_dist=no_dist)


def save_sharded(
    run_dir: Path,
    step: int,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    env: DistEnv,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` in the sharded layout, collectively (every rank calls this); the
    same atomic rename and `latest` pointer as `save`, done by rank 0."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = checkpoint_dir(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-sharded"
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    distributed.barrier(env)
    model_sd, optim_sd = get_state_dict(net, optimizer)
    _dcp_io("save", {"model": model_sd, "optim": optim_sd}, tmp / SHARDED_DIR)
    distributed.barrier(env)  # every shard and the metadata are on disk
    files = sorted(p.relative_to(tmp).as_posix() for p in (tmp / SHARDED_DIR).rglob("*") if p.is_file())
    hashes: dict[str, str] = {}
    for part in distributed.gather({f: _sha256(tmp / f) for f in files[env.rank :: env.world_size]}, env):
        hashes.update(part)
    if env.is_main:
        save_file(_rng_tensors(), str(tmp / "rng.safetensors"), metadata={"format": "pt"})
        hashes["rng.safetensors"] = _sha256(tmp / "rng.safetensors")
        pyrand = random.getstate()
        full = {
            **state,
            "format": FORMAT,
            "layout": "sharded",
            "step": step,
            "python_random": [pyrand[0], list(pyrand[1]), pyrand[2]],
            "sha256": hashes,
        }
        (tmp / "state.json").write_text(json.dumps(full, indent=1), encoding="utf-8")
        for f in ("rng.safetensors", "state.json"):
            _fsync(tmp / f)  # DCP's writer fsyncs its own files
        _publish(root, tmp, final, run_dir, keep)
    distributed.barrier(env)
    return final


def _publish(root: Path, tmp: Path, final: Path, run_dir: Path, keep: int) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    pointer_tmp = root / f".latest-{os.getpid()}"
    pointer_tmp.write_text(final.name + "\n", encoding="utf-8")
    _fsync(pointer_tmp)
    os.replace(pointer_tmp, root / "latest")
    _fsync(root)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def restore_sharded(
    path: Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> dict[str, Any]:
    """Load a sharded checkpoint (verified by `load_state`) into `net` and `optimizer` at this
    process's world size, whatever the one it was saved at: DCP reads the pieces each rank's
    shards overlap. `net` is wrapped (DDP, FSDP2) or plain, the same module the run saved."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    model_sd, optim_sd = get_state_dict(net, optimizer)
    sd: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    try:
        _dcp_io("load", sd, path / SHARDED_DIR)
        set_state_dict(net, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    except (RuntimeError, ValueError, KeyError) as exc:  # CheckpointException is a RuntimeError
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ResumeError(f"{path}: cannot load the sharded checkpoint ({first})") from None
    _restore_rng(path, state)
    return state


def restore_full(
    path: Path,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    names: list[str],
    state: dict[str, Any],
    prefix: str = "",
) -> dict[str, Any]:
    """Load a single-process checkpoint (verified by `load_state`) into a distributed `net`:
    every rank reads the whole file and keeps its shards. `names` are the decoder's parameter
    names in the optimizer's order (what `save` numbered 0, 1, ...); `prefix` is what `net`'s
    state dict puts before them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    path = Path(path)
    weights = _load_tensors(path / "model.safetensors")
    model_sd: dict[str, Any] = {prefix + k: v for k, v in weights.items()}
    tied = prefix + "lm_head.weight"
    embed = prefix + "model.embed_tokens.weight"
    if tied not in model_sd and embed in model_sd:
        model_sd[tied] = model_sd[embed]  # a tied head is stored once
    per_param: dict[str, Any] = {}
    for key, t in _load_tensors(path / "optimizer.safetensors").items():
        _, idx, name = key.split(".", 2)
        if int(idx) >= len(names):
            raise ResumeError(f"{path}: the optimizer state is for another model (parameter count differs)")
        per_param.setdefault(prefix + names[int(idx)], {})[name] = t
    saved_groups = state["param_groups"]
    indices = sorted(i for g in saved_groups for i in g["params"])
    if indices != list(range(len(names))):
        raise ResumeError(f"{path}: the optimizer state is for another model (parameter count differs)")
    groups = [
        {
            **{k: (tuple(v) if k == "betas" else v) for k, v in g.items()},
            "params": [prefix + names[i] for i in g["params"]],
        }
        for g in saved_groups
    ]
    try:
        set_state_dict(
            net,
            optimizer,
            model_state_dict=model_sd,
            optim_state_dict={"state": per_param, "param_groups": groups},
            options=StateDictOptions(full_state_dict=True),
        )
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ResumeError(f"{path}: cannot restore the checkpoint into the sharded model ({first})") from None
    _restore_rng(path, state)
    return state


def load_sharded_weights(path: Path, net: torch.nn.Module) -> None:
    """The weights of a sharded checkpoint into a plain (one-process) `net` whose state dict has
    the names the run saved (`demi train export`); the optimizer state is not read."""
    path = Path(path)
    state = _read_state(path)
    if not is_sharded(state):
        raise ResumeError(f"{path}: not a sharded checkpoint")
    model_sd = net.state_dict()
    try:
        _dcp_io("load", {"model": model_sd}, path / SHARDED_DIR)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ResumeError(f"{path}: cannot read the sharded checkpoint's weights ({first})") from None
    net.load_state_dict(model_sd)

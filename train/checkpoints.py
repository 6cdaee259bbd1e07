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

from demi.train.errors import ResumeError

FORMAT = "demi-train-checkpoint/1"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")


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
    groups = []
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
    return final


def saved_step(path: Path | None) -> int:
    """The step a checkpoint was saved at (0 for None), from its state.json alone: cheap enough to
    decide things before a resume, which verifies the files (`load_state`)."""
    return 0 if path is None else int(_read_state(Path(path))["step"])


def load_state(path: Path) -> dict[str, Any]:
    """state.json of a checkpoint, with its files verified against the recorded hashes."""
    path = Path(path)
    state = _read_state(path)
    for f in FILES:
        file = path / f
        if not file.is_file():
            raise ResumeError(f"{path}: corrupt checkpoint ({f} is missing)")
        if _sha256(file) != state.get("sha256", {}).get(f):
            raise ResumeError(
                f"{path}: corrupt checkpoint ({f} does not match its recorded SHA-256: truncated or modified)"
            )
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
    rng = _load_tensors(path / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python_random"]
    random.setstate((version, tuple(internal), gauss))
    return state

"""Fixtures shared across the layers' tests (tests/model, tests/assistant, tests/cli, ...).

`tiny_checkpoints` builds each distinct tiny random checkpoint (tests/helpers.py's
`tiny_checkpoint`: a transformers-saved family from tests/hf_models.py with the byte-level
tokenizer of tests/tokenizers_fixture.py) once per session, so modules that want the same one
share it instead of each building its own. The weights are seeded, so a shared checkpoint is the
one each module built before. The directories are shared: treat them as read-only (copy one to
break or change it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import tiny_checkpoint

TinyCheckpoints = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoints:
    """`tiny_checkpoints(family="qwen2", **config)`: the directory of that tiny random checkpoint
    (config overrides as in hf_models.save_family), built on first use, then reused."""
    built: dict[str, Path] = {}

    def get(family: str = "qwen2", **config: Any) -> Path:
        key = json.dumps([family, config], sort_keys=True)
        if key not in built:
            name = re.sub(r"[^\w.-]+", "_", "-".join([family, *(f"{k}{v}" for k, v in sorted(config.items()))]))
            built[key] = tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{name}"[:60]), family, **config)
        return built[key]

    return get

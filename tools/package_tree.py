"""Build `.demi-build/pkg/demi/...`: the installed package's layout as symlinks to the sources.

Why: the `demi` package maps repo-root folders (cli/, model/, assistant/, ...) onto its
subpackages (pyproject's `package-dir`). Python's import system follows that mapping in an
editable install, but static tools that walk a package's folder (import-linter's grimp, mypy) do
not. This tree gives them the package as it is installed, each file a link to its source, so what
they report is about the code in the repository. `--map` rewrites paths in text read on stdin back
to the source paths (for mypy's messages).

    python tools/package_tree.py [OUT]          # default .demi-build/pkg
    mypy ... | python tools/package_tree.py --map
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / ".demi-build" / "pkg"


def package_dirs() -> dict[str, str]:
    """Package name -> source folder, from pyproject.toml."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(config["tool"]["setuptools"]["package-dir"])


def build(out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)
    for package, folder in package_dirs().items():
        target = out.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted((REPO / folder).glob("*.py")):
            os.symlink(source, target / source.name)
    return out


def map_paths(text: str, out: Path = DEFAULT_OUT) -> str:
    """Paths inside the tree (relative or absolute) -> the repo-relative source paths."""
    dirs = package_dirs()
    prefix = os.path.relpath(out, REPO)

    def source(match: re.Match[str]) -> str:
        parts = match.group(1).split("/")
        package, name = ".".join(parts[:-1]), parts[-1]
        return f"{dirs[package]}/{name}" if package in dirs else match.group(0)

    text = text.replace(str(out) + "/", prefix + "/")
    return re.sub(r"(?<![\w/.])(?:" + re.escape(prefix) + r"/)?(demi(?:/\w+)*\.py)", source, text)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--map"]:
        sys.stdout.write(map_paths(sys.stdin.read()))
        return 0
    print(build(Path(argv[0]).resolve() if argv else DEFAULT_OUT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

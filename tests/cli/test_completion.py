"""`demi completion bash|zsh|fish` prints a tab-completion script generated (by shtab) from the real
parser: every command is in it; bash, zsh and fish accept their scripts, and bash and fish complete
commands, subcommands and the shell names from them; an unknown shell is a one-line usage error.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest
from helpers import clean_env, demi

from demi.cli.main import build_parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


COMMANDS = _subcommands(build_parser())
EVAL_KINDS = sorted(_subcommands(COMMANDS["eval"]))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return clean_env(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def scripts(env) -> dict[str, str]:
    out = {}
    for shell in ("bash", "zsh", "fish"):
        proc = demi(env, "completion", shell)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        out[shell] = proc.stdout
    return out


def test_every_command_is_in_every_script(scripts):
    assert {"completion", "complete", "explain", "serve", "lsp", "chat", "eval"} <= set(COMMANDS)
    for shell, text in scripts.items():
        missing = [name for name in COMMANDS if name not in text]
        assert not missing, (shell, missing)


def test_each_script_is_for_its_shell(scripts):
    assert scripts["zsh"].startswith("#compdef demi\n")
    assert "complete -c demi " in scripts["fish"]
    assert "complete -o bashdefault -F _shtab_demi demi" in scripts["bash"]


def _bash_complete(script: str, words: list[str]) -> list[str]:
    """What bash offers after `words` (the last one is the word being completed)."""
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the completion script"
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"source /dev/stdin && complete -p demi >/dev/null && COMP_WORDS=(demi {quoted}); COMP_CWORD={len(words)}; "
        'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}; '
        '_shtab_demi demi "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"; '
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run([bash, "-c", program], input=script, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return sorted(line for line in proc.stdout.splitlines() if line)


def test_bash_completes_commands_subcommands_and_shells(scripts):
    assert _bash_complete(scripts["bash"], [""]) == sorted(COMMANDS)
    assert _bash_complete(scripts["bash"], ["comp"]) == ["complete", "completion"]
    assert _bash_complete(scripts["bash"], ["eval", ""]) == EVAL_KINDS
    assert _bash_complete(scripts["bash"], ["completion", ""]) == ["bash", "fish", "zsh"]
    assert "--version" in _bash_complete(scripts["bash"], ["--"])


def test_bash_sources_the_script_from_the_command(env):
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the completion script"
    command = f"source <('{sys.executable}' -m demi completion bash) && complete -p demi"
    proc = subprocess.run([bash, "-c", command], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "complete -o bashdefault -F _shtab_demi demi"


def test_an_unknown_shell_is_a_one_line_usage_error(env):
    proc = demi(env, "completion", "tcsh")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "invalid choice: 'tcsh'" in proc.stderr


def _shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:  # `make test` installs zsh and fish with apt where it can
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path


def test_zsh_loads_the_script_as_the_completion_of_demi(scripts, tmp_path):
    zsh = _shell("zsh")
    functions = tmp_path / "zfunc"
    functions.mkdir()
    (functions / "_demi").write_text(scripts["zsh"])
    assert subprocess.run([zsh, "-n", str(functions / "_demi")], capture_output=True, timeout=30).returncode == 0
    program = (
        f"fpath=({functions} $fpath); autoload -Uz compinit; compinit -u -d {tmp_path / 'zcompdump'}; "
        "print -r -- $_comps[demi]; autoload -Uz _demi; whence -w _demi"
    )
    proc = subprocess.run([zsh, "-f", "-c", program], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["_demi", "_demi: function"]


def test_fish_completes_commands_subcommands_and_shells(scripts, tmp_path):
    fish = _shell("fish")
    script = tmp_path / "demi.fish"
    script.write_text(scripts["fish"])

    def offered(line: str) -> list[str]:
        program = f"source {script}; complete -C '{line}'"
        proc = subprocess.run([fish, "--no-config", "-c", program], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return sorted(row.split("\t")[0] for row in proc.stdout.splitlines() if row)

    assert offered("demi comp") == ["complete", "completion"]
    assert offered("demi completion ") == ["bash", "fish", "zsh"]
    assert offered("demi eval ") == EVAL_KINDS

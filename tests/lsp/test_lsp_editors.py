"""The editor set-ups in editors/: Neovim driven headless against demi-lsp (when nvim is
installed), and the Helix and VS Code files checked against what the server understands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lsp_support import server_env

from demi.lsp.settings import LspSettings, merge

REPO = Path(__file__).resolve().parents[2]
EDITORS = REPO / "editors"
SUPPORT = Path(__file__).resolve().parent / "lsp_support.py"

NVIM_SCRIPT = r"""
vim.cmd("filetype on")
local repo, py, support = os.getenv("REPO"), os.getenv("PY"), os.getenv("SUPPORT")
vim.opt.rtp:prepend(repo .. "/editors/neovim")
require("demi").setup({ cmd = { py, support }, settings = { maxTokens = 16 } })
vim.cmd("edit " .. os.getenv("FILE"))
local get = vim.lsp.get_clients or vim.lsp.get_active_clients
local attached = vim.wait(30000, function()
  for _, c in ipairs(get()) do
    if c.name == "demi" and c.initialized then return true end
  end
  return false
end, 50)
local out = { attached = attached }
if attached then
  vim.api.nvim_win_set_cursor(0, { 2, 0 })
  -- as a user would: an insert-mode mapping, with the cursor after the indentation
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(
    "A<Cmd>lua require('demi').complete()<CR><Esc>", true, false, true), "x", false)
  vim.wait(15000, function() return vim.api.nvim_buf_get_lines(0, 1, 2, false)[1] ~= "    " end, 50)
  vim.cmd("write")
  local res = vim.lsp.buf_request_sync(0, "textDocument/codeAction", {
    textDocument = { uri = vim.uri_from_bufnr(0) },
    range = { start = { line = 1, character = 4 }, ["end"] = { line = 1, character = 4 } },
    context = { diagnostics = {} } }, 10000)
  out.titles = {}
  for _, r in pairs(res or {}) do
    for _, a in ipairs(r.result or {}) do table.insert(out.titles, a.title) end
  end
  vim.cmd("DemiExplain")
  vim.wait(15000, function() return vim.bo.filetype == "markdown" end, 50)
  out.markdown = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), "\n")
  out.status = require("demi").statusline()
end
local f = io.open(os.getenv("OUT"), "w")
f:write(vim.fn.json_encode(out))
f:close()
vim.cmd("qa!")
"""


@pytest.mark.skipif(shutil.which("nvim") is None, reason="nvim is not installed (apt-get install neovim)")
def test_neovim_headless_completes_and_explains(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def add(a, b):\n    \n", encoding="utf-8")
    script = tmp_path / "run.lua"
    script.write_text(NVIM_SCRIPT, encoding="utf-8")
    out = tmp_path / "out.json"
    env = server_env(tmp_path, REPO=str(REPO), PY=sys.executable, SUPPORT=str(SUPPORT), FILE=str(sample), OUT=str(out))
    proc = subprocess.run(
        ["nvim", "--headless", "-u", "NONE", "-i", "NONE", "-c", f"luafile {script}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["attached"], "demi-lsp never attached to the buffer"
    assert sample.read_text(encoding="utf-8") == "def add(a, b):\n    value = 42\n"
    assert result["titles"] == ["Demi: Explain", "Demi: Refactor..."]
    assert "`add`" in result["markdown"] and "Static analysis" in result["markdown"]
    assert result["status"].startswith("Demi: ready")


@pytest.mark.skipif(shutil.which("nvim") is None, reason="nvim is not installed (apt-get install neovim)")
def test_neovim_example_config_loads(tmp_path):
    proc = subprocess.run(
        [
            "nvim",
            "--headless",
            "-i",
            "NONE",
            "-u",
            str(EDITORS / "neovim" / "init.lua"),
            "-c",
            "lua assert(require('demi').options.settings.maxTokens == 48)",
            "-c",
            "qa!",
        ],
        env=server_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "Error" not in proc.stderr, proc.stderr


def _accepted(settings: dict) -> None:
    _, problems = merge(LspSettings(), settings)
    assert problems == [], problems


def test_helix_languages_toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    data = tomllib.loads((EDITORS / "helix" / "languages.toml").read_text(encoding="utf-8"))
    server = data["language-server"]["demi"]
    assert server["command"] == "demi-lsp"
    _accepted(server["config"])
    assert data["language"] and all("demi" in lang["language-servers"] for lang in data["language"])


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

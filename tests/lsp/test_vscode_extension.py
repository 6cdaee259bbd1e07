"""The VS Code extension (editors/vscode) against what demi-lsp understands and what VS Code needs.

Its settings are checked against `demi.lsp.settings.LspSettings` itself (names, JSON types,
defaults, choices), its commands and keybindings against each other and the commands VS Code
has, its icon against the script that draws it, and, where npm has installed the extension's
tools (`make test` does), the .vsix that `make vscode` builds is built and opened. The type check
of its TypeScript is in test_lsp_editors.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from helpers import load_script

from demi.assistant.config import SETTINGS
from demi.assistant.server_kinds import KINDS
from demi.lsp.settings import LspSettings, merge

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "editors" / "vscode"
MANIFEST = json.loads((EXTENSION / "package.json").read_text(encoding="utf-8"))
PROPERTIES: dict[str, dict[str, Any]] = MANIFEST["contributes"]["configuration"]["properties"]
SOURCES = {p.name: p.read_text(encoding="utf-8") for p in (EXTENSION / "src").glob("*.ts")}
# Commands of VS Code itself that the manifest binds keys to (vs/editor/contrib/inlineCompletions).
VSCODE_COMMANDS = {"editor.action.inlineSuggest.trigger", "editor.action.inlineSuggest.acceptNextLine"}
JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "dict": "object"}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


SERVER_SETTINGS = {f"demi.{camel(f.name)}": f for f in dataclasses.fields(LspSettings)}


def client_settings() -> set[str]:
    """The settings the extension keeps to itself: CLIENT_SETTINGS in src/settings.ts."""
    m = re.search(r"CLIENT_SETTINGS[^=]*=\s*\[([^\]]*)\]", SOURCES["settings.ts"])
    assert m, "src/settings.ts declares CLIENT_SETTINGS"
    return {f"demi.{name}" for name in re.findall(r'"([^"]+)"', m.group(1))}


def json_types(annotation: str) -> set[str]:
    """`str | None` -> {"string", "null"}: the JSON types a field's annotation allows."""
    out = set()
    for part in annotation.split("|"):
        part = part.strip()
        out.add("null" if part == "None" else JSON_TYPES[part.split("[")[0]])
    return out


def field_default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def test_every_server_setting_is_in_the_settings_ui():
    missing = sorted(set(SERVER_SETTINGS) - set(PROPERTIES))
    assert not missing, f"settings demi-lsp reads but VS Code does not show: {missing}"
    unknown = sorted(set(PROPERTIES) - set(SERVER_SETTINGS) - client_settings())
    assert not unknown, f"settings neither demi-lsp nor the extension reads: {unknown}"
    assert not client_settings() & set(SERVER_SETTINGS), "a client-only setting shadows one of the server's"


@pytest.mark.parametrize("key", sorted(SERVER_SETTINGS))
def test_setting_type_default_and_description(key):
    f, schema = SERVER_SETTINGS[key], PROPERTIES[key]
    declared = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    assert set(declared) == json_types(str(f.type)), (key, declared, f.type)
    assert schema["default"] == field_default(f), key
    assert schema.get("description") or schema.get("markdownDescription"), key
    for bound in ("minimum", "maximum"):
        if bound in schema:
            assert "integer" in declared or "number" in declared, key


def test_choices_match_the_config():
    """Enums are the config's choices (server kinds: the canonical names and auto, not every alias)."""
    by_field = {s.key.removeprefix("complete.").replace(".", "_"): s for s in SETTINGS}
    checked = []
    for key, f in SERVER_SETTINGS.items():
        setting, schema = by_field.get(f.name), PROPERTIES[key]
        if setting is None or not setting.choices:
            assert "enum" not in schema or key == "demi.dtype", f"{key}: enum without choices in the config"
            continue
        enum = [v for v in schema["enum"] if v is not None]
        assert len(enum) == len(set(enum)), key
        expected = {*KINDS, "auto"} if f.name == "server_kind" else set(setting.choices)
        assert set(enum) == expected, key
        assert set(enum) <= set(setting.choices), key
        if None in schema["enum"]:
            assert "null" in schema["type"], key
        if "enumDescriptions" in schema:
            assert len(schema["enumDescriptions"]) == len(schema["enum"]), key
        checked.append(f.name)
    assert {"quant", "explain_lead", "server_kind", "server_model_family"} <= set(checked)


def test_dtype_choices_are_the_loaders():
    from demi.model.loading import DTYPES  # the names the engine's loader knows, and auto

    enum = [v for v in PROPERTIES["demi.dtype"]["enum"] if v is not None]
    assert "auto" in enum and set(enum) - {"auto"} <= set(DTYPES)


def test_server_takes_every_default_as_its_own():
    """Sent as they are (a reset sends the default), the manifest's defaults change nothing."""
    defaults = {key.removeprefix("demi."): PROPERTIES[key]["default"] for key in SERVER_SETTINGS}
    merged, problems = merge(LspSettings(), defaults)
    assert problems == []
    assert merged == LspSettings()


def _registered_commands() -> set[str]:
    return {c for src in SOURCES.values() for c in re.findall(r'registerCommand\(\s*"([^"]+)"', src)}


def test_commands_keybindings_and_when_clauses_resolve():
    contributed = {c["command"] for c in MANIFEST["contributes"]["commands"]}
    assert contributed == _registered_commands()
    assert {"demi.explainSelection", "demi.refactorSelection", "demi.toggleCompletions"} <= contributed
    menus = [entry for entries in MANIFEST["contributes"]["menus"].values() for entry in entries]
    for entry in menus:
        assert entry["command"] in contributed, entry
    palette = {entry["command"] for entry in MANIFEST["contributes"]["menus"]["commandPalette"]}
    assert palette <= contributed and "demi.explainSelection" in palette
    bindings = MANIFEST["contributes"]["keybindings"]
    assert {b["command"] for b in bindings} == VSCODE_COMMANDS  # trigger, and accept the next line
    for b in bindings:
        assert b["key"] and b["when"], b
    whens = [entry.get("when", "") for entry in menus + bindings]
    for name in re.findall(r"config\.([\w.]+)", " ".join(whens)):
        assert name in PROPERTIES, f"a when clause reads an unknown setting {name}"
    restricted = MANIFEST["capabilities"]["untrustedWorkspaces"]["restrictedConfigurations"]
    assert set(restricted) <= set(PROPERTIES) and "demi.path" in restricted
    # The status item's click and links are commands the extension registers.
    status_call = re.search(r"new StatusItem\(([^;]*)\);", SOURCES["extension.ts"])
    assert status_call and set(re.findall(r'"(demi\.[^"]+)"', status_call.group(1))) <= contributed


def _load_icon_script() -> Any:
    return load_script(EXTENSION / "scripts" / "make_icon.py")


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and RGBA pixels of an unfiltered 8-bit RGBA PNG (as make_icon.py writes them)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 6)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * 4 + 1
    assert all(raw[r * stride] == 0 for r in range(height))
    return width, height, b"".join(raw[r * stride + 1 : (r + 1) * stride] for r in range(height))


def test_icon_and_license():
    icon = EXTENSION / MANIFEST["icon"]
    width, height, pixels = _png_pixels(icon.read_bytes())
    assert (width, height) == (128, 128)
    assert pixels == _load_icon_script().render(), "media/icon.png is not what scripts/make_icon.py draws"
    assert (EXTENSION / "LICENSE").read_bytes() == (REPO / "LICENSE").read_bytes()
    assert MANIFEST["license"] == "Apache-2.0"


def test_build_outputs_stay_out_of_git():
    ignored = (EXTENSION / ".gitignore").read_text(encoding="utf-8").split()
    assert {"node_modules/", "out/", "*.vsix"} <= set(ignored)
    assert "@vscode/vsce" in MANIFEST["devDependencies"]


VSCE = EXTENSION / "node_modules" / "@vscode" / "vsce" / "vsce"


@pytest.mark.skipif(
    shutil.which("node") is None or not VSCE.is_file(),
    reason="needs node and the extension's npm packages (`make test` runs npm ci in editors/vscode)",
)
def test_vsix_builds_with_what_vscode_needs(tmp_path):
    vsix = tmp_path / "demi.vsix"
    proc = subprocess.run(
        ["node", str(VSCE), "package", "--allow-missing-repository", "--out", str(vsix)],
        cwd=EXTENSION,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with zipfile.ZipFile(vsix) as z:
        names = set(z.namelist())
        assert json.loads(z.read("extension/package.json")) == MANIFEST
        vsix_manifest = z.read("extension.vsixmanifest").decode()
        license_name = next(n for n in ("extension/LICENSE.txt", "extension/LICENSE") if n in names)
        assert z.read(license_name) == (REPO / "LICENSE").read_bytes()
        assert z.read("extension/media/icon.png") == (EXTENSION / "media" / "icon.png").read_bytes()
    for name in ("extension.js", "settings.js", "status.js"):
        assert f"extension/out/{name}" in names
    assert "extension/node_modules/vscode-languageclient/package.json" in names  # the runtime dependency
    assert not any(n.startswith(("extension/src/", "extension/node_modules/typescript/")) for n in names)
    assert not any(n.startswith("extension/node_modules/@vscode/vsce/") for n in names)  # dev tools stay out
    assert "<Icon>extension/media/icon.png</Icon>" in vsix_manifest
    assert f"<License>{license_name}</License>" in vsix_manifest

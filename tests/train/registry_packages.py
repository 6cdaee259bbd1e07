"""Small local registry packages for the fetch and corpus tests (no network): Python wheels that
pip downloads from a folder (`--no-index --find-links`), and npm tarballs that `npm pack` reads
from a file path, each with the license declaration the test needs."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

from test_train_support import MIT, module_text


def make_wheel(
    folder: Path,
    name: str,
    version: str = "1.0",
    license_expression: str | None = "MIT",
    classifiers: tuple[str, ...] = (),
    modules: int = 3,
    first: int = 0,
    license_file: str | None = None,
) -> Path:
    """A pure-Python wheel `name-version-py3-none-any.whl` with `modules` distinct modules."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = ["Metadata-Version: 2.4", f"Name: {name}", f"Version: {version}"]
    if license_expression:
        meta.append(f"License-Expression: {license_expression}")
    meta += [f"Classifier: {c}" for c in classifiers]
    files = {f"{dist}/__init__.py": f'"""The {name} package."""\n'}
    for i in range(first, first + modules):
        files[f"{dist}/mod{i:02d}.py"] = module_text(i)
    files[f"{info}/METADATA"] = "\n".join(meta) + "\n\n"
    files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: demi-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if license_file is not None:
        files[f"{info}/licenses/LICENSE"] = license_file
    files[f"{info}/RECORD"] = "".join(f"{p},,\n" for p in files) + f"{info}/RECORD,,\n"
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, text in files.items():
            zf.writestr(p, text)
    return path


def make_npm_tarball(
    folder: Path,
    name: str,
    version: str = "1.0.0",
    license: str | dict | None = "MIT",
    first: int = 0,
    modules: int = 3,
    license_file: str | None = MIT,
    extra: dict[str, str] | None = None,
) -> Path:
    """An npm package tarball (`package/...`) with JavaScript in src/, a minified bundle in dist/,
    a stylesheet and an HTML page."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"name": name, "version": version, "main": "dist/index.min.js"}
    if license is not None:
        manifest["license"] = license
    files = {"package.json": json.dumps(manifest, indent=2)}
    for i in range(first, first + modules):
        files[f"src/mod{i:02d}.js"] = js_module(i)
    files["dist/index.min.js"] = "var a=1;" * 200
    files["dist/index.js"] = "\n".join(js_module(i) for i in range(first, first + modules))
    files["styles/site.css"] = f".box{first} {{\n  margin: 0 auto;\n  padding: {first}px;\n}}\n"
    files["index.html"] = f"<!doctype html>\n<html>\n<body>\n  <h1>{name}</h1>\n</body>\n</html>\n"
    if license_file is not None:
        files["LICENSE"] = license_file
    files.update(extra or {})
    path = folder / f"{name.replace('@', '').replace('/', '-')}-{version}.tgz"
    with tarfile.open(path, "w:gz") as tf:
        for p, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"package/{p}")
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return path


def js_module(n: int) -> str:
    return (
        f"// Module {n}: helpers for list number {n}.\n"
        f"export function total{n}(values, scale = 1) {{\n"
        "  let total = 0;\n"
        "  for (const v of values) {\n"
        "    total += v * scale;\n"
        "  }\n"
        "  return total;\n"
        "}\n\n"
        f"export function group{n}(items, key) {{\n"
        "  const groups = new Map();\n"
        "  for (const item of items) {\n"
        "    const k = key(item);\n"
        "    if (!groups.has(k)) groups.set(k, []);\n"
        "    groups.get(k).push(item);\n"
        "  }\n"
        f"  return groups; // {n}\n"
        "}\n"
    )

"""The registry corpus: packages fetched through the real clients (pip from a folder of wheels,
npm from tarball files, both offline), each license checked, only permissive code unpacked
(no bundles, no minified files, nothing outside the package folder), a resumable store, and the
corpus built from it with the held-out split by package."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest
from registry_packages import make_npm_tarball, make_wheel
from test_train_support import MIT

from demi.train import licenses
from demi.train.corpus import build_corpus
from demi.train.registry import Fetcher, _member_path, load_index, read_list, registry_sources, summarize

NPM = shutil.which("npm")


@pytest.mark.parametrize(
    "manifest, spdx, ok",
    [
        ({"license": "MIT"}, "MIT", True),
        ({"license": "(MIT OR GPL-3.0-only)"}, "(MIT OR GPL-3.0-only)", True),
        ({"license": "Apache-2.0 AND GPL-2.0-only"}, "Apache-2.0 AND GPL-2.0-only", False),
        ({"license": {"type": "BSD-3-Clause"}}, "BSD-3-Clause", True),
        ({"licenses": [{"type": "MIT"}, {"type": "GPL-2.0"}]}, "MIT OR GPL-2.0", True),
        ({"license": "Apache License 2.0"}, "Apache-2.0", True),
        ({"license": "UNLICENSED"}, "UNLICENSED", False),
        ({"license": "WTFPL"}, "WTFPL", False),
        ({"license": "BlueOak-1.0.0"}, "BlueOak-1.0.0", False),
    ],
)
def test_package_json_licenses(manifest, spdx, ok):
    lic = licenses.from_package_json(manifest)
    assert lic is not None and (lic.spdx, lic.permissive) == (spdx, ok)


def test_package_json_without_a_declaration_defers_to_the_file():
    assert licenses.from_package_json({}) is None
    assert licenses.from_package_json({"license": "SEE LICENSE IN LICENSE.txt"}) is None
    assert licenses.from_license_text("LICENSE", MIT).spdx == "MIT"
    assert not licenses.from_license_text("LICENSE", "All rights reserved.").permissive


def test_archive_members_cannot_leave_their_folder():
    assert _member_path("package/src/a.js") is not None
    for bad in ("../evil.js", "/etc/passwd", "package/../../evil.js", "package\\..\\..\\evil.js"):
        assert _member_path(bad) is None, bad


def test_package_lists_ship_with_thousands_of_packages():
    from demi.train.registry import package_list

    for registry in ("pypi", "npm"):
        names = read_list(package_list(registry))
        assert len(names) >= 4000 and len(set(names)) == len(names), registry


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    wheels, tarballs = root / "wheels", root / "npm"
    make_wheel(wheels, "demo-mit", modules=4, first=0)
    make_wheel(wheels, "demo-gpl", license_expression="GPL-3.0-only", first=4)
    # nothing declared in METADATA: the license file in the wheel decides
    make_wheel(wheels, "demo-file", license_expression=None, license_file=MIT, modules=3, first=8)
    evil = {"../escape.js": "export const x = 1;\n"}
    make_npm_tarball(tarballs, "demo-js", first=0, modules=4, extra=evil)
    make_npm_tarball(tarballs, "demo-wtf", license="WTFPL", first=4)
    make_npm_tarball(tarballs, "demo-nolicense", license=None, license_file=None, first=8)
    return root


@pytest.fixture(scope="module")
def store(packages, tmp_path_factory):
    if NPM is None:
        pytest.skip("npm is not installed")
    dest = tmp_path_factory.mktemp("store")
    fetcher = Fetcher(
        dest,
        pip_args=["--no-index", "--find-links", str(packages / "wheels")],
        npm_args=["--offline"],
    )
    todo = [("pypi", "demo-mit"), ("pypi", "demo-gpl"), ("pypi", "demo-file"), ("pypi", "demo-missing")]
    todo += [("npm", str(p)) for p in sorted((packages / "npm").glob("*.tgz"))]
    report = fetcher.fetch_many(todo, jobs=3)
    return dest, fetcher, todo, report


def test_fetch_checks_each_license_and_unpacks_only_permissive_code(store):
    dest, _, _, report = store
    by_name = {f.name or f.spec: f for f in load_index(dest)}
    assert by_name["demo-mit"].files == 5 and by_name["demo-mit"].license["spdx"] == "MIT"
    assert by_name["demo-file"].license["spdx"] == "MIT" and by_name["demo-file"].files == 4
    gpl = by_name["demo-gpl"]
    assert gpl.ok and not gpl.license["permissive"] and gpl.files == 0 and not gpl.dir
    assert not by_name["demo-missing"].ok and by_name["demo-missing"].error
    js = by_name["demo-js"]
    unpacked = sorted(p.relative_to(dest / js.dir).as_posix() for p in (dest / js.dir).rglob("*") if p.is_file())
    # sources, stylesheet and page kept; the bundle beside src/ and the minified file left out
    assert unpacked == [
        "LICENSE",
        "index.html",
        "package.json",
        *[f"src/mod{i:02d}.js" for i in range(4)],
        "styles/site.css",
    ]
    assert js.skipped == 2
    assert not by_name["demo-wtf"].license["permissive"] and not (dest / "npm" / "demo-wtf-1.0.0").exists()
    assert not by_name["demo-nolicense"].license["permissive"]  # nothing declared, no file: refused
    assert not list(dest.parent.rglob("escape.js"))
    assert report["pypi"]["packages"] == 2 and report["pypi"]["excluded_by_license"] == 1
    assert report["pypi"]["no_pure_wheel"] == 1 and report["pypi"]["failed"] == 0
    assert by_name["demo-missing"].error.startswith("no pure-Python wheel") and report["npm"]["packages"] == 1
    assert report["npm"]["excluded_licenses"] == {"WTFPL": 1, "unknown": 1}


def test_a_second_fetch_resumes_from_the_index(store):
    dest, fetcher, todo, _ = store
    lines = len(load_index(dest))
    report = fetcher.fetch_many(todo, jobs=2)
    assert report["attempted"] == 0 and len(load_index(dest)) == lines
    # a torn last line (a kill mid-write) is ignored
    with open(dest / "index.jsonl", "a", encoding="utf-8") as f:
        f.write('{"registry": "npm", "spec": "half')
    assert len(load_index(dest)) == lines
    assert summarize(load_index(dest))["pypi"]["packages"] == 2


def test_refused_licenses_are_checked_again_on_request_after_a_torn_line(store):
    """`retry_refused` fetches again what a license rule refused (the rules may have changed since);
    a torn last line in the index (a kill mid-write) does not swallow the next record."""
    dest, fetcher, todo, _ = store
    refused = {(f.registry, f.spec) for f in load_index(dest) if f.ok and not f.license.get("permissive")}
    assert len(refused) == 3  # demo-gpl, demo-wtf and demo-nolicense
    with open(dest / "index.jsonl", "a", encoding="utf-8") as f:
        f.write('{"registry": "pypi", "spec": "to')
    report = fetcher.fetch_many(todo, jobs=2, retry_refused=True)
    assert report["attempted"] == 3
    index = load_index(dest)
    assert sum((f.registry, f.spec) in refused for f in index) == 6  # each the first time and again
    assert report["pypi"]["excluded_by_license"] == 1 and report["npm"]["packages"] == 1
    assert fetcher.fetch_many(todo, jobs=2)["attempted"] == 0
    text = (dest / "index.jsonl").read_text(encoding="utf-8")
    assert "\n\n" not in text  # a line of its own after the torn one, and no empty lines elsewhere


def test_registry_sources_and_the_heldout_split_by_package(store):
    dest = store[0]
    sources = registry_sources(dest)
    kinds = {s.name: (s.kind, s.license.permissive, len(s.files)) for s in sources}
    assert kinds["demo-mit"] == ("pypi", True, 5) and kinds["demo-gpl"] == ("pypi", False, 0)
    assert kinds["demo-js"][:2] == ("npm", True) and {p.suffix for p in sources[-1].files} <= {
        ".js",
        ".css",
        ".html",
    }
    corpus = build_corpus(sources, permissive_only=True, heldout_fraction=0.5, heldout_by="package", seed=3)
    m = corpus.manifest
    train_pkgs = {d.source for d in corpus.train}
    held_pkgs = {d.source for d in corpus.heldout}
    assert held_pkgs and train_pkgs and not train_pkgs & held_pkgs  # no package on both sides
    assert m["heldout_by"] == "package" and sorted(m["heldout_units"]) == sorted(f"{p}/" for p in held_pkgs)
    assert m["licenses"]["excluded_by_license"] == {"GPL-3.0-only": 1, "WTFPL": 1, "unknown": 1}
    assert m["licenses"]["files_by_license"]["MIT"] == m["files"]
    by_file = build_corpus(sources, permissive_only=True, heldout_fraction=0.5, seed=3)
    assert by_file.manifest["heldout_by"] == "file" and by_file.manifest["heldout_units"] == []


def test_a_store_with_nothing_fetched_is_a_clear_error(tmp_path):
    from demi.train.errors import CorpusError

    with pytest.raises(CorpusError, match="demi train fetch"):
        registry_sources(tmp_path)


def test_links_and_devices_in_a_tarball_are_never_unpacked(tmp_path):
    if NPM is None:
        pytest.skip("npm is not installed")
    path = tmp_path / "linky-1.0.0.tgz"
    with tarfile.open(path, "w:gz") as tf:
        for name, text in {
            "package/package.json": json.dumps({"name": "linky", "version": "1.0.0", "license": "MIT"})
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("package/src/passwd.js")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    item = Fetcher(tmp_path / "store", npm_args=["--offline"]).fetch("npm", str(path))
    assert item.ok and item.license["permissive"] and item.files == 0
    assert not any(p.is_symlink() for p in (tmp_path / "store").rglob("*"))

"""`demi models`, `demi models info`, `demi pull` and `demi doctor`."""

from __future__ import annotations

import argparse
from pathlib import Path

from demi.cli.main import emit_json


def register(sub, common) -> None:
    models = sub.add_parser("models", parents=[common(model=False)], help="list models; `models info NAME`")
    models.set_defaults(func=cmd_models)
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    info = msub.add_parser(
        "info", parents=[common(model=False)], help="parameters and memory of a preset, directory or cached hub model"
    )
    info.add_argument("name", metavar="NAME")
    info.add_argument("--context", type=int, default=None, help="context for the KV cache figure")
    info.add_argument(
        "--target",
        choices=["mobile", "edge", "desktop", "server"],
        default=None,
        help="show the deployment plan for a device class (precision, context, memory)",
    )
    info.set_defaults(func=cmd_models_info)
    from demi.cli import commands_memory

    commands_memory.register(msub, common)  # `demi models memory`

    quant = msub.add_parser(
        "quantize", parents=[common(model=False)], help="write an int8/int4 checkpoint that loads without re-quantizing"
    )
    quant.add_argument("src", metavar="SRC", help="model name, directory or hub id")
    quant.add_argument("dst", metavar="DST", help="new directory")
    quant.add_argument("--quant", choices=["int8", "int4"], required=True)
    quant.add_argument(
        "--group",
        type=int,
        default=None,
        choices=[32, 64, 128],
        help="int4 group size (default: the engine's, the group `models info` counts with)",
    )
    quant.set_defaults(func=cmd_models_quantize)

    export = msub.add_parser(
        "export",
        parents=[common(model=False)],
        help="export the decoder with explicit KV-cache inputs and outputs (--onnx: fp32 and int8 ONNX)",
    )
    export.add_argument("src", metavar="MODEL", help="model name, directory or hub id")
    export.add_argument("dst", metavar="DIR", help="new directory")
    export.add_argument("--onnx", action="store_true", required=True, help="ONNX (the one format so far)")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default and oldest: 18)")
    export.add_argument("--no-int8", action="store_true", help="skip the int8 graph (onnxruntime quantization)")
    export.set_defaults(func=cmd_models_export)

    pull = sub.add_parser(
        "pull",
        parents=[common(model=False)],
        help="download a Hugging Face hub model into the local cache (needs the network)",
        description="Download hub model ID (owner/name) into the local Hugging Face cache: its weights as "
        "safetensors, its JSON configs and its tokenizer and chat-template files (*.txt, tokenizer.model, "
        "*.jinja), nothing else (no pickled weights, no Python code). A model already cached is not fetched "
        "again. Needs the network: with HF_HUB_OFFLINE=1 or DEMI_OFFLINE=1 set, an uncached model is a "
        "one-line error. Commands then find the model by its ID (--model ID) without the network.",
    )
    pull.add_argument("repo_id", metavar="ID", help="a hub id, owner/name (e.g. Qwen/Qwen2.5-Coder-0.5B)")
    pull.set_defaults(func=cmd_pull)

    doc = sub.add_parser(
        "doctor",
        parents=[common()],
        help="check the install, the model and the server",
        description="Report versions, devices, memory, CPU kernels, the effective settings and where each "
        "comes from, whether the model resolves, how it would load (device, dtype, quantization, context "
        "and memory, resolved from --device/--dtype/--quant/--context, the environment and the config as "
        "`demi complete` resolves them) and the server if one is configured. Exit 1 when something fails.",
    )
    doc.add_argument(
        "--server", default=None, help="check this server (default: $DEMI_SERVER, then `server` in the config file)"
    )
    doc.set_defaults(func=cmd_doctor)


def cmd_models(args: argparse.Namespace) -> int:
    from demi.assistant.catalog import list_models

    data = list_models()
    if args.json:
        emit_json(data)
        return 0
    print("built-in:", ", ".join(m["name"] for m in data["builtin"]) or "(none installed)")
    print("\npresets (shapes with random weights, for `models info` and benchmarks):")
    for m in data["presets"]:
        print(f"  {m['name']:22s} {m['description']}")
    print("\nhub cache:")
    for m in data["hub_cache"] or [{"name": "(empty; `demi pull OWNER/NAME` while online)", "bytes": 0}]:
        size = f"  {m['bytes'] / 2**30:.2f} GiB" if m["bytes"] else ""
        print(f"  {m['name']}{size}")
    return 0


def cmd_models_info(args: argparse.Namespace) -> int:
    from demi.assistant.catalog import describe

    text, data = describe(args.name, args.context, args.target)
    if args.json:
        emit_json(data)
    else:
        print(text)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from demi.assistant.catalog import pull

    path = pull(args.repo_id)
    if args.json:
        emit_json({"model": args.repo_id, "path": str(path)})
    else:
        print(f"{args.repo_id}: {path}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from demi.assistant.catalog import doctor
    from demi.cli.commands_assist import config_flags

    flags = config_flags(args)  # --model, --device, --dtype, --context, --quant and --server, as complete reads them
    report = doctor(flags)
    server = _server_report(flags)
    if server is not None:  # with a server, the model runs there: the server must be usable, not a local copy
        report["server"] = server
        report["ok"] = report["packages"]["torch"] is not None and server["ok"]
    if args.json:
        emit_json(report)
        return 0 if report["ok"] else 1
    for key, value in report.items():
        if key == "packages":
            value = ", ".join(f"{p} {v or '(missing)'}" for p, v in value.items())
        elif key == "config" and "settings" in value:
            state = "" if value["file_exists"] else " (not created yet)"
            print(f"{'config file':20s} {value['file']}{state}")
            for row in value["settings"]:
                print(f"  {row['key']:18s} {row['value']!s:30s} from {row['source']}")
            continue
        elif key == "model":
            value = (
                f"{value['name']} -> {value['path']} ({value['model_type']})"
                if value["ok"]
                else f"{value['name']}: {value['problem']}"
            )
        elif key == "load":
            _print_load(value)
            continue
        elif key == "cpu":
            _print_cpu(value)
            continue
        elif key == "server":
            _print_server(value)
            continue
        print(f"{key:20s} {value}")
    return 0 if report["ok"] else 1


def cmd_models_quantize(args: argparse.Namespace) -> int:
    from demi.assistant.catalog import quantize
    from demi.cli.progress_display import showing_progress

    with showing_progress(f"quantizing {args.src} to {args.quant}", args.json):
        out, group = quantize(args.src, args.dst, args.quant, args.group)
    if args.json:
        emit_json({"src": args.src, "dst": str(out), "quant": args.quant, "group": group})
    else:
        print(f"wrote {args.quant} checkpoint to {out}")
    return 0


def cmd_models_export(args: argparse.Namespace) -> int:
    from demi.assistant.onnx_export import export
    from demi.cli.progress_display import showing_progress

    with showing_progress(f"exporting {args.src} to ONNX", args.json):
        out = export(args.src, args.dst, int8=not args.no_int8, opset=args.opset)
    if args.json:
        emit_json(out)
    else:
        graphs = ", ".join(
            f"{Path(path).name} ({kind}, {out['bytes'][kind] / 2**20:.1f} MiB)" for kind, path in out["files"].items()
        )
        print(f"wrote {graphs} to {out['dir']}: {out['model_type']}, opset {out['opset']}, in {out['seconds']:.1f} s")
    return 0


def _server_report(flags: dict) -> dict | None:
    """The configured server contacted: kind, model, round trip, or why it is unusable (None
    when no server is configured)."""
    from demi.assistant.config import ConfigFileError, load_config
    from demi.assistant.engines import HttpEngine, engine_from_config
    from demi.assistant.errors import DemiError

    try:
        cfg = load_config(flags)
    except ConfigFileError:
        return None  # the config's own problem is in the report already
    if not cfg["server"]:
        return None
    try:
        engine = engine_from_config(cfg)
    except DemiError as exc:
        return {"url": cfg["server"], "ok": False, "problem": str(exc).strip().splitlines()[0]}
    assert isinstance(engine, HttpEngine)
    try:
        return engine.check()
    finally:
        engine.close()


def _print_server(s: dict) -> None:
    if not s["ok"]:
        print(f"{'server':20s} {s['url']}: unusable: {s.get('problem')}")
        return
    how = "detected" if s.get("detected") else "from server_kind"
    version = f" {s['version']}" if s.get("version") else ""
    where = f"{s['url']}: {s['kind']}{version} ({how})"
    print(f"{'server':20s} {where}, model {s['model']}, round trip {s['round_trip_ms']} ms")
    print(f"{'server FIM':20s} {s['fim']}" + (f", context {s['context']}" if s.get("context") else ""))


def _print_load(load: dict) -> None:
    if not load["ok"]:
        print(f"{'load':20s} {load['problem']}")
        return
    mib = load["memory_needed_bytes"] / 2**20
    need = f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.1f} MiB"
    print(
        f"{'load':20s} {load['device']}, {load['dtype']}, quant {load['quant']}, context {load['context']}: "
        f"needs about {need}"
    )
    given = {k: v for k, v in load["sources"].items() if v != "default"}
    if given:
        print("  " + ", ".join(f"{k} from {v}" for k, v in given.items()))


def _print_cpu(cpu: dict) -> None:
    print(f"{'cpu':20s} {cpu['model']}: {' '.join(cpu['features']) or '(no vector features Demi uses)'}")
    forced = f" (DEMI_KERNEL={cpu['forced']})" if cpu["forced"] else ""
    origins: dict[str, list[str]] = {}  # how each usable path got here: compiled here, prebuilt (why)
    for path in cpu["native_usable"]:
        origins.setdefault(cpu["origins"][path], []).append(path)
    usable = "; ".join(f"{', '.join(paths)}: {how}" for how, paths in origins.items())
    print(f"{'native kernels':20s} {usable or 'none: torch kernels'}{forced}")
    for path, why in cpu["problems"].items():
        print(f"  {path}: {why}")
    if cpu.get("note"):
        print(f"  {cpu['note']}")
    plan = cpu.get("plan")
    if plan and "problem" not in plan:
        print(
            f"{'kernel plan':20s} {plan['mode']}: decode {plan['decode']}"
            f"{' (one row at a time)' if plan.get('rows_at_once') == 1 else ''}, prefill {plan['prefill']}, "
            f"activations {plan['activations']} ({plan['source']})"
        )
        if plan.get("busy"):
            share = 100 * plan["others_share"]
            print(f"  measured while other processes took {share:.0f}% of the CPU: default kernels for now, not cached")
        for phase, times in plan["times_ms"].items():
            row = ", ".join(f"{k} {v:.3f}" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
            unit = "ms per layer's weights" if phase == "convert" else "ms/row/layer"
            print(f"  {phase} {unit}: {row}")
    elif plan:
        print(f"{'kernel plan':20s} {plan['problem']}")
    if attention := cpu.get("attention"):
        print(f"{'prompt attention':20s} {attention['kernel']} ({attention['source']})")
        if attention["times_ms"]:
            row = ", ".join(f"{k} {v:.3f}" for k, v in sorted(attention["times_ms"].items(), key=lambda kv: kv[1]))
            print(f"  ms for {attention['rows']} rows: {row}")

"""The ``gandid`` command: run, plugins, bench, build-ext."""
from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from .config import RunConfig, split_list
from .errors import GandidError

err_console = Console(stderr=True)


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="run analyses on a generator", description=(
        "Run analyses (dissect, ace, did, entangle, ...) on a generator and write one output folder: "
        "run.json, one JSON per analysis, images, plots and report.html. With no arguments: the embedded "
        "toyroom generator and segmenter, every installed analysis."))
    p.add_argument("--config", metavar="FILE.toml", help="run configuration file; flags override it")
    p.add_argument("--generator", help="generator plugin name (see `gandid plugins`)")
    p.add_argument("--weights", help="generator weights file (.pth/.pt/.safetensors)")
    p.add_argument("--segmenter", help="segmenter plugin name")
    p.add_argument("--seg-weights", dest="seg_weights", help="segmenter weights (file or folder)")
    p.add_argument("--analysis", action="append", metavar="NAME[,NAME]",
                   help="analyses to run (comma list or repeated); default: all installed")
    p.add_argument("--layer", action="append", metavar="LAYER", help="layer to analyse (repeatable)")
    p.add_argument("--samples", type=int, help="number of generated samples")
    p.add_argument("--seed", type=int, help="seed of the latents (sample i depends only on seed and i)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="samples per forward pass")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="where to run (default auto)")
    p.add_argument("--out", help="output folder")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", default=None, help="continue an interrupted run in --out")
    group.add_argument("--force", action="store_true", default=None, help="replace an existing run in --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gandid", description="Look inside GANs: dissection, ACE, DID.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    _add_run_parser(sub)
    p = sub.add_parser("plugins", help="list generators, segmenters and analyses and where they came from")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    base = RunConfig.from_toml(args.config) if args.config else RunConfig()
    overrides = {
        "generator": args.generator, "weights": args.weights, "segmenter": args.segmenter,
        "seg_weights": args.seg_weights, "analysis": split_list(args.analysis) if args.analysis else None,
        "layer": split_list(args.layer) if args.layer else None, "samples": args.samples, "seed": args.seed,
        "batch_size": args.batch_size, "device": args.device, "out": args.out, "resume": args.resume,
        "force": args.force,
    }
    return base.merged(overrides)


def cmd_run(args) -> int:
    from .runner import run

    cfg = config_from_args(args)
    try:
        result = run(cfg, console=err_console)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted: partial results are in {cfg.out}; "
                          f"continue with `gandid run ... --out {cfg.out} --resume`[/yellow]")
        return 130
    err_console.print(f"[bold]{result.status}[/bold]: results in {result.out_dir}")
    return 0 if not result.errors else 1


def cmd_plugins(args) -> int:
    from .registry import get_registry

    rows = get_registry().rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="gandid plugins")
    for col in ("name", "kind", "package", "description", "status"):
        table.add_column(col)
    for r in rows:
        package = f"{r['package'] or '?'} {r['version'] or ''}".strip()
        status = "[green]ok[/green]" if r["status"] == "ok" else f"[red]broken[/red]: {r['error']}"
        table.add_row(r["name"], r["kind"], package, r["description"], status)
    Console().print(table)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"run": cmd_run, "plugins": cmd_plugins}
    try:
        return handlers[args.command](args)
    except GandidError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())

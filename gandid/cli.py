"""The ``gandid`` command: run, merge, serve, convert, plugins, bench, build-ext."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import RunConfig, split_list
from .errors import GandidError
from .interrupts import Terminated, sigterm_interrupts

err_console = Console(stderr=True)


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="run analyses on a generator", description=(
        "Run analyses (dissect, ace, did, entangle, ...) on a generator and write one output folder: "
        "run.json, one JSON per analysis, images, plots and report.html. With no arguments: the embedded "
        "toyroom generator and segmenter, every installed analysis."))
    p.add_argument("--config", metavar="FILE.toml", help="run configuration file; flags override it")
    p.add_argument("--generator", help="generator plugin name (see `gandid plugins`), or auto: recognised from --weights")
    p.add_argument("--weights", help="generator weights file (.pth/.pt/.safetensors)")
    p.add_argument("--generator-option", dest="generator_option", action="append", metavar="KEY=VALUE",
                   help="a generator option (repeatable), e.g. inputs=DIR for pix2pix; over the config file's "
                        "[generator_options]; values are read as JSON when they parse, else as text")
    p.add_argument("--segmenter", help="segmenter plugin name")
    p.add_argument("--segmenter-option", dest="segmenter_option", action="append", metavar="KEY=VALUE",
                   help="a segmenter option (repeatable), as --generator-option")
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
    p.add_argument("--shard", metavar="K/N", help="run shard K of N (from 0) into --out, without a process group; "
                                                  "join the shards with `gandid merge`")
    p.add_argument("--require-fused", dest="require_fused", action="store_true", default=None,
                   help="stop with an error instead of running on the (slower) PyTorch reference when the fused "
                        "op cannot be built or loaded (for benchmarks and clusters)")


def _add_merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="join the shards of a run (gandid run --shard K/N) into one output folder",
                       description="Join shard folders written by `gandid run --shard K/N` (all N of them) into the "
                                   "output folder one run would have written, report included: the shards' work is "
                                   "merged and the rest of each analysis runs here.")
    p.add_argument("shards", nargs="+", metavar="SHARD_DIR", help="the shard folders")
    p.add_argument("--out", required=True, help="output folder of the merged run")
    p.add_argument("--force", action="store_true", help="replace an existing run in --out")


def _add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="explore a run in the browser: units, painting edits, DID arms",
                       description="Serve a finished or interrupted run (its generator and segmenter rebuilt from "
                                   "run.json) as a local web app: unit browser, painting interventions and their four "
                                   "DID arms, per-class results. Needs the serve extra: pip install 'gandid[serve]'. "
                                   "API: docs/serve.md.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the output folder of a `gandid run`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto", help="where the models run")
    p.add_argument("--queue", type=int, default=8, help="model requests allowed to wait; more get 503 (default 8)")


def _add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="any checkpoint a generator plugin loads, as .safetensors with its metadata",
                       description="Convert a generator checkpoint (an NVlabs .pkl, a rosinality or GAN Dissection "
                                   ".pth, ...) to a .safetensors file with gandid's metadata (plugin, config, source) "
                                   "that the same plugin loads, without pickles; checked by loading it back and "
                                   "comparing images.")
    p.add_argument("source", metavar="IN", help="the weights file")
    p.add_argument("target", metavar="OUT.safetensors", help="the file to write")
    p.add_argument("--generator", default="auto", help="generator plugin (default auto: recognised from the file)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a generator option (repeatable), e.g. --option truncation=0.7; values are read as JSON "
                        "when they parse, else as text")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gandid", description="Look inside GANs: dissection, ACE, DID.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    _add_run_parser(sub)
    _add_merge_parser(sub)
    _add_serve_parser(sub)
    _add_convert_parser(sub)
    p = sub.add_parser("plugins", help="list generators, segmenters and analyses and where they came from")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("bench", help="fused op vs eager vs torch.compile vs copy bandwidth", description=(
        "Time the fused op on real PG-GAN layer shapes against copy_, clone(), the eager PyTorch reference and "
        "torch.compile of it, all in this process. GB/s count one read of x and one write of y."))
    p.add_argument("--quick", action="store_true", help="one small shape (seconds, for a smoke test)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--channels-last", action="store_true", help="NHWC tensors")
    p.add_argument("--methods", help="comma list out of copy_, clone, eager_reference, compiled_reference, "
                                     "ext_alloc, ext_out (default: all)")
    p.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables (for benchmarks/RESULTS.md)")
    p = sub.add_parser("build-ext", help="build the fused C++/CUDA op now and say what was built where",
                       description="Build the fused C++/CUDA op into the cache (~/.cache/gandid/ext, or "
                                   "GANDID_CACHE_DIR) if it is not there or does not load, and say where it is.")
    p.add_argument("--verbose", action="store_true", help="show the compiler's output")
    p.add_argument("--rebuild", action="store_true", help="build it again even if a cached build loads")
    return parser


def parse_options(items, flag: str) -> dict:
    """KEY=VALUE strings -> {key: value}, values read as JSON when they parse (numbers, lists), else text."""
    from .errors import ConfigError

    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: write KEY=VALUE, e.g. {flag} truncation=0.7")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def config_from_args(args: argparse.Namespace) -> RunConfig:
    base = RunConfig.from_toml(args.config) if args.config else RunConfig()
    generator_options = dict(base.generator_options, **parse_options(args.generator_option, "--generator-option"))
    segmenter_options = dict(base.segmenter_options, **parse_options(args.segmenter_option, "--segmenter-option"))
    overrides = {
        "generator": args.generator, "weights": args.weights, "segmenter": args.segmenter,
        "seg_weights": args.seg_weights, "analysis": split_list(args.analysis) if args.analysis else None,
        "layer": split_list(args.layer) if args.layer else None, "samples": args.samples, "seed": args.seed,
        "batch_size": args.batch_size, "device": args.device, "out": args.out, "resume": args.resume,
        "force": args.force, "shard": args.shard, "require_fused": args.require_fused,
        "generator_options": generator_options if args.generator_option else None,
        "segmenter_options": segmenter_options if args.segmenter_option else None,
    }
    return base.merged(overrides)


def cmd_run(args) -> int:
    from .runner import run

    cfg = config_from_args(args)
    try:
        with sigterm_interrupts():
            result = run(cfg, console=err_console)
    except KeyboardInterrupt as exc:
        from .record import RunRecord

        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        record = RunRecord.read(Path(cfg.out)) if Path(cfg.out).is_dir() else None
        if record is not None:
            err_console.print(f"[yellow]{what}: partial results are in {escape(cfg.out)}; continue with "
                              f"`gandid run ... --out {escape(cfg.out)} --resume` (the same options)[/yellow]")
        else:  # stopped before the run wrote its record (e.g. while the op was being built)
            err_console.print(f"[yellow]{what} before the run started writing {escape(cfg.out)}: nothing to resume; "
                              "run the same command again[/yellow]")
        return 143 if isinstance(exc, Terminated) else 130
    err_console.print(f"[bold]{result.status}[/bold]: results in {result.out_dir}")
    return 0 if not result.errors else 1


def cmd_merge(args) -> int:
    from .merge import merge

    with sigterm_interrupts():
        result = merge(args.shards, args.out, force=args.force, console=err_console)
    err_console.print(f"[bold]{result.status}[/bold]: results in {result.out_dir}")
    return 0 if not result.errors else 1


def cmd_convert(args) -> int:
    from .convert import convert

    done = convert(args.source, args.target, args.generator, parse_options(args.option, "--option"), force=args.force)
    err_console.print(f"{escape(args.source)}: {escape(done['found'])} -> generator {done['generator']!r}")
    err_console.print(f"wrote {escape(args.target)} ({done['tensors']} tensors, {done['bytes'] / 2**20:.1f} MiB); "
                      f"loaded back, images equal to {done['max_difference']:.1g}")
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from .serve.app import create_app
    except ImportError as exc:
        raise GandidError(f"gandid serve needs the serve extra ({exc.name} is missing): "
                          "pip install 'gandid[serve]'") from None
    if not 1 <= args.port <= 65535 or args.queue < 0:
        raise GandidError("--port must be in 1..65535 and --queue at least 0")
    if args.host in LOOPBACK:
        hosts = ["127.0.0.1", "localhost", "[::1]"]
    else:
        hosts = None
        err_console.print(f"[yellow]warning: binding to {escape(args.host)}: anyone who can reach this address can "
                          "use the explorer and its model (there is no authentication). Prefer the default "
                          "127.0.0.1 and an SSH tunnel: ssh -L 8765:127.0.0.1:8765 HOST[/yellow]")
    app = create_app(args.run_dir, device=args.device, queue=args.queue, allowed_hosts=hosts)
    err_console.print(f"serving {escape(str(args.run_dir))} at http://{escape(args.host)}:{args.port}/ (Ctrl+C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


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


def cmd_build_ext(args) -> int:
    import time

    from .ops import build

    t0 = time.perf_counter()
    try:
        module = build.load(verbose=args.verbose, rebuild=args.rebuild)
    except Exception as exc:
        err_console.print(f"[red]build failed[/red] (runs will use the PyTorch reference instead, or stop with "
                          f"--require-fused):\n{escape(str(exc))}")
        return 1
    print(f"{'built' if build.built_here else 'loaded the cached build of'} {module.__name__} in "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"  library: {build.cache_note() or build.library_path(module.__name__)}")
    print(f"  sources: {build.csrc_dir()}")
    print(f"  CUDA kernels: {'yes' if module.with_cuda() else 'no (CPU only)'}")
    return 0


def cmd_bench(args) -> int:
    import platform

    import torch
    from rich.progress import Progress

    from . import bench
    from .ops import backend_name

    methods = split_list([args.methods]) if args.methods else list(bench.METHODS)
    for m in methods:
        if m not in bench.METHODS:
            from .errors import UnknownNameError

            raise UnknownNameError("benchmark method", m, bench.METHODS)
    if backend_name(args.device) == "reference":
        methods = [m for m in methods if not m.startswith("ext")]
        err_console.print("[yellow]the fused op is not available here: timing the baselines only[/yellow]")
    cases = len(bench.QUICK_SHAPES if args.quick else bench.OP_SHAPES) + 1
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=cases * len(methods))
        rows = bench.run_op_bench(args.quick, args.device, methods, args.channels_last,
                                  progress=lambda: progress.advance(task))
    ratio_rows = bench.ratios(rows)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if args.device.startswith("cuda"):
        machine = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    layout = "channels_last" if args.channels_last else "NCHW"
    if args.markdown:
        print(f"Machine: {machine}; {layout} float32; GB/s = (read x + write y) / median time.\n")
        print("| case | MB | " + " | ".join(methods) + " |")
        print("| --- | ---: |" + " ---: |" * len(methods))
        cases_seen = list(dict.fromkeys(r["case"] for r in rows))
        for case in cases_seen:
            got = {r["method"]: r for r in rows if r["case"] == case}
            mb = next(iter(got.values()))["MB"]
            print(f"| {case} | {mb:.0f} | " + " | ".join(f"{got[m]['GB/s']:.1f}" for m in methods) + " |")
        names = [n for n, *_ in bench.RATIOS if any(n in r for r in ratio_rows)]
        if names:
            print("\n| case | " + " | ".join(names) + " |")
            print("| --- |" + " ---: |" * len(names))
            for r in ratio_rows:
                print(f"| {r['case']} | " + " | ".join(f"{r[n]:.2f}" if n in r else "-" for n in names) + " |")
            print("| target (CPU) | " + " | ".join(f">= {t}" for n, _, _, t in bench.RATIOS if n in names) + " |")
    else:
        table = Table(title=f"intervene_pixelnorm, GB/s ({machine}; {layout})")
        table.add_column("case")
        for m in methods:
            table.add_column(m, justify="right")
        for case in dict.fromkeys(r["case"] for r in rows):
            got = {r["method"]: r for r in rows if r["case"] == case}
            table.add_row(case, *[f"{got[m]['GB/s']:.1f}" for m in methods])
        Console().print(table)
        names = [n for n, *_ in bench.RATIOS if any(n in r for r in ratio_rows)]
        if names:
            rt = Table(title="speed ratios (higher = fused op faster)")
            rt.add_column("case")
            for n, _, _, target in bench.RATIOS:
                if n in names:
                    rt.add_column(f"{n} (target {target})", justify="right")
            for r in ratio_rows:
                rt.add_row(r["case"], *[f"{r[n]:.2f}" if n in r else "-" for n in names])
            Console().print(rt)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "layout": layout, "rows": rows,
                                               "ratios": ratio_rows}, indent=2))
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .version import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"run": cmd_run, "merge": cmd_merge, "serve": cmd_serve, "convert": cmd_convert, "plugins": cmd_plugins, "bench": cmd_bench, "build-ext": cmd_build_ext}
    try:
        return handlers[args.command](args)
    except GandidError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        return 2
    except KeyboardInterrupt as exc:  # a command other than run (which says how to resume)
        err_console.print(f"[yellow]{'terminated (SIGTERM)' if isinstance(exc, Terminated) else 'interrupted'}"
                          "[/yellow]")
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())

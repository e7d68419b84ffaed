"""Recipes that train the shipped toyroom models: ``python -m gandid_plugins.worlds.toyroom.train segmenter``.

Data: fresh renders every step (train seeds from 0 upward; held-out evaluation seeds from 10,000,000).
Progress goes to a log, checkpoints to --out, and the final weights (float16 safetensors) next to
this file unless --out says otherwise.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .segmenter import WEIGHTS, UNet
from .world import LABELS, render_batch

GENERATOR_WEIGHTS = WEIGHTS.parent / "generator.safetensors"

EVAL_SEED = 10_000_000


def miou(net, renders: int = 1000, batch: int = 100):
    """Per-class IoU and mean IoU on held-out renders."""
    inter = np.zeros(len(LABELS))
    union = np.zeros(len(LABELS))
    net.eval()
    with torch.no_grad():
        for lo in range(0, renders, batch):
            images, labels = render_batch(range(EVAL_SEED + lo, EVAL_SEED + min(lo + batch, renders)))
            pred = net(torch.from_numpy(images)).argmax(1).numpy()
            for c in range(len(LABELS)):
                p, t = pred == c, labels == c
                inter[c] += (p & t).sum()
                union[c] += (p | t).sum()
    iou = inter / np.maximum(union, 1)
    return {LABELS[c]: float(iou[c]) for c in range(len(LABELS))}, float(iou.mean())


def train_segmenter(args):
    torch.manual_seed(args.seed)
    net = UNet()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    # frequency-balanced weights, so small objects (lamps, paintings) are not drowned by the walls
    _, labels = render_batch(range(EVAL_SEED - 2000, EVAL_SEED - 1000))
    freq = np.bincount(labels.ravel(), minlength=len(LABELS)) / labels.size
    weight = torch.tensor((1 / np.maximum(freq, 1e-4)) ** 0.5, dtype=torch.float32)
    weight = weight / weight.mean()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "segmenter_log.jsonl").open("a")
    start = time.time()
    for step in range(args.steps):
        net.train()
        seeds = range(step * args.batch, (step + 1) * args.batch)
        images, labels = render_batch(seeds)
        loss = F.cross_entropy(net(torch.from_numpy(images)), torch.from_numpy(labels), weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            log.write(json.dumps({"step": step, "loss": float(loss.detach()), "seconds": time.time() - start}) + "\n")
            log.flush()
        if step % 500 == 499:
            torch.save(net.state_dict(), out / "segmenter_checkpoint.pt")
    per_class, mean = miou(net)
    from safetensors.torch import save_file

    target = Path(args.weights) if args.weights else WEIGHTS
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in net.state_dict().items()}, str(target))
    summary = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
               "wall_seconds": time.time() - start, "mean_iou": mean, "iou": per_class, "weights": str(target)}
    # the float16 weights as shipped are what counts: evaluate them too
    from .segmenter import ToyroomSegmenter

    shipped = ToyroomSegmenter(weights=str(target))
    summary["iou_shipped"], summary["mean_iou_shipped"] = miou(shipped.net)
    (out / "segmenter_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def train_generator(args):
    """Time-boxed GAN training with checkpoints (resumable), a log and sample grids."""
    from .gan import Trainer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(seed=args.seed, lr=args.lr, batch=args.batch)
    ckpt = out / "generator_checkpoint.pt"
    if ckpt.exists():  # resume
        trainer.load_state_dict(torch.load(ckpt, weights_only=True))
    log = (out / "generator_log.jsonl").open("a")
    start, last_ckpt = time.time(), time.time()
    while time.time() - start < args.minutes * 60 and trainer.step < args.steps:
        seeds = range(trainer.step * args.batch, (trainer.step + 1) * args.batch)
        images, _ = render_batch(seeds)
        stats = trainer.train_step(torch.from_numpy(images))
        if trainer.step % 25 == 0:
            stats["seconds"] = time.time() - start
            log.write(json.dumps(stats) + "\n")
            log.flush()
        if time.time() - last_ckpt > args.checkpoint_minutes * 60:
            torch.save(trainer.state_dict(), ckpt)
            save_grid(trainer.ema, out / f"samples_{trainer.step:06d}.png")
            last_ckpt = time.time()
    torch.save(trainer.state_dict(), ckpt)
    save_grid(trainer.ema, out / "samples_final.png")
    export_generator(ckpt, args.seed, Path(args.weights) if args.weights else GENERATOR_WEIGHTS, out)
    summary = {"steps": trainer.step, "batch": args.batch, "lr": args.lr, "seed": args.seed,
               "wall_seconds_this_run": time.time() - start}
    (out / "generator_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def export_generator(checkpoint: Path, seed: int, target: Path, out: Path):
    """Write the bias-corrected EMA generator as float16 safetensors in the pggan layout, with a grid."""
    from safetensors.torch import save_file

    from .gan import corrected_ema, init_generator

    state = torch.load(checkpoint, weights_only=True)
    gen = init_generator(seed)
    gen.load_state_dict(corrected_ema(state, seed))
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in gen.net.state_dict().items()}, str(target))
    save_grid(gen.eval(), out / "samples_exported.png")
    print(f"exported step {state['step']} to {target}")


@torch.no_grad()  # as a decorator it holds for each step of the generator only, not across its yields
def paired_batches(images: int = 1000, batch: int = 100, weights: str | None = None):
    """Yield ``(generated, rendered, exact)`` batches: (n, 3, 64, 64) images of the generator's latents
    ``EVAL_SEED``, indices ``lo..lo+n``, clamped to [-1, 1]; renders of seeds ``EVAL_SEED + lo..`` and their
    exact (n, 64, 64) labels. The report draws them once and hands them to each statistic."""
    from . import toyroom_generator

    gen = toyroom_generator(weights)
    for lo in range(0, images, batch):
        n = min(batch, images - lo)
        rendered, exact = render_batch(range(EVAL_SEED + lo, EVAL_SEED + lo + n))
        yield (gen.forward(gen.sample_z(n, seed=EVAL_SEED, start=lo)).clamp(-1, 1),
               torch.from_numpy(rendered), torch.from_numpy(exact))


def class_frequencies(images: int = 1000, batch: int = 100, weights: str | None = None, out: Path | None = None,
                      min_area: float = 0.005, batches=None):
    """Segmenter class statistics on generated images vs renders: for each class, the share of images
    showing it (at least ``min_area`` of the pixels) and its mean share of pixels. Renders are also
    counted with their exact labels. Writes class_frequencies.json and .png into ``out``. ``batches``:
    :func:`paired_batches` already drawn (``images`` of them in all), else drawn here."""
    from .segmenter import ToyroomSegmenter

    seg = ToyroomSegmenter()
    k = len(LABELS)
    sums = {name: {"images": np.zeros(k), "pixels": np.zeros(k)} for name in ("generated", "renders", "renders_exact")}

    def add(name, labels):
        area = F.one_hot(labels.reshape(len(labels), -1).long(), k).double().mean(1).numpy()  # (B, K)
        sums[name]["images"] += (area >= min_area).sum(0)
        sums[name]["pixels"] += area.sum(0)

    with torch.no_grad():
        for generated, rendered, exact in batches or paired_batches(images, batch, weights):
            add("generated", seg.segment(generated))
            add("renders", seg.segment(rendered))
            add("renders_exact", exact)
    result = {"images": images, "min_area": min_area, "classes": {
        LABELS[c]: {name: {"image_share": float(s["images"][c] / images), "pixel_share": float(s["pixels"][c] / images)}
                    for name, s in sums.items()} for c in range(k)}}
    if out is not None:
        from gandid.plotting import pyplot

        plt = pyplot()

        out.mkdir(parents=True, exist_ok=True)
        (out / "class_frequencies.json").write_text(json.dumps(result, indent=2))
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
        x = np.arange(k)
        for ax, key, title in zip(axes, ("image_share", "pixel_share"),
                                  (f"images showing the class (>= {min_area:.1%} of pixels)", "mean share of pixels")):
            for i, (name, colour) in enumerate((("generated", "#c44e52"), ("renders", "#4c72b0"))):
                ax.bar(x + (i - 0.5) * 0.4, [result["classes"][c][name][key] for c in LABELS], 0.4, label=name,
                       color=colour)
            ax.set_xticks(x, LABELS, rotation=45, ha="right")
            ax.set_title(title)
        axes[0].legend()
        fig.suptitle(f"toyroom segmenter on {images} generated images vs {images} renders")
        fig.tight_layout()
        fig.savefig(out / "class_frequencies.png", dpi=90)
        plt.close(fig)
    return result


def bottleneck_features(seg, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, 64, 64) images -> (N, 4 * width) float64: the segmenter's bottleneck (``mid``) averaged over
    its 16x16 positions, the feature space of :func:`frechet_distance`."""
    with torch.no_grad():
        return seg.net.encode(images.float())[2].mean((2, 3)).double()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (the FID formula, in our own
    feature space): |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    # tr((S_a S_b)^(1/2)) = sum of sqrt of the eigenvalues of S_a^(1/2) S_b S_a^(1/2) (symmetric, PSD)
    w, v = torch.linalg.eigh(s_a)
    root_a = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross)


def generator_frechet(images: int = 1000, batch: int = 100, weights: str | None = None, batches=None) -> dict:
    """The Fréchet distance of ``images`` generated images to as many held-out renders, and, as its floor,
    of two disjoint sets of held-out renders, in the shipped segmenter's bottleneck features; ``relative``
    is the first divided by the renders' total feature variance. ``batches``: as in
    :func:`class_frequencies`."""
    from .segmenter import ToyroomSegmenter

    seg = ToyroomSegmenter()
    feats = {"generated": [], "renders": [], "renders_other": []}
    for generated, rendered, _ in batches or paired_batches(images, batch, weights):
        feats["generated"].append(bottleneck_features(seg, generated))
        feats["renders"].append(bottleneck_features(seg, rendered))
    # the floor: renders of seeds disjoint from the ones above
    for lo in range(0, images, batch):
        other, _ = render_batch(range(EVAL_SEED + images + lo, EVAL_SEED + images + min(lo + batch, images)))
        feats["renders_other"].append(bottleneck_features(seg, torch.from_numpy(other)))
    feats = {k: torch.cat(v) for k, v in feats.items()}
    spread = float(torch.cov(feats["renders"].T).trace())
    result = {"images": images, "generated_vs_renders": frechet_distance(feats["generated"], feats["renders"]),
              "renders_vs_renders": frechet_distance(feats["renders_other"], feats["renders"]),
              "renders_total_variance": spread}
    # divided by the renders' total feature variance, so that two segmenters' feature spaces compare
    result["relative"] = result["generated_vs_renders"] / spread
    return result


def report(images: int, weights: str | None, out: Path) -> dict:
    """The model card's numbers: the segmenter's IoU on held-out renders, class frequencies on generated
    images vs renders, the Fréchet distance; written to ``out/report.json``, with class_frequencies.json
    and .png and grids of generated images and of renders (samples_report.png, renders_report.png)."""
    from . import toyroom_generator
    from .segmenter import ToyroomSegmenter

    iou, mean_iou = miou(ToyroomSegmenter().net, renders=images)
    batches = list(paired_batches(images, weights=weights))  # 1,000 images: about 100 MB, drawn once for both
    freq = class_frequencies(images, weights=weights, out=out, batches=batches)
    frechet = generator_frechet(images, weights=weights, batches=batches)
    save_grid(toyroom_generator(weights), out / "samples_report.png")
    save_grid(None, out / "renders_report.png", seed=EVAL_SEED)
    result = {"segmenter_iou": iou, "segmenter_mean_iou": mean_iou, "class_frequencies": freq, "frechet": frechet}
    (out / "report.json").write_text(json.dumps(result, indent=2))
    print(f"segmenter mean IoU on {images} held-out renders: {mean_iou:.3f}")
    for name, c in freq["classes"].items():
        print(f"{name:>10}  IoU {iou[name]:.3f}  generated {c['generated']['image_share']:6.1%} of images "
              f"{c['generated']['pixel_share']:6.1%} of pixels   renders {c['renders']['image_share']:6.1%} "
              f"{c['renders']['pixel_share']:6.1%}")
    print(f"Fréchet distance, generated vs renders: {frechet['generated_vs_renders']:.4f} "
          f"(two sets of renders: {frechet['renders_vs_renders']:.4f}); relative to the renders' feature "
          f"variance: {frechet['relative']:.3f}")
    return result


def save_grid(gen, path, n=32, seed=0):
    """A 4-row grid of ``n`` generated images (latents of ``seed``); ``gen=None`` draws renders of seeds
    ``seed``, ``seed + 1``, ... instead."""
    from gandid.plotting import pyplot

    plt = pyplot()

    if gen is None:
        images = torch.from_numpy(render_batch(range(seed, seed + n))[0])
    else:
        with torch.no_grad():
            images = gen.forward(gen.sample_z(n, seed)).clamp(-1, 1)
    fig, axes = plt.subplots(4, n // 4, figsize=(n // 4 * 1.2, 4.8))
    for ax, img in zip(axes.ravel(), images):
        ax.imshow(((img + 1) / 2).permute(1, 2, 0).numpy())
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gandid_plugins.worlds.toyroom.train")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("segmenter", help="train the U-Net segmenter on renders")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/toyroom-train")
    p.add_argument("--weights", help="where to write the float16 weights (default: inside the package)")
    p = sub.add_parser("generator", help="train the PG-GAN-layout generator adversarially on renders")
    p.add_argument("--minutes", type=float, default=95, help="wall-clock budget of this run")
    p.add_argument("--steps", type=int, default=10**9)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-minutes", dest="checkpoint_minutes", type=float, default=10)
    p.add_argument("--out", default="runs/toyroom-train")
    p.add_argument("--weights", help="where to write the float16 weights (default: inside the package)")
    p = sub.add_parser("export", help="write the shipped weights from a generator checkpoint")
    p.add_argument("--checkpoint", default="runs/toyroom-train/generator_checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/toyroom-train")
    p.add_argument("--weights", help="where to write the float16 weights (default: inside the package)")
    p = sub.add_parser("report", help="the model card's numbers: segmenter IoU, class frequencies of generated "
                       "images vs renders, Fréchet distance, a sample grid")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--weights", help="generator weights (default: the shipped ones)")
    p.add_argument("--out", default="runs/toyroom-train")
    args = parser.parse_args(argv)
    if args.what == "report":
        report(args.images, args.weights, Path(args.out))
    elif args.what == "segmenter":
        train_segmenter(args)
    elif args.what == "export":
        export_generator(Path(args.checkpoint), args.seed, Path(args.weights) if args.weights else GENERATOR_WEIGHTS,
                         Path(args.out))
    else:
        train_generator(args)


if __name__ == "__main__":
    main()

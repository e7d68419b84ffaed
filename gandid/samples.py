"""samples.png: the run's first samples (its seed), each with its segmentation below it."""
from __future__ import annotations

from pathlib import Path

from . import outdir
from .plotting import pyplot
from .segmentation import label_planes

SAMPLES_NAME = "samples.png"


def write_samples(out: Path, generator, segmenter, seed: int, device: str, n: int = 16) -> None:
    """``out/samples.png``: samples 0..n-1 of ``seed`` in two rows (n even), each with the first plane of
    its segmentation below it when there is a ``segmenter``; written atomically."""
    import torch

    plt = pyplot()

    with torch.no_grad():
        z = generator.sample_z(n, seed).to(device)
        images = generator.forward(z).clamp(-1, 1).float().cpu()  # (n, 3, H, W) in [-1, 1]
        labels = segmenter.segment(images.to(device)).cpu() if segmenter is not None else None
    rows = 2 if labels is None else 4
    fig, axes = plt.subplots(rows, n // 2, figsize=(n // 2 * 1.3, rows * 1.35), squeeze=False)
    for i in range(n):
        r, c = (i // (n // 2)) * (rows // 2), i % (n // 2)
        axes[r][c].imshow(((images[i] + 1) / 2).permute(1, 2, 0).numpy())
        if labels is not None:
            axes[r + 1][c].imshow(label_planes(labels)[i, 0].numpy(), cmap="tab20", vmin=0, vmax=19,
                                  interpolation="nearest")  # a multi-label segmentation's first plane
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    path = Path(out) / SAMPLES_NAME
    try:
        outdir.write_atomic(path, path.with_suffix(".png.tmp"), lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    finally:
        plt.close(fig)

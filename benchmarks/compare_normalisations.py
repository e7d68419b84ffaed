"""What each kind of normalisation does under ablation, side by side: the DID's share of an ablation's
effect, per generator family, on random-weight models in each plugin's real layout.

    python benchmarks/compare_normalisations.py [--fraction 0.25] [--latents 4]

For each generator (PG-GAN: pixel norm; StyleGAN v1 and pix2pix with instance norm: AdaIN / IN;
StyleGAN2 and StyleGAN2-ADA: weight demodulation; pix2pix with batch norm in eval mode), a quarter of
a middle layer's units (the most active ones over the latents) is ablated in the top-left quarter of
its feature map and the four DID arms are
computed in one pass with every controllable site from the layer on controlled. Printed per model:
the ablation's whole effect ``mean |Y(β',u') - Y(β,u)|``, the renormalisation's part
``mean |ΔY|`` (ΔY = [Y(β',u') - Y(β',u)] - [Y(β,u') - Y(β,u)]) and their ratio. Weight demodulation
depends on the styles only, not on the activations, so its ΔY is exactly 0: measured here, not
assumed. Random weights say how the normalisations behave, not what trained generators learn.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def models(folder: Path):
    """(name, norm kind, generator) for each family, built from files in the plugins' real layouts."""
    import nvlabs_files
    import pggan_files
    import pix2pix_files
    import stylegan2_files
    import stylegan_files

    from gandid_plugins.generators.pggan import PGGANGenerator
    from gandid_plugins.generators.pix2pix import pix2pix
    from gandid_plugins.generators.stylegan import stylegan
    from gandid_plugins.generators.stylegan2 import StyleGAN2Generator
    from gandid_plugins.generators.stylegan2_ada import stylegan2_ada

    yield "pggan", "pixel norm", PGGANGenerator.from_state_dict(pggan_files.make_state_dict(64, z_dim=64, depth=64))
    torch.save(stylegan_files.make_state_dict(channels=(32, 32, 32, 16, 16), style_dim=32), folder / "v1.pt")
    yield "stylegan (v1)", "instance norm (AdaIN)", stylegan(weights=str(folder / "v1.pt"))
    yield "stylegan2", "weight demodulation", StyleGAN2Generator.from_state_dict(
        stylegan2_files.make_g_ema(size=32, style_dim=16, channels=(32, 32, 16, 16)))
    torch.save(nvlabs_files.make_generator(seed=1).state_dict(), folder / "ada.pt")
    yield "stylegan2-ada", "weight demodulation", stylegan2_ada(weights=str(folder / "ada.pt"))
    inputs = folder / "inputs"
    inputs.mkdir(exist_ok=True)
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = (torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(inputs / f"{i}.png")
    for norm, label in (("instance", "instance norm"), ("batch", "batch norm (eval)")):
        torch.save(pix2pix_files.unet_state_dict(depth=6, ngf=8, norm=norm), folder / f"p2p_{norm}.pth")
        yield f"pix2pix U-Net ({norm})", label, pix2pix(weights=str(folder / f"p2p_{norm}.pth"), inputs=str(inputs),
                                                         size=64)


def compare(gen, fraction: float, latents: int) -> dict:
    from gandid.hooks import features_at
    from gandid.intervene import Intervention, counterfactuals

    maps = [info for info in gen.layers if min(info.size) >= 8] or list(gen.layers)  # room for a quarter region
    layer = maps[len(maps) // 2]
    z = gen.sample_z(latents, 0)
    with torch.no_grad():
        activity = features_at(gen, z, layer.name).float().mean((0, 2, 3))
        units = torch.argsort(activity, descending=True)[: max(1, round(fraction * layer.channels))].tolist()
        # in a quarter of the map, as an object's units are ablated where the object is: ablated everywhere,
        # a channel that an instance norm reads directly is emptied and its std falls to sqrt(eps), which
        # then dominates Y(β',u) (docs/normalisation.md)
        h, w = layer.size
        region = torch.zeros(h, w)
        region[: max(1, h // 2), : max(1, w // 2)] = 1
        arms = counterfactuals(gen, z, Intervention(layer.name, units, region=region))
    whole = float((arms.intervened - arms.original).abs().mean())
    renorm = float(arms.did.abs().mean())
    return {"layer": layer.name, "units": len(units), "sites": len(arms.sites), "whole": whole, "renorm": renorm,
            "share": renorm / whole if whole > 0 else float("nan")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.25, help="share of the layer's units ablated")
    parser.add_argument("--latents", type=int, default=4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.latents} latents, the most active "
          f"{100 * args.fraction:.0f}% of a middle layer's units ablated in a quarter of its map\n")
    print("| generator | normalisation | layer | units ablated | controlled sites | mean abs Y(b',u')-Y(b,u) "
          "| mean abs ΔY | ΔY share |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, gen in models(Path(tmp)):
            r = compare(gen, args.fraction, args.latents)
            print(f"| {name} | {kind} | {r['layer']} | {r['units']} | {r['sites']} | {r['whole']:.4f} | "
                  f"{r['renorm']:.4f} | {100 * r['share']:.1f}% |")


if __name__ == "__main__":
    main()

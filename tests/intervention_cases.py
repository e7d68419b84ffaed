"""Random interventions for the tests that compare the engine's arms with independent passes."""
import torch

from gandid.intervene import Intervention


def random_intervention(generator, layer: str, kind: str, seed: int, values=(1.5, -0.5, 2.0)) -> Intervention:
    """Three random units of ``layer``: ablated everywhere (``kind == "ablate"``), or inserted with
    ``values`` at strengths 1, 0.5, 0.8 in a random half of the map."""
    info = next(l for l in generator.layers if l.name == layer)
    g = torch.Generator().manual_seed(seed)
    units = torch.randperm(info.channels, generator=g)[:3].tolist()
    if kind == "ablate":
        return Intervention(layer, units)
    return Intervention(layer, units, region=(torch.rand(*info.size, generator=g) > 0.5).double(),
                        alpha=[1.0, 0.5, 0.8], value=list(values))

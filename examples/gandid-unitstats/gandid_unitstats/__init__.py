"""An out-of-tree gandid plugin: per-unit activation statistics of the run's layers.

It streams samples into mergeable statistics (gandid.stats) with ``ctx.tally``, which restores them
when a run is resumed and saves them every few seconds, and writes a JSON result plus a CSV.
"""
import torch

from gandid import hookimpl
from gandid.model import find_layer
from gandid.stats import Maximum, Moments


class UnitStats:
    """Mean, standard deviation and maximum of every unit's activation, per layer."""

    needs_segmenter = False

    def __init__(self, top: int = 5):
        if top < 1:
            raise ValueError(f"unitstats: top must be >= 1, got {top}")
        self.top = top

    def run(self, ctx):
        # One mergeable statistic per layer and quantity; ctx.tally restores them on --resume and saves them.
        stats = {}
        for layer in ctx.layers:
            units = find_layer(ctx.generator, layer).channels
            stats[f"{layer}/moments"] = Moments((units,))
            stats[f"{layer}/max"] = Maximum((units,))
        stream = ctx.tally(stats, key="activations", segment=False, description="unitstats")
        for batch in stream:
            for layer, feats in batch.features.items():
                x = feats.transpose(1, 3).reshape(-1, feats.shape[1])  # (B*h*w, C): one row per pixel
                stats[f"{layer}/moments"].update(x)
                stats[f"{layer}/max"].update(x.amax(0))

        result = {"samples": stream.done, "layers": {}}
        for layer in ctx.layers:
            moments, maximum = stats[f"{layer}/moments"], stats[f"{layer}/max"].value
            mean, std = moments.mean, moments.var.sqrt()
            order = torch.argsort(mean, descending=True)[: self.top]
            result["layers"][layer] = {"mean": mean.tolist(), "std": std.tolist(), "max": maximum.tolist(),
                                       "most_active_units": order.tolist()}
            with ctx.path(f"unitstats_{layer}.csv").open("w") as f:
                f.write("unit,mean,std,max\n")
                for u in range(len(mean)):
                    f.write(f"{u},{mean[u]:.6g},{std[u]:.6g},{maximum[u]:.6g}\n")
        return result


@hookimpl
def gandid_register_analyses(register):
    register("unitstats", UnitStats, description="per-unit mean/std/max activation (example plugin)")

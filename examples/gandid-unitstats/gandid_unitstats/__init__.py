"""An out-of-tree gandid plugin: per-unit activation statistics of the run's layers.

It streams samples, keeps only running sums (fixed size, mergeable), saves them after every
batch so an interrupted run resumes where it stopped, and writes a JSON result plus a CSV.
"""
import torch

from gandid import hookimpl


class UnitStats:
    """Mean, standard deviation and maximum of every unit's activation, per layer."""

    needs_segmenter = False

    def __init__(self, top: int = 5):
        if top < 1:
            raise ValueError(f"unitstats: top must be >= 1, got {top}")
        self.top = top

    def run(self, ctx):
        state = ctx.load_state() or {"done": 0, "sums": {}}
        for batch in ctx.batches(segment=False, start=state["done"], description="unitstats"):
            for layer, feats in batch.features.items():
                x = feats.double().transpose(0, 1).reshape(feats.shape[1], -1)  # (C, B*h*w)
                s = state["sums"].setdefault(layer, {"n": 0, "sum": torch.zeros(len(x), dtype=torch.float64),
                                                     "sumsq": torch.zeros(len(x), dtype=torch.float64),
                                                     "max": torch.full((len(x),), -torch.inf, dtype=torch.float64)})
                s["n"] += x.shape[1]
                s["sum"] += x.sum(1)
                s["sumsq"] += (x * x).sum(1)
                s["max"] = torch.maximum(s["max"], x.max(1).values)
            state["done"] = batch.start + len(batch.z)
            ctx.save_state(state)

        result = {"samples": state["done"], "layers": {}}
        for layer, s in state["sums"].items():
            mean = s["sum"] / s["n"]
            std = (s["sumsq"] / s["n"] - mean**2).clamp_min(0).sqrt()
            order = torch.argsort(mean, descending=True)[: self.top]
            result["layers"][layer] = {"mean": mean.tolist(), "std": std.tolist(), "max": s["max"].tolist(),
                                       "most_active_units": order.tolist()}
            with ctx.path(f"unitstats_{layer}.csv").open("w") as f:
                f.write("unit,mean,std,max\n")
                for u in range(len(mean)):
                    f.write(f"{u},{mean[u]:.6g},{std[u]:.6g},{s['max'][u]:.6g}\n")
        return result


@hookimpl
def gandid_register_analyses(register):
    register("unitstats", UnitStats, description="per-unit mean/std/max activation (example plugin)")

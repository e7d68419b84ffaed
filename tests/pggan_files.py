"""Small random-weight PG-GAN checkpoints in GAN Dissection's exact layouts."""
import math

import torch


def small_sizes(resolution, z_dim=16, depth=16):
    """[z_dim, depth at 4x4, 8x8, ...]: halving the depth from 32x32 on, as the real 256 px model does."""
    levels = int(math.log2(resolution // 4)) + 1
    sizes = [z_dim]
    for i in range(levels):
        sizes.append(max(4, depth // (2 ** max(0, i - 2))))
    return sizes


def make_state_dict(resolution, seed=0, z_dim=16, depth=16, old_names=False, with_scale=False):
    """Keys layer1..layerK + output_RxR (or features.N / output with stored wscale.scale)."""
    g = torch.Generator().manual_seed(seed)
    sizes = small_sizes(resolution, z_dim, depth)
    blocks = [("layer1", sizes[0], sizes[1], 4), ("layer2", sizes[1], sizes[1], 3)]
    n = 2
    for cin, cout in zip(sizes[1:-1], sizes[2:]):
        blocks += [(f"layer{n + 1}", cin, cout, 3), (f"layer{n + 2}", cout, cout, 3)]
        n += 2
    state = {}
    for i, (name, cin, cout, k) in enumerate(blocks):
        key = f"features.{i}" if old_names else name
        state[f"{key}.conv.weight"] = torch.randn(cout, cin, k, k, generator=g)
        state[f"{key}.wscale.b"] = torch.randn(cout, generator=g) * 0.1
        if with_scale:
            state[f"{key}.wscale.scale"] = torch.tensor([math.sqrt(2) / k / math.sqrt(cin)])
    out = "output" if old_names else f"output_{resolution}x{resolution}"
    state[f"{out}.conv.weight"] = torch.randn(3, sizes[-1], 1, 1, generator=g)
    state[f"{out}.wscale.b"] = torch.randn(3, generator=g) * 0.1
    if with_scale:
        state[f"{out}.wscale.scale"] = torch.tensor([1 / math.sqrt(sizes[-1])])
    return state


def manual_forward(state, z):
    """PG-GAN forward written from the layout description, independent of the plugin's modules."""
    def pn(x):
        return x / torch.sqrt((x * x).mean(1, keepdim=True) + 1e-8)

    x = z.view(len(z), -1, 1, 1)
    n = 1
    while f"layer{n}.conv.weight" in state:
        w = state[f"layer{n}.conv.weight"]
        x = pn(x)
        if n >= 3 and n % 2 == 1:
            x = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        k = w.shape[-1]
        x = torch.nn.functional.conv2d(x, w, padding=3 if n == 1 else 1)
        x = x * (math.sqrt(2) / k / math.sqrt(w.shape[1])) + state[f"layer{n}.wscale.b"].view(1, -1, 1, 1)
        x = torch.nn.functional.leaky_relu(x, 0.2)
        n += 1
    out = [k for k in state if k.startswith("output_") and k.endswith("conv.weight")][0][: -len(".conv.weight")]
    w = state[f"{out}.conv.weight"]
    x = torch.nn.functional.conv2d(pn(x), w) / math.sqrt(w.shape[1]) + state[f"{out}.wscale.b"].view(1, -1, 1, 1)
    return x.clamp(-1, 1)

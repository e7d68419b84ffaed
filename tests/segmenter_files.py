"""Random-weight CSAIL scene-parsing checkpoints in the published layouts (key names and the published
shapes divided by a width divisor), and straightforward float64 re-implementations of their forward
passes, written from the upstream code (netdissect/upsegmodel, mit_semseg/models) independently of
gandid_plugins.segmenters.segnets: unfused batch norms, PrRoIPool by numerical integration, the dilation rewrite
applied literally, the UPerNet PPM in its upstream order, connected components by flood fill."""
import json
import math
from collections import deque

import torch
from torch.nn import functional as F

EPS = 1e-5


# ---------------------------------------------------------------------------------------------------
# Random state dicts: each builder mirrors an upstream constructor, module by module


class Builder:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)
        self.state = {}

    def conv(self, key, cout, cin, k, bias=False, gain=1.0):
        std = gain * math.sqrt(2.0 / (cin * k * k))
        self.state[f"{key}.weight"] = torch.randn(cout, cin, k, k, generator=self.g) * std
        if bias:
            self.state[f"{key}.bias"] = torch.randn(cout, generator=self.g) * 0.1

    def bn(self, key, c, scale=(0.5, 1.5), counter=True):
        lo, hi = scale
        self.state[f"{key}.weight"] = lo + (hi - lo) * torch.rand(c, generator=self.g)
        self.state[f"{key}.bias"] = torch.randn(c, generator=self.g) * 0.1
        self.state[f"{key}.running_mean"] = torch.randn(c, generator=self.g) * 0.1
        self.state[f"{key}.running_var"] = 0.5 + torch.rand(c, generator=self.g)
        if counter:  # files from PyTorch >= 0.4.1 carry it
            self.state[f"{key}.num_batches_tracked"] = torch.tensor(1000)


def resnet_state(depth, div, seed=0, input_scale=1.0):
    """resnet.py ResNet (deep stem) as wrapped by models.py Resnet (no avgpool/fc). ``input_scale``: the
    typical magnitude of the network's input (UPP's are 0-255 minus a mean), divided out of conv1 so that
    random-weight activations stay of order 1 and softmaxes are not saturated."""
    block, counts = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet50": ("bottleneck", [3, 4, 6, 3]),
                     "resnet101": ("bottleneck", [3, 4, 23, 3])}[depth]
    b = Builder(seed)
    b.conv("conv1", 64 // div, 3, 3, gain=1 / input_scale); b.bn("bn1", 64 // div)
    b.conv("conv2", 64 // div, 64 // div, 3); b.bn("bn2", 64 // div)
    b.conv("conv3", 128 // div, 64 // div, 3); b.bn("bn3", 128 // div)
    inplanes = 128 // div
    expansion = 4 if block == "bottleneck" else 1
    for li, planes in enumerate([64, 128, 256, 512]):
        planes //= div
        stride = 1 if li == 0 else 2
        for i in range(counts[li]):
            p = f"layer{li + 1}.{i}"
            if block == "bottleneck":
                b.conv(f"{p}.conv1", planes, inplanes, 1); b.bn(f"{p}.bn1", planes)
                b.conv(f"{p}.conv2", planes, planes, 3); b.bn(f"{p}.bn2", planes)
                b.conv(f"{p}.conv3", planes * 4, planes, 1); b.bn(f"{p}.bn3", planes * 4, scale=(0.2, 0.4))
            else:
                b.conv(f"{p}.conv1", planes, inplanes, 3); b.bn(f"{p}.bn1", planes)
                b.conv(f"{p}.conv2", planes, planes, 3); b.bn(f"{p}.bn2", planes, scale=(0.2, 0.4))
            if i == 0 and (stride != 1 or inplanes != planes * expansion):  # _make_layer's condition
                b.conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                b.bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return b.state


def hrnet_state(div, seed=0):
    """hrnet.py HRNetV2 (W48): stem, layer1, transitions, stages with fuse layers."""
    b = Builder(seed)
    b.conv("conv1", 64 // div, 3, 3); b.bn("bn1", 64 // div)
    b.conv("conv2", 64 // div, 64 // div, 3); b.bn("bn2", 64 // div)
    inplanes, planes = 64 // div, 64 // div
    for i in range(4):
        p = f"layer1.{i}"
        b.conv(f"{p}.conv1", planes, inplanes, 1); b.bn(f"{p}.bn1", planes)
        b.conv(f"{p}.conv2", planes, planes, 3); b.bn(f"{p}.bn2", planes)
        b.conv(f"{p}.conv3", planes * 4, planes, 1); b.bn(f"{p}.bn3", planes * 4, scale=(0.2, 0.4))
        if i == 0:
            b.conv(f"{p}.downsample.0", planes * 4, inplanes, 1); b.bn(f"{p}.downsample.1", planes * 4)
        inplanes = planes * 4
    pre = [inplanes]
    stages = [(2, 1, [48, 96]), (3, 4, [48, 96, 192]), (4, 3, [48, 96, 192, 384])]
    for s, modules, channels in stages:
        cur = [c // div for c in channels]
        for i in range(len(cur)):  # _make_transition_layer
            t = f"transition{s - 1}.{i}"
            if i < len(pre):
                if cur[i] != pre[i]:
                    b.conv(f"{t}.0", cur[i], pre[i], 3); b.bn(f"{t}.1", cur[i])
            else:
                for j in range(i + 1 - len(pre)):
                    out = cur[i] if j == i - len(pre) else pre[-1]
                    b.conv(f"{t}.{j}.0", out, pre[-1], 3); b.bn(f"{t}.{j}.1", out)
        for m in range(modules):
            p = f"stage{s}.{m}"
            for br, c in enumerate(cur):
                for k in range(4):
                    q = f"{p}.branches.{br}.{k}"
                    b.conv(f"{q}.conv1", c, c, 3); b.bn(f"{q}.bn1", c)
                    b.conv(f"{q}.conv2", c, c, 3); b.bn(f"{q}.bn2", c, scale=(0.2, 0.4))
            for i in range(len(cur)):
                for j in range(len(cur)):
                    f = f"{p}.fuse_layers.{i}.{j}"
                    if j > i:
                        b.conv(f"{f}.0", cur[i], cur[j], 1); b.bn(f"{f}.1", cur[i], scale=(0.2, 0.4))
                    elif j < i:
                        for k in range(i - j):
                            out = cur[i] if k == i - j - 1 else cur[j]
                            b.conv(f"{f}.{k}.0", out, cur[j], 3)
                            b.bn(f"{f}.{k}.1", out, scale=(0.2, 0.4) if k == i - j - 1 else (0.5, 1.5))
        pre = cur
    return b.state


def _cbr(b, key, cout, cin, k=3):
    b.conv(f"{key}.0", cout, cin, k); b.bn(f"{key}.1", cout)


def upernet_parts(b, fc_dim, fpn_dim, div, fusion_key):
    ppm = 512 // div
    for i in range(4):
        b.conv(f"ppm_conv.{i}.0", ppm, fc_dim, 1); b.bn(f"ppm_conv.{i}.1", ppm)
    _cbr(b, "ppm_last_conv", fpn_dim, fc_dim + 4 * ppm)
    for i, inplane in enumerate([256 // div, 512 // div, 1024 // div]):
        b.conv(f"fpn_in.{i}.0", fpn_dim, inplane, 1); b.bn(f"fpn_in.{i}.1", fpn_dim)
    for i in range(3):
        b.conv(f"fpn_out.{i}.0.0", fpn_dim, fpn_dim, 3); b.bn(f"fpn_out.{i}.0.1", fpn_dim)
    _cbr(b, fusion_key, fpn_dim, 4 * fpn_dim)


def upp_decoder_state(vocab, div, seed=1):
    """upsegmodel/models.py UPerNet with nr_classes from labels.json (load_unified_parsing_segmentation_model)."""
    b = Builder(seed)
    fc_dim, fpn_dim = 2048 // div, 512 // div
    upernet_parts(b, fc_dim, fpn_dim, div, "conv_fusion")
    nr = {"scene": len(vocab["scene"]), "object": len(vocab["object"]), "material": len(vocab["material"]),
          "part": sum(len(p) for p in vocab["object_part"].values())}
    _cbr(b, "scene_head.0", fpn_dim, fpn_dim)
    b.conv("scene_head.2", nr["scene"], fpn_dim, 1, bias=True)
    for head in ("object", "part", "material"):
        _cbr(b, f"{head}_head.0", fpn_dim, fpn_dim)
        b.conv(f"{head}_head.1", nr[head], fpn_dim, 1, bias=True, gain=1.0)
    return b.state


def semseg_decoder_state(decoder, fc_dim, classes, div, seed=1):
    """mit_semseg/models/models.py decoders."""
    b = Builder(seed)
    if decoder in ("ppm", "ppm_deepsup"):
        for i in range(4):
            b.conv(f"ppm.{i}.1", 512 // div, fc_dim, 1); b.bn(f"ppm.{i}.2", 512 // div)
        b.conv("conv_last.0", 512 // div, fc_dim + 4 * (512 // div), 3); b.bn("conv_last.1", 512 // div)
        b.conv("conv_last.4", classes, 512 // div, 1, bias=True, gain=1.0)
    elif decoder in ("c1", "c1_deepsup"):
        _cbr(b, "cbr", fc_dim // 4, fc_dim)
        b.conv("conv_last", classes, fc_dim // 4, 1, bias=True, gain=1.0)
    else:
        fpn_dim = (256 if decoder == "upernet_lite" else 512) // div
        upernet_parts(b, fc_dim, fpn_dim, div, "conv_last.0")
        b.conv("conv_last.1", classes, fpn_dim, 1, bias=True, gain=1.0)
    if decoder.endswith("deepsup"):
        _cbr(b, "cbr_deepsup", fc_dim // 4, fc_dim // 2)
        b.conv("conv_last_deepsup", classes, fc_dim // 4, 1, bias=True)
    return b.state


# A small UPP vocabulary shaped like the published labels.json: '-' first in object and material,
# sky/building/person the lowest-numbered objects with parts, part lists starting with '-', parts that
# are objects (door, window), names shared by an object and a material (glass) and by a material and a
# part (hair), an owner (car) whose parts gandissect never reads, object_part keys not in number order.
UPP_VOCAB = {
    "object": ["-", "wall", "sky", "floor", "tree", "building", "person", "door", "window", "glass", "car", "road"],
    "material": ["-", "brick", "glass", "hair", "wood"],
    "scene": ["-", "bedroom", "church", "street"],
    "part": ["-", "cloud", "roof", "head", "hair", "wheel", "window", "door", "leg"],
    "object_part": {"person": ["-", "head", "hair", "leg"], "car": ["-", "wheel", "window", "door"],
                    "sky": ["-", "cloud"], "building": ["-", "window", "door", "roof"]},
}


def write_upp_folder(folder, div=16, vocab=UPP_VOCAB, depth="resnet50", seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    enc = resnet_state(depth, div, seed, input_scale=100.0)
    dec = upp_decoder_state(vocab, div, seed + 1)
    for owner in ("sky", "building", "person"):  # make the owners of parts common, so parts get tested
        dec["object_head.1.bias"][vocab["object"].index(owner)] += 1.5
    torch.save(enc, folder / "encoder_epoch_40.pth")
    torch.save(dec, folder / "decoder_epoch_40.pth")
    (folder / "labels.json").write_text(json.dumps(vocab))
    return enc, dec


def write_semseg_folder(folder, encoder, decoder, div=16, classes=150, epoch=20, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    depth = encoder.replace("dilated", "")
    if depth == "hrnetv2":
        enc, fc_dim = hrnet_state(div, seed), 720 // div
    else:
        enc, fc_dim = resnet_state(depth, div, seed), (512 if depth == "resnet18" else 2048) // div
    dec = semseg_decoder_state(decoder, fc_dim, classes, div, seed + 1)
    torch.save(enc, folder / f"encoder_epoch_{epoch}.pth")
    torch.save(dec, folder / f"decoder_epoch_{epoch}.pth")
    return enc, dec


def images(n, size, seed=0):
    """Smooth random images in [-1, 1] (blobs, so that segments are regions, not noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


# ---------------------------------------------------------------------------------------------------
# Reference forward passes (float64, no fusion)


def _f64(state):
    return {k: v.double() for k, v in state.items() if v.is_floating_point()}


def conv(s, key, x, stride=1, padding=0, dilation=1):
    return F.conv2d(x, s[f"{key}.weight"], s.get(f"{key}.bias"), stride, padding, dilation)


def bn(s, key, x):
    shape = (1, -1, 1, 1)
    return ((x - s[f"{key}.running_mean"].view(shape)) / torch.sqrt(s[f"{key}.running_var"].view(shape) + EPS)
            * s[f"{key}.weight"].view(shape) + s[f"{key}.bias"].view(shape))


def cbr(s, key, x, padding=1):
    return F.relu(bn(s, f"{key}.1", conv(s, f"{key}.0", x, padding=padding)))


def resnet_convs(s, depth, dilate_scale):
    """{conv key: [stride, padding, dilation]} as ResNet builds them, then ResnetDilated's
    _nostride_dilate applied to every conv of layer3/layer4 literally."""
    counts = {"resnet18": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3]}[depth]
    bottleneck = depth != "resnet18"
    cfg = {"conv1": [2, 1, 1], "conv2": [1, 1, 1], "conv3": [1, 1, 1]}
    for li in range(4):
        for i in range(counts[li]):
            p = f"layer{li + 1}.{i}"
            stride = 2 if (li > 0 and i == 0) else 1
            if bottleneck:
                cfg[f"{p}.conv1"], cfg[f"{p}.conv2"], cfg[f"{p}.conv3"] = [1, 0, 1], [stride, 1, 1], [1, 0, 1]
            else:
                cfg[f"{p}.conv1"], cfg[f"{p}.conv2"] = [stride, 1, 1], [1, 1, 1]
            if f"{p}.downsample.0.weight" in s:
                cfg[f"{p}.downsample.0"] = [stride, 0, 1]
    plan = {8: {"layer3": 2, "layer4": 4}, 16: {"layer4": 2}}.get(dilate_scale, {})
    for key, c in cfg.items():
        d = plan.get(key.split(".")[0])
        if d is None:
            continue
        k = s[f"{key}.weight"].shape[-1]
        if c[0] == 2:
            c[0] = 1
            if k == 3:
                c[1] = c[2] = d // 2
        elif k == 3:
            c[1] = c[2] = d
    return cfg, counts, bottleneck


def ref_resnet(state, depth, dilate_scale, x):
    s = _f64(state)
    cfg, counts, bottleneck = resnet_convs(s, depth, dilate_scale)

    def cb(key, bn_key, x):
        st, pad, dil = cfg[key]
        return bn(s, bn_key, conv(s, key, x, st, pad, dil))

    x = F.relu(cb("conv1", "bn1", x))
    x = F.relu(cb("conv2", "bn2", x))
    x = F.relu(cb("conv3", "bn3", x))
    x = F.max_pool2d(x, 3, 2, 1)
    out = []
    for li in range(4):
        for i in range(counts[li]):
            p = f"layer{li + 1}.{i}"
            y = F.relu(cb(f"{p}.conv1", f"{p}.bn1", x))
            if bottleneck:
                y = F.relu(cb(f"{p}.conv2", f"{p}.bn2", y))
                y = cb(f"{p}.conv3", f"{p}.bn3", y)
            else:
                y = cb(f"{p}.conv2", f"{p}.bn2", y)
            res = cb(f"{p}.downsample.0", f"{p}.downsample.1", x) if f"{p}.downsample.0" in cfg else x
            x = F.relu(y + res)
        out.append(x)
    return out


def ref_hrnet(state, x):
    s = _f64(state)

    def basic(p, x):
        y = F.relu(bn(s, f"{p}.bn1", conv(s, f"{p}.conv1", x, padding=1)))
        return F.relu(bn(s, f"{p}.bn2", conv(s, f"{p}.conv2", y, padding=1)) + x)

    x = F.relu(bn(s, "bn1", conv(s, "conv1", x, 2, 1)))
    x = F.relu(bn(s, "bn2", conv(s, "conv2", x, 2, 1)))
    for i in range(4):
        p = f"layer1.{i}"
        y = F.relu(bn(s, f"{p}.bn1", conv(s, f"{p}.conv1", x)))
        y = F.relu(bn(s, f"{p}.bn2", conv(s, f"{p}.conv2", y, padding=1)))
        y = bn(s, f"{p}.bn3", conv(s, f"{p}.conv3", y))
        res = bn(s, f"{p}.downsample.1", conv(s, f"{p}.downsample.0", x)) if i == 0 else x
        x = F.relu(y + res)
    ys = [x]
    for st, modules, nb in [(2, 1, 2), (3, 4, 3), (4, 3, 4)]:
        xs = []
        for i in range(nb):
            t = f"transition{st - 1}.{i}"
            if f"{t}.0.weight" in s:  # HRNetV2.forward feeds every existing transition y_list[-1] (x for stage 2)
                xs.append(F.relu(bn(s, f"{t}.1", conv(s, f"{t}.0", ys[-1], padding=1))))
            elif f"{t}.0.0.weight" in s:  # new branch from the last output
                z = ys[-1]
                j = 0
                while f"{t}.{j}.0.weight" in s:
                    z = F.relu(bn(s, f"{t}.{j}.1", conv(s, f"{t}.{j}.0", z, 2, 1)))
                    j += 1
                xs.append(z)
            else:
                xs.append(ys[i])
        for m in range(modules):
            p = f"stage{st}.{m}"
            for br in range(nb):
                for k in range(4):
                    xs[br] = basic(f"{p}.branches.{br}.{k}", xs[br])
            fused = []
            for i in range(nb):
                y = None
                for j in range(nb):
                    f = f"{p}.fuse_layers.{i}.{j}"
                    if j == i:
                        z = xs[j]
                    elif j > i:
                        z = F.interpolate(bn(s, f"{f}.1", conv(s, f"{f}.0", xs[j])), size=xs[i].shape[-2:],
                                          mode="bilinear", align_corners=False)
                    else:
                        z = xs[j]
                        for k in range(i - j):
                            z = bn(s, f"{f}.{k}.1", conv(s, f"{f}.{k}.0", z, 2, 1))
                            if k < i - j - 1:
                                z = F.relu(z)
                    y = z if y is None else y + z
                fused.append(F.relu(y))
            xs = fused
        ys = xs
    size = ys[0].shape[-2:]
    return torch.cat([ys[0]] + [F.interpolate(y, size=size, mode="bilinear", align_corners=False) for y in ys[1:]], 1)


def bilinear_at(fmap, ys, xs):
    """The feature map (C, H, W) bilinearly interpolated at points (ys, xs) with pixel centres at
    integers and zero outside, by the four-neighbour formula."""
    c, h, w = fmap.shape
    y0, x0 = torch.floor(ys), torch.floor(xs)
    total = torch.zeros(c, len(ys), dtype=fmap.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            yi, xi = (y0 + dy).long(), (x0 + dx).long()
            weight = (1 - (ys - (y0 + dy)).abs()) * (1 - (xs - (x0 + dx)).abs())
            inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            value = torch.zeros(c, len(ys), dtype=fmap.dtype)
            value[:, inside] = fmap[:, yi[inside], xi[inside]]
            total += value * weight
    return total


def ref_prroi(x, bins, sub=4):
    """PrRoIPool over the RoI [0, W] x [0, H] by numerical integration: the midpoint rule on a grid of
    step 1 / (bins * sub), on which every pixel boundary and every bin edge is a grid line, so each
    grid cell lies in one piece where the surface is bilinear and the rule is exact."""
    n, c, h, w = x.shape
    out = torch.zeros(n, c, bins, bins, dtype=x.dtype)
    for i in range(bins):
        for j in range(bins):
            y_lo, y_hi = i * h / bins, (i + 1) * h / bins
            x_lo, x_hi = j * w / bins, (j + 1) * w / bins
            ny, nx = h * sub, w * sub  # bin height h/bins in steps of 1/(bins*sub)
            ys = y_lo + (torch.arange(ny, dtype=x.dtype) + 0.5) * (y_hi - y_lo) / ny
            xs = x_lo + (torch.arange(nx, dtype=x.dtype) + 0.5) * (x_hi - x_lo) / nx
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            for b in range(n):
                out[b, :, i, j] = bilinear_at(x[b], gy.reshape(-1), gx.reshape(-1)).mean(1)
    return out


def ref_upernet(s, conv_out, pool, fusion_key):
    """UPerNet.forward up to the fusion, in upstream order: pool, upsample, then conv-BN-ReLU."""
    conv5 = conv_out[-1]
    size = conv5.shape[-2:]
    ppm = [conv5]
    for i, scale in enumerate([1, 2, 3, 6]):
        pooled = F.interpolate(pool(conv5, scale), size, mode="bilinear", align_corners=False)
        ppm.append(F.relu(bn(s, f"ppm_conv.{i}.1", conv(s, f"ppm_conv.{i}.0", pooled))))
    f = cbr(s, "ppm_last_conv", torch.cat(ppm, 1))
    fpn = [f]
    for i in reversed(range(3)):
        lateral = F.relu(bn(s, f"fpn_in.{i}.1", conv(s, f"fpn_in.{i}.0", conv_out[i])))
        f = lateral + F.interpolate(f, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        fpn.append(cbr(s, f"fpn_out.{i}.0", f))
    fpn.reverse()
    fusion = torch.cat([fpn[0]] + [F.interpolate(p, fpn[0].shape[-2:], mode="bilinear", align_corners=False)
                                   for p in fpn[1:]], 1)
    return fpn[0], cbr(s, fusion_key, fusion)


def ref_upp_raw(enc, dec, vocab, images, sizes, downsample):
    """UnifiedParsingSegmenter.raw_seg_prediction: summed softmaxes {object, material}, parts per
    owner (a dict by owner name)."""
    s = _f64(dec)
    x = (images.double() + 1) / 2 * 255
    x = torch.flip(x, (1,)) - torch.tensor([102.9801, 115.9465, 122.7717], dtype=torch.float64)[None, :, None, None]
    seg = (images.shape[2] // downsample, images.shape[3] // downsample)
    number = {o: i for i, o in enumerate(vocab["object"])}
    owners = sorted(vocab["object_part"], key=lambda o: number[o])
    pred = {"object": 0, "material": 0}
    parts = {o: 0 for o in owners}
    for size in sizes:
        r = x if x.shape[2:] == (size, size) else torch.nn.AdaptiveAvgPool2d((size, size))(x)
        conv_out = ref_resnet(enc, "resnet50", None, r)
        p2, fusion = ref_upernet(s, conv_out, ref_prroi, "conv_fusion")

        def head(name, feat):
            return conv(s, f"{name}_head.1", cbr(s, f"{name}_head.0", feat))

        out = {"object": head("object", fusion), "material": head("material", p2)}
        for k, v in out.items():
            pred[k] = pred[k] + F.interpolate(v, size=seg, mode="bilinear", align_corners=False).softmax(1)
        part = F.interpolate(head("part", fusion), size=seg, mode="bilinear", align_corners=False)
        start = 0
        for o in owners:
            n = len(vocab["object_part"][o])
            parts[o] = parts[o] + part[:, start:start + n].softmax(1)
            start += n
    return pred, parts


def upp_vocabulary(vocab, quad, part_objects=("sky", "building", "person")):
    """get_label_and_category_names: [(label, category)] and the part translation per owner."""
    mult = 5 if quad else 1
    objects, materials = vocab["object"], vocab["material"]
    number = {o: i for i, o in enumerate(objects)}
    first = (len(objects) - 1) * mult + 1 + (len(materials) - 1)
    part_names, part_number, translation = [], {}, {}
    for owner in part_objects:
        t = []
        for part in vocab["object_part"][owner]:
            if part in number:
                t.append(number[part])
            else:
                if part not in part_number:
                    part_number[part] = len(part_names) + first
                    part_names.append(part)
                t.append(part_number[part])
        translation[owner] = t
    labels = [(o, "object") for o in objects]
    for suffix in (["t", "l", "b", "r"] if quad else []):
        labels += [(f"{o}-{suffix}", "part") for o in objects[1:]]
    labels += [(m, "material") for m in materials[1:]] + [(p, "part") for p in part_names]
    return labels, translation


def components(plane):
    """8-connected components of equal nonzero values (skimage.morphology.label), by flood fill:
    a list of (value, [(row, col), ...])."""
    h, w = plane.shape
    seen = torch.zeros(h, w, dtype=torch.bool)
    found = []
    for r in range(h):
        for c in range(w):
            v = int(plane[r, c])
            if v == 0 or seen[r, c]:
                continue
            queue, pixels = deque([(r, c)]), []
            seen[r, c] = True
            while queue:
                y, x = queue.popleft()
                pixels.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and not seen[yy, xx] and int(plane[yy, xx]) == v:
                            seen[yy, xx] = True
                            queue.append((yy, xx))
            found.append((v, pixels))
    return found


def ref_upp_segment(enc, dec, vocab, images, sizes=(256,), downsample=1, quad=True,
                    part_objects=("sky", "building", "person")):
    """UnifiedParsingSegmenter.segment_batch (with every component quad-divided)."""
    pred, parts = ref_upp_raw(enc, dec, vocab, images, sizes, downsample)
    labels, translation = upp_vocabulary(vocab, quad, part_objects)
    n_obj = len(vocab["object"]) - 1
    mult = 5 if quad else 1
    number = {o: i for i, o in enumerate(vocab["object"])}
    obj = pred["object"].argmax(1)
    mat = pred["material"].argmax(1)
    mat = torch.where(mat == 0, 0, mat + n_obj * mult)
    part = torch.zeros_like(obj)
    for owner in part_objects:
        local = parts[owner].argmax(1)
        trans = torch.tensor(translation[owner])[local]
        mask = obj == number[owner]
        part[mask] = trans[mask]
    planes = [obj, mat, part]
    if quad:
        tb, lr = torch.zeros_like(obj), torch.zeros_like(obj)
        for i in range(len(obj)):
            for v, pixels in components(obj[i]):
                rows = [p[0] for p in pixels]
                cols = [p[1] for p in pixels]
                vmid = (min(rows) + max(rows) + 1) // 2
                hmid = (min(cols) + max(cols) + 1) // 2
                for y, x in pixels:
                    tb[i, y, x] = v + (n_obj if y < vmid else 3 * n_obj)
                    lr[i, y, x] = v + (2 * n_obj if x < hmid else 4 * n_obj)
        planes += [tb, lr]
    return torch.stack(planes, 1), pred, parts, labels


def ref_semseg(enc, dec, encoder, decoder, images, sizes=(256,), downsample=1):
    """SemanticSegmenter.raw_seg_prediction + argmax for an ADE20K model: RGB, ImageNet normalisation,
    averaged softmaxes (N, classes, h, w) and labels argmax + 1."""
    s = _f64(dec)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)[None, :, None, None]
    x = ((images.double() + 1) / 2 - mean) / std
    seg = (images.shape[2] // downsample, images.shape[3] // downsample)
    depth = encoder.replace("dilated", "")
    total = 0
    for size in sizes:
        r = x if x.shape[2:] == (size, size) else torch.nn.AdaptiveAvgPool2d((size, size))(x)
        if depth == "hrnetv2":
            conv_out = [ref_hrnet(enc, r)]
        else:
            conv_out = ref_resnet(enc, depth, 8 if encoder.endswith("dilated") else None, r)
        c5 = conv_out[-1]
        if decoder.startswith("ppm"):
            ppm = [c5]
            for i, scale in enumerate([1, 2, 3, 6]):
                y = F.relu(bn(s, f"ppm.{i}.2", conv(s, f"ppm.{i}.1", F.adaptive_avg_pool2d(c5, scale))))
                ppm.append(F.interpolate(y, c5.shape[-2:], mode="bilinear", align_corners=False))
            h = F.relu(bn(s, "conv_last.1", conv(s, "conv_last.0", torch.cat(ppm, 1), padding=1)))
            logits = conv(s, "conv_last.4", h)
        elif decoder.startswith("c1"):
            logits = conv(s, "conv_last", cbr(s, "cbr", c5))
        else:
            _, fusion = ref_upernet(s, conv_out, F.adaptive_avg_pool2d, "conv_last.0")
            logits = conv(s, "conv_last.1", fusion)
        total = total + F.interpolate(logits, size=seg, mode="bilinear", align_corners=False).softmax(1)
    probs = total / len(sizes)
    return probs.argmax(1) + 1, probs

"""Random-weight NVlabs StyleGAN2-ADA files in the exact real layout, and an independent float64 forward.

Pickles are written the way NVlabs writes ``network-snapshot-*.pkl`` (facts from
NVlabs/stylegan2-ada-pytorch: ``torch_utils/persistence.py``, ``training/networks.py``,
``training/training_loop.py``): ``pickle.dump`` of ``{"training_set_kwargs", "G", "D", "G_ema",
"augment_pipe"}`` whose networks are ``torch.nn.Module`` s with NVlabs's constructors (attributes,
registration order, numpy-float gains), made persistent by a decorator that records the init arguments
and pickles each object as ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with the
module source embedded. Stand-in modules ``torch_utils.persistence`` and ``dnnlib.util`` live in
``sys.modules`` only while a file is written, so the byte stream names the real globals.

The embedded source (:data:`FAKE_SOURCE`) writes a marker file if anyone ever executes it.
"""
from __future__ import annotations

import contextlib
import copy
import math
import pickle
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

FAKE_SOURCE = '''"""Stands in for training/networks.py inside a test pickle."""
# Executing this module (as NVlabs's persistence.py does on load) leaves a marker file behind.
with open({marker!r}, "w") as _f:
    _f.write("the embedded source was executed")


class Generator:
    pass
'''


# -- the globals NVlabs's pickles name ----------------------------------------------------------
def _reconstruct_persistent_obj(meta):  # pickled by reference only; nothing may ever call it
    raise AssertionError("torch_utils.persistence._reconstruct_persistent_obj was called")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):
    """dnnlib.util.EasyDict (dnnlib/util.py): a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)

    def __setattr__(self, name, value):
        self[name] = value


EasyDict.__module__ = "dnnlib.util"

_FAKE_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")


@contextlib.contextmanager
def nvlabs_globals(extra: dict | None = None):
    """``torch_utils.persistence`` and ``dnnlib.util`` (plus ``extra`` {module: {name: obj}}) in sys.modules
    while a pickle is written, so that pickle records them by their real names; removed afterwards."""
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util, dnnlib.EasyDict = util, EasyDict
    modules = {"torch_utils": torch_utils, "torch_utils.persistence": persistence, "dnnlib": dnnlib,
               "dnnlib.util": util}
    for name, members in (extra or {}).items():
        module = types.ModuleType(name)
        for key, value in members.items():
            setattr(module, key, value)
        modules[name] = module
    assert not set(modules) & set(sys.modules), "a real module of that name is loaded"
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in modules:
            sys.modules.pop(name, None)


_SOURCE = {"text": FAKE_SOURCE.format(marker="/nonexistent/marker")}


def persistent(cls):
    """What @persistence.persistent_class does to a class, for pickling: record deep copies of the init
    arguments, and reduce to ``_reconstruct_persistent_obj(meta)`` with meta = {type, version, module_src,
    class_name, state} where state is what ``object.__reduce__`` gives (the instance's __dict__)."""

    class Decorated(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            meta = dict(type="class", version=6, module_src=_SOURCE["text"], class_name=cls.__name__, state=fields[2])
            return (_reconstruct_persistent_obj, (meta,), None) + tuple(fields[3:])

    Decorated.__name__ = Decorated.__qualname__ = cls.__name__
    return Decorated


def setup_filter(taps):
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f) if f.ndim == 1 and f.numel() < 8 else f
    return f / f.sum()


# -- networks.py's constructors (state only; these skeletons have no forward) --------------------
@persistent
class FullyConnectedLayer(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1, bias_init=0):
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], np.float32(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier


@persistent
class Conv2dLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", up=1, down=1,
                 resample_filter=[1, 3, 3, 1], conv_clamp=None, channels_last=False, trainable=True):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size ** 2))
        self.act_gain = np.sqrt(2) if activation == "lrelu" else 1
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels])) if bias else None


@persistent
class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                                          lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))


@persistent
class SynthesisLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation="lrelu", resample_filter=[1, 3, 3, 1], conv_clamp=None, channels_last=False):
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = np.sqrt(2)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))


@persistent
class ToRGBLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size ** 2))


@persistent
class SynthesisBlock(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture="skip",
                 resample_filter=[1, 3, 3, 1], conv_clamp=None, use_fp16=False, fp16_channels_last=False,
                 **layer_kwargs):
        super().__init__()
        self.in_channels, self.w_dim, self.resolution = in_channels, w_dim, resolution
        self.img_channels, self.is_last, self.architecture = img_channels, is_last, architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = self.num_torgb = 0
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)


@persistent
class SynthesisNetwork(torch.nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_fp16_res=0,
                 **block_kwargs):
        super().__init__()
        self.w_dim, self.img_resolution = w_dim, img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=res == img_resolution,
                                   use_fp16=res >= fp16_resolution, **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)


@persistent
class Generator(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, synthesis_kwargs={}):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)


@persistent
class Discriminator(torch.nn.Module):  # a token D: a snapshot holds one, and the loader must read past it
    def __init__(self, c_dim, img_resolution, img_channels, architecture="resnet", channel_base=32768,
                 channel_max=512, num_fp16_res=0, conv_clamp=None, cmap_dim=None, block_kwargs={},
                 mapping_kwargs={}, epilogue_kwargs={}):
        super().__init__()
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.b4 = Conv2dLayer(img_channels, min(channel_base // 4, channel_max), kernel_size=3, activation="lrelu",
                              conv_clamp=conv_clamp)


@persistent
class AugmentPipe(torch.nn.Module):  # training/augment.py: float attributes, a list, buffers
    def __init__(self, xflip=0, rotate90=0, xint=0, imgfilter_bands=[1, 1, 1, 1]):
        super().__init__()
        self.register_buffer("p", torch.ones([]))
        self.xflip, self.rotate90, self.xint = float(xflip), float(rotate90), float(xint)
        self.imgfilter_bands = list(imgfilter_bands)
        self.register_buffer("Hz_geom", setup_filter([1.0, 2.0, 1.0]))


# -- building and writing -----------------------------------------------------------------------
def tiny_kwargs(resolution=16, architecture="skip", conv_clamp=256, z_dim=32, w_dim=32, num_layers=2,
                channel_base=128, channel_max=16, **synthesis_extra):
    """Generator kwargs as NVlabs's train.py builds them (EasyDicts for the nested ones), tiny."""
    synthesis = EasyDict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=4, conv_clamp=conv_clamp)
    if architecture != "skip":
        synthesis.architecture = architecture
    synthesis.update(synthesis_extra)
    return dict(z_dim=z_dim, w_dim=w_dim, mapping_kwargs=EasyDict(num_layers=num_layers), synthesis_kwargs=synthesis,
                c_dim=0, img_resolution=resolution, img_channels=3)


def make_generator(seed=0, **kwargs) -> torch.nn.Module:
    """A G_ema with random weights at scales that keep images mostly inside [-1, 1]."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        G = Generator(**tiny_kwargs(**kwargs))
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in G.named_parameters():
                if name.endswith("noise_strength"):
                    p.copy_(torch.randn([], generator=g) * 0.3)
                elif name.endswith("affine.bias"):
                    p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
                elif name.endswith(".bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
                elif "torgb.weight" in name:
                    p.mul_(0.3)
            if hasattr(G.mapping, "w_avg"):
                G.mapping.w_avg.copy_(torch.randn(G.mapping.w_avg.shape, generator=g))
    return G.eval().requires_grad_(False)


def snapshot(G_ema, seed=0) -> dict:
    """{training_set_kwargs, G, D, G_ema, augment_pipe} as training_loop.py assembles a snapshot."""
    kwargs = dict(G_ema._init_kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 7)
        D = Discriminator(c_dim=0, img_resolution=kwargs["img_resolution"], img_channels=3,
                          channel_base=kwargs["synthesis_kwargs"]["channel_base"],
                          channel_max=kwargs["synthesis_kwargs"]["channel_max"], conv_clamp=256,
                          epilogue_kwargs=EasyDict(mbstd_group_size=4))
        pipe = AugmentPipe(xflip=1, rotate90=1, xint=1)
    training_set_kwargs = dict(class_name="training.dataset.ImageFolderDataset", path="~/datasets/tiny.zip",
                               use_labels=False, max_size=1000, xflip=False, resolution=kwargs["img_resolution"])
    # G is the training copy; deepcopy would call the reduce, so it is built again from the same arguments
    with torch.random.fork_rng():
        torch.manual_seed(seed + 8)
        G = Generator(**copy.deepcopy(kwargs))
    return {"training_set_kwargs": training_set_kwargs, "G": G.eval().requires_grad_(False),
            "D": D.eval().requires_grad_(False), "G_ema": G_ema, "augment_pipe": pipe.eval().requires_grad_(False)}


def write_pickle(path, data, marker, protocol=pickle.DEFAULT_PROTOCOL, extra_globals=None):
    """pickle.dump(data) with the embedded source set to write ``marker`` when executed."""
    _SOURCE["text"] = FAKE_SOURCE.format(marker=str(marker))
    try:
        with nvlabs_globals(extra_globals), open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
    finally:
        _SOURCE["text"] = FAKE_SOURCE.format(marker="/nonexistent/marker")


# -- an independent forward, straight from the formulas ------------------------------------------
def _fir(x, f, gain, pad):
    """Pad (left/top, right/bottom), then a depthwise true convolution with the 2-D filter f * gain."""
    c = x.shape[1]
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = (f * gain).flip([0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def _zero_insert(x):
    n, c, h, w = x.shape
    out = torch.zeros(n, c, 2 * h, 2 * w, dtype=x.dtype)
    out[:, :, ::2, ::2] = x
    return out


def independent_forward(s, z, *, conv_clamp=256, architecture="skip", truncation=1.0, lr_multiplier=0.01,
                        noise=True):
    """NVlabs's G_ema(z, c=None, truncation_psi, noise_mode='const') from the state dict ``s``, one sample at a
    time, with per-sample modulated and demodulated weights (the fused formulation), upsampling convs as
    zero insertion -> low-pass filter -> true convolution (conv2d_resample's generic path), unclamped."""
    x = z * torch.rsqrt((z * z).mean(1, keepdim=True) + 1e-8)
    i = 0
    while f"mapping.fc{i}.weight" in s:
        weight, bias = s[f"mapping.fc{i}.weight"], s[f"mapping.fc{i}.bias"]
        x = F.leaky_relu(x @ (weight * lr_multiplier / math.sqrt(weight.shape[1])).t() + bias * lr_multiplier,
                         0.2) * math.sqrt(2)
        i += 1
    ws = x if truncation == 1 else s["mapping.w_avg"] + truncation * (x - s["mapping.w_avg"])
    resolutions = sorted(int(k.split(".")[1][1:]) for k in s if k.endswith(".conv1.weight"))

    def affine(prefix, w):
        a = s[f"{prefix}.affine.weight"]
        return a @ w / math.sqrt(a.shape[1]) + s[f"{prefix}.affine.bias"]

    def layer(prefix, h, w, up, gain=1.0):
        weight = s[f"{prefix}.weight"] * affine(prefix, w).view(1, -1, 1, 1)
        weight = weight / torch.sqrt(weight.square().sum((1, 2, 3), keepdim=True) + 1e-8)
        f = s[f"{prefix}.resample_filter"]
        if up:  # padding 1 w.r.t. the upsampled image + the filter's (4+1)//2 and (4-2)//2
            h = _fir(_zero_insert(h[None]), f, 4.0, (3, 2))
            h = F.conv2d(h, weight.flip([2, 3]))[0]
        else:
            h = F.conv2d(h[None], weight, padding=1)[0]
        if noise and f"{prefix}.noise_const" in s:
            h = h + s[f"{prefix}.noise_const"] * s[f"{prefix}.noise_strength"]
        h = F.leaky_relu(h + s[f"{prefix}.bias"].view(-1, 1, 1), 0.2) * math.sqrt(2) * gain
        return h if conv_clamp is None else h.clamp(-conv_clamp * gain, conv_clamp * gain)

    def torgb(prefix, h, w):
        style = affine(prefix, w) / math.sqrt(h.shape[0])
        out = torch.einsum("oi,ihw->ohw", s[f"{prefix}.weight"][:, :, 0, 0] * style.view(1, -1), h)
        out = out + s[f"{prefix}.bias"].view(-1, 1, 1)
        return out if conv_clamp is None else out.clamp(-conv_clamp, conv_clamp)

    images = []
    for w in ws:
        h = img = None
        for res in resolutions:
            p = f"synthesis.b{res}"
            if res == 4:
                h = layer(f"{p}.conv1", s[f"{p}.const"], w, up=False)
            elif architecture == "resnet":
                skip_w = s[f"{p}.skip.weight"][:, :, 0, 0] / math.sqrt(h.shape[0])
                y = _fir(_zero_insert(torch.einsum("oi,ihw->ohw", skip_w, h)[None]), s[f"{p}.resample_filter"],
                         4.0, (2, 1))[0] * math.sqrt(0.5)
                h = layer(f"{p}.conv0", h, w, up=True)
                h = y + layer(f"{p}.conv1", h, w, up=False, gain=math.sqrt(0.5))
            else:
                h = layer(f"{p}.conv0", h, w, up=True)
                h = layer(f"{p}.conv1", h, w, up=False)
            if img is not None:
                img = _fir(_zero_insert(img[None]), s[f"{p}.resample_filter"], 4.0, (2, 1))[0]
            if f"{p}.torgb.weight" in s:
                rgb = torgb(f"{p}.torgb", h, w)
                img = rgb if img is None else img + rgb
        images.append(img)
    return torch.stack(images)

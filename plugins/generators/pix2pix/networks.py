"""The pix2pix and CycleGAN networks (U-Net and ResNet) with the generator protocol: modules at the
repository's indices, forward passes from any layer, layer and norm-site names.

Facts read from junyanz/pytorch-CycleGAN-and-pix2pix:

- ``models/networks.py``: ``define_G`` builds ``unet_128`` / ``unet_256`` (``UnetGenerator`` with 7 / 8
  downsamplings) and ``resnet_6blocks`` / ``resnet_9blocks`` (``ResnetGenerator``); ``get_norm_layer``:
  ``batch`` = ``nn.BatchNorm2d(affine=True, track_running_stats=True)``, ``instance`` =
  ``nn.InstanceNorm2d(affine=False, track_running_stats=False)`` (eps 1e-5 for both), ``none`` =
  ``Identity``; convolutions carry a bias only with instance norm (``use_bias = norm_layer.func ==
  nn.InstanceNorm2d``), except the last ones (the U-Net's outermost transposed conv, the ResNet's final
  7x7 conv), which always do. ``UnetSkipConnectionBlock(outer_nc, inner_nc)``: ``downconv`` = 4x4
  stride-2 conv (padding 1), ``downrelu`` = LeakyReLU(0.2), ``uprelu`` = ReLU, ``upconv`` = 4x4
  stride-2 transposed conv (padding 1); outermost ``[downconv, submodule, uprelu, upconv, Tanh]``,
  innermost ``[downrelu, downconv, uprelu, upconv, upnorm]``, the others ``[downrelu, downconv,
  downnorm, submodule, uprelu, upconv, upnorm] (+ Dropout(0.5))``, each block but the outermost
  returning ``cat([x, model(x)], 1)``. Channels from the outside in: (output_nc, ngf) with input_nc,
  (ngf, 2ngf), (2ngf, 4ngf), (4ngf, 8ngf), then (8ngf, 8ngf) down to the innermost.
  ``ResnetGenerator``: ReflectionPad(3), 7x7 conv, norm, ReLU; twice a 3x3 stride-2 conv, norm, ReLU;
  n ``ResnetBlock(4ngf)`` (``x + [ReflectionPad(1), conv3x3, norm, ReLU, (Dropout(0.5)),
  ReflectionPad(1), conv3x3, norm](x)``); twice a 3x3 stride-2 transposed conv (padding 1,
  output_padding 1), norm, ReLU; ReflectionPad(3), 7x7 conv, Tanh. Dropout has no weights, but in a
  ResNet block it shifts the second conv's index (``conv_block.5`` without, ``conv_block.6`` with it),
  so it is read from the keys.

What gandid exposes (layers in forward order, norm sites, docs/pix2pix.md):

- U-Net, block k = 1 (outermost) .. D (innermost): ``downK`` = block k's down-path output (its
  downconv, after downnorm: what the skip carries and the next block reads; pre-activation) and
  ``upK`` (k >= 2) = block k's up-path output (after upnorm; what is concatenated with ``down{K-1}``).
  Norm sites ``downK.norm`` (k = 2..D-1) and ``upK.norm`` (k = 2..D).
- ResNet: ``enc1``, ``enc2``, ``enc3`` (post-ReLU), ``res1`` .. ``resN`` (the residual blocks' outputs),
  ``dec1``, ``dec2`` (post-ReLU). Norm sites ``enc1.norm`` .. ``enc3.norm``, ``resI.norm1``,
  ``resI.norm2``, ``dec1.norm``, ``dec2.norm``.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from gandid.errors import CheckpointError, ConfigError, UnknownNameError
from gandid.model import LayerInfo, NormSite

from .inputs import InputFolder
from .norms import _norm_layer, _site_kind, _site_module

UNET_NAMES = {7: "unet_128", 8: "unet_256"}


def _period(z: torch.Tensor) -> int:
    """The smallest p such that z is z[:p] repeated (the engine lays rows out as blocks of the same
    latents); len(z) when it is not."""
    n = len(z)
    flat = z.reshape(n, -1)
    for p in range(1, n // 2 + 1):
        if n % p == 0 and torch.equal(flat[p], flat[0]) and torch.equal(flat[p:], flat[:-p]):
            return p
    return n


class UnetBlock(nn.Module):
    """``UnetSkipConnectionBlock``'s tensors at its indices (``model.N``); the forward pass is the
    generator's, which walks the blocks so that it can start from any layer."""

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 norm="batch", batchnorm="eval"):
        super().__init__()
        bias = norm == "instance"
        input_nc = outer_nc if input_nc is None else input_nc
        down = nn.Conv2d(input_nc, inner_nc, 4, 2, 1, bias=bias)
        if outermost:
            layers = [down, submodule, nn.ReLU(), nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), nn.ConvTranspose2d(inner_nc, outer_nc, 4, 2, 1, bias=bias),
                      _norm_layer(norm, outer_nc, batchnorm)]
        else:  # the dropout that may follow has no tensors and is off: left out
            layers = [nn.LeakyReLU(0.2), down, _norm_layer(norm, inner_nc, batchnorm), submodule, nn.ReLU(),
                      nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1, bias=bias),
                      _norm_layer(norm, outer_nc, batchnorm)]
        self.model = nn.Sequential(*layers)


class ResnetBlock(nn.Module):
    def __init__(self, dim, norm="batch", batchnorm="eval", dropout=False):
        super().__init__()
        bias = norm == "instance"
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), _norm_layer(norm, dim, batchnorm),
                  nn.ReLU()]
        if dropout:
            layers.append(nn.Identity())  # Dropout(0.5): no tensors, off at test time here; keeps the indices
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), _norm_layer(norm, dim, batchnorm)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class Pix2PixGenerator(nn.Module):
    """What U-Net and ResNet generators share: the inputs, the Generator protocol's sampling, the
    output (tanh of the last conv; a one-channel output shown as gray RGB)."""

    arch: str
    norm: str
    batchnorm: str

    def __init__(self, input_nc: int, output_nc: int, ngf: int, norm: str, batchnorm: str, size: int):
        super().__init__()
        self.input_nc, self.output_nc, self.ngf = input_nc, output_nc, ngf
        self.norm, self.batchnorm, self.size = norm, batchnorm, size
        self.resolution = size
        self.input_shape = (input_nc, size, size)
        self.z_dim = input_nc * size * size  # a "latent" is an input image: z_dim is its flattened size
        self.inputs: InputFolder | None = None
        self.layers: list[LayerInfo] = []
        self.norm_sites: list[NormSite] = []
        self._layer_modules: dict[str, nn.Module] = {}
        self._site_modules: dict[str, nn.Module] = {}

    def _add_layer(self, name, module, channels, size):
        self.layers.append(LayerInfo(name, channels, (size, size)))
        self._layer_modules[name] = module

    def _add_site(self, name, module, layer):
        kind = _site_kind(self.norm, self.batchnorm)
        if kind is not None:
            self.norm_sites.append(NormSite(name, kind, layer))
            self._site_modules[name] = _site_module(module)

    def _param(self) -> torch.Tensor:
        return next(self.parameters())

    def _output(self, x):
        return x.repeat(1, 3, 1, 1) if self.output_nc == 1 else x

    # -- Generator protocol ----------------------------------------------------------------------
    def sample_z(self, n, seed, start=0):
        """(n, C, S, S) input images in [-1, 1]: sample i is file ``inputs.file(seed, start + i)``."""
        if self.inputs is None:
            raise ConfigError("pix2pix is a conditional generator: its samples are input images; give the "
                              "folder that holds them (generator option inputs=DIR)")
        p = self._param()
        rows = [self.inputs.load(self.inputs.index(seed, start + i)) for i in range(n)]
        if not rows:
            return torch.empty(0, *self.input_shape, device=p.device, dtype=p.dtype)
        return torch.stack(rows).to(device=p.device, dtype=p.dtype)

    def input_file(self, seed: int, i: int) -> str:
        """The input image (path relative to the inputs folder) of sample i of seed ``seed``."""
        if self.inputs is None:
            raise ConfigError("pix2pix: no inputs folder (generator option inputs=DIR)")
        return self.inputs.file(seed, i)

    def layer_module(self, name):
        if name not in self._layer_modules:
            raise UnknownNameError("layer", name, list(self._layer_modules))
        return self._layer_modules[name]

    def norm_module(self, site):
        if site not in self._site_modules:
            raise UnknownNameError("norm site", site, list(self._site_modules))
        return self._site_modules[site]

    def _check_input(self, z):
        if z.dim() != 4 or tuple(z.shape[1:]) != self.input_shape:
            raise ValueError(f"pix2pix: inputs must be (N, {', '.join(map(str, self.input_shape))}) images, got "
                             f"{tuple(z.shape)}")


class UnetGenerator(Pix2PixGenerator):
    """``UnetGenerator(input_nc, output_nc, num_downs=depth, ngf)`` with the generator protocol."""

    arch = "unet"

    def __init__(self, input_nc, output_nc, depth, ngf, norm="batch", batchnorm="eval", size=None):
        super().__init__(input_nc, output_nc, ngf, norm, batchnorm, size or 2 ** depth)
        if depth < 5:
            raise CheckpointError(f"pix2pix: a U-Net has at least 5 levels, got {depth}")
        if self.size % 2 ** depth or self.size < 2 ** depth:
            raise ConfigError(f"pix2pix: a U-Net with {depth} downsamplings needs an input size that is a multiple of "
                              f"{2 ** depth}, got {self.size}")
        self.depth = depth
        self.name = UNET_NAMES.get(depth, f"unet ({depth} downsamplings)")
        # (outer_nc, inner_nc) per block, outermost first (UnetGenerator.__init__)
        nc = [(output_nc, ngf), (ngf, 2 * ngf), (2 * ngf, 4 * ngf), (4 * ngf, 8 * ngf)]
        nc += [(8 * ngf, 8 * ngf)] * (depth - 4)
        block = None
        for k in range(depth, 0, -1):
            outer, inner = nc[k - 1]
            block = UnetBlock(outer, inner, input_nc if k == 1 else None, block, outermost=k == 1,
                              innermost=k == depth, norm=norm, batchnorm=batchnorm)
            if k == depth:
                blocks = [block]
            else:
                blocks.insert(0, block)
        self.model = block
        self._blocks = blocks  # a plain list: not registered twice
        # layers in forward order: the encoder, then the decoder from the innermost block out
        for k in range(1, depth + 1):
            m = blocks[k - 1].model
            module = m[0] if k == 1 else (m[1] if k == depth else m[2])
            self._add_layer(f"down{k}", module, nc[k - 1][1], self.size // 2 ** k)
            if 1 < k < depth:
                self._add_site(f"down{k}.norm", m[2], f"down{k - 1}")
        for k in range(depth, 1, -1):
            m = blocks[k - 1].model
            up_norm = m[4] if k == depth else m[6]
            self._add_site(f"up{k}.norm", up_norm, f"down{depth}" if k == depth else f"up{k + 1}")
            self._add_layer(f"up{k}", up_norm, nc[k - 1][0], self.size // 2 ** (k - 1))
        self.default_layer = f"up{min(4, depth)}"

    def _down(self, k, x):
        """Block k's down path: the image (k = 1) or down{k-1} -> down{k}."""
        m = self._blocks[k - 1].model
        if k == 1:
            return m[0](x)
        h = m[1](m[0](x))
        return h if k == self.depth else m[2](h)

    def _up(self, k, inner):
        """Block k's up path on what its submodule returned -> up{k} (the image for k = 1).

        The repository's in-place LeakyReLU (``downrelu``) turns the skip x into LeakyReLU(x) before
        ``torch.cat([x, self.model(x)], 1)`` reads it; the ReLU that follows the concatenation makes
        that the same as ReLU(x) (ReLU(LeakyReLU(x)) = ReLU(x)), which is what this computes."""
        m = self._blocks[k - 1].model
        if k in (1, self.depth):
            return m[4](m[3](m[2](inner)))
        return m[6](m[5](m[4](inner)))

    def _encoder_prefix(self, z, levels):
        """down1 .. down{levels} of inputs z. Rows that repeat a block of rows (the engine's DID arms,
        per-unit copies) are encoded once, unless an encoder norm site is being overridden (a borrow
        or a recording needs every row)."""
        if levels == 0:
            return []
        overridden = any(getattr(self._site_modules.get(f"down{k}.norm"), "override", None) is not None
                         for k in range(2, levels + 1))
        p = len(z) if overridden else _period(z)
        x, out = z[:p], []
        for k in range(1, levels + 1):
            x = self._down(k, x)
            out.append(x)
        if p < len(z):
            out = [d.repeat(len(z) // p, 1, 1, 1) for d in out]
        return out

    def _decode(self, d, start, u=None):
        """Blocks start .. 1's up paths: d = [down1, ..., down{start}], u = up{start+1} (None at the innermost)."""
        for k in range(start, 0, -1):
            u = self._up(k, d[k - 1] if k == self.depth else torch.cat([d[k - 1], u], 1))
        return u

    def forward(self, z):
        self._check_input(z)
        d, x = [], z
        for k in range(1, self.depth + 1):
            x = self._down(k, x)
            d.append(x)
        return self._output(self._decode(d, self.depth))

    def forward_from(self, layer, features, z):
        found = re.fullmatch(r"(down|up)(\d+)", layer)
        if layer not in self._layer_modules or not found:
            raise UnknownNameError("layer", layer, list(self._layer_modules))
        self._check_input(z)
        k = int(found.group(2))
        d = self._encoder_prefix(z, k - 1)  # the skips the rest needs, from the inputs
        if found.group(1) == "up":
            return self._output(self._decode(d, k - 1, features))
        x = features
        d.append(x)
        for level in range(k + 1, self.depth + 1):
            x = self._down(level, x)
            d.append(x)
        return self._output(self._decode(d, self.depth))


class ResnetGenerator(Pix2PixGenerator):
    """``ResnetGenerator(input_nc, output_nc, ngf, n_blocks=blocks)`` (reflect padding) with the generator
    protocol; every module sits at its index in ``model``."""

    arch = "resnet"

    def __init__(self, input_nc, output_nc, blocks, ngf, norm="batch", batchnorm="eval", dropout=False, size=None):
        super().__init__(input_nc, output_nc, ngf, norm, batchnorm, size or 256)
        if self.size % 4 or self.size < 8:  # two stride-2 convs; a 1-pixel reflection pad needs 2 pixels after them
            raise ConfigError(f"pix2pix: a ResNet generator needs an input size that is a multiple of 4, at least 8, "
                              f"got {self.size}")
        self.blocks, self.dropout = blocks, dropout
        self.name = f"resnet_{blocks}blocks"
        bias = norm == "instance"
        s = self.size

        def norm_layer(c):
            return _norm_layer(norm, c, batchnorm)

        layers = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=bias), norm_layer(ngf), nn.ReLU()]
        for i in range(2):
            c = ngf * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1, bias=bias), norm_layer(2 * c), nn.ReLU()]
        layers += [ResnetBlock(4 * ngf, norm, batchnorm, dropout) for _ in range(blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=bias), norm_layer(c // 2),
                       nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        m, n = self.model, blocks
        self._index: dict[str, int] = {}

        def layer(name, index, channels, size):
            self._add_layer(name, m[index], channels, size)
            self._index[name] = index

        self._add_site("enc1.norm", m[2], None)
        layer("enc1", 3, ngf, s)
        self._add_site("enc2.norm", m[5], "enc1")
        layer("enc2", 6, 2 * ngf, s // 2)
        self._add_site("enc3.norm", m[8], "enc2")
        layer("enc3", 9, 4 * ngf, s // 4)
        previous = "enc3"
        for i in range(1, n + 1):
            block = m[9 + i].conv_block
            self._add_site(f"res{i}.norm1", block[2], previous)
            self._add_site(f"res{i}.norm2", block[len(block) - 1], previous)
            layer(f"res{i}", 9 + i, 4 * ngf, s // 4)
            previous = f"res{i}"
        self._add_site("dec1.norm", m[11 + n], previous)
        layer("dec1", 12 + n, 2 * ngf, s // 2)
        self._add_site("dec2.norm", m[14 + n], "dec1")
        layer("dec2", 15 + n, ngf, s)
        self.default_layer = f"res{n}" if n else "enc3"

    def forward(self, z):
        self._check_input(z)
        return self._output(self.model(z))

    def forward_from(self, layer, features, z=None):
        if layer not in self._index:
            raise UnknownNameError("layer", layer, list(self._index))
        x = features
        for module in list(self.model)[self._index[layer] + 1:]:
            x = module(x)
        return self._output(x)

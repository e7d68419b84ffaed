"""pix2pix and CycleGAN generators (junyanz/pytorch-CycleGAN-and-pix2pix ``latest_net_G.pth``) as
conditional generators: a sample's "latent" is an input image read from a folder.

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
- ``models/base_model.py``: ``save_networks`` writes ``net.state_dict()`` (``net.module``'s under
  DataParallel in current versions; older files and forks may carry ``module.`` prefixes, which are
  stripped here); ``__patch_instance_norm_state_dict`` drops the ``running_mean`` / ``running_var`` /
  ``num_batches_tracked`` that InstanceNorm layers of files written before PyTorch 0.4 carry (they were
  never used: instance norm normalises each sample with its own statistics); so does this loader.
  The norm is therefore told from the affine weights (batch norm has ``weight``/``bias``, the repo's
  instance norm has none) and the conv biases, not from ``running_mean``.
- ``data/base_dataset.py`` (``get_transform``) and ``options/test_options.py``: at test time
  ``load_size = crop_size`` (default 256), so ``resize_and_crop`` is a plain bicubic resize to
  crop_size x crop_size (the aspect ratio is not kept) and no flip; ``transforms.Grayscale(1)`` first
  when the generator reads one channel; ``ToTensor`` then ``Normalize(0.5, 0.5)``: values in [-1, 1].
  Files are opened with ``Image.open(path).convert('RGB')``; an aligned (pix2pix) dataset holds A|B side
  by side and ``direction`` picks the half (``data/aligned_dataset.py``).
- ``test.py`` runs the network in train mode unless ``--eval``: with batch size 1 its batch norms then
  normalise each image by its own statistics (the pix2pix paper's "instance normalization" at test
  time) and its dropout stays on. Here dropout is always off (an image depends only on its input), and
  the option ``batchnorm`` chooses: ``eval`` (default, ``--eval``: the running statistics, a fixed
  affine map that does not depend on the sample) or ``sample`` (each image's own statistics, then the
  affine weights, as test.py without ``--eval``).

What gandid exposes (layers in forward order, norm sites, docs/pix2pix.md):

- U-Net, block k = 1 (outermost) .. D (innermost): ``downK`` = block k's down-path output (its
  downconv, after downnorm: what the skip carries and the next block reads; pre-activation) and
  ``upK`` (k >= 2) = block k's up-path output (after upnorm; what is concatenated with ``down{K-1}``).
  Norm sites ``downK.norm`` (k = 2..D-1) and ``upK.norm`` (k = 2..D).
- ResNet: ``enc1``, ``enc2``, ``enc3`` (post-ReLU), ``res1`` .. ``resN`` (the residual blocks' outputs),
  ``dec1``, ``dec2`` (post-ReLU). Norm sites ``enc1.norm`` .. ``enc3.norm``, ``resI.norm1``,
  ``resI.norm2``, ``dec1.norm``, ``dec2.norm``.

Instance norms are sites of kind ``instancenorm`` (:class:`gandid.model.InstanceNorm`, eps 1e-5, no
affine); batch norms in eval mode are sites of kind ``batchnorm``, which the DID engine cannot control
(their statistics are constants: nothing to record, borrow or replay); with ``batchnorm = "sample"``
they are ``instancenorm`` sites followed by the batch norm's affine weights.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from gandid import hookimpl
from gandid.checkpoints import check_state_dict, load_state_dict_file, to_float
from gandid.errors import CheckpointError, ConfigError, UnknownNameError
from gandid.model import InstanceNorm, LayerInfo, NormSite

EPS = 1e-5  # nn.BatchNorm2d's and nn.InstanceNorm2d's default, as get_norm_layer builds them
BATCHNORM_MODES = ("eval", "sample")
DIRECTIONS = ("AtoB", "BtoA")
ORDERS = ("shuffled", "sorted")
# data/image_folder.py's IMG_EXTENSIONS (any case), and webp
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
CACHE_BYTES = 256 << 20  # decoded, resized inputs kept (uint8), least recently used dropped first
UNET_NAMES = {7: "unet_128", 8: "unet_256"}


# -- normalisation layers ---------------------------------------------------------------------------

class BatchNorm(nn.Module):
    """``nn.BatchNorm2d(affine=True, track_running_stats=True)``'s tensors, never updated.

    ``mode="eval"``: the running statistics (``model.eval()``, test.py ``--eval``), a fixed affine map;
    ``mode="sample"``: each sample's own statistics (biased variance, eps 1e-5: what a batch of one does
    in train mode) through :attr:`norm`, a :class:`gandid.model.InstanceNorm` the DID engine controls,
    then the affine weights."""

    def __init__(self, channels: int, mode: str = "eval"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.mode = mode
        self.norm = InstanceNorm(eps=EPS) if mode == "sample" else None

    def forward(self, x):
        if self.mode == "eval":
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, EPS)
        return self.norm(x) * self.weight[:, None, None] + self.bias[:, None, None]


def _norm_layer(norm: str, channels: int, batchnorm: str) -> nn.Module:
    if norm == "batch":
        return BatchNorm(channels, batchnorm)
    if norm == "instance":
        return InstanceNorm(eps=EPS)  # affine=False, track_running_stats=False: no tensors in the file
    return nn.Identity()


def _site_kind(norm: str, batchnorm: str) -> str | None:
    if norm == "instance" or (norm == "batch" and batchnorm == "sample"):
        return "instancenorm"
    return "batchnorm" if norm == "batch" else None


def _site_module(module: nn.Module) -> nn.Module:
    """The module a norm site is controlled through (a BatchNorm in sample mode: its InstanceNorm)."""
    return module.norm if isinstance(module, BatchNorm) and module.norm is not None else module


def _period(z: torch.Tensor) -> int:
    """The smallest p such that z is z[:p] repeated (the engine lays rows out as blocks of the same
    latents); len(z) when it is not."""
    n = len(z)
    flat = z.reshape(n, -1)
    for p in range(1, n // 2 + 1):
        if n % p == 0 and torch.equal(flat[p], flat[0]) and torch.equal(flat[p:], flat[:-p]):
            return p
    return n


# -- the input images -------------------------------------------------------------------------------

class InputFolder:
    """The images a pix2pix generator translates, one per sample.

    Files: every image (``IMAGE_SUFFIXES``, any case) in ``folder`` and its subfolders, hidden ones
    excepted, sorted by relative path. Sample i of seed s is file ``order_s[i mod M]`` (M files):
    ``order = "shuffled"`` (default) a permutation of the M files drawn from s, so the first M samples
    are M different images and another seed takes another subset first; ``"sorted"`` the sorted order
    for every seed. Each file is read as the repository's test-time loader reads it (module docstring):
    RGB (or grayscale for a one-channel generator), the A or B half for an aligned pair, bicubic
    resize to size x size, values in [-1, 1]."""

    def __init__(self, folder, size: int, channels: int, direction: str | None = None, order: str = "shuffled"):
        if order not in ORDERS:
            raise ConfigError(f"pix2pix: order must be one of {', '.join(ORDERS)}, got {order!r}")
        if direction is not None and direction not in DIRECTIONS:
            raise ConfigError(f"pix2pix: direction must be AtoB or BtoA (an aligned A|B pair per file: its left or "
                              f"right half) or left out (the whole file is the input), got {direction!r}")
        path = Path(folder)
        if not path.exists():
            raise ConfigError(f"pix2pix: the inputs folder {str(path)!r} does not exist (inputs=DIR: the images "
                              "the generator translates)")
        if not path.is_dir():
            raise ConfigError(f"pix2pix: inputs={str(path)!r} is a file; give the folder that holds the input images")
        files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise ConfigError(f"pix2pix: the inputs folder {str(path)!r} holds no images "
                              f"({', '.join(IMAGE_SUFFIXES)})")
        self.folder, self.files, self.size, self.channels = path, files, size, channels
        self.direction, self.order = direction, order
        self._orders: dict[int, torch.Tensor] = {}
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cache_size = max(1, CACHE_BYTES // (channels * size * size))

    def __len__(self):
        return len(self.files)

    def index(self, seed: int, i: int) -> int:
        """The file index of sample i of seed ``seed``."""
        m = len(self.files)
        if self.order == "sorted":
            return i % m
        if seed not in self._orders:
            # the same odd multiplier as gandid.model.normal_rows keeps neighbouring seeds apart
            g = torch.Generator().manual_seed((int(seed) * 0x9E3779B97F4A7C15 + 0x70697832) % (2 ** 63 - 1))
            self._orders[seed] = torch.randperm(m, generator=g)
        return int(self._orders[seed][i % m])

    def file(self, seed: int, i: int) -> str:
        """The relative path of sample i's input image."""
        return self.files[self.index(seed, i)]

    def load(self, index: int) -> torch.Tensor:
        """File ``index`` as (C, S, S) float32 in [-1, 1]."""
        if index in self._cache:
            self._cache.move_to_end(index)
            data = self._cache[index]
        else:
            data = self._read(index)
            self._cache[index] = data
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        # transforms.ToTensor then Normalize((0.5,) * C, (0.5,) * C)
        return data.float().div(255).sub(0.5).div(0.5)

    def _read(self, index: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        name = self.files[index]
        try:
            with Image.open(self.folder / name) as opened:
                img = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ConfigError(f"pix2pix: cannot read input image {str(self.folder / name)!r} ({exc})") from None
        if self.direction is not None:  # data/aligned_dataset.py: AB split down the middle
            w, h = img.size
            half = w // 2
            img = img.crop((0, 0, half, h)) if self.direction == "AtoB" else img.crop((half, 0, w, h))
        if self.channels == 1:
            img = img.convert("L")  # transforms.Grayscale(1), before the resize as in get_transform
        img = img.resize((self.size, self.size), Image.BICUBIC)
        raw = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return raw.view(self.size, self.size, self.channels).permute(2, 0, 1).contiguous()


# -- the networks -----------------------------------------------------------------------------------

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


# -- reading latest_net_G.pth -----------------------------------------------------------------------

def _unet_prefix(k: int) -> str:
    """Key prefix of U-Net block k (1 = outermost)."""
    return "model." + ("model.1." + "model.3." * (k - 2) if k > 1 else "")


def detect(state: dict) -> dict | None:
    """The architecture of a generator state dict in the repository's layout, or None: {"arch", "depth" or
    "blocks", "ngf", "input_nc", "output_nc", "norm", "dropout"}."""
    def shape(key):
        v = state.get(key)
        return tuple(v.shape) if isinstance(v, torch.Tensor) else None

    first = shape("model.model.0.weight")
    if first is not None and len(first) == 4 and first[2:] == (4, 4):
        depth = 1
        while shape(_unet_prefix(depth + 1) + "model.1.weight") is not None:
            depth += 1
        last = shape("model.model.3.weight")  # the outermost transposed conv: (2 ngf, output_nc, 4, 4)
        if depth < 2 or last is None or len(last) != 4:
            return None
        inner = _unet_prefix(2) + "model."
        norm = "batch" if inner + "2.weight" in state else "instance" if inner + "1.bias" in state else "none"
        return {"arch": "unet", "depth": depth, "ngf": first[0], "input_nc": first[1], "output_nc": last[1],
                "norm": norm, "dropout": None}
    first = shape("model.1.weight")
    if first is None or len(first) != 4 or first[2:] != (7, 7) or "model.10.conv_block.1.weight" not in state:
        return None
    blocks = 0
    while f"model.{10 + blocks}.conv_block.1.weight" in state:
        blocks += 1
    last = shape(f"model.{17 + blocks}.weight")  # the final 7x7 conv: (output_nc, ngf, 7, 7)
    if last is None or len(last) != 4:
        return None
    norm = "batch" if "model.2.weight" in state else "instance" if "model.1.bias" in state else "none"
    return {"arch": "resnet", "blocks": blocks, "ngf": first[0], "input_nc": first[1], "output_nc": last[0],
            "norm": norm, "dropout": len(shape("model.10.conv_block.6.weight") or ()) == 4}  # a conv, not a norm


def _strip_module(state: dict) -> tuple[dict, bool]:
    """Keys without DataParallel's ``module.`` prefix (when every key has it)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}, True
    return state, False


def build(state: dict, *, size: int | None = None, batchnorm: str = "eval", source: str = "state dict"):
    """A generator from a state dict in the repository's layout (``latest_net_G.pth``)."""
    if batchnorm not in BATCHNORM_MODES:
        raise ConfigError(f"pix2pix: batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got {batchnorm!r}")
    state, stripped = _strip_module(dict(state))
    found = detect(state)
    if found is None:
        raise CheckpointError(f"{source}: not a pytorch-CycleGAN-and-pix2pix generator (expected a U-Net's "
                              "'model.model.0.weight' (ngf, in, 4, 4) or a ResNet generator's 'model.1.weight' "
                              "(ngf, in, 7, 7) and 'model.10.conv_block.1.weight'); its first keys are "
                              f"{sorted(state)[:8]}")
    for what, n in (("input", found["input_nc"]), ("output", found["output_nc"])):
        if n not in (1, 3):
            raise CheckpointError(f"{source}: a generator with {n} {what} channels; gandid reads images with 1 or 3 "
                                  "channels (RGB or grayscale)")
    norm = found["norm"]
    if found["arch"] == "unet":
        gen = UnetGenerator(found["input_nc"], found["output_nc"], found["depth"], found["ngf"], norm, batchnorm, size)
    else:
        gen = ResnetGenerator(found["input_nc"], found["output_nc"], found["blocks"], found["ngf"], norm, batchnorm,
                              found["dropout"], size)
    what = f"pix2pix {gen.name} generator ({norm} norm, {source})"
    expected = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
    # __patch_instance_norm_state_dict: InstanceNorm buffers of pre-0.4 files, never used, are dropped
    norm_prefixes = {name + "." for name, module in gen.named_modules() if isinstance(module, InstanceNorm)}
    ignored = [k for k in state if k not in expected and k.rsplit(".", 1)[0] + "." in norm_prefixes
               and k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")]
    state = {k: v for k, v in state.items() if k not in ignored}
    # files written before PyTorch 0.4.1 have no num_batches_tracked (a counter gandid never reads)
    added = [k for k in expected if k.endswith(".num_batches_tracked") and k not in state]
    for k in added:
        state[k] = torch.tensor(0, dtype=torch.long)
    counters = [k for k in expected if k.endswith(".num_batches_tracked")]
    check_state_dict(state, expected, what, integer_keys=counters)
    state, dtypes = to_float(state)
    gen.load_state_dict(state, strict=True)
    gen.weights_info = {"file": source, **dtypes, "architecture": gen.name, "norm": norm, "ngf": found["ngf"],
                        "input_nc": found["input_nc"], "output_nc": found["output_nc"], "size": gen.size,
                        "batchnorm": batchnorm if norm == "batch" else None,
                        "module_prefix_stripped": stripped, "ignored_keys": len(ignored)}
    if found["dropout"] is not None:
        gen.weights_info["dropout"] = found["dropout"]
    return gen.eval()


def pix2pix(weights: str | None = None, inputs: str | None = None, size: int | None = None,
            batchnorm: str = "eval", direction: str | None = None, order: str = "shuffled") -> Pix2PixGenerator:
    """Factory for ``--generator pix2pix --weights latest_net_G.pth`` with generator options:

    ``inputs`` (required): the folder of input images (sample i = one of them, see :class:`InputFolder`);
    ``size``: input (and output) size, default 2**depth for a U-Net (128 for unet_128, 256 for unet_256)
    and 256 for a ResNet (the repository's crop_size); ``batchnorm``: "eval" (running statistics) or
    "sample" (each image's own, as test.py without --eval); ``direction``: "AtoB" / "BtoA" when each file
    is an aligned A|B pair (the input is its left / right half), left out when each file is one image;
    ``order``: "shuffled" (default, a permutation drawn from the seed) or "sorted"."""
    if weights is None:
        raise CheckpointError("generator 'pix2pix' needs a weights file: --weights latest_net_G.pth")
    if inputs is None:
        raise ConfigError("pix2pix is a conditional generator: its samples are input images; give the folder that "
                          "holds them (generator option inputs=DIR, e.g. [generator_options] inputs = \"testA\")")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ConfigError(f"pix2pix: size must be a positive integer, got {size!r}")
    data = load_state_dict_file(Path(weights))
    gen = build(data, size=size, batchnorm=batchnorm, source=str(weights))
    gen.inputs = InputFolder(inputs, gen.size, gen.input_nc, direction, order)
    gen.weights_info.update({"inputs": str(inputs), "input_images": len(gen.inputs), "direction": direction,
                             "order": order})
    return gen


def recognise(peek) -> str | None:
    """A generator state dict in pytorch-CycleGAN-and-pix2pix's layout (``latest_net_G.pth``)."""
    data = peek.data if isinstance(peek.data, dict) else None
    if not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        return None
    found = detect(_strip_module(data)[0])
    if found is None:
        return None
    arch = (UNET_NAMES.get(found["depth"], f"unet with {found['depth']} downsamplings") if found["arch"] == "unet"
            else f"resnet_{found['blocks']}blocks")
    return f"a pytorch-CycleGAN-and-pix2pix generator ({arch}, {found['norm']} norm)"


@hookimpl
def gandid_register_generators(register):
    register("pix2pix", pix2pix, description="pix2pix / CycleGAN generators (junyanz/pytorch-CycleGAN-and-pix2pix "
                                             "latest_net_G.pth: U-Net or ResNet, batch or instance norm), "
                                             "conditioned on a folder of input images",
             recognise=recognise)

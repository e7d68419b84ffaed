"""Small random-weight pix2pix / CycleGAN generators in junyanz/pytorch-CycleGAN-and-pix2pix's exact
``latest_net_G.pth`` key layout (models/networks.py: UnetGenerator / UnetSkipConnectionBlock,
ResnetGenerator / ResnetBlock, get_norm_layer), and an independent float64 forward written from those
formulas on the state dict alone (not with gandid's plugin): its own transposed convolution (zero
insertion, then a correlation with the flipped kernel), its own reflection padding (index arithmetic),
batch norm from the running statistics, instance norm from mean and variance, and the repository's
in-place LeakyReLU on the U-Net skips taken literally; with hooks to edit a layer and to record and
replay each instance norm's statistics."""
import torch
import torch.nn.functional as F

EPS = 1e-5


def _unet_prefix(k):
    """Block k (1 = outermost) sits at model.model.1.model.3. ... .model.3 (the submodule indices)."""
    return "model." if k == 1 else "model.model.1." + "model.3." * (k - 2)


def unet_channels(depth, ngf, output_nc):
    """(outer_nc, inner_nc) of blocks 1 (outermost) .. depth (innermost), as UnetGenerator builds them."""
    return ([(output_nc, ngf), (ngf, 2 * ngf), (2 * ngf, 4 * ngf), (4 * ngf, 8 * ngf)]
            + [(8 * ngf, 8 * ngf)] * (depth - 4))


class _Maker:
    def __init__(self, seed, norm, legacy_instance_buffers=False, counters=True):
        self.g = torch.Generator().manual_seed(seed)
        self.norm, self.legacy, self.counters = norm, legacy_instance_buffers, counters
        self.s = {}

    def rnd(self, *shape, scale=1.0):
        return torch.randn(*shape, generator=self.g) * scale

    def conv(self, key, cout, cin, k, bias):
        self.s[key + ".weight"] = self.rnd(cout, cin, k, k, scale=1.4 / (cin * k * k) ** 0.5)
        if bias:
            self.s[key + ".bias"] = self.rnd(cout, scale=0.1)

    def convt(self, key, cin, cout, k, bias):  # ConvTranspose2d weights are (in, out, k, k)
        self.s[key + ".weight"] = self.rnd(cin, cout, k, k, scale=2.8 / (cin * k * k) ** 0.5)
        if bias:
            self.s[key + ".bias"] = self.rnd(cout, scale=0.1)

    def norm_layer(self, key, c):
        if self.norm == "batch":  # BatchNorm2d(affine=True, track_running_stats=True)
            self.s[key + ".weight"] = 1 + self.rnd(c, scale=0.2)
            self.s[key + ".bias"] = self.rnd(c, scale=0.2)
            self.s[key + ".running_mean"] = self.rnd(c, scale=0.3)
            self.s[key + ".running_var"] = 0.5 + torch.rand(c, generator=self.g)
            if self.counters:
                self.s[key + ".num_batches_tracked"] = torch.tensor(1234, dtype=torch.long)
        elif self.norm == "instance" and self.legacy:  # what InstanceNorm2d saved before PyTorch 0.4
            self.s[key + ".running_mean"] = torch.zeros(c)
            self.s[key + ".running_var"] = torch.ones(c)


def unet_state_dict(depth=7, ngf=2, norm="instance", input_nc=3, output_nc=3, seed=0, legacy_instance_buffers=False,
                    counters=True):
    """UnetGenerator(input_nc, output_nc, num_downs=depth, ngf, norm_layer).state_dict()."""
    m = _Maker(seed, norm, legacy_instance_buffers, counters)
    bias = norm == "instance"
    nc = unet_channels(depth, ngf, output_nc)
    for k in range(1, depth + 1):
        p = _unet_prefix(k)
        outer, inner = nc[k - 1]
        cin = input_nc if k == 1 else outer
        if k == 1:  # [downconv, submodule, uprelu, upconv, tanh]
            m.conv(p + "model.0", inner, cin, 4, bias)
            m.convt(p + "model.3", 2 * inner, outer, 4, True)
        elif k == depth:  # [downrelu, downconv, uprelu, upconv, upnorm]
            m.conv(p + "model.1", inner, cin, 4, bias)
            m.convt(p + "model.3", inner, outer, 4, bias)
            m.norm_layer(p + "model.4", outer)
        else:  # [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm, (dropout)]
            m.conv(p + "model.1", inner, cin, 4, bias)
            m.norm_layer(p + "model.2", inner)
            m.convt(p + "model.5", 2 * inner, outer, 4, bias)
            m.norm_layer(p + "model.6", outer)
    return m.s


def resnet_state_dict(blocks=6, ngf=4, norm="instance", input_nc=3, output_nc=3, dropout=False, seed=0,
                      legacy_instance_buffers=False):
    """ResnetGenerator(input_nc, output_nc, ngf, norm_layer, use_dropout=dropout, n_blocks=blocks).state_dict()."""
    m = _Maker(seed, norm, legacy_instance_buffers)
    bias = norm == "instance"
    m.conv("model.1", ngf, input_nc, 7, bias)
    m.norm_layer("model.2", ngf)
    m.conv("model.4", 2 * ngf, ngf, 3, bias)
    m.norm_layer("model.5", 2 * ngf)
    m.conv("model.7", 4 * ngf, 2 * ngf, 3, bias)
    m.norm_layer("model.8", 4 * ngf)
    second = 6 if dropout else 5
    for i in range(blocks):
        p = f"model.{10 + i}.conv_block."
        m.conv(p + "1", 4 * ngf, 4 * ngf, 3, bias)
        m.norm_layer(p + "2", 4 * ngf)
        m.conv(p + str(second), 4 * ngf, 4 * ngf, 3, bias)
        m.s[p + str(second) + ".weight"] *= 0.4  # a small residual branch: the stream stays O(1) without a norm
        m.norm_layer(p + str(second + 1), 4 * ngf)
    n = blocks
    m.convt(f"model.{10 + n}", 4 * ngf, 2 * ngf, 3, bias)
    m.norm_layer(f"model.{11 + n}", 2 * ngf)
    m.convt(f"model.{13 + n}", 2 * ngf, ngf, 3, bias)
    m.norm_layer(f"model.{14 + n}", ngf)
    m.conv(f"model.{17 + n}", output_nc, ngf, 7, True)
    m.s[f"model.{17 + n}.weight"] *= 0.5  # most pixels inside tanh's linear range
    return m.s


# -- the independent forward ----------------------------------------------------------------------------

def lrelu(x):
    return torch.where(x >= 0, x, 0.2 * x)


def relu(x):
    return torch.where(x > 0, x, torch.zeros_like(x))


def reflect(x, p):
    """ReflectionPad2d(p) by index arithmetic: rows p, ..., 1, 0, 1, ..., H-1, H-2, ..., H-1-p."""
    def idx(n):
        i = torch.arange(-p, n + p)
        i = i.abs()
        return torch.where(i > n - 1, 2 * (n - 1) - i, i)

    return x[:, :, idx(x.shape[2])][:, :, :, idx(x.shape[3])]


def conv(x, s, key, stride=1, padding=0):
    return F.conv2d(x, s[key + ".weight"], s.get(key + ".bias"), stride=stride, padding=padding)


def conv_transpose(x, s, key, padding, output_padding=0):
    """Stride-2 ConvTranspose2d: zero insertion, pad k-1-p (and output_padding more at the end), then a
    correlation with the kernel flipped and its in/out axes swapped."""
    w = s[key + ".weight"]
    k = w.shape[2]
    n, c, h, wd = x.shape
    up = x.new_zeros(n, c, 2 * h - 1, 2 * wd - 1)
    up[:, :, ::2, ::2] = x
    lo, hi = k - 1 - padding, k - 1 - padding + output_padding
    up = F.pad(up, [lo, hi, lo, hi])
    return F.conv2d(up, w.flip(2, 3).transpose(0, 1), s.get(key + ".bias"))


class Norms:
    """Normalisation of the independent forward: ``norm`` batch / instance / none; batch in ``mode``
    eval (running statistics) or sample (own statistics, then the affine weights). Records each
    per-sample site's (N, 2, C) statistics in ``record`` and uses ``stats_in[site]`` instead when given."""

    def __init__(self, s, norm, mode="eval", stats_in=None, record=None):
        self.s, self.norm, self.mode = s, norm, mode
        self.stats_in, self.record = stats_in or {}, record if record is not None else {}

    def __call__(self, x, key, site):
        if self.norm == "none":
            return x
        s = self.s
        if self.norm == "batch" and self.mode == "eval":
            mean, var = s[key + ".running_mean"], s[key + ".running_var"]
            normed = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + EPS)
            return normed * s[key + ".weight"][:, None, None] + s[key + ".bias"][:, None, None]
        mean = x.mean((2, 3))
        var = ((x - mean[:, :, None, None]) ** 2).mean((2, 3))
        own = torch.stack([mean, torch.sqrt(var + EPS)], 1)
        self.record[site] = own
        st = self.stats_in.get(site, own)
        y = (x - st[:, 0, :, None, None]) / st[:, 1, :, None, None]
        if self.norm == "batch":
            y = y * s[key + ".weight"][:, None, None] + s[key + ".bias"][:, None, None]
        return y


def unet_forward(s, x, depth, norm, mode="eval", edit=None, stats_in=None, record=None):
    """UnetGenerator's forward on images x, in the state dict's dtype. Layers ``downK`` / ``upK`` as
    gandid names them (edit: {layer: fn}); sites ``downK.norm`` / ``upK.norm``."""
    edit = edit or {}
    nrm = Norms(s, norm, mode, stats_in, record)

    def ed(name, h):
        return edit[name](h) if name in edit else h

    d = [ed("down1", conv(x, s, _unet_prefix(1) + "model.0", 2, 1))]
    for k in range(2, depth + 1):
        p = _unet_prefix(k)
        h = conv(lrelu(d[-1]), s, p + "model.1", 2, 1)
        if k < depth:
            h = nrm(h, p + "model.2", f"down{k}.norm")
        d.append(ed(f"down{k}", h))
    # the innermost block's up path, then each block's on cat([skip, up]); the skip is the block's input
    # after the inner block's in-place LeakyReLU (nn.LeakyReLU(0.2, True) applied to x before cat reads it)
    p = _unet_prefix(depth)
    u = ed(f"up{depth}", nrm(conv_transpose(relu(d[depth - 1]), s, p + "model.3", 1), p + "model.4", f"up{depth}.norm"))
    for k in range(depth - 1, 1, -1):
        p = _unet_prefix(k)
        h = conv_transpose(relu(torch.cat([lrelu(d[k - 1]), u], 1)), s, p + "model.5", 1)
        u = ed(f"up{k}", nrm(h, p + "model.6", f"up{k}.norm"))
    return torch.tanh(conv_transpose(relu(torch.cat([lrelu(d[0]), u], 1)), s, "model.model.3", 1))


def resnet_forward(s, x, blocks, norm, mode="eval", dropout=False, edit=None, stats_in=None, record=None):
    """ResnetGenerator's forward (reflect padding); layers enc1..3, res1..N, dec1..2 as gandid names them."""
    edit = edit or {}
    nrm = Norms(s, norm, mode, stats_in, record)

    def ed(name, h):
        return edit[name](h) if name in edit else h

    h = ed("enc1", relu(nrm(conv(reflect(x, 3), s, "model.1"), "model.2", "enc1.norm")))
    h = ed("enc2", relu(nrm(conv(h, s, "model.4", 2, 1), "model.5", "enc2.norm")))
    h = ed("enc3", relu(nrm(conv(h, s, "model.7", 2, 1), "model.8", "enc3.norm")))
    second = 6 if dropout else 5
    for i in range(1, blocks + 1):
        p = f"model.{9 + i}.conv_block."
        y = relu(nrm(conv(reflect(h, 1), s, p + "1"), p + "2", f"res{i}.norm1"))
        y = nrm(conv(reflect(y, 1), s, p + str(second)), p + str(second + 1), f"res{i}.norm2")
        h = ed(f"res{i}", h + y)
    n = blocks
    h = ed("dec1", relu(nrm(conv_transpose(h, s, f"model.{10 + n}", 1, 1), f"model.{11 + n}", "dec1.norm")))
    h = ed("dec2", relu(nrm(conv_transpose(h, s, f"model.{13 + n}", 1, 1), f"model.{14 + n}", "dec2.norm")))
    return torch.tanh(conv(reflect(h, 3), s, f"model.{17 + n}"))


def write_images(folder, count=5, size=(40, 30), seed=0, mode="RGB", suffix=".png"):
    """``count`` random images (PNG by default) named img_00.png, ...; returns their names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    names = []
    for i in range(count):
        channels = 3 if mode == "RGB" else 1
        pixels = torch.randint(0, 256, (size[1], size[0], channels), generator=g, dtype=torch.uint8)
        # smooth structure on top of the noise, so that resizing matters and images differ
        ramp = torch.linspace(0, 255, size[0]).view(1, -1, 1) * ((i % 3) / 2)
        pixels = ((pixels.float() * 0.5 + ramp * 0.5).clamp(0, 255)).to(torch.uint8)
        arr = pixels.squeeze(2) if channels == 1 else pixels
        name = f"img_{i:02d}{suffix}"
        Image.fromarray(arr.numpy()).save(folder / name)
        names.append(name)
    return names


# -- the networks as torch.nn layers, the way models/networks.py assembles them ---------------------------
# (nn.BatchNorm2d / nn.InstanceNorm2d, in-place ReLUs, nn.Sequential at the repository's indices): their
# state_dict() keys are the file layout, so loading a made-up state dict with strict=True checks the
# layout, and their forward (eval mode) is a second reference that runs torch's own layers.

def _torch_norm(norm):
    import functools

    from torch import nn

    if norm == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return lambda c: nn.Identity()


def torch_unet(depth, ngf, norm, input_nc=3, output_nc=3, dropout=True):
    from torch import nn

    norm_layer, bias = _torch_norm(norm), norm == "instance"

    class Block(nn.Module):
        def __init__(self, outer, inner, cin=None, sub=None, outermost=False, innermost=False, drop=False):
            super().__init__()
            self.outermost = outermost
            cin = outer if cin is None else cin
            down = nn.Conv2d(cin, inner, 4, 2, 1, bias=bias)
            if outermost:
                layers = [down, sub, nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
            elif innermost:
                layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True),
                          nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias), norm_layer(outer)]
            else:
                layers = [nn.LeakyReLU(0.2, True), down, norm_layer(inner), sub, nn.ReLU(True),
                          nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias), norm_layer(outer)]
                layers += [nn.Dropout(0.5)] if drop else []
            self.model = nn.Sequential(*layers)

        def forward(self, x):
            return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)

    class Unet(nn.Module):
        def __init__(self):
            super().__init__()
            nc = unet_channels(depth, ngf, output_nc)
            block = None
            for k in range(depth, 0, -1):
                block = Block(*nc[k - 1], cin=input_nc if k == 1 else None, sub=block, outermost=k == 1,
                              innermost=k == depth, drop=dropout and 5 <= k < depth)
            self.model = block

        def forward(self, x):
            return self.model(x)

    return Unet()


def torch_resnet(blocks, ngf, norm, input_nc=3, output_nc=3, dropout=False):
    from torch import nn

    norm_layer, bias = _torch_norm(norm), norm == "instance"

    class Block(nn.Module):
        def __init__(self, dim):
            super().__init__()
            layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(dim), nn.ReLU(True)]
            layers += [nn.Dropout(0.5)] if dropout else []
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(dim)]
            self.conv_block = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv_block(x)

    layers = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=bias), norm_layer(ngf), nn.ReLU(True)]
    for i in range(2):
        c = ngf * 2 ** i
        layers += [nn.Conv2d(c, 2 * c, 3, 2, 1, bias=bias), norm_layer(2 * c), nn.ReLU(True)]
    layers += [Block(4 * ngf) for _ in range(blocks)]
    for i in range(2):
        c = ngf * 2 ** (2 - i)
        layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=bias), norm_layer(c // 2),
                   nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]

    class Resnet(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(*layers)

        def forward(self, x):
            return self.model(x)

    return Resnet()

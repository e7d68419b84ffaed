"""The pix2pix / CycleGAN plugin: latest_net_G.pth files in the repository's exact layout (U-Net and
ResNet, batch / instance / no norm), its forward against torch's own layers and an independent float64
implementation, the folder of input images as latents, instance norms as DID sites (four arms against
four naive passes), batch norm in eval mode as a site the DID cannot control, and the analyses end to end."""

import pytest
import torch
from intervention_cases import random_intervention
from PIL import Image
from pix2pix_files import (
    resnet_forward,
    resnet_state_dict,
    torch_resnet,
    torch_unet,
    unet_forward,
    unet_state_dict,
    write_images,
)
from safetensors.torch import save_file

import gandid_plugins.generators.pix2pix as pix2pix_plugin
from gandid.contracts import check_contract
from gandid.errors import CheckpointError, ConfigError
from gandid.formats import peek
from gandid.hooks import Trace, features_at, norm_overrides
from gandid.intervene import (
    BetaControl,
    Intervention,
    counterfactuals,
    counterfactuals_naive,
    per_unit,
    run_with_betas,
    variants,
)
from gandid.model import Generator, InstanceNorm
from gandid.registry import Registry
from gandid_plugins.generators.pix2pix import BatchNorm, pix2pix

ARMS = ("original", "intervened", "intervened_fixed_beta", "original_swapped_beta")


def f64(state):
    return {k: v.double() if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "testA"
    write_images(folder, 5)
    return folder


def saved(tmp_path, state, name="latest_net_G.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def unet_layers(depth, ngf, size):
    nc = [(3, ngf), (ngf, 2 * ngf), (2 * ngf, 4 * ngf), (4 * ngf, 8 * ngf)] + [(8 * ngf, 8 * ngf)] * (depth - 4)
    return ([(f"down{k}", nc[k - 1][1], (size // 2 ** k,) * 2) for k in range(1, depth + 1)]
            + [(f"up{k}", nc[k - 1][0], (size // 2 ** (k - 1),) * 2) for k in range(depth, 1, -1)])


# -- loading and the forward pass ---------------------------------------------------------------------

@pytest.mark.parametrize("depth, ngf, norm", [(7, 2, "instance"), (7, 2, "batch"), (7, 2, "none"), (8, 1, "instance")])
def test_unet_matches_torch_layers_and_an_independent_forward(depth, ngf, norm, tmp_path, inputs):
    s = unet_state_dict(depth, ngf, norm, seed=depth)
    reference = torch_unet(depth, ngf, norm).eval()
    reference.load_state_dict(s, strict=True)  # the made-up file has the repository's exact layout
    gen = pix2pix(weights=saved(tmp_path, s), inputs=str(inputs))
    size = 2 ** depth
    assert gen.name == {7: "unet_128", 8: "unet_256"}[depth] and gen.resolution == size
    assert gen.z_dim == 3 * size * size and gen.input_shape == (3, size, size)
    assert [(l.name, l.channels, l.size) for l in gen.layers] == unet_layers(depth, ngf, size)
    kind = {"instance": "instancenorm", "batch": "batchnorm"}.get(norm)
    expected_sites = ([(f"down{k}.norm", f"down{k - 1}") for k in range(2, depth)]
                      + [(f"up{k}.norm", f"down{depth}" if k == depth else f"up{k + 1}") for k in range(depth, 1, -1)])
    want = [(n, kind, l) for n, l in expected_sites] if kind else []
    assert [(s.name, s.kind, s.layer) for s in gen.norm_sites] == want
    assert gen.default_layer == "up4"
    assert gen.weights_info["architecture"] == gen.name and gen.weights_info["norm"] == norm
    z = gen.sample_z(3, seed=0)
    assert z.shape == (3, 3, size, size) and z.dtype == torch.float32
    with torch.no_grad(), Trace(gen, [l.name for l in gen.layers]) as trace:
        images = gen.forward(z)
        torch_images = reference(z.clone())
    expected = unet_forward(f64(s), z.double(), depth, norm)
    assert images.shape == (3, 3, size, size)
    assert float((images.double() - expected).abs().max()) < 1e-4
    assert float((torch_images.double() - expected).abs().max()) < 1e-4  # the in-place LeakyReLU skips agree
    assert float(expected.std()) > 0.1 and float((expected.abs() > 0.99).double().mean()) < 0.2  # not degenerate
    with torch.no_grad():
        torch.testing.assert_close(gen.double().forward(z.double()), expected, rtol=1e-10, atol=1e-10)
    for info in gen.layers:
        assert trace[info.name].shape[1:] == (info.channels, *info.size)


@pytest.mark.parametrize("norm, dropout, blocks", [("instance", False, 6), ("batch", True, 6), ("none", False, 6),
                                                   ("instance", True, 9), ("batch", False, 9)])
def test_resnet_matches_torch_layers_and_an_independent_forward(norm, dropout, blocks, tmp_path, inputs):
    s = resnet_state_dict(blocks, 4, norm, dropout=dropout, seed=3)
    reference = torch_resnet(blocks, 4, norm, dropout=dropout).eval()
    reference.load_state_dict(s, strict=True)
    path = saved(tmp_path, s)
    assert pix2pix(weights=path, inputs=str(inputs)).resolution == 256  # the repository's crop_size
    gen = pix2pix(weights=path, inputs=str(inputs), size=32)
    assert gen.name == f"resnet_{blocks}blocks" and gen.weights_info["dropout"] is dropout
    assert [(l.name, l.channels, l.size) for l in gen.layers] == (
        [("enc1", 4, (32, 32)), ("enc2", 8, (16, 16)), ("enc3", 16, (8, 8))]
        + [(f"res{i}", 16, (8, 8)) for i in range(1, blocks + 1)] + [("dec1", 8, (16, 16)), ("dec2", 4, (32, 32))])
    sites = [("enc1.norm", None), ("enc2.norm", "enc1"), ("enc3.norm", "enc2")] + [
        (f"res{i}.norm{j}", "enc3" if i == 1 else f"res{i - 1}") for i in range(1, blocks + 1) for j in (1, 2)] + [
        ("dec1.norm", f"res{blocks}"), ("dec2.norm", "dec1")]
    kind = {"instance": "instancenorm", "batch": "batchnorm"}.get(norm)
    assert [(x.name, x.kind, x.layer) for x in gen.norm_sites] == ([(n, kind, l) for n, l in sites] if kind else [])
    assert gen.default_layer == f"res{blocks}"
    z = gen.sample_z(2, seed=1)
    with torch.no_grad(), Trace(gen, [l.name for l in gen.layers]) as trace:
        images = gen.forward(z)
        torch_images = reference(z.clone())
    expected = resnet_forward(f64(s), z.double(), blocks, norm, dropout=dropout)
    assert float((images.double() - expected).abs().max()) < 1e-4
    assert float((torch_images.double() - expected).abs().max()) < 1e-4
    assert float(expected.std()) > 0.1 and float((expected.abs() > 0.99).double().mean()) < 0.2
    with torch.no_grad():
        torch.testing.assert_close(gen.double().forward(z.double()), expected, rtol=1e-10, atol=1e-10)
    for info in gen.layers:
        assert trace[info.name].shape[1:] == (info.channels, *info.size)


def test_batch_norm_with_each_images_own_statistics(tmp_path, inputs):
    """batchnorm="sample": what test.py does without --eval (train mode, batch size 1), dropout aside."""
    s = unet_state_dict(7, 2, "batch", seed=5)
    gen = pix2pix(weights=saved(tmp_path, s), inputs=str(inputs), batchnorm="sample")
    assert {x.kind for x in gen.norm_sites} == {"instancenorm"}
    assert all(isinstance(gen.norm_module(x.name), InstanceNorm) for x in gen.norm_sites)
    z = gen.sample_z(3, seed=2)
    expected = unet_forward(f64(s), z.double(), 7, "batch", mode="sample")
    with torch.no_grad():
        images = gen.forward(z)
        eval_images = pix2pix(weights=saved(tmp_path, s), inputs=str(inputs)).forward(z)
    assert float((images.double() - expected).abs().max()) < 1e-4
    assert float((eval_images - images).abs().max()) > 1e-2  # the running statistics are another map
    train_mode = torch_unet(7, 2, "batch", dropout=False)
    train_mode.load_state_dict(s)
    train_mode.train()
    with torch.no_grad():  # torch's batch norm in train mode, one image per batch
        per_image = torch.cat([train_mode(z[i:i + 1].clone()) for i in range(3)])
    assert float((per_image.double() - expected).abs().max()) < 1e-4


def test_module_prefixes_old_instance_norm_buffers_missing_counters_and_safetensors(tmp_path, inputs):
    s = unet_state_dict(7, 2, "instance", seed=6)
    z = None
    want = None
    with torch.no_grad():
        plain = pix2pix(weights=saved(tmp_path, s), inputs=str(inputs))
        z = plain.sample_z(2, seed=0)
        want = plain.forward(z)
        # DataParallel's prefix; pre-0.4 InstanceNorm buffers (dropped as base_model.py's patch drops them)
        legacy = unet_state_dict(7, 2, "instance", seed=6, legacy_instance_buffers=True)
        assert len(legacy) > len(s)
        for state, name in (({"module." + k: v for k, v in s.items()}, "dp.pth"), (legacy, "legacy.pth")):
            gen = pix2pix(weights=saved(tmp_path, state, name), inputs=str(inputs))
            torch.testing.assert_close(gen.forward(z), want, rtol=0, atol=0)
        assert gen.weights_info["ignored_keys"] == len(legacy) - len(s)
        assert pix2pix(weights=str(tmp_path / "dp.pth"), inputs=str(inputs)).weights_info["module_prefix_stripped"]
        save_file(s, str(tmp_path / "g.safetensors"))
        torch.testing.assert_close(pix2pix(weights=str(tmp_path / "g.safetensors"), inputs=str(inputs)).forward(z),
                                   want, rtol=0, atol=0)
        # batch norm written before num_batches_tracked existed (PyTorch < 0.4.1)
        old_bn = unet_state_dict(7, 2, "batch", seed=6, counters=False)
        assert not any(k.endswith("num_batches_tracked") for k in old_bn)
        gen = pix2pix(weights=saved(tmp_path, old_bn, "old_bn.pth"), inputs=str(inputs))
        assert gen.weights_info["norm"] == "batch"
        torch.testing.assert_close(gen.forward(z).double(), unet_forward(f64(old_bn), z.double(), 7, "batch"),
                                   rtol=0, atol=1e-4)


def test_one_channel_generators_read_grayscale_and_show_gray(tmp_path):
    folder = tmp_path / "gray"
    write_images(folder, 3, mode="L")
    s = resnet_state_dict(2, 4, "instance", input_nc=1, output_nc=1, seed=7)
    gen = pix2pix(weights=saved(tmp_path, s), inputs=str(folder), size=16)
    z = gen.sample_z(2, seed=0)
    assert z.shape == (2, 1, 16, 16) and gen.z_dim == 256
    with torch.no_grad():
        images = gen.forward(z)
    assert images.shape == (2, 3, 16, 16)
    torch.testing.assert_close(images[:, 0], images[:, 2], rtol=0, atol=0)
    torch.testing.assert_close(images[:, :1].double(), resnet_forward(f64(s), z.double(), 2, "instance"),
                               rtol=0, atol=1e-4)


def test_wrong_files_and_options_get_clear_errors(tmp_path, inputs):
    s = unet_state_dict(7, 2, "instance")
    del s["model.model.1.model.3.model.5.weight"]
    s["model.model.1.model.1.bias"] = torch.zeros(5)
    s["model.model.1.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as exc:
        pix2pix(weights=saved(tmp_path, s, "bad.pth"), inputs=str(inputs))
    text = str(exc.value)
    assert "pix2pix unet_128 generator (instance norm" in text
    assert "missing keys (1): model.model.1.model.3.model.5.weight" in text
    assert "unexpected keys (1): model.model.1.extra" in text
    assert "model.model.1.model.1.bias: file has (5,), expected (4,)" in text
    with pytest.raises(CheckpointError, match="not a pytorch-CycleGAN-and-pix2pix generator"):
        pix2pix(weights=saved(tmp_path, {"layer1.conv.weight": torch.zeros(2)}, "pggan.pth"), inputs=str(inputs))
    with pytest.raises(CheckpointError, match="2 input channels; gandid reads images with 1 or 3 channels"):
        pix2pix(weights=saved(tmp_path, resnet_state_dict(1, 2, input_nc=2), "two.pth"), inputs=str(inputs))
    good = saved(tmp_path, unet_state_dict(7, 2, "batch"), "good.pth")
    with pytest.raises(CheckpointError, match="needs a weights file"):
        pix2pix(inputs=str(inputs))
    with pytest.raises(ConfigError, match="conditional generator: its samples are input images"):
        pix2pix(weights=good)
    with pytest.raises(ConfigError, match="batchnorm must be one of eval, sample"):
        pix2pix(weights=good, inputs=str(inputs), batchnorm="train")
    with pytest.raises(ConfigError, match="direction must be AtoB or BtoA"):
        pix2pix(weights=good, inputs=str(inputs), direction="AB")
    with pytest.raises(ConfigError, match="order must be one of shuffled, sorted"):
        pix2pix(weights=good, inputs=str(inputs), order="random")
    with pytest.raises(ConfigError, match="a multiple of 128, got 200"):
        pix2pix(weights=good, inputs=str(inputs), size=200)
    resnet = saved(tmp_path, resnet_state_dict(1, 2), "resnet.pth")
    for size in (30, 4):
        with pytest.raises(ConfigError, match=f"a multiple of 4, at least 8, got {size}"):
            pix2pix(weights=resnet, inputs=str(inputs), size=size)
    with pytest.raises(ConfigError, match="size must be a positive integer"):
        pix2pix(weights=resnet, inputs=str(inputs), size=0)
    gen = pix2pix(weights=good, inputs=str(inputs))
    with pytest.raises(ValueError, match=r"inputs must be \(N, 3, 128, 128\) images, got \(2, 3, 64, 64\)"):
        gen.forward(torch.zeros(2, 3, 64, 64))
    with pytest.raises(KeyError, match="unknown layer 'up9'"):
        gen.forward_from("up9", torch.zeros(1), torch.zeros(1, 3, 128, 128))


# -- the inputs ----------------------------------------------------------------------------------------

def expected_input(path, size, half=None, gray=False):
    """The repository's test-time loading with PIL: RGB, (A|B half), (grayscale), bicubic resize, [-1, 1]."""
    img = Image.open(path).convert("RGB")
    if half is not None:
        w, h = img.size
        img = img.crop((0, 0, w // 2, h)) if half == "A" else img.crop((w // 2, 0, w, h))
    if gray:
        img = img.convert("L")
    img = img.resize((size, size), Image.BICUBIC)
    data = torch.tensor(list(img.tobytes()), dtype=torch.float32).view(size, size, -1).permute(2, 0, 1)
    return (data / 255 - 0.5) / 0.5


def test_inputs_are_read_in_a_fixed_order_from_the_folder(tmp_path):
    folder = tmp_path / "inputs"
    write_images(folder, 3)
    write_images(folder / "sub", 2, seed=1, suffix=".JPG")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden").mkdir()
    write_images(folder / ".hidden", 1, seed=2)
    s = resnet_state_dict(1, 2, "instance")
    weights = saved(tmp_path, s)
    gen = pix2pix(weights=weights, inputs=str(folder), size=16, order="sorted")
    files = ["img_00.png", "img_01.png", "img_02.png", "sub/img_00.JPG", "sub/img_01.JPG"]
    assert gen.inputs.files == files and gen.weights_info["input_images"] == 5
    z = gen.sample_z(7, seed=3)
    for i in range(7):
        assert gen.input_file(3, i) == files[i % 5]
        torch.testing.assert_close(z[i], expected_input(folder / files[i % 5], 16), rtol=0, atol=1e-6)
    shuffled = pix2pix(weights=weights, inputs=str(folder), size=16)
    again = pix2pix(weights=weights, inputs=str(folder), size=16)
    order = [shuffled.input_file(0, i) for i in range(5)]
    assert sorted(order) == files  # the first M samples are the M images
    assert order == [again.input_file(0, i) for i in range(5)]  # a function of (seed, i) only
    assert [shuffled.input_file(0, i + 5) for i in range(5)] == order  # then the same order again
    orders = {tuple(shuffled.input_file(seed, i) for i in range(5)) for seed in range(6)}
    assert len(orders) > 1  # seeds choose other orders
    z = shuffled.sample_z(5, seed=4)
    torch.testing.assert_close(shuffled.sample_z(2, seed=4, start=3), z[3:5], rtol=0, atol=0)
    torch.testing.assert_close(again.sample_z(1, seed=4, start=2)[0], z[2], rtol=0, atol=0)


def test_aligned_pairs_give_their_a_or_b_half(tmp_path):
    folder = tmp_path / "facades_test"
    write_images(folder, 2, size=(64, 24))
    weights = saved(tmp_path, resnet_state_dict(1, 2, "instance"))
    for direction, half in (("AtoB", "A"), ("BtoA", "B")):
        gen = pix2pix(weights=weights, inputs=str(folder), size=16, direction=direction, order="sorted")
        torch.testing.assert_close(gen.sample_z(1, 0)[0], expected_input(folder / "img_00.png", 16, half),
                                   rtol=0, atol=1e-6)
    whole = pix2pix(weights=weights, inputs=str(folder), size=16, order="sorted")
    torch.testing.assert_close(whole.sample_z(1, 0)[0], expected_input(folder / "img_00.png", 16), rtol=0, atol=1e-6)
    gray = pix2pix(weights=saved(tmp_path, resnet_state_dict(1, 2, input_nc=1), "g1.pth"), inputs=str(folder), size=16,
                   direction="BtoA", order="sorted")
    torch.testing.assert_close(gray.sample_z(1, 0)[0], expected_input(folder / "img_00.png", 16, "B", gray=True),
                               rtol=0, atol=1e-6)


def test_inputs_folder_errors(tmp_path):
    weights = saved(tmp_path, resnet_state_dict(1, 2, "instance"))
    with pytest.raises(ConfigError, match="the inputs folder .*nowhere' does not exist"):
        pix2pix(weights=weights, inputs=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="is a file; give the folder"):
        pix2pix(weights=weights, inputs=weights)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=r"holds no images \(.jpg, .jpeg, .png"):
        pix2pix(weights=weights, inputs=str(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    gen = pix2pix(weights=weights, inputs=str(tmp_path / "broken"), size=16)
    with pytest.raises(ConfigError, match="cannot read input image .*a.png"):
        gen.sample_z(1, 0)


# -- the plugin and the generator contract ----------------------------------------------------------------

def test_registered_recognised_and_satisfies_the_generator_contract(tmp_path, inputs):
    registry = Registry(load_entry_points=False)
    registry.add_plugin(pix2pix_plugin, "pix2pix")
    assert "pix2pix" in registry.names("generator")
    unet = saved(tmp_path, unet_state_dict(8, 1, "batch"), "unet.pth")
    gen = registry.create("generator", "pix2pix", weights=unet, inputs=str(inputs))
    check_contract(gen, Generator, "generator 'pix2pix'")
    assert isinstance(gen.norm_module("up3.norm"), BatchNorm)
    with pytest.raises(KeyError, match="unknown layer 'up33'; did you mean 'up3'"):
        gen.layer_module("up33")
    with pytest.raises(KeyError, match="unknown norm site 'up3.nrom'; did you mean 'up3.norm'"):
        gen.norm_module("up3.nrom")
    recognise = pix2pix_plugin.recognise
    assert recognise(peek(unet)) == "a pytorch-CycleGAN-and-pix2pix generator (unet_256, batch norm)"
    dp = saved(tmp_path, {"module." + k: v for k, v in resnet_state_dict(9, 2, "instance").items()}, "dp.pth")
    assert recognise(peek(dp)) == "a pytorch-CycleGAN-and-pix2pix generator (resnet_9blocks, instance norm)"
    assert recognise(peek(saved(tmp_path, {"layer1.conv.weight": torch.zeros(2)}, "other.pth"))) is None


def test_auto_detection_and_convert_with_every_first_party_generator(tmp_path, inputs):
    import gandid_plugins.generators.pggan
    import gandid_plugins.generators.stylegan2
    import gandid_plugins.generators.stylegan2_ada
    from gandid.convert import convert
    from gandid.formats import detect_generator

    registry = Registry(load_entry_points=False)
    for module in (gandid_plugins.generators.pggan, gandid_plugins.generators.stylegan2, gandid_plugins.generators.stylegan2_ada, pix2pix_plugin):
        registry.add_plugin(module, module.__name__)
    for state in (unet_state_dict(7, 2, "batch"), resnet_state_dict(6, 2, "instance", dropout=True)):
        path = saved(tmp_path, state, "latest_net_G.pth")
        name, found = detect_generator(registry, path)
        assert name == "pix2pix" and "pytorch-CycleGAN-and-pix2pix" in found
        done = convert(path, tmp_path / "g.safetensors", options={"inputs": str(inputs), "size": 128},
                       registry=registry, force=True)
        assert done["generator"] == "pix2pix" and done["max_difference"] == 0
        assert detect_generator(registry, tmp_path / "g.safetensors")[0] == "pix2pix"


# -- the DID engine -----------------------------------------------------------------------------------------

def edit_fn(iv):
    """r' = r - α m (r - k) at the units, in float64 (α, k as the float32 numbers an Intervention holds)."""
    def fn(x):
        c = x.shape[1]
        a = torch.zeros(c, dtype=x.dtype)
        a[list(iv.units)] = torch.as_tensor(iv.alpha, dtype=torch.float32).to(x.dtype)
        m = a.view(1, c, 1, 1) * (1 if iv.region is None else iv.region.to(x.dtype))
        k = torch.zeros(c, dtype=x.dtype)
        if iv.value is not None:
            k[list(iv.units)] = torch.as_tensor(iv.value, dtype=torch.float32).to(x.dtype)
        return x - m * (x - k.view(1, c, 1, 1))
    return fn


def naive_arms(forward, iv, controlled):
    """The four arms as four passes of the independent forward, recording and replaying the instance
    norms' (mean, std) at the controlled sites, as GAN Dissection-style hooks would."""
    def run(edits=None, stats_in=None):
        record = {}
        return forward(edit=edits, stats_in=stats_in, record=record), record

    original, rec = run()
    intervened, rec_iv = run({iv.layer: edit_fn(iv)})
    fixed, _ = run({iv.layer: edit_fn(iv)}, {k: rec[k] for k in controlled})
    swapped, _ = run(None, {k: rec_iv[k] for k in controlled})
    return original, intervened, fixed, swapped


CASES = [("unet", "down3", "ablate"), ("unet", "up4", "insert_region"), ("unet", "up3", "ablate"),
         ("unet", "down7", "ablate"), ("resnet", "res2", "ablate"), ("resnet", "enc2", "insert_region")]


@pytest.mark.parametrize("arch, layer, kind", CASES)
def test_did_arms_on_instance_norm_equal_naive_passes_with_recorded_statistics(arch, layer, kind, tmp_path, inputs):
    if arch == "unet":
        s = unet_state_dict(7, 2, "instance", seed=11)
        gen = pix2pix(weights=saved(tmp_path, s), inputs=str(inputs)).double()
        z = gen.sample_z(3, seed=5)

        def forward(**kw):
            return unet_forward(f64(s), z, 7, "instance", **kw)
    else:
        s = resnet_state_dict(3, 4, "instance", seed=12)
        gen = pix2pix(weights=saved(tmp_path, s), inputs=str(inputs), size=32).double()
        z = gen.sample_z(3, seed=5)

        def forward(**kw):
            return resnet_forward(f64(s), z, 3, "instance", **kw)
    iv = random_intervention(gen, layer, kind, 2)
    controlled = BetaControl().resolve(gen, layer)
    names = [l.name for l in gen.layers]
    after = set(names[names.index(layer):])
    assert controlled == [x.name for x in gen.norm_sites if x.layer in after] and controlled
    expected = naive_arms(forward, iv, controlled)
    one_pass = counterfactuals(gen, z, iv)
    for arms in (one_pass, counterfactuals(gen, z, iv, memory_budget=1), counterfactuals_naive(gen, z, iv)):
        assert arms.sites == controlled
        for name, want in zip(ARMS, expected):
            torch.testing.assert_close(getattr(arms, name), want, rtol=1e-9, atol=1e-9, msg=name)
    # borrowing mattered: with the original statistics the intervened image is another one
    assert float((one_pass.intervened_fixed_beta - one_pass.intervened).abs().max()) > 1e-3
    assert float(one_pass.did.abs().max()) > 1e-3


def test_did_in_float32_and_record_replay_of_statistics(tmp_path, inputs):
    gen = pix2pix(weights=saved(tmp_path, unet_state_dict(7, 2, "instance", seed=13)), inputs=str(inputs))
    z = gen.sample_z(2, seed=0)
    iv = Intervention("up4", [1, 3, 5])
    arms, naive = counterfactuals(gen, z, iv), counterfactuals_naive(gen, z, iv)
    for name in ARMS:
        torch.testing.assert_close(getattr(arms, name), getattr(naive, name), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        plain, stats = run_with_betas(gen, z, record=True)
    assert set(stats) == {x.name for x in gen.norm_sites}
    assert stats["down2.norm"].shape == (2, 2, 4) and stats["up2.norm"].shape == (2, 2, 2)
    torch.testing.assert_close(plain, arms.original, rtol=1e-5, atol=1e-5)
    assert counterfactuals(gen, z, Intervention("up4", [])).did.abs().max() == 0


def test_batch_norm_in_eval_mode_is_not_controllable(tmp_path, inputs):
    from gandid_plugins.analyses.did import DID

    gen = pix2pix(weights=saved(tmp_path, unet_state_dict(7, 2, "batch", seed=14)), inputs=str(inputs))
    z = gen.sample_z(2, seed=0)
    assert BetaControl().resolve(gen, "down3") == []
    arms = counterfactuals(gen, z, Intervention("down3", [0, 2]))
    assert arms.sites == []
    torch.testing.assert_close(arms.intervened_fixed_beta, arms.intervened, rtol=0, atol=0)
    torch.testing.assert_close(arms.original_swapped_beta, arms.original, rtol=0, atol=0)
    assert float(arms.did.abs().max()) == 0 and float((arms.intervened - arms.original).abs().max()) > 1e-3
    with pytest.raises(ConfigError, match="norm site 'up3.norm' is a batchnorm site, which the DID engine does not "
                                          "control: batch norm in eval mode normalises with the running statistics"):
        BetaControl(sites=["up3.norm"]).resolve(gen, "down3")
    with pytest.raises(KeyError, match="unknown controllable norm site 'up3.norm'"):
        run_with_betas(gen, z, (), {"up3.norm": torch.zeros(2, 2, 8)})
    with pytest.raises(ValueError, match="did: norm site 'up3.norm' in sites is a batchnorm site"):
        DID(sites=["up3.norm"]).check(gen, None, ["down3"])


def test_forward_from_encodes_repeated_rows_once(tmp_path, inputs):
    gen = pix2pix(weights=saved(tmp_path, unet_state_dict(7, 2, "instance", seed=15)), inputs=str(inputs))
    z = gen.sample_z(3, seed=1)
    seen = []
    handle = gen.layer_module("down1").register_forward_hook(lambda m, i, o: seen.append(len(o)))
    try:
        with torch.no_grad():
            want = gen.forward(z).repeat(4, 1, 1, 1)
            feats = features_at(gen, z, "up3")
            seen.clear()
            got = gen.forward_from("up3", feats.repeat(4, 1, 1, 1), z.repeat(4, 1, 1, 1))
            assert seen == [3]  # the skips of 12 rows from 3 distinct inputs
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            seen.clear()  # a recording at an encoder site needs every row: no shortcut then
            record = {}
            with norm_overrides(gen, {"down2.norm": lambda st: record.setdefault("s", st)}):
                got = gen.forward_from("up3", feats.repeat(4, 1, 1, 1), z.repeat(4, 1, 1, 1))
            assert seen == [12] and record["s"].shape == (12, 2, 4)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    finally:
        handle.remove()


def test_per_unit_and_variants_take_image_latents(tmp_path, inputs):
    gen = pix2pix(weights=saved(tmp_path, unet_state_dict(7, 2, "instance", seed=16)), inputs=str(inputs)).double()
    z = gen.sample_z(2, seed=2)
    chunks = list(per_unit(gen, z, "up3", units=[0, 2, 3]))
    images = torch.cat([block for _, block in chunks])
    ivs = [Intervention("up3", [u]) for u in (0, 2, 3)]
    for i, iv in enumerate(ivs):
        want, _ = run_with_betas(gen, z, iv)
        torch.testing.assert_close(images[i], want, rtol=1e-10, atol=1e-10)
    got = torch.cat([block for _, block in variants(gen, z, ivs)])
    torch.testing.assert_close(got, images, rtol=1e-10, atol=1e-10)


# -- the analyses ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_dissect_ace_did_entangle_run_end_to_end(tmp_path, inputs):
    import json

    import gandid_plugins.analyses.ace
    import gandid_plugins.analyses.did
    import gandid_plugins.analyses.dissect
    import gandid_plugins.analyses.entangle
    from gandid.config import RunConfig
    from gandid.runner import run
    from gandid.testing import BrightnessSegmenter, registry_with

    weights = saved(tmp_path, unet_state_dict(7, 2, "instance", seed=17))
    reg = registry_with(pix2pix_plugin, gandid_plugins.analyses.dissect, gandid_plugins.analyses.ace, gandid_plugins.analyses.did,
                        gandid_plugins.analyses.entangle, segmenters={"bright": BrightnessSegmenter})
    out = tmp_path / "run"
    cfg = RunConfig(generator="pix2pix", weights=weights, generator_options={"inputs": str(inputs)},
                    segmenter="bright", analysis=["dissect", "ace", "did", "entangle"], samples=4, batch_size=2,
                    device="cpu", out=str(out), layer=["up3"],
                    analysis_options={"dissect": {"quantile": 0.9, "fit_samples": 4},
                                      "ace": {"samples": 4, "top_k": 2, "alpha_steps": 2, "alpha_samples": 2,
                                              "context_locations": 2, "curve_ks": [1, 2]},
                                      "did": {"top_k": 2, "resamples": 200, "panels": 1}})
    result = run(cfg, registry=reg)
    assert result.status == "completed", result.errors
    did = json.loads((out / "did.json").read_text())
    assert did["layer"] == "up3" and did["site_kinds"] == ["instancenorm"] and "uncontrolled" not in did
    assert did["classes"] and did["sites"] == ["up2.norm"]  # up3.norm makes up3; after it only up2.norm normalises
    dissect = json.loads((out / "dissect.json").read_text())
    assert "up3" in json.dumps(dissect)
    record = json.loads((out / "run.json").read_text())
    assert record["weights"]["generator"]["architecture"] == "unet_128"
    assert record["weights"]["generator"]["input_images"] == 5


def test_did_on_a_batch_norm_model_says_there_is_nothing_to_borrow(tmp_path, inputs):
    from gandid.testing import BrightnessSegmenter, run_analysis
    from gandid_plugins.analyses.ace import ACE
    from gandid_plugins.analyses.did import DID

    gen = pix2pix(weights=saved(tmp_path, resnet_state_dict(2, 4, "batch", seed=19)), inputs=str(inputs), size=32)
    out = tmp_path / "run"
    common = dict(generator=gen, segmenter=BrightnessSegmenter(), samples=4, layers=["res1"])
    ace = run_analysis(ACE(samples=4, top_k=2, alpha_steps=2, alpha_samples=2, context_locations=2, curve_ks=[1, 2]),
                       out, name="ace", **common)
    did = run_analysis(DID(top_k=2, samples=4, resamples=200, panels=1), out, name="did", results={"ace": ace},
                       **common)
    assert did["sites"] == [] and did["site_kinds"] == []
    assert did["uncontrolled"]["sites"] == ["res2.norm1", "res2.norm2", "dec1.norm", "dec2.norm"]
    assert did["uncontrolled"]["kinds"] == ["batchnorm"]
    assert did["classes"]  # the ablations ran (and only the ablation itself changed anything)
    for entry in did["classes"].values():
        assert all(v["mean"] == 0 for v in entry["area_did"].values()) and entry["pixel_did_mean_abs"] == 0
        assert entry["ablation"]["remaining"] is not None
    findings = " ".join(str(getattr(f, "html", f)) for f in DID().report_findings(did))
    assert "batch norm (eval mode)" in findings and "the DID is 0 by construction" in findings
    assert "in-paint" not in findings
    section = DID().report_section(did, out)
    assert "the same for every sample" in section
    from gandid_plugins.analyses.entangle import Entangle

    taxonomy = run_analysis(Entangle(), out, name="entangle", results={"ace": ace, "did": did}, **common)
    assert set(taxonomy["classes"]) == set(did["classes"])

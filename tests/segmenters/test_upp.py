"""The `upp` segmenter (GAN Dissection's Unified Perceptual Parsing model) against an independent float64
re-implementation on random-weight files in the published layout (at 1/16 width), and PrRoIPool against
numerical integration."""
import json
import shutil

import numpy as np
import pytest
import torch
from segmenter_files import (
    UPP_VOCAB,
    components,
    images,
    ref_prroi,
    ref_upp_raw,
    ref_upp_segment,
    resnet_state,
    semseg_decoder_state,
    write_upp_folder,
)
from torch.nn import functional as F

from gandid.errors import CheckpointError, UnknownNameError
from gandid.model import Segmenter
from gandid_plugins.segmenters import segnets
from gandid_plugins.segmenters import upp as upp_module
from gandid_plugins.segmenters.upp import quad_planes, upp


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("segmodel") / "upp-resnet50-upernet"
    enc, dec = write_upp_folder(path)
    return path, enc, dec


# --- PrRoIPool ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w", [(1, 1), (2, 2), (3, 5), (7, 4), (8, 8)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
@pytest.mark.slow
def test_prroi_pool_is_the_integral_of_the_bilinear_surface(h, w, bins):
    x = torch.randn(2, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(h * 10 + w))
    torch.testing.assert_close(segnets.prroi_pool_whole(x, bins), ref_prroi(x, bins), rtol=1e-12, atol=1e-12)
    # float32 (what the model runs in) to float32 rounding
    torch.testing.assert_close(segnets.prroi_pool_whole(x.float(), bins), ref_prroi(x, bins).float(),
                               rtol=1e-5, atol=1e-6)


def test_prroi_pool_against_adaptive_quadrature():
    """An independent check of the reference's exactness claim: scipy's adaptive 2-D quadrature of the
    interpolated surface, for two bins of a 3 x 4 map."""
    from scipy import integrate
    from scipy.interpolate import RegularGridInterpolator

    x = torch.randn(1, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    padded = np.pad(x[0, 0].numpy(), 1)  # zero one pixel beyond every edge: the surface fades to 0 there
    surface = RegularGridInterpolator((np.arange(-1, 4), np.arange(-1, 5)), padded)
    pooled = segnets.prroi_pool_whole(x, 3)
    for i, j in [(0, 0), (2, 1)]:
        y0, y1, x0, x1 = i * 3 / 3, (i + 1) * 3 / 3, j * 4 / 3, (j + 1) * 4 / 3
        value, _ = integrate.dblquad(lambda xx, yy: surface([[yy, xx]])[0], y0, y1, x0, x1, epsabs=1e-11)
        assert float(pooled[0, 0, i, j]) == pytest.approx(value / ((y1 - y0) * (x1 - x0)), abs=1e-9)


def test_prroi_pool_is_not_average_pooling_and_is_differentiable():
    x = torch.rand(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    # the whole-map bin counts the first row and column half and ends on a fade to zero
    assert not torch.allclose(segnets.prroi_pool_whole(x, 1), F.adaptive_avg_pool2d(x, 1))
    ones = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    # per axis the tents integrate over [0, 4] to 0.5 (pixel 0, half outside) + 1 + 1 + 1
    assert float(segnets.prroi_pool_whole(ones, 1)) == pytest.approx(3.5 ** 2 / 16)
    assert torch.autograd.gradcheck(lambda t: segnets.prroi_pool_whole(t, 3), (x,))


# --- the segmenter ------------------------------------------------------------------------------------
def no_label_as_minus_one(labels):
    """gandissect's planes (0: no label) in gandid's convention: -1 where a plane after the objects has none."""
    labels = labels.clone()
    labels[:, 1:][labels[:, 1:] == 0] = -1
    return labels



@pytest.mark.slow
def test_segments_like_the_reference(folder):
    path, enc, dec = folder
    seg = upp(weights=str(path), sizes=[64, 96], downsample=2)
    assert isinstance(seg, Segmenter)
    info = seg.weights_info  # what run.json records
    assert info["epoch"] == 40 and info["encoder_arch"] == "resnet50" and info["width_divisor"] == 16
    floats = sum(v.is_floating_point() for v in [*enc.values(), *dec.values()])  # not BN step counters
    assert info["stored_dtypes"] == {"float32": floats} and info["loaded_as"] == "float32"
    imgs = images(3, 64, seed=1)
    expected, pred, parts, _ = ref_upp_segment(enc, dec, UPP_VOCAB, imgs, sizes=(64, 96), downsample=2)
    expected = no_label_as_minus_one(expected)
    out32 = seg.segment(imgs)
    assert out32.shape == (3, 5, 32, 32) and out32.dtype == torch.int64
    # not a degenerate case: several objects, materials, parts and quads appear
    assert len(torch.unique(expected[:, 0])) >= 4 and len(torch.unique(expected[:, 1])) >= 2
    assert (expected[:, 2] > 0).any() and (expected[:, 3] > 0).any() and (expected[:, 2] == -1).any()
    # the layout check: in float64 the plugin and the reference agree to rounding, labels exactly
    seg64 = upp(weights=str(path), sizes=[64, 96], downsample=2, dtype="float64")
    assert torch.equal(seg64.segment(imgs), expected)
    probs = seg64.probabilities(imgs)
    torch.testing.assert_close(probs["object"], pred["object"] / 2, rtol=0, atol=1e-10)
    torch.testing.assert_close(probs["material"], pred["material"] / 2, rtol=0, atol=1e-10)
    for i, owner in enumerate(["sky", "building", "person"]):
        torch.testing.assert_close(probs["part"][i], parts[owner] / 2, rtol=0, atol=1e-10)
    # float32: probabilities to float32 accuracy, and the same labels wherever the reference's best two
    # object classes are not within that accuracy of each other
    p32 = seg.probabilities(imgs)
    assert float((p32["object"].double() - pred["object"] / 2).abs().max()) < 1e-4
    top = (pred["object"] / 2).topk(2, 1).values
    clear = (top[:, 0] - top[:, 1]) > 1e-3
    assert torch.equal(out32[:, 0][clear], expected[:, 0][clear])


@pytest.mark.slow
def test_undivided_single_size_full_resolution(folder):
    path, enc, dec = folder
    seg = upp(weights=str(path), sizes=[64], segdiv="undivided", dtype="float64")
    imgs = images(2, 64, seed=2)
    expected, *_ = ref_upp_segment(enc, dec, UPP_VOCAB, imgs, sizes=(64,), downsample=1, quad=False)
    expected = no_label_as_minus_one(expected)
    out = seg.segment(imgs)
    assert out.shape == (2, 3, 64, 64)
    assert torch.equal(out, expected)
    assert len(seg.labels) == 1 + 11 + 4 + 5


@pytest.mark.slow
def test_batches_give_the_same_labels(folder):
    path, _, _ = folder
    imgs = images(5, 64, seed=3)
    whole = upp(weights=str(path), sizes=[64], batch_size=8).segment(imgs)
    torch.testing.assert_close(upp(weights=str(path), sizes=[64], batch_size=2).segment(imgs), whole)


def test_vocabulary_and_categories(folder):
    path, _, _ = folder
    seg = upp(weights=str(path))
    objects = UPP_VOCAB["object"][1:]
    quads = [f"{o}-{s}" for s in "tlbr" for o in objects]
    materials = ["brick", "glass (material)", "hair (material)", "wood"]
    parts = ["cloud", "roof", "head", "hair (part)", "leg"]  # door and window are objects; car's parts unused
    assert seg.labels == ["unlabelled"] + objects + quads + materials + parts
    assert seg.categories["glass"] == "object" and seg.categories["glass (material)"] == "material"
    assert seg.categories["tree-l"] == "part" and seg.categories["hair (part)"] == "part"
    assert set(seg.background) == {"wall", "floor", "sky", "road"}
    assert upp(weights=str(path), background=["wall", "wood"]).background == ("wall", "wood")  # a material too
    with pytest.raises(UnknownNameError, match="upp background class 'flor'; did you mean 'floor'"):
        upp(weights=str(path), background=["flor"])
    # numbering as gandissect's get_label_and_category_names (names aside)
    from segmenter_files import upp_vocabulary
    reference, _ = upp_vocabulary(UPP_VOCAB, quad=True)
    assert [cat for _, cat in reference] == [seg.categories[name] for name in seg.labels]


@pytest.mark.slow
def test_class_scores_are_the_soft_pixel_fractions(folder):
    path, enc, dec = folder
    seg = upp(weights=str(path), sizes=[64, 96], downsample=2, dtype="float64")
    imgs = images(2, 64, seed=4).double()
    pred, parts = ref_upp_raw(enc, dec, UPP_VOCAB, imgs, (64, 96), 2)
    obj, mat = pred["object"] / 2, pred["material"] / 2
    parts = {k: v / 2 for k, v in parts.items()}
    n = 11
    L = seg.labels.index
    mean = lambda t: t.flatten(1).mean(1)  # noqa: E731
    # a plain object; an object that is also a part of building (door: building part index 2)
    torch.testing.assert_close(seg.class_scores(imgs, L("tree")), mean(obj[:, 4]))
    torch.testing.assert_close(seg.class_scores(imgs, L("door")), mean(obj[:, 7] + obj[:, 5] * parts["building"][:, 2]))
    # a material and a part that is no object
    torch.testing.assert_close(seg.class_scores(imgs, L("glass (material)")), mean(mat[:, 2]))
    torch.testing.assert_close(seg.class_scores(imgs, L("hair (part)")), mean(obj[:, 6] * parts["person"][:, 2]))
    # a quad label: the object's probability inside that quarter of its own segments
    labels = seg.segment(imgs)
    inside = (labels[:, 3] == L("building-b")).double()
    torch.testing.assert_close(seg.class_scores(imgs, L("building-b")), mean(obj[:, 5] * inside))
    assert L("building-b") == 5 + 3 * n
    torch.testing.assert_close(seg.class_scores(imgs, 0), torch.zeros(2, dtype=torch.float64))
    # differentiable with respect to the images
    x = imgs.clone().requires_grad_(True)
    seg.class_scores(x, L("sky")).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="out of range"):
        seg.class_scores(imgs, len(seg.labels))


def test_quad_division_matches_flood_fill_components():
    g = torch.Generator().manual_seed(0)
    planes = (torch.rand(3, 20, 24, generator=g) * 4).long()  # many small components, diagonal contacts
    planes[0, 5:15, 3:20] = 2  # and one big one
    out = quad_planes(planes, n=10)
    for i in range(3):
        tb, lr = torch.zeros(20, 24, dtype=torch.long), torch.zeros(20, 24, dtype=torch.long)
        for v, pixels in components(planes[i]):
            rows, cols = [p[0] for p in pixels], [p[1] for p in pixels]
            vmid, hmid = (min(rows) + max(rows) + 1) // 2, (min(cols) + max(cols) + 1) // 2
            for y, x in pixels:
                tb[y, x] = v + (10 if y < vmid else 30)
                lr[y, x] = v + (20 if x < hmid else 40)
        assert torch.equal(out[i, 0], tb) and torch.equal(out[i, 1], lr)


# --- refusing wrong folders before any work -----------------------------------------------------------


def copy(folder, tmp_path, name="upp-resnet50-upernet"):
    target = tmp_path / name
    shutil.copytree(folder[0], target)
    return target


def test_missing_files_are_named(folder, tmp_path):
    target = copy(folder, tmp_path)
    (target / "encoder_epoch_40.pth").unlink()
    with pytest.raises(CheckpointError, match=r"has no encoder checkpoint encoder_epoch_N\.pth .*decoder_epoch_40\.pth"):
        upp(weights=str(target))
    target = copy(folder, tmp_path, "b")
    (target / "labels.json").unlink()
    with pytest.raises(CheckpointError, match=r"label vocabulary .*labels\.json is missing"):
        upp(weights=str(target))
    with pytest.raises(CheckpointError, match="needs a weights folder"):
        upp()
    with pytest.raises(CheckpointError, match="is a file"):
        upp(weights=str(folder[0] / "encoder_epoch_40.pth"))


def test_labels_that_do_not_match_the_decoder(folder, tmp_path):
    target = copy(folder, tmp_path)
    vocab = json.loads((target / "labels.json").read_text())
    vocab["material"].append("plastic")
    (target / "labels.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError) as exc:
        upp(weights=str(target))
    assert "lists 6 materials" in str(exc.value)
    assert "decoder_epoch_40.pth's material_head.1.weight outputs 5 classes" in str(exc.value)
    vocab = dict(UPP_VOCAB, object_part={**UPP_VOCAB["object_part"], "sky": ["-", "cloud", "sun"]})
    (target / "labels.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match=r"lists 15 parts .* outputs 14 classes"):
        upp(weights=str(target))
    (target / "labels.json").write_text(json.dumps({"object": ["-", "wall"]}))
    with pytest.raises(CheckpointError, match="not a UPP label vocabulary"):
        upp(weights=str(target))


@pytest.mark.slow
def test_decoder_or_encoder_of_another_architecture(folder, tmp_path):
    target = copy(folder, tmp_path)
    torch.save(semseg_decoder_state("ppm_deepsup", 128, 150, 16), target / "decoder_epoch_40.pth")
    with pytest.raises(CheckpointError, match=r"decoder_epoch_40\.pth is not a UPP decoder: it holds a ppm_deepsup"):
        upp(weights=str(target))
    target = copy(folder, tmp_path, "b")
    torch.save(resnet_state("resnet18", 16), target / "encoder_epoch_40.pth")
    with pytest.raises(CheckpointError, match=r"encoder_epoch_40\.pth is not a UPP encoder: it looks like resnet18"):
        upp(weights=str(target))
    target = copy(folder, tmp_path, "c")
    state = torch.load(target / "decoder_epoch_40.pth")
    state["fpn_out.1.0.0.weight"] = state["fpn_out.1.0.0.weight"][:, :, :1, :1].clone()
    del state["ppm_conv.3.1.running_var"]
    torch.save(state, target / "decoder_epoch_40.pth")
    with pytest.raises(CheckpointError) as exc:
        upp(weights=str(target))
    message = str(exc.value)
    assert "decoder_epoch_40.pth" in message and "missing keys (1): ppm_conv.3.1.running_var" in message
    assert "fpn_out.1.0.0.weight: file has (32, 32, 1, 1), expected (32, 32, 3, 3)" in message


def test_options_are_checked(folder):
    path = str(folder[0])
    with pytest.raises(ValueError, match="segdiv"):
        upp(weights=path, segdiv="halves")
    with pytest.raises(ValueError, match="sizes"):
        upp(weights=path, sizes=[])
    with pytest.raises(ValueError, match="downsample"):
        upp(weights=path, downsample=0)
    with pytest.raises(ValueError, match="dtype"):
        upp(weights=path, dtype="float16")
    with pytest.raises(ValueError, match=r"part_objects \['tree'\] have no part list"):
        upp(weights=path, part_objects=["tree"])


def test_registered_as_a_segmenter():
    from gandid.testing import registry_with

    reg = registry_with(upp_module)
    entry = reg.get("segmenter", "upp")
    assert "Unified Perceptual Parsing" in entry.description


@pytest.mark.slow
def test_gandid_run_pggan_with_upp_end_to_end(folder, tmp_path):
    """`gandid run --generator pggan --weights G.pth --segmenter upp --seg-weights DIR` on random-weight files,
    through the command line (installed plugins, the small sizes in a config file): every analysis
    completes on UPP's five label planes, and dissection reports per category."""
    import json

    from pggan_files import make_state_dict

    from gandid.cli import main

    path, _, _ = folder
    torch.save(make_state_dict(64), tmp_path / "G.pth")
    config = tmp_path / "small.toml"
    config.write_text("""samples = 8
batch_size = 8
device = "cpu"
analysis = ["dissect", "ace", "did", "entangle"]
[segmenter_options]
sizes = [64]
[analysis_options.dissect]
fit_samples = 8
quantile = 0.9
[analysis_options.ace]
samples = 4
top_k = 2
alpha_steps = 1
min_area = 0.05
context_locations = 2
[analysis_options.did]
top_k = 2
samples = 4
[analysis_options.entangle]
top_share_units = 2
""")
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), "--generator", "pggan", "--weights", str(tmp_path / "G.pth"),
                 "--segmenter", "upp", "--seg-weights", str(path), "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["config"]["segmenter"] == "upp"
    dissect = json.loads((out / "dissect.json").read_text())
    assert dissect["category_conditioned"] and set(dissect["categories"]) >= {"object", "material"}
    ace = json.loads((out / "ace.json").read_text())
    assert ace["classes"], "some UPP class covers 5 % of these images"
    assert (out / "entangle.json").exists() and (out / "report.html").exists()


@pytest.mark.slow
def test_a_published_width_folder_segments_like_the_reference(tmp_path):
    """upp-resnet50-upernet at its published width (as downloaded; the other tests use 1/16): loaded
    from its files and run, against the float64 reference."""
    path = tmp_path / "upp-resnet50-upernet"
    enc, dec = write_upp_folder(path, div=1)
    assert tuple(enc["layer4.2.conv3.weight"].shape) == (2048, 512, 1, 1)  # upstream's last bottleneck
    seg = upp(weights=str(path), sizes=[48], segdiv="undivided", dtype="float64")
    assert "width_divisor" not in seg.weights_info and seg.weights_info["encoder_arch"] == "resnet50"
    imgs = images(1, 48, seed=5)
    expected, *_ = ref_upp_segment(enc, dec, UPP_VOCAB, imgs, sizes=(48,), downsample=1, quad=False)
    assert torch.equal(seg.segment(imgs), no_label_as_minus_one(expected))

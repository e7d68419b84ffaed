"""The `onnx` segmenter on small conv nets exported with torch.onnx.export, checked against the same
torch nets run on inputs prepared independently (numpy, and Pillow for resizing)."""
import json
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gandid.contracts import check_contract
from gandid.errors import CheckpointError, ConfigError, UnknownNameError
from gandid.model import Segmenter
from gandid_plugins.segmenters import onnx_segmenter
from gandid_plugins.segmenters.hf_segmenter import NotDifferentiableError
from gandid_plugins.segmenters.onnx_segmenter import OnnxSegmenter
from gandid_plugins.worlds.toyroom.world import render_batch

LABELS = ["wall", "floor", "chair", "table", "sky"]
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def ort():
    return pytest.importorskip("onnxruntime", reason='the onnx extra is not installed (pip install -e ".[onnx]")')


@pytest.fixture(scope="module")
def onnx_pkg():
    # torch.onnx.export's TorchScript exporter writes the file through the onnx package
    return pytest.importorskip("onnx", reason="exporting the test models needs the onnx package")


class TinySegNet(nn.Module):
    """(N, 3, H, W) -> logits (N, 5, H/2, W/2); ``nhwc``: takes (N, H, W, 3) and gives (N, H/2, W/2, 5)."""

    def __init__(self, nhwc=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.nhwc = nhwc
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(16, len(LABELS), 1))
        with torch.no_grad():  # a classifier with a spread, so that several classes win somewhere
            self.body[-1].weight.normal_(0, 1)

    def forward(self, x):
        if self.nhwc:
            return self.body(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.body(x)


def export(net, path, example, dynamic):
    """The TorchScript exporter (dynamo=False: the torch.export one needs onnxscript, not installed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (example,), str(path), dynamo=False, input_names=["pixel_values"],
                          output_names=["logits"], dynamic_axes=dynamic, opset_version=17)
    return path


@pytest.fixture(scope="module")
def models(ort, onnx_pkg, tmp_path_factory):
    """NCHW net at a fixed 64 x 64 size, any batch; NHWC net with a fixed batch of 1 and any size."""
    root = tmp_path_factory.mktemp("onnx")
    nchw, nhwc = TinySegNet(), TinySegNet(nhwc=True, seed=1)
    a = export(nchw, root / "nchw.onnx", torch.randn(2, 3, 64, 64), {"pixel_values": {0: "n"}, "logits": {0: "n"}})
    b = export(nhwc, root / "nhwc.onnx", torch.randn(1, 48, 48, 3),
               {"pixel_values": {1: "h", 2: "w"}, "logits": {1: "h2", 2: "w2"}})
    labels = root / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return {"root": root, "nchw": (a, nchw), "nhwc": (b, nhwc), "labels": labels}


def renders(n, start=0):
    images, _ = render_batch(range(start, start + n))
    return torch.from_numpy(images)


def reference(net, x01, size):
    """The torch net on ImageNet-normalised numpy input (N, 3, H, W), logits upsampled to ``size``."""
    inp = torch.from_numpy(((x01 - MEAN[:, None, None]) / STD[:, None, None]).astype(np.float32))
    with torch.no_grad():
        return F.interpolate(net(inp), size=size, mode="bilinear", align_corners=False)


def assert_same_labels(labels, ref_logits, margin=1e-3):
    top2 = ref_logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > margin
    assert torch.equal(labels[clear], ref_logits.argmax(1)[clear])
    assert clear.float().mean() > 0.95


@pytest.mark.slow
def test_nchw_model_segments_as_the_torch_model(models):
    path, net = models["nchw"]
    seg = OnnxSegmenter(weights=str(path), labels=str(models["labels"]), batch_size=3)
    check_contract(seg, Segmenter, "onnx segmenter")
    assert seg.labels == LABELS and seg.background == ("wall", "floor", "sky") and seg.differentiable is False
    assert seg.size == (64, 64) and seg.weights_info["input_shape"] == ["n", 3, 64, 64]
    x = renders(5)
    ref = reference(net, (x.double().numpy() + 1) / 2, (64, 64))
    labels = seg.segment(x)
    assert labels.shape == (5, 64, 64) and labels.dtype == torch.int64 and len(labels.unique()) >= 3
    assert_same_labels(labels, ref)
    torch.testing.assert_close(seg.upsampled_logits(x), ref, atol=1e-4, rtol=0)
    low = OnnxSegmenter(weights=str(path), labels=str(models["labels"]), resolution=16)
    assert_same_labels(low.segment(x), reference(net, (x.double().numpy() + 1) / 2, (16, 16)))


def test_images_are_resized_to_the_models_size(models):
    from PIL import Image

    path, net = models["nchw"]
    seg = OnnxSegmenter(weights=str(path), labels=str(models["labels"]))
    x = F.interpolate(renders(2, start=3), size=(96, 80), mode="nearest")  # 96 x 80 images, a 64 x 64 model
    x01 = ((x.numpy() + 1) / 2).astype(np.float32)
    small = np.stack([np.stack([np.asarray(Image.fromarray(c, mode="F").resize((64, 64), Image.BILINEAR)) for c in img])
                      for img in x01]).astype(np.float64)
    ref = reference(net, small, (96, 80))
    assert_same_labels(seg.segment(x), ref)
    torch.testing.assert_close(seg.upsampled_logits(x), ref, atol=1e-4, rtol=0)


def test_nhwc_model_with_0_255_range_and_a_fixed_batch(models, tmp_path):
    path, net = models["nhwc"]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": LABELS, "categories": {"chair": "furniture"}, "background": ["floor"]}))
    mean, std = [120.0, 110.0, 100.0], [60.0, 58.0, 62.0]
    seg = OnnxSegmenter(weights=str(path), labels=str(labels), layout="NHWC", range="0-255", mean=mean, std=std,
                        bgr=True, batch_size=4)
    assert seg.batch_size == 1 and seg.size is None  # the graph's batch is 1; it takes any image size
    assert seg.background == ("floor",) and seg.categories["chair"] == "furniture" and seg.categories["sky"] == "object"
    x = renders(3, start=9)
    v = (x.double().numpy() + 1) * 127.5
    inp = ((v - np.array(mean)[:, None, None]) / np.array(std)[:, None, None])[:, ::-1]  # BGR
    with torch.no_grad():
        out = net(torch.from_numpy(inp.transpose(0, 2, 3, 1).astype(np.float32))).permute(0, 3, 1, 2)
    ref = F.interpolate(out, size=(64, 64), mode="bilinear", align_corners=False)
    assert_same_labels(seg.segment(x), ref)
    torch.testing.assert_close(seg.upsampled_logits(x), ref, atol=1e-4, rtol=0)


def test_a_fixed_batch_of_two_takes_any_number_of_images(models):
    _, net = models["nchw"]
    path = export(net, models["root"] / "batch2.onnx", torch.randn(2, 3, 64, 64), None)
    seg = OnnxSegmenter(weights=str(path), labels=str(models["labels"]), batch_size=8)
    assert seg.batch_size == 2 and seg.weights_info["input_shape"] == [2, 3, 64, 64]
    x = renders(3, start=30)  # two pieces, the second filled up with a copy of the last image
    ref = reference(net, (x.double().numpy() + 1) / 2, (64, 64))
    torch.testing.assert_close(seg.upsampled_logits(x), ref, atol=1e-4, rtol=0)
    assert_same_labels(seg.segment(x), ref)


class Uint8Net(nn.Module):
    """Takes the stored image itself, (N, H, W, 3) uint8, and normalises inside the graph."""

    def __init__(self):
        super().__init__()
        self.net = TinySegNet(seed=2)

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2).float() / 127.5 - 1)


def test_uint8_input_gets_the_stored_image(models):
    net = Uint8Net().eval()
    path = export(net, models["root"] / "uint8.onnx", torch.zeros(1, 64, 64, 3, dtype=torch.uint8),
                  {"pixel_values": {0: "n"}, "logits": {0: "n"}})
    seg = OnnxSegmenter(weights=str(path), labels=str(models["labels"]), layout="NHWC", output_layout="NCHW")
    assert seg.range == "0-255" and seg.mean == [0, 0, 0] and seg.std == [1, 1, 1]
    x = renders(3, start=50)
    u = torch.from_numpy(np.round((x.numpy() + 1) * 127.5).astype(np.uint8)).permute(0, 2, 3, 1)
    with torch.no_grad():
        ref = F.interpolate(net(u), size=(64, 64), mode="bilinear", align_corners=False)
    assert_same_labels(seg.segment(x), ref)
    with pytest.raises(ValueError, match=r"takes 8-bit pixels .*leave them unset"):
        OnnxSegmenter(weights=str(path), labels=str(models["labels"]), layout="NHWC", output_layout="NCHW",
                      range="0-1")


@pytest.mark.parametrize("fmt", ["json_list", "json_ids", "txt", "id2label"])
def test_labels_file_formats(models, tmp_path, fmt):
    files = {"json_list": ("l.json", json.dumps(LABELS)),
             "json_ids": ("l.json", json.dumps({str(i): n for i, n in reversed(list(enumerate(LABELS)))})),
             "txt": ("l.txt", "\n".join(LABELS)),
             "id2label": ("l.json", json.dumps({"id2label": {str(i): n for i, n in enumerate(LABELS)}}))}
    name, text = files[fmt]
    (tmp_path / name).write_text(text)
    assert OnnxSegmenter(weights=str(models["nchw"][0]), labels=str(tmp_path / name)).labels == LABELS


def test_labels_file_beside_the_model(models, tmp_path, monkeypatch):
    import shutil

    model = shutil.copy(models["nchw"][0], tmp_path / "net.onnx")
    (tmp_path / "net.labels.json").write_text(json.dumps(LABELS))
    seg = OnnxSegmenter(weights=str(model))
    assert seg.labels == LABELS and seg.weights_info["labels_file"] == str(tmp_path / "net.labels.json")
    (tmp_path / "names.txt").write_text("\n".join(LABELS[::-1]))
    monkeypatch.chdir(models["root"])  # a relative path that is not here is looked for beside the model
    assert OnnxSegmenter(weights=str(model), labels="names.txt").labels == LABELS[::-1]


def test_class_scores_refuse_with_the_settings_that_run_without_them(models):
    from gandid.testing import TinyGenerator
    from gandid_plugins.analyses.ace import ACE

    seg = OnnxSegmenter(weights=str(models["nchw"][0]), labels=str(models["labels"]))
    with pytest.raises(NotDifferentiableError, match="screen = false and alpha_steps = 0"):
        seg.class_scores(renders(1), 0)
    with pytest.raises(ConfigError, match="alpha_steps = 0"):
        ACE().check(TinyGenerator(), seg, ["layer1"])
    ACE(screen=False, alpha_steps=0).check(TinyGenerator(), seg, ["layer1"])


def test_registered_with_a_model_card_line(models):
    from gandid.testing import registry_with

    reg = registry_with(onnx_segmenter)
    assert "ONNX" in reg.get("segmenter", "onnx").description
    seg = reg.create("segmenter", "onnx", weights=str(models["nchw"][0]), labels=str(models["labels"]))
    assert seg.weights_info["output"] == "logits"


# -- refusals -------------------------------------------------------------------------------------

def test_labels_that_do_not_match_the_output_width_are_refused(models, tmp_path, onnx_pkg):
    six = tmp_path / "six.txt"
    six.write_text("\n".join(LABELS + ["lamp"]))
    with pytest.raises(CheckpointError, match=r"six\.txt names 6 classes but .*nchw\.onnx gives 5 class scores"):
        OnnxSegmenter(weights=str(models["nchw"][0]), labels=str(six))
    # an output whose class dimension the graph leaves open: the probe pass finds the width
    model = onnx_pkg.load(str(models["nchw"][0]))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    onnx_pkg.save(model, str(tmp_path / "open.onnx"))
    with pytest.raises(CheckpointError, match=r"six\.txt names 6 classes but .*open\.onnx gives 5 class scores"):
        OnnxSegmenter(weights=str(tmp_path / "open.onnx"), labels=str(six))
    assert OnnxSegmenter(weights=str(tmp_path / "open.onnx"), labels=str(models["labels"])).labels == LABELS


@pytest.mark.parametrize("text,match", [
    ("wall\n\nfloor\n", r"line 2 is empty"),
    ('{"0": "wall", "2": "floor"}', r"must name classes 0\.\.1 without gaps; missing \[1\]"),
    ("[1, 2]", "every label must be a string"),
    ("{not json", "is not valid JSON"),
])
def test_bad_labels_files_are_named(models, tmp_path, text, match):
    path = tmp_path / ("labels.txt" if text.startswith("wall") else "labels.json")
    path.write_text(text)
    with pytest.raises(CheckpointError, match=f"labels file {path}.*{match}"):
        OnnxSegmenter(weights=str(models["nchw"][0]), labels=str(path))


def test_missing_files_and_wrong_options_are_refused(models, tmp_path):
    weights, labels = str(models["nchw"][0]), str(models["labels"])
    with pytest.raises(ConfigError, match="--seg-weights FILE.onnx"):
        OnnxSegmenter(labels=labels)
    import shutil

    alone = shutil.copy(weights, tmp_path / "alone.onnx")  # no labels file beside it
    with pytest.raises(ConfigError, match=r"needs the names of alone\.onnx's classes: give labels = "
                                          r".*alone\.labels\.json"):
        OnnxSegmenter(weights=str(alone))
    with pytest.raises(CheckpointError, match=r"ONNX model .*missing\.onnx does not exist"):
        OnnxSegmenter(weights=str(tmp_path / "missing.onnx"), labels=labels)
    with pytest.raises(CheckpointError, match=r"labels file .*missing\.txt does not exist"):
        OnnxSegmenter(weights=weights, labels=str(tmp_path / "missing.txt"))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="junk.onnx is not an ONNX model onnxruntime can load"):
        OnnxSegmenter(weights=str(tmp_path / "junk.onnx"), labels=labels)
    with pytest.raises(ValueError, match=r"size 32x32 does not fit .*nchw\.onnx.*64 x 64"):
        OnnxSegmenter(weights=weights, labels=labels, size=32)
    with pytest.raises(CheckpointError, match='not a NHWC batch of RGB images.*layout = "NCHW"'):
        OnnxSegmenter(weights=weights, labels=labels, layout="NHWC")
    with pytest.raises(ValueError, match="range must be one of 0-1, 0-255, -1-1"):
        OnnxSegmenter(weights=weights, labels=labels, range="0-65535")
    with pytest.raises(ValueError, match=r"mean must be 3 numbers"):
        OnnxSegmenter(weights=weights, labels=labels, mean=[0.5])
    with pytest.raises(ValueError, match="has no output 'scores'"):
        OnnxSegmenter(weights=weights, labels=labels, output="scores")
    with pytest.raises(UnknownNameError, match="background class 'grass'"):
        OnnxSegmenter(weights=weights, labels=labels, background=["grass"])
    (tmp_path / "cats.json").write_text(json.dumps({"labels": LABELS, "categories": {"chairs": "furniture"}}))
    with pytest.raises(UnknownNameError, match="label in categories 'chairs'; did you mean 'chair'"):
        OnnxSegmenter(weights=weights, labels=str(tmp_path / "cats.json"))


def test_missing_onnxruntime_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[onnx\]"'):
        OnnxSegmenter(weights="model.onnx", labels="labels.txt")

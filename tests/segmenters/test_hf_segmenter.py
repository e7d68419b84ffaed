"""The `transformers` segmenter on random-weight models saved in transformers' real folder layout
(save_pretrained: config.json, model.safetensors, preprocessor_config.json), checked against
transformers' own path: its PIL image processor, the model's forward and F.interpolate (as its
post_process_semantic_segmentation does). Nothing is downloaded."""
import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from gandid.contracts import check_contract
from gandid.errors import CheckpointError, ConfigError, UnknownNameError
from gandid.model import Segmenter
from gandid_plugins.segmenters import hf_segmenter
from gandid_plugins.segmenters.hf_segmenter import HFSegmenter, ImageProcessing, resize
from gandid_plugins.worlds.toyroom.world import render_batch

LABELS = ["wall", "floor", "chair", "table", "sky"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a test that tried the hub would fail, not hang


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers", reason="the transformers extra is not installed "
                                                      '(pip install -e ".[transformers]")')


def pil_processor(tf, name):
    """transformers 5's PIL backend (``SegformerImageProcessorPil``); in 4.x the plain class is the PIL one.
    The default 5.x class needs torchvision, which gandid never installs."""
    return getattr(tf, name + "Pil", None) or getattr(tf, name)


def scramble(model, seed=0):
    """Weights with a spread: transformers initialises classifiers near zero, which makes every class
    almost equally likely and the argmax a coin toss."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def id2label(labels=LABELS):
    return {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}


def save(model, processor, folder):
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def segformer(tf, tmp_path_factory):
    """(folder, model, processor): a tiny SegFormer (logits at 1/4 of its 64 px input)."""
    cfg = tf.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                             decoder_hidden_size=16, num_labels=len(LABELS), **id2label())
    torch.manual_seed(0)
    model = scramble(tf.SegformerForSemanticSegmentation(cfg))
    processor = pil_processor(tf, "SegformerImageProcessor")(size={"height": 64, "width": 64})
    return save(model, processor, tmp_path_factory.mktemp("segformer")), model, processor


def renders(n, start=0):
    """(x, u): toyroom renders on the 8-bit grid, as (N, 3, 64, 64) in [-1, 1] and as HWC uint8 for PIL."""
    images, _ = render_batch(range(start, start + n))
    u = np.round((images + 1) * 127.5).clip(0, 255).astype(np.uint8)
    return torch.from_numpy(u.astype(np.float32) / 127.5 - 1), [img.transpose(1, 2, 0) for img in u]


def reference_logits(model, processor, pil_images, size):
    """transformers' path: the image processor, the model, and logits upsampled to ``size``."""
    pixel_values = processor(images=pil_images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def assert_same_labels(labels, ref_logits, min_agree=1.0, margin=1e-3):
    """Equal argmax wherever the reference's two best classes are more than ``margin`` apart."""
    top2 = ref_logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > margin
    ref = ref_logits.argmax(1)
    assert torch.equal(labels[clear], ref[clear])
    assert (labels == ref).float().mean() >= min_agree


# -- preprocessing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,pil", [("bilinear", 2), ("bicubic", 3)])
@pytest.mark.parametrize("size", [(48, 40), (96, 128), (37, 100)])
def test_resize_is_pillows_filter_on_float_images(mode, pil, size):
    from PIL import Image

    rng = np.random.default_rng(1)
    x = rng.random((3, 64, 80)).astype(np.float32)
    ref = np.stack([np.asarray(Image.fromarray(c, mode="F").resize((size[1], size[0]), pil)) for c in x])
    got = resize(torch.from_numpy(x)[None], size, mode)[0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("size", [64, 96, 40])
@pytest.mark.slow
def test_preprocessing_equals_the_image_processor(tf, tmp_path, size):
    processor = pil_processor(tf, "SegformerImageProcessor")(size={"height": size, "width": size})
    processor.save_pretrained(tmp_path)
    ours = ImageProcessing(json.loads((tmp_path / "preprocessor_config.json").read_text()))
    x, pil_images = renders(3)
    ref = processor(images=pil_images, return_tensors="pt")["pixel_values"]
    got = ours(x)
    assert got.shape == ref.shape == (3, 3, size, size)
    # Without a resize only float rounding differs. A resize goes through 8-bit images in the processor
    # (PIL filters rows, rounds, then columns, and rounds again), not in ours: within one step of 1/255,
    # divided by the std (Pillow's 8-bit enlargement also reads about 0.17 of a step high on average)
    lsb = 1 / 255 / min(processor.image_std)
    torch.testing.assert_close(got, ref, atol=1e-5 if size == 64 else 1.01 * lsb, rtol=0)
    assert (got - ref).abs().mean() < 0.5 * lsb


def test_dpt_preprocessing_keeps_aspect_ratio_multiples_and_pads_like_the_processor(tf, tmp_path):
    processor = pil_processor(tf, "DPTImageProcessor")(size={"height": 96, "width": 96}, keep_aspect_ratio=True,
                                                       ensure_multiple_of=14, do_pad=True, size_divisor=32)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    ours = ImageProcessing(config)
    assert ours.mode == "bicubic" and ours.mean == [0.5, 0.5, 0.5]
    x, pil_images = renders(2)
    x, pil_images = x[:, :, :, 8:56], [img[:, 8:56] for img in pil_images]  # 64 x 48: not square
    ref = processor(images=pil_images, return_tensors="pt")["pixel_values"]
    got = ours(x)
    assert got.shape == ref.shape == (2, 3, 128, 96)  # 98 x 70 (multiples of 14), padded to 32s
    # two 8-bit roundings in Pillow, the first passed through the cubic filter (whose weights' absolute
    # values sum to more than 1): within 1.5 steps of 1/255, divided by the std
    torch.testing.assert_close(got, ref, atol=1.5 / 255 / 0.5, rtol=0)
    assert ours.target_size(64, 48) == (98, 70)
    # logits of the padded input (here the input itself) are cropped back to the image region
    unpadded = ImageProcessing({**config, "do_pad": False})(x)
    assert unpadded.shape == (2, 3, 98, 70)
    torch.testing.assert_close(ours.unpad(got, (98, 70)), unpadded, atol=1e-6, rtol=0)


# -- models -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_segformer_folder_segments_as_transformers_does(segformer):
    folder, model, processor = segformer
    seg = HFSegmenter(weights=str(folder), batch_size=2)
    check_contract(seg, Segmenter, "transformers segmenter")
    assert seg.labels == LABELS and seg.background == ("wall", "floor", "sky")
    assert seg.categories == {name: "object" for name in LABELS}
    assert seg.weights_info["stored_dtypes"] == {"float32": 63, "int64": 1}
    x, pil_images = renders(5)
    ref = reference_logits(model, processor, pil_images, (64, 64))
    labels = seg.segment(x)
    assert labels.shape == (5, 64, 64) and labels.dtype == torch.int64
    assert_same_labels(labels, ref)
    assert len(labels.unique()) >= 3  # the weights give a real spread of classes
    for c in (0, 2, 4):
        torch.testing.assert_close(seg.class_scores(x, c), ref.softmax(1)[:, c].mean((1, 2)), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_older_layout_pytorch_bin_float16_and_feature_extractor_config(tf, segformer, tmp_path):
    """What older hub folders hold: pytorch_model.bin (a pickled state dict, read with weights_only), half
    precision weights, and a feature-extractor config with an int size and no do_rescale."""
    import copy as copying

    folder, model, processor = segformer
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    half = copying.deepcopy(model).half()
    torch.save(half.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "SegformerFeatureExtractor", "do_resize": True, "size": 64, "resample": 2,
        "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "reduce_labels": True}))
    seg = HFSegmenter(weights=str(tmp_path))
    old_processor = type(processor).from_pretrained(tmp_path)  # transformers reads the old file its own way
    x, pil_images = renders(3, start=40)
    torch.testing.assert_close(seg.processing(x), old_processor(images=pil_images, return_tensors="pt")["pixel_values"],
                               atol=1e-5, rtol=0)
    ref = reference_logits(half.float(), old_processor, pil_images, (64, 64))
    assert_same_labels(seg.segment(x), ref)
    torch.testing.assert_close(seg.class_scores(x, 3), ref.softmax(1)[:, 3].mean((1, 2)), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_resolution_and_size_options(segformer, tmp_path):
    folder, model, processor = segformer
    x, pil_images = renders(3)
    low = HFSegmenter(weights=str(folder), resolution=32)
    assert low.segment(x).shape == (3, 32, 32)
    assert_same_labels(low.segment(x), reference_logits(model, processor, pil_images, (32, 32)))
    # size: the model sees 96 px images; the processor configured for 96 px is the reference
    big = HFSegmenter(weights=str(folder), size=96)
    big_processor = type(processor)(size={"height": 96, "width": 96})
    ref = reference_logits(model, big_processor, pil_images, (64, 64))
    assert_same_labels(big.segment(x), ref, min_agree=0.97, margin=0.1)  # the processor's 8-bit resize rounds
    torch.testing.assert_close(big.class_scores(x, 1), ref.softmax(1)[:, 1].mean((1, 2)), atol=5e-3, rtol=0)
    with pytest.raises(ValueError, match="resolution must be an int or 'HxW'"):
        HFSegmenter(weights=str(folder), resolution="big")


@pytest.mark.parametrize("budget", [None, 5 * 64 * 64])
@pytest.mark.slow
def test_class_scores_are_differentiable(segformer, monkeypatch, budget):
    """The gradient of class_scores equals the float64 gradient of the score written out by hand:
    mean over pixels of softmax(upsample(model((x + 1) / 2 - mean) / std)))[c]. With a small budget the
    upsampled logits are handled (and checkpointed) one image at a time."""
    import copy as copying

    if budget:
        monkeypatch.setattr(hf_segmenter.pixel_segmenter, "PIXEL_BUDGET", budget)
    folder, model, processor = segformer
    seg = HFSegmenter(weights=str(folder))
    x, _ = renders(3, start=7)
    x = x.clamp(-0.98, 0.98)  # inside the 8-bit range, where the plugin's clamp passes gradients
    images = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(seg.class_scores(images, 3).sum(), images)
    exact = copying.deepcopy(model).double()
    x64 = x.double().requires_grad_(True)
    mean = torch.tensor(processor.image_mean, dtype=torch.float64)[:, None, None]
    std = torch.tensor(processor.image_std, dtype=torch.float64)[:, None, None]
    logits = exact(pixel_values=((x64 + 1) / 2 - mean) / std).logits
    score = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False).softmax(1)[:, 3].mean((1, 2))
    (ref,) = torch.autograd.grad(score.sum(), x64)
    assert ref.abs().max() > 0
    torch.testing.assert_close(grad.double(), ref, atol=1e-3 * float(ref.abs().max()), rtol=0)
    labels = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False).argmax(1)
    assert (seg.segment(x) == labels).float().mean() > 0.999


@pytest.mark.slow
def test_upernet_convnext_and_dpt_folders(tf, tmp_path):
    x, pil_images = renders(3, start=20)
    torch.manual_seed(0)
    backbone = tf.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                 out_features=["stage1", "stage2", "stage3", "stage4"])
    upernet = scramble(tf.UperNetForSemanticSegmentation(tf.UperNetConfig(
        backbone_config=backbone, hidden_size=16, use_auxiliary_head=False, num_labels=len(LABELS), **id2label())))
    # UperNet checkpoints (openmmlab/upernet-convnext-*) ship SegFormer's image processor
    uper_proc = pil_processor(tf, "SegformerImageProcessor")(size={"height": 64, "width": 64})
    dpt = scramble(tf.DPTForSemanticSegmentation(tf.DPTConfig(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=64,
        patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8,
        reassemble_factors=[4, 2, 1, 0.5], use_auxiliary_head=False, num_labels=len(LABELS), **id2label())), seed=1)
    dpt_proc = pil_processor(tf, "DPTImageProcessor")(size={"height": 64, "width": 64})  # bicubic, mean/std 0.5
    for name, model, processor in (("upernet", upernet, uper_proc), ("dpt", dpt, dpt_proc)):
        folder = save(model, processor, tmp_path / name)
        seg = HFSegmenter(weights=str(folder))
        assert seg.weights_info["architecture"] == type(model).__name__
        ref = reference_logits(model, processor, pil_images, (64, 64))
        labels = seg.segment(x)
        assert_same_labels(labels, ref)
        assert len(labels.unique()) >= 2, name
        torch.testing.assert_close(seg.class_scores(x, 2), ref.softmax(1)[:, 2].mean((1, 2)), atol=1e-5, rtol=0)


class Areas:
    """Pixels per class over the run's samples (any number of labels)."""

    def run(self, ctx):
        counts = torch.zeros(len(ctx.segmenter.labels), dtype=torch.long)
        for batch in ctx.batches():
            counts += torch.bincount(batch.labels.flatten(), minlength=len(counts))
        return {"counts": counts.tolist(), "shape": list(batch.labels.shape)}


@pytest.mark.slow
def test_registered_with_a_model_card_line_and_runs_in_gandid(segformer, testkit, tmp_path):
    from gandid.config import RunConfig
    from gandid.runner import run
    from gandid.testing import registry_with

    registry = registry_with(testkit, analyses={"areas": Areas})
    registry.add_plugin(hf_segmenter, "transformers")
    entry = registry.get("segmenter", "transformers")
    assert "Hugging Face" in entry.description and "transformers extra" in entry.description
    cfg = RunConfig(generator="tiny", segmenter="transformers", seg_weights=str(segformer[0]), analysis=["areas"],
                    samples=4, batch_size=4, out=str(tmp_path / "out"), device="cpu",
                    segmenter_options={"batch_size": 3, "resolution": 16})
    result = run(cfg, registry=registry)
    assert result.status == "completed"
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["weights"]["segmenter"]["architecture"] == "SegformerForSemanticSegmentation"
    areas = json.loads((tmp_path / "out" / "areas.json").read_text())
    assert areas["shape"] == [4, 16, 16] and sum(areas["counts"]) == 4 * 16 * 16


# -- refusals -------------------------------------------------------------------------------------

def copy(segformer, tmp_path):
    return shutil.copytree(segformer[0], tmp_path / "model")


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("name,match", [
    ("config.json", r"config\.json is missing"),
    ("model.safetensors", "has no model weights: expected one of model.safetensors"),
    ("preprocessor_config.json", r"preprocessor_config\.json is missing"),
])
def test_missing_files_are_named(segformer, tmp_path, name, match):
    folder = copy(segformer, tmp_path)
    (folder / name).unlink()
    with pytest.raises(CheckpointError, match=match):
        HFSegmenter(weights=str(folder))


def test_labels_that_do_not_match_the_classifier_are_refused(segformer, tmp_path):
    folder = copy(segformer, tmp_path)
    edit_json(folder / "config.json", **id2label(LABELS + ["lamp"]))
    with pytest.raises(CheckpointError, match=r"id2label names 6 classes but the classifier in model\.safetensors "
                                              r"has 5 outputs.*decode_head\.classifier"):
        HFSegmenter(weights=str(folder))
    edit_json(folder / "config.json", id2label={"0": "wall", "1": "floor", "3": "chair"})
    with pytest.raises(CheckpointError, match=r"config\.json: id2label must name classes 0\.\.2 without gaps; "
                                              r"missing \[2\]"):
        HFSegmenter(weights=str(folder))


def test_missing_and_foreign_weights_are_refused(segformer, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = copy(segformer, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    del state["decode_head.classifier.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.safetensors lacks 1 weights.*decode_head\.classifier\.weight"):
        HFSegmenter(weights=str(folder))
    edit_json(folder / "config.json", model_type="bert")
    with pytest.raises(CheckpointError, match=r"model_type 'bert' is not a semantic-segmentation architecture"
                                              r".*segformer"):
        HFSegmenter(weights=str(folder))


class Payload:
    """A pickle that would run code: touches ``marker`` when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


def test_a_pytorch_bin_with_code_is_refused_without_running_it(segformer, tmp_path):
    folder = copy(segformer, tmp_path)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"decode_head.classifier.weight": Payload(str(marker))}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: refusing to load: it needs the Python object "
                                              r".*never unpickles code"):
        HFSegmenter(weights=str(folder))
    assert not marker.exists()


def test_unsupported_preprocessing_and_options_are_refused(segformer, tmp_path):
    folder = copy(segformer, tmp_path)
    with pytest.raises(ConfigError, match="--seg-weights DIR"):
        HFSegmenter()
    with pytest.raises(CheckpointError, match="is not a folder"):
        HFSegmenter(weights=str(folder / "config.json"))
    with pytest.raises(UnknownNameError, match="background class 'walls'; did you mean 'wall'"):
        HFSegmenter(weights=str(folder), background=["walls"])
    assert HFSegmenter(weights=str(folder), background=["sky"]).background == ("sky",)
    edit_json(folder / "preprocessor_config.json", resample=1)
    with pytest.raises(CheckpointError, match=r"preprocessor_config\.json: resample = 1 \(lanczos\) is not supported"):
        HFSegmenter(weights=str(folder))
    edit_json(folder / "preprocessor_config.json", resample=2, do_sharpen=True)
    with pytest.raises(CheckpointError, match="asks for do_sharpen, which the transformers segmenter does not"):
        HFSegmenter(weights=str(folder))


def test_missing_transformers_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[transformers\]"'):
        HFSegmenter(weights=str(tmp_path))

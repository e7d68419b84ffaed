"""The `semseg` segmenter (CSAIL ADE20K scene-parsing checkpoints) against an independent float64
re-implementation on random-weight files in the published layouts (at 1/16 width)."""
import json
import shutil

import pytest
import torch
from segmenter_files import (
    UPP_VOCAB,
    images,
    ref_semseg,
    resnet_state,
    semseg_decoder_state,
    upp_decoder_state,
    write_semseg_folder,
)

from gandid.errors import CheckpointError, UnknownNameError
from gandid.model import Segmenter
from gandid_plugins.segmenters import semseg as semseg_module
from gandid_plugins.segmenters.semseg import semseg

# the published pairs of semantic-segmentation-pytorch's config/ade20k-*.yaml (epochs as published),
# plus upernet_lite (a decoder the repository builds but did not publish)
ARCHS = [("resnet50dilated", "ppm_deepsup", 20), ("resnet18dilated", "ppm_deepsup", 20),
         ("resnet101dilated", "ppm_deepsup", 25), ("resnet50", "upernet", 30), ("resnet101", "upernet", 50),
         ("hrnetv2", "c1", 30), ("resnet50", "upernet_lite", 30)]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("ckpt")


@pytest.mark.parametrize("encoder,decoder,epoch", ARCHS)
@pytest.mark.slow
def test_segments_like_the_reference(root, encoder, decoder, epoch):
    folder = root / f"ade20k-{encoder}-{decoder}"
    enc, dec = write_semseg_folder(folder, encoder, decoder, epoch=epoch, seed=len(encoder))
    imgs = images(2, 64, seed=epoch)
    expected, probs = ref_semseg(enc, dec, encoder, decoder, imgs, sizes=(64, 96), downsample=2)
    assert len(torch.unique(expected)) >= 5  # not a degenerate case
    # float64: the same function to rounding, the same labels
    seg64 = semseg(weights=str(folder), sizes=[64, 96], downsample=2, dtype="float64")
    assert seg64.weights_info["epoch"] == epoch and seg64.weights_info["arch"] == f"{encoder}-{decoder}"
    torch.testing.assert_close(seg64.probabilities(imgs), probs, rtol=0, atol=1e-10)
    assert torch.equal(seg64.segment(imgs), expected)
    # float32 (what runs): probabilities to float32 accuracy, labels wherever the reference is clear
    seg = semseg(weights=str(folder), sizes=[64, 96], downsample=2)
    assert isinstance(seg, Segmenter)
    out = seg.segment(imgs)
    assert out.shape == (2, 32, 32) and out.dtype == torch.int64
    assert float((seg.probabilities(imgs).double() - probs).abs().max()) < 1e-4
    top = probs.topk(2, 1).values
    clear = (top[:, 0] - top[:, 1]) > 1e-3
    assert torch.equal(out[clear], expected[clear])


@pytest.mark.slow
def test_labels_background_and_class_scores(root):
    folder = root / "ade20k-resnet18dilated-ppm_deepsup"
    enc, dec = write_semseg_folder(folder, "resnet18dilated", "ppm_deepsup")
    seg = semseg(weights=str(folder), sizes=[64], dtype="float64")
    assert len(seg.labels) == 151 and seg.labels[:4] == ["unlabelled", "wall", "building", "sky"]
    assert seg.labels[45] == "chest of drawers" and seg.labels[150] == "flag"
    assert set(seg.categories.values()) == {"object"}
    assert {"wall", "floor", "ceiling", "sky"} <= set(seg.background)
    chosen = semseg(weights=str(folder), sizes=[64], background=["wall", "grass"])
    assert chosen.background == ("wall", "grass")
    with pytest.raises(UnknownNameError, match="semseg background class 'gras'; did you mean 'grass'"):
        semseg(weights=str(folder), sizes=[64], background=["wall", "gras"])
    imgs = images(2, 64, seed=7).double()
    _, probs = ref_semseg(enc, dec, "resnet18dilated", "ppm_deepsup", imgs, sizes=(64,))
    torch.testing.assert_close(seg.class_scores(imgs, 3), probs[:, 2].flatten(1).mean(1))
    torch.testing.assert_close(seg.class_scores(imgs, 0), torch.zeros(2, dtype=torch.float64))
    x = imgs.clone().requires_grad_(True)
    seg.class_scores(x, 1).sum().backward()
    assert float(x.grad.abs().sum()) > 0


@pytest.mark.slow
def test_netdissect_folder_names_and_labels_file(tmp_path):
    """netdissect's older architecture names and its labels.json (names, image format, segsizes)."""
    folder = tmp_path / "baseline-resnet50_dilated8-ppm_bilinear_deepsup"
    enc, dec = write_semseg_folder(folder, "resnet50dilated", "ppm_deepsup", classes=12, epoch=7)
    names = [f"thing{i}" for i in range(12)]
    meta = {"labels": [{"name": n, "category": "object"} for n in names], "categories": [{"name": "object"}],
            "imageformat": {"byteorder": "RGB", "mean": [0.485, 0.456, 0.406], "stdev": [0.229, 0.224, 0.225]},
            "segsizes": [64]}
    (folder / "labels.json").write_text(json.dumps(meta))
    seg = semseg(weights=str(folder), dtype="float64")
    assert seg.labels == ["unlabelled"] + names and seg.sizes == [64]
    imgs = images(2, 64, seed=3)
    expected, _ = ref_semseg(enc, dec, "resnet50dilated", "ppm_deepsup", imgs, sizes=(64,))
    assert torch.equal(seg.segment(imgs), expected)
    # the same files named by option instead of by folder
    plain = tmp_path / "weights"
    shutil.copytree(folder, plain)
    (plain / "labels.json").unlink()
    (tmp_path / "names.json").write_text(json.dumps(names))
    seg = semseg(weights=str(plain), arch="resnet50dilated-ppm_deepsup", labels=str(tmp_path / "names.json"),
                 sizes=[64], dtype="float64")
    assert torch.equal(seg.segment(imgs), expected)


@pytest.mark.slow
def test_batches_and_downsampling(root):
    folder = root / "ade20k-resnet50-upernet"
    write_semseg_folder(folder, "resnet50", "upernet", epoch=30)
    imgs = images(5, 64, seed=5)
    whole = semseg(weights=str(folder), sizes=[64], batch_size=8).segment(imgs)
    assert torch.equal(semseg(weights=str(folder), sizes=[64], batch_size=2).segment(imgs), whole)
    assert semseg(weights=str(folder), sizes=[64], downsample=4).segment(imgs).shape == (5, 16, 16)


@pytest.mark.slow
def test_safetensors_and_data_parallel_prefixes(tmp_path):
    """The same weights as .safetensors, and as saved from nn.DataParallel ('module.' on every key)."""
    from safetensors.torch import save_file

    folder = tmp_path / "ade20k-resnet18dilated-ppm_deepsup"
    enc, dec = write_semseg_folder(folder, "resnet18dilated", "ppm_deepsup")
    imgs = images(2, 64, seed=9)
    expected = semseg(weights=str(folder), sizes=[64]).segment(imgs)
    other = tmp_path / "b" / folder.name
    other.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in enc.items()}, str(other / "encoder_epoch_20.safetensors"))
    torch.save({f"module.{k}": v for k, v in dec.items()}, other / "decoder_epoch_20.pth")
    assert torch.equal(semseg(weights=str(other), sizes=[64]).segment(imgs), expected)


# --- refusing wrong folders before any work -----------------------------------------------------------


@pytest.fixture
def good(tmp_path):
    folder = tmp_path / "ade20k-resnet50dilated-ppm_deepsup"
    write_semseg_folder(folder, "resnet50dilated", "ppm_deepsup")
    return folder


def test_missing_encoder_and_unnamed_architecture(good, tmp_path):
    (good / "encoder_epoch_20.pth").unlink()
    with pytest.raises(CheckpointError,
                       match=r"has no encoder checkpoint encoder_epoch_N\.pth \(it holds: decoder_epoch_20\.pth\)"):
        semseg(weights=str(good))
    with pytest.raises(CheckpointError, match="does not exist"):
        semseg(weights=str(tmp_path / "nowhere"))
    other = tmp_path / "mymodel"
    write_semseg_folder(other, "resnet50dilated", "ppm_deepsup")
    with pytest.raises(CheckpointError, match=r"cannot tell the architecture from the folder name 'mymodel'"):
        semseg(weights=str(other))
    with pytest.raises(CheckpointError, match="MobileNetV2 encoder .* is not supported"):
        semseg(weights=str(other), arch="mobilenetv2dilated-c1_deepsup")
    with pytest.raises(CheckpointError, match="has no encoder_epoch_3.pth"):
        semseg(weights=str(other), arch="resnet50dilated-ppm_deepsup", epoch=3)


def test_decoder_or_encoder_of_another_architecture(good):
    torch.save(semseg_decoder_state("upernet", 128, 150, 16), good / "decoder_epoch_20.pth")
    with pytest.raises(CheckpointError, match=r"decoder_epoch_20\.pth holds a upernet decoder but the architecture "
                                              r"is ppm_deepsup \(folder name 'ade20k-resnet50dilated-ppm_deepsup'\)"):
        semseg(weights=str(good))
    torch.save(upp_decoder_state(UPP_VOCAB, 16), good / "decoder_epoch_20.pth")
    with pytest.raises(CheckpointError, match="Unified Perceptual Parsing decoder .* use the `upp` segmenter"):
        semseg(weights=str(good))
    torch.save(semseg_decoder_state("ppm_deepsup", 128, 150, 16), good / "decoder_epoch_20.pth")
    torch.save(resnet_state("resnet101", 16), good / "encoder_epoch_20.pth")
    with pytest.raises(CheckpointError,
                       match=r"encoder_epoch_20\.pth holds a resnet101 encoder but the architecture is resnet50dilated"):
        semseg(weights=str(good))


def test_wrong_number_of_classes_and_wrong_labels_file(good, tmp_path):
    torch.save(semseg_decoder_state("ppm_deepsup", 128, 149, 16), good / "decoder_epoch_20.pth")
    with pytest.raises(CheckpointError) as exc:
        semseg(weights=str(good))
    message = str(exc.value)
    assert "ade20k_labels.json lists 150 labels" in message
    assert "decoder_epoch_20.pth's classifier conv_last.4.weight outputs 149 classes" in message
    torch.save(semseg_decoder_state("ppm_deepsup", 128, 150, 16), good / "decoder_epoch_20.pth")
    (tmp_path / "ten.json").write_text(json.dumps([f"c{i}" for i in range(10)]))
    with pytest.raises(CheckpointError, match=r"ten\.json lists 10 labels but .*outputs 150 classes"):
        semseg(weights=str(good), labels=str(tmp_path / "ten.json"))
    (good / "labels.json").write_text(json.dumps({"labels": [{"name": "a", "category": "object"},
                                                              {"name": "b", "category": "part"}]}))
    with pytest.raises(CheckpointError, match="multi-category model"):
        semseg(weights=str(good))


def test_wrong_shapes_are_listed(good):
    state = torch.load(good / "decoder_epoch_20.pth")
    state["conv_last.0.weight"] = state["conv_last.0.weight"][:, :-1].clone()
    del state["cbr_deepsup.1.running_mean"]
    torch.save(state, good / "decoder_epoch_20.pth")
    with pytest.raises(CheckpointError) as exc:
        semseg(weights=str(good))
    message = str(exc.value)
    assert "semseg decoder ppm_deepsup" in message and "decoder_epoch_20.pth" in message
    assert "missing keys (1): cbr_deepsup.1.running_mean" in message
    assert "conv_last.0.weight: file has (32, 255, 3, 3), expected (32, 256, 3, 3)" in message


def test_registered_as_a_segmenter():
    from gandid.testing import registry_with

    entry = registry_with(semseg_module).get("segmenter", "semseg")
    assert "ADE20K" in entry.description


# a few published shapes read off the upstream constructors (mit_semseg/models/resnet.py, hrnet.py,
# models.py): the deep stem, the last bottleneck, HRNetV2's 720 channels, the decoders' last convolutions
PUBLISHED_SHAPES = {
    "resnet50": {"conv1.weight": (64, 3, 3, 3), "conv3.weight": (128, 64, 3, 3),
                 "layer4.2.conv3.weight": (2048, 512, 1, 1)},
    "resnet101": {"layer3.22.conv2.weight": (256, 256, 3, 3), "layer4.2.conv3.weight": (2048, 512, 1, 1)},
    "resnet18": {"layer4.1.conv2.weight": (512, 512, 3, 3)},
    "ppm_deepsup": {"conv_last.0.weight": (512, 2048 + 4 * 512, 3, 3), "conv_last.4.weight": (150, 512, 1, 1),
                    "cbr_deepsup.0.weight": (512, 1024, 3, 3)},
    "upernet": {"conv_last.0.0.weight": (512, 4 * 512, 3, 3), "conv_last.1.weight": (150, 512, 1, 1)},
    "c1": {"cbr.0.weight": (180, 720, 3, 3), "conv_last.weight": (150, 180, 1, 1)},
}


@pytest.mark.parametrize("encoder,decoder,epoch", ARCHS)
@pytest.mark.slow
def test_the_published_widths_pass_the_layout_check(encoder, decoder, epoch):
    """Every file above at its published width (divisor 1, as downloaded), not only at 1/16: the test
    builders' state dicts pass the plugin's layout check key by key, with upstream's shapes."""
    from segmenter_files import hrnet_state

    from gandid.checkpoints import check_state_dict
    from gandid_plugins.segmenters import segnets

    depth = encoder.replace("dilated", "")
    if depth == "hrnetv2":
        enc, enc_layout, fc_dim = hrnet_state(1), segnets.hrnet_layout(1), segnets.hrnet_channels(1)
    else:
        enc, enc_layout = resnet_state(depth, 1), segnets.resnet_layout(depth, 1)
        fc_dim = 512 if depth == "resnet18" else 2048
    dec = semseg_decoder_state(decoder, fc_dim, 150, 1)
    # the step counters the loader drops (segnets.load_plain) before its check
    enc, dec = ({k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")} for state in (enc, dec))
    check_state_dict(enc, enc_layout, "encoder")
    check_state_dict(dec, semseg_module.decoder_layout(decoder, fc_dim, 150, 1), "decoder")
    for part, state in ((depth, enc), (decoder, dec)):
        if decoder == "ppm_deepsup" and depth == "resnet18" and part == decoder:
            continue  # its fc_dim is 512: the shapes listed are ResNet-50/101's
        for key, shape in PUBLISHED_SHAPES.get(part, {}).items():
            assert tuple(state[key].shape) == shape, (part, key)


@pytest.mark.slow
def test_a_published_width_file_segments_like_the_reference(tmp_path):
    """ade20k-resnet50dilated-ppm_deepsup as downloaded (full width): loaded from its files and run."""
    folder = tmp_path / "ade20k-resnet50dilated-ppm_deepsup"
    enc, dec = write_semseg_folder(folder, "resnet50dilated", "ppm_deepsup", div=1, epoch=20, seed=3)
    seg = semseg(weights=str(folder), sizes=[48], dtype="float64")
    assert "width_divisor" not in seg.weights_info and seg.weights_info["arch"] == "resnet50dilated-ppm_deepsup"
    imgs = images(1, 48, seed=4)
    expected, probs = ref_semseg(enc, dec, "resnet50dilated", "ppm_deepsup", imgs, sizes=(48,))
    torch.testing.assert_close(seg.probabilities(imgs), probs, rtol=0, atol=1e-10)
    assert torch.equal(seg.segment(imgs), expected)

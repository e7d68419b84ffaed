import numpy as np
import pytest
import torch

from gandid_plugins.worlds.toyroom.segmenter import WEIGHTS, ToyroomSegmenter
from gandid_plugins.worlds.toyroom.train import GENERATOR_WEIGHTS
from gandid_plugins.worlds.toyroom.world import LABELS, render, render_batch


def test_renders_are_deterministic_and_labelled_exactly():
    a_img, a_lab = render(123)
    b_img, b_lab = render(123)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert a_img.shape == (3, 64, 64) and a_img.dtype == np.float32 and -1 <= a_img.min() <= a_img.max() <= 1
    assert not np.array_equal(render(124)[0], a_img)
    big_img, big_lab = render(5, size=128)
    assert big_img.shape == (3, 128, 128) and big_lab.shape == (128, 128)


@pytest.mark.slow
def test_the_world_has_every_class_and_realistic_layout():
    _, labels = render_batch(range(300))
    freq = np.bincount(labels.ravel(), minlength=len(LABELS)) / labels.size
    assert (freq > 0.002).all(), dict(zip(LABELS, freq))
    rows = np.arange(64)[None, :, None]
    mean_row = {name: (rows * (labels == i)).sum() / max(1, (labels == i).sum()) for i, name in enumerate(LABELS)}
    assert mean_row["lamp"] < mean_row["window"] < mean_row["table"] and mean_row["lamp"] < 16  # lamps hang high
    assert mean_row["ceiling"] < mean_row["wall"] < mean_row["floor"]
    per_image_chairs = [(lab == LABELS.index("chair")).any() for lab in labels]
    assert np.mean(per_image_chairs) > 0.95  # chairs in almost every room, around the table
    # version 2: every class large where present (at least 1.5 % of the image on average)
    area = np.stack([(labels == c).reshape(len(labels), -1).mean(1) for c in range(len(LABELS))], 1)
    for c, name in enumerate(LABELS):
        present = area[:, c] >= 0.005
        assert present.mean() > 0.25 and area[present, c].mean() > 0.015, (name, present.mean(), area[present, c].mean())


def test_frechet_distance_matches_the_textbook_formula():
    from scipy import linalg

    from gandid_plugins.worlds.toyroom.train import frechet_distance

    g = torch.Generator().manual_seed(3)
    a = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    b = torch.randn(300, 6, generator=g, dtype=torch.float64) * 1.7 + 0.4
    mu_a, mu_b, s_a, s_b = a.mean(0).numpy(), b.mean(0).numpy(), np.cov(a.numpy().T), np.cov(b.numpy().T)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real)
    assert abs(frechet_distance(a, b) - expected) < 1e-8 * max(1, abs(expected))
    assert abs(frechet_distance(a, a)) < 1e-8


@pytest.mark.skipif(not WEIGHTS.exists(), reason="the toyroom segmenter has not been trained yet")
@pytest.mark.slow
def test_shipped_segmenter_is_accurate_on_held_out_renders():
    seg = ToyroomSegmenter()
    images, labels = render_batch(range(10_000_000, 10_000_200))
    pred = seg.segment(torch.from_numpy(images)).numpy()
    ious = []
    for c in range(len(LABELS)):
        p, t = pred == c, labels == c
        ious.append((p & t).sum() / max(1, (p | t).sum()))
    assert np.mean(ious) >= 0.85, dict(zip(LABELS, np.round(ious, 3)))
    scores = seg.class_scores(torch.from_numpy(images[:4]).requires_grad_(), LABELS.index("table"))
    scores.sum().backward()  # differentiable, for ACE's alpha optimisation


def test_generator_plugin_loads_pggan_layout_weights(tmp_path):
    from safetensors.torch import save_file

    from gandid.errors import CheckpointError
    from gandid_plugins.worlds.toyroom import toyroom_generator
    from gandid_plugins.worlds.toyroom.gan import init_generator

    with pytest.raises(CheckpointError, match="train them with"):
        toyroom_generator(weights=str(tmp_path / "missing.safetensors"))
    gen = init_generator(0)
    save_file({k: v.half().contiguous() for k, v in gen.net.state_dict().items()}, str(tmp_path / "g.safetensors"))
    loaded = toyroom_generator(weights=str(tmp_path / "g.safetensors"))
    assert loaded.resolution == 64 and loaded.default_layer == "layer5"
    assert [l.channels for l in loaded.layers][4] == 128


@pytest.mark.slow
def test_class_frequencies_count_every_pixel_once(tmp_path):
    from safetensors.torch import save_file

    from gandid_plugins.worlds.toyroom.gan import init_generator
    from gandid_plugins.worlds.toyroom.train import EVAL_SEED, class_frequencies

    save_file({k: v.half().contiguous() for k, v in init_generator(1).net.state_dict().items()},
              str(tmp_path / "g.safetensors"))
    result = class_frequencies(images=6, batch=4, weights=str(tmp_path / "g.safetensors"), out=tmp_path)
    assert (tmp_path / "class_frequencies.png").exists() and (tmp_path / "class_frequencies.json").exists()
    _, labels = render_batch(range(EVAL_SEED, EVAL_SEED + 6))
    exact = np.bincount(labels.ravel(), minlength=len(LABELS)) / labels[0].size / 6
    got = [result["classes"][name]["renders_exact"]["pixel_share"] for name in LABELS]
    np.testing.assert_allclose(got, exact, atol=1e-12)
    for arm in ("generated", "renders"):
        assert abs(sum(result["classes"][n][arm]["pixel_share"] for n in LABELS) - 1) < 1e-9


@pytest.mark.skipif(not GENERATOR_WEIGHTS.exists(), reason="the toyroom generator has not been trained yet")
@pytest.mark.slow
def test_shipped_generator_draws_rooms_with_objects():
    from gandid_plugins.worlds.toyroom.train import class_frequencies

    result = class_frequencies(images=100)["classes"]
    for name in ("wall", "floor", "ceiling"):
        assert result[name]["generated"]["image_share"] > 0.9, (name, result[name])
    objects = [n for n in LABELS if n not in ("wall", "floor", "ceiling")
               and result[n]["generated"]["image_share"] >= 0.2 and result[n]["generated"]["pixel_share"] >= 0.003]
    assert len(objects) >= 5, {n: result[n]["generated"] for n in LABELS}


@pytest.mark.skipif(not GENERATOR_WEIGHTS.exists(), reason="the toyroom generator has not been trained yet")
@pytest.mark.slow
def test_default_run_end_to_end_on_the_shipped_models(tmp_path):
    """`gandid run` with the defaults (toyroom generator and segmenter, every analysis), scaled down."""
    import json

    from gandid.config import RunConfig
    from gandid.runner import run

    # the analyses named: the tests put a test kit with more analyses on the path
    cfg = RunConfig(samples=16, out=str(tmp_path / "out"), device="cpu",
                    analysis=["dissect", "ace", "did", "entangle"], analysis_options={
        "ace": {"samples": 2, "classes": ["lamp", "plant"], "top_k": 4, "alpha_steps": 2},
        "did": {"samples": 8, "top_k": 4, "resamples": 100}})
    result = run(cfg)
    assert result.status == "completed" and not result.errors, result.errors
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["layers"] == ["layer5"]
    assert record["analysis_options"]["ace"]["samples"] == 2  # the user's over the generator's suggestion
    assert record["analysis_options"]["ace"]["context_locations"] == 8  # the suggestion where the user gave none
    assert set(result.results["entangle"]["classes"]) == {"lamp", "plant"}
    assert (tmp_path / "out" / "report.html").exists()


def test_minibatch_std_is_per_group_of_four():
    from gandid_plugins.worlds.toyroom.gan import minibatch_std

    x = torch.randn(12, 5, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = minibatch_std(x)
    assert got.shape == (12, 1, 4, 4)
    for i in range(12):  # sample i's group: samples with the same index modulo 12 / 4
        group = x[[j for j in range(12) if j % 3 == i % 3]].numpy()
        expected = np.sqrt(group.var(0) + 1e-8).mean()
        np.testing.assert_allclose(got[i].numpy(), expected, rtol=1e-12)
    assert len({round(float(v), 9) for v in got[:, 0, 0, 0]}) == 3  # one number per group, not per batch
    with pytest.raises(ValueError, match="divisible by 4"):
        minibatch_std(x[:11])  # 11 is prime: no group of 2-4 samples


@pytest.mark.slow
def test_a_resumed_training_run_continues_where_it_stopped(tmp_path):
    """Two steps, a checkpoint, two more steps give the weights of four steps in one go (the latent
    draws continue rather than replay)."""
    from gandid_plugins.worlds.toyroom.gan import Trainer

    real = torch.from_numpy(render_batch(range(8))[0])
    straight = Trainer(seed=5, batch=8)
    for _ in range(4):
        straight.train_step(real)
    first = Trainer(seed=5, batch=8)
    for _ in range(2):
        first.train_step(real)
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    torch.manual_seed(123)  # whatever happened in between
    resumed = Trainer(seed=5, batch=8)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    for _ in range(2):
        resumed.train_step(real)
    for a, b in zip(straight.gen.parameters(), resumed.gen.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.skipif(not WEIGHTS.exists(), reason="the toyroom segmenter has not been trained yet")
@pytest.mark.slow
def test_train_report_writes_the_model_cards_numbers(tmp_path, capsys, monkeypatch):
    """`python -m gandid_plugins.worlds.toyroom.train report` end to end, on a few images of a random generator."""
    import json

    from safetensors.torch import save_file

    from gandid_plugins.worlds.toyroom import train
    from gandid_plugins.worlds.toyroom.gan import init_generator

    rendered = []
    monkeypatch.setattr(train, "render_batch", lambda seeds: rendered.append(len(seeds)) or render_batch(seeds))
    weights = tmp_path / "g.safetensors"
    save_file({k: v.half().contiguous() for k, v in init_generator(2).net.state_dict().items()}, str(weights))
    train.main(["report", "--images", "8", "--weights", str(weights), "--out", str(tmp_path / "report")])
    # IoU 8, the 8 paired with generated images (drawn once for class frequencies and Fréchet), the
    # Fréchet floor's other 8, and the 32 of the render grid: as many as it says
    assert sum(rendered) == 8 + 8 + 8 + 32, rendered
    result = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(result["segmenter_iou"]) == set(LABELS) and 0 <= result["segmenter_mean_iou"] <= 1
    assert set(result["class_frequencies"]["classes"]) == set(LABELS)
    frechet = result["frechet"]
    # an untrained generator's images are further from renders than other renders are
    assert frechet["generated_vs_renders"] > frechet["renders_vs_renders"] >= 0
    assert frechet["relative"] == pytest.approx(frechet["generated_vs_renders"] / frechet["renders_total_variance"])
    for name in ("samples_report.png", "renders_report.png", "class_frequencies.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "segmenter mean IoU on 8 held-out renders" in printed and "Fréchet distance" in printed

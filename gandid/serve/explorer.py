"""What `gandid serve` does with a run: rebuild its models, render samples, unit overlays, edits and the
four DID arms of an edit. No HTTP here (:mod:`gandid.serve.app` maps requests to these calls and
:class:`BadRequest` / :class:`NotFound` to 400 / 404); every parameter is validated here, by name.
"""
from __future__ import annotations

import functools
import json
import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..errors import GandidError
from ..hooks import features_at
from ..intervene import ARM_TITLES, BetaControl, Intervention, counterfactuals, variants
from ..model import find_layer
from ..models import build_models, model_options, resolve_device
from ..record import RECORD_NAME, RunRecord
from ..registry import Registry, get_registry
from ..segmentation import class_fractions, label_planes
from .describe import describe
from .pictures import eroded, heat, palette, png_data_url, to_rgb

MAX_SAMPLE = 2 ** 31  # sample i is latent i of the run's seed: any non-negative index is valid
MAX_IMAGES = 16  # samples per unit-images request
MAX_VALUE = 1e4  # |insertion value|
VALUE_SAMPLES = 16  # samples whose activations give a unit's default insertion value
VALUE_QUANTILE = 0.99
FINISHED = ("completed", "completed_with_errors", "failed", "shard_done")  # run.json statuses a run ends with


class BadRequest(GandidError):
    """A request parameter is invalid (HTTP 400); the message names it and what is allowed."""


class NotFound(GandidError):
    """No such analysis result, file or layer (HTTP 404)."""


def _integer(body: dict, name: str, low: int, high: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise BadRequest(f"{name!r} must be an integer in [{low}, {high}), got {value!r}")
    return value


def _number(value, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise BadRequest(f"{name!r} must be a finite number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


@dataclass
class Edit:
    """A validated edit: ``units`` of ``layer`` ablated or inserted with strength α in ``region``."""

    sample: int
    layer: str
    units: list[int]
    mode: str
    strength: float
    values: list[float] | None
    region: torch.Tensor | None  # (h, w) in [0, 1], or None for the whole map


def _on_models(method):
    """Run ``method`` holding the models' lock, so that a reload's new models never meet it halfway."""
    @functools.wraps(method)
    def locked(self, *args):
        with self._models_lock:
            return method(self, *args)
    return locked


class Explorer:
    """A run folder with its generator and segmenter rebuilt from run.json."""

    def __init__(self, run_dir: str | Path, registry: Registry | None = None, device: str = "cpu"):
        self.run_dir = Path(run_dir).resolve()
        self.record_path = self.run_dir / RECORD_NAME
        if not self.record_path.is_file():
            raise GandidError(f"{str(run_dir)!r} is not a gandid run folder (no run.json): give the --out "
                              "folder of a `gandid run`")
        self.registry = registry or get_registry()
        self.device = resolve_device(device)
        self._reload_lock = threading.Lock()
        self._models_lock = threading.RLock()  # model calls hold it: a reload swaps the models between calls
        self._stamp = _stamp(self.record_path)
        self._views: dict[str, tuple] = {}  # analysis -> (its result's stamp and options, description)
        record, config = self._read_record()
        self._use(record, config, self._build_models(config))
        status = record.status
        if status not in FINISHED:
            _warn(f"run.json says this run is {status!r}, not finished: serving what it has written so far. The server "
                  "re-reads run.json whenever the run rewrites it: reload the page to see what it has added since.")

    def _read_record(self) -> tuple[RunRecord, RunConfig]:
        """run.json through the run's own reader, and the config the models are rebuilt from."""
        try:
            record = RunRecord.load(self.run_dir)
            return record, RunConfig.from_dict(record.config)
        except (ValueError, TypeError, GandidError) as exc:
            raise GandidError(f"{self.record_path} is damaged or from another gandid ({exc}): serve a run written by "
                              "this version, or run it again") from None

    def _build_models(self, config: RunConfig) -> tuple:
        """The run's generator and segmenter, in eval mode."""
        try:
            generator, segmenter = build_models(self.registry, config, self.device)
        except GandidError as exc:
            raise type(exc)(f"{exc} (rebuilding the models of {str(self.run_dir)!r} from its run.json: relative weight "
                            "paths there are relative to the folder `gandid run` was started in; start `gandid serve` "
                            "there)") from None
        if segmenter is None:
            raise GandidError(f"the run in {str(self.run_dir)!r} has no segmenter: serve needs one to show "
                              "segmentations")
        for model in (generator, segmenter):
            if hasattr(model, "eval"):
                model.eval()
        return generator, segmenter

    def _use(self, record: RunRecord, config: RunConfig, models: tuple | None) -> None:
        """Serve ``record`` (and ``models``, when given: from the next model call on)."""
        if models is None:  # the same models: no need to wait for a model call in flight
            self.record, self.config = record, config
            return
        with self._models_lock:
            self.record, self.config = record, config
            self.generator, self.segmenter = models
            self.labels = list(self.segmenter.labels)
            self.colours = torch.tensor(palette(len(self.labels)), dtype=torch.uint8)
            self._insert_values: dict[str, torch.Tensor] = {}

    def refresh(self) -> None:
        """Re-read run.json if it changed on disk since it was last read (a run still writing it): one stat per
        call. The models are rebuilt only when the ones it names changed (e.g. a --force rerun in the folder)."""
        stamp = _stamp(self.record_path)
        if stamp is None or stamp == self._stamp:  # None: gone for the moment; keep serving what was read
            return
        with self._reload_lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp  # before reading: a write after the stat gives a new stamp, read next time
            try:
                record, config = self._read_record()
                # rebuilding takes a while (weights are read again): only for other models, e.g. a --force rerun
                models = self._build_models(config) if _model_key(config) != _model_key(self.config) else None
            except Exception as exc:  # keep the last good view; the run's next write gets another try
                _warn(f"not reloading {self.record_path}: {type(exc).__name__}: {exc}")
                return
            self._use(record, config, models)

    # -- what the run is -----------------------------------------------------------------------
    def info(self) -> dict:
        self.refresh()
        stages = self.record.stages
        gen = self.generator
        return {  # the JSON API's /api/run (docs/serve.md)
            "name": self.run_dir.name, "status": self.record.status, "generator": self.config.generator,
            "segmenter": self.config.segmenter, "seed": self.config.seed, "samples": self.config.samples,
            "resolution": gen.resolution, "device": self.device,
            "layers": [{"name": l.name, "channels": l.channels, "size": list(l.size)} for l in gen.layers],
            "analysed_layers": list(self.record.layers or []), "labels": self.labels,
            "colours": self.colours.tolist(),
            "analyses": {name: {"status": stage.status, "result": self._result_path(name) is not None}
                         for name, stage in stages.items()},
            "did_sites": self._did_sites(), "arm_titles": dict(ARM_TITLES), "files": list(self.record.files),
            "limits": {"max_sample": MAX_SAMPLE, "max_images": MAX_IMAGES, "max_value": MAX_VALUE},
        }

    def analyses(self) -> list[dict]:
        """The run's stages in run order, each with what the views show of it: the description its analysis's
        ``explorer(result)`` gives (gandid.serve.describe), or ``view: None`` (no result, or no ``explorer``);
        ``error`` says why an analysis that has one could not be described (the others are still shown)."""
        self.refresh()
        out = []
        for name, stage in self.record.stages.items():
            path = self._result_path(name)
            entry = {"name": name, "status": stage.status, "result": path is not None, "view": None,
                     "error": None}
            if path is not None:
                try:
                    entry["view"] = self._description(name, path)
                except Exception as exc:  # a plugin's broken explorer() must not hide the other analyses
                    entry["error"] = f"{type(exc).__name__}: {exc}"
            out.append(entry)
        return out

    def _description(self, name: str, path: Path) -> dict | None:
        """``name``'s description (or the error it raised), computed again only when its result file (at
        ``path``) or the options the run used change."""
        options = dict((self.record.analysis_options or self.config.analysis_options).get(name) or {})
        key = (_stamp(path), json.dumps(options, sort_keys=True, default=str))
        cached = self._views.get(name)
        if cached is None or cached[0] != key:
            try:
                cached = (key, describe(self._analysis(name, options), self._read_result(name)), None)
            except Exception as exc:  # kept, so that a broken description is not recomputed on every request
                cached = (key, None, exc)
            self._views[name] = cached
        if cached[2] is not None:
            raise cached[2]
        return cached[1]

    def _analysis(self, name: str, options: dict):
        """The analysis built with the run's options, or with its defaults where those no longer fit (a
        description reads the result, not the options); the first error if neither builds."""
        try:
            return self.registry.create("analysis", name, **options)
        except Exception as first:
            if not options:
                raise
            try:
                return self.registry.create("analysis", name)
            except Exception:
                raise first from None

    def _result_path(self, analysis: str) -> Path | None:
        path = self.run_dir / f"{analysis}.json"
        if self.record.stage_status(analysis) != "done" or not path.is_file():
            return None
        return path

    def result(self, analysis: str) -> dict:
        """An analysis's JSON result, as the run wrote it."""
        self.refresh()
        return self._read_result(analysis)

    def _read_result(self, analysis: str) -> dict:
        path = self._result_path(analysis)
        if path is None:
            done = [name for name in self.record.stages if self._result_path(name)]
            raise NotFound(f"this run has no finished result of analysis {analysis!r} (it has: {', '.join(done) or 'none'})")
        # the runs write NaN where a number is undefined (e.g. a lift over zero chance); JSON has no NaN
        return json.loads(path.read_text(), parse_constant=lambda name: None)

    def file(self, relative: str) -> Path:
        """A file the run lists in run.json, inside the run folder; anything else is NotFound."""
        self.refresh()
        missing = NotFound(f"no file {relative!r} in this run (only the files run.json lists are served)")
        if relative not in set(self.record.files) or "\x00" in relative:
            raise missing  # before any file system call: they raise ValueError on a NUL
        path = (self.run_dir / relative).resolve()
        if not path.is_relative_to(self.run_dir) or not path.is_file():
            raise missing
        return path

    def _did_sites(self, layer: str | None = None) -> list[str] | None:
        """The norm sites an analysis of the run controlled in its DID (its description's ``controlled_sites``),
        for an edit at ``layer``; None (the default sites from the edited layer on) if none did at that layer."""
        for name in self.record.stages:  # no refresh: a model call keeps the models it started with
            path = self._result_path(name)
            try:
                view = self._description(name, path) if path is not None else None
            except Exception:  # a broken description is reported by /api/analyses; here it only controls nothing
                continue
            sites = (view or {}).get("controlled_sites")
            if isinstance(sites, dict) and (layer is None or sites.get("layer") == layer):
                return [str(site) for site in sites.get("sites") or []]
        return None

    # -- validation ----------------------------------------------------------------------------
    def sample_index(self, value) -> int:
        if isinstance(value, str):
            value = int(value) if value.isdigit() else value
        return _integer({"sample": value}, "sample", 0, MAX_SAMPLE)

    def layer(self, name) -> object:
        if not isinstance(name, str):
            raise BadRequest(f"'layer' must be a layer name, got {name!r}")
        try:
            return find_layer(self.generator, name)
        except GandidError as exc:
            raise BadRequest(str(exc)) from None

    def parse_edit(self, body) -> Edit:
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object (see docs/serve.md)")
        unknown = sorted(set(body) - {"sample", "layer", "units", "mode", "strength", "values", "region"})
        if unknown:
            raise BadRequest(f"unknown parameters {unknown}: an edit takes sample, layer, units, mode, strength, "
                             "values, region")
        sample = _integer(body, "sample", 0, MAX_SAMPLE)
        info = self.layer(body.get("layer"))
        units = body.get("units")
        if not isinstance(units, list) or not units or len(units) > info.channels:
            raise BadRequest(f"'units' must be a non-empty list of at most {info.channels} unit indices")
        for u in units:
            if isinstance(u, bool) or not isinstance(u, int) or not 0 <= u < info.channels:
                raise BadRequest(f"invalid unit {u!r}: layer {info.name!r} has units 0..{info.channels - 1}")
        if len(set(units)) != len(units):
            raise BadRequest(f"'units' repeat: {units}")
        mode = body.get("mode", "ablate")
        if mode not in ("ablate", "insert"):
            raise BadRequest(f"'mode' must be 'ablate' or 'insert', got {mode!r}")
        strength = _number(body.get("strength", 1.0), "strength", 0.0, 1.0)
        values = body.get("values")
        if values is not None:
            if mode == "ablate":
                raise BadRequest("'values' are insertion values: give them only with mode 'insert'")
            if not isinstance(values, list):
                values = [values] * len(units)
            if len(values) != len(units):
                raise BadRequest(f"'values' must be one number or one per unit ({len(units)}), got {len(values)}")
            values = [_number(v, "values", -MAX_VALUE, MAX_VALUE) for v in values]
        region = body.get("region")
        if region is not None:
            h, w = info.size
            if not isinstance(region, list) or len(region) != h or any(
                    not isinstance(row, list) or len(row) != w for row in region):
                raise BadRequest(f"'region' must be null (the whole map) or a {h} x {w} array (layer "
                                 f"{info.name!r}'s feature map)")
            cells = [_number(v, "region", 0.0, 1.0) for row in region for v in row]
            region = torch.tensor(cells, dtype=torch.float32).view(h, w)
            if not region.any():
                raise BadRequest("'region' is empty: paint at least one cell, or send null for the whole map")
        return Edit(sample, info.name, list(units), mode, strength, values, region)

    # -- the model -----------------------------------------------------------------------------
    def _latents(self, indices: list[int]) -> torch.Tensor:
        rows = [self.generator.sample_z(1, self.config.seed, start=i) for i in indices]
        return torch.cat(rows).to(self.device)

    def _segment(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W) labels (K = 1 for a single-label segmenter)."""
        return label_planes(self.segmenter.segment(images))

    def _view(self, image: torch.Tensor, labels: torch.Tensor) -> dict:
        """An image, the colours of its segmentation's first plane (black where it has no label) and the
        share of pixels showing each class in any plane. labels: (K, H, W)."""
        areas = class_fractions(labels.unsqueeze(0), len(self.labels))[0]
        first = labels[0].cpu()
        colours = self.colours[first.clamp_min(0)] * (first >= 0).unsqueeze(-1).to(torch.uint8)
        return {"image": png_data_url(to_rgb(image)), "segmentation": png_data_url(colours.permute(2, 0, 1)),
                "areas": {name: round(float(a), 6) for name, a in zip(self.labels, areas) if a > 0}}

    @_on_models
    @torch.no_grad()
    def sample(self, index) -> dict:
        index = self.sample_index(index)
        images = self.generator.forward(self._latents([index]))
        return {"index": index, **self._view(images[0], self._segment(images)[0])}

    @_on_models
    @torch.no_grad()
    def unit_images(self, layer, unit, threshold, samples) -> dict:
        """The unit's map above ``threshold`` outlined on each sample, in one batched pass."""
        info = self.layer(layer)
        unit = _integer({"unit": _parsed(unit, "unit", int)}, "unit", 0, info.channels)
        threshold = _number(_parsed(threshold, "threshold", float), "threshold", -1e30, 1e30)
        if isinstance(samples, str):
            samples = [_parsed(s, "samples", int) for s in samples.split(",") if s.strip()]
        if not isinstance(samples, list) or not 0 < len(samples) <= MAX_IMAGES:
            raise BadRequest(f"'samples' must list 1 to {MAX_IMAGES} sample indices")
        indices = [self.sample_index(s) for s in samples]
        z = self._latents(indices)
        feats = features_at(self.generator, z, info.name)[:, unit:unit + 1]
        images = self.generator.forward(z)
        size = images.shape[-2:]
        # as dissection compares it with the segmentation: bilinear upsampling to the image's size
        above = F.interpolate(feats.float(), size=size, mode="bilinear", align_corners=False)[:, 0] > threshold
        out = []
        for i, index in enumerate(indices):
            rgb = to_rgb(images[i])
            dimmed = (rgb.float() * torch.where(above[i], 1.0, 0.35)).round().to(torch.uint8)
            edge = above[i] & ~eroded(above[i])
            dimmed[:, edge] = torch.tensor([255, 220, 0], dtype=torch.uint8).view(3, 1)
            out.append({"index": index, "image": png_data_url(rgb), "overlay": png_data_url(dimmed),
                        "area": round(float(above[i].float().mean()), 6)})
        return {"layer": info.name, "unit": unit, "threshold": threshold, "images": out}

    def insert_values(self, layer: str) -> torch.Tensor:
        """(C,) default insertion values: each unit's 99th percentile of activation over the first samples."""
        if layer not in self._insert_values:
            with torch.no_grad():
                feats = features_at(self.generator, self._latents(list(range(VALUE_SAMPLES))), layer)
            per_unit = feats.float().transpose(0, 1).reshape(feats.shape[1], -1)
            self._insert_values[layer] = torch.quantile(per_unit, VALUE_QUANTILE, dim=1).cpu()
        return self._insert_values[layer]

    def _intervention(self, edit: Edit) -> tuple[Intervention, list[float] | None]:
        values = edit.values
        if edit.mode == "insert" and values is None:
            values = [float(v) for v in self.insert_values(edit.layer)[edit.units]]
        return Intervention(edit.layer, edit.units, edit.region, edit.strength, values), values

    @_on_models
    @torch.no_grad()
    def edit(self, edit: Edit) -> dict:
        """The original and the edited sample from one batched engine call (one shared prefix)."""
        started = time.perf_counter()
        iv, values = self._intervention(edit)
        z = self._latents([edit.sample])
        unchanged = Intervention(edit.layer, [])  # no units: the original, through the same engine pass
        images = torch.cat([block for _, block in variants(self.generator, z, [unchanged, iv])])[:, 0]
        labels = self._segment(images)
        original, edited = self._view(images[0], labels[0]), self._view(images[1], labels[1])
        return {"original": original, "edited": edited, "change": _change(original["areas"], edited["areas"]),
                "values": values, "ms": round(1000 * (time.perf_counter() - started), 1)}

    @_on_models
    @torch.no_grad()
    def arms(self, edit: Edit) -> dict:
        """The four DID arms of the edit (one batched engine call) and ΔY."""
        started = time.perf_counter()
        iv, values = self._intervention(edit)
        sites = self._did_sites(edit.layer)
        try:
            arms = counterfactuals(self.generator, self._latents([edit.sample]), iv, BetaControl(sites))
        except GandidError as exc:  # e.g. the run's DID sites are not this generator's
            raise BadRequest(str(exc)) from None
        names = list(ARM_TITLES)
        images = torch.cat([getattr(arms, name) for name in names])
        labels = self._segment(images)
        views = {name: self._view(images[i], labels[i]) for i, name in enumerate(names)}
        delta = arms.did[0].float()  # (3, H, W)
        magnitude = delta.abs().mean(0)
        area = {}
        for label in self.labels:
            a = {name: views[name]["areas"].get(label, 0.0) for name in names}
            did = (a["intervened"] - a["original_swapped_beta"]) - (a["intervened_fixed_beta"] - a["original"])
            if did != 0:
                area[label] = round(did, 6)
        return {"arms": views, "arm_titles": dict(ARM_TITLES), "sites": list(arms.sites), "values": values,
                "did": {"image": png_data_url(heat(magnitude)), "mean_abs": float(magnitude.mean()), "area": area},
                "ms": round(1000 * (time.perf_counter() - started), 1)}


def _stamp(path: Path) -> tuple | None:
    """What changes when ``path`` is rewritten (the runs replace run.json: a new inode), or None if it is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _model_key(config: RunConfig) -> tuple:
    """What the served models are built from: another key needs other models."""
    return config.generator, config.segmenter, model_options(config)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _parsed(value, name: str, kind: type):
    """A query-string parameter as ``kind`` (int or float); other values are left to the range checks."""
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            raise BadRequest(f"{name!r} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    return value


def _change(before: dict, after: dict) -> dict:
    return {label: round(after.get(label, 0.0) - before.get(label, 0.0), 6)
            for label in dict.fromkeys(list(before) + list(after))
            if after.get(label, 0.0) != before.get(label, 0.0)}

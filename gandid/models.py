"""Building a run's plugin objects: the generator, the segmenter and the analyses from their factories,
each checked against its protocol before any work, on the device the run uses. `gandid run`,
`gandid merge` and `gandid serve` (which rebuilds a finished run's models) build them here.
"""
from __future__ import annotations

from .analysis import Analysis
from .config import RunConfig
from .contracts import check_contract
from .errors import ConfigError, GandidError
from .model import Generator, Segmenter
from .registry import Registry

PROTOCOLS = {"generator": Generator, "segmenter": Segmenter, "analysis": Analysis}


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a CUDA device, else ``cpu``; ``cuda`` without one is refused."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device (use --device cpu or auto)")
    return device


def as_config_error(reg: Registry, kind: str, name: str, fn, *args, **kwargs):
    """Call a plugin's factory or check; what it refuses becomes gandid's own message, not a traceback."""
    try:
        return fn(*args, **kwargs)
    except GandidError:
        raise
    except Exception as exc:
        plugin = reg.get(kind, name).plugin.name
        raise ConfigError(f"{kind} {name!r} (plugin {plugin!r}) refused its options: {type(exc).__name__}: {exc}"
                          ) from exc


def build_plugin(reg: Registry, kind: str, name: str, options: dict):
    """The plugin's object, checked against its protocol before any work."""
    obj = as_config_error(reg, kind, name, reg.get(kind, name).factory, **options)
    check_contract(obj, PROTOCOLS[kind], f"{kind} {name!r} (plugin {reg.get(kind, name).plugin.name!r})")
    return obj


def model_options(cfg: RunConfig) -> tuple[dict, dict]:
    """The generator's and the segmenter's factory options, weights included."""
    return (dict(cfg.generator_options, **({"weights": cfg.weights} if cfg.weights else {})),
            dict(cfg.segmenter_options, **({"weights": cfg.seg_weights} if cfg.seg_weights else {})))


def build_models(reg: Registry, cfg: RunConfig, device: str, gen_options: dict | None = None,
                 seg_options: dict | None = None):
    """The run's generator and segmenter (None without one), checked against their protocols, on ``device``.
    Options default to the config's, weights included (how `gandid serve` rebuilds a finished run's models)."""
    if gen_options is None or seg_options is None:
        gen_options, seg_options = model_options(cfg)
    generator = build_plugin(reg, "generator", cfg.generator, gen_options)
    segmenter = build_plugin(reg, "segmenter", cfg.segmenter, seg_options) if cfg.segmenter else None
    for model in (generator, segmenter):
        if model is not None and hasattr(model, "to"):
            model.to(device)
    return generator, segmenter


def weights_info(model) -> dict | None:
    """What a model says it loaded (file, stored dtypes, dtype used), for run.json."""
    info = getattr(model, "weights_info", None)
    return dict(info) if isinstance(info, dict) else None

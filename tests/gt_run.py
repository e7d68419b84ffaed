"""A small finished run of the ground-truth world (tests/ground_truth.py), every analysis in seconds, with
the registry that rebuilds its models (the report's and `gandid serve`'s tests); and a real server for it."""
import contextlib
import socket
import threading
import time
import types

from ground_truth import GroundTruthGenerator, GroundTruthSegmenter

from gandid import hookimpl
from gandid.config import RunConfig
from gandid.registry import Registry
from gandid.runner import run


def ground_truth_registry(segmenter: str = "gt", description: str = "") -> Registry:
    """The ground-truth generator ("gt") and segmenter (``segmenter``), and the four analyses."""
    import gandid_plugins.analyses.ace
    import gandid_plugins.analyses.did
    import gandid_plugins.analyses.dissect
    import gandid_plugins.analyses.entangle

    module = types.ModuleType("gt")
    module.gandid_register_generators = hookimpl(lambda register: register("gt", GroundTruthGenerator))
    module.gandid_register_segmenters = hookimpl(
        lambda register: register(segmenter, GroundTruthSegmenter, description=description))
    reg = Registry(load_entry_points=False)
    reg.add_plugin(module, "gt")
    for mod in (gandid_plugins.analyses.dissect, gandid_plugins.analyses.ace, gandid_plugins.analyses.did, gandid_plugins.analyses.entangle):
        reg.add_plugin(mod, mod.__name__)
    return reg


def build_run(out, segmenter: str = "gt", description: str = "") -> Registry:
    """Run every analysis on the ground-truth world into ``out``; returns the registry to serve it with."""
    reg = ground_truth_registry(segmenter, description)
    cfg = RunConfig(generator="gt", segmenter=segmenter, analysis=["dissect", "ace", "did", "entangle"],
                    samples=32, batch_size=16, device="cpu", out=str(out), layer=["feat"],
                    analysis_options={"dissect": {"quantile": 0.9, "fit_samples": 32},
                                      "ace": {"samples": 8, "top_k": 3, "alpha_steps": 3},
                                      "did": {"top_k": 1}})
    result = run(cfg, registry=reg)
    assert result.status == "completed", result.errors
    return reg


@contextlib.contextmanager
def serving(app):
    """``app`` served by uvicorn on 127.0.0.1 (a free port) in a background thread; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()

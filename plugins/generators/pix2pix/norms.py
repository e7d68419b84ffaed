"""pix2pix's normalisation layers and how each is a norm site: batch norm (running statistics, or each
sample's own) and instance norm.

Facts read from junyanz/pytorch-CycleGAN-and-pix2pix:

- ``test.py`` runs the network in train mode unless ``--eval``: with batch size 1 its batch norms then
  normalise each image by its own statistics (the pix2pix paper's "instance normalization" at test
  time) and its dropout stays on. Here dropout is always off (an image depends only on its input), and
  the option ``batchnorm`` chooses: ``eval`` (default, ``--eval``: the running statistics, a fixed
  affine map that does not depend on the sample) or ``sample`` (each image's own statistics, then the
  affine weights, as test.py without ``--eval``).

Instance norms are sites of kind ``instancenorm`` (:class:`gandid.model.InstanceNorm`, eps 1e-5, no
affine); batch norms in eval mode are sites of kind ``batchnorm``, which the DID engine cannot control
(their statistics are constants: nothing to record, borrow or replay); with ``batchnorm = "sample"``
they are ``instancenorm`` sites followed by the batch norm's affine weights.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gandid.model import InstanceNorm

EPS = 1e-5  # nn.BatchNorm2d's and nn.InstanceNorm2d's default, as get_norm_layer builds them
BATCHNORM_MODES = ("eval", "sample")


class BatchNorm(nn.Module):
    """``nn.BatchNorm2d(affine=True, track_running_stats=True)``'s tensors, never updated.

    ``mode="eval"``: the running statistics (``model.eval()``, test.py ``--eval``), a fixed affine map;
    ``mode="sample"``: each sample's own statistics (biased variance, eps 1e-5: what a batch of one does
    in train mode) through :attr:`norm`, a :class:`gandid.model.InstanceNorm` the DID engine controls,
    then the affine weights."""

    def __init__(self, channels: int, mode: str = "eval"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.mode = mode
        self.norm = InstanceNorm(eps=EPS) if mode == "sample" else None

    def forward(self, x):
        if self.mode == "eval":
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, EPS)
        return self.norm(x) * self.weight[:, None, None] + self.bias[:, None, None]


def _norm_layer(norm: str, channels: int, batchnorm: str) -> nn.Module:
    if norm == "batch":
        return BatchNorm(channels, batchnorm)
    if norm == "instance":
        return InstanceNorm(eps=EPS)  # affine=False, track_running_stats=False: no tensors in the file
    return nn.Identity()


def _site_kind(norm: str, batchnorm: str) -> str | None:
    if norm == "instance" or (norm == "batch" and batchnorm == "sample"):
        return "instancenorm"
    return "batchnorm" if norm == "batch" else None


def _site_module(module: nn.Module) -> nn.Module:
    """The module a norm site is controlled through (a BatchNorm in sample mode: its InstanceNorm)."""
    return module.norm if isinstance(module, BatchNorm) and module.norm is not None else module

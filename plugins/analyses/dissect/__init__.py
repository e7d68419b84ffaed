"""`dissect`: which units draw which classes (GAN Dissection, Bau et al. 2019).

``compute``: the Dissect analysis, its threshold fits and IoU counts; ``measures``: IoU and IQR from
those counts; ``report``: its part of report.html and its figures; ``explore``: what `gandid serve`
shows of it.
"""
from gandid import hookimpl

from .compute import (
    FIT_SEED_OFFSET,
    MODES,
    NO_LABEL,
    REPORT_MAX_FRACTION,
    Categories,
    Dissect,
    labels_shown,
    one_hot_pixels,
    raw_pixels,
    upsampled,
)
from .measures import IQR_FRACTIONS, chance_iou, choose_by_iqr, iqr_table, lift, table_iqr
from .report import criterion

__all__ = ["FIT_SEED_OFFSET", "IQR_FRACTIONS", "MODES", "NO_LABEL", "REPORT_MAX_FRACTION", "Categories", "Dissect",
           "chance_iou", "choose_by_iqr", "criterion", "iqr_table", "labels_shown", "lift", "one_hot_pixels",
           "raw_pixels", "table_iqr", "upsampled"]


@hookimpl
def gandid_register_analyses(register):
    register("dissect", Dissect, description="GAN Dissection: per-unit IoU with each class, thresholds, top images")

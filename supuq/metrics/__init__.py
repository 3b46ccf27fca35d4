"""Evaluation metrics, batched and pure torch (docs/architecture.md, Metrics).

- `distances`: IoU distances between sets of masks from Gram matrices; the GED, its terms, E d(S,Y), diversity.
- `matching`: the Hungarian-matched IoU (HM-IoU) of samples against repeated annotations.
- `maps`: NCC between uncertainty maps and its summary over images.
- `calibration`: Brier score, reliability diagram and ECE of p_m against p_g.
"""

from .calibration import Reliability, brier, ece, ece_from_bins, reliability
from .distances import GedTerms, diversity, expected_distance, ged, ged_terms, pairwise_distance, pairwise_iou
from .maps import NccSummary, ncc, summarize_ncc
from .matching import hm_iou

__all__ = [
    "GedTerms",
    "NccSummary",
    "Reliability",
    "brier",
    "diversity",
    "ece",
    "ece_from_bins",
    "expected_distance",
    "ged",
    "ged_terms",
    "hm_iou",
    "ncc",
    "pairwise_distance",
    "pairwise_iou",
    "reliability",
    "summarize_ncc",
]

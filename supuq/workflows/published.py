"""The values Hu et al. 2019 published in their Table 2 (GED) and Table 3 (NCC), and the protocol behind them.

One copy, used by the Table 2/3 model (`supuq.workflows.tables`), so the report, the terminal table and the
study show the same numbers with the same label. They were measured on the authors' slice-level random split
with the authors' preprocessing (a patient's slices can fall in train and test), which is not supuq's default
patient-level split: they are shown beside a run's numbers for orientation, never as a value it reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = ("Hu et al., Supervised Uncertainty Quantification for Segmentation with Multiple Annotations, "
         "MICCAI 2019 (arXiv:1907.01949)")
PUBLISHED_LABEL = "published (Hu et al. 2019), not reproduced here"
PROTOCOL = "slice-level random split, the authors' preprocessing"
# Seeds behind the published mean +- std: five runs for Table 2, three for Table 3.
PUBLISHED_SEEDS = {"ged": 5, "ncc": 3}


@dataclass(frozen=True)
class PublishedValue:
    """One published cell: mean +- std over the paper's seeds."""

    mean: float
    std: float


# Per dataset family, metric ("ged" = Table 2, "ncc" = Table 3) and method ("supervised" = the paper's method,
# "kohl" = Probabilistic U-Net, "kendall_gal" = Kendall & Gal). A method missing under a metric was not
# reported there (the paper's Table 3 has no NCC for the Probabilistic U-Net).
PUBLISHED: dict[str, dict[str, dict[str, PublishedValue]]] = {
    "lidc": {
        "ged": {"kohl": PublishedValue(0.346, 0.038), "kendall_gal": PublishedValue(0.553, 0.010),
                "supervised": PublishedValue(0.267, 0.012)},
        "ncc": {"kendall_gal": PublishedValue(0.597, 0.006), "supervised": PublishedValue(0.669, 0.011)},
    },
    "miccai2012": {
        "ged": {"kohl": PublishedValue(0.382, 0.017), "kendall_gal": PublishedValue(0.571, 0.028),
                "supervised": PublishedValue(0.373, 0.021)},
        "ncc": {"kendall_gal": PublishedValue(0.299, 0.011), "supervised": PublishedValue(0.345, 0.005)},
    },
}


def published_for(dataset: str) -> dict[str, dict[str, PublishedValue]] | None:
    """The paper's Table 2/3 values for `dataset`'s family (the dataset registry's: every LIDC route is
    LIDC-IDRI), or None where the paper has none (synthetic, QUBIQ)."""
    from ..data.registry import REGISTRY

    family = REGISTRY[dataset].family if dataset in REGISTRY else None
    return PUBLISHED.get(family) if family else None

"""supuq.checkpoint: a checkpoint loads safely, rebuilds the trained model, and a broken one names its file."""

from __future__ import annotations

import pytest
import torch

from supuq.checkpoint import load_checkpoint, model_from_checkpoint
from supuq.errors import SupuqError
from supuq.train import fit


def test_checkpoint_is_safe_and_rebuilds_model(tiny_cfg, tmp_path):
    result = fit(tiny_cfg, checkpoint_dir=tmp_path)
    model, cfg = model_from_checkpoint(result.checkpoint_path)
    assert cfg == tiny_cfg
    for (name, a), (_, b) in zip(result.model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SupuqError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")

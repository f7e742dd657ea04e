"""Half-written files left by a run killed mid-write are removed by the next complete checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from adaptune.training.checkpoint import LoopState, find_checkpoint, save_checkpoint


def test_next_checkpoint_removes_stale_tmp_files(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    root.mkdir()
    stale = root / ".latest.json.k3j2x.tmp"
    stale.write_text('{"checkpoint": "step-00', encoding="utf-8")  # torn by a kill
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    folder = save_checkpoint(
        root,
        loop=LoopState(step=1),
        trainable={"w": weight},
        best=None,
        optimizer=optimizer,
        scheduler=scheduler,
        config_fingerprint="abc",
        config_flat={},
    )
    assert not stale.exists()
    assert find_checkpoint(root) == folder
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", folder.name]

"""Frozen outputs of the PushT low-dim shortcut run (the package default until 2026-12-05, so it pins
objective=shortcut): the first training losses and a checkpoint's actions
must stay what the code produced before observations became shape_meta dicts (tests/data/
pusht_lowdim_frozen.json, recorded at commit 2f6fcb6). A change that moves them changes the numbers
every PushT result in docs/ was measured with; it must be deliberate (re-record the file, say why)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from shortcut_policy.policy import ShortcutPolicy
from shortcut_policy.train.run import run_training

REPO = Path(__file__).resolve().parents[1]
FROZEN = json.loads((REPO / "tests" / "data" / "pusht_lowdim_frozen.json").read_text())


def test_default_pusht_run_reproduces_frozen_losses_and_actions(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = compose("train", overrides=[
                "objective=shortcut", "train.steps=6", "train.log_every=1", "train.val_every=1000", "train.progress=false",
                "train.ckpt_every=6", "train.num_threads=1", f"out_dir={tmp_path}",
                f"task.dataset.path={REPO / 'datasets' / 'pusht_lowdim.zarr'}"])
        run_training(OmegaConf.to_container(cfg, resolve=True))
        rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [r["step"] for r in FROZEN["losses"]]
        for got, want in zip(rows, FROZEN["losses"]):
            for key in ("train/loss", "train/loss_flow", "train/loss_consistency"):
                np.testing.assert_allclose(got[key], want[key], rtol=2e-5, err_msg=f"{key} at step {got['step']}")

        policy, _ = ShortcutPolicy.from_checkpoint(tmp_path / "checkpoints" / "latest.pt")
        obs = {"keypoint": torch.tensor(FROZEN["obs_keypoint"]), "agent_pos": torch.tensor(FROZEN["obs_agent_pos"])}
        for steps, want in FROZEN["actions"].items():
            g = torch.Generator().manual_seed(FROZEN["generator_seed"])
            got = policy.predict_action_chunk(obs, int(steps), generator=g).numpy()
            np.testing.assert_allclose(got, np.array(want), atol=2e-3, rtol=1e-5, err_msg=f"{steps} calls")
    finally:
        torch.set_num_threads(threads)

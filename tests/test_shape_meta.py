"""shape_meta: parsing and validation, derivation from data, and the one check of observation dicts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shortcut_policy.shape_meta import ArraySpec, ShapeMeta, ShapeMetaError

SM = {"obs": {"agent_pos": {"shape": [2], "type": "low_dim"}, "image": {"shape": [96, 96, 3], "type": "rgb"}},
      "action": {"shape": [2]}}


def test_round_trip_and_views():
    sm = ShapeMeta.from_dict(SM)
    assert ShapeMeta.from_dict(sm.to_dict()) == sm and sm.to_dict() == SM
    assert sm.keys == ["agent_pos", "image"] and sm.low_dim_keys == ["agent_pos"] and sm.rgb_keys == ["image"]
    assert sm.action_dim == 2 and sm.low_dim == 2 and sm.obs["image"].dtype == np.uint8
    assert sm.describe() == "agent_pos (2,) low_dim, image (96, 96, 3) rgb -> action (2,)"
    ex = sm.example_obs((3, 2))
    assert ex["image"].shape == (3, 2, 96, 96, 3) and ex["image"].dtype == np.uint8
    assert ex["agent_pos"].dtype == np.float32


@pytest.mark.parametrize("bad, match", [
    ({"obs": {}, "action": {"shape": [2]}}, "at least one observation key"),
    ({"obs": {"a": {"shape": [2]}}}, "exactly the entries 'obs' and 'action'"),
    ({"obs": {"a": {"shape": [0]}}, "action": {"shape": [2]}}, "positive integers"),
    ({"obs": {"a": {"shape": [2], "type": "depth"}}, "action": {"shape": [2]}}, "type must be one of"),
    ({"obs": {"a": {"shape": [3, 96, 96], "type": "rgb"}}, "action": {"shape": [2]}}, r"\(H, W, 3\)"),
    ({"obs": {"a": {"shape": [2]}}, "action": {"shape": [2, 3]}}, "one low-dim vector"),
    ({"obs": {"a": {"shape": [2], "dtype": "uint8"}}, "action": {"shape": [2]}}, "a low_dim key is float32"),
    ({"obs": {"a": {"shape": [2], "scale": 3}}, "action": {"shape": [2]}}, "unknown fields"),
    ({"obs": {"action": {"shape": [2]}}, "action": {"shape": [2]}}, "not 'action'"),
])
def test_invalid_descriptions_say_what_to_fix(bad, match):
    with pytest.raises(ShapeMetaError, match=match):
        ShapeMeta.from_dict(bad)


def test_infer_from_arrays():
    sm = ShapeMeta.infer({"img": np.zeros((5, 8, 8, 3), np.uint8), "depth": np.zeros((5, 8, 8, 1), np.uint8),
                          "pos": np.zeros((5, 3)), "grip": np.zeros(5)}, np.zeros((5, 7), np.float32))
    assert sm.obs["img"] == ArraySpec((8, 8, 3), "rgb")
    assert sm.obs["depth"].type == "low_dim" and sm.obs["grip"].shape == (1,) and sm.action_dim == 7


def test_check_obs_works_on_numpy_and_torch():
    sm = ShapeMeta.from_dict(SM)
    good = {"agent_pos": np.zeros((4, 2, 2), np.float64), "image": np.zeros((4, 2, 96, 96, 3), np.uint8)}
    assert list(sm.check_obs(good)) == ["agent_pos", "image"]
    tgood = {k: torch.from_numpy(v) for k, v in good.items()}
    sm.check_obs(tgood)
    with pytest.raises(ShapeMetaError, match=r"\['image'\] is an rgb key: expected uint8 \(B, To, 96, 96, 3\), got dtype float32"):
        sm.check_obs({**tgood, "image": tgood["image"].float()})
    with pytest.raises(ShapeMetaError, match=r"\['image'\] has shape \(4, 2, 3, 96, 96\), expected \(B, To, 96, 96, 3\)"):
        sm.check_obs({**good, "image": np.zeros((4, 2, 3, 96, 96), np.uint8)})
    with pytest.raises(ShapeMetaError, match=r"low_dim key: expected a float array"):
        sm.check_obs({**good, "agent_pos": np.zeros((4, 2, 2), np.int32)})
    one_step = {"agent_pos": np.zeros(2, np.float32), "image": np.zeros((96, 96, 3), np.uint8)}
    sm.check_obs(one_step, n_lead=0, lead_names=())

"""Camera observations: the vision encoder, the observation encoder from shape_meta, image policies
end to end (loss, chunk, export against eager) and the image data path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shortcut_policy.nets.vision import ImageEncoder, ResNet18Trunk, SpatialSoftmax, load_torchvision_resnet18
from shortcut_policy.policy import PolicyConfig, ShortcutPolicy
from shortcut_policy.policy.normalizer import Normalizer
from shortcut_policy.policy.obs_encoder import ObsEncoder
from shortcut_policy.shape_meta import ShapeMeta

from .conftest import REPO

TINY_NET = {"net": "unet1d", "net_kwargs": {"down_dims": [16, 32], "kernel_size": 3, "n_groups": 4}}


def meta(cameras=("cam",), size=48, low_dim=2):
    obs = {c: {"shape": [size, size, 3], "type": "rgb"} for c in cameras}
    if low_dim:
        obs["agent_pos"] = {"shape": [low_dim]}
    return {"obs": obs, "action": {"shape": [2]}}


def image_policy(net="unet1d", cameras=("cam",), size=48, **enc):
    cfg = PolicyConfig(shape_meta=meta(cameras, size), horizon=8, n_obs_steps=2, n_action_steps=4,
                       obs_encoder={"out_dim": 16, "num_kp": 8, **enc},
                       **(TINY_NET if net == "unet1d" else {"net": "transformer",
                                                            "net_kwargs": {"n_layer": 1, "n_head": 2, "n_emb": 32}}))
    p = ShortcutPolicy(cfg)
    p.normalizer.fit({"agent_pos": torch.rand(50, 2) * 512, "action": torch.rand(50, 2) * 512})
    return p.eval()


def raw_obs(p, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, spec in p.shape_meta.obs.items():
        if spec.type == "rgb":
            out[k] = torch.randint(0, 256, (batch, 2, *spec.shape), generator=g, dtype=torch.uint8)
        else:
            out[k] = torch.rand(batch, 2, *spec.shape, generator=g) * 512
    return out


# ----------------------------------------------------------------------------- the vision encoder
@pytest.mark.parametrize("size,out", [(96, 3), (84, 3), (32, 1), (100, 4)])
def test_trunk_downsamples_by_32_with_512_channels(size, out):
    y = ResNet18Trunk()(torch.zeros(2, 3, size, size))
    assert y.shape == (2, 512, out, out)


def test_a_narrower_trunk_keeps_the_layout_at_a_fraction_of_the_weights():
    full, narrow = ResNet18Trunk(), ResNet18Trunk(width=32)
    assert narrow(torch.zeros(2, 3, 84, 84)).shape == (2, 256, 3, 3)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert 0.2 < count(narrow) / count(full) < 0.3  # convolutions scale with width^2
    assert [n for n, _ in narrow.named_parameters()] == [n for n, _ in full.named_parameters()]
    for bad in (8, 40, 0):
        with pytest.raises(ValueError, match="multiple of 16"):
            ResNet18Trunk(width=bad)
    enc = ObsEncoder(ShapeMeta.from_dict(meta(size=48)), 2, out_dim=16, num_kp=8, width=16)
    assert enc.encoders["cam"].trunk.out_channels == 128 and enc.encoders["cam"].pool.proj.in_channels == 128


def test_image_encoder_output_shape_and_crop_sizes():
    enc = ImageEncoder((96, 96, 3), out_dim=24, num_kp=8, crop=(84, 84))
    x = torch.rand(3, 96, 96, 3) * 2 - 1
    assert enc(x).shape == (3, 24)
    assert enc.augment(x.permute(0, 3, 1, 2)).shape == (3, 3, 84, 84)
    enc.eval()
    assert enc(x).shape == (3, 24)
    with pytest.raises(ValueError, match="RGB"):
        ImageEncoder((96, 96, 1))
    with pytest.raises(ValueError, match="crop"):
        ImageEncoder((96, 96, 3), crop=(100, 84))


def test_random_crop_in_training_centre_crop_in_evaluation():
    enc = ImageEncoder((72, 72, 3), crop=(68, 68))
    x = torch.arange(4 * 3 * 72 * 72, dtype=torch.float32).reshape(4, 3, 72, 72)
    enc.eval()
    centre = enc.augment(x)
    assert torch.equal(centre, x[..., 2:70, 2:70])
    assert torch.equal(enc.augment(x), centre)  # deterministic
    enc.train()
    torch.manual_seed(0)
    offsets = set()
    for _ in range(20):
        crops = enc.augment(x)
        for b in range(4):
            # every crop is one 8x8 window of its own image, the same window for all channels
            top = int((crops[b, 0, 0, 0] - x[b, 0, 0, 0]).item()) // 72
            left = int((crops[b, 0, 0, 0] - x[b, 0, 0, 0]).item()) % 72
            assert torch.equal(crops[b], x[b, :, top:top + 68, left:left + 68])
            offsets.add((top, left))
    assert len(offsets) > 10  # windows are drawn per image, not fixed
    assert all(0 <= t <= 4 and 0 <= l <= 4 for t, l in offsets)


def test_color_jitter_only_in_training_and_stays_in_range():
    enc = ImageEncoder((40, 40, 3), crop=None, color_jitter=0.4)
    x = torch.rand(8, 3, 40, 40) * 2 - 1
    enc.eval()
    assert torch.equal(enc.augment(x), x)
    enc.train()
    y = enc.augment(x)
    assert not torch.equal(y, x) and y.min() >= -1 and y.max() <= 1
    with pytest.raises(ValueError, match="color_jitter"):
        ImageEncoder((40, 40, 3), color_jitter=1.5)
    with pytest.raises(ValueError, match="at least 33x33 px after the crop"):
        ImageEncoder((36, 36, 3), crop=(32, 32))


def test_spatial_softmax_keypoints_lie_in_the_unit_square():
    pool = SpatialSoftmax(8, num_kp=5)
    kp = pool(torch.randn(4, 8, 3, 7) * 10)
    assert kp.shape == (4, 5, 2)
    assert kp.abs().max() <= 1.0


@pytest.mark.parametrize("row,col", [(0, 0), (1, 4), (3, 6), (2, 1)])
def test_spatial_softmax_finds_a_bright_spot_where_it_is(row, col):
    h, w = 4, 7
    pool = SpatialSoftmax(1, num_kp=1)
    with torch.no_grad():
        pool.proj.weight.fill_(1.0)
        pool.proj.bias.zero_()
    feat = torch.zeros(1, 1, h, w)
    feat[0, 0, row, col] = 50.0  # a bright spot: the softmax puts all its mass there
    x, y = pool(feat)[0, 0].tolist()
    assert x == pytest.approx(-1 + 2 * col / (w - 1), abs=1e-4)  # x runs along the width
    assert y == pytest.approx(-1 + 2 * row / (h - 1), abs=1e-4)  # y along the height
    flat = pool(torch.zeros(1, 1, h, w))[0, 0]  # a uniform map: the centre
    assert flat.abs().max() < 1e-6


def torchvision_style_state_dict(seed=0):
    """A state dict named and shaped as torchvision's resnet18().state_dict() (written out from its
    architecture, not from this package's module), BatchNorm statistics and the fc head included."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.05

    def bn(name, c):
        sd[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
        sd[f"{name}.running_mean"] = torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.num_batches_tracked"] = torch.tensor(100)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for i, w in enumerate((64, 128, 256, 512)):
        for j in range(2):
            p = f"layer{i + 1}.{j}"
            conv(f"{p}.conv1", w, cin if j == 0 else w, 3)
            bn(f"{p}.bn1", w)
            conv(f"{p}.conv2", w, w, 3)
            bn(f"{p}.bn2", w)
            if j == 0 and i > 0:
                conv(f"{p}.downsample.0", w, cin, 1)
                bn(f"{p}.downsample.1", w)
        cin = w
    sd["fc.weight"] = torch.randn(1000, 512, generator=g)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd


def test_torchvision_resnet18_state_dict_loads_with_batchnorm_affine_kept(tmp_path):
    sd = torchvision_style_state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    trunk = ResNet18Trunk()
    report = load_torchvision_resnet18(trunk, path)
    own = trunk.state_dict()
    assert torch.equal(own["layer3.0.downsample.0.weight"], sd["layer3.0.downsample.0.weight"])
    assert torch.equal(own["layer2.1.bn2.weight"], sd["layer2.1.bn2.weight"])  # gamma -> GroupNorm's affine
    assert torch.equal(own["bn1.bias"], sd["bn1.bias"])
    assert "fc.weight" in report["dropped"] and "bn1.running_mean" in report["dropped"]
    assert len(report["loaded"]) == len(own)
    # through the observation encoder's option
    enc = ObsEncoder(ShapeMeta.from_dict(meta(size=48)), 2, pretrained=str(path))
    assert torch.equal(enc.encoders["cam"].trunk.conv1.weight, sd["conv1.weight"])


def test_a_foreign_state_dict_is_refused_by_name(tmp_path):
    sd = torchvision_style_state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save(sd, tmp_path / "bad_shape.pth")
    with pytest.raises(ValueError, match=r"bad_shape.pth: layer1.0.conv1.weight has shape \(64, 64, 5, 5\)"):
        load_torchvision_resnet18(ResNet18Trunk(), tmp_path / "bad_shape.pth")
    sd = torchvision_style_state_dict()
    sd["features.0.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match="'features.0.weight' has no place in a ResNet-18 trunk"):
        load_torchvision_resnet18(ResNet18Trunk(), tmp_path / "vgg.pth")
    sd = torchvision_style_state_dict()
    del sd["layer4.1.conv2.weight"]
    torch.save(sd, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="lacks.*layer4.1.conv2.weight"):
        load_torchvision_resnet18(ResNet18Trunk(), tmp_path / "short.pth")
    torch.save(torchvision_style_state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=r"resnet18.pth: torchvision's ResNet-18 weights fit a trunk of width 64.*width 32"):
        load_torchvision_resnet18(ResNet18Trunk(width=32), tmp_path / "resnet18.pth")


# ----------------------------------------------------------------------------- the observation encoder
def test_vector_condition_per_step_cameras_then_low_dim():
    sm = ShapeMeta.from_dict(meta(("front", "wrist"), 48))
    enc = ObsEncoder(sm, n_obs_steps=2, out_dim=16, num_kp=8).eval()
    obs = {"front": torch.rand(3, 2, 48, 48, 3) * 2 - 1, "wrist": torch.rand(3, 2, 48, 48, 3) * 2 - 1,
           "agent_pos": torch.randn(3, 2, 2)}
    y = enc(obs)
    assert enc.out_dim == 2 * (2 * 16 + 2) and y.shape == (3, enc.out_dim)
    per_step = y.reshape(3, 2, 34)
    assert torch.equal(per_step[..., 32:], obs["agent_pos"])  # low-dim values after the cameras, per step
    front = enc.encoders["front"](obs["front"][:, 1])
    assert torch.allclose(per_step[:, 1, :16], front, atol=1e-5)


def test_tokens_one_per_camera_and_step_plus_low_dim():
    sm = ShapeMeta.from_dict(meta(("front", "wrist"), 48))
    enc = ObsEncoder(sm, n_obs_steps=2, tokens=True, out_dim=16, num_kp=8).eval()
    obs = {"front": torch.rand(3, 2, 48, 48, 3), "wrist": torch.rand(3, 2, 48, 48, 3), "agent_pos": torch.randn(3, 2, 2)}
    y = enc(obs)
    assert (enc.n_tokens, enc.token_dim) == (6, 16) and y.shape == (3, 6, 16)
    # token order: step 0 (front, wrist, low-dim), step 1 (...); changing the wrist image moves only its tokens
    obs2 = {**obs, "wrist": torch.rand(3, 2, 48, 48, 3)}
    changed = (enc(obs2) - y).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [False, True, False, False, True, False]


def test_shared_encoder_has_one_trunk_for_every_camera():
    sm = ShapeMeta.from_dict(meta(("a", "b", "c"), 48))
    own = ObsEncoder(sm, 2, out_dim=16, num_kp=8)
    shared = ObsEncoder(sm, 2, out_dim=16, num_kp=8, shared=True)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert len(own.encoders) == 3 and len(shared.encoders) == 1
    assert n(own) == 3 * n(shared)
    odd = ShapeMeta.from_dict({"obs": {"a": {"shape": [48, 48, 3], "type": "rgb"},
                                       "b": {"shape": [64, 64, 3], "type": "rgb"}}, "action": {"shape": [2]}})
    with pytest.raises(ValueError, match="shared vision encoder needs cameras of one size"):
        ObsEncoder(odd, 2, shared=True)
    assert ObsEncoder(odd, 2, out_dim=8, num_kp=4).out_dim == 2 * 16  # one encoder per size is fine


def test_without_cameras_the_encoder_is_the_low_dim_concatenation():
    sm = ShapeMeta.from_dict({"obs": {"a": {"shape": [3]}, "b": {"shape": [2, 2]}}, "action": {"shape": [2]}})
    enc = ObsEncoder(sm, 2)
    assert not list(enc.parameters())
    obs = {"a": torch.randn(4, 2, 3), "b": torch.randn(4, 2, 2, 2)}
    assert torch.equal(enc(obs), torch.cat([obs["a"], obs["b"].flatten(2)], -1).flatten(1))


def test_bad_encoder_options_are_named():
    with pytest.raises(ValueError, match="policy.obs_encoder: .*'kernel'"):
        image_policy(kernel=3)
    with pytest.raises(ValueError, match="crop_ratio"):
        image_policy(crop_ratio=1.5)
    with pytest.raises(ValueError, match="policy.obs_encoder must be a mapping"):
        PolicyConfig(shape_meta=meta(), obs_encoder="resnet")


def test_images_use_the_fixed_map_never_fitted_statistics():
    norm = Normalizer.from_shape_meta(ShapeMeta.from_dict(meta()))
    dark = {"agent_pos": torch.rand(20, 2), "action": torch.rand(20, 2)}
    norm.fit(dark)  # no image data: image fields are not fitted
    img = torch.tensor([0, 64, 128, 255], dtype=torch.uint8).reshape(1, 1, 4, 1).expand(1, 1, 4, 3)
    y = norm.normalize("cam", img)
    assert torch.allclose(y[0, 0, :, 0], torch.tensor([-1.0, 64 / 127.5 - 1, 128 / 127.5 - 1, 1.0]), atol=1e-6)
    with pytest.raises(TypeError, match="image field: expected a uint8 tensor"):
        norm.normalize("cam", img.float())
    with pytest.raises(KeyError, match="fitted fields"):  # image statistics are never fitted
        norm.fit({**dark, "cam": torch.zeros(20, 4, 4, 3, dtype=torch.uint8)})


# ----------------------------------------------------------------------------- image policies
@pytest.mark.parametrize("net", ["unet1d", "transformer"])
def test_image_policy_loss_backward_and_chunk(net):
    p = image_policy(net).train()
    obs = raw_obs(p, batch=3)
    batch = {"obs": obs, "action": torch.rand(3, 8, 2) * 512}
    opt = torch.optim.SGD(p.parameters(), lr=0.1)
    for _ in range(3):  # adaLN-Zero: step 1 reaches the head, step 2 the gates, step 3 the encoder
        opt.zero_grad()
        loss, info = p.compute_loss(batch)
        loss.backward()
        opt.step()
    trunk_grad = p.obs_encoder.encoders["cam"].trunk.conv1.weight.grad
    assert torch.isfinite(loss) and trunk_grad is not None and trunk_grad.abs().sum() > 0  # trained end to end
    p.eval()
    chunk = p.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (3, 4, 2)
    again = p.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(chunk, again)  # evaluation: centre crop, no jitter
    with pytest.raises(Exception, match="uint8"):
        p.predict_action_chunk({**obs, "cam": obs["cam"].float()})


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_image_policy_export_includes_the_encoder_and_matches_eager(tmp_path, fmt):
    from shortcut_policy.deploy.export import export_policy, verify_export
    from shortcut_policy.deploy.runtime import ExportedPolicy

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    p = image_policy(cameras=("front", "wrist"))
    path = tmp_path / ("p.pt" if fmt == "torchscript" else "p.onnx")
    export_policy(p, path, 1)
    report = verify_export(p, path, batch_sizes=(1, 2), trials=2)
    assert report["max_abs_err_normalized"] < 1e-4
    exported = ExportedPolicy.load(path)
    obs = {k: v.numpy() for k, v in raw_obs(p, batch=1, seed=3).items()}
    noise = np.random.default_rng(0).standard_normal((1, 8, 2), dtype=np.float32)
    a = exported.predict_action_chunk(obs, noise)
    # a different camera frame changes the action: the images reach the exported graph
    obs2 = {**obs, "wrist": 255 - obs["wrist"]}
    assert np.abs(exported.predict_action_chunk(obs2, noise) - a).max() > 1e-4
    with pytest.raises(Exception, match="wrist"):
        exported.predict_action_chunk({**obs, "wrist": obs["wrist"][..., :2]}, noise)


# ----------------------------------------------------------------------------- image data
def test_diffusion_policy_float_images_are_served_as_uint8_and_other_floats_refused(tmp_path):
    from shortcut_policy.data.dataset import SequenceDataset
    from shortcut_policy.data.replay_buffer import DatasetError

    from .formats import write_dp_zarr

    arrays = write_dp_zarr(tmp_path / "dp.zarr", lengths=(5, 3, 4))
    ds = SequenceDataset(tmp_path / "dp.zarr", obs={"image": "img", "agent_pos": {"key": "state", "index": [0, 2]}},
                         horizon=4, n_obs_steps=2, n_action_steps=2, val_ratio=0.0)
    assert ds.shape_meta.describe() == "image (8, 8, 3) rgb, agent_pos (2,) low_dim -> action (2,)"
    item = ds[1]
    assert item["obs"]["image"].dtype == torch.uint8
    assert np.array_equal(item["obs"]["image"].numpy(), arrays["img"][0:2].astype(np.uint8))
    import zarr

    root = zarr.open_group(str(tmp_path / "dp.zarr"), mode="r+")
    root["data/img"][0, 0, 0, 0] = 0.5  # no longer integers 0..255
    with pytest.raises(DatasetError, match=r"dp.zarr: obs 'image'.*data/img.*integers in 0..255"):
        SequenceDataset(tmp_path / "dp.zarr", obs={"image": "img"}, horizon=4, n_obs_steps=2, n_action_steps=2)


def test_batch_gather_equals_collating_samples_for_images_and_low_dim(tmp_path):
    from torch.utils.data import default_collate

    from shortcut_policy.data.dataset import SequenceDataset

    from .formats import write_dp_zarr

    write_dp_zarr(tmp_path / "dp.zarr", lengths=(7, 2, 9, 5))
    ds = SequenceDataset(tmp_path / "dp.zarr", obs={"image": "img", "kp": "keypoint"}, horizon=6, n_obs_steps=2,
                         n_action_steps=4, val_ratio=0.0)
    idx = [0, len(ds) - 1, 3, 3, 11, 7]  # episode edges (padding) and a repeat
    a, b = ds.get_batch(idx), default_collate([ds[i] for i in idx])
    assert a["obs"]["image"].dtype == torch.uint8 and a["obs"]["image"].shape == (6, 2, 8, 8, 3)
    for k in ("image", "kp"):
        assert torch.equal(a["obs"][k], b["obs"][k])
    assert torch.equal(a["action"], b["action"])
    with pytest.raises(IndexError, match="out of range"):
        ds.get_batch([len(ds)])


def test_worker_processes_feed_the_same_batches_as_the_training_process(tmp_path):
    from shortcut_policy.data.dataset import SequenceDataset
    from shortcut_policy.train.loop import TrainConfig, batch_loader

    from .formats import write_dp_zarr

    write_dp_zarr(tmp_path / "dp.zarr", lengths=(9, 8, 12, 10))
    ds = SequenceDataset(tmp_path / "dp.zarr", obs={"image": "img"}, horizon=4, n_obs_steps=2, n_action_steps=2,
                         val_ratio=0.0)
    batches = {}
    for workers in (0, 2):
        cfg = TrainConfig(steps=9, batch_size=4, num_workers=workers)
        batches[workers] = list(batch_loader(ds, cfg, start=2, device=torch.device("cpu")))
    assert len(batches[0]) == 7  # steps 2..8: a resumed run starts at its step
    for x, y in zip(batches[0], batches[2]):
        assert torch.equal(x["obs"]["image"], y["obs"]["image"]) and torch.equal(x["action"], y["action"])
    rng = torch.get_rng_state()
    list(batch_loader(ds, TrainConfig(steps=3, batch_size=4), 0, torch.device("cpu")))
    assert torch.equal(rng, torch.get_rng_state())  # loading never draws from the global RNG


# ----------------------------------------------------------------------------- PushT from pixels
def _gym_pusht():
    pytest.importorskip("gym_pusht")


def test_pusht_image_env_observation_and_gymnasium_check():
    _gym_pusht()
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    from shortcut_policy.envs.pusht import IMAGE_ENV_ID

    env = gym.make(IMAGE_ENV_ID, disable_env_checker=True).unwrapped
    obs, _ = env.reset(seed=3)
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (96, 96, 3)
    assert obs["agent_pos"].dtype == np.float32 and env.observation_space.contains(obs)
    assert env.render().shape == (256, 256, 3)  # the video view is the larger one
    check_env(env, skip_render_check=True)


def test_simulator_renders_the_dataset_frames(shared_data):
    """The simulator's 96x96 view of a dataset state is the dataset's frame: same layout, scale, colours."""
    _gym_pusht()
    import zarr

    from shortcut_policy.envs.pusht import PushTImageEnv, legacy_reset_state

    root = zarr.open_group(str(shared_data / "pusht" / "pusht_cchi_v7_replay.zarr"), mode="r")
    ends = root["meta/episode_ends"][:]
    env = PushTImageEnv()
    for t in (0, int(ends[4]), int(ends[49]), int(ends[149])):  # episode starts: no contact, exact poses
        obs, _ = env.reset(seed=0, options={"reset_to_state": legacy_reset_state(root["data/state"][t])})
        frame = root["data/img"][t].astype(np.float32)
        err = np.abs(obs["image"].astype(np.float32) - frame)
        assert err.mean() < 0.5, (t, err.mean())  # in 0..255 units; measured 0.01-0.09
        assert (err.max(-1) > 30).mean() < 0.005  # a few anti-aliased edge pixels at most
        assert np.array_equal(obs["agent_pos"], root["data/state"][t, :2])


def render_image_store(path, n_episodes=3, step=1):
    """A small PushT image store made here: the shipped low-dim demonstrations' states rendered by the
    simulator (episode starts at the recorded pose; every frame drawn from its state)."""
    import zarr

    from shortcut_policy.data.replay_buffer import ReplayBuffer
    from shortcut_policy.envs.pusht import PushTImageEnv, legacy_reset_state

    root = zarr.open_group(str(REPO / "datasets" / "pusht_lowdim.zarr"), mode="r")
    ends = root["meta/episode_ends"][:n_episodes]
    state, action = root["data/state"][:ends[-1]], root["data/action"][:ends[-1]]
    env = PushTImageEnv()
    img = np.stack([env.reset(seed=0, options={"reset_to_state": legacy_reset_state(s)})[0]["image"] for s in state])
    ReplayBuffer({"img": img, "state": state, "action": action}, ends).save(path)
    return path


def test_tiny_image_policy_trains_then_evaluates_in_closed_loop(tmp_path):
    """task=pusht_image is the only switch from the low-dim commands: train, then shortcut-eval in the
    simulator from pixels."""
    _gym_pusht()
    import json
    import subprocess
    import sys

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from shortcut_policy.train.run import run_training

    store = render_image_store(tmp_path / "img.zarr")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "task=pusht_image", f"task.dataset.path={store}", "task.env.max_episode_steps=16", f"out_dir={tmp_path / 'run'}",
            "policy=unet1d", "policy.net_kwargs.down_dims=[16,32]", "+policy.obs_encoder.out_dim=16",
            "train.steps=3", "train.batch_size=4", "train.warmup_steps=1", "train.log_every=1", "train.progress=false"])
    out, metrics = run_training(OmegaConf.to_container(cfg, resolve=True))
    assert np.isfinite(metrics["train/loss"])
    policy, run = ShortcutPolicy.from_checkpoint(out / "checkpoints" / "latest.pt")
    assert policy.shape_meta.rgb_keys == ["image"] and policy.obs_encoder.feat_dim == 16
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "eval.py"), "--checkpoint",
                           str(out / "checkpoints" / "latest.pt"), "--num-inference-steps", "1", "2", "--episodes", "2",
                           "--out", str(tmp_path / "eval.json"), "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["kind"] == "sweep" and res["task"] == "pusht_image" and set(res["steps"]) == {"1", "2"}
    assert all(0 <= r["score"] <= 1 for r in res["steps"].values())

    # the same checkpoint through the deployment commands: exported with its encoder (checked against
    # eager by the command itself), then driven by the real-time controller from simulated camera frames
    for fmt, ext in (("torchscript", "pt"), ("onnx", "onnx")):
        art = tmp_path / f"policy.{ext}"
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "export.py"), "--checkpoint",
                               str(out / "checkpoints" / "latest.pt"), "--format", fmt, "--out", str(art)],
                              capture_output=True, text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
        meta = json.loads(art.with_name(art.name + ".json").read_text())
        assert meta["shape_meta"]["obs"]["image"] == {"shape": [96, 96, 3], "type": "rgb"}, meta["shape_meta"]  # camera layout, uint8
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "deploy_sim.py"), "--checkpoint",
                           str(out / "checkpoints" / "latest.pt"), "--backend", "onnx", "--num-inference-steps", "1",
                           "--episodes", "1", "--max-episode-steps", "8", "--control-hz", "20",
                           "--out", str(tmp_path / "deploy.json")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dep = json.loads((tmp_path / "deploy.json").read_text())
    assert dep["task"] == "pusht_image" and dep["rows"]["meanflow@1"]["backend"] == "onnx"  # the default objective


def test_real_time_controller_drives_an_exported_image_policy_from_camera_frames(tmp_path):
    from shortcut_policy.deploy.clocks import FakeClock
    from shortcut_policy.deploy.controller import ControllerConfig, RealTimeController
    from shortcut_policy.deploy.export import export_policy
    from shortcut_policy.deploy.runtime import ExportedPolicy
    from shortcut_policy.deploy.workers import InlineInference

    p = image_policy()
    export_policy(p, tmp_path / "p.pt", 1)
    exported = ExportedPolicy.load(tmp_path / "p.pt")
    seen = []

    def infer(obs):
        seen.append(obs["cam"].copy())
        return exported(obs)

    ctrl = RealTimeController(infer, exported.metadata["shape_meta"], 2, 4, ControllerConfig(control_hz=10.0),
                              clock=FakeClock(), worker=lambda f, n, a, c: InlineInference(f, n, a, c, latency=lambda r: 0.01))
    rng = np.random.default_rng(0)
    frames = iter(rng.integers(0, 256, size=(100, 48, 48, 3), dtype=np.uint8))
    sent = []
    stats = ctrl.run(lambda: {"cam": next(frames), "agent_pos": rng.uniform(0, 512, 2)}, sent.append, max_ticks=12)
    assert len(sent) == 12 and np.isfinite(np.stack(sent)).all()
    assert stats.summary(0.1)["deadline_misses"] == 0
    assert len(seen) >= 3 and all(s.shape == (1, 2, 48, 48, 3) and s.dtype == np.uint8 for s in seen)
    assert not np.array_equal(seen[0][0, 1], seen[-1][0, 1])  # fresh frames reach the policy

import json
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reactdiff import training
from reactdiff.losses import LossConfig
from reactdiff.model import build_denoiser
from reactdiff.samplers import sample
from reactdiff.training import (
    EMA,
    TrainConfig,
    config_fingerprint,
    load_checkpoint,
    load_denoiser,
    rollout_past,
    save_checkpoint,
    to_model_inputs,
    train,
    validation_loss,
)
from reactdiff.training.data import WindowSampler
from reactdiff.windows import WindowDataset

A = 4  # audio feature size
W = 16
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    # Two OpenMP threads on two cores shared with other processes spin against each other and slow a
    # step down tenfold; one thread keeps these tests fast and their timing stable.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(windows_dir) -> WindowDataset:
    return WindowDataset(windows_dir)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        preset="demo",
        steps=8,
        batch_size=8,
        device="cpu",
        log_every=2,
        checkpoint_every=0,
        val_every=0,
        lr=1e-3,
        ema_decay=0.9,
    )
    return TrainConfig(**{**base, **kw})


def _tensors(obj, prefix=""):
    """Every tensor of a nested dict/list, keyed by its path (for optimizer state comparison)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def _assert_states_equal(a: dict, b: dict) -> None:
    ta, tb = dict(_tensors(a)), dict(_tensors(b))
    assert ta.keys() == tb.keys() and ta
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


# --------------------------------------------------------------------------------------------------


def test_ema_update_by_hand():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(-1.0)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, -2.0]]))
        model.bias.fill_(1.0)
    ema.update(model, step=0)
    # 0.9 * old + 0.1 * new
    assert torch.allclose(ema.shadow.weight, torch.tensor([[1.2, 1.6]]), atol=1e-6)
    assert torch.allclose(ema.shadow.bias, torch.tensor([-0.8]), atol=1e-6)
    assert not ema.shadow.weight.requires_grad and not ema.shadow.training

    # Warm-up: update s uses min(decay, (1 + s) / (10 + s)); at s = 0 that is 0.1.
    warm = EMA(model, decay=0.9, warmup=True)
    assert warm.decay_at(0) == pytest.approx(0.1) and warm.decay_at(10**6) == 0.9
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[13.0, 12.0]]))
    warm.update(model, step=0)
    assert torch.allclose(warm.shadow.weight, torch.tensor([[0.1 * 3 + 0.9 * 13, 0.1 * -2 + 0.9 * 12]]))

    target = nn.Linear(2, 1)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.shadow.weight)
    restored = EMA(nn.Linear(2, 1), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.shadow.bias, ema.shadow.bias)


def test_sampler_epochs_and_rank_shards():
    sampler = WindowSampler(n_windows=10, global_batch=4, seed=3)
    # Steps 0..4 consume exactly two epochs: each a permutation of all windows.
    stream = np.concatenate([sampler.global_indices(s) for s in range(5)])
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])  # a new order every epoch
    assert np.array_equal(WindowSampler(10, 4, 3).global_indices(3), sampler.global_indices(3))
    assert not np.array_equal(WindowSampler(10, 4, 4).global_indices(0), sampler.global_indices(0))
    # Two ranks split each global batch into disjoint halves.
    for step in range(5):
        shards = [sampler.indices(step, rank, 2) for rank in range(2)]
        assert np.array_equal(np.concatenate(shards), sampler.global_indices(step))
    # A batch larger than the data wraps into the next epochs without repeating within an epoch.
    big = WindowSampler(3, 7, 0).global_indices(0)
    assert sorted(big[:3].tolist()) == [0, 1, 2] and sorted(big[3:6].tolist()) == [0, 1, 2]


def test_to_model_inputs(data):
    batch = data.batch(np.array([0, 5, 7]))
    x0, cond = to_model_inputs(batch, "cpu")
    assert x0.shape == (3, W, 58) and x0.dtype == torch.float32
    assert np.array_equal(x0.numpy(), batch.listener)
    assert np.array_equal(cond.past.numpy(), batch.past)
    assert cond.speaker_audio.shape == (3, W, A)
    assert cond.frame_index.dtype == torch.long and cond.frame_index.tolist() == batch.frame_index.tolist()
    assert cond.speaker_mask.tolist() == [1.0, 1.0, 1.0]


def test_checkpoint_round_trip(tmp_path, data):
    torch.manual_seed(0)
    model = build_denoiser("demo", A, frames=W)
    ema = EMA(model, decay=0.5, warmup=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x0, cond = to_model_inputs(data.batch(np.arange(6)), "cpu")
    for step in range(3):
        loss = (model(x0 + 0.3 * torch.randn_like(x0), torch.full((6,), 0.3), cond) - x0).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        ema.update(model, step)
    path = tmp_path / "ckpt.pt"
    model_args = {"preset": "demo", "audio_dim": A, "overrides": {}, "network": model.config.to_dict()}
    model_args["sigma_data"] = model.sigma_data
    save_checkpoint(
        path,
        model_args=model_args,
        model=model,
        ema=ema,
        optimizer=opt,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        step=3,
        rng=training.checkpointing.rng_state(),
        config_fingerprint="abc",
        extra={"note": Path("x"), "values": np.arange(2)},
    )
    raw = torch.load(path, weights_only=True)  # plain types only: no arbitrary unpickling
    assert raw["step"] == 3 and raw["config_fingerprint"] == "abc"
    assert raw["extra"] == {"note": "x", "values": [0, 1]}
    _assert_states_equal(raw["optimizer"], opt.state_dict())
    assert load_checkpoint(path)["model_args"]["network"]["frames"] == W

    sigma = torch.full((6,), 0.7)
    noisy = x0 + 0.7 * torch.randn_like(x0)
    with torch.no_grad():
        from_ema = load_denoiser(path, device="cpu")
        from_raw = load_denoiser(path, device="cpu", use_ema=False)
        assert not from_ema.training
        assert torch.equal(from_ema(noisy, sigma, cond), ema.shadow(noisy, sigma, cond))
        model.eval()
        assert torch.equal(from_raw(noisy, sigma, cond), model(noisy, sigma, cond))
        assert not torch.equal(from_ema(noisy, sigma, cond), from_raw(noisy, sigma, cond))
        # Loaded to compute in bf16 for sampling: the network is cast, the prior is not.
        low = load_denoiser(path, device="cpu", precision="bf16")
        assert low.network.dtype == torch.bfloat16 and low.prior.basis.dtype == torch.float64
        assert load_denoiser(path, device="cpu", precision="auto").network.dtype == torch.float32  # tiny
        torch.testing.assert_close(low(noisy, sigma, cond), from_ema(noisy, sigma, cond), atol=0.05, rtol=0)

    bad = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(
        ValueError,
        match=r"other.pt: expected a ReactDiff training checkpoint \(format 1\), found format None; train",
    ):
        load_checkpoint(bad)


def test_loss_falls_and_logs(tmp_path, data):
    # EDM's scalar preconditioning: the untrained model is D = c_skip x, whose loss training must cut. (With
    # the fitted window prior the untrained model is already the Wiener filter of these sinusoids, and
    # the loop's job is shown by test_trained_denoiser_keeps_the_fitted_prior_and_the_linear_bar.)
    logged = []
    cfg = _cfg(
        preconditioning="edm", steps=150, batch_size=16, log_every=15, val_every=75, val_batches=2, lr=3e-3,
        ema_decay=0.95,
    )  # fmt: skip
    result = train(cfg, data, data, tmp_path / "ckpt.pt", log=lambda m, s: logged.append((s, m)))
    losses = [h["loss"] for h in result.history]
    assert [h["step"] for h in result.history] == list(range(15, 151, 15))
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses
    # Validation uses fixed windows and noise, so it compares paired: the untrained model (zero-initialised
    # head, D = c_skip x) scores the EDM loss of data with std sigma_data, which is 1 in expectation.
    initial = validation_loss(
        build_denoiser("demo", A, frames=W), data, cfg.loss, batch_size=16, batches=2, seed=cfg.seed,
        device=torch.device("cpu"),
    )  # fmt: skip
    assert initial["val_dm"] == pytest.approx(1.0, abs=0.15)
    assert result.val[-1]["val_loss"] < 0.7 * initial["val_loss"]
    assert result.val[-1]["val_loss"] < result.val[0]["val_loss"]
    assert [v["step"] for v in result.val] == [75, 150]
    assert all(h["windows_per_s"] > 0 and np.isfinite(h["grad_norm"]) for h in result.history)
    assert result.final_step == 150 and result.parameters > 0 and result.resumed_from == 0
    # The logger saw every training record (without "step") and the validations, at their steps.
    train_logs = [(s, m) for s, m in logged if "loss" in m]
    assert [s for s, _ in train_logs] == list(range(15, 151, 15))
    assert train_logs[-1][1]["loss"] == pytest.approx(losses[-1]) and "step" not in train_logs[-1][1]
    assert [s for s, m in logged if "val_loss" in m] == [75, 150]
    # The final checkpoint holds the EMA weights of this run.
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["step"] == 150
    assert all(torch.equal(ckpt["ema"][k], v) for k, v in result.ema.state_dict().items())


def test_validation_loss_is_fixed_noise(data):
    torch.manual_seed(0)
    model = build_denoiser("demo", A, frames=W)
    kwargs = dict(batch_size=8, batches=3, seed=5, device=torch.device("cpu"))
    first = validation_loss(model, data, LossConfig(), **kwargs)
    assert first == validation_loss(model, data, LossConfig(), **kwargs)
    assert first != validation_loss(model, data, LossConfig(), **{**kwargs, "seed": 6})
    assert set(first) == {"val_loss", "val_dm", "val_fbk", "val_fac"}
    assert first["val_loss"] == pytest.approx(first["val_dm"] + first["val_fbk"] + 1e-4 * first["val_fac"])


def test_resume_equals_uninterrupted(tmp_path, data, capsys):
    # Dropout on, so the global RNG's per-step seeding is exercised too.
    cfg = _cfg(steps=10, model_overrides={"dropout": 0.1}, checkpoint_every=3)
    straight = train(cfg, data, None, tmp_path / "straight.pt")
    first = train(replace(cfg, steps=5), data, None, tmp_path / "resumed.pt")
    assert first.final_step == 5
    resumed = train(cfg, data, None, tmp_path / "resumed.pt", resume=True)
    assert resumed.resumed_from == 5 and "resuming" in capsys.readouterr().out
    a, b = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(tmp_path / "resumed.pt")
    assert a["step"] == b["step"] == 10
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    _assert_states_equal(a["optimizer"], b["optimizer"])
    # The resumed run's log continues where the first one stopped and matches the straight run.
    assert [h["step"] for h in resumed.history] == [6, 8, 10]
    assert resumed.history[-1]["loss"] == straight.history[-1]["loss"]
    # Asking again for the same number of steps trains nothing.
    again = train(cfg, data, None, tmp_path / "resumed.pt")
    assert again.history == [] and again.resumed_from == 10


def test_changed_config_starts_fresh(tmp_path, data, capsys):
    cfg = _cfg(steps=4)
    train(cfg, data, None, tmp_path / "ckpt.pt")
    changed = replace(cfg, lr=5e-4)
    assert config_fingerprint(changed, A) != config_fingerprint(cfg, A)
    assert config_fingerprint(replace(cfg, steps=99, log_every=7), A) == config_fingerprint(cfg, A)
    assert config_fingerprint(cfg, A, "other data") != config_fingerprint(cfg, A)
    # the rollout recipe changes the trajectory too
    for change in (dict(rollout_prob=0.25), dict(rollout_ease_frames=6), dict(rollout_steps=2)):
        assert config_fingerprint(replace(cfg, **change), A) != config_fingerprint(cfg, A)
    capsys.readouterr()
    result = train(changed, data, None, tmp_path / "ckpt.pt", resume=True)
    assert "starting fresh" in capsys.readouterr().out and result.resumed_from == 0
    fresh = train(changed, data, None, tmp_path / "fresh.pt", resume=False)
    a, b = load_checkpoint(tmp_path / "ckpt.pt"), load_checkpoint(tmp_path / "fresh.pt")
    assert a["config_fingerprint"] == b["config_fingerprint"] == fresh.fingerprint
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    # resume=False ignores even a matching checkpoint.
    assert train(changed, data, None, tmp_path / "ckpt.pt", resume=False).resumed_from == 0


_DDP_WORKER = """
import json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from reactdiff import training
from reactdiff.training import loop
from reactdiff.windows import WindowDataset

out = Path(sys.argv[2])
saves = []
original = loop.save_checkpoint
def counting(path, **kw):
    saves.append(kw["step"])
    original(path, **kw)
loop.save_checkpoint = counting  # the name the training loop calls

cfg = training.TrainConfig(
    preset="demo", steps=4, batch_size=8, device="cpu", log_every=2, checkpoint_every=0, val_every=4,
    val_batches=2, lr=1e-3,
)
data = WindowDataset(sys.argv[1])
result = training.train(cfg, data, data, out / "ckpt.pt")
rank = int(os.environ["RANK"])
torch.save({"model": result.model.state_dict(), "ema": result.ema.state_dict()}, out / f"rank{rank}.pt")
(out / f"rank{rank}.json").write_text(json.dumps(
    {"saves": saves, "world_size": result.world_size, "history": result.history, "val": result.val}
))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_on_cpu(tmp_path, windows_dir):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(_DDP_WORKER))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(script),
        str(windows_dir),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert reports[0]["saves"] == [4] and reports[1]["saves"] == []  # only rank 0 writes, once
    assert reports[0]["history"] == [
        {**h, "windows_per_s": reports[0]["history"][i]["windows_per_s"]}
        for i, h in enumerate(reports[1]["history"])
    ]  # losses are averaged over ranks, so both ranks log the same values
    assert reports[0]["val"] == reports[1]["val"]
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key in ("model", "ema"):
        for name, tensor in weights[0][key].items():
            assert torch.equal(tensor, weights[1][key][name]), (key, name)
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 4 and ckpt["extra"]["world_size"] == 2
    assert all(torch.equal(v, ckpt["ema"][k]) for k, v in weights[0]["ema"].items())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ckpt")) == []  # no leftovers
    assert "train: step 4/4" in proc.stdout and proc.stdout.count("train: step 4/4 loss") == 1


def test_rollout_ease_is_a_half_cosine_over_its_frames_then_zero():
    whole = training.rollout_ease(16)
    np.testing.assert_allclose(whole.numpy(), (1 + np.cos(np.pi * np.arange(1, 17) / 16)) / 2, atol=1e-7)
    assert training.rollout_ease(16, 0).equal(whole) and training.rollout_ease(16, 40).equal(whole)
    short = training.rollout_ease(16, 4).numpy()
    c = np.cos(np.pi / 4)
    np.testing.assert_allclose(short[:4], [(1 + c) / 2, 0.5, (1 - c) / 2, 0.0], atol=1e-7)
    assert (short[4:] == 0).all()
    with pytest.raises(ValueError, match="rollout_ease_frames"):
        TrainConfig(rollout_ease_frames=-1)


def test_rollout_rows_see_the_previous_window_as_the_model_samples_it(data):
    torch.manual_seed(0)
    denoiser = build_denoiser("demo", A, prior=training.fit_prior(data), frames=W).eval()
    indices = np.arange(len(data))
    x0, cond = to_model_inputs(data.batch(indices), "cpu")
    cfg = _cfg(rollout_prob=0.6, rollout_steps=2)
    target, swapped = rollout_past(denoiser, data, indices, x0, cond, cfg, torch.Generator().manual_seed(5))
    # By hand: the documented draws (the pick, then the sampler's), the previous windows' conditions.
    g = torch.Generator().manual_seed(5)
    picked = (torch.rand(len(indices), generator=g).numpy() < 0.6) & data.has_previous(indices)
    assert 0 < picked.sum() < data.has_previous(indices).sum()
    _, previous = to_model_inputs(data.batch(indices[picked], windows_back=1), "cpu")
    with torch.no_grad():
        generated = sample(denoiser, (int(picked.sum()), W, 58), previous, steps=2, solver="ode", generator=g)
    torch.testing.assert_close(swapped.past[picked], generated)
    # The history (the mean of the frames before the window) counts the generated past, not the real.
    frames = torch.from_numpy(data.frames_before(indices[picked])).float()[:, None]
    history = cond.history[picked] + (generated.sum(dim=1) - cond.past[picked].sum(dim=1)) / frames
    torch.testing.assert_close(swapped.history[picked], history)
    assert torch.equal(swapped.history[~picked], cond.history[~picked])
    assert torch.equal(swapped.past[~picked], cond.past[~picked]) and torch.equal(
        target[~picked], x0[~picked]
    )
    for name in ("speaker_face", "speaker_audio", "frame_index", "speaker_mask"):
        assert torch.equal(getattr(swapped, name), getattr(cond, name))
    # The target eases from the generated past into the real window over E = cfg.rollout_ease_frames (8)
    # frames: the gap between the pasts' last frames, weighted (1 + cos(pi (t + 1) / E)) / 2 at frame t:
    # 0.96 of it at frame 0, half at frame 3, none from frame 7 on.
    E = cfg.rollout_ease_frames
    assert E == 8
    gap = generated[:, -1] - cond.past[picked, -1]
    offset = target[picked] - x0[picked]
    for t, weight in [(0, (1 + np.cos(np.pi / E)) / 2), (E // 2 - 1, 0.5), (E - 1, 0.0), (W - 1, 0.0)]:
        torch.testing.assert_close(offset[:, t], gap * weight, atol=1e-6, rtol=1e-5)
    # Continuous at the boundary: the target's first step out of the generated past is the real first
    # step out of the real past, up to the ease's own (small) slope.
    real_step = x0[picked, 0] - cond.past[picked, -1]
    eased_step = target[picked, 0] - generated[:, -1]
    torch.testing.assert_close(
        eased_step, real_step + gap * ((1 + np.cos(np.pi / E)) / 2 - 1), atol=1e-6, rtol=1e-5
    )
    # Nothing to roll out: the inputs come back unchanged.
    same_x0, same = rollout_past(denoiser, data, indices, x0, cond, _cfg(rollout_prob=0.0), torch.Generator())
    assert same is cond and same_x0 is x0


def test_resume_with_rollouts_equals_uninterrupted(tmp_path, data):
    cfg = _cfg(steps=6, rollout_prob=0.5, rollout_start=2, rollout_steps=2, checkpoint_every=3)
    train(cfg, data, None, tmp_path / "straight.pt")
    train(replace(cfg, steps=3), data, None, tmp_path / "resumed.pt")
    train(cfg, data, None, tmp_path / "resumed.pt", resume=True)
    a, b = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(tmp_path / "resumed.pt")
    for name, tensor in a["ema"].items():
        assert torch.equal(tensor, b["ema"][name]), name
    # The rollouts changed the run: without them the weights differ.
    train(replace(cfg, rollout_prob=0.0), data, None, tmp_path / "plain.pt")
    plain = load_checkpoint(tmp_path / "plain.pt")
    assert any(not torch.equal(t, plain["ema"][n]) for n, t in a["ema"].items())


def test_config_validation():
    with pytest.raises(ValueError, match="frames"):
        TrainConfig(model_overrides={"frames": 32})
    with pytest.raises(ValueError, match="amp_dtype"):
        TrainConfig(amp_dtype="fp8")
    with pytest.raises(ValueError, match="preconditioning must be one of"):
        TrainConfig(preconditioning="karras")
    with pytest.raises(ValueError, match="rollout_prob"):
        TrainConfig(rollout_prob=1.5)
    with pytest.raises(ValueError, match="rollout_steps"):
        TrainConfig(rollout_steps=0)
    cfg = TrainConfig(betas=[0.9, 0.99], loss={"use_fbk": False})
    assert cfg.betas == (0.9, 0.99) and isinstance(cfg.loss, LossConfig) and not cfg.loss.use_fbk


def test_trained_denoiser_keeps_the_fitted_prior_and_the_linear_bar(tmp_path, data):
    """The cause of issue 11, guarded: with EDM's scalar preconditioning the network itself must learn to
    remove noise from the directions where smooth motion has no variance, and after a short training it
    still loses to a linear filter at low noise many times over; with the fitted window prior that filter
    is the skip path, training starts from it and stays at its level."""
    from reactdiff.denoising import LinearDenoiser, denoising_curve

    linear = LinearDenoiser.fit(data.batch(np.arange(len(data))).listener)
    prior = training.fit_prior(data)
    untrained = build_denoiser("demo", A, prior=prior, frames=W)
    sigmas = (0.05, 0.1)
    start = denoising_curve(untrained, linear, data, sigmas=sigmas, windows=len(data))
    errors = {}
    for preconditioning in ("wiener", "edm"):
        cfg = _cfg(preconditioning=preconditioning, steps=60, batch_size=16, lr=1e-3, ema_decay=0.95)
        path = tmp_path / f"{preconditioning}.pt"
        train(cfg, data, None, path)
        model = load_denoiser(path, device="cpu")
        if preconditioning == "wiener":
            for name, buffer in prior.state_dict().items():
                torch.testing.assert_close(model.prior.state_dict()[name], buffer)
        errors[preconditioning] = [
            row["model"] for row in denoising_curve(model, linear, data, sigmas=sigmas)
        ]
    for level, row in enumerate(start):
        assert errors["wiener"][level] < 1.5 * row["model"], (errors, start)
        assert errors["edm"][level] > 5 * errors["wiener"][level], errors

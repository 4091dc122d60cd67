"""Consistency distillation against a closed-form Gaussian teacher, and the student it writes.

For data ``x0 ~ N(mu, s^2)`` per element the ideal denoiser is ``D(x, sigma) = mu + s^2 / (s^2 + sigma^2)
(x - mu)`` and its probability-flow ODE has the closed form ``x(sigma) - mu = (x(sigma') - mu) sqrt((s^2 +
sigma^2) / (s^2 + sigma'^2))``: everything the distillation should reach is known exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from reactdiff.config import DistillParams
from reactdiff.distillation import (
    consistency_distillation_loss,
    distill,
    guided_teacher,
    student_config,
    teacher_ode_step,
    teacher_trajectories,
)
from reactdiff.model import Denoiser, ReactionUNet, build_denoiser, count_parameters, network_config
from reactdiff.noise import SIGMA_MAX, SIGMA_MIN, consistency_sigmas, karras_sigmas
from reactdiff.online import OnlineReactionGenerator
from reactdiff.samplers import sample_consistency
from reactdiff.training import load_checkpoint, load_denoiser, to_model_inputs
from reactdiff.windows import WindowDataset

MU, S = 0.3, 0.5


def gaussian_teacher(x: torch.Tensor, sigma: torch.Tensor, cond: object = None) -> torch.Tensor:
    return MU + (S**2 / (S**2 + sigma**2))[:, None, None] * (x - MU)


def ode_end(x: torch.Tensor, sigma: float, to: float = 0.0) -> torch.Tensor:
    """The closed-form end, at level ``to``, of the Gaussian teacher's ODE trajectory through ``x``."""
    return MU + (x - MU) * math.sqrt((S**2 + to**2) / (S**2 + sigma**2))


class PerLevelStudent(nn.Module):
    """``f(x, sigma) = mu + g[level(sigma)] (x - mu)``: one free gain per discretisation level (learnt as
    its logarithm: the gains span three decades, and Adam's steps are then relative)."""

    def __init__(self, levels: torch.Tensor, start: torch.Tensor | None = None) -> None:
        super().__init__()
        self.levels = levels
        start = torch.full((len(levels),), 0.5) if start is None else start
        self.log_gain = nn.Parameter(start.float().log())

    @property
    def gain(self) -> torch.Tensor:
        return self.log_gain.exp()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: object = None) -> torch.Tensor:
        index = torch.argmin((sigma[:, None] - self.levels[None]).abs(), dim=1)
        return MU + self.gain[index][:, None, None] * (x - MU)


def test_a_teacher_step_of_the_gaussian_ode_is_dpm_solver_1() -> None:
    x = torch.full((1, 2, 3), 2.0)
    sigma, sigma_next = torch.tensor([4.0]), torch.tensor([1.0])
    step = teacher_ode_step(gaussian_teacher, x, sigma, sigma_next, None)
    r = 1.0 / 4.0
    gain = r + (1 - r) * S**2 / (S**2 + 16.0)  # r x + (1 - r) D(x), D linear in x - mu
    torch.testing.assert_close(step, MU + gain * (x - MU))
    # First order: within a few percent of the exact ODE over this large step, exact as the step shrinks.
    assert (step - ode_end(x, 4.0, 1.0)).abs().max() < 0.05 * (x - MU).abs().max()
    fine = teacher_ode_step(gaussian_teacher, x, torch.tensor([1.01]), torch.tensor([1.0]), None)
    torch.testing.assert_close(fine, ode_end(x, 1.01, 1.0), atol=5e-5, rtol=0)  # O(h^2): 100 times less


def test_the_consistency_loss_vanishes_exactly_on_the_teachers_discretised_ode_solution() -> None:
    # The fixed point of consistency distillation: gains that compose the teacher's steps from sigma_min
    # up, in closed form. There the loss is zero for any data; a gain off the chain makes it positive.
    levels = karras_sigmas(19)[:-1].flip(0).double()  # 19 levels, sigma_min first
    chain = [1.0]
    for lo, hi in zip(levels[:-1].tolist(), levels[1:].tolist(), strict=True):
        r = lo / hi
        chain.append(chain[-1] * (r + (1 - r) * S**2 / (S**2 + hi**2)))  # the step's gain, composed
    student = PerLevelStudent(levels)
    with torch.no_grad():
        student.log_gain.copy_(torch.tensor(chain).log())
    gen = torch.Generator().manual_seed(0)
    x0 = MU + S * torch.randn(256, 4, 3, generator=gen, dtype=torch.float64)
    loss = consistency_distillation_loss(student, student, gaussian_teacher, x0, None, levels, gen)
    assert float(loss.detach()) < 1e-12  # float32 gains: rounding only
    # The chain is the teacher's ODE solution, discretised to first order: the one-step map from
    # sigma_max lands on the closed form up to an error that halves with the step (0.86, 0.93, 0.96 of
    # it for 18, 36, 72 steps).
    x_T = MU + SIGMA_MAX * torch.randn(256, 4, 3, generator=gen, dtype=torch.float64)
    jump = student(x_T, torch.full((256,), SIGMA_MAX, dtype=torch.float64))
    ratio = (jump - MU) / (ode_end(x_T, SIGMA_MAX, SIGMA_MIN) - MU)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 0.864), atol=2e-3, rtol=0)
    with torch.no_grad():
        student.log_gain[10] += 0.1
    off = consistency_distillation_loss(student, student, gaussian_teacher, x0, None, levels, gen)
    assert float(off.detach()) > 1e-4


def test_trajectory_distillation_reaches_the_teachers_ode_solution() -> None:
    gen = torch.Generator().manual_seed(2)
    states, levels, ends = teacher_trajectories(gaussian_teacher, None, (512, 4, 3), 25, gen)
    assert states.shape == (24, 512, 4, 3) and levels.shape == (24,) and float(levels[0]) == SIGMA_MAX
    # The Gaussian teacher's solved ODE is linear: each level's point maps to the end by one gain, which
    # the 25 DPM-Solver++(2M) steps get to within a few percent of the closed form's.
    gains = [((ends - MU) / (states[k] - MU)).median() for k in range(24)]
    for k in (0, 6, 12, 18):
        torch.testing.assert_close(ends - MU, gains[k] * (states[k] - MU), atol=1e-4, rtol=1e-3)
        exact = math.sqrt(S**2 / (S**2 + float(levels[k]) ** 2))
        assert abs(float(gains[k]) / exact - 1) < 0.1
    # A student regressed on (point, level) -> end learns that gain at every level: its one-step map
    # from sigma_max is the teacher's solution. It starts, like the real student (skip "flow"), from
    # the closed form of the ODE, here 30 % off, and corrects it to what the teacher's solver does.
    flow = (S**2 / (S**2 + levels.double() ** 2)).sqrt()
    student = PerLevelStudent(levels, start=0.7 * flow)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.02)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / 1000)
    for _ in range(1000):
        k = torch.randint(0, 24, (256,), generator=gen)
        b = torch.randint(0, 512, (256,), generator=gen)
        loss = (student(states[k, b], levels[k]) - ends[b]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
    torch.testing.assert_close(student.gain.detach(), torch.stack(gains), rtol=1e-2, atol=0)
    x_T = MU + SIGMA_MAX * torch.randn(256, 4, 3, generator=gen)
    jump = student(x_T, torch.full((256,), SIGMA_MAX))
    torch.testing.assert_close(jump, MU + gains[0] * (x_T - MU), rtol=1e-2, atol=1e-3)


class _CountingPreparations(nn.Module):
    """A denoiser in front of ``inner`` that counts the conditions it prepares."""

    def __init__(self, inner: Denoiser) -> None:
        super().__init__()
        self.inner, self.prepared = inner, 0

    def prepare(self, cond, levels=None):
        self.prepared += 1
        return self.inner.prepare(cond, levels)

    def forward(self, x, sigma, cond):
        return self.inner(x, sigma, cond)


def test_the_guided_teachers_trajectories_prepare_the_window_once_and_equal_the_unprepared(windows_dir):
    data = WindowDataset(windows_dir)
    teacher = _CountingPreparations(_teacher(data.audio_dim))
    _, cond = to_model_inputs(data.batch(np.arange(3)), torch.device("cpu"))
    guided_teacher_fn = guided_teacher(teacher, 2.0, (0.0, 2.0))
    shape = (3, *cond.past.shape[1:])
    states, levels, ends = teacher_trajectories(
        guided_teacher_fn, cond, shape, 6, torch.Generator().manual_seed(1)
    )
    assert teacher.prepared == 1  # one preparation for all the solver's evaluations
    # A plain function hides the preparation: every evaluation derives the window's context afresh.
    unprepared = guided_teacher(teacher.inner, 2.0, (0.0, 2.0))
    again = teacher_trajectories(
        lambda x, s, c: unprepared(x, s, c), cond, shape, 6, torch.Generator().manual_seed(1)
    )
    # Equal up to rounding: the guided batch's context is two halves' concatenated, not one computed whole.
    torch.testing.assert_close(states, again[0])
    torch.testing.assert_close(ends, again[2])


def test_multistep_consistency_sampling_of_the_exact_consistency_function_draws_the_data_law() -> None:
    def consistency_function(x: torch.Tensor, sigma: torch.Tensor, cond: object = None) -> torch.Tensor:
        return MU + (x - MU) * torch.sqrt((S**2 + SIGMA_MIN**2) / (S**2 + sigma**2))[:, None, None]

    gen = torch.Generator().manual_seed(1)
    for steps in (1, 2, 4):
        sigmas = consistency_sigmas(steps)
        x_T = SIGMA_MAX * torch.randn(4000, 4, 3, generator=gen)
        calls: list[float] = []

        def counted(x, sigma, cond=None, calls=calls):
            calls.append(float(sigma[0]))
            return consistency_function(x, sigma, cond)

        out = sample_consistency(counted, x_T, sigmas, generator=gen)
        assert calls == pytest.approx(sigmas[:-1].tolist())  # one evaluation per positive level
        assert float(out.mean()) == pytest.approx(MU, abs=0.01)
        assert float(out.std()) == pytest.approx(S, rel=0.02)


def test_students_are_at_most_a_quarter_of_their_teachers() -> None:
    for preset, audio_dim in (("demo", 86), ("demo", 768), ("paper", 768)):
        teacher = network_config(preset, audio_dim=audio_dim)
        student = student_config(teacher, preset)
        ratio = count_parameters(ReactionUNet(student)) / count_parameters(ReactionUNet(teacher))
        assert 0.15 < ratio <= 0.25, (preset, audio_dim, ratio)
    paper_student = ReactionUNet(student_config(network_config("paper", audio_dim=768), "paper"))
    assert count_parameters(paper_student) <= 21_000_000
    # The ablation switches stay the teacher's.
    ablated = network_config("demo", audio_dim=86, use_frame_index=False, speaker_history=4)
    kept = student_config(ablated, "demo")
    assert (kept.use_frame_index, kept.speaker_history, kept.audio_dim) == (False, 4, 86)


# -- the distillation run ------------------------------------------------------------------------------


def _teacher(audio_dim: int):
    """A demo teacher with every parameter perturbed, so that speaker, past and h reach its output."""
    torch.manual_seed(0)
    net = build_denoiser("demo", audio_dim=audio_dim)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net.eval()


def _cfg(**kw) -> DistillParams:
    base = dict(
        steps=6,
        warmup_steps=2,
        batch_size=8,
        levels=5,
        log_every=2,
        checkpoint_every=3,
        val_batches=1,
        teacher_ode_steps=2,
        device="cpu",
    )
    return DistillParams(**{**base, **kw})


def _run(cfg: DistillParams, data, path, **kw):
    return distill(
        cfg,
        _teacher(data.audio_dim),
        "demo",
        data,
        data,
        path,
        guidance_scale=2.0,
        guidance_interval=(0.0, 2.0),
        seed=3,
        **kw,
    )


@pytest.fixture(scope="module")
def data(windows_dir) -> WindowDataset:
    return WindowDataset(windows_dir)


def test_an_interrupted_distillation_resumes_to_the_uninterrupted_student(tmp_path, data, capsys):
    straight = _run(_cfg(), data, tmp_path / "straight.pt")
    _run(_cfg(steps=4), data, tmp_path / "resumed.pt")  # stopped after the warm-up and 2 consistency steps
    resumed = _run(_cfg(), data, tmp_path / "resumed.pt")
    assert resumed.resumed_from == 4 and "resuming" in capsys.readouterr().out
    a, b = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(tmp_path / "resumed.pt")
    for key in ("model", "ema", "target"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert [h["step"] for h in resumed.history] == [6]
    assert resumed.history[-1]["loss"] == straight.history[-1]["loss"]
    # Another configuration never resumes from it.
    _run(_cfg(levels=6), data, tmp_path / "resumed.pt")
    assert "another configuration" in capsys.readouterr().out


def test_the_student_loads_with_weights_only_and_is_the_one_distilled(tmp_path, data):
    result = _run(_cfg(steps=3, warmup_steps=1), data, tmp_path / "student.pt")
    payload = torch.load(tmp_path / "student.pt", weights_only=True)  # tensors and plain values only
    assert payload["model_args"]["preset"] == "demo-student"
    student = load_denoiser(tmp_path / "student.pt", device="cpu")
    teacher = _teacher(data.audio_dim)
    assert student.config == student_config(teacher.config, "demo")
    assert count_parameters(student) == result.student_parameters <= result.teacher_parameters / 4
    # The student keeps the teacher's Wiener prior, and the saved weights are the EMA the run returned.
    torch.testing.assert_close(student.prior.state_dict(), teacher.prior.state_dict())
    x0, cond = to_model_inputs(data.batch(np.arange(4)), "cpu")
    sigma = torch.full((4,), 1.5)
    torch.testing.assert_close(student(x0, sigma, cond), result.student(x0, sigma, cond))
    assert set(result.val) == {"one_step_gap", "teacher_spread"}


def test_the_student_streams_causally_through_the_online_generator(demo_stats):
    # A speaker change from window 3 on leaves windows 1-2 bit-identical, with the consistency sampler.
    teacher = _teacher(86)
    torch.manual_seed(1)
    student = Denoiser(ReactionUNet(student_config(teacher.config, "demo")))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.2 * torch.randn_like(p))
    student.eval()
    rng = np.random.default_rng(2)
    face = (demo_stats.face_mean + demo_stats.face_std * rng.normal(size=(64, 58))).astype(np.float32)
    feats = (demo_stats.audio_mean + demo_stats.audio_std * rng.normal(size=(64, 86))).astype(np.float32)
    gen = OnlineReactionGenerator(student, demo_stats, samples=3, steps=2, solver="consistency", seed=5)

    def run(face, feats):
        gen.reset(seed=5)
        return [gen.step(face[s : s + 16], audio_features=feats[s : s + 16]) for s in range(0, 64, 16)]

    base = run(face, feats)
    changed_face = face.copy()
    changed_face[32:] += demo_stats.face_std
    changed = run(changed_face, feats)
    for k in range(2):
        np.testing.assert_array_equal(changed[k], base[k])
    assert not np.allclose(changed[2], base[2]) and not np.allclose(changed[3], base[3])

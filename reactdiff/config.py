"""The one validated configuration object, built from ``params.yaml``.

Every stage reads its settings through :func:`load_params`. Unknown keys and wrong types are errors
that name the key (``features.encoder``) and the file, because a silently ignored typo in a params
file invalidates an experiment without anyone noticing. The defaults here are the values the project's
``params.yaml`` ships (a test holds them equal), so a key left out of a params file means what the
README documents.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from reactdiff.errors import UserError

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError, UserError):
    """A params file is missing, unparsable, or has an unknown key or a value of the wrong type."""


def _device_name(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", value):
        raise ValueError("a device is auto, cpu, mps, cuda or cuda:<index> (e.g. cuda:1)")
    return value


Device = Annotated[str, AfterValidator(_device_name)]
"""A device a stage can run on: ``auto`` (cuda, then mps, then cpu), ``cpu``, ``mps``, ``cuda[:N]``."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class DataConfig(_Section):
    root: str = "data_sample"
    """REACT2024-layout folder the pipeline reads: ``data_sample`` (generated) or ``data`` (real corpus)."""
    splits: list[Literal["train", "val", "test"]] = ["train", "val", "test"]


class SampleCorpusConfig(_Section):
    """The synthetic corpus: a named size preset, with any field overridable."""

    preset: Literal["sample", "paper"] = "sample"
    seed: int | None = None
    frames: int | None = Field(default=None, ge=32)
    sample_rate: int | None = Field(default=None, ge=8000)
    families: dict[str, int] | None = None
    sessions_per_family: int | None = Field(default=None, ge=1)
    n_styles: int | None = Field(default=None, ge=1)


class FeaturesConfig(_Section):
    encoder: Literal["logmel", "wav2vec2"] = "logmel"
    wav2vec2_path: str | None = None
    """Local folder of a ``save_pretrained`` wav2vec2 model, or a hub name already in the local cache."""
    wav2vec2_layer: int = -1
    left_context_s: float = Field(default=1.0, gt=0)
    wav2vec2_chunk_frames: int = Field(default=1, ge=1)
    """Frames encoded per wav2vec2 pass. 1 is strictly causal per frame; C > 1 is C times cheaper but a
    frame sees up to C-1 frames of future audio inside its chunk (see reactdiff/audio.py)."""
    runner: Literal["thread", "process", "dask"] = "thread"
    workers: int = Field(default=0, ge=0)
    """Parallel session jobs; 0 means one per CPU core."""
    dask_address: str | None = None
    """With ``runner: dask``: a running scheduler (``tcp://host:8786``) to run the tasks on; ``None`` starts
    a local cluster."""
    frame_tolerance: int = Field(default=2, ge=0)
    max_frames: int = Field(default=750, ge=1)


class WindowsConfig(_Section):
    size: int = Field(default=16, ge=2)
    """Window length w in frames (paper: 16)."""
    stride: int = Field(default=4, ge=1)
    """Frames between the starts of consecutive training windows."""
    initial_past: Literal["first_frame", "mean"] = "first_frame"
    """What stands in for the past window before the conversation starts: the listener's first frame
    repeated (the state a live system is reset with), or the train mean (zeros once normalised)."""


class ModelParams(_Section):
    preset: Literal["demo", "paper"] = "demo"
    """``paper``: about 84M parameters (Table 16); ``demo``: trains in minutes on 2 CPU cores."""
    use_frame_index: bool = True
    """Condition on the global frame index h (Table 2)."""
    use_speaker_face: bool = True
    """Speaker modalities (Table 3)."""
    use_speaker_audio: bool = True
    speaker_history: int = Field(default=0, ge=0)
    """Speaker frames before the window the network also attends to (causally); 0 = the paper's eq. 1-2
    (the window's speaker only). Listeners react 0.3-1 s late, so the window alone misses the causes
    of its first frames' reactions."""
    speaker_delays: int = Field(default=0, ge=0)
    """Taps of a causal delay line over the speaker tokens (0: none; reactdiff/model.py, _SpeakerTokens)."""


class TrainParams(_Section):
    steps: int = Field(default=1700, ge=1)
    batch_size: int = Field(default=100, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    betas: list[float] = [0.95, 0.999]
    weight_decay: float = Field(default=1e-3, ge=0)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    grad_clip: float = Field(default=1.0, gt=0)
    amp: bool = True
    """Mixed precision; only takes effect on CUDA."""
    device: Device = "auto"
    """``auto`` (cuda, then mps, then cpu) or an explicit torch device such as ``cuda:1``."""
    cfg_drop_prob: float = Field(default=0.1, ge=0, le=1)
    """Probability of dropping the speaker conditions (classifier-free guidance training)."""
    use_fbk: bool = True
    """Facial behavioural kinematics prior (Table 4)."""
    use_fac: bool = True
    """Facial action constraint prior (Table 4); its weight is the top-level ``lambda``."""
    preconditioning: Literal["wiener", "edm"] = "wiener"
    """``wiener``: the denoiser corrects the Wiener filter of the train listener windows
    (reactdiff/prior.py); ``edm``: EDM's scalar preconditioning, kept to show why it was replaced."""
    fbk_last_steps: int = Field(default=5, ge=1)
    fbk_schedule_steps: int = Field(default=50, ge=1)
    """The sampling schedule whose last ``fbk_last_steps`` noise levels gate the FBK prior. Kept apart
    from ``sample.steps`` so that varying the sampler (Table 6) does not retrain the model."""
    log_every: int = Field(default=50, ge=1)
    checkpoint_every: int = Field(default=500, ge=1)
    val_every: int = Field(default=500, ge=1)
    val_batches: int = Field(default=4, ge=1)
    rollout_prob: float = Field(default=0.5, ge=0, le=1)
    """Fraction of the rows trained on the previous window as the model samples it, not the real one
    (reactdiff/training/__init__.py, "Rollouts"): the model learns to respond from the past it will have."""
    rollout_start: int = Field(default=400, ge=0)
    """Step from which rollouts begin (the EMA model that samples them must first be usable)."""
    rollout_steps: int = Field(default=3, ge=1)
    """ODE steps of a rollout's sample of the previous window."""
    rollout_ease_frames: int = Field(default=8, ge=0)
    """Frames over which a rollout row's target eases out of the generated past (0: the whole window)."""

    @field_validator("betas")
    @classmethod
    def _two_betas(cls, value: list[float]) -> list[float]:
        if len(value) != 2 or not all(0 <= b < 1 for b in value):
            raise ValueError("betas must be two numbers in [0, 1)")
        return value


class StudentSampling(_Section):
    """How the distilled student samples (``sample.model: student``): its own few steps, no guidance."""

    steps: int = Field(default=4, ge=1)
    """Network evaluations per window."""
    solver: Literal["consistency", "sde", "ode"] = "consistency"
    """``consistency``: multistep consistency sampling (reactdiff/samplers.py), the student's own."""


class SampleParams(_Section):
    model: Literal["teacher", "student"] = "teacher"
    """Which network samples: the trained model (``models/teacher``) with ``steps``, ``solver`` and
    guidance, or the distilled student (``models/student``) with ``student``'s steps and solver and no
    guidance (distilled into it); Table 16."""
    student: StudentSampling = StudentSampling()
    split: Literal["train", "val", "test"] = "test"
    samples: int = Field(default=10, ge=1)
    """M reactions per speaker clip (paper: 10)."""
    steps: int = Field(default=50, ge=1)
    """Denoising steps per window (paper: 50; Table 6)."""
    solver: Literal["sde", "ode"] = "sde"
    """DPM-Solver++(2M) as SDE (Algorithm 2) or ODE (Algorithm 1); Table 5."""
    eta: float = Field(default=1.0, ge=0)
    guidance_scale: float = 3.0
    """Classifier-free guidance scale; 1 disables guidance."""
    guidance_interval: list[float] | None = [0.0, 2.0]
    """Noise levels ``[lo, hi]`` where guidance applies (others: plain conditional); None = all."""
    clip_expression: bool = True
    """Clamp generated blendshape weights to [0, 1] (returned and fed back as the next past)."""
    batch_examples: int = Field(default=8, ge=1)
    """Examples generated in lockstep as one denoiser batch (whole sessions per task): bigger batches
    use the cores (or GPU) better; each example keeps its own seed whatever the batch."""
    device: Device = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """What the network computes in (:func:`reactdiff.devices.select_precision`): ``auto`` is bf16 on GPUs
    and, for networks of 5M parameters or more, on CPUs with native bf16; fp32 otherwise."""
    runner: Literal["thread", "process", "dask"] = "thread"
    workers: int = Field(default=0, ge=0)
    dask_address: str | None = None
    """With ``runner: dask``: a running scheduler (``tcp://host:8786``) to run the tasks on; ``None`` starts
    a local cluster."""

    @field_validator("guidance_interval")
    @classmethod
    def _ordered_interval(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) != 2 or not 0 <= v[0] <= v[1]):
            raise ValueError(f"needs [lo, hi] with 0 <= lo <= hi, got {v}")
        return v

    def recipe(self) -> dict[str, Any]:
        """The sampler settings of the chosen ``model``, as :class:`reactdiff.online.OnlineReactionGenerator`
        takes them: the teacher's steps, solver and guidance, or the student's steps and solver unguided."""
        interval = None if self.guidance_interval is None else tuple(self.guidance_interval)
        if self.model == "student":
            return dict(
                steps=self.student.steps,
                solver=self.student.solver,
                eta=self.eta,
                guidance_scale=1.0,
                guidance_interval=None,
                clip_expression=self.clip_expression,
            )
        return dict(
            steps=self.steps,
            solver=self.solver,
            eta=self.eta,
            guidance_scale=self.guidance_scale,
            guidance_interval=interval,
            clip_expression=self.clip_expression,
        )


class DistillParams(_Section):
    """Consistency distillation of the guided teacher into a small student (reactdiff/distillation.py)."""

    method: Literal["trajectory", "consistency"] = "trajectory"
    """``trajectory``: regress on the ends of the teacher's ODE trajectories, solved in advance for a
    pool of windows; ``consistency``: consistency distillation (Song et al. 2023), one teacher step per
    optimiser step (reactdiff/distillation.py compares them)."""
    loss: Literal["energy", "mse"] = "energy"
    """``trajectory``: the energy score of two draws per window against the teacher's (distributional: it
    keeps what the student cannot resolve diverse), or the squared error (which averages it away)."""
    spread_weight: float = Field(default=0.3, ge=0, le=1)
    """``energy``: weight of the term that keeps two draws apart (1: the proper energy score; 0: the mean
    Euclidean error, which collapses what the student cannot resolve)."""
    skip: Literal["flow", "wiener"] = "flow"
    """The student's skip path: ``flow``, the end of the prior's Gaussian ODE trajectory through its
    input (a sample for every noise), or the teacher's ``wiener`` filter (the mean at high noise)."""
    steps: int = Field(default=1500, ge=1)
    """Optimiser steps, the first ``warmup_steps`` of them regressing on the teacher's denoiser."""
    warmup_steps: int = Field(default=0, ge=0)
    """``consistency``: steps of plain regression on the guided teacher's denoised estimates before the
    consistency loss, so that it starts from a (guidance-free) denoiser, as consistency tuning does."""
    batch_size: int = Field(default=100, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    """Demo preset; the paper preset distils at 1e-4 like its training."""
    levels: int = Field(default=40, ge=2)
    """N: noise levels (Karras) the teacher's ODE is discretised into; each step of the loss is one
    teacher step between two neighbouring levels."""
    teacher_substeps: int = Field(default=1, ge=1)
    """Teacher ODE steps per segment between two levels: a coarse grid with exact steps propagates
    consistency from sigma_min to sigma_max in fewer optimiser steps (latent consistency models' skipping)."""
    target_decay: float = Field(default=0.95, ge=0, lt=1)
    """EMA decay of the target network the consistency loss aims at (Song et al. 2023: 0.95)."""
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    """EMA decay of the weights saved for sampling."""
    teacher_ode_steps: int = Field(default=25, ge=2)
    """Steps of the teacher's guided ODE (DPM-Solver++(2M)) whose trajectories the student learns
    (``trajectory``) and the validation compares the student's one-step map to. The 25 Karras levels
    of 25 steps hold every level of the student's 1- to 4-step schedules (reactdiff.noise)."""
    pool_windows: int = Field(default=1000, ge=1)
    """``trajectory``: trajectories solved together, two (two noises) for each of half as many training
    windows."""
    pool_refresh: int = Field(default=50, ge=1)
    """``trajectory``: optimiser steps between two pools."""
    rollout_prob: float = Field(default=0.5, ge=0, le=1)
    """``trajectory``: share of the pool's windows whose past the student samples itself (with its own
    ``sample.student`` steps) instead of the real one; the teacher's trajectories start from there."""
    log_every: int = Field(default=50, ge=1)
    checkpoint_every: int = Field(default=250, ge=1)
    val_batches: int = Field(default=2, ge=1)
    device: Device = "auto"

    @field_validator("warmup_steps")
    @classmethod
    def _warmup_within_steps(cls, value: int, info: Any) -> int:
        steps = info.data.get("steps")
        if steps is not None and value >= steps:
            raise ValueError(f"warmup_steps ({value}) must be fewer than steps ({steps})")
        return value


class RenderParams(_Section):
    sessions: int = Field(default=1, ge=0)
    """How many sessions of the sampled split get a video (the first ones, both directions)."""
    renderer: str = "cartoon"
    """A name registered with ``reactdiff.render.register_renderer`` (``cartoon`` needs no weights)."""
    tile: int = Field(default=128, ge=32)
    dims: list[str] = ["browInnerUp", "eyeBlinkLeft", "jawOpen", "mouthSmileLeft", "pitch", "yaw"]
    """Coefficients plotted over time (expression names, or pitch/yaw/roll/tx/ty/tz)."""
    runner: Literal["thread", "process", "dask"] = "process"
    """One task per video; drawing holds the GIL, so processes (not threads) use the cores."""
    workers: int = Field(default=0, ge=0)
    """Videos rendered at once; 0 means one per CPU core."""
    dask_address: str | None = None
    """With ``runner: dask``: a running scheduler (``tcp://host:8786``) to run the tasks on; ``None`` starts
    a local cluster."""


class RealismParams(_Section):
    """The learned realism feature (reactdiff/realism.py), trained on the train split's listeners."""

    window: int = Field(default=50, ge=8)
    """Frames per window; must equal the metrics' FD window (50 frames, 2 s)."""
    embedding_dim: int = Field(default=32, ge=1)
    channels: int = Field(default=32, ge=1)
    steps: int = Field(default=300, ge=1)
    batch_size: int = Field(default=32, ge=2)
    lr: float = Field(default=3e-3, gt=0)
    temperature: float = Field(default=0.1, gt=0)
    jitter: float = Field(default=0.05, ge=0)
    """Std of the noise added to anchor and positive windows, in train-std units."""
    device: Device = "auto"


class Params(_Section):
    seed: int = 0
    fac_weight: float = Field(default=1e-4, ge=0, alias="lambda")
    """Weight lambda of the facial action constraint (paper eq. 10, Table 13)."""
    data: DataConfig = DataConfig()
    sample_corpus: SampleCorpusConfig = SampleCorpusConfig()
    features: FeaturesConfig = FeaturesConfig()
    windows: WindowsConfig = WindowsConfig()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    sample: SampleParams = SampleParams()
    distill: DistillParams = DistillParams()
    render: RenderParams = RenderParams()
    realism: RealismParams = RealismParams()

    @field_validator("fac_weight", mode="before")
    @classmethod
    def _int_is_a_number(cls, value: Any) -> Any:
        # `-S lambda=0` writes an int; a weight of 0 is a float of 0.
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    def data_root(self, base: Path | None = None) -> Path:
        root = Path(self.data.root)
        return root if root.is_absolute() or base is None else base / root


# PyYAML follows YAML 1.1, where `1e-4` is a string; DVC writes YAML 1.2 where it is a float.
# Teach the loader the 1.2 float syntax so both spellings of a number mean the same thing.
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
    r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """YAML as DVC writes and reads params (YAML 1.2 floats: ``1e-4`` is a number, not a string)."""
    return yaml.load(text, Loader=_Loader)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "<top level>"
            if e["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}' (check the spelling against the README's params table)")
            else:
                problems.append(f"key '{key}': {e['msg']} (got {e.get('input')!r})")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def load_params(path: Path | str | None = None) -> Params:
    """Read and validate the params file (``$REACTDIFF_PARAMS`` or ``params.yaml`` by default)."""
    path = Path(path or os.environ.get("REACTDIFF_PARAMS") or DEFAULT_PARAMS)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run the stage from the project root or set REACTDIFF_PARAMS")
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, source=str(path))

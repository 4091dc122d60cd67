"""The train stage's translation of params.yaml into the library's TrainConfig."""

from pathlib import Path

from pipelines.train import train_config
from reactdiff.config import load_params
from reactdiff.model import network_config

ROOT = Path(__file__).resolve().parents[1]
LOSS_KEYS = ("use_fbk", "use_fac", "fbk_last_steps", "cfg_drop_prob")


def test_train_config_carries_every_train_and_model_param():
    params = load_params(ROOT / "params.yaml")
    cfg = train_config(params)
    for key, value in params.train.model_dump().items():
        if key in LOSS_KEYS:
            assert getattr(cfg.loss, key) == value, key
        elif key == "fbk_schedule_steps":
            assert cfg.loss.sampling_steps == value
        else:
            assert getattr(cfg, key) == (tuple(value) if key == "betas" else value), key
    assert cfg.loss.fac_weight == params.fac_weight and cfg.seed == params.seed
    assert cfg.preset == params.model.preset
    assert cfg.model_overrides == params.model.model_dump(exclude={"preset"})
    network = network_config(cfg.preset, **cfg.model_overrides)  # every model key is a network field
    assert network.speaker_history == params.model.speaker_history


def test_the_library_defaults_are_the_shipped_params():
    """One set of defaults: a library caller's TrainConfig() / RealismConfig() is what the pipeline runs."""
    import dataclasses

    from reactdiff.realism import RealismConfig
    from reactdiff.training import TrainConfig

    params = load_params(ROOT / "params.yaml")
    shipped, library = train_config(params), TrainConfig()
    assert dataclasses.replace(shipped, model_overrides={}) == library
    assert network_config(shipped.preset, **shipped.model_overrides) == network_config(library.preset)
    assert RealismConfig() == RealismConfig(**params.realism.model_dump(exclude={"device"}), seed=params.seed)

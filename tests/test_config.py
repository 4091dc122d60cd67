from pathlib import Path

import pytest

from reactdiff.config import ConfigError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.windows.size == 16  # paper Table 7
    assert params.fac_weight == pytest.approx(1e-4)  # paper Table 7
    assert params.data.root == "data_sample"


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"lambdaa": 1.0}, "unknown key 'lambdaa'"),
        ({"features": {"encodr": "logmel"}}, "unknown key 'features.encodr'"),
        ({"features": {"encoder": "mfcc"}}, "key 'features.encoder'"),
        ({"windows": {"size": "16"}}, "key 'windows.size'"),
        ({"windows": {"stride": 1.5}}, "key 'windows.stride'"),
        ({"lambda": "0.001"}, "key 'lambda'"),
        ({"lambda": -1.0}, "key 'lambda'"),
        ({"data": {"splits": ["train", "dev"]}}, "key 'data.splits.1'"),
        ({"sample": {"guidance_interval": [2.0, 0.5]}}, "key 'sample.guidance_interval'"),
        ({"sample": {"guidance_interval": [1.0]}}, "key 'sample.guidance_interval'"),
        ({"sample": {"device": "gpu"}}, "key 'sample.device': Value error, a device is auto, cpu, mps, cuda"),
        ({"train": {"device": "cuda:x"}}, "key 'train.device'"),
        ({"realism": {"device": "CPU"}}, "key 'realism.device'"),
    ],
)
def test_bad_params_name_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        parse_params(raw, source="p.yaml")
    assert key in str(err.value)
    assert str(err.value).startswith("p.yaml:")


def test_every_device_spelling_a_stage_can_run_on_is_accepted():
    for device in ("auto", "cpu", "mps", "cuda", "cuda:0", "cuda:12"):
        assert parse_params({"sample": {"device": device}}, source="p.yaml").sample.device == device


def test_yaml_1_2_floats_and_int_lambda(tmp_path):
    # DVC writes YAML 1.2, where 1e-4 is a float; PyYAML alone would read a string.
    path = tmp_path / "params.yaml"
    path.write_text("lambda: 1e-4\nfeatures:\n  left_context_s: 2\n")
    params = load_params(path)
    assert params.fac_weight == pytest.approx(1e-4)
    assert params.features.left_context_s == 2.0
    path.write_text("lambda: 0\n")  # `dvc exp run -S lambda=0` writes an int
    assert load_params(path).fac_weight == 0.0


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("windows: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_the_schema_defaults_are_the_shipped_params():
    # One set of defaults: a key deleted from params.yaml keeps the value the README documents.
    shipped = load_params(ROOT / "params.yaml").model_dump()
    assert parse_params({}).model_dump() == shipped

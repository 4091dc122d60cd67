"""The ablation tables (every variant of the paper, each mapped to the right params) and their report."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import pytest

from pipelines import ablations as runner
from reactdiff import ablations as abl
from reactdiff.ablations import (
    ABLATION_KEYS,
    TABLES,
    Estimate,
    build_report,
    cost_columns,
    format_param,
    select_tables,
    variant_overrides,
)
from reactdiff.config import ConfigError, load_params, load_yaml
from reactdiff.reference import paper_tables

PAPER_DEFAULTS = {
    "model.use_frame_index": True,
    "model.use_speaker_face": True,
    "model.use_speaker_audio": True,
    "train.use_fbk": True,
    "train.use_fac": True,
    "lambda": 0.0001,
    "sample.solver": "sde",
    "sample.steps": 50,
    "sample.model": "teacher",
}


def test_every_table_of_the_paper_with_every_variant():
    assert [t.name for t in TABLES] == [
        "table2",
        "table3",
        "table4",
        "table5",
        "table6",
        "table13",
        "table16",
    ]
    for table in TABLES:
        label = table.paper_label or (lambda row: row["variant"])
        paper_rows = [label(row) for row in paper_tables()[table.key]]
        assert [v.label for v in table.variants] == paper_rows, table.name
        for metric in table.metrics:  # the paper's columns of this table
            assert any(metric in row for row in paper_tables()[table.key])


def test_table16_samples_the_teacher_at_50_and_10_steps_and_the_student_and_costs_them():
    table = TABLES[-1]
    rows = {v.label: variant_overrides(v, PAPER_DEFAULTS) for v in table.variants}
    assert rows["teacher, 50 steps"] == PAPER_DEFAULTS
    assert rows["teacher, 10 steps"] == {**PAPER_DEFAULTS, "sample.steps": 10}
    assert rows["distilled student"]["sample.model"] == "student"
    sample_json = {"steps": 4, "parameters": 67_370, "gflops_per_window": 0.5, "fps": 400.0, "model": "x"}
    assert cost_columns(sample_json) == {"steps": 4.0, "params_M": 0.06737, "GFLOPs": 0.5, "FPS": 400.0}
    assert cost_columns({}) == {}  # a run from before the cost was measured: the columns stay empty


def test_variants_map_to_the_right_params():
    params = {t.name: {v.label: variant_overrides(v, PAPER_DEFAULTS) for v in t.variants} for t in TABLES}
    assert params["table2"]["without h"]["model.use_frame_index"] is False
    assert params["table2"]["with h"] == PAPER_DEFAULTS
    modalities = {
        "no face, no audio": (False, False),
        "face only": (True, False),
        "audio only": (False, True),
        "face and audio": (True, True),
    }
    for label, (face, audio) in modalities.items():
        p = params["table3"][label]
        assert (p["model.use_speaker_face"], p["model.use_speaker_audio"]) == (face, audio)
    priors = {
        "neither": (False, False),
        "FBK only": (True, False),
        "FAC only": (False, True),
        "FBK and FAC": (True, True),
    }
    for label, (fbk, fac) in priors.items():
        p = params["table4"][label]
        assert (p["train.use_fbk"], p["train.use_fac"]) == (fbk, fac)
    assert params["table5"]["ODE"]["sample.solver"] == "ode" and params["table5"]["SDE"] == PAPER_DEFAULTS
    for steps, p in params["table6"].items():
        assert p == {**PAPER_DEFAULTS, "sample.steps": steps}
    for lam, p in params["table13"].items():
        assert p == {**PAPER_DEFAULTS, "lambda": lam}
    # The paper's default configuration is one row of every table: the same experiment each time.
    defaults = ["with h", "face and audio", "FBK and FAC", "SDE", 50, 0.0001, "teacher, 50 steps"]
    for table, label in zip(TABLES, defaults, strict=True):
        assert params[table.name][label] == PAPER_DEFAULTS
    # Only the sampling tables leave the training params alone.
    train_keys = [k for k in ABLATION_KEYS if not k.startswith("sample.")]
    for table in TABLES:
        changes_training = any(
            params[table.name][v.label][k] != PAPER_DEFAULTS[k] for v in table.variants for k in train_keys
        )
        assert changes_training is not table.sampling_only, table.name


def test_ablation_keys_are_real_params():
    flat = runner.base_params(runner.DEFAULT_PARAMS, {})
    assert set(ABLATION_KEYS) <= set(flat)
    assert flat["lambda"] == load_params().fac_weight


def test_variant_overrides_take_the_base_for_other_keys_and_reject_unknown_keys():
    base = {**PAPER_DEFAULTS, "sample.steps": 10}
    odes = variant_overrides(select_tables(["table5"])[0].variant("ODE"), base)
    assert odes == {**base, "sample.solver": "ode"}  # the base's 10 steps stay
    with pytest.raises(ValueError, match="base params lack"):
        variant_overrides(TABLES[0].variants[0], {"lambda": 1.0})
    bad = TABLES[0].variants[0].__class__("x", {"train.lr": 1.0})
    with pytest.raises(ValueError, match="not ablation keys"):
        variant_overrides(bad, PAPER_DEFAULTS)


def test_experiment_names_are_unique_and_valid_refs():
    names = [t.experiment_name(v) for t in TABLES for v in t.variants]
    assert len(names) == len(set(names)) == 28
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", n) for n in names)
    assert "table2-without-h" in names and "table13-1e-05" in names and "table6-100" in names


@pytest.mark.parametrize("value", [True, False, 0, 1, 0.1, 1e-05, 0.0001, 50, "sde"])
def test_format_param_round_trips_through_yaml(value):
    text = format_param(value)
    assert load_yaml(text) == value and type(load_yaml(text)) is type(value)


def test_experiment_command_sets_every_ablation_key_and_targets_evaluate():
    variant = select_tables(["table13"])[0].variant(0.001)
    cmd = runner.experiment_command(
        "abl-x-table13-0-001", variant_overrides(variant, PAPER_DEFAULTS), {}, False
    )
    assert cmd[:4] == ["exp", "run", "--name", "abl-x-table13-0-001"] and cmd[-1] == "evaluate"
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-S"]
    assert "lambda=0.001" in sets and "model.use_frame_index=true" in sets and len(sets) == len(ABLATION_KEYS)
    queued = runner.experiment_command("n", PAPER_DEFAULTS, {"train.steps": 1000}, True)
    assert "--queue" in queued and "train.steps=1000" in queued


def test_parse_sets_and_base_params_validate():
    assert runner.parse_sets(["train.steps=1000", "sample.eta=0.5"]) == {
        "train.steps": 1000,
        "sample.eta": 0.5,
    }
    with pytest.raises(SystemExit, match="key=value"):
        runner.parse_sets(["train.steps"])
    with pytest.raises(SystemExit, match="what the ablation tables vary"):
        runner.parse_sets(["lambda=1"])
    assert runner.base_params(runner.DEFAULT_PARAMS, {"train.steps": 7})["train.steps"] == 7
    with pytest.raises(ConfigError, match="train.stepz"):
        runner.base_params(runner.DEFAULT_PARAMS, {"train.stepz": 7})
    assert runner.campaign_name({}) == runner.campaign_name({})
    assert runner.campaign_name({"train.steps": 1000}) != runner.campaign_name({"train.steps": 500})


def test_select_tables():
    assert select_tables(None) == list(TABLES) == select_tables(["all"])
    assert [t.name for t in select_tables(["table5", "table13_lambda"])] == ["table5", "table13"]
    with pytest.raises(ValueError, match="unknown ablation table"):
        select_tables(["table7"])


def _seeds(**values: list[float]) -> list[dict[str, float]]:
    """Per-seed metric dicts from per-metric lists: ``_seeds(FRCorr=[0.5, 0.6])``."""
    n = max(len(v) for v in values.values())
    return [{k: v[i] for k, v in values.items() if i < len(v)} for i in range(n)]


def _records():
    return {
        "table5": {  # three seeds each
            "ODE": _seeds(
                FRVar=[0.01, 0.01, 0.01],
                FRDiv=[0.019, 0.02, 0.021],
                FRCorr=[0.5, 0.5, 0.5],
                FRSyn=[30.0, 30.0, 30.0],
                FD_stats=[1.5, 1.5, 1.5],
                Jitter=[0.001, 0.001, 0.001],
            ),
            "SDE": _seeds(
                FRVar=[0.02, 0.02, 0.02],
                FRDiv=[0.05, 0.05, 0.05],
                FRCorr=[0.3, 0.5, 0.7],  # higher than ODE on average, but within noise
                FRSyn=[31.0, 31.0, 31.0],
                FD_stats=[1.2, 1.2, 1.2],
                Jitter=[0.002, 0.002, 0.002],
            ),
        },
        "table4": {  # one seed; FRDvs missing on purpose for one row; FBK only not run at all
            "neither": [{"FRDvs": 0.3, "FRCorr": 0.2, "Jitter": 0.5}],
            "FAC only": [{"FRDvs": 0.2, "FRCorr": 0.3, "Jitter": 0.4}],
            "FBK and FAC": [{"FRCorr": 0.6, "Jitter": 0.1}],
        },
    }


def _cells(markdown: str, header_start: str, row_start: str) -> dict[str, str]:
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith(header_start))
    row = next(line for line in lines if line.startswith(row_start))
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    return dict(zip(split(header), split(row), strict=True))


def test_report_places_ours_beside_the_paper_and_judges_claims_against_the_noise():
    tables = select_tables(["table4", "table5"])
    markdown, frame = build_report(_records(), tables)
    ode = _cells(markdown, "| variant | seeds | FRVar", "| ODE |")
    assert ode["seeds"] == "3" and ode["FRDiv"] == "0.02 ± 5.77e-04" and ode["FD_stats"] == "1.5 ± 0"
    assert ode["paper FRDiv"] == "0.0857" and ode["paper FVD"] == "421.5"
    assert "| SDE sampling is more diverse than ODE (FRDiv higher) | holds | holds |" in markdown
    assert "| SDE sampling is more appropriate than ODE (FRCorr higher) | within noise | holds |" in markdown
    # Table 4 (one seed): plain values; the missing "FBK only" row shows dashes, its claims not measured.
    assert _cells(markdown, "| variant | seeds | FRDvs", "| neither |")["FRDvs"] == "0.3"
    assert re.search(r"\| FBK only \| - \| - \| - \| - \| - \|", markdown)
    assert "(Jitter higher: neither vs FBK only, FAC only vs both) | not measured |" in markdown
    assert "| both priors give the most appropriate reactions (best FRCorr) | holds |" in markdown
    # The summary under the title counts the verdicts of the 6 claims of these two tables.
    assert (
        "Claims of the paper, judged on our numbers: holds: 3, does not hold: 0, within noise: 1, "
        "not measured: 2." in markdown
    )
    # The long CSV holds the same numbers, with the standard error and the number of seeds.
    frame = pd.read_csv(io.StringIO(frame.to_csv(index=False)))
    pick = frame[(frame.table == "table5") & (frame.variant == "SDE") & (frame.metric == "FRCorr")]
    ours, paper = pick[pick.source == "ours"].iloc[0], pick[pick.source == "paper"].iloc[0]
    assert ours.value == pytest.approx(0.5) and ours.se == pytest.approx(0.2 / 3**0.5) and ours.n == 3
    assert paper.value == 0.515 and pd.isna(paper.se) and paper.n == 1


def test_estimate_is_the_mean_and_its_standard_error():
    e = Estimate.of([1.0, 2.0, 3.0, 6.0])  # deviations -2, -1, 0, 3: sample variance 14 / 3
    assert (e.mean, e.n) == (3.0, 4) and e.se == pytest.approx((14 / 3) ** 0.5 / 2)
    assert Estimate.of([5.0]) == Estimate(5.0, None, 1)
    assert Estimate.of([1.0, float("nan"), None, 3.0]) == Estimate(2.0, 1.0, 2)  # non-finite values skipped
    assert Estimate.of([float("nan"), None]) is None


def _rows(**rows: tuple[float, float | None]) -> dict[str, dict[str, Estimate]]:
    return {label: {"m": Estimate(mean, se, 1 if se is None else 3)} for label, (mean, se) in rows.items()}


def test_a_difference_counts_beyond_two_standard_errors():
    higher = abl._compare("a", "m", ">", "b")
    lower = abl._compare("a", "m", "<", "b")
    # Standard error of the difference: hypot(0.1, 0.1) = 0.1414, so the margin is 0.283.
    assert higher(_rows(a=(1.0, 0.1), b=(0.7, 0.1))) == abl.HOLDS  # 0.3 > 0.283
    assert higher(_rows(a=(1.0, 0.1), b=(0.75, 0.1))) == abl.NOISE  # 0.25 < 0.283
    assert higher(_rows(a=(0.75, 0.1), b=(1.0, 0.1))) == abl.NOISE
    assert higher(_rows(a=(0.7, 0.1), b=(1.0, 0.1))) == abl.FAILS
    assert lower(_rows(a=(0.7, 0.1), b=(1.0, 0.1))) == abl.HOLDS
    assert higher(_rows(a=(1.0, 0.0), b=(1.0, 0.0))) == abl.NOISE  # identical over seeds: no difference
    # Single values (one seed, or the paper's numbers): the sign decides.
    assert higher(_rows(a=(1.0, None), b=(0.99, None))) == abl.HOLDS
    assert higher(_rows(a=(0.99, None), b=(1.0, None))) == abl.FAILS
    assert higher(_rows(a=(1.0, 0.1))) == abl.MISSING


def test_best_all_of_and_interior_peak_combine_the_pairwise_verdicts():
    best = abl._best("a", "m", higher_is_better=True)
    assert best(_rows(a=(1.0, 0.05), b=(0.5, 0.05), c=(0.2, 0.05))) == abl.HOLDS
    assert best(_rows(a=(1.0, 0.05), b=(0.95, 0.05), c=(0.2, 0.05))) == abl.NOISE  # b is as good
    assert best(_rows(a=(1.0, 0.05), b=(1.5, 0.05), c=(0.2, 0.05))) == abl.FAILS
    assert best(_rows(a=(1.0, 0.05))) == abl.MISSING
    both = abl._all_of(abl._compare("a", "m", ">", "b"), abl._compare("a", "m", ">", "c"))
    assert both(_rows(a=(1.0, 0.05), b=(0.5, 0.05), c=(0.95, 0.05))) == abl.NOISE
    assert both(_rows(a=(1.0, 0.05), b=(1.5, 0.05), c=(0.95, 0.05))) == abl.FAILS
    assert both(_rows(a=(1.0, 0.05), b=(0.5, 0.05))) == abl.MISSING
    peak = abl._interior_peak("m")
    assert peak(_rows(a=(0.2, 0.05), b=(1.0, 0.05), c=(0.3, 0.05))) == abl.HOLDS
    assert peak(_rows(a=(0.9, 0.05), b=(1.0, 0.05), c=(0.3, 0.05))) == abl.NOISE  # a end is as high
    assert peak(_rows(a=(1.0, 0.05), b=(0.5, 0.05), c=(0.3, 0.05))) == abl.FAILS
    assert peak(_rows(a=(1.0, 0.05), b=(0.95, 0.05), c=(0.3, 0.05))) == abl.NOISE
    assert peak(_rows(a=(1.0, None), b=(0.5, None), c=(0.3, None))) == abl.FAILS


def test_claims_hold_on_the_papers_own_numbers_where_the_paper_states_them():
    for table in TABLES:
        verdicts = [c.check(abl._paper_rows(table)) for c in table.claims]
        assert all(v in (abl.HOLDS, abl.MISSING) for v in verdicts), (table.name, verdicts)


def test_report_notes_under_a_table_title():
    markdown, _ = build_report(
        _records(), select_tables(["table5"]), table_notes={"table5": "Rows from `abl-x`."}
    )
    assert "## Table 5: SDE versus ODE sampling\n\nRows from `abl-x`.\n\n| variant |" in markdown


def test_variants_sharing_a_trained_model_run_back_to_back():
    todo = [(t, v) for t in TABLES for v in t.variants]
    order = runner.training_order([variant_overrides(v, PAPER_DEFAULTS) for _, v in todo])
    assert sorted(order) == list(range(len(todo)))
    ran = [todo[i] for i in order]

    def training(variant) -> tuple:
        return tuple(
            (k, x)
            for k, x in variant_overrides(variant, PAPER_DEFAULTS).items()
            if not k.startswith("sample.")
        )

    default_training = training(TABLES[0].variant("with h"))
    uses_default = [i for i, (_, v) in enumerate(ran) if training(v) == default_training]
    # with h, face and audio, FBK and FAC, ODE, SDE, the 6 step counts, lambda 1e-4 and Table 16's three
    # rows: one model, run in a row right after the first variant (the default model is the second
    # training configuration seen).
    assert uses_default == list(range(1, 16))
    assert [f"{t.name}/{v.label}" for t, v in ran[:2]] == ["table2/without h", "table2/with h"]
    assert len({training(v) for _, v in ran}) == 14  # the paper's tables need 14 trained models
    # Outside the groups, the tables' order is kept.
    rest = [f"{t.name}/{v.label}" for t, v in ran[16:]]
    assert rest[:3] == ["table3/no face, no audio", "table3/face only", "table3/audio only"]
    assert rest[-1] == "table13/0"


def test_each_seed_trains_its_own_models_and_its_sampling_variants_share_them():
    todo = [(seed, t, v) for seed in (0, 1) for t in TABLES for v in t.variants]
    overrides = [{**variant_overrides(v, PAPER_DEFAULTS), "seed": seed} for seed, _, v in todo]
    order = runner.training_order(overrides)
    keys = [runner._training_key(overrides[i]) for i in order]
    groups = [k for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    assert len(groups) == len(set(groups)) == 28  # 14 models per seed, each group run back to back
    seeds = [todo[i][0] for i in order]
    assert seeds == sorted(seeds)  # a campaign stopped early leaves whole seeds


def test_a_seed_reaches_both_training_and_sampling():
    import yaml

    from pipelines.sample import example_seeds
    from pipelines.train import train_config

    cmd = runner.experiment_command("n", {**PAPER_DEFAULTS, "seed": 2}, {}, False)
    assert "seed=2" in [cmd[i + 1] for i, a in enumerate(cmd) if a == "-S"]
    # DVC reruns a stage when a param it lists changes; both stages list the top-level seed ...
    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    for stage in ("train", "sample"):
        assert "seed" in stages[stage]["params"], stage
    # ... and both read it: the training seed, and every example's sampling noise.
    params = load_params()
    reseeded = params.model_copy(update={"seed": 2})
    assert train_config(reseeded).seed == 2 and train_config(params).seed == params.seed
    examples = [{"speaker": "a", "listener": "b"}, {"speaker": "b", "listener": "a"}]
    first, second = example_seeds(params.seed, "test", examples), example_seeds(2, "test", examples)
    assert len(set(first) | set(second)) == 4  # every example's noise changes with the seed
    assert example_seeds(2, "test", examples) == second  # and only with it


def test_progress_times_training_and_resampling_experiments_apart():
    now = [0.0]
    progress = runner.Progress([True, False, False, True], clock=lambda: now[0])
    assert progress.begin("a") == (
        "[ablations] variant 1 of 4: a (train and sample); elapsed 0m00s, time left not known yet"
    )
    now[0] = 300.0
    assert progress.end() == 300.0
    # Left: two resamples (not timed yet: counted at the training mean) and one training: 3 x 300 s.
    assert progress.begin("b").endswith("variant 2 of 4: b (resample); elapsed 5m00s, about 15m00s left")
    now[0] = 360.0
    progress.end()
    # Left: one resample at 60 s and one training at 300 s.
    assert progress.begin("c").endswith("elapsed 6m00s, about 6m00s left")
    now[0] = 4000.0
    progress.end()
    assert "elapsed 1h06m40s" not in progress.begin("d") and "elapsed 1h06m" in progress.begin("d")


def test_a_campaign_stopped_midway_keeps_its_recorded_variants_in_the_export(tmp_path, monkeypatch):
    """``run`` rewrites the export after every variant it records: a campaign whose third experiment
    fails leaves the two recorded before it in the file, an import recreates them in a fresh MLflow
    store (another machine), and ``run`` there resumes with exactly the two left. DVC is faked (what
    is under test is the bookkeeping around it); MLflow is real."""
    import gzip
    import json
    import shutil
    import subprocess

    from pipelines import ablation_records as records

    monkeypatch.chdir(tmp_path)
    shutil.copy(Path(runner.__file__).parents[1] / "params.yaml", "params.yaml")
    subprocess.run(["git", "init", "-q"], check=True)
    export = tmp_path / "reports" / "ablations.runs.json.gz"  # git-tracked, as the project's is
    export.parent.mkdir()
    export.write_bytes(gzip.compress(json.dumps({"runs": []}).encode()))  # a previous campaign's
    subprocess.run(["git", "add", str(export)], check=True)
    ran: list[str] = []
    fail_at = {"first": 3}  # the ordinal of the experiment that fails, in the first store

    def fake_dvc(*args: str, check: bool = True, capture: bool = False):
        if args[:2] == ("exp", "run"):
            if len(ran) + 1 == fail_at["first"]:
                # The machine dies here: what is in the file now is what survives it.
                assert len(exported_variants()) == 2
                raise subprocess.CalledProcessError(1, "dvc exp run")
            ran.append(args[args.index("--name") + 1])
        return subprocess.CompletedProcess(args, 0, "", "")

    def fake_file(rev: str, path: str) -> str | None:
        index = ran.index(rev.removeprefix("rev-"))
        return {
            "params.yaml": Path("params.yaml").read_text(),
            "metrics/evaluate.json": json.dumps({"all": {"FRCorr": 1.0 + index}}),
            "metrics/train.json": json.dumps({"loss": 0.5}),
        }.get(path)

    monkeypatch.setattr(runner, "_dvc", fake_dvc)
    monkeypatch.setattr(runner, "experiment_rev", lambda name: f"rev-{name}" if name in ran else None)
    monkeypatch.setattr(runner, "read_experiment_file", fake_file)
    table5 = select_tables(["table5"])

    def exported_variants() -> list[tuple[str, str]]:
        with gzip.open(export, "rt") as f:
            runs = json.load(f)["runs"]
        tags = [r["tags"] for r in runs if r["tags"]["reactdiff.role"] == "variant"]
        return sorted((t["reactdiff.variant"], t["reactdiff.seed"]) for t in tags)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'first.db'}")
    with pytest.raises(subprocess.CalledProcessError):
        runner.run_tables(table5, {}, "camp", seeds=2, export_to=export)
    assert len(ran) == 2
    first_two = exported_variants()
    assert len(first_two) == 2  # recorded before the failure, and in the file

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'second.db'}")
    client = records.client()
    with gzip.open(export, "rt") as f:
        assert records.import_campaign(client, records.ablations_experiment_id(client), json.load(f)) == 3
    fail_at["first"] = 0  # the new machine's experiments all succeed
    runner.run_tables(table5, {}, "camp", seeds=2, export_to=export)
    assert len(ran) == 4  # only the two that were not recorded ran
    everything = exported_variants()
    assert everything == [("ODE", "0"), ("ODE", "1"), ("SDE", "0"), ("SDE", "1")]
    assert set(first_two) < set(everything)


def test_committing_the_export_keeps_the_campaign_and_finds_its_experiments(tmp_path, monkeypatch):
    """The default campaign name follows the code, not a commit of ``reports/``; an experiment that ran
    before such a commit (on the previous baseline) is still found, and the current baseline's wins."""
    import subprocess

    monkeypatch.chdir(tmp_path)

    def commit(path: str, text: str) -> str:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        subprocess.run(["git", "add", path], check=True)
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", path], check=True
        )
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    subprocess.run(["git", "init", "-q"], check=True)
    code = commit("reactdiff.py", "v1")
    assert runner.campaign_name({}) == f"abl-{code[:7]}"
    ran_on = commit("reports/ablations.runs.json.gz", "partial")  # a mid-campaign commit of the export
    old = f"refs/exps/{code[:2]}/{code[2:]}/abl-x-table5-ode-s0"
    subprocess.run(["git", "update-ref", old, ran_on], check=True)
    after = commit("reports/ablations.md", "report")
    assert runner.campaign_name({}) == f"abl-{code[:7]}"  # the same campaign resumes
    assert runner.experiment_rev("abl-x-table5-ode-s0") == ran_on  # found on the earlier baseline
    assert runner.experiment_rev("abl-x-table5-sde-s0") is None
    here = f"refs/exps/{after[:2]}/{after[2:]}/abl-x-table5-ode-s0"
    subprocess.run(["git", "update-ref", here, after], check=True)
    assert runner.experiment_rev("abl-x-table5-ode-s0") == after  # the current baseline's first
    changed = commit("reactdiff.py", "v2")
    assert runner.campaign_name({}) == f"abl-{changed[:7]}"  # new code, new campaign

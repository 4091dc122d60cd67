"""Run the paper's ablation tables as DVC experiments, record them in MLflow, and report them.

Run (a table, several, or all; resumable: finished variants are skipped)::

    python -m pipelines.ablations run --tables table2 table5      # or: --tables all (the default)
    python -m pipelines.ablations run --seeds 3                     # every variant with 3 seeds
    python -m pipelines.ablations run --set train.steps=1000       # a base override for every variant
    python -m pipelines.ablations report                            # reports/ablations.{md,csv}
    python -m pipelines.ablations export                            # reports/ablations.runs.json.gz
    python -m pipelines.ablations import                            # ... into this MLflow store

``export`` writes the latest campaign's MLflow records (tags, params, metrics with the training curves;
not the artifacts) beside the report, and ``import`` recreates them in another store, where ``run``
resumes the campaign and ``report`` rebuilds the tables: a campaign longer than one machine's session
moves with the repository, and a reader of the report can open its runs in the MLflow UI. ``run``
itself rewrites the export after every variant it records (``--export``, ``--no-export``): a copy of
that file taken mid-campaign (or committed from another clone) keeps everything recorded so far. The
default campaign name holds the newest commit outside ``reports/``, so committing the export or the
report does not start a new campaign.

Each variant and seed is ``dvc exp run --name <campaign>-<table>-<variant>-s<seed> -S <every ablation
key>=<value> -S seed=<seed> evaluate``: a DVC experiment of the one pipeline (``dvc exp show`` lists
it). The top-level ``seed`` seeds both the training and the sampling, so a seed is a full repetition;
seeds run ``seed``, ``seed + 1``, ... from the base params. DVC skips the stages whose
inputs did not change since the workspace's last run, and the variants that share a trained model run
back to back (:func:`training_order`), so the sampling-only tables (5, 6) reuse the trained model and
the rows that several tables share (the paper's defaults) train once. With ``--jobs 1`` (the default;
on 2 cores one training already uses both) the experiments run one after another in the workspace;
with ``--jobs N`` they go through DVC's experiment queue, ``N`` at a time in temporary copies.

MLflow (experiment ``reactdiff-ablations``, :mod:`pipelines.ablation_records`): one parent run per table
and campaign, one child run per variant and seed with its params, datasets, metrics, training curve and
artifacts. The stage runs themselves stay in the ``reactdiff`` experiment, tagged with the same DVC
experiment name. A campaign groups one batch: by default ``abl-<commit>`` plus a hash
of the ``--set`` overrides, so a rerun with the same code and overrides resumes the same campaign.

The report is built from MLflow's records only (:func:`reactdiff.ablations.build_report`): each cell
is the mean over the recorded seeds with its standard error, and each claim of the paper is judged
"holds", "does not hold" or "within noise" against that noise.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines import ablation_records as records
from pipelines import tracking
from reactdiff import atomic
from reactdiff.ablations import (
    ABLATION_KEYS,
    AblationTable,
    Variant,
    build_report,
    format_param,
    select_tables,
    variant_overrides,
)
from reactdiff.config import DEFAULT_PARAMS, load_yaml, parse_params

REPORT_DIR = Path("reports")
EXPORT_FILE = REPORT_DIR / "ablations.runs.json.gz"
"""A campaign's MLflow records (``export`` / ``import``; ``run`` rewrites it as it records variants): the
committed one is the campaign behind ``reports/ablations.md``."""
TARGET_STAGE = "evaluate"
GIT_TRACKED_DIRS = ("metrics", "plots", "reports")


# -- params --------------------------------------------------------------------------------------------


def parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    """``["train.steps=1000"]`` -> ``{"train.steps": 1000}`` (values parsed as YAML, like ``dvc -S``)."""
    out = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected key=value, e.g. --set train.steps=1000")
        if key in ABLATION_KEYS:
            raise SystemExit(
                f"--set {key}: that key is what the ablation tables vary; pick the tables instead"
            )
        out[key] = load_yaml(value)
    return out


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def base_params(path: Path, sets: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened, validated params every variant starts from: ``params.yaml`` plus ``--set``."""
    raw = load_yaml(path.read_text())
    for key, value in sets.items():
        _set_dotted(raw, key, value)
    params = parse_params(raw, source=f"{path} with --set {dict(sets)}")
    return tracking.flatten(params.model_dump(by_alias=True))


def code_commit() -> str | None:
    """The newest commit that changed something outside ``reports/``: committing a campaign's export (or
    its report) does not make the next ``run`` start another campaign."""
    try:
        return _git("log", "-1", "--format=%H", "--", ".", ":(exclude)reports").strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def campaign_name(sets: Mapping[str, Any]) -> str:
    commit = (code_commit() or "nogit")[:7]
    if not sets:
        return f"abl-{commit}"
    digest = hashlib.sha256(json.dumps(dict(sets), sort_keys=True).encode()).hexdigest()[:6]
    return f"abl-{commit}-{digest}"


# -- DVC -----------------------------------------------------------------------------------------------


def _dvc(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], check=check, text=True, capture_output=capture
    )


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, text=True, capture_output=True).stdout


def experiment_rev(name: str) -> str | None:
    """Commit of the DVC experiment ``name``, or ``None``: the one on the current baseline (HEAD), else
    one on another baseline (a commit of the campaign's export moved HEAD since it ran; the name holds
    the campaign, so it is the same variant of the same code)."""
    head = _git("rev-parse", "HEAD").strip()
    found = {}
    for line in _git("for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/").splitlines():
        rev, ref = line.split(" ", 1)
        if ref.rsplit("/", 1)[-1] == name:
            found[ref] = rev
    return found.get(f"refs/exps/{head[:2]}/{head[2:]}/{name}") or next(iter(found.values()), None)


def experiment_command(
    name: str, overrides: Mapping[str, Any], sets: Mapping[str, Any], queue: bool
) -> list[str]:
    args = ["exp", "run", "--name", name]
    if queue:
        args.append("--queue")
    for key, value in {**sets, **overrides}.items():
        args += ["-S", f"{key}={format_param(value)}"]
    return [*args, TARGET_STAGE]


def read_experiment_file(rev: str, path: str) -> str | None:
    try:
        return _git("show", f"{rev}:{path}")
    except subprocess.CalledProcessError:
        return None


# -- run -----------------------------------------------------------------------------------------------


def workspace_snapshot(params_path: Path) -> dict[Path, bytes]:
    """What a workspace experiment rewrites and git tracks: params, lock, and the uncached outputs.

    The cached outputs come back with ``dvc checkout`` once ``dvc.lock`` is restored; the metrics,
    plots and reports that DVC leaves to git (``cache: false``) are restored from this snapshot.
    """
    # Untracked files too: an output a newer stage writes (metrics/sample.json) before it is committed.
    tracked = _git("ls-files", "-co", "--exclude-standard", "--", *GIT_TRACKED_DIRS).splitlines()
    paths = [params_path, Path("dvc.lock"), *(Path(p) for p in tracked)]
    return {p: p.read_bytes() for p in paths if p.is_file()}


def _training_key(params: Mapping[str, Any]) -> tuple:
    return tuple((k, v) for k, v in params.items() if not k.startswith("sample."))


def training_order(overrides: Sequence[Mapping[str, Any]]) -> list[int]:
    """Run order of variants: those that share a trained model one after another, first seen first.

    ``overrides``: each variant's params (its ablation keys and, in a campaign, its ``seed``); all but
    the ``sample.*`` keys decide the trained model. DVC's run cache does not serve the ``train`` stage
    (it has git-tracked, uncached metric and plot outputs), so a training configuration is reused only
    while the workspace still holds it: the paper's default row of Tables 2-6 and 13 trains once per
    seed when those variants run back to back, and the sampling-only variants then only resample. The
    order within a group keeps the tables' order.
    """
    first_seen: dict[tuple, int] = {}
    keys = [first_seen.setdefault(_training_key(params), len(first_seen)) for params in overrides]
    return sorted(range(len(overrides)), key=lambda i: (keys[i], i))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """``variant k of n`` lines for a campaign, with the time elapsed and an estimate of the time left.

    Experiments that train a model and those that only resample one take very different times, so
    each kind is timed on its own and the estimate adds the remaining ones of each kind at their mean
    (a kind not seen yet counts at the other kind's mean).
    """

    def __init__(self, trains: Sequence[bool], clock: Callable[[], float] = time.perf_counter) -> None:
        self.trains = list(trains)
        self.clock = clock
        self.started = clock()
        self.seconds: dict[bool, list[float]] = {True: [], False: []}
        self.done = 0

    def _left(self) -> str:
        rest = self.trains[self.done :]
        means = {kind: sum(t) / len(t) for kind, t in self.seconds.items() if t}
        if not means:
            return "time left not known yet"
        fallback = sum(means.values()) / len(means)
        return f"about {_duration(sum(means.get(kind, fallback) for kind in rest))} left"

    def begin(self, name: str) -> str:
        self._t0 = self.clock()
        kind = "train and sample" if self.trains[self.done] else "resample"
        return (
            f"[ablations] variant {self.done + 1} of {len(self.trains)}: {name} ({kind}); elapsed "
            f"{_duration(self._t0 - self.started)}, {self._left()}"
        )

    def end(self) -> float:
        seconds = self.clock() - self._t0
        self.seconds[self.trains[self.done]].append(seconds)
        self.done += 1
        return seconds


def run_tables(
    tables: Sequence[AblationTable],
    sets: Mapping[str, Any],
    campaign: str,
    jobs: int = 1,
    params_path: Path = DEFAULT_PARAMS,
    seeds: int = 1,
    export_to: Path | None = EXPORT_FILE,
) -> None:
    """Run every variant of ``tables`` with ``seeds`` seeds (``seed``, ``seed + 1``, ... of the base params)
    as DVC experiments and record each in MLflow; variants and seeds already recorded are skipped.

    After each recorded variant the campaign's runs so far are exported to ``export_to`` (``None``: not
    at all), which the workspace's restore at the end leaves alone: with that file kept off the machine,
    a lost MLflow store costs the variant in flight, not the campaign. With ``jobs > 1`` variants are
    recorded, and exported, only once DVC's queue has run them all."""
    if seeds < 1:
        raise SystemExit(f"--seeds {seeds}: need at least one seed")
    base = base_params(params_path, sets)
    ablation_base = {k: base[k] for k in ABLATION_KEYS}
    client = records.client()
    experiment_id = records.ablations_experiment_id(client)
    parents = {t.name: records.table_parent(client, experiment_id, t, campaign, base, sets) for t in tables}
    done = {t.name: records.finished_variants(client, experiment_id, parents[t.name]) for t in tables}
    todo: list[tuple[AblationTable, Variant, int, dict[str, Any], str]] = []
    for seed in range(base["seed"], base["seed"] + seeds):  # seed-major: an early stop leaves whole seeds
        for table in tables:
            for variant in table.variants:
                if (str(variant.label), seed) in done[table.name]:
                    print(f"[ablations] {table.name} / {variant.label} / seed {seed}: recorded, skipped")
                    continue
                overrides = {**variant_overrides(variant, ablation_base), "seed": seed}
                name = f"{campaign}-{table.name}-{variant.slug()}-s{seed}"
                todo.append((table, variant, seed, overrides, name))
    todo = [todo[i] for i in training_order([item[3] for item in todo])]
    print(f"[ablations] campaign {campaign}: {len(todo)} variant(s) to run or record", flush=True)
    if not todo:
        if export_to is not None:  # the whole campaign is recorded: the file matches the report
            records.write_export(client, experiment_id, campaign, export_to)
        return

    keys = [_training_key(item[3]) for item in todo]
    progress = Progress([i == 0 or keys[i] != keys[i - 1] for i in range(len(todo))])
    saved = workspace_snapshot(params_path)
    if export_to is not None:  # what the campaign writes as it goes is not the workspace's to restore
        saved = {path: content for path, content in saved.items() if path.resolve() != export_to.resolve()}
    try:
        pending = [item for item in todo if experiment_rev(item[4]) is None]
        if jobs > 1 and pending:
            for *_, overrides, name in pending:
                _dvc(*experiment_command(name, overrides, sets, queue=True))
            _dvc("exp", "run", "--run-all", "--jobs", str(jobs))
        for table, variant, seed, overrides, name in todo:
            print(progress.begin(name), flush=True)
            rev = experiment_rev(name)
            if rev is None:
                _dvc(*experiment_command(name, overrides, sets, queue=False))
                rev = experiment_rev(name)
            if rev is None:
                raise RuntimeError(f"DVC experiment {name} did not produce a commit; see the log above")
            files = {path: read_experiment_file(rev, path) for path in records.EXPERIMENT_FILES}
            run_id = records.record_variant(
                client, experiment_id, parents[table.name], table, variant, campaign, name, rev, seed, files
            )
            print(f"[ablations] {name}: done in {progress.end():.0f} s, MLflow run {run_id}", flush=True)
            if export_to is not None:
                records.write_export(client, experiment_id, campaign, export_to)
    finally:
        for path, content in saved.items():  # the workspace goes back to where the batch started
            path.write_bytes(content)
        if jobs <= 1:
            _dvc("checkout", "--quiet", check=False)
    took = _duration(progress.clock() - progress.started)
    print(f"[ablations] campaign {campaign}: {len(todo)} variant(s) in {took}")


# -- report --------------------------------------------------------------------------------------------


def write_report(
    campaigns: Sequence[str] | None,
    subset: str,
    tables: Sequence[AblationTable],
    out_dir: Path,
    export: Path = EXPORT_FILE,
) -> Path:
    client = records.client()
    experiment_id = records.ablations_experiment_id(client)
    campaigns = list(campaigns or [records.latest_campaign(client, experiment_id)])
    rows, sources = records.load_records(client, experiment_id, campaigns, subset)
    overrides = {c: records.campaign_overrides(client, experiment_id, c) for c in campaigns}

    def describe(campaign: str) -> str:
        sets = ", ".join(f"`{k}={format_param(v)}`" for k, v in overrides[campaign].items())
        return f"`{campaign}` ({sets or 'params.yaml as committed'})"

    notes = [
        f"Campaigns: {'; '.join(describe(c) for c in campaigns)}; MLflow experiment "
        f"`{records.EXPERIMENT}`. Their runs, exported, are in `{export}`: "
        "`python -m pipelines.ablations import` recreates them in "
        "your MLflow store (to browse them, or to resume a campaign with `run`).",
        "Paper columns: REACT2024 numbers (`paper_tables.json`); ours: the data the campaign ran on.",
        "The paper's FVD needs an I3D network; our realism columns are Frechet distances named for what "
        "they measure. Jitter: mean squared frame-to-frame acceleration of the generated coefficients.",
    ]
    table_notes = {t: "Rows from " + "; ".join(describe(c) for c in cs) + "." for t, cs in sources.items()}
    markdown, frame = build_report(rows, tables, subset=subset, notes=notes, table_notes=table_notes)
    atomic.write_text(markdown, out_dir / "ablations.md")
    atomic.write_text(frame.to_csv(index=False), out_dir / "ablations.csv")
    return out_dir / "ablations.md"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.ablations", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run tables as DVC experiments and record them in MLflow")
    run.add_argument("--tables", nargs="+", default=["all"], help="table2 ... table13, or all")
    run.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="base override for every variant (not an ablation key), e.g. train.steps=1000",
    )
    run.add_argument(
        "--campaign", help="name of this batch in MLflow (default: abl-<commit>[-<hash of --set>])"
    )
    run.add_argument(
        "--seeds", type=int, default=1, help="seeds per variant (seed, seed + 1, ... of params.yaml)"
    )
    run.add_argument("--jobs", type=int, default=1, help="experiments at a time (>1: DVC queue in temp dirs)")
    run.add_argument(
        "--no-report", action="store_true", help="skip writing reports/ablations.{md,csv} at the end"
    )
    run.add_argument(
        "--export",
        type=Path,
        default=EXPORT_FILE,
        help="where the campaign's runs are exported after every variant (keep it off the machine)",
    )
    run.add_argument("--no-export", action="store_true", help="do not export the campaign's runs")
    report = sub.add_parser("report", help="reports/ablations.{md,csv} from MLflow's records")
    report.add_argument(
        "--campaign",
        nargs="+",
        help="campaign(s) to report, later ones win per variant (default: the latest)",
    )
    report.add_argument("--subset", default="all", choices=["all", "expression", "pose"])
    report.add_argument("--tables", nargs="+", default=["all"])
    report.add_argument("--out", type=Path, default=REPORT_DIR)
    export = sub.add_parser("export", help="a campaign's runs to a file, to commit or move to another store")
    export.add_argument("--campaign", help="default: the latest")
    export.add_argument("--out", type=Path, default=EXPORT_FILE)
    load = sub.add_parser("import", help="recreate an exported campaign in this store (then run resumes it)")
    load.add_argument("file", type=Path, nargs="?", default=EXPORT_FILE)
    args = parser.parse_args(argv)

    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking.tracking_uri())  # absolute: DVC temp dirs share it
    if args.command in ("export", "import"):
        client = records.client()
        experiment_id = records.ablations_experiment_id(client)
        if args.command == "export":
            campaign = args.campaign or records.latest_campaign(client, experiment_id)
            records.write_export(client, experiment_id, campaign, args.out)
        else:
            with gzip.open(args.file, "rt", encoding="utf-8") as source:
                exported = json.load(source)
            created = records.import_campaign(client, experiment_id, exported)
            print(
                f"[ablations] {exported['campaign']}: {created} runs imported into {tracking.tracking_uri()}"
            )
        return
    try:
        tables = select_tables(args.tables)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if args.command == "run":
        sets = parse_sets(args.sets)
        campaign = args.campaign or campaign_name(sets)
        export_to = None if args.no_export else args.export
        run_tables(tables, sets, campaign, jobs=args.jobs, seeds=args.seeds, export_to=export_to)
        if not args.no_report:  # beside the runs it is built from (the export)
            written = write_report([campaign], "all", tables, REPORT_DIR, export_to or EXPORT_FILE)
            print(f"[ablations] report: {written}")
    else:
        print(f"[ablations] report: {write_report(args.campaign, args.subset, tables, args.out)}")


if __name__ == "__main__":
    main()

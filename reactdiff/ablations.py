"""The paper's ablation studies (Tables 2-6, 13 and 16) as params of the one pipeline, and their report.

Each table is a list of variants; a variant is a set of ``params.yaml`` overrides, exactly what
``dvc exp run -S <key>=<value>`` takes. The keys an ablation can touch are :data:`ABLATION_KEYS`; a
variant states the value of its own table's keys and inherits every other key from the base params, so
a variant means the same thing whatever the base (paper or demo preset, sample or real corpus).

The paper's defaults are one row of every table ("with h", "face and audio", "FBK and FAC", "SDE",
"50 steps", "lambda = 1e-4"); with the base params at those defaults they are the same experiment. DVC's
run cache does not serve the ``train`` stage (its metrics and plots are git-tracked, uncached outputs),
so the runner (``pipelines/ablations.py``, ``training_order``) runs the variants that share a trained
model back to back, and DVC skips the unchanged ``train`` stage for all but the first. Tables 5 and 6
change sampling only, so their variants reuse the trained model (``train`` does not depend on
``sample.*``). Table 16 (efficiency) samples the same teacher at 50 and 10 steps and its distilled
student (``sample.model``); its cost columns (steps, parameters, GFLOPs and frames per second of one
conversation on the machine that ran it) come from the ``sample`` stage's ``metrics/sample.json``
(:func:`cost_columns`).

:func:`build_report` turns the recorded metrics of the variants (read from MLflow by
``pipelines/ablations.py``, one run per seed) into one table per study with the paper's numbers
(``paper_tables.json``) beside ours, each of ours the mean over seeds with its standard error
(:class:`Estimate`), and judges the paper's qualitative claims (:class:`Claim`) on the reproduced
numbers against that noise: holds, does not hold, or within noise. Realism: the paper's FVD needs an
I3D video network that cannot be downloaded here; we show our Frechet distances (``FD_stats``,
``FD_dynamics``, ``FD_learned`` when evaluated) beside it, under their own names. ``Jitter`` (mean
squared frame-to-frame acceleration) measures smoothness directly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from reactdiff.reference import paper_tables

__all__ = [
    "ABLATION_KEYS",
    "TABLES",
    "AblationTable",
    "Claim",
    "Estimate",
    "Variant",
    "build_report",
    "cost_columns",
    "select_tables",
    "variant_overrides",
]

ABLATION_KEYS = (
    "model.use_frame_index",
    "model.use_speaker_face",
    "model.use_speaker_audio",
    "train.use_fbk",
    "train.use_fac",
    "lambda",
    "sample.solver",
    "sample.steps",
    "sample.model",
)
"""Every params key an ablation of the paper sets (dotted, as ``dvc exp run -S`` takes them)."""

Metrics = Mapping[str, float]
"""One variant's metrics: ``"FRCorr"``, ``"FD_stats"``, ... for the reported coefficient subset."""


@dataclass(frozen=True)
class Variant:
    """One row of an ablation table: the paper's row label and the params that make it."""

    label: str
    """The row as ``paper_tables.json`` names it (``"without h"``, ``0.001``, ...)."""
    params: Mapping[str, Any]

    def slug(self) -> str:
        text = str(self.label).lower()
        return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "variant"


@dataclass(frozen=True)
class Estimate:
    """A metric over seeds: the mean, its standard error (``None`` for a single value), the count."""

    mean: float
    se: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Estimate | None:
        """Mean and standard error of the mean (sample standard deviation over ``sqrt(n)``) of the finite
        values; ``None`` when there are none."""
        finite = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not finite:
            return None
        n = len(finite)
        mean = math.fsum(finite) / n
        se = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1) / n) if n > 1 else None
        return cls(mean, se, n)


Rows = Mapping[Any, Mapping[str, Estimate]]
"""``{row label: {metric: estimate}}``: one table's rows as a claim checks them."""

HOLDS, FAILS, NOISE, MISSING = "holds", "does not hold", "within noise", "not measured"
VERDICTS = (HOLDS, FAILS, NOISE, MISSING)
NOISE_SES = 2.0
"""A difference counts when it exceeds this many standard errors (of the difference of two means)."""


@dataclass(frozen=True)
class Claim:
    """A qualitative statement of the paper about one table, checkable on any set of rows.

    ``check(rows)`` gets ``{row label: {metric: Estimate}}`` and returns a verdict: :data:`HOLDS`,
    :data:`FAILS` (the difference goes the wrong way by more than :data:`NOISE_SES` standard errors),
    :data:`NOISE` (it is within that many standard errors either way) or :data:`MISSING` (a metric it
    needs is absent). Rows with a single value each (one seed; the paper's numbers) have no standard
    error, and the sign of the difference decides.
    """

    text: str
    check: Callable[[Rows], str]


@dataclass(frozen=True)
class AblationTable:
    key: str
    """The table's key in ``paper_tables.json`` (``table2_temporal_index_h``, ...)."""
    name: str
    """Short name used for experiment names and the MLflow parent run (``table2``)."""
    title: str
    variants: tuple[Variant, ...]
    metrics: tuple[str, ...]
    """The paper's columns for this table (``FVD`` stands for the realism columns)."""
    claims: tuple[Claim, ...] = field(default_factory=tuple)
    sampling_only: bool = False
    note: str = ""
    """What the reader must know to compare the table with the paper's, printed under its title."""
    paper_label: Callable[[Mapping[str, Any]], Any] | None = None
    """The row label of a paper row, when its ``variant`` alone does not name it (Table 16 has two
    "ReactDiff" rows, at 50 and at 10 steps)."""

    def variant(self, label: Any) -> Variant:
        for v in self.variants:
            if v.label == label:
                return v
        raise KeyError(f"{self.name} has no variant {label!r}")

    def experiment_name(self, variant: Variant) -> str:
        """The DVC experiment name of a variant: ``table2-without-h``."""
        return f"{self.name}-{variant.slug()}"


# -- claims -----------------------------------------------------------------------------------------


def _get(rows: Rows, label: Any, metric: str) -> Estimate | None:
    return rows.get(label, {}).get(metric)


def _exceeds(x: Estimate, y: Estimate) -> str:
    """Verdict on "``x`` is larger than ``y``"."""
    diff = x.mean - y.mean
    if x.se is None or y.se is None:
        return HOLDS if diff > 0 else FAILS
    margin = NOISE_SES * math.hypot(x.se, y.se)
    return HOLDS if diff > margin else FAILS if diff < -margin else NOISE


def _combine(verdicts: Sequence[str]) -> str:
    """All of several statements: missing if any is, fails if any fails, holds if all hold."""
    for verdict in (MISSING, FAILS):
        if verdict in verdicts:
            return verdict
    return HOLDS if all(v == HOLDS for v in verdicts) else NOISE


def _compare(a: Any, metric: str, op: str, b: Any) -> Callable[[Rows], str]:
    """``rows[a][metric] <op> rows[b][metric]`` with op ``>`` or ``<``."""

    def check(rows: Rows) -> str:
        x, y = _get(rows, a, metric), _get(rows, b, metric)
        if x is None or y is None:
            return MISSING
        return _exceeds(x, y) if op == ">" else _exceeds(y, x)

    return check


def _all_of(*checks: Callable[[Rows], str]) -> Callable[[Rows], str]:
    def check(rows: Rows) -> str:
        return _combine([c(rows) for c in checks])

    return check


def _best(label: Any, metric: str, higher_is_better: bool) -> Callable[[Rows], str]:
    """Row ``label`` has the best ``metric`` of all rows that have it."""

    def check(rows: Rows) -> str:
        values = {k: v for k in rows if (v := _get(rows, k, metric)) is not None}
        if label not in values or len(values) < 2:
            return MISSING
        mine = values[label]
        others = [v for k, v in values.items() if k != label]
        return _combine([_exceeds(mine, v) if higher_is_better else _exceeds(v, mine) for v in others])

    return check


def _interior_peak(metric: str) -> Callable[[Rows], str]:
    """The highest ``metric`` of an ordered sweep is at neither end."""

    def check(rows: Rows) -> str:
        values = [v for k in rows if (v := _get(rows, k, metric)) is not None]
        if len(values) < 3:
            return MISSING
        ends, interior = [values[0], values[-1]], values[1:-1]
        peak = max(values, key=lambda v: v.mean)
        if any(peak is v for v in interior):
            return _combine([_exceeds(peak, end) for end in ends])
        # The peak is at an end: the claim fails only if that end beats every interior row clearly.
        against = [_exceeds(peak, v) for v in interior]
        return FAILS if all(v == HOLDS for v in against) else NOISE

    return check


# -- the tables -------------------------------------------------------------------------------------


def _table(
    key: str,
    name: str,
    title: str,
    variants,
    metrics,
    claims=(),
    sampling_only=False,
    paper_label=None,
    note="",
):
    return AblationTable(
        key=key,
        name=name,
        title=title,
        variants=tuple(Variant(label, dict(params)) for label, params in variants),
        metrics=tuple(metrics),
        claims=tuple(claims),
        sampling_only=sampling_only,
        paper_label=paper_label,
        note=note,
    )


_TABLE16_ROWS = {
    ("ReactDiff", 50): "teacher, 50 steps",
    ("ReactDiff", 10): "teacher, 10 steps",
    ("Distilled ReactDiff", 10): "distilled student",
}


def cost_columns(sample_metrics: Mapping[str, Any]) -> dict[str, float]:
    """Table 16's cost columns from the ``sample`` stage's ``metrics/sample.json``: ``steps``, ``params_M``,
    ``GFLOPs`` (per window of M samples) and ``FPS`` (frames per second of one conversation)."""
    columns = {
        "steps": sample_metrics.get("steps"),
        "params_M": None if "parameters" not in sample_metrics else sample_metrics["parameters"] / 1e6,
        "GFLOPs": sample_metrics.get("gflops_per_window"),
        "FPS": sample_metrics.get("fps"),
    }
    return {k: float(v) for k, v in columns.items() if v is not None}


TABLES: tuple[AblationTable, ...] = (
    _table(
        "table2_temporal_index_h",
        "table2",
        "Table 2: temporal index h",
        [
            ("without h", {"model.use_frame_index": False}),
            ("with h", {"model.use_frame_index": True}),
        ],
        ["FRDiv", "FVD", "FRCorr", "FRSyn"],
        [
            Claim(
                "with h, samples are more diverse (FRDiv higher)",
                _compare("with h", "FRDiv", ">", "without h"),
            ),
            Claim(
                "with h, reactions are more appropriate (FRCorr higher)",
                _compare("with h", "FRCorr", ">", "without h"),
            ),
            Claim(
                "with h, reactions are better synchronised (FRSyn lower)",
                _compare("with h", "FRSyn", "<", "without h"),
            ),
        ],
    ),
    _table(
        "table3_speaker_modalities",
        "table3",
        "Table 3: speaker modalities",
        [
            ("no face, no audio", {"model.use_speaker_face": False, "model.use_speaker_audio": False}),
            ("face only", {"model.use_speaker_face": True, "model.use_speaker_audio": False}),
            ("audio only", {"model.use_speaker_face": False, "model.use_speaker_audio": True}),
            ("face and audio", {"model.use_speaker_face": True, "model.use_speaker_audio": True}),
        ],
        ["FRVar", "FRDiv", "FVD", "FRCorr", "FRSyn"],
        [
            Claim(
                "the speaker's face improves appropriateness and synchrony (face only vs neither)",
                _all_of(
                    _compare("face only", "FRCorr", ">", "no face, no audio"),
                    _compare("face only", "FRSyn", "<", "no face, no audio"),
                ),
            ),
            Claim(
                "face and audio together are the most appropriate (best FRCorr)",
                _best("face and audio", "FRCorr", True),
            ),
            Claim(
                "face and audio together are the best synchronised (best FRSyn)",
                _best("face and audio", "FRSyn", False),
            ),
        ],
    ),
    _table(
        "table4_constraints",
        "table4",
        "Table 4: the FBK and FAC priors",
        [
            ("neither", {"train.use_fbk": False, "train.use_fac": False}),
            ("FBK only", {"train.use_fbk": True, "train.use_fac": False}),
            ("FAC only", {"train.use_fbk": False, "train.use_fac": True}),
            ("FBK and FAC", {"train.use_fbk": True, "train.use_fac": True}),
        ],
        ["FRDvs", "FRDiv", "FVD", "FRCorr", "FRSyn"],
        [
            Claim(
                "without FBK the motion jitters more (Jitter higher: neither vs FBK only, FAC only vs both)",
                _all_of(
                    _compare("neither", "Jitter", ">", "FBK only"),
                    _compare("FAC only", "Jitter", ">", "FBK and FAC"),
                ),
            ),
            Claim(
                "without FBK, FRDvs increases (jitter and unsmooth transitions)",
                _all_of(
                    _compare("neither", "FRDvs", ">", "FBK only"),
                    _compare("FAC only", "FRDvs", ">", "FBK and FAC"),
                ),
            ),
            Claim(
                "both priors give the most appropriate reactions (best FRCorr)",
                _best("FBK and FAC", "FRCorr", True),
            ),
        ],
    ),
    _table(
        "table5_solver",
        "table5",
        "Table 5: SDE versus ODE sampling",
        [("ODE", {"sample.solver": "ode"}), ("SDE", {"sample.solver": "sde"})],
        ["FRVar", "FRDiv", "FVD", "FRCorr", "FRSyn"],
        [
            Claim(
                "SDE sampling is more diverse than ODE (FRDiv higher)", _compare("SDE", "FRDiv", ">", "ODE")
            ),
            Claim(
                "SDE sampling varies more over time than ODE (FRVar higher)",
                _compare("SDE", "FRVar", ">", "ODE"),
            ),
            Claim(
                "SDE sampling is more appropriate than ODE (FRCorr higher)",
                _compare("SDE", "FRCorr", ">", "ODE"),
            ),
        ],
        sampling_only=True,
    ),
    _table(
        "table6_denoising_steps",
        "table6",
        "Table 6: denoising steps",
        [(steps, {"sample.steps": steps}) for steps in (2, 5, 10, 25, 50, 100)],
        ["FRVar", "FRDiv", "FVD", "FRCorr", "FRSyn"],
        [
            Claim(
                "fewer steps give less diversity (FRDiv at 2 steps < at 50)", _compare(2, "FRDiv", "<", 50)
            ),
            Claim(
                "fewer steps average the samples (FRVar at 2 steps < at 50)", _compare(2, "FRVar", "<", 50)
            ),
        ],
        sampling_only=True,
    ),
    _table(
        "table13_lambda",
        "table13",
        "Table 13: weight lambda of the FAC loss",
        [(lam, {"lambda": lam}) for lam in (1, 0.1, 0.01, 0.001, 0.0001, 0.00001, 0)],
        ["FRVar", "FRDiv", "FVD", "FRCorr", "FRSyn"],
        [
            Claim(
                "appropriateness peaks at an intermediate lambda (neither 1 nor 0)", _interior_peak("FRCorr")
            ),
            Claim(
                "lambda = 1e-4 (the paper's choice) beats lambda = 0 on FRCorr",
                _compare(0.0001, "FRCorr", ">", 0),
            ),
        ],
    ),
    _table(
        "table16_efficiency_gtx1080ti",
        "table16",
        "Table 16: efficiency, the teacher at 50 and 10 steps and the distilled student",
        [
            ("teacher, 50 steps", {"sample.model": "teacher", "sample.steps": 50}),
            ("teacher, 10 steps", {"sample.model": "teacher", "sample.steps": 10}),
            ("distilled student", {"sample.model": "student"}),
        ],
        ["steps", "params_M", "GFLOPs", "FPS", "FRDiv", "FRCorr"],
        [
            Claim(
                "the distilled student runs faster than the teacher at 50 steps (FPS higher)",
                _compare("distilled student", "FPS", ">", "teacher, 50 steps"),
            ),
            Claim(
                "the distilled student is faster than the teacher at 10 steps (FPS higher)",
                _compare("distilled student", "FPS", ">", "teacher, 10 steps"),
            ),
            Claim(
                "10 teacher steps lose diversity against 50 (FRDiv lower)",
                _compare("teacher, 10 steps", "FRDiv", "<", "teacher, 50 steps"),
            ),
        ],
        sampling_only=True,
        paper_label=lambda row: _TABLE16_ROWS.get((row["variant"], row.get("steps"))),
        note=(
            "Our cost columns are the campaign's model (the params' preset) on the machine that ran it, one "
            "conversation at M = 10 (`metrics/sample.json`); the paper's are its 84M model on a GTX 1080 "
            "Ti. `python -m benchmarks.sampling --student` times both presets' teacher and student here."
        ),
    ),
)

REALISM_COLUMNS = ("FD_stats", "FD_dynamics", "FD_learned")
"""Our realism scores, shown where the paper has FVD (which needs an I3D network)."""


def select_tables(names: Sequence[str] | None) -> list[AblationTable]:
    """Tables by short name (``table2``) or paper key; ``None`` or ``["all"]`` = every table."""
    if not names or list(names) == ["all"]:
        return list(TABLES)
    by_name = {t.name: t for t in TABLES} | {t.key: t for t in TABLES}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(
            f"unknown ablation table(s) {unknown}; choose from {[t.name for t in TABLES]} or all"
        )
    return [by_name[n] for n in names]


def variant_overrides(variant: Variant, base: Mapping[str, Any]) -> dict[str, Any]:
    """The full set of ablation params of ``variant``: its own values over the ``base`` values.

    ``base``: the values of :data:`ABLATION_KEYS` in the params the batch starts from. Passing every
    key (not only the variant's) makes a variant independent of what an earlier experiment left in the
    workspace's ``params.yaml``.
    """
    missing = [k for k in ABLATION_KEYS if k not in base]
    if missing:
        raise ValueError(f"base params lack {missing}")
    unknown = [k for k in variant.params if k not in ABLATION_KEYS]
    if unknown:
        raise ValueError(f"variant {variant.label!r} sets {unknown}, which are not ablation keys")
    return {k: variant.params.get(k, base[k]) for k in ABLATION_KEYS}


def format_param(value: Any) -> str:
    """A value as ``dvc exp run -S key=<value>`` takes it (YAML): booleans lower case, floats exact."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# -- the report -------------------------------------------------------------------------------------


def _paper_rows(table: AblationTable) -> dict[Any, dict[str, Estimate]]:
    rows = {}
    for row in paper_tables()[table.key]:
        label = row["variant"] if table.paper_label is None else table.paper_label(row)
        rows[label] = {
            k: Estimate(float(v), None, 1) for k, v in row.items() if k != "variant" and v is not None
        }
    return rows


def summarise(runs: Sequence[Metrics]) -> dict[str, Estimate]:
    """One variant's runs (one per seed) -> ``{metric: Estimate}`` over the runs that have the metric."""
    names = dict.fromkeys(name for run in runs for name in run)
    estimates = {name: Estimate.of([run.get(name) for run in runs]) for name in names}
    return {name: e for name, e in estimates.items() if e is not None}


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    value = float(value)
    if value == 0:
        return "0"
    return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.2e}"


def _fmt_estimate(estimate: Estimate | None) -> str:
    if estimate is None:
        return "-"
    if estimate.se is None:
        return _fmt(estimate.mean)
    return f"{_fmt(estimate.mean)} ± {_fmt(estimate.se)}"


def _count(verdicts: Sequence[str]) -> str:
    return ", ".join(f"{v}: {verdicts.count(v)}" for v in VERDICTS)


def build_report(
    records: Mapping[str, Mapping[Any, Sequence[Metrics]]],
    tables: Sequence[AblationTable] = TABLES,
    *,
    subset: str = "all",
    title: str = "Ablations: reproduced beside the paper",
    notes: Sequence[str] = (),
    table_notes: Mapping[str, str] | None = None,
) -> tuple[str, pd.DataFrame]:
    """Markdown and a long-format frame of every table, ours beside the paper's numbers.

    ``records``: ``{table name: {row label: [metrics of one run per seed]}}``, the metrics of one
    coefficient ``subset`` (names without the subset prefix). Each of our cells is the mean over seeds
    plus or minus its standard error (a single seed: the value alone). A variant without a record shows
    ``-`` and its claims are "not measured". Claims are judged on our rows and on the paper's
    (:class:`Claim`); a summary under the title counts the verdicts. The frame has one row per (table,
    variant, metric, source) with ``source`` ``ours`` or ``paper``, the mean as ``value``, its ``se``
    and the number of seeds ``n``.
    """
    body: list[str] = []
    long_rows: list[dict[str, Any]] = []
    ours_verdicts: list[str] = []
    paper_verdicts: list[str] = []
    for table in tables:
        ours = {label: summarise(runs) for label, runs in records.get(table.name, {}).items()}
        paper = _paper_rows(table)
        ours_cols = [c for c in table.metrics if c != "FVD"]
        realism = [c for c in REALISM_COLUMNS if any(c in ours.get(v.label, {}) for v in table.variants)]
        columns = [*ours_cols, *realism, "Jitter"]
        header = ["variant", "seeds", *columns, *[f"paper {c}" for c in table.metrics]]
        body += [f"## {table.title}", ""]
        if table.note:
            body += [table.note, ""]
        if table_notes and table.name in table_notes:
            body += [table_notes[table.name], ""]
        body += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for variant in table.variants:
            mine = ours.get(variant.label, {})
            theirs = paper.get(variant.label, {})
            seeds = len(records.get(table.name, {}).get(variant.label, ()))
            cells = [str(variant.label), str(seeds) if seeds else "-"]
            cells += [_fmt_estimate(mine.get(c)) for c in columns]
            cells += [_fmt_estimate(theirs.get(c)) for c in table.metrics]
            body.append("| " + " | ".join(cells) + " |")
            for source, metrics, estimates in (("ours", columns, mine), ("paper", table.metrics, theirs)):
                for metric in metrics:
                    e = estimates.get(metric)
                    long_rows.append(
                        {
                            "table": table.name,
                            "variant": str(variant.label),
                            "metric": metric,
                            "source": source,
                            "value": None if e is None else e.mean,
                            "se": None if e is None else e.se,
                            "n": 0 if e is None else e.n,
                        }
                    )
        body += ["", "| claim of the paper | on our numbers | on the paper's numbers |", "|---|---|---|"]
        for claim in table.claims:
            on_ours, on_paper = claim.check(ours), claim.check(paper)
            ours_verdicts.append(on_ours)
            paper_verdicts.append(on_paper)
            body.append(f"| {claim.text} | {on_ours} | {on_paper} |")
        body.append("")
    summary = [
        f"Claims of the paper, judged on our numbers: {_count(ours_verdicts)}.",
        f"On the paper's own numbers: {_count(paper_verdicts)}.",
        f"Our cells: mean ± standard error over seeds. A claim holds when the difference it states exceeds "
        f"{NOISE_SES:g} standard errors of the difference, does not hold when it goes the wrong way by as "
        "much, and is within noise otherwise; with one seed (and for the paper, which reports one number) "
        "the sign decides.",
    ]
    lines = [f"# {title}", "", f"Coefficient subset: **{subset}**.", *summary, *notes, "", *body]
    return "\n".join(lines), pd.DataFrame(
        long_rows, columns=["table", "variant", "metric", "source", "value", "se", "n"]
    )

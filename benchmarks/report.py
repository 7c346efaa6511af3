"""The benchmark's report: one row per pipeline and task, as Markdown, CSV, JSON and plots.

:func:`table_rows` turns the step records of :mod:`benchmarks.run` into rows (the
columns of :data:`COLUMNS`); :func:`write_report` writes ``RESULTS.md`` (a table per
task with the best value of each column in bold, the plots, the environment and the
command), ``results.csv``, ``results.json`` and ``plots/*.png``, each atomically.
"""
from __future__ import annotations

import csv
import io
import math
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from benchmarks.config import ClassicalPipeline, CNNPipeline, RunPipeline
from models.labels import TASKS
from pipelines.metrics import class_names
from pipelines.significance import bootstrap_interval, compare, face_scores
from pipelines.reports import (atomic_path, atomic_write_bytes, atomic_write_json,
                               format_summary_table)

#: Columns of ``results.csv`` (and keys of the rows of ``results.json``).
COLUMNS: tuple[str, ...] = (
    "pipeline", "task", "status", "kind", "extractor", "model", "accuracy", "f1_macro", "mae",
    "rmse", "within_5", "gap_ethnicity", "worst_ethnicity", "gap_gender", "worst_gender",
    "extract_s", "extract_cached", "fit_s", "pipeline_s", "predict_faces_per_s",
    "model_bytes", "n_train", "n_test", "test_faces_sha256", "epochs_run", "best_epoch",
    "train_images_per_s", "ci95_low", "ci95_high", "vs_best_difference", "vs_best_p",
    "vs_best_ci95_low", "vs_best_ci95_high", "vs_best_significant", "n_paired", "error")
_FIGURES = ("accuracy", "f1_macro", "mae", "rmse", "within_5", "gap_ethnicity",
            "worst_ethnicity", "gap_gender", "worst_gender", "fit_s", "predict_faces_per_s",
            "model_bytes", "n_train", "n_test", "test_faces_sha256")
_HIGHER_IS_BETTER = {"accuracy", "f1_macro", "within_5", "predict_faces_per_s"}
_COLOURS = {"svm": "tab:blue", "linear-svm": "tab:cyan", "xgboost": "tab:orange",
            "mlp": "tab:purple", "cnn": "tab:green", "stack": "tab:red"}


def _model_label(pipeline: ClassicalPipeline | CNNPipeline | RunPipeline) -> str:
    if isinstance(pipeline, ClassicalPipeline):
        return pipeline.model
    if isinstance(pipeline, CNNPipeline):
        return f"cnn:{pipeline.architecture}"
    return pipeline.model


def table_rows(pipelines: Sequence[ClassicalPipeline | CNNPipeline | RunPipeline],
               records: Mapping[str, dict[str, Any] | None],
               extractions: Mapping[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """One row per pipeline and task, in the order of ``pipelines``.

    Parameters
    ----------
    pipelines : sequence
        The configuration's pipelines.
    records : mapping
        Pipeline name -> its current record (None: not run).
    extractions : mapping
        Extractor name -> its finished extraction record (or None).

    Returns
    -------
    list of dict
        Keys :data:`COLUMNS`; status ``done``, ``failed`` or ``not run``; figures of a
        pipeline that is not done are None.
    """
    rows, predictions = [], {}
    for pipeline in pipelines:
        record = records.get(pipeline.name) or {}
        classical = isinstance(pipeline, ClassicalPipeline)
        extraction = extractions.get(pipeline.extractor) if classical else None
        for task in pipeline.tasks:
            figures = record.get("tasks", {}).get(task, {})
            row = dict.fromkeys(COLUMNS)
            row.update(
                pipeline=pipeline.name, task=task, status=record.get("status", "not run"),
                kind=pipeline.kind, error=record.get("error"),
                extractor=pipeline.extractor if classical else None,
                model=_model_label(pipeline),
                pipeline_s=(record.get("command_s", record.get("seconds"))
                            if record.get("status") == "done" else None),
                **{key: figures.get(key) for key in _FIGURES})
            if record.get("status") == "done" and figures.get("predictions"):
                predictions[pipeline.name, task] = figures["predictions"]
            if not classical and record.get("status") == "done":
                row.update(epochs_run=record.get("epochs_run"),
                           best_epoch=record.get("best_epoch"),
                           train_images_per_s=record.get("train_images_per_second"))
            if extraction and record.get("status") == "done":
                row["extract_s"] = extraction["extract_s"]
                cached = extraction["cached_calls"]
                row["extract_cached"] = ("all" if cached == extraction["calls"]
                                         else "some" if cached else "none")
            rows.append(row)
    for task in dict.fromkeys(row["task"] for row in rows):
        add_significance([row for row in rows if row["task"] == task], predictions)
    return rows


def add_significance(rows: Sequence[dict[str, Any]],
                     predictions: Mapping[tuple[str, str], Mapping[str, list]],
                     seed: int = 0) -> None:
    """Fill one task's interval and paired-test columns from the per-face predictions.

    Every finished row with predictions gets the 95 % bootstrap interval of its headline
    figure (``ci95_low``, ``ci95_high``); every other such row is compared with the best
    one on the faces both scored (:func:`pipelines.significance.compare`, the row as
    model A): ``vs_best_difference``, McNemar's ``vs_best_p`` (accuracy) or the paired
    bootstrap interval ``vs_best_ci95_low/high`` (MAE), ``vs_best_significant`` and
    ``n_paired``. Rows without predictions keep None.
    """
    scored = [row for row in _ranked(rows, rows[0]["task"]) if row["status"] == "done"
              and (row["pipeline"], row["task"]) in predictions]
    if not scored:
        return
    task = scored[0]["task"]
    faces = {row["pipeline"]: predictions[row["pipeline"], task] for row in scored}
    for row in scored:
        found = faces[row["pipeline"]]
        low, high = bootstrap_interval(face_scores(task, found["true"], found["predicted"]),
                                       seed=seed)
        row.update(ci95_low=low, ci95_high=high)
    best = faces[scored[0]["pipeline"]]
    best_at = {name: i for i, name in enumerate(best["files"])}
    for row in scored[1:]:
        found = faces[row["pipeline"]]
        pairs = np.array([(i, best_at[name]) for i, name in enumerate(found["files"])
                          if name in best_at]).reshape(-1, 2)
        if len(pairs) < 2:
            continue
        truth = np.asarray(found["true"])[pairs[:, 0]]
        result = compare(task, truth, np.asarray(found["predicted"])[pairs[:, 0]],
                         np.asarray(best["predicted"])[pairs[:, 1]], seed=seed)
        low, high = result.get("difference_ci95", (None, None))
        row.update(vs_best_difference=result["difference"], vs_best_p=result.get("p_mcnemar"),
                   vs_best_ci95_low=low, vs_best_ci95_high=high,
                   vs_best_significant=result["significant"], n_paired=len(pairs))


def failed_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Pipeline name -> error of every failed pipeline."""
    return {row["pipeline"]: row["error"] for row in rows if row["status"] == "failed"}


def _headline(task: str) -> tuple[str, bool]:
    """The figure pipelines are ranked by, and whether higher is better."""
    return ("accuracy", True) if class_names(task) is not None else ("mae", False)


def _ranked(rows: Sequence[Mapping[str, Any]], task: str) -> list[Mapping[str, Any]]:
    key, higher = _headline(task)
    done = [row for row in rows if row["task"] == task and row["status"] == "done"]
    done.sort(key=lambda row: -row[key] if higher else row[key])
    return done + [row for row in rows if row["task"] == task and row["status"] != "done"]


def summary_tables(rows: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text tables, one per task, for the terminal."""
    blocks = []
    for task in dict.fromkeys(row["task"] for row in rows):
        keys = (("accuracy", "f1_macro") if class_names(task) is not None
                else ("mae", "rmse", "within_5"))
        ranked = _ranked(rows, task)
        reference = _reference(ranked)
        table = [{"pipeline": row["pipeline"], "status": row["status"],
                  **{key: row[key] for key in keys[:1]},
                  "ci95": "-" if row["ci95_low"] is None else
                  f"{row['ci95_low']:.3f}-{row['ci95_high']:.3f}",
                  "vs_best": _versus_best(row, i == reference) if row["status"] == "done"
                  else "-",
                  **{key: row[key] for key in keys[1:]},
                  "gap_eth": row["gap_ethnicity"], "gap_gender": row["gap_gender"],
                  "extract_s": row["extract_s"], "fit_s": row["fit_s"],
                  "faces_per_s": row["predict_faces_per_s"],
                  "model_mb": None if row["model_bytes"] is None else row["model_bytes"] / 1e6}
                 for i, row in enumerate(ranked)]
        blocks.append(f"{task}\n{format_summary_table(table)}")
    return "\n\n".join(blocks)


# --- Markdown ----------------------------------------------------------------------------


def _seconds(value: float) -> str:
    return f"{value:.2f}" if value < 1 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _cell(column: str, row: Mapping[str, Any], task: str) -> str:
    """A Markdown cell (without the bold of the best value)."""
    value = row[column]
    if value is None:
        return "-"
    if column in ("gap_ethnicity", "gap_gender"):
        years = class_names(task) is None
        text = f"{value:.2f}" if years else f"{value:.3f}"
        return f"{text} ({row[column.replace('gap', 'worst')]})"
    if column in ("accuracy", "mae") and row["ci95_low"] is not None:
        digits = 3 if column == "accuracy" else 2
        return (f"{value:.{digits}f} [{row['ci95_low']:.{digits}f}, "
                f"{row['ci95_high']:.{digits}f}]")
    if column in ("mae", "rmse"):
        return f"{value:.2f}"
    if column in ("accuracy", "f1_macro", "within_5"):
        return f"{value:.3f}"
    if column == "extract_s":
        return _seconds(value) + ("†" if row["extract_cached"] == "all" else
                                  "‡" if row["extract_cached"] == "some" else "")
    if column in ("fit_s", "pipeline_s"):
        return _seconds(value)
    if column == "predict_faces_per_s":
        return f"{value:.1f}" if value < 100 else f"{value:,.0f}"
    if column == "model_bytes":
        return f"{value / 1e6:.2f}" if value < 1e7 else f"{value / 1e6:.0f}"
    return str(value)


def _best_cells(rows: Sequence[Mapping[str, Any]], column: str, task: str) -> set[int]:
    """Positions of the rows showing the best value of a column (ties included; none
    when every row shows it)."""
    done = [(i, row) for i, row in enumerate(rows)
            if row["status"] == "done" and row[column] is not None
            and not (column == "extract_s" and row["extract_cached"] != "none")]
    if len(done) < 2:
        return set()
    pick = max if column in _HIGHER_IS_BETTER else min
    best = pick(row[column] for _, row in done)
    shown = _cell(column, {**done[0][1], column: best}, task).split(" ")[0]
    best_rows = {i for i, row in done if _cell(column, row, task).split(" ")[0] == shown}
    return best_rows if len(best_rows) < len(done) else set()


def _note(row: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    if row["status"] == "failed":
        error = " ".join(str(row["error"]).split())
        return f"**failed**: {error[:160]}{'…' if len(error) > 160 else ''}"
    if row["status"] != "done":
        return "not run"
    notes = []
    if row["test_faces_sha256"] != context["test_faces_sha256"]:
        notes.append(f"scored {row['n_test']:,} of {context['split']['test']:,} test faces")
    if _family(row) == "cnn":
        notes.append("fit: whole network, all heads")
        if row["epochs_run"] is not None:
            notes.append(f"{row['epochs_run']} epochs (best {row['best_epoch']}), "
                         f"{row['train_images_per_s']:.0f} training faces/s")
    return "; ".join(notes)


def _reference(rows: Sequence[Mapping[str, Any]]) -> int | None:
    """Position of the row the others are compared with: the best with an interval."""
    return next((i for i, row in enumerate(rows) if row["ci95_low"] is not None), None)


def _versus_best(row: Mapping[str, Any], best: bool) -> str:
    """The paired comparison with the task's best pipeline, ``*`` when significant."""
    if best:
        return "best"
    if row["vs_best_difference"] is None:
        return "-"
    mark = " *" if row["vs_best_significant"] else ""
    if row["vs_best_p"] is not None:
        return f"{row['vs_best_difference']:+.3f} (p={row['vs_best_p']:.2g}){mark}"
    return (f"{row['vs_best_difference']:+.2f} [{row['vs_best_ci95_low']:+.2f}, "
            f"{row['vs_best_ci95_high']:+.2f}]{mark}")


def task_table(rows: Sequence[Mapping[str, Any]], task: str, context: Mapping[str, Any]) -> str:
    """The Markdown table of one task, ranked by its headline figure."""
    figures = ((("accuracy", "accuracy"), ("f1_macro", "macro F1")) if class_names(task)
               else (("mae", "MAE (years)"), ("rmse", "RMSE"), ("within_5", "within 5 y")))
    gap = "accuracy gap" if class_names(task) else "MAE gap"
    columns = (("pipeline", "pipeline"), *figures, ("gap_ethnicity", f"{gap}, ethnicities"),
               ("gap_gender", f"{gap}, genders"), ("extract_s", "extraction s"),
               ("fit_s", "fit s"), ("pipeline_s", "wall s"),
               ("predict_faces_per_s", "predict faces/s"), ("model_bytes", "model MB"))
    ranked = _ranked(rows, task)
    reference = _reference(ranked)
    best = {column: _best_cells(ranked, column, task) for column, _ in columns[1:]}
    titles = [columns[0][1], columns[1][1], "vs best (paired)", *(t for _, t in columns[2:])]
    lines = ["| " + " | ".join(titles) + " | note |",
             "|" + "---|" + "---:|" * (len(titles) - 1) + "---|"]
    for i, row in enumerate(ranked):
        cells = [f"`{row['pipeline']}`"]
        for column, _ in columns[1:]:
            text = _cell(column, row, task) if row["status"] == "done" else "-"
            cells.append(f"**{text}**" if i in best[column] else text)
        done = row["status"] == "done"
        cells.insert(2, _versus_best(row, i == reference) if done else "-")
        lines.append("| " + " | ".join(cells + [_note(row, context)]) + " |")
    return "\n".join(lines)


def _test_faces_line(rows: Sequence[Mapping[str, Any]], context: Mapping[str, Any]) -> str:
    split = context["split"]
    done = {row["pipeline"]: row for row in rows if row["status"] == "done"}
    others = sorted(name for name, row in done.items()
                    if row["test_faces_sha256"] != context["test_faces_sha256"])
    text = (f"{len(done) - len(others)} of {len(done)} finished pipelines were scored on "
            f"exactly the split's {split['test']:,} test faces (SHA-256 of their names "
            f"`{context['test_faces_sha256'][:16]}…`)")
    if others:
        text += "; " + ", ".join(f"`{name}` on {done[name]['n_test']:,} of them"
                                 for name in others)
    return text + "."


def _environment_lines(context: Mapping[str, Any]) -> list[str]:
    env = context["environment"]
    packages = ", ".join(f"{name} {version}" for name, version in env["packages"].items()
                         if name != "python" and version != "not installed")
    return [f"- **Machine**: {env['cpu']}, {env['cpu_count']} CPUs ({env['cpus_usable']} "
            f"usable), {env['memory_gib']} GiB of memory, GPU: {env['gpu']}; "
            f"{env['platform']}.",
            f"- **Software**: Python {env['python']}; {packages}.",
            *([f"- **Dask scheduler**: `{env['scheduler']}`: features extracted and XGBoost "
               "trained on its workers; SVMs, CNNs and the predict throughput on this "
               "machine."] if env.get("scheduler") else [])]


def _pipelines_table(context: Mapping[str, Any]) -> str:
    lines = ["| pipeline | features or network | model | tasks |", "|---|---|---|---|"]
    for spec in context["pipelines"]:
        if spec["kind"] == "run":
            what = f"`{shlex.join(['python', '-m', 'pipelines.run', *spec['args']])}`" + (
                f" `--epochs {spec['epochs']}`" if spec["epochs"] else "")
            model = spec["model"]
        elif spec["kind"] == "cnn":
            height, width = spec["size"]
            what = (f"{spec['architecture']} CNN on {height}x{width} {spec['color']} faces, "
                    f"at most {spec['epochs']} epochs, batch {spec['batch_size']}")
            model = "Keras, one head per task"
        else:
            what = ", ".join(f"`{text}`" for text in spec["features"])
            params = ", ".join(f"{k}={v}" for k, v in spec["params"].items())
            model = spec["model"] + (f" ({params})" if params else " (defaults)")
        lines.append(f"| `{spec['name']}` | {what} | {model} | {', '.join(spec['tasks'])} |")
    return "\n".join(lines)


def markdown(rows: Sequence[Mapping[str, Any]], context: Mapping[str, Any],
             plots: Mapping[str, str]) -> str:
    """The text of ``RESULTS.md``."""
    split = context["split"]
    subset = (f" (a stratified subset of about {split['limit']:,} faces of the shared split)"
              if split["limit"] and split["limit"] < context["faces"] else "")
    resumed = [c for c in context["commands"] if c != context["command"]]
    lines = [
        "# Benchmark: every pipeline on one split",
        "",
        f"Written on {context['written']} by `{context['command']}`"
        + (f"; it reports pipelines finished by {', '.join(f'`{c}`' for c in resumed)}"
           if resumed else "") + ".",
        "",
        f"- **Data**: `{context['data']}`, {context['faces']:,} faces; split "
        f"`{split['manifest']}` (SHA-256 `{split['sha256'][:16]}…`): train {split['train']:,}, "
        f"validation {split['val']:,}, test {split['test']:,}{subset}.",
        f"- **Test faces**: {_test_faces_line(rows, context)}",
        *_environment_lines(context),
        f"- **Configuration**: `{context['config'] or 'given in code'}`.",
        "",
        "Each table ranks the pipelines by their test score, given with its 95% bootstrap "
        "interval (2,000 resamples of the test faces, seeded). **vs best (paired)**: the "
        "pipeline against the best one on the faces both scored: the difference of accuracy "
        "with McNemar's exact p-value, or the difference of MAE with its paired bootstrap "
        "interval; * marks a difference significant at 5%. The **accuracy (or MAE) gap** is "
        "the largest difference of that figure between the ethnicities (or between the "
        "genders) of the test faces, the worst group in brackets. **Extraction s**: wall "
        "time to extract the features of every face of the split and of the mirrored "
        "validation and test faces, shared by the models of an extractor († read from the "
        "feature cache, extracted before this run; ‡ partly); CNNs decode faces as they "
        "train. **Fit s**: fitting the task's model on the extracted features (classical), "
        "or training the whole network, all heads and validation passes included (CNN; "
        "the note gives the epochs run, the best epoch by validation loss, and training "
        "faces times epochs over that time; a stack: its members' outputs and the combiners). "
        "**Wall s**: the whole step; for a `pipelines.run` command, the command from start "
        "to end (features read from the cache when extracted before). "
        "**Predict faces/s**: the saved model predicting from image files to labels, end "
        f"to end in one process, on the first {context['predict_sample']:,} test faces it "
        "scored (features of each face and of its mirror image for the classical models; "
        "one pass for all heads of a CNN or a stack). **Model MB**: the saved file (the "
        "whole pipeline; one `model.keras` for all heads of a CNN; a stack's file holds its "
        "members). The best value of each column is in bold.",
    ]
    for task in TASKS:
        if not any(row["task"] == task for row in rows):
            continue
        lines += ["", f"## {task}", "", task_table(rows, task, context)]
        absent = [spec["name"] for spec in context["pipelines"] if task not in spec["tasks"]]
        if absent:
            lines += ["", f"No {task} head: {', '.join(f'`{name}`' for name in absent)}."]
        if task in plots:
            lines += ["", f"![{task}]({plots[task]})"]
    if "time" in plots:
        lines += ["", "## Score against training time", "", f"![score against fit time]"
                  f"({plots['time']})"]
    lines += ["", "## Pipelines", "", _pipelines_table(context)]
    failed = failed_rows(rows)
    if failed:
        lines += ["", "## Failed pipelines", ""]
        lines += [f"- `{name}`: {' '.join(str(error).split())}" for name, error in failed.items()]
    return "\n".join(lines) + "\n"


# --- plots -------------------------------------------------------------------------------


def _family(row: Mapping[str, Any]) -> str:
    return "cnn" if str(row["model"]).startswith("cnn:") else row["model"]


def plot_task(rows: Sequence[Mapping[str, Any]], task: str):
    """Horizontal bars of the task's headline figure, one per finished pipeline."""
    from matplotlib.figure import Figure

    key, higher = _headline(task)
    done = [row for row in _ranked(rows, task) if row["status"] == "done"][::-1]
    figure = Figure(figsize=(7, 1.2 + 0.32 * len(done)), layout="constrained")
    axes = figure.subplots()
    values = [row[key] for row in done]
    axes.barh([row["pipeline"] for row in done], values,
              color=[_COLOURS.get(_family(row), "tab:gray") for row in done])
    for position, value in enumerate(values):
        axes.text(value, position, f" {value:.3f}" if higher else f" {value:.2f}",
                  va="center", fontsize=8)
    axes.set(xlabel="test accuracy" if higher else "test MAE (years, lower is better)",
             title=task)
    axes.margins(x=0.15)
    axes.legend(handles=_legend(done), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return figure


def _legend(rows: Sequence[Mapping[str, Any]]) -> list:
    """One coloured patch per model family of ``rows``."""
    from matplotlib.patches import Patch

    return [Patch(color=_COLOURS.get(family, "tab:gray"), label=family)
            for family in dict.fromkeys(_family(row) for row in rows)]


def plot_score_vs_time(rows: Sequence[Mapping[str, Any]]):
    """Per task, the headline figure against fit time (log scale), a point per pipeline."""
    from matplotlib.figure import Figure

    tasks = [task for task in TASKS if any(row["task"] == task and row["status"] == "done"
                                           and row["fit_s"] for row in rows)]
    columns = min(2, len(tasks))
    figure = Figure(figsize=(6.5 * columns, 4.6 * math.ceil(len(tasks) / columns)),
                    layout="constrained")
    for axes, task in zip(figure.subplots(math.ceil(len(tasks) / columns), columns,
                                          squeeze=False).flat, tasks):
        key, higher = _headline(task)
        shown = [row for row in rows
                 if row["task"] == task and row["status"] == "done" and row["fit_s"]]
        for row in shown:
            axes.scatter(row["fit_s"], row[key], color=_COLOURS.get(_family(row), "tab:gray"))
            axes.annotate(row["pipeline"], (row["fit_s"], row[key]), fontsize=7,
                          xytext=(3, 3), textcoords="offset points")
        axes.set(xscale="log", title=task, xlabel="fit time (s, log scale)",
                 ylabel="test accuracy" if higher else "test MAE (years, lower is better)")
        axes.grid(alpha=0.3)
        axes.legend(handles=_legend(shown), fontsize=8)
    for axes in list(figure.axes)[len(tasks):]:
        axes.set_visible(False)
    return figure


def _save(figure, path: Path) -> None:
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=110)


def write_report(out: str | Path, rows: Sequence[Mapping[str, Any]],
                 context: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``RESULTS.md``, ``results.csv``, ``results.json`` and ``plots/`` into ``out``.

    Returns
    -------
    dict
        The content of ``results.json``: ``context`` and ``rows``.
    """
    out = Path(out)
    plots = {}
    for task in dict.fromkeys(row["task"] for row in rows):
        if any(row["task"] == task and row["status"] == "done" for row in rows):
            _save(plot_task(rows, task), out / "plots" / f"{task}.png")
            plots[task] = f"plots/{task}.png"
    if any(row["status"] == "done" and row["fit_s"] for row in rows):
        _save(plot_score_vs_time(rows), out / "plots" / "score_vs_time.png")
        plots["time"] = "plots/score_vs_time.png"
    results = {"context": dict(context), "rows": [dict(row) for row in rows]}
    atomic_write_json(out / "results.json", results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buffer.getvalue().encode("utf-8"))
    atomic_write_bytes(out / "RESULTS.md", markdown(rows, context, plots).encode("utf-8"))
    return results

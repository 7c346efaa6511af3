"""Overall against worst-group figures of trained runs: the fairness trade-off table.

Run ``python -m benchmarks.fairness NAME=RUN_FOLDER ... --out docs/fairness``. For each
run it scores gender and ethnicity on the validation and test faces of the shared
split, per ethnicity (fairlearn's ``MetricFrame``, :func:`pipelines.metrics.evaluate_task`):
overall accuracy, the worst ethnicity's accuracy and gap, the equalized-odds difference
of gender between ethnicities, the same accuracies among faces of 20 and over (the
ethnicities' age mix differs: children's gender is the hard part), and the recall of
"Others". Validation figures come from the run's saved model (outputs cached as the
stack caches them); a stack's combiners were fitted on the validation faces, so it gets
test figures only, read from its run folder's per-face predictions. Writes ``OUT.md``
(the table), ``OUT.csv`` and ``OUT.png`` (gender: overall against worst-ethnicity
accuracy on the test faces).
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from models.labels import AGE_GROUP_EDGES, AGE_GROUP_NAMES, ETHNICITY_NAMES
from models.stack import labels_of
from pipelines.artifacts import STACK_FILE
from pipelines.dataset import DatasetIndex, default_data_dir, index_folder, index_of_names
from pipelines.metrics import evaluate_task
from pipelines.reports import (atomic_path, atomic_write_bytes, predictions_path,
                               read_predictions_csv)
from pipelines.run import DEFAULT_CACHE, LOG_FORMAT, parse_member
from pipelines.splits import DEFAULT_MANIFEST, load_or_create_split
from pipelines.stacking import judged_rows, load_member, member_outputs

TASKS = ("gender", "ethnicity")
#: Gender is also scored among faces of this age and over (the age groups from 20-29 on).
ADULT_AGE = AGE_GROUP_EDGES[AGE_GROUP_NAMES.index("20-29")]
COLUMNS = ("run", "part", "gender_accuracy", "gender_worst_ethnicity", "gender_worst_accuracy",
           "gender_gap", "gender_equalized_odds", "gender_adult_accuracy",
           "gender_adult_worst_ethnicity", "gender_adult_worst_accuracy", "ethnicity_accuracy",
           "others_recall", "n")


def figures(name: str, part: str, scored: dict[str, tuple[DatasetIndex, np.ndarray]]
            ) -> dict[str, Any]:
    """The table row of one run on one part: task -> (faces judged, predictions)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(run=name, part=part)
    for task, (faces, predicted) in scored.items():
        metrics = evaluate_task(task, faces.labels(task), predicted, gender=faces.gender,
                                ethnicity=faces.ethnicity, age=faces.age)
        fairness, overall = metrics["fairness"], metrics["overall"]
        if task == "gender":
            row.update(gender_accuracy=overall["accuracy"],
                       gender_worst_ethnicity=fairness["ethnicity"]["worst"],
                       gender_worst_accuracy=fairness["ethnicity"]["worst_value"],
                       gender_gap=overall["accuracy"] - fairness["ethnicity"]["worst_value"],
                       gender_equalized_odds=fairness["equalized_odds_difference_ethnicity"],
                       n=overall["n"])
            adult = faces.age >= ADULT_AGE
            grown = evaluate_task(task, faces.labels(task)[adult], predicted[adult],
                                  gender=faces.gender[adult], ethnicity=faces.ethnicity[adult],
                                  age=faces.age[adult])
            row.update(gender_adult_accuracy=grown["overall"]["accuracy"],
                       gender_adult_worst_ethnicity=grown["fairness"]["ethnicity"]["worst"],
                       gender_adult_worst_accuracy=grown["fairness"]["ethnicity"]["worst_value"])
        else:
            row.update(ethnicity_accuracy=overall["accuracy"],
                       others_recall=overall["per_class"][ETHNICITY_NAMES[-1]]["recall"])
    return row


def validation_scores(folder: Path, faces: DatasetIndex, cache_dir: Path | None
                      ) -> dict[str, tuple[DatasetIndex, np.ndarray]]:
    """Task -> (faces judged, predictions) of a run's saved model on ``faces``."""
    member = load_member(folder)
    outputs = member_outputs({folder.name: member}, faces, cache_dir=cache_dir,
                             progress=False)[folder.name]
    scored = {}
    for task in TASKS:
        if task in outputs:
            values = outputs[task]
            judged = judged_rows(values)
            scored[task] = (faces.subset(np.flatnonzero(judged)),
                            labels_of(task, values[judged]))
    return scored


def test_scores(folder: Path, data: Path) -> dict[str, tuple[DatasetIndex, np.ndarray]]:
    """Task -> (faces scored, predictions) from a run folder's per-face predictions."""
    scored = {}
    for task in TASKS:
        path = predictions_path(folder, task)
        if path.is_file():
            files, _, predicted = read_predictions_csv(path)
            scored[task] = (index_of_names(data, files), predicted.astype(np.int64))
    return scored


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The trade-off table: a line per run and part."""
    lines = ["| run | part | gender acc. | worst ethnicity (acc.) | gap | equalized odds "
             f"| gender acc., {ADULT_AGE}+ | worst ethnicity, {ADULT_AGE}+ (acc.) "
             "| ethnicity acc. | Others recall |", "|---|---|" + "---:|" * 8]

    def number(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    def worst(row: dict[str, Any], prefix: str) -> str:
        group = row[f"{prefix}_worst_ethnicity"]
        return "-" if group is None else f"{group} ({row[f'{prefix}_worst_accuracy']:.3f})"

    for row in rows:
        lines.append(f"| `{row['run']}` | {row['part']} | {number(row['gender_accuracy'])} | "
                     f"{worst(row, 'gender')} | {number(row['gender_gap'])} | "
                     f"{number(row['gender_equalized_odds'])} | "
                     f"{number(row['gender_adult_accuracy'])} | {worst(row, 'gender_adult')} | "
                     f"{number(row['ethnicity_accuracy'])} | {number(row['others_recall'])} |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Gender on the test faces: overall accuracy against the worst ethnicity's."""
    from matplotlib.figure import Figure

    shown = [row for row in rows if row["part"] == "test" and row["gender_accuracy"]]
    figure = Figure(figsize=(6, 4.5), layout="constrained")
    axes = figure.subplots()
    for row in shown:
        axes.scatter(row["gender_accuracy"], row["gender_worst_accuracy"])
        axes.annotate(row["run"], (row["gender_accuracy"], row["gender_worst_accuracy"]),
                      fontsize=8, xytext=(3, 3), textcoords="offset points")
    axes.set(xlabel="gender accuracy, all test faces",
             ylabel="gender accuracy, worst ethnicity", title="fairness trade-off (test)")
    axes.grid(alpha=0.3)
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fairness",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=parse_member, metavar="[NAME=]RUN_FOLDER")
    parser.add_argument("--data", type=Path, default=None, help="UTKFace folder")
    parser.add_argument("--split", type=Path, default=DEFAULT_MANIFEST, help="split manifest")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE / "stack",
                        help="cached model outputs (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output path without suffix: OUT.md, OUT.csv, OUT.png")
    parser.add_argument("--quiet", action="store_true", help="warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format=LOG_FORMAT)
    data = args.data or default_data_dir()
    index = index_folder(data)
    val = load_or_create_split(index, args.split).apply(index)["val"]
    rows = []
    for name, folder in args.runs:
        if not (folder / STACK_FILE).is_file():
            rows.append(figures(name, "validation", validation_scores(folder, val,
                                                                      args.cache_dir)))
        rows.append(figures(name, "test", test_scores(folder, index.folder)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out.with_suffix(".md"), markdown(rows).encode("utf-8"))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(args.out.with_suffix(".csv"), buffer.getvalue().encode("utf-8"))
    plot(rows, args.out.with_suffix(".png"))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Faces in photos: each detector on the scene set, against the same model on plain crops.

Run ``python -m benchmarks.detection RUN_FOLDER [--detectors ...] [--photos 200]
[--out benchmarks/results/detection]``. It writes a scene set (:mod:`benchmarks.scenes`)
from the shared split's **test** faces (seeded; reused when its folder already holds
one), then per detector predicts every photo with ``pipelines.predict``'s code (model
loaded once, ``--n-jobs`` workers) and scores:

- recall: true faces matched by a box at IoU >= 0.5 (each box matches one face, best
  overlap first);
- wrong boxes: share of photos with a box that matches no face;
- photos/s: wall time of the prediction over the photos (reading, searching, aligning,
  predicting; worker start-up included), and the search alone on one core (the first
  :data:`SEARCH_TIMED` photos, :func:`features.faces.detect_faces`);
- gender and ethnicity accuracy and age MAE of the matched faces, against the same model
  on those faces' original UTKFace crops (``--no-detect``), the difference and how sure
  it is (:func:`photo_against_crop`).

Writes ``OUT.md`` (table with the command) and ``OUT.json``.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from benchmarks.machine import environment
from benchmarks.scenes import TRUTH_FILE, PlacedFace, read_truth, write_scene_set
from features.alignment import FaceBox
from features.faces import DETECTORS, detect_faces
from models.labels import ETHNICITY_NAMES, GENDER_NAMES
from pipelines.dataset import default_data_dir, parse_utkface_name
from pipelines.photos import FaceSearch, predict_photos
from pipelines.predictor import FacePredictor, load_predictor
from pipelines.reports import atomic_write_bytes, atomic_write_json
from pipelines.significance import compare, face_scores
from pipelines.run import ALL_CORES, LOG_FORMAT
from pipelines.splits import DEFAULT_MANIFEST, Split

logger = logging.getLogger(__name__)

MATCH_IOU = 0.5
SEARCH_TIMED = 20
DEFAULT_OUT = Path("benchmarks/results/detection")
DEFAULT_SCENES = Path("benchmarks/results/work/scenes")


def match_faces(truth: Sequence[PlacedFace], boxes: Sequence[FaceBox]) -> dict[int, int]:
    """Greedy one-to-one matching at IoU >= 0.5, best overlap first: truth -> box index."""
    pairs = sorted(((face.box.iou(box), t, b) for t, face in enumerate(truth)
                    for b, box in enumerate(boxes)), reverse=True)
    matched: dict[int, int] = {}
    for overlap, t, b in pairs:
        if overlap >= MATCH_IOU and t not in matched and b not in matched.values():
            matched[t] = b
    return matched


#: Row prefixes of the accuracy figures, per task.
FIGURES = {"gender": "gender_accuracy", "ethnicity": "ethnicity_accuracy", "age": "age_mae"}


def _labels(records: Sequence[dict[str, Any]],
            files: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task, the true and the predicted codes (ages in years) of the records' faces."""
    truth = [parse_utkface_name(file) for file in files]
    return {
        "gender": (np.array([t.gender for t in truth]),
                   np.array([GENDER_NAMES.index(r["gender"]) for r in records])),
        "ethnicity": (np.array([t.ethnicity for t in truth]),
                      np.array([ETHNICITY_NAMES.index(r["ethnicity"]) for r in records])),
        "age": (np.array([t.age for t in truth], dtype=np.float64),
                np.array([r["age"] for r in records], dtype=np.float64))}


def photo_against_crop(in_photos: Sequence[dict[str, Any]], on_crops: Sequence[dict[str, Any]],
                       files: Sequence[str]) -> dict[str, Any]:
    """Accuracy and age MAE of the faces found in photos and of the same faces' crops.

    Per figure (:data:`FIGURES`): ``_photos``, ``_crops``, ``_difference`` (photos minus
    crops) and how sure that difference is (:func:`pipelines.significance.compare`:
    ``_p``, McNemar's exact p-value, for an accuracy; ``_ci95``, the paired bootstrap
    interval, for the MAE), the last two from 2 faces on.
    """
    photos, crops = _labels(in_photos, files), _labels(on_crops, files)
    row: dict[str, Any] = {}
    for task, figure in FIGURES.items():
        truth, predicted = photos[task]
        row[f"{figure}_photos"] = float(face_scores(task, truth, predicted).mean())
        row[f"{figure}_crops"] = float(face_scores(task, truth, crops[task][1]).mean())
        row[f"{figure}_difference"] = row[f"{figure}_photos"] - row[f"{figure}_crops"]
        if len(truth) >= 2:
            sure = compare(task, truth, predicted, crops[task][1])
            if "p_mcnemar" in sure:
                row[f"{figure}_p"] = sure["p_mcnemar"]
            else:
                row[f"{figure}_ci95"] = sure["difference_ci95"]
    return row


def score_detector(predictor: FacePredictor, scene_dir: Path, truth: dict[str, list[PlacedFace]],
                   detector: str, data_dir: Path, n_jobs: int) -> dict[str, Any]:
    """One detector's row: detection figures, speed, and accuracy on the faces found."""
    photos = sorted(truth)
    start = time.perf_counter()
    results = list(predict_photos(predictor, [scene_dir / name for name in photos],
                                  search=FaceSearch(detector), n_jobs=n_jobs, progress=True))
    seconds = time.perf_counter() - start
    found_records, found_files, n_faces, n_found, wrong_photos = [], [], 0, 0, 0
    for name, records in zip(photos, results):
        faces = [r for r in records if "face" in r and not r.get("error")]
        boxes = [FaceBox(r["top"], r["left"], r["height"], r["width"]) for r in faces]
        matched = match_faces(truth[name], boxes)
        n_faces += len(truth[name])
        n_found += len(matched)
        wrong_photos += len(boxes) > len(matched)
        for t, b in matched.items():
            found_records.append(faces[b])
            found_files.append(truth[name][t].file)
    start = time.perf_counter()
    for name in photos[:SEARCH_TIMED]:
        detect_faces(Image.open(scene_dir / name), detector)
    search_seconds = (time.perf_counter() - start) / len(photos[:SEARCH_TIMED])
    crops = list(predict_photos(predictor, [data_dir / file for file in found_files],
                                search=FaceSearch(None), n_jobs=n_jobs, progress=False))
    return {"detector": detector, "photos": len(photos), "faces": n_faces,
            "recall": n_found / n_faces, "wrong_box_photos": wrong_photos / len(photos),
            "photos_per_s": len(photos) / seconds, "seconds": seconds, "matched": n_found,
            "search_s_per_photo": search_seconds,
            **photo_against_crop(found_records, [records[0] for records in crops],
                                 found_files)}


def _machine() -> str:
    machine = environment()
    return (f"{machine['cpu']}, {machine['cpus_usable']} usable cores, "
            f"{machine['memory_gib']} GiB, GPU: {machine['gpu']}")


def markdown(rows: Sequence[dict[str, Any]], command: str, settings: dict[str, Any]) -> str:
    """The results table, with the command and the settings that produced it."""
    lines = [
        "# Faces in photos: detectors on the scene set", "",
        f"Command: `{command}`  ", f"Machine: {settings['machine']}  ",
        f"Model: `{settings['model']}`; scenes: {settings['photos']} photos of "
        f"{settings['faces']} test-split faces (seed {settings['seed']}, faces "
        f"{settings['face_sizes'][0]}-{settings['face_sizes'][1]} px, roll up to "
        f"{settings['max_roll']} degrees), `--n-jobs {settings['n_jobs']}`.", "",
        "Accuracy and MAE are on the faces each detector found; \"crops\" is the same model "
        "on those faces' UTKFace crops (`--no-detect`); in brackets the difference, with "
        "McNemar's exact p-value (accuracy) or the paired bootstrap 95 % interval (MAE).",
        "",
        "| detector | recall (IoU>=0.5) | photos with a wrong box | photos/s | search s/photo "
        "(1 core) | gender acc (photos / crops) | ethnicity acc (photos / crops) | age MAE "
        "(photos / crops) |",
        "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [f"{row[f'{key}_photos']:.3f} / {row[f'{key}_crops']:.3f} "
                 f"({row[f'{key}_difference']:+.3f}{_sureness(row, key)})"
                 for key in FIGURES.values()]
        lines.append(f"| {row['detector']} | {row['recall']:.3f} ({row['matched']}/"
                     f"{row['faces']}) | {row['wrong_box_photos']:.3f} | "
                     f"{row['photos_per_s']:.2f} | {row['search_s_per_photo']:.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _sureness(row: dict[str, Any], figure: str) -> str:
    if f"{figure}_p" in row:
        return f", p {row[f'{figure}_p']:.2f}"
    if f"{figure}_ci95" in row:
        low, high = row[f"{figure}_ci95"]
        return f", {low:+.2f} to {high:+.2f}"
    return ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.detection",
        description="Score face detectors on synthetic scenes of test-split faces.")
    parser.add_argument("model", type=Path, help="run folder or model file to predict with")
    parser.add_argument("--detectors", nargs="+", choices=DETECTORS, default=list(DETECTORS))
    parser.add_argument("--photos", type=int, default=200, help="scenes (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="scene set seed (default: 0)")
    parser.add_argument("--face-sizes", type=int, nargs=2, default=(60, 260),
                        metavar=("MIN", "MAX"), help="pasted crop side, pixels")
    parser.add_argument("--max-roll", type=float, default=30.0, help="degrees, either way")
    parser.add_argument("--scenes", type=Path, default=DEFAULT_SCENES,
                        help="scene set folder (made when it holds none)")
    parser.add_argument("--data-dir", type=Path, default=None, help="UTKFace folder")
    parser.add_argument("--n-jobs", type=int, default=ALL_CORES)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="writes OUT.md and OUT.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    data_dir = args.data_dir or default_data_dir()
    if not (args.scenes / TRUTH_FILE).is_file():
        split = Split.load(DEFAULT_MANIFEST)
        write_scene_set(args.scenes, [data_dir / name for name in split.test], args.photos,
                        seed=args.seed, face_sizes=tuple(args.face_sizes),
                        max_roll=args.max_roll)
    truth = read_truth(args.scenes / TRUTH_FILE)
    predictor = load_predictor(args.model)
    rows = []
    for detector in args.detectors:
        rows.append(score_detector(predictor, args.scenes, truth, detector, data_dir,
                                   args.n_jobs))
        logger.info("%s", rows[-1])
    settings = {"model": str(args.model), "photos": len(truth),
                "faces": sum(len(faces) for faces in truth.values()), "seed": args.seed,
                "face_sizes": list(args.face_sizes), "max_roll": args.max_roll,
                "n_jobs": args.n_jobs, "machine": _machine()}
    command = shlex.join(["python", "-m", "benchmarks.detection",
                          *(sys.argv[1:] if argv is None else argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out.with_suffix(".md"), markdown(rows, command, settings).encode())
    atomic_write_json(args.out.with_suffix(".json"),
                      {"command": command, "settings": settings, "rows": rows})
    print(markdown(rows, command, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

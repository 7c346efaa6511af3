"""Command line: age, gender and ethnicity of the faces in new photos.

Run ``python -m pipelines.predict [MODEL] IMAGE_OR_FOLDER... [--out results.csv]``;
without a model, the small model shipped with the package
(:func:`pipelines.predictor.bundled_model`: dlib's face descriptors into light heads)
predicts. Models are loaded by :mod:`pipelines.predictor`, photos searched and records
made by :mod:`pipelines.photos`, and written by :mod:`pipelines.writers`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from features.faces import DEFAULT_DETECTOR, DEFAULT_MIN_SIZE, DETECTORS
from pipelines.photos import (PHOTO_EXTENSIONS, FaceSearch, find_photos, record_columns,
                              write_predictions)
from pipelines.predictor import (DEFAULT_BATCH_SIZE, FacePredictor, ModelError, bundled_model,
                                 load_predictor, run_folder_files)
from pipelines.run import ALL_CORES
from pipelines.writers import OUTPUT_SUFFIXES, RecordWriter, TableWriter, open_writer

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m pipelines.predict``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.predict",
        description="Predict age, gender and ethnicity of the faces in photos with models "
                    "saved by pipelines.run (or a CNN run): faces are detected, cropped in "
                    "the UTKFace framing and predicted; one result per face.",
        epilog="Exit status: 0 every photo gave at least one face, 1 some photos failed (no "
               "face, unreadable, animated), 2 usage or model error (nothing is written "
               "then). Loading a .joblib model runs code from it: use only models you "
               "trust; its SHA-256 is checked against the metadata JSON beside it. "
               "Example: python -m pipelines.predict runs/classical photos/ --out faces.csv")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="[MODEL] IMAGE_OR_FOLDER",
                        help="an optional model first (as --model), then photos, or folders "
                             "searched recursively for "
                             f"{', '.join(PHOTO_EXTENSIONS)} files")
    parser.add_argument("--model", type=Path, default=None,
                        help="run folder (<task>_model.joblib files, a CNN model.keras or a "
                             "stack_model.joblib) or one model file (.joblib with its "
                             "metadata .json, or .keras); default: the first argument when it "
                             "is one, else the small model bundled with the package "
                             "(descriptors + light heads)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file, written as it goes: .csv, .jsonl (JSON Lines, one "
                             "object per face) or .json (one array); without it a table is "
                             "printed")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out file (without it, it is refused)")
    parser.add_argument("--no-detect", action="store_true",
                        help="take every image as an already-cropped face (like UTKFace's), "
                             "without face detection")
    parser.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                        help="face detector: dlib's HOG detector (default), dlib's MMOD CNN "
                             "(finds more faces at odd poses, seconds per photo) or "
                             "scikit-image's LBP cascade; faces are then aligned on dlib's "
                             "landmarks to the UTKFace framing")
    parser.add_argument("--min-face", type=int, default=DEFAULT_MIN_SIZE, metavar="PIXELS",
                        help="smallest face searched for: side of its UTKFace-framed crop "
                             "in photo pixels (default: %(default)s; larger is faster)")
    parser.add_argument("--n-jobs", type=int, default=ALL_CORES,
                        help="worker processes reading and searching photos, and predicting "
                             "with classical models (a CNN or stack predicts in this process "
                             "on every core); default: one per core, %(default)s here; 1 "
                             "works in this process")
    parser.add_argument("--allow-other-version", action="store_true",
                        help="use a .joblib model saved by another utkface-toolkit version "
                             "(refused by default), with a warning")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="faces predicted together (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar, warnings only")
    return parser


def is_model_path(path: Path) -> bool:
    """Whether ``path`` names a model: a ``.joblib``/``.keras`` path (existing or not,
    so that a missing model is reported as one) or a run folder."""
    if path.suffix in (".joblib", ".keras"):
        return True
    return path.is_dir() and any((path / name).is_file() for name in run_folder_files())


def _model_and_inputs(parser: argparse.ArgumentParser,
                      args: argparse.Namespace) -> tuple[Path, list[Path]]:
    """The model (``--model``, a leading model argument, or the bundled one) and photos."""
    inputs = list(args.inputs)
    if args.model is not None:
        return args.model, inputs
    if is_model_path(inputs[0]):
        if len(inputs) == 1:
            parser.error(f"{inputs[0]} is a model: give the photos to predict after it")
        return inputs[0], inputs[1:]
    model = bundled_model()
    logger.info("no model given: using the bundled model %s", model)
    return model, inputs


def _check_out(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for option in ("batch_size", "min_face", "n_jobs"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1")
    if args.out is None:
        return
    if args.out.suffix.lower() not in OUTPUT_SUFFIXES:
        parser.error(f"--out must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")


@contextmanager
def _writer_for(args: argparse.Namespace, predictor: FacePredictor,
                paths: Sequence[Path]) -> Iterator[RecordWriter]:
    if args.out is not None:
        with open_writer(args.out, record_columns(predictor)) as writer:
            yield writer
        return
    writer = TableWriter(predictor.columns, max(len(str(path)) for path in paths))
    yield writer
    writer.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 all photos OK, 1 some failed, 2 error)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    parser = build_parser()
    args = parser.parse_args(argv)
    _check_out(parser, args)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        model, inputs = _model_and_inputs(parser, args)
        paths = find_photos(inputs)
        if not paths:
            raise FileNotFoundError(f"no image files in {', '.join(map(str, inputs))}")
        predictor = load_predictor(model, allow_other_version=args.allow_other_version,
                                   batch_size=args.batch_size)
    except (ModelError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        with logging_redirect_tqdm(), _writer_for(args, predictor, paths) as writer:
            search = FaceSearch(None if args.no_detect else args.detector, args.min_face)
            summary = write_predictions(writer, predictor, paths, search=search,
                                        n_jobs=args.n_jobs, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted{f'; the results so far are in {args.out}' if args.out else ''}",
              file=sys.stderr)
        return 130
    print(f"{summary.photos} photo(s), {summary.faces} face(s), {summary.failed} failed"
          + (f"; results in {args.out}" if args.out else ""), file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())

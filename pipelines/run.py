"""Command line: train classical pipelines on UTKFace, score them on the test split.

Run ``python -m pipelines.run --help``. With no arguments it trains the default
pipeline (HOG at two scales and LBP of grayscale faces, colour thumbnails -> PCA per
block -> RBF SVM, each face judged with its mirror image) for all four tasks, prints a
summary table and writes models, metrics and plots into ``runs/classical``. The work is
done by :func:`pipelines.classical.run_classical`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

from features import EXTRACTORS
from features.io import COLOR_MODES
from models.cnn import ARCHITECTURE_NAMES
from models.factory import MODELS
from models.labels import TASKS
from models.precision import PRECISIONS
from models.stack import POSTPROCESSING
from pipelines.classical import TrainConfig, run_classical
from pipelines.cnn_training import (DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, FACE_EPOCHS,
                                    FACE_FREEZE_EPOCHS, CNNConfig, train_cnn)
from pipelines.cluster import SCHEDULER_ENV, SVM_CLUSTER_LIMIT, ClusterError, scheduler_address
from pipelines.dataset import default_cache_dir, default_data_dir
from pipelines.fairness import BALANCE_MODES
from pipelines.feature_blocks import DEFAULT_FEATURES, FeatureSpec
from pipelines.predictor import ModelError
from pipelines.reports import (OutputExistsError, format_summary_table, prepare_output_dir,
                               result_row)
from pipelines.splits import DEFAULT_MANIFEST
from pipelines.stacking import (DEFAULT_MEMBERS, MEMBERS_DIR, STACK_TASKS, has_model,
                                run_stack)

DEFAULT_CACHE = default_cache_dir()
DEFAULT_OUT = Path("runs") / "classical"


def parse_feature_spec(text: str) -> FeatureSpec:
    """A ``--features`` block (:meth:`FeatureSpec.parse`), with argparse's error type."""
    try:
        return FeatureSpec.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


#: Default of every command's ``--n-jobs``: all cores (library functions default to 1).
ALL_CORES = os.cpu_count() or 1
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def parse_cli_args(parser: argparse.ArgumentParser,
                   argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse a command line that has ``--n-jobs`` and ``--quiet``, refuse ``--n-jobs``
    below 1, and log at INFO (WARNING with ``--quiet``) in :data:`LOG_FORMAT`."""
    args = parser.parse_args(argv)
    if args.n_jobs < 1:
        parser.error("--n-jobs must be >= 1")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format=LOG_FORMAT)
    return args


def command_line(argv: Sequence[str] | None) -> str:
    """The shell command of a run with arguments ``argv`` (default: this process's)."""
    return shlex.join(["python", "-m", "pipelines.run",
                       *(sys.argv[1:] if argv is None else argv)])


def parse_member(text: str) -> tuple[str, Path]:
    """Parse a ``--members`` entry, ``NAME=RUN_FOLDER`` or ``RUN_FOLDER`` (named after it)."""
    name, separator, folder = text.partition("=")
    if not separator:
        name, folder = Path(text).name, text
    if not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=RUN_FOLDER or RUN_FOLDER, got {text!r}")
    return name, Path(folder)


def parse_param(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` of ``--param``: the value read as JSON (numbers, booleans), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m pipelines.run``."""
    defaults = " ".join(str(spec) for spec in DEFAULT_FEATURES)
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.run",
        description="Train classical UTKFace pipelines (image -> features -> PCA -> SVM or "
                    "XGBoost), choose settings on the validation split, score on the test "
                    "split, and save each task's model, metadata, metrics and plots.",
        epilog="Saved models are joblib pickles: loading one runs code from the file, so load "
               "only files you trust, with models.safety.load_model (checks the SHA-256 "
               "recorded beside the model). Example: python -m pipelines.run --tasks gender "
               "--model linear-svm --out runs/quick")
    parser.add_argument("--data", type=Path, default=None,
                        help="UTKFace image folder (default: $UTKFACE_DIR or "
                             f"{default_data_dir()})")
    parser.add_argument("--features", nargs="+", type=parse_feature_spec, default=None,
                        metavar="SPEC",
                        help="feature blocks, concatenated: EXTRACTOR[:SIZE[:COLOUR[:PCA]]] with "
                             f"EXTRACTOR one of {', '.join(EXTRACTORS)} (dlib: pretrained face "
                             "descriptors, use dlib:200:rgb); SIZE N or HxW pixels "
                             "(default 128); COLOUR gray or rgb (default gray); PCA the number "
                             "of principal components kept, or none (default none). "
                             f"Default: {defaults}")
    parser.add_argument("--model", choices=(*MODELS, "cnn", "stack"), default="svm",
                        help="svm: RBF-kernel SVC/SVR; linear-svm: LinearSVC/LinearSVR (fast); "
                             "xgboost: XGBClassifier/XGBRegressor; mlp: MLPClassifier/"
                             "MLPRegressor, one hidden layer of 256; cnn: a network (options "
                             "below); stack: one model combining trained runs (--members) "
                             "(default: svm)")
    parser.add_argument("--tasks", nargs="+", choices=[*TASKS, "all"], default=["all"],
                        help="tasks to train, one model each: gender, ethnicity, age "
                             "(regression in years), age_group (9 classes) or all (default; "
                             "with --model cnn, every head of the architecture)")
    parser.add_argument("--param", action="append", type=parse_param, default=[],
                        metavar="KEY=VALUE",
                        help="model parameter for every task, repeatable, e.g. C=30 or "
                             "max_depth=4 (values read as JSON when possible)")
    parser.add_argument("--search", action="store_true",
                        help="try a small grid of parameters per task and keep the best on the "
                             "validation split (about 3-4 times longer)")
    parser.add_argument("--balance", choices=BALANCE_MODES,
                        help="sample weights of the training faces (classical models, "
                             "CNN): none (default), class (every class, or age group for "
                             "age, weighs alike), class-sqrt (a face weighs 1 / sqrt of its "
                             "class's count) or group (every ethnicity x gender x age group "
                             "weighs alike); with --model stack, of every combiner's fit "
                             "(default there: class-sqrt for ethnicity, none for the others)")
    parser.add_argument("--flip", action="store_true",
                        help="add horizontally mirrored training faces (twice the data; an RBF "
                             "SVM takes about 4 times longer to fit)")
    parser.add_argument("--split", type=Path, default=DEFAULT_MANIFEST,
                        help="split manifest (JSON); made with --seed and saved there if "
                             f"missing (default: {DEFAULT_MANIFEST})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output folder for models, metrics and plots "
                             f"(default: {DEFAULT_OUT})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace results in an output folder that already holds files "
                             "(without it such a folder is refused)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help=f"feature cache folder (default: {DEFAULT_CACHE})")
    parser.add_argument("--no-cache", action="store_true", help="do not cache features")
    parser.add_argument("--n-jobs", type=int, default=ALL_CORES,
                        help="processes for feature extraction and threads for model fitting "
                             "(default: all %(default)s cores)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="Dask scheduler address (e.g. tcp://10.0.0.5:8786; default: "
                             f"${SCHEDULER_ENV} when set): extract the features on the "
                             "cluster's workers and train XGBoost there. The image folder must "
                             "be readable at the same path from every worker. An RBF SVM still "
                             "fits in this process and is refused above "
                             f"{SVM_CLUSTER_LIMIT:,} training rows. Without it (and without "
                             "the variable) everything runs on this machine; needs "
                             "pip install -e \".[distributed]\"")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of a new split, of PCA and of the models (default: 0)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars, warnings only")
    _add_cnn_options(parser.add_argument_group(
        "CNN (--model cnn; --features, --param, --search, --flip do not apply)"))
    _add_stack_options(parser.add_argument_group("stack (--model stack)"))
    return parser


def _add_cnn_options(cnn: argparse._ArgumentGroup) -> None:
    """The options of ``--model cnn``."""
    cnn.add_argument("--architecture", choices=ARCHITECTURE_NAMES, default="default",
                     help="default: our multi-task CNN; seed_baseline: the reference notebook "
                          "network, gender and age only; face-resnet: dlib's pretrained face "
                          "ResNet fine-tuned on faces aligned by dlib (needs the embeddings "
                          "extra) (default: %(default)s)")
    cnn.add_argument("--epochs", type=int, default=None,
                     help=f"most epochs (early stopping on the validation split; default: "
                          f"{DEFAULT_EPOCHS}, {FACE_EPOCHS} for face-resnet)")
    cnn.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                     help="default: %(default)s")
    cnn.add_argument("--color", choices=COLOR_MODES, default=None,
                     help="input colour of a new network (default: gray); with "
                          "--init-from the saved network's, and another is refused")
    cnn.add_argument("--precision", choices=PRECISIONS, default="float32",
                     help="arithmetic of the training: mixed_bfloat16 (float32 weights) is "
                          "faster on GPUs and CPUs with bfloat16 instructions (AVX512-BF16, "
                          "AMX); the network is saved in float32 (default: %(default)s)")
    cnn.add_argument("--init-from", type=Path, default=None, metavar="SAVED_MODEL",
                     help="fine-tune a saved CNN (model.keras) on --data instead of starting "
                          "from scratch; reports test metrics before and after")
    cnn.add_argument("--freeze-trunk-epochs", type=int, default=None,
                     help="with a pretrained trunk (--init-from, face-resnet), train only the "
                          f"heads for this many epochs first (default: 0, "
                          f"{FACE_FREEZE_EPOCHS} for a new face-resnet)")
    cnn.add_argument("--distill", action=argparse.BooleanOptionalAction, default=None,
                     help="also train the network to regress dlib's face descriptors of the "
                          "training faces (needs the embeddings extra; computed once, cached "
                          "in --cache-dir); the saved network predicts without dlib "
                          "(default: on for a new network of the default architecture, off "
                          "for seed_baseline and --init-from)")


def _add_stack_options(stack: argparse._ArgumentGroup) -> None:
    """The options of ``--model stack``."""
    stack.add_argument("--members", nargs="+", type=parse_member, default=None,
                       metavar="[NAME=]RUN_FOLDER",
                       help="trained run folders to combine (same split). Default: "
                            f"{', '.join(DEFAULT_MEMBERS)} in OUT/{MEMBERS_DIR}/NAME, each "
                            "trained there first (with its own default command) unless it "
                            "already holds a model")
    stack.add_argument("--postprocess", choices=POSTPROCESSING, default="none",
                       help="equalized-odds: post-process gender per predicted ethnicity with "
                            "fairlearn's ThresholdOptimizer, fitted on the validation faces "
                            "(equal true- and false-positive rates; costs accuracy, see "
                            "docs/fairness.md) (default: %(default)s)")


def _train_members(args: argparse.Namespace) -> dict[str, Path] | int:
    """The default members' run folders, training those that hold no model yet."""
    # refuse a folder of other results now, not after an hour of training the members
    prepare_output_dir(args.out, args.overwrite, keep=(MEMBERS_DIR,))
    folders = {name: args.out / MEMBERS_DIR / name for name in DEFAULT_MEMBERS}
    shared = ["--split", str(args.split), "--cache-dir", str(args.cache_dir),
              "--n-jobs", str(args.n_jobs), "--seed", str(args.seed)]
    shared += ["--data", str(args.data)] if args.data else []
    shared += ["--no-cache"] if args.no_cache else []
    shared += ["--quiet"] if args.quiet else []
    for name, folder in folders.items():
        if has_model(folder):
            logging.getLogger(__name__).info("member %s: reusing %s", name, folder)
            continue
        member_args = [*DEFAULT_MEMBERS[name], "--out", str(folder), "--overwrite", *shared]
        print(f"training member {name}: python -m pipelines.run {' '.join(member_args)}")
        status = main(member_args)
        if status:
            return status
    return folders


def _run_stack(args: argparse.Namespace) -> int:
    """``--model stack``: train missing members, fit the combiners, print every figure."""
    names = [name for name, _ in args.members or ()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        print(f"error: --members named {', '.join(repeated)} more than once; name them with "
              f"NAME=RUN_FOLDER", file=sys.stderr)
        return 2
    folders = dict(args.members) if args.members else _train_members(args)
    if isinstance(folders, int):
        return folders
    summary = run_stack(args.data or default_data_dir(), folders, split_path=args.split,
                        out_dir=args.out, overwrite=args.overwrite,
                        cache_dir=None if args.no_cache else args.cache_dir / "stack",
                        progress=not args.quiet, seed=args.seed, postprocess=args.postprocess,
                        balance=None if args.balance is None
                        else dict.fromkeys(STACK_TASKS, args.balance))
    print()
    print(format_summary_table(summary["rows"]))
    print(f"\nstack of {len(folders)} members in {args.out} ({summary['seconds']:.0f} s)")
    return 0


def _run_cnn(args: argparse.Namespace, tasks: Sequence[str]) -> int:
    """``--model cnn``: train (or fine-tune) the CNN and print its validation and test
    figures."""
    # "all" (the default) is every head of the chosen architecture
    cnn_tasks = None if "all" in args.tasks else list(tasks)
    config = CNNConfig(architecture=args.architecture, tasks=cnn_tasks, color=args.color,
                       epochs=args.epochs, batch_size=args.batch_size,
                       precision=args.precision, seed=args.seed, n_jobs=args.n_jobs,
                       init_from=args.init_from, freeze_trunk_epochs=args.freeze_trunk_epochs,
                       distill=args.distill, balance=args.balance or "none")
    summary = train_cnn(args.data or default_data_dir(), args.out, config,
                        manifest_path=args.split,
                        cache_dir=None if args.no_cache else args.cache_dir,
                        overwrite=args.overwrite, progress=not args.quiet)
    rows = [{**result_row(task, f"cnn:{args.architecture}", summary["counts"]["train"],
                          summary["validation"][task], figures),
             "fit_s": round(summary["train_seconds"])}
            for task, figures in summary["test"].items()]
    print()
    print(format_summary_table(rows))
    print(f"\nCNN, metrics and plots in {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parse_cli_args(parser, argv)
    tasks = TASKS if "all" in args.tasks else tuple(dict.fromkeys(args.tasks))
    scheduler = scheduler_address(args.scheduler)
    if args.model == "cnn" and args.scheduler:
        parser.error("--scheduler applies to the classical models; the CNN spreads over "
                     "devices with tf.distribute (several GPUs, or several workers with "
                     "TF_CONFIG)")
    if args.model == "cnn" and "age_group" in tasks and "all" not in args.tasks:
        parser.error("--tasks age_group: the CNN has heads for gender, ethnicity and age "
                     "only; age groups are a task of the classical models")
    if (args.members or args.postprocess != "none") and args.model != "stack":
        parser.error("--members and --postprocess apply to --model stack")
    try:
        if args.model == "stack":
            return _run_stack(args)
        if args.model == "cnn":
            return _run_cnn(args, tasks)
        config = TrainConfig(features=tuple(args.features or DEFAULT_FEATURES),
                             model=args.model, tasks=tasks, params=dict(args.param),
                             search=args.search, flip=args.flip, n_jobs=args.n_jobs,
                             seed=args.seed, balance=args.balance or "none")
        summary = run_classical(args.data or default_data_dir(), config,
                                split_path=args.split, out_dir=args.out,
                                cache_dir=None if args.no_cache else args.cache_dir,
                                overwrite=args.overwrite, progress=not args.quiet,
                                scheduler=scheduler, command=command_line(argv))
    except (OutputExistsError, FileNotFoundError, NotADirectoryError, ValueError,
            ClusterError, ImportError, ModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print()
    print(format_summary_table(summary["rows"]))
    print(f"\n{len(summary['rows'])} model(s), metrics and plots in {args.out} "
          f"({summary['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

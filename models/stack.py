"""One model from several: a combiner per task over the outputs of trained face models.

Each *member* is a trained model that predicts one or more tasks from face crops (image
paths or uint8 arrays): either a multi-task model with ``tasks`` and
``task_outputs(X)`` (a :class:`models.cnn.CNNPredictor`), or a mapping task -> fitted
scikit-learn ``Pipeline`` whose first step turns images into features (what
``pipelines.run`` saves). :class:`StackedFaceModel` gathers every member's outputs for
a face (class probabilities, ages) and feeds them to one combiner per task, fitted on
faces the members were not trained on (the validation split):

- a classification task: multinomial logistic regression on the log-probabilities of
  the members, its regularisation chosen by 5-fold cross-validated log loss (fewer
  folds when a class has fewer than 5 faces);
- age: the members' ages into a linear regression, a least-absolute-deviation (median)
  linear regression or gradient-boosted trees with absolute loss, whichever has the
  lowest 5-fold cross-validated MAE.

With ``postprocess="equalized-odds"`` the gender output is post-processed per
predicted ethnicity with fairlearn's ``ThresholdOptimizer`` (:mod:`models.postprocessing`),
fitted on the combiners' out-of-fold outputs of the same faces; its gender
"probabilities" are then the post-processed labels, 0 or 1.

A member that cannot judge a face (a descriptor pipeline gives NaN features when dlib
finds no face) gives NaN outputs for it; the combiner then reads, in its place, the
mean output of the members that did judge the face.

Equal steps (compared by ``joblib.hash``) run once per batch, across members too:
pipelines' first steps (feature extraction), the blocks inside their feature unions, and
the blocks' own first steps (the image loaders: a face is read or resized once per size
and colour).
Pickling stores the members as they pickle themselves (a ``CNNPredictor`` as its
``.keras`` bytes), so one ``joblib.dump`` holds the whole model.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import joblib
import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression, QuantileRegressor
from sklearn.metrics import log_loss, make_scorer
from sklearn.model_selection import (GridSearchCV, KFold, StratifiedKFold, cross_val_predict,
                                     cross_val_score)
from sklearn.pipeline import FeatureUnion, Pipeline
from tqdm.auto import tqdm

from models.postprocessing import equalized_odds_labels, fit_equalized_odds

logger = logging.getLogger(__name__)

REGRESSION_TASKS: tuple[str, ...] = ("age",)
#: Probabilities are clipped to this floor before their logarithm is taken.
PROBABILITY_FLOOR = 1e-6
CV_FOLDS = 5
DEFAULT_BATCH_SIZE = 256
#: Choices of ``StackedFaceModel(postprocess=...)``.
POSTPROCESSING: tuple[str, ...] = ("none", "equalized-odds")


def age_combiners(seed: int = 0) -> dict[str, BaseEstimator]:
    """The candidate combiners of a regression task, by name."""
    return {
        "linear": LinearRegression(),
        "median-linear": QuantileRegressor(quantile=0.5, alpha=0.0, solver="highs"),
        "boosted": HistGradientBoostingRegressor(loss="absolute_error", learning_rate=0.05,
                                                 max_iter=200, max_leaf_nodes=15,
                                                 random_state=seed),
    }


def class_combiner(folds: StratifiedKFold, classes: np.ndarray) -> GridSearchCV:
    """The combiner of a classification task: logistic regression, C chosen by the
    cross-validated log loss (weighted as the fit, when it is)."""
    log_loss_score = make_scorer(log_loss, greater_is_better=False,
                                 response_method="predict_proba", labels=classes)
    return GridSearchCV(LogisticRegression(max_iter=5000),
                        {"C": np.logspace(-3, 2, 11).tolist()}, cv=folds,
                        scoring=log_loss_score)


def labels_of(task: str, outputs: np.ndarray) -> np.ndarray:
    """Predictions from task outputs: ages pass through, class probabilities
    (N, n_classes) become int64 codes."""
    if task in REGRESSION_TASKS:
        return outputs
    return np.argmax(outputs, axis=1).astype(np.int64)


def is_multitask(member: Any) -> bool:
    """Whether ``member`` is a multi-task model rather than a mapping task -> pipeline."""
    return hasattr(member, "task_outputs") and hasattr(member, "tasks")


def member_tasks(member: Any) -> tuple[str, ...]:
    """The tasks a member predicts."""
    return tuple(member.tasks) if is_multitask(member) else tuple(member)


def _shared_output(step: Any, X, cache: dict[str, Any]) -> Any:
    """``step.transform(X)``, kept in ``cache`` under the step's ``joblib.hash``, so that
    equal steps across members run once per batch. A ``Pipeline`` reuses the kept output
    of its first step (the image loader that many feature blocks share); an unweighted
    ``FeatureUnion`` is assembled from its transformers' kept outputs (dlib's
    descriptors, HOG)."""
    key = joblib.hash(step)
    if key not in cache:
        if (isinstance(step, Pipeline) and len(step.steps) > 1
                and step.steps[0][1] not in (None, "passthrough")):
            data = _shared_output(step.steps[0][1], X, cache)
            for _, later in step.steps[1:]:
                if later is not None and later != "passthrough":
                    data = later.transform(data)
            cache[key] = data
        elif (isinstance(step, FeatureUnion) and step.transformer_list
                and step.transformer_weights is None
                and not any(isinstance(part, str) for _, part in step.transformer_list)):
            cache[key] = np.hstack([np.asarray(_shared_output(part, X, cache), dtype=np.float64)
                                    for _, part in step.transformer_list])
        else:
            cache[key] = step.transform(X)
    return cache[key]


def _as_batch(X) -> Sequence:
    if isinstance(X, (str, os.PathLike)):
        return [X]
    return X


class StackedFaceModel(BaseEstimator):
    """A combiner per task over the outputs of several trained face models.

    Parameters
    ----------
    members : mapping of str to model
        Member name -> a multi-task model (``tasks``, ``task_outputs``) or a mapping
        task -> fitted ``Pipeline`` (images -> features -> model). See the module
        docstring.
    seed : int
        Seed of the cross-validation folds and of the boosted age combiner.
    batch_size : int
        Faces passed to the members at a time.
    postprocess : {"none", "equalized-odds"}
        Post-processing of gender (needs the gender and ethnicity tasks); see the module
        docstring.

    Attributes
    ----------
    tasks_ : tuple of str
        Tasks the model predicts, in the order of the labels given to :meth:`fit`.
    inputs_ : dict of str to list of str
        Per task, the members whose outputs its combiner reads, in order.
    n_classes_ : dict of str to int
        Per classification task, the number of classes (codes 0 .. n - 1).
    combiners_ : dict of str to estimator
        The fitted combiner of each task.
    cv_scores_ : dict of str to dict
        Per task, scores on the faces :meth:`fit` saw: each member alone, each
        candidate combiner cross-validated (the accuracy of the out-of-fold predictions
        at the ``C`` the folds chose by log loss, or the MAE; unweighted), which combiner
        was kept, its ``C``, and whether its fit was weighted; for gender with
        post-processing, ``equalized_odds``: overall and worst-ethnicity accuracy before
        and after it, cross-fitted on the same folds.
    postprocessor_ : fairlearn.postprocessing.ThresholdOptimizer
        With ``postprocess="equalized-odds"``: the fitted gender post-processing.
    """

    def __init__(self, members: Mapping[str, Any], seed: int = 0,
                 batch_size: int = DEFAULT_BATCH_SIZE, postprocess: str = "none") -> None:
        self.members = members
        self.seed = seed
        self.batch_size = batch_size
        self.postprocess = postprocess

    @property
    def tasks(self) -> tuple[str, ...]:
        """Tasks the fitted model predicts."""
        return self.tasks_

    # --- member outputs -----------------------------------------------------------------

    def _pipeline_outputs(self, name: str, pipelines: Mapping[str, Any], X,
                          shared: dict[str, Any], tasks: Sequence[str]) -> dict:
        outputs = {}
        for task in tasks:
            pipeline = pipelines[task]
            rows = np.asarray(_shared_output(pipeline[0], X, shared), dtype=np.float64)
            found = ~np.isnan(rows).any(axis=1)
            if task in REGRESSION_TASKS:
                values = np.full(len(rows), np.nan)
                if found.any():
                    values[found] = pipeline[1:].predict(rows[found])
            else:
                if not hasattr(pipeline, "predict_proba"):
                    raise ValueError(f"member {name!r}: its {task} model gives no class "
                                     f"probabilities (an SVM gets them only when its "
                                     f"validation faces hold every class); retrain it or "
                                     f"leave it out")
                classes = np.asarray(pipeline.classes_)
                values = np.full((len(rows), self._width(task, classes)), np.nan)
                if found.any():
                    values[found] = 0.0
                    values[np.ix_(found, classes)] = pipeline[1:].predict_proba(rows[found])
            outputs[task] = values
            if not found.all():
                logger.warning("%s cannot judge %d of %d faces for %s (no face found); the "
                               "other members stand in", name, int((~found).sum()), len(rows),
                               task)
        return outputs

    def _width(self, task: str, classes: ArrayLike) -> int:
        known = getattr(self, "n_classes_", {}).get(task, 0)
        return max(known, int(np.max(classes)) + 1)

    def member_outputs(self, X, tasks: Sequence[str] | None = None,
                       progress: bool = False) -> dict[str, dict[str, np.ndarray]]:
        """Every member's outputs for some faces.

        Parameters
        ----------
        X : path-like, sequence of path-like or uint8 arrays, or ndarray (N, H, W[, C])
            Face crops, as each member takes them.
        tasks : sequence of str, optional
            Tasks wanted (default: the fitted tasks, or every member's tasks before
            :meth:`fit`).
        progress : bool
            Show a progress bar over batches.

        Returns
        -------
        dict
            Member name -> task -> outputs: (N, n_classes) class probabilities, or (N,)
            ages; NaN rows for faces the member could not judge.
        """
        X = _as_batch(X)
        if tasks is None:
            tasks = getattr(self, "tasks_", None) or sorted(
                {task for member in self.members.values() for task in member_tasks(member)})
        chunks: dict[str, dict[str, list[np.ndarray]]] = {
            name: {task: [] for task in member_tasks(member) if task in tasks}
            for name, member in self.members.items()}
        starts = range(0, len(X), self.batch_size)
        for start in tqdm(starts, desc="member outputs", unit="batch", disable=not progress):
            batch = X[start:start + self.batch_size]
            shared: dict[str, Any] = {}
            for name, member in self.members.items():
                wanted = list(chunks[name])
                if not wanted:
                    continue
                if is_multitask(member):
                    result = member.task_outputs(batch)
                else:
                    result = self._pipeline_outputs(name, member, batch, shared, wanted)
                for task in wanted:
                    chunks[name][task].append(np.asarray(result[task], dtype=np.float64))
        return {name: {task: np.concatenate(parts) for task, parts in tasks_.items()}
                for name, tasks_ in chunks.items() if tasks_}

    # --- combining ----------------------------------------------------------------------

    def _design(self, task: str, outputs: Mapping[str, Mapping[str, np.ndarray]],
                names: Sequence[str], n_classes: int | None = None) -> np.ndarray:
        """The combiner's input rows for one task; missing members read the others' mean."""
        blocks = [np.asarray(outputs[name][task], dtype=np.float64) for name in names]
        if task in REGRESSION_TASKS:
            blocks = [block.reshape(-1, 1) for block in blocks]
        else:
            width = n_classes or self.n_classes_[task]
            blocks = [np.pad(block, ((0, 0), (0, width - block.shape[1])))
                      for block in blocks]
        stacked = np.stack(blocks)                       # (members, N, width)
        missing = np.isnan(stacked).any(axis=2)          # (members, N)
        if missing.all(axis=0).any():
            rows = np.flatnonzero(missing.all(axis=0))
            raise ValueError(f"no member could judge the faces at positions "
                             f"{rows[:10].tolist()}{' ...' if len(rows) > 10 else ''} for "
                             f"{task}: none of {list(names)} found a face there")
        if missing.any():
            mean = np.nanmean(np.where(missing[..., None], np.nan, stacked), axis=0)
            stacked = np.where(missing[..., None], mean[None], stacked)
        if task not in REGRESSION_TASKS:
            stacked = np.log(np.clip(stacked, PROBABILITY_FLOOR, 1.0))
        return np.concatenate(list(stacked), axis=1)

    def fit(self, X, y: Mapping[str, ArrayLike], progress: bool = False) -> StackedFaceModel:
        """Fit the combiners on faces the members were not trained on.

        Parameters
        ----------
        X
            Faces, see :meth:`member_outputs`.
        y : mapping of str to array_like
            Task -> labels of those faces: class codes, or ages in years.
        progress : bool
            Show a progress bar while the members judge the faces.

        Returns
        -------
        StackedFaceModel
            ``self``.
        """
        return self.fit_outputs(self.member_outputs(X, tuple(y), progress), y)

    def fit_outputs(self, outputs: Mapping[str, Mapping[str, np.ndarray]],
                    y: Mapping[str, ArrayLike],
                    sample_weight: Mapping[str, ArrayLike | None] | None = None
                    ) -> StackedFaceModel:
        """Fit the combiners on member outputs already computed (:meth:`member_outputs`).

        ``sample_weight`` maps a task to the weights of the faces in its combiner's fit
        (e.g. :func:`pipelines.fairness.balance_weights`); a task not in it fits
        unweighted. The cross-validated accuracy and MAE count every face alike.

        Raises
        ------
        ValueError
            For a task no member predicts, labels of another length than the outputs,
            no labels at all, or post-processing without the gender and ethnicity labels.
        """
        if not y:
            raise ValueError("no labels given: y maps each task to its labels")
        if self.postprocess not in POSTPROCESSING:
            raise ValueError(f"postprocess must be one of {POSTPROCESSING}, got "
                             f"{self.postprocess!r}")
        if self.postprocess != "none" and not {"gender", "ethnicity"} <= set(y):
            raise ValueError(f"{self.postprocess} post-processing of gender needs the gender "
                             f"and ethnicity labels (its groups are the predicted "
                             f"ethnicities); got {sorted(y)}")
        inputs = {}
        for task, labels in y.items():
            inputs[task] = [name for name in self.members if task in outputs.get(name, {})]
            if not inputs[task]:
                raise ValueError(f"no member predicts {task!r}; members: "
                                 f"{ {name: member_tasks(m) for name, m in self.members.items()} }")
            for name in inputs[task]:
                if len(outputs[name][task]) != len(labels):
                    raise ValueError(f"{len(labels)} {task} labels, but member {name!r} has "
                                     f"{len(outputs[name][task])} outputs")
        weights = {task: None if (sample_weight or {}).get(task) is None
                   else np.asarray(sample_weight[task], dtype=np.float64) for task in y}
        for task, values in weights.items():
            if values is not None and values.shape != (len(y[task]),):
                raise ValueError(f"{len(values)} {task} sample weights for {len(y[task])} "
                                 f"labels")
        self.tasks_, self.inputs_, self.n_classes_ = tuple(y), inputs, {}
        self.combiners_, self.cv_scores_ = {}, {}
        self.__dict__.pop("postprocessor_", None)  # a refit without it must not keep one
        for task, names in inputs.items():
            labels = np.asarray(y[task])
            if task in REGRESSION_TASKS:
                self._fit_regression(task, outputs, names, labels.astype(np.float64),
                                     weights[task])
            else:
                widths = [outputs[name][task].shape[1] for name in names]
                self.n_classes_[task] = max(max(widths), int(labels.max()) + 1)
                self._fit_classification(task, outputs, names, labels.astype(np.int64),
                                         weights[task])
            self.cv_scores_[task]["weighted"] = weights[task] is not None
            logger.info("%s combiner over %s: %s", task, names, self.cv_scores_[task])
        if self.postprocess == "equalized-odds":
            self._fit_equalized_odds(outputs, np.asarray(y["gender"], dtype=np.int64),
                                     np.asarray(y["ethnicity"], dtype=np.int64), weights)
        return self

    def _out_of_fold(self, task: str, outputs, labels: np.ndarray,
                     weights: np.ndarray | None) -> np.ndarray:
        """The combiner's class probabilities of the faces it was fitted on, each from
        the fold that left the face out (columns: the classes present)."""
        combiner = self.combiners_[task]
        return cross_val_predict(clone(combiner.best_estimator_),
                                 self._design(task, outputs, self.inputs_[task]), labels,
                                 cv=combiner.cv, method="predict_proba",
                                 params={"sample_weight": weights})

    def _fit_equalized_odds(self, outputs, gender: np.ndarray, ethnicity: np.ndarray,
                            weights: Mapping[str, np.ndarray | None]) -> None:
        score = self._out_of_fold("gender", outputs, gender, weights["gender"])[:, 1]
        groups = np.unique(ethnicity)[np.argmax(
            self._out_of_fold("ethnicity", outputs, ethnicity, weights["ethnicity"]), axis=1)]
        try:
            self.postprocessor_ = fit_equalized_odds(score, gender, groups)
        except ValueError as error:
            raise ValueError(f"equalized-odds post-processing of gender on {len(gender)} "
                             f"faces, grouped by predicted ethnicity: {error}") from error
        decided = (score > 0.5).astype(np.int64)
        post = np.full_like(gender, -1)
        for train, test in self.combiners_["gender"].cv.split(score, gender):
            try:  # a fold may lack a group, or hold one gender only in one
                fold = fit_equalized_odds(score[train], gender[train], groups[train])
                post[test] = equalized_odds_labels(fold, score[test], groups[test])
            except ValueError:
                break

        def figures(predicted: np.ndarray) -> dict[str, float]:
            from fairlearn.metrics import MetricFrame
            from sklearn.metrics import accuracy_score

            frame = MetricFrame(metrics=accuracy_score, y_true=gender, y_pred=predicted,
                                sensitive_features=ethnicity)
            return {"accuracy": float(frame.overall),
                    "worst_ethnicity_accuracy": float(frame.group_min())}

        self.cv_scores_["gender"]["equalized_odds"] = {
            "before": figures(decided),
            "after": figures(post) if (post >= 0).all() else None}
        logger.info("gender equalized-odds post-processing, cross-fitted: %s",
                    self.cv_scores_["gender"]["equalized_odds"])

    def _fit_classification(self, task: str, outputs, names: Sequence[str],
                            labels: np.ndarray, weights: np.ndarray | None) -> None:
        design = self._design(task, outputs, names)
        smallest = int(np.bincount(labels)[np.unique(labels)].min())
        if smallest < 2:
            raise ValueError(f"{task}: a class has a single face among the {len(labels)} "
                             f"given; the combiner needs at least 2 of each class present")
        folds = StratifiedKFold(min(CV_FOLDS, smallest), shuffle=True, random_state=self.seed)
        members = {}
        for name in names:
            judged = ~np.isnan(outputs[name][task]).any(axis=1)
            members[name] = float(np.mean(
                np.argmax(outputs[name][task][judged], axis=1) == labels[judged]))
        combiner = class_combiner(folds, np.unique(labels)).fit(design, labels,
                                                                 sample_weight=weights)
        self.combiners_[task] = combiner
        # from the out-of-fold predictions: the search's own scores are weighted as the fit
        out_of_fold = self._out_of_fold(task, outputs, labels, weights)
        accuracy = np.mean(np.unique(labels)[np.argmax(out_of_fold, axis=1)] == labels)
        self.cv_scores_[task] = {"metric": "accuracy", "members": members,
                                 "combiners": {"logistic": float(accuracy)},
                                 "kept": "logistic", "C": float(combiner.best_params_["C"])}

    def _fit_regression(self, task: str, outputs, names: Sequence[str],
                        labels: np.ndarray, weights: np.ndarray | None) -> None:
        design = self._design(task, outputs, names)
        folds = KFold(CV_FOLDS, shuffle=True, random_state=self.seed)
        members = {name: float(np.nanmean(np.abs(outputs[name][task] - labels)))
                   for name in names}
        scores = {name: float(-cross_val_score(candidate, design, labels, cv=folds,
                                               scoring="neg_mean_absolute_error",
                                               params={"sample_weight": weights}).mean())
                  for name, candidate in age_combiners(self.seed).items()}
        kept = min(scores, key=scores.get)
        self.combiners_[task] = clone(age_combiners(self.seed)[kept]).fit(
            design, labels, sample_weight=weights)
        self.cv_scores_[task] = {"metric": "mae", "members": members, "combiners": scores,
                                 "kept": kept}

    def combine(self, outputs: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The combined outputs of each task from member outputs.

        Returns
        -------
        dict of str to ndarray
            Task -> (N, n_classes) probabilities, or (N,) ages (>= 0).
        """
        combined = {}
        for task in self.tasks_:
            design = self._design(task, outputs, self.inputs_[task])
            combiner = self.combiners_[task]
            if task in REGRESSION_TASKS:
                combined[task] = np.maximum(combiner.predict(design), 0.0)
            else:
                proba = np.zeros((len(design), self.n_classes_[task]))
                proba[:, combiner.classes_] = combiner.predict_proba(design)
                combined[task] = proba
        if getattr(self, "postprocessor_", None) is not None:
            labels = equalized_odds_labels(self.postprocessor_, combined["gender"][:, 1],
                                           np.argmax(combined["ethnicity"], axis=1))
            combined["gender"] = np.eye(self.n_classes_["gender"])[labels]
        return combined

    # --- prediction ---------------------------------------------------------------------

    def task_outputs(self, X, progress: bool = False) -> dict[str, np.ndarray]:
        """Combined class probabilities and ages of every task (one pass of the members).

        Returns
        -------
        dict of str to ndarray
            Task -> (N, n_classes) probabilities (columns follow the label codes), or
            (N,) ages in years (>= 0).
        """
        return self.combine(self.member_outputs(X, self.tasks_, progress))

    def _check_task(self, task: str | None) -> tuple[str, ...]:
        if task is None:
            return self.tasks_
        if task not in self.tasks_:
            raise ValueError(f"this model predicts {self.tasks_}, not {task!r}")
        return (task,)

    def predict(self, X, task: str | None = None) -> dict[str, np.ndarray] | np.ndarray:
        """Class codes (int64) and ages (float64, years) of one task or of all.

        Returns
        -------
        ndarray or dict of str to ndarray
            For one task its (N,) predictions, otherwise a dict task -> predictions.
        """
        tasks = self._check_task(task)
        outputs = self.task_outputs(X)
        predicted = {name: labels_of(name, outputs[name]) for name in tasks}
        return predicted[task] if task is not None else predicted

    def predict_proba(self, X, task: str | None = None) -> dict[str, np.ndarray] | np.ndarray:
        """Class probabilities of one classification task or of all.

        Raises
        ------
        ValueError
            For a regression task.
        """
        if task in REGRESSION_TASKS:
            raise ValueError(f"{task} is a regression: use predict()")
        tasks = [name for name in self._check_task(task) if name not in REGRESSION_TASKS]
        outputs = self.task_outputs(X)
        proba = {name: outputs[name] for name in tasks}
        return proba[task] if task is not None else proba

"""Load-time check of OneVsRestClassifier (firkin._validate): its predict,
for a binary or multilabel target, builds a sparse matrix n_samples tall
whose row indices are the positions where each binary estimator's output,
flattened, passes the threshold (scikit-learn's ``_predict_binary``
flattens a ``decision_function``; a regressor's ``predict`` and the
positive column of ``predict_proba`` are used as they are). An output of
more than one value per sample gives rows past the matrix, and SciPy
converts that matrix without checking its indices: a heap corruption.

So each binary estimator must be one whose output per sample firkin can
bound from its state: a classifier without ``decision_function`` (its
``predict_proba`` column), or a class whose ``decision_function`` (or a
regressor's ``predict``) is known here, with the state that fixes its width
checked; wrappers (Pipeline, searches, bagging, stacking, thresholds) are
followed to the estimator they call. Anything else is refused when the
target is not multiclass (a multiclass predict compares outputs with
``out=`` arrays of n values, which numpy checks)."""
from __future__ import annotations

import numpy as np

from ._validate_base import _is_int, cannot_check, refuse

#: wrappers whose decision_function / predict calls the estimators these
#: attributes hold (the first one present), on the same samples
_DELEGATES = {
    "Pipeline": ("steps",),
    "GridSearchCV": ("best_estimator_",),
    "RandomizedSearchCV": ("best_estimator_",),
    "HalvingGridSearchCV": ("best_estimator_",),
    "HalvingRandomSearchCV": ("best_estimator_",),
    "FixedThresholdClassifier": ("estimator_",),
    "TunedThresholdClassifierCV": ("estimator_",),
    "SelfTrainingClassifier": ("estimator_", "base_estimator_"),  # scikit-learn < 1.6: base_
    "RFE": ("estimator_",),
    "RFECV": ("estimator_",),
    "StackingClassifier": ("final_estimator_",),
    "BaggingClassifier": ("estimators_",),  # the mean of each one's decision
}

#: linear models: X @ coef_.T + intercept_, flattened when it is one column
_LINEAR = frozenset({
    "LogisticRegression", "LogisticRegressionCV", "SGDClassifier", "Perceptron",
    "PassiveAggressiveClassifier", "RidgeClassifier", "RidgeClassifierCV", "LinearSVC",
    "LinearDiscriminantAnalysis"})

#: libsvm: one column per pair of classes (the pairs _n_support counts)
_LIBSVM = frozenset({"SVC", "NuSVC"})

#: a decision of n_samples x len(classes_), reduced to one column when there are two
_TWO_CLASS_REDUCED = frozenset({
    "QuadraticDiscriminantAnalysis", "NearestCentroid", "OneVsOneClassifier",
    "AdaBoostClassifier"})

#: regressors whose predict gives one row per sample, flattened only when it
#: is one column: X @ coef_.T + intercept_ (through a link), trees and
#: forests, neighbours, kernels, libsvm, the network, the constant
_ROW_REGRESSORS = frozenset({
    "LinearRegression", "Ridge", "RidgeCV", "Lasso", "LassoCV", "ElasticNet", "ElasticNetCV",
    "Lars", "LarsCV", "LassoLars", "LassoLarsCV", "LassoLarsIC", "OrthogonalMatchingPursuit",
    "OrthogonalMatchingPursuitCV", "BayesianRidge", "ARDRegression", "SGDRegressor",
    "HuberRegressor", "TheilSenRegressor", "QuantileRegressor", "PassiveAggressiveRegressor",
    "PoissonRegressor", "GammaRegressor", "TweedieRegressor", "LinearSVR", "PLSRegression",
    "DecisionTreeRegressor", "ExtraTreeRegressor", "RandomForestRegressor", "ExtraTreesRegressor",
    "KNeighborsRegressor", "RadiusNeighborsRegressor", "SVR", "NuSVR", "GaussianProcessRegressor",
    "KernelRidge", "MLPRegressor", "DummyRegressor"})

_MAX_NESTING = 16


def _is_one(v) -> bool:
    return _is_int(v) and v == 1


def _is_two(v) -> bool:
    return _is_int(v) and v == 2


def _is_sklearn(cls) -> bool:
    return cls.__module__.partition(".")[0] == "sklearn"


def _regressor(e) -> bool:
    """scikit-learn's own test (its tags), as _predict_binary asks it."""
    from sklearn.base import is_regressor

    return bool(is_regressor(e))


def _one_value_per_sample(name, what, e, where, multilabel, depth=0) -> None:
    """Refuses `e` (reached at `where`) unless what _predict_binary takes
    from it is at most one value per sample."""
    if depth > _MAX_NESTING:
        raise refuse(name, what, f"{where} nests estimators more than {_MAX_NESTING} deep")
    d = getattr(e, "__dict__", None)
    if not isinstance(d, dict):
        return  # no estimator: calling it fails (AttributeError)
    cls = type(e)
    qual = cls.__qualname__ if _is_sklearn(cls) else None
    classes = d.get("classes_")
    if classes is not None and np.ndim(classes) > 0 and len(classes) != 2:
        raise refuse(name, what, f"{where} has {len(classes)} classes, not the 2 of a binary "
                     "problem")
    coef, intercept = d.get("coef_"), d.get("intercept_")
    if isinstance(coef, np.ndarray) and not (coef.ndim == 1 or (coef.ndim == 2 and coef.shape[0] == 1)):
        raise refuse(name, what, f"{where}.coef_ has shape {coef.shape}, not one row")
    if coef is not None and np.ndim(intercept) > 0 and np.size(intercept) != 1:
        raise refuse(name, what, f"{where}.intercept_ holds {np.size(intercept)} values, not one")
    n_support = d.get("_n_support")
    if isinstance(n_support, np.ndarray) and n_support.shape != (2,):
        raise refuse(name, what, f"{where} is a libsvm model of {n_support.size} classes, not 2")
    if qual in _DELEGATES:
        inner = next((d[a] for a in _DELEGATES[qual] if a in d), None)
        if qual == "BaggingClassifier" and inner is not None and not isinstance(inner, list):
            raise refuse(name, what, f"{where}.estimators_ is not a list")
        if qual == "Pipeline":
            steps = inner
            if not (isinstance(steps, list) and steps and isinstance(steps[-1], tuple)
                    and len(steps[-1]) == 2):
                raise refuse(name, what, f"{where}.steps is not a list of (name, estimator)")
            _one_value_per_sample(name, what, steps[-1][1], f"{where}.steps[-1]", multilabel,
                                  depth + 1)
        elif isinstance(inner, list):
            for i, sub in enumerate(inner):
                _one_value_per_sample(name, what, sub, f"{where}.estimators_[{i}]", multilabel,
                                      depth + 1)
        elif inner is not None:
            _one_value_per_sample(name, what, inner, f"{where}.{_DELEGATES[qual][0]}", multilabel,
                                  depth + 1)
        return
    if qual == "OneVsRestClassifier":  # one estimator: its decision; more: one column each
        ests = d.get("estimators_")
        if ests is None:
            return
        if not (isinstance(ests, list) and len(ests) == 1):
            raise refuse(name, what, f"{where} decides {len(ests) if isinstance(ests, list) else '?'} "
                         "labels, not 1")
        _one_value_per_sample(name, what, ests[0], f"{where}.estimators_[0]", multilabel, depth + 1)
        return
    if qual == "_ConstantPredictor":  # np.repeat(y_, n_samples)
        if np.size(d.get("y_")) != 1:
            raise refuse(name, what, f"{where} predicts a constant of {np.size(d.get('y_'))} "
                         "values, not one")
        return
    if qual in _TWO_CLASS_REDUCED:
        n_classes = d.get("n_classes_", 2)
        if not _is_two(n_classes):
            raise refuse(name, what, f"{where}.n_classes_ is {n_classes!r}, not 2")
        return
    if qual in ("GradientBoostingClassifier", "GradientBoostingRegressor"):
        _one_tree_per_iteration(name, what, e, d, where)
        return
    if qual in ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor"):
        if not _is_one(d.get("n_trees_per_iteration_", 1)):
            raise refuse(name, what, f"{where} builds {d.get('n_trees_per_iteration_')!r} trees per "
                         "iteration, not 1")
        return
    if qual in _LINEAR or qual in _LIBSVM or qual in _ROW_REGRESSORS:
        return  # the coef_/intercept_/_n_support checks above
    if not multilabel:
        return  # a multiclass predict: numpy checks each output's length
    try:
        regressor = _regressor(e)
    except Exception:  # noqa: BLE001 - a state scikit-learn cannot even tag
        regressor = True
    if not regressor and not hasattr(cls, "decision_function"):
        return  # predict_proba(X)[:, 1]: one value per row
    raise cannot_check(name, f"{what}'s {where} is a {cls.__module__}.{cls.__qualname__}",
                       "firkin cannot check its output per sample. A binary or multilabel "
                       "predict turns the positions in each binary estimator's flattened output "
                       "into row indices of a sparse matrix that SciPy converts without bounds "
                       "checks, so firkin loads a OneVsRestClassifier only over estimators whose "
                       "output it can bound from their state")


def _one_tree_per_iteration(name, what, e, d, where) -> None:
    """GradientBoostingClassifier: its raw prediction is n_samples x K, K
    the loss's column count, and its trees are (n_iter, K): a binary loss
    gives one column."""
    ests = d.get("estimators_")
    if isinstance(ests, np.ndarray) and not (ests.ndim == 2 and ests.shape[1] == 1):
        raise refuse(name, what, f"{where}.estimators_ has shape {ests.shape}, not one tree per "
                     "iteration")
    if not _is_one(d.get("n_trees_per_iteration_", 1)):
        raise refuse(name, what, f"{where} builds {d.get('n_trees_per_iteration_')!r} trees per "
                     "iteration, not 1")
    for attr in ("_loss", "loss_"):
        loss = d.get(attr)
        if loss is None:
            continue
        if (type(loss).__name__ in ("HalfMultinomialLoss", "MultinomialDeviance")
                or getattr(loss, "is_multiclass", False) is not False
                or not _is_one(getattr(loss, "K", 1))):
            raise refuse(name, what, f"{where}.{attr} is a loss of several columns, not a binary one")


def _check_one_vs_rest(name: str, est) -> None:
    """OneVsRestClassifier: each binary estimator gives one value per sample
    (the module docstring says why)."""
    d = vars(est)
    ests = d.get("estimators_")
    if ests is None:
        return
    what = f"a {type(est).__qualname__}"
    if not isinstance(ests, list):
        raise refuse(name, what, "estimators_ is not a list")
    binarizer = d.get("label_binarizer_")
    y_type = getattr(binarizer, "__dict__", {}).get("y_type_")
    multilabel = not (type(y_type) is str and y_type == "multiclass")
    for i, e in enumerate(ests):
        _one_value_per_sample(name, what, e, f"estimators_[{i}]", multilabel)

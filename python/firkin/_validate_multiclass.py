"""Load-time check of OneVsRestClassifier (firkin._validate): its predict,
for a binary or multilabel target, builds a sparse matrix n_samples tall
whose row indices are the positions where each binary estimator's output,
flattened, passes the threshold (scikit-learn's ``_predict_binary``
flattens a ``decision_function``; a regressor's ``predict`` and the
positive column of ``predict_proba`` are used as they are). An output of
more than one value per sample gives rows past the matrix, and SciPy
converts that matrix without checking its indices: a heap corruption.

So each binary estimator must be one whose output per sample firkin can
bound from its state. The check follows every estimator whose output
reaches that decision: the estimator a wrapper calls (Pipeline, searches,
thresholds, self-training, RFE), the members whose outputs a combining
estimator adds or votes (bagging, stacking, voting, AdaBoost, one-vs-one),
each with the state that fixes its width checked (the number of classes,
coefficient rows, intercepts, libsvm's class pairs, trees per iteration,
a constant's values). A classifier without ``decision_function`` whose
decision is taken gives its ``predict_proba`` column; the classifiers and
regressors named here give one row per sample. Anything else is refused
when the target is not multiclass (a multiclass predict compares outputs
with ``out=`` arrays of n values, which numpy checks), with a message that
firkin cannot check it."""
from __future__ import annotations

import numpy as np

from ._validate_base import _is_int, cannot_check, refuse
from ._validate_trees import gb_loss_columns

#: estimators whose output is that of the estimators these attributes hold
#: (every one present: scikit-learn versions name them differently), on the
#: same samples; "steps" is a Pipeline's, whose last step decides
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

#: estimators that combine what their members output (predicted labels,
#: decisions or probabilities, stacked or summed sample by sample): each
#: member is checked as "any" (both its labels and its decision)
_COMBINERS = {
    "StackingClassifier": "estimators_",
    "VotingClassifier": "estimators_",
    "AdaBoostClassifier": "estimators_",
    "OneVsOneClassifier": "estimators_",
}

#: linear models: X @ coef_.T + intercept_, flattened when it is one column
_LINEAR = frozenset({
    "LogisticRegression", "LogisticRegressionCV", "SGDClassifier", "Perceptron",
    "PassiveAggressiveClassifier", "RidgeClassifier", "RidgeClassifierCV", "LinearSVC",
    "LinearDiscriminantAnalysis"})

#: libsvm: one column per pair of classes (the pairs _n_support counts)
_LIBSVM = frozenset({"SVC", "NuSVC"})

#: a decision of n_samples x len(classes_) (or n_classes_), reduced to one
#: column when there are two
_TWO_CLASS_REDUCED = frozenset({
    "QuadraticDiscriminantAnalysis", "NearestCentroid", "OneVsOneClassifier",
    "AdaBoostClassifier"})

#: classifiers whose labels and probabilities have one row per sample (an
#: argmax over classes, or a threshold of a decision checked above)
_ROW_CLASSIFIERS = frozenset({
    "DecisionTreeClassifier", "ExtraTreeClassifier", "RandomForestClassifier",
    "ExtraTreesClassifier", "KNeighborsClassifier", "RadiusNeighborsClassifier", "GaussianNB",
    "BernoulliNB", "MultinomialNB", "ComplementNB", "CategoricalNB", "MLPClassifier",
    "GaussianProcessClassifier", "LabelPropagation", "LabelSpreading", "CalibratedClassifierCV",
    "DummyClassifier", "_ConstantPredictor", "GradientBoostingClassifier",
    "HistGradientBoostingClassifier"})

#: regressors whose predict gives one row per sample, flattened only when it
#: is one column: X @ coef_.T + intercept_ (through a link), trees and
#: forests, neighbours, kernels, libsvm, the network, the constant, isotonic
_ROW_REGRESSORS = frozenset({
    "LinearRegression", "Ridge", "RidgeCV", "Lasso", "LassoCV", "ElasticNet", "ElasticNetCV",
    "Lars", "LarsCV", "LassoLars", "LassoLarsCV", "LassoLarsIC", "OrthogonalMatchingPursuit",
    "OrthogonalMatchingPursuitCV", "BayesianRidge", "ARDRegression", "SGDRegressor",
    "HuberRegressor", "TheilSenRegressor", "QuantileRegressor", "PassiveAggressiveRegressor",
    "PoissonRegressor", "GammaRegressor", "TweedieRegressor", "LinearSVR", "PLSRegression",
    "DecisionTreeRegressor", "ExtraTreeRegressor", "RandomForestRegressor", "ExtraTreesRegressor",
    "KNeighborsRegressor", "RadiusNeighborsRegressor", "SVR", "NuSVR", "GaussianProcessRegressor",
    "KernelRidge", "MLPRegressor", "DummyRegressor", "IsotonicRegression",
    "GradientBoostingRegressor", "HistGradientBoostingRegressor"})

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


def _width_rules(name, what, e, d, qual, where) -> None:
    """The attributes that set how many values per sample `e` outputs."""
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
    if qual == "_ConstantPredictor" and np.size(d.get("y_")) != 1:  # np.repeat(y_, n_samples)
        raise refuse(name, what, f"{where} predicts a constant of {np.size(d.get('y_'))} values, "
                     "not one")
    if qual == "DummyClassifier" and _is_one(d.get("n_outputs_", 1)) and np.size(d.get("constant")) != 1:
        # np.tile(constant, (n_samples, 1)), flattened for one output
        raise refuse(name, what, f"{where} has one output but a constant of "
                     f"{np.size(d.get('constant'))} values")
    if qual in _TWO_CLASS_REDUCED and not _is_two(d.get("n_classes_", 2)):
        raise refuse(name, what, f"{where}.n_classes_ is {d.get('n_classes_')!r}, not 2")
    if qual in ("GradientBoostingClassifier", "GradientBoostingRegressor"):
        _one_tree_per_iteration(name, what, e, d, where)
    if qual in ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor") and not _is_one(
            d.get("n_trees_per_iteration_", 1)):
        raise refuse(name, what, f"{where} builds {d.get('n_trees_per_iteration_')!r} trees per "
                     "iteration, not 1")


def _members(name, what, value, where):
    """(where, estimator) of a list (or tuple) attribute's items; refused when
    it is neither."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise refuse(name, what, f"{where} is not a list")
    return [(f"{where}[{i}]", sub) for i, sub in enumerate(value)]


def _bounded(name, what, e, where, multilabel, used, depth=0) -> None:
    """Refuses `e` (reached at `where`) unless its output has at most one
    value per sample. used: "decision" (what _predict_binary takes from it:
    a decision_function, a regressor's predict, else predict_proba's
    positive column) or "any" (a member whose labels, decisions or
    probabilities are combined sample by sample)."""
    if depth > _MAX_NESTING:
        raise refuse(name, what, f"{where} nests estimators more than {_MAX_NESTING} deep")
    d = getattr(e, "__dict__", None)
    if not isinstance(d, dict):
        return  # no estimator: calling it fails (AttributeError)
    cls = type(e)
    qual = cls.__qualname__ if _is_sklearn(cls) else None
    _width_rules(name, what, e, d, qual, where)
    inner = []
    if qual in _DELEGATES:
        for attr in _DELEGATES[qual]:
            if attr not in d:
                continue
            if qual == "Pipeline":
                steps = d[attr]
                if not (isinstance(steps, list) and steps and isinstance(steps[-1], tuple)
                        and len(steps[-1]) == 2):
                    raise refuse(name, what, f"{where}.steps is not a list of (name, estimator)")
                inner.append((f"{where}.steps[-1]", steps[-1][1], used))
            elif attr == "estimators_":
                inner += [(w, sub, used) for w, sub in _members(name, what, d[attr], f"{where}.{attr}")]
            else:
                inner.append((f"{where}.{attr}", d[attr], used))
    if qual in _COMBINERS:
        attr = _COMBINERS[qual]
        inner += [(w, sub, "any") for w, sub in _members(name, what, d.get(attr), f"{where}.{attr}")]
    if qual == "OneVsRestClassifier":  # one estimator: its decision; more: one column each
        ests = _members(name, what, d.get("estimators_"), f"{where}.estimators_")
        if used == "decision" and len(ests) > 1:
            raise refuse(name, what, f"{where} decides {len(ests)} labels, not 1")
        inner += [(w, sub, "decision") for w, sub in ests]
    for w, sub, how in inner:
        _bounded(name, what, sub, w, multilabel, how, depth + 1)
    if (qual in _DELEGATES or qual in _COMBINERS or qual in _LINEAR or qual in _LIBSVM
            or qual in _TWO_CLASS_REDUCED or qual in _ROW_CLASSIFIERS or qual in _ROW_REGRESSORS
            or qual == "OneVsRestClassifier"):
        return  # known, and what it calls was checked above (one not fitted cannot be called)
    if not multilabel:
        return  # a multiclass predict: numpy checks each output's length
    try:
        regressor = _regressor(e)
    except Exception:  # noqa: BLE001 - a state scikit-learn cannot even tag
        regressor = True
    if used == "decision" and not regressor and not hasattr(cls, "decision_function"):
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
        if attr in d and gb_loss_columns(d[attr]) != 1:
            raise refuse(name, what, f"{where}.{attr} is a loss of several columns, not a binary one")


def _check_one_vs_rest(name: str, est) -> None:
    """OneVsRestClassifier: each binary estimator gives one value per sample
    (the module docstring says why)."""
    d = vars(est)
    what = f"a {type(est).__qualname__}"
    y_type = getattr(d.get("label_binarizer_"), "__dict__", {}).get("y_type_")
    multilabel = not (type(y_type) is str and y_type == "multiclass")
    for where, e in _members(name, what, d.get("estimators_"), "estimators_"):
        _bounded(name, what, e, where, multilabel, "decision")

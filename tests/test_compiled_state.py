"""State that scikit-learn's compiled code trusts (issue #17, item 1) and state
that names a place on disk (item 2).

Every malicious file here is built from a legitimate fitted model: its state
is copied, one invariant of the compiled code is broken in the copy, and the
copy is written through a stand-in whose __reduce__ gives exactly what the
real object would (so no corrupted object ever exists in this process, and
nothing here ever calls predict on one). Each file must be refused by a
default load in every container firkin reads; the unmodified model loads
and predicts identically.
"""
import copy
import importlib
import io
import pickle
import warnings

import joblib
import numpy as np
import pytest

import firkin
from firkin import UntrustedTypesError

from _pickles import _containers
from _support import _Reduce, _set, _with_tree, _zfile

KEY_A, KEY_B = "compiled-state key A (the author)", "compiled-state key B (the reader)"

X = np.random.RandomState(0).rand(120, 5)
Y = np.arange(120) % 3


@pytest.fixture
def keys():
    firkin.set_key(KEY_A)
    try:
        yield
    finally:
        firkin.set_key(None)


def _files(obj, tmp_path):
    """(label, path) of obj written as firkin (signed with key A), joblib raw,
    joblib compressed and pickle files."""
    firkin.set_key(KEY_A)
    out = []
    p = tmp_path / "m.firkin"
    firkin.dump(obj, p)
    out.append(("firkin", p))
    p = tmp_path / "m.joblib"
    joblib.dump(obj, p)
    out.append(("joblib", p))
    p = tmp_path / "m.joblib.z"
    joblib.dump(obj, p, compress=3)
    out.append(("joblib compressed", p))
    p = tmp_path / "m.pkl"
    p.write_bytes(pickle.dumps(obj, 5))
    out.append(("pickle", p))
    return out


def _stream_files(stream, tmp_path):
    """A hand-made pickle stream in every kind of file firkin reads (plain
    pickle, joblib files plain and compressed, firkin containers signed with
    another key or unsigned, whole and streamed, compressed as a whole, and
    joblib 0.9's compressed file)."""
    out = []
    blobs = dict(_containers(stream), **{"joblib-pre0.10-zfile": _zfile(stream)})
    for label, data in sorted(blobs.items()):
        p = tmp_path / f"s.{label}"
        p.write_bytes(data)
        out.append((label, p))
    return out


def _refused(obj, tmp_path, match, phrase="compiled code"):
    """Every container of obj refuses to load under the default policy (with
    key B: the signature is someone else's), with a message that says why
    (phrase)."""
    files = _files(obj, tmp_path)
    firkin.set_key(KEY_B)
    for label, path in files:
        with pytest.raises(UntrustedTypesError, match=match) as info:
            firkin.load(path)
        assert phrase in str(info.value), label
        if label == "firkin":
            with pytest.raises(UntrustedTypesError, match=match):
                firkin.load(path, mmap_mode="r")
            with pytest.raises(UntrustedTypesError, match=match):
                firkin.loads(path.read_bytes())
    return files


def _mapped_like_joblib(model, path, out, *args, mode="r"):
    """The output of the firkin file `path` (holding `model`) memory-mapped
    with `mode`, or, where the library refuses read-only arrays ("buffer
    source array is read-only": older scikit-learn and SciPy refuse more of
    them), proof that joblib.load(mmap_mode=mode) of the same model is
    refused the same way: every array of a file mapped read-only is
    read-only, joblib's too."""
    try:
        return out(firkin.load(path, mmap_mode=mode), *args)
    except ValueError as exc:
        if "read-only" not in str(exc):
            raise
        jpath = path.with_name(path.name + ".mapped.joblib")
        joblib.dump(model, jpath)
        with pytest.raises(ValueError, match="read-only"):
            out(joblib.load(jpath, mmap_mode=mode), *args)
        return None


def _roundtrips(model, tmp_path, out, *args, mapped="r"):
    """The unmodified model loads from every container and gives the same output
    (a firkin file also memory-mapped, with mmap_mode=`mapped`, as joblib's)."""
    files = _files(model, tmp_path)
    firkin.set_key(KEY_B)
    want = out(model, *args)
    for label, path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("error", firkin.StoredPathWarning)
            loaded = firkin.load(path)
            np.testing.assert_array_equal(out(loaded, *args), want, err_msg=label)
            if label == "firkin":
                got = _mapped_like_joblib(model, path, out, *args, mode=mapped)
                if got is not None:
                    np.testing.assert_array_equal(got, want, err_msg=f"{label}, mmap_mode={mapped!r}")


@pytest.fixture(scope="module")
def dtc():
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(random_state=0).fit(X, Y)


TREE_CASES = {
    "feature out of range": (_set("feature", 10**6), r"feature 1000000, outside \[0, n_features"),
    "negative feature": (_set("feature", -3), "outside"),
    "left child out of range": (_set("left_child", 10**6), "children"),
    "right child out of range": (_set("right_child", -5), "children"),
    "cycle to the root": (_set("left_child", 0), "later nodes"),
    "child shared by two splits": (
        lambda s: s["nodes"]["right_child"].__setitem__(
            0, s["nodes"]["left_child"][0]), "another split has|later nodes"),
    "node_count beyond the nodes": (lambda s: s.__setitem__("node_count", s["node_count"] + 50),
                                    "node_count"),
    "max_depth below the real depth": (lambda s: s.__setitem__("max_depth", 1), "max_depth"),
    "leaf with a right child": (
        lambda s: s["nodes"]["right_child"].__setitem__(
            int(np.flatnonzero(s["nodes"]["left_child"] == -1)[0]), 1), "leaf"),
    # each gate of the C check (src/tree.c) hands these to the Python check
    "max_depth not below node_count": (lambda s: s.__setitem__("max_depth", s["node_count"]),
                                       r"max_depth is \d+, not in \[0, node_count\)"),
    "node_count not an int": (lambda s: s.__setitem__("node_count", float(s["node_count"])),
                              "node_count is"),
    "nodes not 1-d": (lambda s: s.__setitem__("nodes", s["nodes"].reshape(1, -1)),
                      "'nodes' is not a 1-d array of tree nodes"),
    "float feature field": (lambda s: s.__setitem__("nodes", _retyped(s["nodes"], "feature",
                                                                      np.float64)),
                            "the node field 'feature' is not a signed integer"),
}


def _retyped(nodes, field, dtype):
    """nodes with `field` of another dtype, the values kept"""
    dt = np.dtype([(f, dtype if f == field else nodes.dtype[f]) for f in nodes.dtype.names])
    out = np.empty(nodes.shape, dt)
    for f in nodes.dtype.names:
        out[f] = nodes[f]
    return out


def test_tree_roundtrips(dtc, tmp_path, keys):
    _roundtrips(dtc, tmp_path, lambda m: m.predict_proba(X))
    loaded = firkin.loads(firkin.dumps(dtc))
    np.testing.assert_array_equal(loaded.feature_importances_, dtc.feature_importances_)
    np.testing.assert_array_equal(loaded.decision_path(X).toarray(), dtc.decision_path(X).toarray())
    # the checked class never leaves the load: the tree is sklearn's own Tree
    assert type(loaded.tree_) is type(dtc.tree_)
    assert type(pickle.loads(pickle.dumps(loaded.tree_))) is type(dtc.tree_)


def _depths(tree):
    """Every node's depth (the root's is 0), by walking down from the root."""
    depth = np.full(tree.node_count, -1)
    depth[0] = 0
    for i in range(tree.node_count):  # children come after their parent
        if tree.children_left[i] != -1:
            depth[tree.children_left[i]] = depth[tree.children_right[i]] = depth[i] + 1
    return depth


@pytest.mark.parametrize("max_depth", [None, 1, 3, 12])
def test_tree_links_measures_the_depth(max_depth):
    # the depth check rests on the link pass's depth: it must be the tree's
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.tree import DecisionTreeClassifier

    models = [DecisionTreeClassifier(max_depth=max_depth, random_state=0).fit(X, Y),
              *RandomForestRegressor(n_estimators=5, max_depth=max_depth,
                                     random_state=0).fit(X, X[:, 0]).estimators_]
    for model in models:
        tree = model.tree_
        nodes = tree.__getstate__()["nodes"]
        got = firkin._core.tree_links(nodes["left_child"], nodes["right_child"],
                                      nodes["feature"], tree.n_features)
        assert got == _depths(tree).max() == tree.max_depth
    leaf = np.array([-1], np.int64)
    assert firkin._core.tree_links(leaf, leaf, np.array([-2], np.int64), 1) == 0


@pytest.mark.parametrize("case", sorted(TREE_CASES))
def test_tree_state_refused(case, dtc, tmp_path, keys):
    change, match = TREE_CASES[case]
    _refused(_with_tree(dtc, change), tmp_path, match)


#: the node fields that are intp: int32 in a tree pickled on a 32-bit platform
_INTP_FIELDS = ("left_child", "right_child", "feature", "n_node_samples")


def _links32(change=None):
    """A tree's nodes as a 32-bit platform pickles them (scikit-learn converts
    them when it loads them), then `change`: the check reads native int64
    links directly and converts any other integer fields first."""
    def go(state):
        nodes = state["nodes"]
        dt = np.dtype([(f, np.int32 if f in _INTP_FIELDS else nodes.dtype[f])
                       for f in nodes.dtype.names])
        narrow = np.empty(nodes.shape, dt)
        for f in nodes.dtype.names:
            narrow[f] = nodes[f]
        state["nodes"] = narrow
        if change is not None:
            change(state)
    return go


@pytest.mark.parametrize("case", ["left child out of range", "feature out of range",
                                  "cycle to the root", "leaf with a right child"])
def test_tree_state_with_int32_links_refused(case, dtc, tmp_path, keys):
    change, match = TREE_CASES[case]
    _refused(_with_tree(dtc, _links32(change)), tmp_path, match)


def test_tree_with_int32_links_loads(dtc, tmp_path, keys):
    files = _files(_with_tree(dtc, _links32()), tmp_path)
    firkin.set_key(KEY_B)
    for label, path in files:
        loaded = firkin.load(path)
        assert loaded.tree_.__getstate__()["nodes"].dtype == dtc.tree_.__getstate__()["nodes"].dtype
        np.testing.assert_array_equal(loaded.predict_proba(X), dtc.predict_proba(X), err_msg=label)


def test_tree_refusal_is_the_checks_not_a_broken_file(dtc, tmp_path, keys):
    # sklearn itself accepts the state (it only checks dtypes and shapes):
    # the refusal comes from firkin's check, trusted=True loads it (never used)
    files = _refused(_with_tree(dtc, TREE_CASES["feature out of range"][0]), tmp_path, "feature")
    for _, path in files:
        loaded = firkin.load(path, trusted=True)
        assert loaded.tree_.feature.max() == 10**6


def test_tree_constructor_arguments_refused(dtc, tmp_path, keys):
    f, (n_features, n_classes, n_outputs), state = dtc.tree_.__reduce__()
    for args, match in [((0, n_classes, n_outputs), "n_features"),
                        ((n_features, n_classes, 3), "n_classes is not"),
                        ((n_features, n_classes[:0], n_outputs), "n_classes is not"),
                        ((n_features, np.array([0]), 1), "below 1"),
                        ((n_features, n_classes, -1), "n_outputs"),
                        ((n_features, np.array([2**40]), 1), "n_classes holds"),
                        ((n_features, np.array([[3]]), 1), "n_classes is not")]:
        c = copy.copy(dtc)
        vars(c)["tree_"] = _Reduce((f, args, state))
        _refused(c, tmp_path, match)


def test_tree_constructor_arguments_of_other_int_types_load(dtc, tmp_path, keys):
    # the C factory takes Python ints and int64 counts; numpy integers and
    # narrower count arrays are judged (and accepted) by the Python one
    f, (n_features, n_classes, n_outputs), state = dtc.tree_.__reduce__()
    c = copy.copy(dtc)
    vars(c)["tree_"] = _Reduce((f, (np.int64(n_features), n_classes.astype(np.int32),
                                    np.int32(n_outputs)), state))
    files = _files(c, tmp_path)
    firkin.set_key(KEY_B)
    for label, path in files:
        np.testing.assert_array_equal(firkin.load(path).predict_proba(X), dtc.predict_proba(X),
                                      err_msg=label)


def _tree_stream(dtc, *states):
    """Tree(...) then one BUILD per state, by hand (protocol 2: explicit memo keys)."""
    f, args, state = dtc.tree_.__reduce__()
    head = pickle.dumps(_Reduce((f, args)), 2)[:-1]  # GLOBAL Tree, args, REDUCE
    body = b"".join(pickle.dumps(s, 2)[2:-1] + b"b" for s in states)
    return head + body + b"."


def test_tree_state_set_twice_refused(dtc, tmp_path):
    # a second BUILD would copy the new (larger) node array into the buffer
    # the first one sized: a heap overflow inside sklearn's __setstate__
    from sklearn.tree import DecisionTreeClassifier

    small = DecisionTreeClassifier(max_depth=1).fit(X, Y).tree_.__getstate__()
    big = dtc.tree_.__getstate__()
    assert big["node_count"] > small["node_count"]
    stream = _tree_stream(dtc, small, big)
    for label, path in _stream_files(stream, tmp_path):
        with pytest.raises(UntrustedTypesError, match="set twice"):
            firkin.load(path)
    assert firkin.loads(_tree_stream(dtc, big)).node_count == big["node_count"]


def test_tree_without_state_refused(dtc, tmp_path):
    # an empty Tree has no root node: predict would read through a NULL pointer
    for label, path in _stream_files(_tree_stream(dtc), tmp_path):
        with pytest.raises(UntrustedTypesError, match="never set"):
            firkin.load(path)


def test_tree_only_through_its_constructor(dtc):
    # NEWOBJ and copyreg need a class: the checked factory is none
    from firkin import _trust

    f, args, state = dtc.tree_.__reduce__()
    newobj = (b"\x80\x02" + pickle.dumps(f, 2)[2:-1] + pickle.dumps(args, 2)[2:-1] + b"\x81"
              + pickle.dumps(state, 2)[2:-1] + b"b.")
    with pytest.raises(firkin.FormatError, match="NEWOBJ"):
        firkin.loads(newobj)
    factory = _trust.SafeUnpickler(io.BytesIO(b".")).find_class("sklearn.tree._tree", "Tree")
    with pytest.raises(UntrustedTypesError, match="only while loading"):
        factory(*args)


# ---------------------------------------------------------------- forests, boosting

def test_forest_roundtrips_and_tree_feature_count_checked(tmp_path, keys):
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    rf = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, Y)
    _roundtrips(rf, tmp_path / "a", lambda m: m.predict_proba(X))
    # a forest hands X to its trees unchecked: a tree split on more features
    # than the forest checks X against reads past each row
    wide = DecisionTreeClassifier(random_state=0).fit(np.c_[X, X, X], Y)
    bad = copy.copy(rf)
    bad.estimators_ = [wide] + rf.estimators_[1:]
    _refused(bad, tmp_path / "b", "splits on 15 features")
    gb = GradientBoostingClassifier(n_estimators=3, random_state=0).fit(X, Y)
    _roundtrips(gb, tmp_path / "c", lambda m: m.predict_proba(X))
    bad = copy.copy(gb)
    bad.n_trees_per_iteration_ = 2  # predict_stages writes K columns into a narrower array
    _refused(bad, tmp_path / "d", "n_trees_per_iteration_")


def _gb_column_cases():
    """Gradient boosting adds tree (i, j) into column j of its init
    estimator's raw prediction, in compiled code without bounds checks: trees
    of two columns over a binary loss (whose prediction has one) wrote past
    the array on scikit-learn 1.9, where the trees' shape agreed with
    n_trees_per_iteration_."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    def widened(gb, k):
        # k columns of trees, with the count scikit-learn derives K from agreeing
        more = {"n_trees_per_iteration_": k} if "n_trees_per_iteration_" in vars(gb) else {"n_classes_": k}
        return _tampered(gb, estimators_=np.repeat(gb.estimators_[:, :1], k, axis=1), **more)

    binary = GradientBoostingClassifier(n_estimators=3, random_state=0).fit(X, Y > 0)
    multi = GradientBoostingClassifier(n_estimators=3, random_state=0).fit(X, Y)
    reg = GradientBoostingRegressor(n_estimators=3, random_state=0).fit(X, X[:, 0])
    narrow = DummyClassifier(strategy="prior").fit(X[:10], Y[:10] > 0)
    cases = {
        "binary loss, three columns of trees": (_tampered(widened(binary, 3), classes_=np.arange(3)),
                                                 "not a multiclass loss of 3"),
        "multiclass, init of two columns": (_tampered(multi, init_=narrow),
                                            "does not predict the 3 columns"),
        "classes fewer than the columns": (_tampered(multi, classes_=np.arange(2)),
                                           "not one per class"),
    }
    if "n_trees_per_iteration_" in vars(binary):  # scikit-learn >= 1.3: K is its own attribute
        cases["binary loss, two columns of trees"] = (widened(binary, 2), "not a multiclass loss of 2")
        cases["regressor, two columns of trees"] = (widened(reg, 2), "a regressor has one")
    return cases


def test_gradient_boosting_columns_checked(tmp_path, keys):
    _each_refused(_gb_column_cases(), tmp_path)


def test_gradient_boosting_with_an_init_firkin_cannot_check(tmp_path, keys):
    """A multiclass gradient boosting with an init estimator of the user's
    (its predictions are what the trees are added into) is refused, and the
    refusal says firkin cannot check it rather than that the file was
    crafted; trusted=True loads it."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    gb = GradientBoostingClassifier(n_estimators=3, init=LogisticRegression(), random_state=0).fit(X, Y)
    files = _files(gb, tmp_path)
    firkin.set_key(KEY_B)
    for label, path in files:
        with pytest.raises(UntrustedTypesError, match="init_ is a LogisticRegression") as info:
            firkin.load(path)
        assert "crafted" not in str(info.value) and "trusted=True" in str(info.value), label
        np.testing.assert_array_equal(firkin.load(path, trusted=True).predict(X), gb.predict(X))


def test_gradient_boosting_roundtrips(tmp_path, keys):
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    for i, (model, y) in enumerate((
            (GradientBoostingClassifier(n_estimators=3, random_state=0), Y),
            (GradientBoostingClassifier(n_estimators=3, init="zero", random_state=0), Y),
            (GradientBoostingClassifier(n_estimators=3, random_state=0), Y > 0),
            (GradientBoostingRegressor(n_estimators=3, random_state=0), X[:, 0]))):
        d = tmp_path / f"m{i}"
        d.mkdir()
        _roundtrips(model.fit(X, y), d, lambda m: m.predict(X))


@pytest.fixture(autouse=True)
def _dirs(tmp_path):
    for p in ("a", "b", "c", "d", "e", "f"):
        (tmp_path / p).mkdir()


def test_decision_tree_feature_count_checked(dtc, tmp_path, keys):
    bad = copy.copy(dtc)
    bad.n_features_in_ = 2  # predict checks X against 2 columns, the tree reads 5
    _refused(bad, tmp_path, "n_features_in_ is 2")


def test_isolation_forest(tmp_path, keys):
    from sklearn.ensemble import IsolationForest

    iso = IsolationForest(n_estimators=4, max_features=3, random_state=0).fit(X)
    _roundtrips(iso, tmp_path / "a", lambda m: m.score_samples(X))
    bad = copy.copy(iso)
    bad.estimators_features_ = [np.arange(2)] + iso.estimators_features_[1:]
    _refused(bad, tmp_path / "b", "splits on 3 features, not the 2")


# ---------------------------------------------------------------- neighbour trees

def _with_binary_tree(est, change):
    tree = est._tree
    state = [v.copy() if isinstance(v, np.ndarray) else v for v in tree.__getstate__()]
    change(state)
    c = copy.copy(est)
    vars(c)["_tree"] = _Reduce(tree.__reduce__()[:2] + (tuple(state),))
    return c


def _idx(f):
    return lambda s: f(s[1])


def _nodes(f):
    return lambda s: f(s[2])


BINARY_CASES = {
    "index out of range": (_idx(lambda a: a.__setitem__(0, 10**6)), "permutation"),
    "negative index": (_idx(lambda a: a.__setitem__(3, -1)), "permutation"),
    "repeated index": (_idx(lambda a: a.__setitem__(0, a[1])), "permutation"),
    "short index": (lambda s: s.__setitem__(1, s[1][:-1]), "idx_array has"),
    "leaf range past the data": (_nodes(lambda a: a["idx_end"].__setitem__(2, 10**6)),
                                 "children of node 0"),
    "overlapping children": (_nodes(lambda a: a["idx_start"].__setitem__(2, 0)), "children"),
    "root range": (_nodes(lambda a: a["idx_end"].__setitem__(0, 5)), "root"),
    "inner node on the last level": (_nodes(lambda a: a["is_leaf"].__setitem__(slice(None), 0)),
                                     "last level"),
    "n_nodes": (lambda s: s.__setitem__(6, s[6] + 2), "n_levels/n_nodes"),
    "leaf_size": (lambda s: s.__setitem__(4, 0), "leaf_size"),
    "node_bounds": (lambda s: s.__setitem__(3, s[3][:, :-1]), "node_bounds"),
    "sample_weight": (lambda s: s.__setitem__(12, np.ones(3)), "sample_weight"),
}


@pytest.fixture(scope="module")
def knn():
    from sklearn.neighbors import KNeighborsClassifier

    return {alg: KNeighborsClassifier(algorithm=alg, leaf_size=4).fit(X, Y)
            for alg in ("kd_tree", "ball_tree")}


def test_neighbour_trees_roundtrip(knn, tmp_path, keys):
    from sklearn.neighbors import KernelDensity, LocalOutlierFactor

    _roundtrips(knn["kd_tree"], tmp_path / "a", lambda m: m.predict_proba(X))
    _roundtrips(knn["ball_tree"], tmp_path / "b", lambda m: m.kneighbors(X)[1])
    _roundtrips(KernelDensity(algorithm="kd_tree").fit(X), tmp_path / "c",
                lambda m: m.score_samples(X))
    lof = LocalOutlierFactor(novelty=True, algorithm="ball_tree").fit(X)
    _roundtrips(lof, tmp_path / "d", lambda m: m.score_samples(X))


@pytest.mark.parametrize("case", sorted(BINARY_CASES))
@pytest.mark.parametrize("alg", ["kd_tree", "ball_tree"])
def test_neighbour_tree_state_refused(case, alg, knn, tmp_path, keys):
    change, match = BINARY_CASES[case]
    _refused(_with_binary_tree(knn[alg], change), tmp_path, match)


def test_neighbour_tree_other_classes_refused(knn, tmp_path, keys):
    from sklearn.metrics._dist_metrics import DistanceMetric

    # a metric firkin does not check (Minkowski with weights indexes them by feature)
    metric = DistanceMetric.get_metric("minkowski", p=3, w=np.ones(2))
    name = f"sklearn.metrics._dist_metrics.{type(metric).__qualname__}"  # ...64 from 1.3
    bad = _with_binary_tree(knn["kd_tree"], lambda s: s.__setitem__(11, metric))
    for label, path in _files(bad, tmp_path):
        firkin.set_key(KEY_B)
        with pytest.raises(UntrustedTypesError, match=name):
            firkin.load(path)
        # trusting the name does not trust a tree built with it
        with pytest.raises(UntrustedTypesError, match="distance metric"):
            firkin.load(path, trusted=[name])


def test_neighbour_tree_newobj_only_rebuilds_its_tree(knn):
    tree = knn["kd_tree"]._tree
    new_obj, _, state = tree.__reduce__()
    from sklearn.neighbors import BallTree

    stream = pickle.dumps(_Reduce((new_obj, (BallTree,), state)), 2)
    with pytest.raises(UntrustedTypesError, match="newObj"):
        firkin.loads(stream)


# ---------------------------------------------------------------- histogram gradient boosting

@pytest.fixture(scope="module")
def hgb():
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=4, random_state=0).fit(X, Y)


def _with_predictor(est, change):
    c = copy.copy(est)
    c._predictors = [[copy.copy(p) for p in row] for row in est._predictors]
    p = c._predictors[0][0]
    p.nodes = p.nodes.copy()
    change(p)
    return c


def _split0(p):
    return int(np.flatnonzero(p.nodes["is_leaf"] == 0)[0])


HGB_CASES = {
    "feature out of range": (lambda p: p.nodes["feature_idx"].__setitem__(_split0(p), 77),
                             r"feature outside \[0, 5\)"),
    "child out of range": (lambda p: p.nodes["left"].__setitem__(_split0(p), 10**6), "children"),
    "cycle": (lambda p: p.nodes["right"].__setitem__(_split0(p), 0), "children"),
    "categorical split without a bitset": (
        lambda p: p.nodes["is_categorical"].__setitem__(_split0(p), 1), "categorical"),
}


def test_hist_gradient_boosting_roundtrips(hgb, tmp_path, keys):
    _roundtrips(hgb, tmp_path, lambda m: m.predict_proba(X))


@pytest.mark.parametrize("case", sorted(HGB_CASES))
def test_hist_gradient_boosting_refused(case, hgb, tmp_path, keys):
    change, match = HGB_CASES[case]
    _refused(_with_predictor(hgb, change), tmp_path, match)


def test_hist_gradient_boosting_bin_mapper_refused(hgb, tmp_path, keys):
    bad = copy.copy(hgb)
    bad._bin_mapper = copy.copy(hgb._bin_mapper)
    bad._bin_mapper.bin_thresholds_ = hgb._bin_mapper.bin_thresholds_[:2]
    _refused(bad, tmp_path, "bin_thresholds_")


# ---------------------------------------------------------------- libsvm

@pytest.fixture(scope="module")
def svms():
    import scipy.sparse as sp
    from sklearn.svm import SVC, SVR, OneClassSVM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # probability= is deprecated
        proba = SVC(probability=True, random_state=0).fit(X, Y)
    return {"svc": SVC().fit(X, Y), "proba": proba, "sparse": SVC().fit(sp.csr_matrix(X), Y),
            "svr": SVR().fit(X, X[:, 0]), "ocsvm": OneClassSVM().fit(X),
            "precomputed": SVC(kernel="precomputed").fit(X @ X.T, Y)}


def _with_attrs(est, **attrs):
    c = copy.copy(est)
    vars(c).update(attrs)
    return c


def test_svm_roundtrips(svms, tmp_path, keys):
    import scipy.sparse as sp

    for i, (label, m) in enumerate(sorted(svms.items())):
        d = tmp_path / label
        d.mkdir()
        data = X @ X.T if label == "precomputed" else sp.csr_matrix(X) if label == "sparse" else X
        out = (lambda e, a: e.predict_proba(a)) if label == "proba" else (lambda e, a: e.predict(a))
        if label == "proba":
            # libsvm's predict_proba takes writable arrays: every array of a file
            # memory-mapped read-only is read-only (joblib's too), so it refuses
            # them as with joblib.load(mmap_mode="r"); copy-on-write maps work
            _roundtrips(m, d, out, data, mapped="c")
            got = _mapped_like_joblib(m, d / "m.firkin", out, data, mode="r")
            if got is not None:  # scikit-learn versions that take read-only arrays
                np.testing.assert_array_equal(got, out(m, data))
        else:
            _roundtrips(m, d, out, data)


def test_svm_state_refused(svms, tmp_path, keys):
    svc, proba, sparse = svms["svc"], svms["proba"], svms["sparse"]
    cases = [
        (svc, {"_n_support": svc._n_support + 5}, "_n_support counts"),
        (svc, {"_n_support": svc._n_support[:1]}, "at least 2"),
        (svc, {"_intercept_": svc._intercept_[:1]}, "_intercept_"),
        (svc, {"support_": svc.support_ + 10**6}, "support_ indexes"),
        (svc, {"support_vectors_": svc.support_vectors_[:, :2].copy()}, "support_vectors_"),
        (svc, {"_dual_coef_": svc._dual_coef_[:1].copy()}, "_dual_coef_"),
        (proba, {"_probA": proba._probA[:1]}, "_probA"),
        (svc, {"_probA": np.empty(0), "probability": True}, "probability is set"),
        (sparse, {"_dual_coef_": sparse._dual_coef_[:, :3]}, "_dual_coef_"),
        (svms["precomputed"], {"support_": svms["precomputed"].support_ + 200}, "support_"),
        (svms["svr"], {"_intercept_": np.empty(0)}, "_intercept_"),
    ]
    for i, (est, attrs, match) in enumerate(cases):
        d = tmp_path / f"case{i}"
        d.mkdir()
        _refused(_with_attrs(est, **attrs), d, match)


def test_svm_sparse_structure_refused(svms, tmp_path, keys):
    sv = copy.copy(svms["sparse"].support_vectors_)
    sv.indptr = sv.indptr.copy()
    sv.indptr[3] = 10**6  # libsvm slices the data with it
    _refused(_with_attrs(svms["sparse"], support_vectors_=sv), tmp_path, "sparse structure")


# ---------------------------------------------------------------- trusted and signed files

def test_only_trusted_skips_the_checks(dtc, tmp_path, keys, monkeypatch):
    # the signature is consulted only for files the allowlist refuses: checking
    # an allowlisted file's compiled state costs less than verifying its
    # signature would, so your own files are checked too
    from firkin import _trust

    # the checked Tree factory (src/tree.c) is what the default policy hands out
    key = ("sklearn.tree._tree", "Tree")
    guard = _trust.REPLACEMENTS[key]
    calls = []
    monkeypatch.setitem(_trust.REPLACEMENTS, key, lambda *a: calls.append(a) or guard(*a))
    p = tmp_path / "own.firkin"
    firkin.dump(dtc, p)
    firkin.load(p, trusted=True)
    assert calls == []
    firkin.load(p)  # signed with the reader's own key (A)
    assert len(calls) == 1
    firkin.set_key(KEY_B)
    firkin.load(p)
    assert len(calls) == 2


# ---------------------------------------------------------------- stored paths

def test_stored_cache_paths_dropped(tmp_path, keys):
    from sklearn.cluster import OPTICS, AgglomerativeClustering, FeatureAgglomeration
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    cache = str(tmp_path / "attacker-chosen")
    objs = {"pipeline": Pipeline([("s", StandardScaler())]).fit(X).set_params(memory=cache),
            "agglomerative": AgglomerativeClustering(memory=cache),
            "feature agglomeration": FeatureAgglomeration(memory=cache),
            "optics": OPTICS(memory=cache)}
    for label, obj in objs.items():
        d = tmp_path / label.replace(" ", "_")
        d.mkdir()
        files = _files({"nested": [obj]}, d)
        firkin.set_key(KEY_B)
        for container, path in files:
            with pytest.warns(firkin.StoredPathWarning, match="memory was .*attacker-chosen"):
                loaded = firkin.load(path)
            assert loaded["nested"][0].memory is None, (label, container)
            with warnings.catch_warnings():
                warnings.simplefilter("error", firkin.StoredPathWarning)
                assert firkin.load(path, trusted=True)["nested"][0].memory == cache
        firkin.set_key(KEY_A)
        with pytest.warns(firkin.StoredPathWarning):  # your own file too: trusted=True keeps it
            assert firkin.load(files[0][1])["nested"][0].memory is None
    assert not (tmp_path / "attacker-chosen").exists()


def test_worker_counts_brought_down_to_the_cores(tmp_path, keys):
    # a FeatureUnion whose n_jobs said 100,000 started loky processes at 14
    # a second in transform (load average 300) until it was killed
    import os

    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from sklearn.preprocessing import StandardScaler

    cores = os.cpu_count()
    # never used here with those counts: only the loaded copies are
    union_fit = FeatureUnion([("a", StandardScaler()), ("b", StandardScaler())]).fit(X)
    knn_fit = KNeighborsClassifier(algorithm="kd_tree").fit(X, Y)
    union = _with_attrs(union_fit, n_jobs=10**5)
    knn = _with_attrs(knn_fit, n_jobs=np.int64(10**5))
    forest = _with_attrs(RandomForestClassifier(3, random_state=0).fit(X, Y), n_jobs=1e12)
    kept = {"all cores": KNeighborsClassifier(n_jobs=-1).fit(X, Y),
            "these cores": KNeighborsClassifier(n_jobs=cores).fit(X, Y),
            "one": KNeighborsClassifier().fit(X, Y)}
    obj = {"union": union, "nested": [make_pipeline(knn)], "forest": forest, **kept}
    files = _files(obj, tmp_path)
    firkin.set_key(KEY_B)
    for container, path in files:
        with pytest.warns(firkin.ParallelismWarning) as record:
            loaded = firkin.load(path)
        said = sorted(str(w.message).split(": ", 1)[1].split(".n_jobs")[0] for w in record)
        assert said == ["FeatureUnion", "KNeighborsClassifier", "RandomForestClassifier"], container
        assert f"down to {cores}" in str(record[0].message)
        assert (loaded["union"].n_jobs, loaded["nested"][0][-1].n_jobs, loaded["forest"].n_jobs) == (
            cores, cores, cores), container
        assert [loaded[k].n_jobs for k in kept] == [-1, cores, None]
        np.testing.assert_array_equal(loaded["union"].transform(X), union_fit.transform(X))
        np.testing.assert_array_equal(loaded["nested"][0].predict(X), knn_fit.predict(X))
        with warnings.catch_warnings():
            warnings.simplefilter("error", firkin.ParallelismWarning)
            assert firkin.load(path, trusted=True)["union"].n_jobs == 10**5


def test_every_estimator_taking_n_jobs_is_bounded():
    import inspect

    from sklearn.utils import all_estimators

    from firkin._validate_counts import parallel_check

    taking = [cls for _, cls in all_estimators() if "n_jobs" in inspect.signature(cls).parameters]
    assert len(taking) > 50
    assert [c.__name__ for c in taking if parallel_check(c) is None] == []
    assert parallel_check(dict) is None and parallel_check(np.mean) is None


def test_joblib_memory_is_not_on_the_list(tmp_path):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = Pipeline([("s", StandardScaler())], memory=joblib.Memory(str(tmp_path / "c"), verbose=0))
    with pytest.raises(UntrustedTypesError, match="joblib.memory.Memory"):
        firkin.loads(pickle.dumps(pipe))


# ---------------------------------------------------------------- scipy

def _sparse_cases():
    import scipy.sparse as sp

    def m(fmt, kind="matrix"):
        x = sp.random(6, 5, density=0.5, format=fmt, random_state=0)
        # SciPy 1.8-1.10 define the sparse arrays in scipy.sparse._arrays
        return x if kind == "matrix" else getattr(sp, f"{fmt}_array")(x)

    def with_attr(x, attr, change):
        x = x.copy()
        value = getattr(x, attr)
        value = value.copy() if hasattr(value, "copy") else value
        setattr(x, attr, change(value))
        return x

    def put(a, i, v):
        a[i] = v
        return a

    def dok_outside(x):
        f, (cls, base, items), state = x.__reduce_ex__(5)[:3]
        items = dict(items)
        items[(np.int32(60), np.int32(1))] = 1.0  # scipy refuses to set it
        return _Reduce((f, (cls, base, items), dict(state, _dict=items)))

    def falling_to_empty(x):
        # no entries (the index pointer ends at 0) and a pointer that rises
        # and falls: check_format's full check runs only on matrices with
        # entries, and toarray then read 16 entries of empty arrays (a
        # segfault, found by tests/test_redteam.py's campaign on a csc matrix)
        x = x.copy()
        ptr = np.zeros_like(x.indptr)
        ptr[len(ptr) // 2] = 3
        x.indptr, x.indices = ptr, x.indices[:0].copy()
        x.data = x.data[:0].copy()
        return x

    def wrapping_last(x):
        # the last pointer at the index type's minimum: check_format's
        # np.diff wraps it around to a rise (found by the campaign too)
        x = x.copy()
        ptr = x.indptr.copy()
        ptr[-1] = np.iinfo(ptr.dtype).min
        x.indptr = ptr
        return x

    def lil_outside(x):
        x = x.copy()
        x.rows[0], x.data[0] = [99], [1.0]
        return x

    cases = {}
    for kind in ("matrix", "array"):
        cases.update({
            f"csr indptr past the data ({kind})": (
                with_attr(m("csr", kind), "indptr", lambda a: put(a, 2, 10**6)), "sparse structure"),
            f"csr column outside the shape ({kind})": (
                with_attr(m("csr", kind), "indices", lambda a: put(a, 0, 50)), "sparse structure"),
            f"csc row index negative ({kind})": (
                with_attr(m("csc", kind), "indices", lambda a: put(a, 0, -1)), "sparse structure"),
            f"bsr indptr decreasing ({kind})": (
                with_attr(m("bsr", kind), "indptr", lambda a: put(a, 1, a[-1] + 1)),
                "sparse structure"),
            **{f"{fmt} indptr rising and falling to 0 ({kind})": (
                falling_to_empty(m(fmt, kind)), "non-decreasing") for fmt in ("csr", "csc", "bsr")},
            **{f"{fmt} last indptr at the index minimum ({kind})": (
                wrapping_last(m(fmt, kind)), "non-decreasing") for fmt in ("csr", "csc", "bsr")},
            f"coo row outside the shape ({kind})": (
                with_attr(m("coo", kind), "coords", lambda c: (put(c[0].copy(), 0, 6), c[1]))
                if "coords" in vars(m("coo", kind))  # SciPy < 1.13 keeps row and col
                else with_attr(m("coo", kind), "row", lambda a: put(a.copy(), 0, 6)),
                "axis-0 indices"),
            f"dia offsets and data disagree ({kind})": (
                with_attr(m("dia", kind), "offsets", lambda a: a[:-1]), "one row per offset"),
            f"dok entry outside the shape ({kind})": (dok_outside(m("dok", kind)), "outside its shape"),
            f"lil column outside the shape ({kind})": (lil_outside(m("lil", kind)), "outside its shape"),
        })
    return cases


def test_sparse_containers_roundtrip(tmp_path, keys):
    import scipy.sparse as sp

    for i, fmt in enumerate(("csr", "csc", "bsr", "coo", "dia", "dok", "lil")):
        x = sp.random(6, 5, density=0.5, format=fmt, random_state=0)
        d = tmp_path / fmt
        d.mkdir()
        _roundtrips(x, d, lambda a: a.toarray())


def _each_refused(cases, tmp_path, wrap=lambda bad: bad, phrase="compiled code"):
    """_refused for each {label: (corrupted object, match)}, each in a
    directory of its own; the corrupted copies are only pickled, never used."""
    for i, (label, (bad, match)) in enumerate(sorted(cases.items())):
        d = tmp_path / f"case{i}"
        d.mkdir()
        _refused(wrap(bad), d, match, phrase)


def test_sparse_state_refused(tmp_path, keys):
    _each_refused(_sparse_cases(), tmp_path, lambda bad: {"X": bad})


def test_sparse_sortedness_claims_are_not_trusted(tmp_path, keys):
    import scipy.sparse as sp

    x = sp.random(6, 5, density=0.5, format="csr", random_state=0)
    x.indices = x.indices.copy()
    start, end = x.indptr[0], x.indptr[1]
    x.indices[start:end] = x.indices[start:end][::-1].copy()  # unsorted, still valid
    x._has_sorted_indices = True  # a false claim
    data = firkin.dumps(x)
    firkin.set_key(KEY_B)
    loaded = firkin.loads(data)
    assert "_has_sorted_indices" not in vars(loaded)
    assert loaded.has_sorted_indices == (end - start < 2)


# ---------------------------------------------------------------- calls of what the load checks later
# The checks above run when the load is done, on the object it returns. A
# stream that calls a trusted function or a sparse class with an object of
# its own hands that object to compiled code before then: each stream below
# segfaulted a default load. Pickles never make these calls; the scanner
# refuses them (firkin._trust.NEVER_CALLED, NEVER_CALLED_WITH_ARGS).


def _call(fn, *args):
    """What pickles as fn(*args) (_Reduce)."""
    return _Reduce((fn, args))


def _outside_csr():
    import scipy.sparse as sp

    x = sp.random(50, 50, density=0.2, format="csr", random_state=0)
    x.indices = np.full_like(x.indices, 10**7)
    return x


def _outside_coo():
    import scipy.sparse as sp

    x = sp.coo_matrix(sp.random(50, 50, density=0.2, random_state=0))
    x.row = np.full_like(x.row, 10**7)
    return x


def _call_streams():
    import copyreg

    import scipy.sparse as sp
    from sklearn.cluster._kmeans import _kmeans_single_lloyd
    from sklearn.metrics import mutual_info_score

    X50 = np.random.RandomState(0).rand(2000, 50)
    narrow = np.random.RandomState(1).rand(3, 2)  # centres of 2 features for 50-feature data
    csr, coo = _outside_csr(), _outside_coo()
    leaping = sp.random(50, 50, density=0.2, format="csr", random_state=0)
    leaping.indptr = leaping.indptr.copy()
    leaping.indptr[1] = 10**7
    mark, stop = b"(", b"."

    def body(obj):  # obj's pickle without PROTO and STOP, to splice
        return pickle.dumps(obj, 2)[2:-1]

    glob = b"cscipy.sparse._csr\ncsr_matrix\n"
    return {
        "numpy.mean": (pickle.dumps(_call(np.mean, csr, 1), 5), "numpy.mean called"),
        "k-means kernel": (pickle.dumps(_call(_kmeans_single_lloyd, X50, np.ones(2000), narrow, 5,
                                              False, 1e-4, 1), 5), "_kmeans_single_lloyd called"),
        "metric": (pickle.dumps(_call(mutual_info_score, csr, csr), 5), "score called"),
        "csr_matrix(coo)": (pickle.dumps(_call(sp.csr_matrix, coo), 5), "csr_matrix called with"),
        "csc_matrix(csr)": (pickle.dumps(_call(sp.csc_matrix, csr), 5), "csc_matrix called with"),
        "OBJ csr_matrix(coo)": (b"\x80\x02" + mark + glob + body(coo) + b"o" + stop,
                                "csr_matrix called with"),
        "INST csr_matrix(coo)": (b"\x80\x02" + mark + body(coo) + b"i" + glob[1:] + stop,
                                 "csr_matrix called with"),
        "_reconstructor(csr, csr, coo)": (
            pickle.dumps(_call(copyreg._reconstructor, sp.csr_matrix, sp.csr_matrix, coo), 5),
            "csr_matrix called with"),
        "a vectorize called": (pickle.dumps(_call(np.vectorize(sp.csr_matrix), np.array(
            [coo, coo], dtype=object)), 5), "a call of a value the stream built"),
        # trusted callees that print or iterate what they are handed: str() of a
        # matrix whose index pointer leaps runs its __str__, which expands the
        # pointer in compiled code
        "str(csr)": (pickle.dumps(_call(str, leaping), 5), "sparse matrix handed to a call"),
        "numpy.str_(csr)": (pickle.dumps(_call(np.str_, leaping), 5), "sparse matrix handed"),
        "list(csr)": (pickle.dumps(_call(list, leaping), 5), "sparse matrix handed"),
        "__newobj__(str, csr)": (b"\x80\x02ccopyreg\n__newobj__\n" + b"cbuiltins\nstr\n"
                                 + body(leaping) + b"\x86R" + stop, "sparse matrix handed"),
        "__newobj_ex__(str, (), {object: csr})": (
            b"\x80\x02ccopyreg\n__newobj_ex__\n" + b"cbuiltins\nstr\n" + b")}"
            + b"X\x06\x00\x00\x00object" + body(leaping) + b"s\x87R" + stop, "sparse matrix handed"),
        "NEWOBJ str(csr)": (b"\x80\x02cbuiltins\nstr\n" + body(leaping) + b"\x85\x81" + stop,
                            "sparse matrix handed"),
        "OBJ str(csr)": (b"\x80\x02" + mark + b"cbuiltins\nstr\n" + body(leaping) + b"o" + stop,
                         "sparse matrix handed"),
        "str(*tuple([csr]))": (b"\x80\x02cbuiltins\nstr\n" + body(_call(tuple, [leaping]))
                               + b"R" + stop, "arguments that a call made"),
    }


def test_calls_of_unchecked_objects_refused(tmp_path):
    from firkin import _trust

    for i, (label, (stream, match)) in enumerate(sorted(_call_streams().items())):
        d = tmp_path / f"c{i}"
        d.mkdir()
        assert match in "\n".join(_trust.untrusted_types(stream)), label
        for container, path in _stream_files(stream, d):
            with pytest.raises(UntrustedTypesError, match=match):
                firkin.load(path)
    # the unpickler refuses the copyreg route too, with the scanner out of the way
    from firkin._trust import make_unpickler

    stream = _call_streams()["_reconstructor(csr, csr, coo)"][0]
    with pytest.raises(UntrustedTypesError, match="copyreg._reconstructor with the base "
                       "scipy.sparse._csr.csr_matrix"):
        from firkin import _amplify

        with _amplify.active(_amplify.Budget(1 << 30, "<data>")):
            make_unpickler(pickle.Unpickler)(io.BytesIO(stream)).load()


@pytest.mark.parametrize("label", ["k-means kernel", "csr_matrix(coo)", "INST csr_matrix(coo)",
                                   "str(csr)", "str(*tuple([csr]))"])
def test_calls_of_unchecked_objects_crash_plain_pickle(label, tmp_path):
    # control: each stream is a real exploit (plain pickle.load segfaults)
    import subprocess
    import sys

    path = tmp_path / "s.pkl"
    path.write_bytes(_call_streams()[label][0])
    code = f"import pickle; pickle.loads(open({str(path)!r}, 'rb').read())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert run.returncode < 0, (label, run.returncode, run.stderr[-300:])


# ---------------------------------------------------------------- column maps of encoders and vectorizers
# Their transform builds a sparse matrix from the columns their fitted state
# gives, as wide as their state says, and SciPy's kernels index with those
# columns unchecked. Each state below crashed the process when the model was
# used (OneHotEncoder's heap corrupted, the others segfaulted on toarray or a
# product; the hashers' n_features of 0 divided by zero), on scikit-learn
# 1.2 and 1.9 alike.

CATS = np.array([["a", "x"], ["b", "y"], ["c", "z"], ["a", "y"], ["a", "x"], ["b", "x"]])
DOCS = ["the cat sat", "the dog ran far", "a cat and a dog", "far away"]
ROWS = [{"a": 1.0, "b": 2.0}, {"b": 1.0, "c": 3.0}]


def _tampered(est, **attrs):
    bad = copy.copy(est)
    vars(bad).update(attrs)
    return bad


def _encoder_cases():
    from sklearn.feature_extraction import DictVectorizer, FeatureHasher
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer, TfidfVectorizer
    from sklearn.preprocessing import OneHotEncoder

    ohe = OneHotEncoder(handle_unknown="ignore").fit(CATS)
    dropped = OneHotEncoder(drop="first").fit(CATS)
    rare = OneHotEncoder(min_frequency=2, handle_unknown="infrequent_if_exist").fit(CATS)
    maps = [None if m is None else m.copy() for m in rare._default_to_infrequent_mappings]
    maps[0][0] = 40
    drop_neg = dropped._drop_idx_after_grouping.copy()
    drop_neg[0] = -5
    cases = {
        "one-hot widths short": (_tampered(ohe, _n_features_outs=[1, 1]), "encodes into 1 columns"),
        "one-hot width past its categories": (_tampered(ohe, _n_features_outs=[3, 10**6]),
                                              "_n_features_outs"),
        "one-hot category past its width": (
            _tampered(ohe, _n_features_outs=[2, 3]), "reach column 2"),
        "one-hot infrequent mapping past the width": (
            _tampered(rare, _default_to_infrequent_mappings=maps), "reach column 40"),
        "one-hot dropped index negative": (
            _tampered(dropped, _drop_idx_after_grouping=drop_neg), "dropped categories"),
    }
    for cls in (CountVectorizer, TfidfVectorizer):
        v = cls().fit(DOCS)
        vocab = dict(v.vocabulary_, far=10**6)
        cases[f"{cls.__name__} term past the vocabulary"] = (_tampered(v, vocabulary_=vocab), "vocabulary_")
        twice = dict(v.vocabulary_, far=v.vocabulary_["the"])
        cases[f"{cls.__name__} two terms in one column"] = (_tampered(v, vocabulary_=twice), "each once")
    for make in (lambda: FeatureHasher(n_features=8), lambda: HashingVectorizer(n_features=8)):
        h = make()
        for n in (0, -3, 2**40):
            cases[f"{type(h).__name__} n_features {n}"] = (_tampered(h, n_features=n), "n_features")
    dv = DictVectorizer().fit(ROWS)
    cases["DictVectorizer feature past its names"] = (
        _tampered(dv, vocabulary_=dict(dv.vocabulary_, c=10**6)), "vocabulary_")
    cases["DictVectorizer names shorter than the vocabulary"] = (
        _tampered(dv, feature_names_=dv.feature_names_[:1]), "vocabulary_")
    return cases


def test_encoder_column_maps_refused(tmp_path, keys):
    _each_refused(_encoder_cases(), tmp_path)


def test_encoders_and_vectorizers_roundtrip(tmp_path, keys):
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer
    from sklearn.preprocessing import MultiLabelBinarizer, OneHotEncoder

    for i, (model, data) in enumerate((
            (OneHotEncoder(handle_unknown="ignore").fit(CATS), CATS),
            (OneHotEncoder(drop="first").fit(CATS), CATS),
            (OneHotEncoder(min_frequency=2, handle_unknown="infrequent_if_exist").fit(CATS), CATS),
            (TfidfVectorizer().fit(DOCS), DOCS),
            (DictVectorizer().fit(ROWS), ROWS),
            (HashingVectorizer(n_features=16), DOCS),
            (MultiLabelBinarizer().fit([[1, 2], [3]]), [[3], [1, 2]]))):
        d = tmp_path / f"m{i}"
        d.mkdir()
        _roundtrips(model, d, lambda m, x: _dense(m.transform(x)), data)


def _dense(x):
    return x.toarray() if hasattr(x, "toarray") else np.asarray(x)


LABELS = np.c_[np.arange(len(X)) % 3 != 1, np.arange(len(X)) % 3 != 0].astype(int)


def _one_vs_rest_cases():
    """A multilabel OneVsRestClassifier's predict builds a sparse matrix
    n_samples tall from the positions in each binary estimator's flattened
    decision_function: an intercept_ of two values (found by an
    attribute-level fuzz) made those positions reach 2n and corrupted the
    heap on scikit-learn 1.2 and 1.9."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsOneClassifier, OneVsRestClassifier, _ConstantPredictor
    from sklearn.svm import SVC

    def tampered(base, i, **attrs):
        bad = copy.copy(base)
        bad.estimators_ = list(base.estimators_)
        bad.estimators_[i] = _tampered(base.estimators_[i], **attrs)
        return bad

    lin = OneVsRestClassifier(LogisticRegression()).fit(X, LABELS)
    svc = OneVsRestClassifier(SVC()).fit(X, LABELS)
    e = lin.estimators_[1]
    two = np.r_[e.intercept_, e.intercept_]
    cases = {
        "intercept of two values": (tampered(lin, 1, intercept_=two), "intercept_ holds 2 values"),
        "coef of two rows": (tampered(lin, 1, coef_=np.vstack([e.coef_, e.coef_])), "not one row"),
        "three classes": (tampered(lin, 0, classes_=np.array([0, 1, 2])), "3 classes"),
        "libsvm of three classes": (tampered(svc, 0, _n_support=np.array([3, 3, 3], dtype=np.int32)),
                                    "libsvm model of 3 classes"),
    }
    # the same flaw behind the wrappers OneVsRestClassifier calls through, and
    # in the models whose decision width their own attributes set
    for label, model, at, match in _one_vs_rest_wrapped():
        bad = copy.deepcopy(model)
        inner = at(bad.estimators_[1])
        inner.intercept_ = np.r_[inner.intercept_, inner.intercept_]
        cases[label] = (bad, match)
    ada, const, gb, hgb = _one_vs_rest_others()
    cases["AdaBoost of three classes"] = (tampered(ada, 1, n_classes_=3), "n_classes_ is 3")
    cases["a constant of three values"] = (tampered(const, 2, y_=np.array([1, 1, 1])),
                                           "constant of 3 values")
    g = gb.estimators_[1]
    cases["boosting of two columns"] = (tampered(gb, 1, estimators_=np.c_[g.estimators_, g.estimators_]),
                                        r"shape \(3, 2\)")
    cases["histogram boosting of two columns"] = (tampered(hgb, 1, n_trees_per_iteration_=2),
                                                  "2 trees per iteration")
    # members whose labels or decisions are combined sample by sample: every
    # one a constant of two values gives two positions per sample
    dummy = _tampered(DummyClassifier(strategy="constant", constant=1).fit(X, LABELS[:, 1]),
                      constant=np.array([1, 1]))
    boosted = copy.deepcopy(ada)
    boosted.estimators_[1].estimators_ = [copy.deepcopy(dummy) for _ in ada.estimators_[1].estimators_]
    cases["AdaBoost of constant dummies"] = (boosted, "constant of 2 values")
    constant = _ConstantPredictor().fit(X, np.array([1, 1]))
    ovo = OneVsRestClassifier(OneVsOneClassifier(LogisticRegression())).fit(X, LABELS)
    ovo.estimators_[1].estimators_ = (constant,)
    cases["one-vs-one over a constant of two values"] = (ovo, "constant of 2 values")
    nested = OneVsRestClassifier(OneVsRestClassifier(LogisticRegression()))
    nested.fit(X, LABELS)
    inner = copy.copy(nested.estimators_[0])
    inner.estimators_ = inner.estimators_ * 2
    cases["a nested one-vs-rest of two labels"] = (tampered(nested, 0, estimators_=inner.estimators_),
                                                   "decides 2 labels")
    return cases


def _one_vs_rest_wrapped():
    """(label, a fitted multilabel OneVsRestClassifier, where its binary
    estimator keeps the linear model it decides with, what a refusal says)"""
    from sklearn.ensemble import BaggingClassifier, StackingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(base):
        return OneVsRestClassifier(base).fit(X, LABELS)

    lr = LogisticRegression()
    return [
        ("a pipeline", fit(make_pipeline(StandardScaler(), lr)), lambda e: e.steps[-1][1],
         r"steps\[-1\]\.intercept_"),
        ("a grid search", fit(GridSearchCV(lr, {"C": [1.0]}, cv=2)), lambda e: e.best_estimator_,
         r"best_estimator_\.intercept_"),
        ("bagging", fit(BaggingClassifier(lr, n_estimators=2, random_state=0)),
         lambda e: e.estimators_[0], r"estimators_\[0\]\.intercept_"),
        ("stacking", fit(StackingClassifier([("lr", lr)], final_estimator=lr, cv=2)),
         lambda e: e.final_estimator_, r"final_estimator_\.intercept_"),
    ]


def _one_vs_rest_combined():
    """Multilabel OneVsRestClassifiers over estimators that combine members
    of several kinds (their labels, decisions, probabilities)."""
    from sklearn.ensemble import RandomForestClassifier, StackingClassifier, VotingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsOneClassifier, OneVsRestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    def members():
        return [("rf", RandomForestClassifier(n_estimators=3, random_state=0)), ("svc", SVC(probability=True)),
                ("knn", KNeighborsClassifier()), ("lr", LogisticRegression())]

    return [OneVsRestClassifier(base).fit(X, LABELS) for base in (
        VotingClassifier(members(), voting="soft"),  # hard voting has no decision a predict could use
        StackingClassifier(members(), final_estimator=LogisticRegression(), cv=2),
        OneVsOneClassifier(SVC()))]


def _one_vs_rest_others():
    from sklearn.ensemble import (
        AdaBoostClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    constant = LABELS.copy()
    constant[:, 1] = 1
    constant = np.c_[constant, np.ones(len(X), dtype=int)]  # the third label always on
    return (OneVsRestClassifier(AdaBoostClassifier(n_estimators=3, random_state=0)).fit(X, LABELS),
            OneVsRestClassifier(LogisticRegression()).fit(X, constant),
            OneVsRestClassifier(GradientBoostingClassifier(n_estimators=3, random_state=0)).fit(X, LABELS),
            OneVsRestClassifier(HistGradientBoostingClassifier(max_iter=3, random_state=0)).fit(X, LABELS))


def test_one_vs_rest_binary_estimators_refused(tmp_path, keys):
    _each_refused(_one_vs_rest_cases(), tmp_path)


def test_one_vs_rest_roundtrips(tmp_path, keys):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import SVC

    models = [OneVsRestClassifier(LogisticRegression()).fit(X, LABELS),
              OneVsRestClassifier(SVC()).fit(X, LABELS),
              OneVsRestClassifier(LogisticRegression()).fit(X, Y)]
    models += [m for _, m, _, _ in _one_vs_rest_wrapped()] + list(_one_vs_rest_others())
    models += _one_vs_rest_combined()
    for i, model in enumerate(models):
        d = tmp_path / f"m{i}"
        d.mkdir()
        _roundtrips(model, d, lambda m: _dense(m.predict(X)))


def test_one_vs_rest_over_regressors(tmp_path, keys):
    """Regressors whose predict gives one row per sample load inside a
    multilabel OneVsRestClassifier; one firkin has no check for is refused,
    and the refusal says that firkin cannot check it (not that the file was
    tampered with)."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import (
        GradientBoostingRegressor,
        HistGradientBoostingRegressor,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LinearRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.svm import SVR

    for i, base in enumerate((LinearRegression(), RandomForestRegressor(n_estimators=2, random_state=0),
                              KNeighborsRegressor(), SVR(), HistGradientBoostingRegressor(max_iter=3),
                              GradientBoostingRegressor(n_estimators=3, random_state=0))):
        d = tmp_path / f"m{i}"
        d.mkdir()
        _roundtrips(OneVsRestClassifier(base).fit(X, LABELS), d, lambda m: _dense(m.predict(X)))
    other = OneVsRestClassifier(TransformedTargetRegressor(LinearRegression())).fit(X, LABELS)
    files = _files(other, tmp_path)
    firkin.set_key(KEY_B)
    for label, path in files:
        with pytest.raises(UntrustedTypesError, match="firkin cannot check its output per sample") as info:
            firkin.load(path)
        assert "TransformedTargetRegressor" in str(info.value), label
        assert "crafted" not in str(info.value), label
        np.testing.assert_array_equal(_dense(firkin.load(path, trusted=True).predict(X)),
                                      _dense(other.predict(X)), label)


def test_one_vs_rest_of_every_kind_of_binary_estimator_loads(tmp_path, keys):
    """Every scikit-learn classifier with a decision_function (the output a
    multilabel predict flattens), and a sample of those without, as the
    binary estimators of a multilabel OneVsRestClassifier: each loads by
    default and predicts as before."""
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC
    from sklearn.utils import all_estimators

    # meta-estimators of several outputs or of their own estimator lists (tested above)
    skip = {"ClassifierChain", "MultiOutputClassifier", "OneVsRestClassifier", "OutputCodeClassifier",
            "StackingClassifier", "VotingClassifier"}
    without = {"RandomForestClassifier", "KNeighborsClassifier", "GaussianNB", "MLPClassifier",
               "CalibratedClassifierCV"}
    wraps = {"SelfTrainingClassifier", "FixedThresholdClassifier", "TunedThresholdClassifierCV",
             "BaggingClassifier", "OneVsOneClassifier"}
    made = []
    for cls_name, cls in all_estimators(type_filter="classifier"):
        if cls_name in skip or not (hasattr(cls, "decision_function") or cls_name in without):
            continue
        if cls_name == "OneVsOneClassifier":
            base = cls(LinearSVC())
        elif cls_name in wraps:
            base = cls(LogisticRegression())  # positional: scikit-learn 1.2 names it base_estimator
        else:
            base = cls()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            made.append(OneVsRestClassifier(base).fit(X, LABELS))
    assert len(made) >= 20, (sklearn.__version__, len(made))
    for i, model in enumerate(made):
        d = tmp_path / f"m{i}"
        d.mkdir()
        _roundtrips(model, d, lambda m: _dense(m.predict(X)))


def test_a_multilabel_binarizer_cache_is_rebuilt_from_its_classes(tmp_path, keys):
    """MultiLabelBinarizer._cached_dict ({label: column}) is a cache of
    classes_' positions: a default load drops it and transform rebuilds it,
    so a column past the width (a segfault when used) never reaches SciPy."""
    from sklearn.preprocessing import MultiLabelBinarizer

    mlb = MultiLabelBinarizer().fit([[1, 2], [3]])
    mlb.transform([[1]])
    bad = _tampered(mlb, _cached_dict={1: 0, 2: 1, 3: 10**6})
    for label, path in _files(bad, tmp_path):
        loaded = firkin.load(path)
        assert loaded._cached_dict is None, label
        np.testing.assert_array_equal(loaded.transform([[3], [1]]), [[0, 0, 1], [1, 0, 0]], label)


def test_bspline_refused(tmp_path, keys):
    from sklearn.preprocessing import SplineTransformer

    st = SplineTransformer(n_knots=4).fit(X)
    _roundtrips(st, tmp_path / "a", lambda m: m.transform(X))
    def tampered(attr, change):
        # the spline's state: plain t and c (SciPy <= 1.16), _t and _c behind
        # properties (1.17), or in the _BSpline it delegates to (>= 1.18)
        spl = copy.copy(st.bsplines_[0])
        holder = spl
        if vars(spl).get("_delegate_to") is not None:
            holder = vars(spl)["_delegate_to"] = copy.copy(vars(spl)["_delegate_to"])
        if isinstance(getattr(type(holder), attr, None), property):
            attr = "_" + attr
        vars(holder)[attr] = change(vars(holder)[attr])
        return spl

    for i, (attr, change, match) in enumerate([
            ("t", lambda t: t[:3].copy(), "knots"),
            ("c", lambda c: c[:2].copy(), "coefficients"),
            ("k", lambda k: -1, "degree"),
            ("axis", lambda a: 5, "axis")]):
        bad = copy.copy(st)
        bad.bsplines_ = [tampered(attr, change)] + st.bsplines_[1:]
        d = tmp_path / f"bspline{i}"
        d.mkdir()
        _refused(bad, d, match)


def test_bspline_from_an_older_scipy_loads_as_pickle_would(tmp_path, keys):
    # a spline written by SciPy <= 1.16 keeps plain t and c; SciPy 1.17 reads
    # _t and _c through properties, so such a spline fails (AttributeError)
    # before any compiled code could use it: it loads as pickle.load loads it
    import scipy.interpolate as si

    if not (isinstance(vars(si.BSpline).get("t"), property) and "_delegate_to" not in
            vars(si.BSpline(np.arange(8.0), np.ones(4), 3))):
        pytest.skip("only SciPy 1.17 keeps a BSpline's knots behind a property")
    spl = si.BSpline(np.arange(8.0), np.ones(4), 3)
    old = copy.copy(spl)
    d = vars(old)
    d["t"], d["c"] = d.pop("_t"), d.pop("_c")  # the SciPy <= 1.16 layout
    firkin.set_key(KEY_A)
    data = firkin.dumps(old)
    firkin.set_key(KEY_B)
    loaded = firkin.loads(data)
    with pytest.raises(AttributeError):
        loaded.t


def test_bspline_from_a_newer_scipy_loads_as_pickle_would(tmp_path, keys):
    # the other way round (found by tools/cross_env.py on Python 3.12 with
    # SciPy 1.13): SciPy 1.17 writes _t and _c; a SciPy that keeps plain t and
    # c fails on such a spline (AttributeError) before any compiled code, so
    # it loads as pickle.load loads it, and a SplineTransformer holding it is
    # not refused as tampered
    import scipy.interpolate as si

    if isinstance(vars(si.BSpline).get("t"), property):
        pytest.skip("only a SciPy that keeps a BSpline's knots in plain attributes (<= 1.16)")
    spl = si.BSpline(np.arange(8.0), np.ones(4), 3)
    new = copy.copy(spl)
    d = vars(new)
    d["_t"], d["_c"] = d.pop("t"), d.pop("c")  # the SciPy 1.17 layout
    firkin.set_key(KEY_A)
    data = firkin.dumps(new)
    firkin.set_key(KEY_B)
    loaded = firkin.loads(data)
    with pytest.raises(AttributeError):
        loaded(0.5)


def test_kmeans(tmp_path, keys):
    import os

    from sklearn.cluster import BisectingKMeans, KMeans, MiniBatchKMeans

    for i, cls in enumerate((KMeans, MiniBatchKMeans, BisectingKMeans)):
        km = cls(n_clusters=3, random_state=0, n_init=1).fit(X)
        d = tmp_path / f"ok{i}"
        d.mkdir()
        _roundtrips(km, d, lambda m: m.predict(X))
        for j, (attrs, match) in enumerate([
                ({"cluster_centers_": km.cluster_centers_[:, :2].copy()}, "cluster_centers_"),
                ({"_n_threads": 0}, "_n_threads")]):
            d = tmp_path / f"bad{i}{j}"
            d.mkdir()
            _refused(_with_attrs(km, **attrs), d, match)
    # an absurd thread count is brought down to this machine's
    km = KMeans(n_clusters=3, random_state=0, n_init=1).fit(X)
    firkin.set_key(KEY_A)
    data = firkin.dumps(_with_attrs(km, _n_threads=10**6))
    firkin.set_key(KEY_B)
    assert firkin.loads(data)._n_threads == min(10**6, os.cpu_count())


def test_bisecting_kmeans_tree(tmp_path, keys):
    from sklearn.cluster import BisectingKMeans

    km = BisectingKMeans(n_clusters=4, random_state=0).fit(X)

    def tree_with(change):
        root = copy.deepcopy(km._bisecting_tree)
        change(root)
        return _with_attrs(km, _bisecting_tree=root)

    def narrow(root):
        root.left.center = root.left.center[:2].copy()

    def cycle(root):
        root.right.left, root.right.right = root, root

    def one_child(root):
        root.right = None

    for i, (change, match) in enumerate([(narrow, "centre"), (cycle, "not a tree"),
                                         (one_child, "one child")]):
        d = tmp_path / f"b{i}"
        d.mkdir()
        _refused(tree_with(change), d, match)


def test_brute_force_neighbours(tmp_path, keys):
    from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

    knn = KNeighborsClassifier(algorithm="brute").fit(X, Y)
    _roundtrips(knn, tmp_path / "a", lambda m: m.predict_proba(X))
    for i, (attrs, match) in enumerate([({"_fit_X": X[:, :2].copy()}, "_fit_X has shape"),
                                        ({"n_samples_fit_": 10**6}, "n_samples_fit_")]):
        d = tmp_path / f"bad{i}"
        d.mkdir()
        _refused(_with_attrs(knn, **attrs), d, match)
    # found wherever it sits, e.g. inside another estimator
    from sklearn.manifold import Isomap

    iso = Isomap(n_neighbors=5).fit(X)
    bad = _with_attrs(iso, nbrs_=_with_attrs(iso.nbrs_, _fit_X=X[:, :1].copy()))
    _refused(bad, tmp_path / "c", "_fit_X has shape")
    assert isinstance(iso.nbrs_, NearestNeighbors)


# ---------------------------------------------------------------- counts that size what use allocates
# No compiled loop reads these unchecked, but scikit-learn loops over them or
# allocates by them when the model is used: each state below, loaded with
# pickle.load, made transform, predict_log_proba or get_feature_names_out run
# for minutes or exhaust memory (the attribute fuzz's hangs). Fit never
# writes any of them: each count disagrees with what fit derives it from.

COUNTS_PHRASE = "no fit produces"


def _count_models():
    """(label, fitted model, its output) of every estimator whose counts are
    checked (firkin._validate_counts), each as fit leaves it."""
    import scipy.sparse as sp
    from sklearn.cluster import Birch, BisectingKMeans, FeatureAgglomeration, KMeans, MiniBatchKMeans
    from sklearn.cross_decomposition import CCA, PLSSVD, PLSCanonical, PLSRegression
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import BaggingClassifier, RandomTreesEmbedding
    from sklearn.kernel_approximation import (
        Nystroem,
        PolynomialCountSketch,
        RBFSampler,
        SkewedChi2Sampler,
    )
    from sklearn.manifold import Isomap, LocallyLinearEmbedding
    from sklearn.neighbors import (
        KNeighborsTransformer,
        NeighborhoodComponentsAnalysis,
        RadiusNeighborsTransformer,
    )
    from sklearn.neural_network import BernoulliRBM
    from sklearn.preprocessing import PolynomialFeatures
    from sklearn.random_projection import GaussianRandomProjection, SparseRandomProjection

    xs = sp.csr_matrix(X * (X > 0.6))
    wide = sp.csc_matrix(np.random.RandomState(1).rand(4, 100))
    y2 = np.c_[Y, np.arange(120) % 2]

    def names(m):
        return np.asarray(m.get_feature_names_out(), dtype=str)

    def proba(m):
        p = m.predict_proba(X)
        return np.hstack(p) if isinstance(p, list) else p

    out = [(f"PolynomialFeatures{kw}", PolynomialFeatures(**kw).fit(data), lambda m, d=data: _dense(
        m.transform(d))) for kw, data in (
        ({"degree": 2}, X), ({"degree": (2, 3), "interaction_only": True}, X),
        ({"degree": 4, "include_bias": False}, X), ({"degree": 0}, X), ({"degree": 3}, xs),
        ({"degree": (1, 5), "include_bias": False}, xs),
        # its dense width (degrees from 0) is beyond an intp; its sparse transform works
        ({"degree": (99, 99), "interaction_only": True}, wide))]
    out += [("BaggingClassifier", BaggingClassifier(n_estimators=3, random_state=0).fit(X, Y), proba),
            ("DummyClassifier", DummyClassifier(strategy="uniform").fit(X, Y), proba),
            ("DummyClassifier 2 outputs", DummyClassifier().fit(X, y2), proba)]
    for m, data in (
            (BernoulliRBM(n_components=4, random_state=0), X),
            (KMeans(3, n_init=1, random_state=0), X), (MiniBatchKMeans(3, n_init=1, random_state=0), X),
            (BisectingKMeans(3, random_state=0), X), (Birch(n_clusters=None), X),
            (FeatureAgglomeration(2), X), (LocallyLinearEmbedding(n_components=2), X),
            (Isomap(n_components=2), X), (PLSRegression(2), (X, y2)), (PLSCanonical(2), (X, y2)),
            (CCA(2), (X, y2)), (PLSSVD(2), (X, y2)), (RBFSampler(n_components=7), X),
            (SkewedChi2Sampler(n_components=7), X), (Nystroem(n_components=7), xs),
            (PolynomialCountSketch(n_components=9), X), (GaussianRandomProjection(3), X),
            (SparseRandomProjection(3), X), (LinearDiscriminantAnalysis(), (X, Y)),
            (RandomTreesEmbedding(n_estimators=3, random_state=0), X), (KNeighborsTransformer(), X),
            (RadiusNeighborsTransformer(), xs),
            (NeighborhoodComponentsAnalysis(n_components=2, max_iter=5, random_state=0), (X, Y))):
        out.append((type(m).__name__, m.fit(*data) if isinstance(data, tuple) else m.fit(data), names))
    return out


def test_counts_roundtrip(tmp_path, keys):
    for i, (label, model, out) in enumerate(_count_models()):
        d = tmp_path / f"m{i}"
        d.mkdir()
        _roundtrips(model, d, out)


def _count_cases():
    from firkin._validate_counts import _FEATURES_OUT

    models = {label: m for label, m, _ in _count_models()}
    poly = models["PolynomialFeatures{'degree': 2}"]
    pair = models["PolynomialFeatures{'degree': (2, 3), 'interaction_only': True}"]
    bag, dummy = models["BaggingClassifier"], models["DummyClassifier"]
    multi = models["DummyClassifier 2 outputs"]
    cases = {
        # 5 features up to degree 10**6: beyond an intp, which fit refuses
        "poly max degree": (_tampered(poly, _max_degree=10**6), "degrees 0..1000000 of 5 features "
                            "give more output columns"),
        "poly max degree, interactions": (_tampered(pair, _max_degree=10**6), "n_output_features_ "
                                          "is 21, but degrees 2..1000000 of 5 features give 27"),
        "poly min degree past max": (_tampered(pair, _min_degree=4), "degrees run from 4 to 3"),
        "poly degree not a degree": (_tampered(poly, _max_degree="2"), "to '2'"),
        "poly output count": (_tampered(poly, n_output_features_=10**6), "n_output_features_ is"),
        "poly full output count": (_tampered(pair, _n_out_full=2**40), "_n_out_full is"),
        "poly bias dropped after fit": (_tampered(poly, include_bias=False), "give 20 columns "
                                        r"\(it was fitted with other interaction_only"),
        "bagging class count": (_tampered(bag, n_classes_=10**6), "n_classes_ is 1000000"),
        "dummy class count": (_tampered(dummy, n_classes_=10**6), "n_classes_ is 1000000"),
        "dummy outputs": (_tampered(multi, n_classes_=[3, 2, 2]), "same outputs"),
        "dummy output count": (_tampered(multi, n_classes_=[3, 10**6]), "n_classes_ is 1000000"),
    }
    kept = set()
    for label, m, _ in _count_models():
        key = (type(m).__module__, type(m).__qualname__)
        if key in _FEATURES_OUT and "_n_features_out" in vars(m):
            kept.add(key)
            cases[f"{label} features out"] = (_tampered(m, _n_features_out=2**31), "_n_features_out is")
    # every class of the table whose fit keeps the count (rather than a
    # property computing it, as later scikit-learn versions do for some) is tried
    for module, qual in _FEATURES_OUT:
        cls = getattr(importlib.import_module(module), qual)
        if not isinstance(getattr(cls, "_n_features_out", None), property):
            assert (module, qual) in kept, qual
    return cases


def test_counts_refused(tmp_path, keys):
    _each_refused(_count_cases(), tmp_path, phrase=COUNTS_PHRASE)


def test_counts_refused_where_nested(tmp_path, keys):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures

    poly = PolynomialFeatures(2).fit(X)
    pipe = make_pipeline(_tampered(poly, _max_degree=10**9))
    _refused({"model": [pipe]}, tmp_path, "degrees 0..1000000000", COUNTS_PHRASE)


def test_polynomial_degree_set_after_fit_loads(tmp_path, keys):
    # transform uses the degrees fit kept, whatever set_params did since
    from sklearn.preprocessing import PolynomialFeatures

    poly = PolynomialFeatures(2).fit(X).set_params(degree=5)
    _roundtrips(poly, tmp_path, lambda m: m.transform(X))

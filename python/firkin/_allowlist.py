"""The generated part of firkin's allowlist. Do not edit: regenerate with

    python tools/gen_allowlist.py

(tools/gen_allowlist.py; its docstring says how). The names every object of
tools/allowlist_corpus.py needs when pickled, merged over the environments
below; the hand-written part and the policy are in _trust.py. Every name here
is audited by tools/audit_allowlist.py (tests/test_audit.py).
"""

#: the environments whose names are merged here (tools/allowlist/*.json)
ENVIRONMENTS: tuple[str, ...] = (
    "Python 3.10.13, numpy 1.26.4, pandas 2.0.3, scikit-learn 1.2.2, scipy 1.10.1",
    "Python 3.10.13, numpy 2.2.6, pandas 2.3.3, scikit-learn 1.7.2, scipy 1.15.3",
    "Python 3.11.7, numpy 2.4.6, pandas 3.1.1, scikit-learn 1.9.1, scipy 1.17.1",
    "Python 3.12.1, numpy 2.0.2, pandas 2.2.3, scikit-learn 1.5.2, scipy 1.13.1",
    "Python 3.13.0, numpy 2.5.5, pandas 3.1.1, scikit-learn 1.9.1, scipy 1.18.1",
)

#: module -> qualnames, as find_class sees them
GENERATED: dict[str, tuple[str, ...]] = {
    "dateutil.relativedelta": (
        "relativedelta",
    ),
    "numpy": (
        "chararray", "mean", "vectorize",
    ),
    "pandas": (
        "BooleanDtype", "Categorical", "CategoricalDtype", "CategoricalIndex", "DataFrame",
        "DateOffset", "DatetimeIndex", "DatetimeTZDtype", "Float32Dtype", "Float64Dtype", "Index",
        "Int64Dtype", "Interval", "IntervalDtype", "IntervalIndex", "MultiIndex", "NA", "Period",
        "PeriodDtype", "PeriodIndex", "RangeIndex", "Series", "SparseDtype", "StringDtype",
        "TimedeltaIndex", "UInt8Dtype",
    ),
    "pandas._libs.arrays": (
        "__pyx_unpickle_NDArrayBacked",
    ),
    "pandas._libs.internals": (
        "_unpickle_block",
    ),
    "pandas._libs.interval": (
        "Interval", "__pyx_unpickle_IntervalMixin",
    ),
    "pandas._libs.missing": (
        "NA",
    ),
    "pandas._libs.sparse": (
        "IntIndex",
    ),
    "pandas._libs.tslibs.nattype": (
        "__nat_unpickle", "_nat_unpickle",
    ),
    "pandas._libs.tslibs.offsets": (
        "BHalfYearBegin", "BHalfYearEnd", "BQuarterBegin", "BQuarterEnd", "BYearBegin", "BYearEnd",
        "BaseOffset", "BusinessDay", "BusinessHour", "BusinessMonthBegin", "BusinessMonthEnd",
        "CustomBusinessDay", "CustomBusinessHour", "CustomBusinessMonthBegin",
        "CustomBusinessMonthEnd", "DateOffset", "Day", "Easter", "FY5253", "FY5253Quarter",
        "HalfYearBegin", "HalfYearEnd", "Hour", "LastWeekOfMonth", "Micro", "Milli", "Minute",
        "MonthBegin", "MonthEnd", "Nano", "QuarterBegin", "QuarterEnd", "Second", "SemiMonthBegin",
        "SemiMonthEnd", "Tick", "Week", "WeekOfMonth", "YearBegin", "YearEnd",
    ),
    "pandas._libs.tslibs.period": (
        "Period",
    ),
    "pandas._libs.tslibs.timedeltas": (
        "_timedelta_unpickle",
    ),
    "pandas._libs.tslibs.timestamps": (
        "_unpickle_timestamp",
    ),
    "pandas.arrays": (
        "BooleanArray", "DatetimeArray", "FloatingArray", "IntegerArray", "IntervalArray",
        "NumpyExtensionArray", "PeriodArray", "SparseArray", "StringArray", "TimedeltaArray",
    ),
    "pandas.core.arrays.boolean": (
        "BooleanArray", "BooleanDtype",
    ),
    "pandas.core.arrays.categorical": (
        "Categorical",
    ),
    "pandas.core.arrays.datetimes": (
        "DatetimeArray",
    ),
    "pandas.core.arrays.floating": (
        "Float32Dtype", "Float64Dtype", "FloatingArray",
    ),
    "pandas.core.arrays.integer": (
        "Int64Dtype", "IntegerArray", "UInt8Dtype",
    ),
    "pandas.core.arrays.interval": (
        "IntervalArray",
    ),
    "pandas.core.arrays.numpy_": (
        "NumpyExtensionArray", "PandasArray",
    ),
    "pandas.core.arrays.period": (
        "PeriodArray",
    ),
    "pandas.core.arrays.sparse.array": (
        "SparseArray",
    ),
    "pandas.core.arrays.sparse.dtype": (
        "SparseDtype",
    ),
    "pandas.core.arrays.string_": (
        "StringArray", "StringDtype",
    ),
    "pandas.core.arrays.timedeltas": (
        "TimedeltaArray",
    ),
    "pandas.core.dtypes.dtypes": (
        "CategoricalDtype", "DatetimeTZDtype", "IntervalDtype", "NumpyEADtype", "PandasDtype",
        "PeriodDtype", "SparseDtype",
    ),
    "pandas.core.frame": (
        "DataFrame",
    ),
    "pandas.core.indexes.base": (
        "Index", "_new_Index",
    ),
    "pandas.core.indexes.category": (
        "CategoricalIndex",
    ),
    "pandas.core.indexes.datetimes": (
        "DatetimeIndex", "_new_DatetimeIndex",
    ),
    "pandas.core.indexes.interval": (
        "IntervalIndex", "_new_IntervalIndex",
    ),
    "pandas.core.indexes.multi": (
        "MultiIndex",
    ),
    "pandas.core.indexes.period": (
        "PeriodIndex",
    ),
    "pandas.core.indexes.range": (
        "RangeIndex",
    ),
    "pandas.core.indexes.timedeltas": (
        "TimedeltaIndex", "_new_TimedeltaIndex",
    ),
    "pandas.core.internals.managers": (
        "BlockManager", "SingleBlockManager",
    ),
    "pandas.core.series": (
        "Series",
    ),
    "pytz": (
        "_p",
    ),
    "scipy._lib.array_api_compat.numpy._aliases": (
        "asarray",
    ),
    "scipy.interpolate._bsplines": (
        "BSpline", "_BSpline",
    ),
    "scipy.sparse._arrays": (
        "bsr_array", "coo_array", "csc_array", "csr_array", "dia_array", "dok_array", "lil_array",
    ),
    "scipy.sparse._bsr": (
        "bsr_array", "bsr_matrix",
    ),
    "scipy.sparse._coo": (
        "coo_array", "coo_matrix",
    ),
    "scipy.sparse._csc": (
        "csc_array", "csc_matrix",
    ),
    "scipy.sparse._csr": (
        "csr_array", "csr_matrix",
    ),
    "scipy.sparse._dia": (
        "dia_array", "dia_matrix",
    ),
    "scipy.sparse._dok": (
        "dok_array", "dok_matrix",
    ),
    "scipy.sparse._lil": (
        "lil_array", "lil_matrix",
    ),
    "scipy.stats._continuous_distns": (
        "expon_gen", "norm_gen", "reciprocal_gen", "uniform_gen",
    ),
    "scipy.stats._discrete_distns": (
        "randint_gen", "randint_gen._entropy",
    ),
    "scipy.stats._distn_infrastructure": (
        "rv_continuous_frozen", "rv_discrete_frozen",
    ),
    "sklearn._loss._loss": (
        "CyAbsoluteError", "CyExponentialLoss", "CyHalfBinomialLoss", "CyHalfGammaLoss",
        "CyHalfMultinomialLoss", "CyHalfPoissonLoss", "CyHalfSquaredError", "CyHalfTweedieLoss",
        "CyHalfTweedieLossIdentity", "CyHuberLoss", "CyPinballLoss",
        "__pyx_unpickle_CyAbsoluteError", "__pyx_unpickle_CyExponentialLoss",
        "__pyx_unpickle_CyHalfBinomialLoss", "__pyx_unpickle_CyHalfGammaLoss",
        "__pyx_unpickle_CyHalfMultinomialLoss", "__pyx_unpickle_CyHalfPoissonLoss",
        "__pyx_unpickle_CyHalfSquaredError", "__pyx_unpickle_CyHalfTweedieLoss",
        "__pyx_unpickle_CyHalfTweedieLossIdentity", "__pyx_unpickle_CyHuberLoss",
        "__pyx_unpickle_CyPinballLoss",
    ),
    "sklearn._loss.link": (
        "HalfLogitLink", "IdentityLink", "Interval", "LogLink", "LogitLink", "MultinomialLogit",
    ),
    "sklearn._loss.loss": (
        "AbsoluteError", "ExponentialLoss", "HalfBinomialLoss", "HalfGammaLoss",
        "HalfMultinomialLoss", "HalfPoissonLoss", "HalfSquaredError", "HalfTweedieLoss",
        "HalfTweedieLossIdentity", "HuberLoss", "PinballLoss",
    ),
    "sklearn.calibration": (
        "CalibratedClassifierCV", "_CalibratedClassifier", "_SigmoidCalibration",
        "_TemperatureScaling",
    ),
    "sklearn.cluster._affinity_propagation": (
        "AffinityPropagation",
    ),
    "sklearn.cluster._agglomerative": (
        "AgglomerativeClustering", "FeatureAgglomeration",
    ),
    "sklearn.cluster._bicluster": (
        "SpectralBiclustering", "SpectralCoclustering",
    ),
    "sklearn.cluster._birch": (
        "Birch", "_CFNode", "_CFSubcluster",
    ),
    "sklearn.cluster._bisect_k_means": (
        "BisectingKMeans", "_BisectingTree",
    ),
    "sklearn.cluster._dbscan": (
        "DBSCAN",
    ),
    "sklearn.cluster._hdbscan.hdbscan": (
        "HDBSCAN",
    ),
    "sklearn.cluster._kmeans": (
        "KMeans", "MiniBatchKMeans", "_kmeans_single_elkan", "_kmeans_single_lloyd",
    ),
    "sklearn.cluster._mean_shift": (
        "MeanShift",
    ),
    "sklearn.cluster._optics": (
        "OPTICS",
    ),
    "sklearn.cluster._spectral": (
        "SpectralClustering",
    ),
    "sklearn.compose._column_transformer": (
        "ColumnTransformer",
    ),
    "sklearn.compose._target": (
        "TransformedTargetRegressor",
    ),
    "sklearn.covariance._elliptic_envelope": (
        "EllipticEnvelope",
    ),
    "sklearn.covariance._empirical_covariance": (
        "EmpiricalCovariance",
    ),
    "sklearn.covariance._graph_lasso": (
        "GraphicalLasso", "GraphicalLassoCV",
    ),
    "sklearn.covariance._robust_covariance": (
        "MinCovDet",
    ),
    "sklearn.covariance._shrunk_covariance": (
        "LedoitWolf", "OAS", "ShrunkCovariance",
    ),
    "sklearn.cross_decomposition._pls": (
        "CCA", "PLSCanonical", "PLSRegression", "PLSSVD",
    ),
    "sklearn.decomposition._dict_learning": (
        "DictionaryLearning", "MiniBatchDictionaryLearning", "SparseCoder",
    ),
    "sklearn.decomposition._factor_analysis": (
        "FactorAnalysis",
    ),
    "sklearn.decomposition._fastica": (
        "FastICA",
    ),
    "sklearn.decomposition._incremental_pca": (
        "IncrementalPCA",
    ),
    "sklearn.decomposition._kernel_pca": (
        "KernelPCA",
    ),
    "sklearn.decomposition._lda": (
        "LatentDirichletAllocation",
    ),
    "sklearn.decomposition._nmf": (
        "MiniBatchNMF", "NMF",
    ),
    "sklearn.decomposition._pca": (
        "PCA",
    ),
    "sklearn.decomposition._sparse_pca": (
        "MiniBatchSparsePCA", "SparsePCA",
    ),
    "sklearn.decomposition._truncated_svd": (
        "TruncatedSVD",
    ),
    "sklearn.discriminant_analysis": (
        "LinearDiscriminantAnalysis", "QuadraticDiscriminantAnalysis",
    ),
    "sklearn.dummy": (
        "DummyClassifier", "DummyRegressor",
    ),
    "sklearn.ensemble._bagging": (
        "BaggingClassifier", "BaggingRegressor",
    ),
    "sklearn.ensemble._forest": (
        "ExtraTreesClassifier", "ExtraTreesRegressor", "RandomForestClassifier",
        "RandomForestRegressor", "RandomTreesEmbedding",
    ),
    "sklearn.ensemble._gb": (
        "GradientBoostingClassifier", "GradientBoostingRegressor",
    ),
    "sklearn.ensemble._gb_losses": (
        "BinomialDeviance", "ExponentialLoss", "HuberLossFunction", "LeastAbsoluteError",
        "LeastSquaresError", "MultinomialDeviance", "QuantileLossFunction",
    ),
    "sklearn.ensemble._hist_gradient_boosting.binning": (
        "_BinMapper",
    ),
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting": (
        "HistGradientBoostingClassifier", "HistGradientBoostingRegressor",
    ),
    "sklearn.ensemble._hist_gradient_boosting.predictor": (
        "TreePredictor",
    ),
    "sklearn.ensemble._iforest": (
        "IsolationForest",
    ),
    "sklearn.ensemble._stacking": (
        "StackingClassifier", "StackingRegressor",
    ),
    "sklearn.ensemble._voting": (
        "VotingClassifier", "VotingRegressor",
    ),
    "sklearn.ensemble._weight_boosting": (
        "AdaBoostClassifier", "AdaBoostRegressor",
    ),
    "sklearn.feature_extraction._dict_vectorizer": (
        "DictVectorizer",
    ),
    "sklearn.feature_extraction._hash": (
        "FeatureHasher",
    ),
    "sklearn.feature_extraction.image": (
        "PatchExtractor",
    ),
    "sklearn.feature_extraction.text": (
        "CountVectorizer", "HashingVectorizer", "TfidfTransformer", "TfidfVectorizer",
    ),
    "sklearn.feature_selection._from_model": (
        "SelectFromModel",
    ),
    "sklearn.feature_selection._rfe": (
        "RFE", "RFECV",
    ),
    "sklearn.feature_selection._sequential": (
        "SequentialFeatureSelector",
    ),
    "sklearn.feature_selection._univariate_selection": (
        "GenericUnivariateSelect", "SelectFdr", "SelectFpr", "SelectFwe", "SelectKBest",
        "SelectPercentile", "f_classif",
    ),
    "sklearn.feature_selection._variance_threshold": (
        "VarianceThreshold",
    ),
    "sklearn.gaussian_process._gpc": (
        "GaussianProcessClassifier", "_BinaryGaussianProcessClassifierLaplace",
    ),
    "sklearn.gaussian_process._gpr": (
        "GaussianProcessRegressor",
    ),
    "sklearn.gaussian_process.kernels": (
        "CompoundKernel", "ConstantKernel", "DotProduct", "ExpSineSquared", "Exponentiation",
        "Matern", "PairwiseKernel", "Product", "RBF", "RationalQuadratic", "Sum", "WhiteKernel",
    ),
    "sklearn.impute._base": (
        "MissingIndicator", "SimpleImputer",
    ),
    "sklearn.impute._knn": (
        "KNNImputer",
    ),
    "sklearn.isotonic": (
        "IsotonicRegression",
    ),
    "sklearn.kernel_approximation": (
        "AdditiveChi2Sampler", "Nystroem", "PolynomialCountSketch", "RBFSampler",
        "SkewedChi2Sampler",
    ),
    "sklearn.kernel_ridge": (
        "KernelRidge",
    ),
    "sklearn.linear_model._base": (
        "LinearRegression",
    ),
    "sklearn.linear_model._bayes": (
        "ARDRegression", "BayesianRidge",
    ),
    "sklearn.linear_model._coordinate_descent": (
        "ElasticNet", "ElasticNetCV", "Lasso", "LassoCV", "MultiTaskElasticNet",
        "MultiTaskElasticNetCV", "MultiTaskLasso", "MultiTaskLassoCV",
    ),
    "sklearn.linear_model._glm.glm": (
        "GammaRegressor", "PoissonRegressor", "TweedieRegressor",
    ),
    "sklearn.linear_model._huber": (
        "HuberRegressor",
    ),
    "sklearn.linear_model._least_angle": (
        "Lars", "LarsCV", "LassoLars", "LassoLarsCV", "LassoLarsIC",
    ),
    "sklearn.linear_model._logistic": (
        "LogisticRegression", "LogisticRegressionCV",
    ),
    "sklearn.linear_model._omp": (
        "OrthogonalMatchingPursuit", "OrthogonalMatchingPursuitCV",
    ),
    "sklearn.linear_model._passive_aggressive": (
        "PassiveAggressiveClassifier", "PassiveAggressiveRegressor",
    ),
    "sklearn.linear_model._perceptron": (
        "Perceptron",
    ),
    "sklearn.linear_model._quantile": (
        "QuantileRegressor",
    ),
    "sklearn.linear_model._ransac": (
        "RANSACRegressor",
    ),
    "sklearn.linear_model._ridge": (
        "Ridge", "RidgeCV", "RidgeClassifier", "RidgeClassifierCV",
    ),
    "sklearn.linear_model._sgd_fast": (
        "EpsilonInsensitive", "Hinge", "Huber", "Log", "ModifiedHuber",
        "SquaredEpsilonInsensitive", "SquaredHinge", "SquaredLoss",
    ),
    "sklearn.linear_model._stochastic_gradient": (
        "SGDClassifier", "SGDOneClassSVM", "SGDRegressor",
    ),
    "sklearn.linear_model._theil_sen": (
        "TheilSenRegressor",
    ),
    "sklearn.manifold._classical_mds": (
        "ClassicalMDS",
    ),
    "sklearn.manifold._isomap": (
        "Isomap",
    ),
    "sklearn.manifold._locally_linear": (
        "LocallyLinearEmbedding",
    ),
    "sklearn.manifold._mds": (
        "MDS",
    ),
    "sklearn.manifold._spectral_embedding": (
        "SpectralEmbedding",
    ),
    "sklearn.manifold._t_sne": (
        "TSNE",
    ),
    "sklearn.metrics._classification": (
        "accuracy_score", "balanced_accuracy_score", "brier_score_loss", "d2_brier_score",
        "d2_log_loss_score", "f1_score", "jaccard_score", "log_loss", "matthews_corrcoef",
        "precision_score", "recall_score",
    ),
    "sklearn.metrics._dist_metrics": (
        "BrayCurtisDistance", "BrayCurtisDistance64", "CanberraDistance", "CanberraDistance64",
        "ChebyshevDistance", "ChebyshevDistance64", "DiceDistance", "DiceDistance64",
        "EuclideanDistance", "EuclideanDistance64", "HammingDistance", "HammingDistance64",
        "JaccardDistance", "JaccardDistance64", "KulsinskiDistance", "ManhattanDistance",
        "ManhattanDistance64", "MatchingDistance", "RogersTanimotoDistance",
        "RogersTanimotoDistance64", "RussellRaoDistance", "RussellRaoDistance64",
        "SokalMichenerDistance", "SokalMichenerDistance64", "SokalSneathDistance",
        "SokalSneathDistance64", "newObj",
    ),
    "sklearn.metrics._ranking": (
        "average_precision_score", "roc_auc_score", "top_k_accuracy_score",
    ),
    "sklearn.metrics._regression": (
        "d2_absolute_error_score", "explained_variance_score", "max_error", "mean_absolute_error",
        "mean_absolute_percentage_error", "mean_gamma_deviance", "mean_poisson_deviance",
        "mean_squared_error", "mean_squared_log_error", "median_absolute_error", "r2_score",
        "root_mean_squared_error", "root_mean_squared_log_error",
    ),
    "sklearn.metrics._scorer": (
        "_CurveScorer", "_PassthroughScorer", "_PredictScorer", "_ProbaScorer", "_Scorer",
        "_ThresholdScorer", "_passthrough_scorer", "negative_likelihood_ratio",
        "positive_likelihood_ratio",
    ),
    "sklearn.metrics.cluster._supervised": (
        "adjusted_mutual_info_score", "adjusted_rand_score", "completeness_score",
        "fowlkes_mallows_score", "homogeneity_score", "mutual_info_score",
        "normalized_mutual_info_score", "rand_score", "v_measure_score",
    ),
    "sklearn.mixture._bayesian_mixture": (
        "BayesianGaussianMixture",
    ),
    "sklearn.mixture._gaussian_mixture": (
        "GaussianMixture",
    ),
    "sklearn.model_selection._classification_threshold": (
        "FixedThresholdClassifier", "TunedThresholdClassifierCV", "_CurveScorer",
    ),
    "sklearn.model_selection._search": (
        "GridSearchCV", "RandomizedSearchCV",
    ),
    "sklearn.model_selection._search_successive_halving": (
        "HalvingGridSearchCV", "HalvingRandomSearchCV",
    ),
    "sklearn.model_selection._split": (
        "GroupKFold", "GroupShuffleSplit", "KFold", "LeaveOneGroupOut", "LeaveOneOut", "LeavePOut",
        "PredefinedSplit", "RepeatedKFold", "RepeatedStratifiedKFold", "ShuffleSplit",
        "StratifiedKFold", "StratifiedShuffleSplit", "TimeSeriesSplit",
    ),
    "sklearn.multiclass": (
        "OneVsOneClassifier", "OneVsRestClassifier", "OutputCodeClassifier", "_ConstantPredictor",
    ),
    "sklearn.multioutput": (
        "ClassifierChain", "MultiOutputClassifier", "MultiOutputRegressor", "RegressorChain",
    ),
    "sklearn.naive_bayes": (
        "BernoulliNB", "CategoricalNB", "ComplementNB", "GaussianNB", "MultinomialNB",
    ),
    "sklearn.neighbors._ball_tree": (
        "BallTree", "newObj",
    ),
    "sklearn.neighbors._classification": (
        "KNeighborsClassifier", "RadiusNeighborsClassifier",
    ),
    "sklearn.neighbors._graph": (
        "KNeighborsTransformer", "RadiusNeighborsTransformer",
    ),
    "sklearn.neighbors._kd_tree": (
        "KDTree", "newObj",
    ),
    "sklearn.neighbors._kde": (
        "KernelDensity",
    ),
    "sklearn.neighbors._lof": (
        "LocalOutlierFactor",
    ),
    "sklearn.neighbors._nca": (
        "NeighborhoodComponentsAnalysis",
    ),
    "sklearn.neighbors._nearest_centroid": (
        "NearestCentroid",
    ),
    "sklearn.neighbors._regression": (
        "KNeighborsRegressor", "RadiusNeighborsRegressor",
    ),
    "sklearn.neighbors._unsupervised": (
        "NearestNeighbors",
    ),
    "sklearn.neural_network._multilayer_perceptron": (
        "MLPClassifier", "MLPRegressor",
    ),
    "sklearn.neural_network._rbm": (
        "BernoulliRBM",
    ),
    "sklearn.neural_network._stochastic_optimizers": (
        "AdamOptimizer", "SGDOptimizer",
    ),
    "sklearn.pipeline": (
        "FeatureUnion", "Pipeline",
    ),
    "sklearn.preprocessing._data": (
        "Binarizer", "KernelCenterer", "MaxAbsScaler", "MinMaxScaler", "Normalizer",
        "PowerTransformer", "QuantileTransformer", "RobustScaler", "StandardScaler",
    ),
    "sklearn.preprocessing._discretization": (
        "KBinsDiscretizer",
    ),
    "sklearn.preprocessing._encoders": (
        "OneHotEncoder", "OrdinalEncoder",
    ),
    "sklearn.preprocessing._function_transformer": (
        "FunctionTransformer",
    ),
    "sklearn.preprocessing._label": (
        "LabelBinarizer", "LabelEncoder", "MultiLabelBinarizer",
    ),
    "sklearn.preprocessing._polynomial": (
        "PolynomialFeatures", "SplineTransformer",
    ),
    "sklearn.preprocessing._target_encoder": (
        "TargetEncoder",
    ),
    "sklearn.random_projection": (
        "GaussianRandomProjection", "SparseRandomProjection",
    ),
    "sklearn.semi_supervised._label_propagation": (
        "LabelPropagation", "LabelSpreading",
    ),
    "sklearn.semi_supervised._self_training": (
        "SelfTrainingClassifier",
    ),
    "sklearn.svm._classes": (
        "LinearSVC", "LinearSVR", "NuSVC", "NuSVR", "OneClassSVM", "SVC", "SVR",
    ),
    "sklearn.tree._classes": (
        "DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier",
        "ExtraTreeRegressor",
    ),
    "sklearn.tree._tree": (
        "Tree",
    ),
    "sklearn.utils._bunch": (
        "Bunch",
    ),
    "sklearn.utils._metadata_requests": (
        "MetadataRequest", "MethodMetadataRequest",
    ),
}

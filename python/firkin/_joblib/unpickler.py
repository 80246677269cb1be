"""The joblib-aware unpickler classes: joblib's wrappers resolve to the loader's placeholders."""
from __future__ import annotations

import pickle

from .facts import _WRAPPERS, _is_joblib_module, _numpy_module


class _Placeholder:
    """Instances stand for joblib's wrapper objects until the array replaces them."""

    __slots__ = ()


class _Restart(Exception):
    """Raised to start over with the pure-Python unpickler."""


class _LoaderHooks:
    """find_class / persistent_load of the joblib-aware unpicklers.

    Mixed in before the unpickler class, which may be one of the trust
    policy's (firkin._trust.make_unpickler): joblib's wrapper names resolve
    here to firkin's own placeholders, every other global goes on to it.
    """

    def __init__(self, file, loader):
        super().__init__(file)
        self._fk = loader

    def find_class(self, module, name):
        found = self._fk.resolve(module, name)
        if found is not None:
            return found
        return super().find_class(_numpy_module(module), name)

    def persistent_load(self, pid):
        return self._fk.persistent_load(pid)


class _NestedHooks:
    """The self-contained pickle of an object array inside a joblib file."""

    def find_class(self, module, name):
        if name in _WRAPPERS and _is_joblib_module(module):
            raise pickle.UnpicklingError("a joblib array wrapper inside an object array")
        return super().find_class(_numpy_module(module), name)


class _PyBuildHook:
    """The pure-Python unpickler, for pre-0.10 files whose framed pickles put a
    wrapper's BUILD mid-frame: the array replaces the wrapper on its stack."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def _fk_load_build(self):
        pickle._Unpickler.load_build(self)
        if isinstance(self.stack[-1], _Placeholder):
            self.stack[-1] = self._fk.take_result()

    dispatch[pickle.BUILD[0]] = _fk_load_build


class _CUnpickler(_LoaderHooks, pickle.Unpickler):
    pass


class _NestedUnpickler(_NestedHooks, pickle.Unpickler):
    pass


class _PyUnpickler(_PyBuildHook, _LoaderHooks, pickle._Unpickler):
    pass


class _Inert:
    """What every global but numpy.dtype stands for in a delimiting run
    (_dry_classes): it accepts any construction, state and items and keeps
    nothing, so no code the stream names runs."""

    __slots__ = ()

    def __new__(cls, *args, **kwargs):
        return object.__new__(_Inert)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def add(self, item):
        pass


class _DryHooks:
    """find_class of a delimiting run: joblib's wrappers are the loader's
    (they read each array's bytes), numpy.dtype is what the default policy
    gives for it (a wrapper's state needs the real dtype to size its bytes),
    everything else is _Inert."""

    def find_class(self, module, name):
        if name == "dtype" and _numpy_module(module).startswith("numpy"):
            from .._trust import SafeUnpickler

            return SafeUnpickler.find_class(self, _numpy_module(module), name)
        if module in ("copyreg", "copy_reg") and name in ("_reconstructor", "__newobj__"):
            return _dry_new  # protocols 0 and 1 make joblib's wrappers through these
        return _Inert


def _dry_new(cls, *args):
    """copyreg._reconstructor / __newobj__ in a delimiting run: a loader
    placeholder (a joblib wrapper) is made, so that its BUILD reads the
    array's bytes; anything else is _Inert."""
    if isinstance(cls, type) and issubclass(cls, _Placeholder):
        return object.__new__(cls)
    return _Inert()


def _dry_classes():
    """(C, nested, pure-Python) unpickler classes of a delimiting run: the
    loader drives them over a stream to learn exactly how many bytes the
    pickle and its joblib arrays take, before the policy judges those bytes."""
    return (type("_CUnpickler", (_LoaderHooks, _DryHooks, pickle.Unpickler), {}),
            type("_NestedUnpickler", (_DryHooks, pickle.Unpickler), {}),
            type("_PyUnpickler", (_PyBuildHook, _LoaderHooks, _DryHooks, pickle._Unpickler), {}))


def _unpickler_classes(trusted, name):
    """(C, nested, pure-Python) unpickler classes; `trusted` as firkin._trust takes it.

    True trusts every global, as joblib.load does.
    """
    if trusted is True:
        return _CUnpickler, _NestedUnpickler, _PyUnpickler
    from .. import _trust

    # the policy classes are shared; the file's name (for refusals) rides on these
    c_base = _trust.make_unpickler(pickle.Unpickler, trusted)
    py_base = _trust.make_unpickler(pickle._Unpickler, trusted)
    named = {"fk_name": name}
    return (type("_CUnpickler", (_LoaderHooks, c_base), dict(named)),
            type("_NestedUnpickler", (_NestedHooks, c_base), dict(named)),
            type("_PyUnpickler", (_PyBuildHook, _LoaderHooks, py_base), dict(named)))

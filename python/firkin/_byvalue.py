"""Classes and functions defined in __main__ (a notebook, a script, the REPL)
are saved by value with cloudpickle, so a model that uses them loads in a
kernel that never defined them. Only those objects (and the code objects,
cells, properties... inside them) go through cloudpickle; everything else
stays on the C pickler's fast path.

Code saved by value is code: such files load only when trusted (signed with
your key, or trusted=True).
"""
import io
import types

from . import _core

#: types plain pickle cannot save at all and cloudpickle saves for by-value
#: code: routing them to cloudpickle changes no picklable object's pickle
BY_VALUE_TYPES = (types.CodeType, types.CellType, property, classmethod, staticmethod,
                  types.MappingProxyType, types.ModuleType)


def reduce_main(obj):
    import cloudpickle  # noqa: PLC0415 - only needed for __main__ objects

    pickler = cloudpickle.Pickler(io.BytesIO(), protocol=5)
    if isinstance(obj, (type, types.FunctionType)):
        # cloudpickle decides how to rebuild the class or function; its
        # pickler is only asked for the reduction, firkin's writes the bytes
        return pickler.reducer_override(obj)
    reduce = pickler.dispatch_table.get(type(obj))
    if reduce is None:
        raise TypeError(f"cannot pickle {type(obj).__name__!r} object")
    return reduce(obj)


_core.set_main_reducer(reduce_main, BY_VALUE_TYPES)

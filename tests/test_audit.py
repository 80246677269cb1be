"""The allowlist audit (tools/audit_allowlist.py): every flag it raises for
this environment's libraries has a reviewed line in tools/audit_reviewed.txt,
and no line is stale (matches no flag here or recorded for another supported
environment), so upgrading scipy/pandas/scikit-learn re-audits."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import audit_allowlist as audit


def test_every_flag_is_reviewed_and_no_line_is_stale():
    flags, absent = audit.run()
    reviewed = audit.read_reviewed()
    unreviewed = {f: sorted(names)[:3] for f, names in flags.items() if f not in reviewed}
    assert not unreviewed, (
        "the audit flags code unpickling can reach that tools/audit_reviewed.txt does not "
        "review; remove the name from the list or add a line saying why a file's state "
        "cannot reach the sink (python tools/audit_allowlist.py --unreviewed):\n"
        + "\n".join(f"{f}\n    reached from {n}" for f, n in sorted(unreviewed.items())))
    elsewhere = audit.recorded_flags()  # the other supported environments' flags
    stale = [f for f in reviewed if f not in flags and f not in elsewhere]
    assert not stale, ("review lines that match no flag here or in any supported environment "
                       "(remove them):\n" + "\n".join(stale))


def test_the_audit_finds_what_it_looks_for():
    # the scipy.stats finding: rv_generic.__setstate__ reaches exec
    import scipy.stats._continuous_distns as c

    from firkin import _trust

    exec_flag = "sink scipy.stats._distn_infrastructure.rv_generic._attach_argparser_methods -> builtins.exec"
    a = audit.Auditor()
    a.entry("norm_gen", c.norm_gen.__setstate__, c.norm_gen, "__setstate__")
    assert exec_flag in a.flags
    # firkin's rebuild goes through the public constructor, which the audit
    # follows too: the constructor's exec (of a template built from checked
    # shapes) is still reached, and reviewed as such
    b = audit.Auditor()
    stand_in = _trust.REPLACEMENTS[("scipy.stats._continuous_distns", "norm_gen")]
    b.audit_class("scipy.stats._continuous_distns.norm_gen", c.norm_gen, stand_in)
    assert exec_flag in b.flags
    assert "public constructor" in audit.read_reviewed()[exec_flag]
    # compiled entry points are flagged
    d = audit.Auditor()
    d.audit_class("collections.OrderedDict", __import__("collections").OrderedDict)
    assert "compiled collections __setitem__" in d.flags


# getattr / setattr with a constant name (False) or a computed one (True)
def _c1(o): return getattr(o, "x")
def _c2(self): return getattr(self.dtype, "tz", None)
def _c3(data): return getattr(data[0], "ndim", 1)
def _c4(o): return getattr(sys.modules.get("m"), "A", None)
def _c5(o): setattr(o, "x", o.y)
def _c6(o): return getattr(o, "x", getattr(o, "y"))
def _n1(o, n): return getattr(o, n)
def _n2(o, k): return getattr(o, "a" + k)
def _n3(o, k): setattr(o, k, 1)
def _n4(o, n): return getattr(o, n if n else "x")
def _n5(o, k): return getattr(o, "%s" % k)
def _n6(o, k): return getattr(o, f"{k}")
def _n7(o, k): return getattr(o, "x", getattr(o, k))
def _n8(o, a): return getattr(o, *a)


def _n9(o, k):
    g = getattr  # an alias: the audit cannot see the call's arguments
    return g(o, k)


@pytest.mark.parametrize("fn", [_c1, _c2, _c3, _c4, _c5, _c6, _n1, _n2, _n3, _n4, _n5, _n6, _n7,
                                _n8, _n9], ids=lambda f: f.__name__)
def test_computed_attribute_names_are_told_from_constants(fn):
    flags = audit.Auditor().walk(fn, None, 1)
    assert bool(flags) == fn.__name__.startswith("_n"), flags

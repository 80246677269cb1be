"""The allowlist audit (tools/audit_allowlist.py): every flag it raises for
this environment's libraries has a reviewed line in tools/audit_reviewed.txt,
and no line is stale (matches no flag here or recorded for another supported
environment), so upgrading scipy/pandas/scikit-learn re-audits."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import audit_allowlist as audit  # noqa: E402


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
    # computed getattr is told from a constant one; compiled entry points are flagged
    ns = {}
    exec("def f(o, n):\n    return getattr(o, n)\ndef g(o):\n    return getattr(o, 'x')\n", ns)
    assert audit.Auditor().walk(ns["f"], None, 1) and not audit.Auditor().walk(ns["g"], None, 1)
    d = audit.Auditor()
    d.audit_class("collections.OrderedDict", __import__("collections").OrderedDict)
    assert "compiled collections __setitem__" in d.flags

"""The allowlist audit (tools/audit_allowlist.py): every flag it raises for
this environment's libraries has a reviewed line in tools/audit_reviewed.txt,
and no line is stale, so upgrading scipy/pandas/scikit-learn re-audits."""
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
    stale = [f for f in reviewed if f not in flags and audit.flag_code_exists(f)]
    assert not stale, "review lines that no longer match a flag (remove them):\n" + "\n".join(stale)


def test_the_audit_finds_what_it_looks_for():
    # the scipy.stats finding: without the rebuild, rv_generic.__setstate__'s exec is flagged
    import scipy.stats._continuous_distns as c

    a = audit.Auditor()
    a.audit_class("scipy.stats._continuous_distns.norm_gen", c.norm_gen)
    assert any(f.endswith("-> builtins.exec") and "_attach_argparser_methods" in f for f in a.flags)
    # through firkin's rebuild, nothing reaches exec
    from firkin import _trust

    b = audit.Auditor()
    b.audit_class("scipy.stats._continuous_distns.norm_gen", c.norm_gen,
                  _trust.REPLACEMENTS[("scipy.stats._continuous_distns", "norm_gen")])
    assert not any("exec" in f for f in b.flags), sorted(b.flags)
    # computed getattr is told from a constant one; compiled entry points are flagged
    ns = {}
    exec("def f(o, n):\n    return getattr(o, n)\ndef g(o):\n    return getattr(o, 'x')\n", ns)
    assert audit.Auditor().walk(ns["f"], None, 1) and not audit.Auditor().walk(ns["g"], None, 1)
    d = audit.Auditor()
    d.audit_class("collections.OrderedDict", __import__("collections").OrderedDict)
    assert "compiled collections __setitem__" in d.flags

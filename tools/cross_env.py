#!/usr/bin/env python
"""Files written under one supported environment load by default under another.

Every object of the allowlist corpus (tools/allowlist_corpus.py: a fitted
model of every estimator, scorers, splitters, kernels, pandas, scipy.sparse
and NumPy objects) is written once with joblib.dump and once with
firkin.dump signed with a key of the writing environment, so that the
reader's key differs (a colleague's file). Then, under each other
environment, a file the libraries there can read (firkin.load with
trusted=True, i.e. what joblib.load does, succeeds) must also load with the
default policy: no UntrustedTypesError and no other error. A file the
libraries cannot read (an estimator from another scikit-learn release whose
internals moved, say) is counted, not judged. A file that the default policy
refuses already where it was written is listed apart and does not fail this
check: it is a false refusal within one environment, which
tests/test_trust.py is about, not a difference between versions.

    python tools/cross_env.py write DIR     # under each environment
    python tools/cross_env.py read DIR      # under each environment: reads the others' files

.ci/run does both across its environments (.venv, .venv-py310, .venv-py313).
Exit status 1 when any file was falsely refused.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings

TOOLS = os.path.dirname(os.path.abspath(__file__))


def env_tag() -> str:
    import numpy
    import pandas
    import scipy
    import sklearn

    return (f"py{platform.python_version()}-numpy{numpy.__version__}-pandas{pandas.__version__}"
            f"-sklearn{sklearn.__version__}-scipy{scipy.__version__}")


def corpus():
    """[(label, object)], every object of the allowlist corpus."""
    sys.path.insert(0, TOOLS)
    import allowlist_corpus as c

    with c._single_threaded(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [(lb, est) for lb, est, _ in c.sklearn_corpus()] + c.sklearn_extras() + c.data_corpus()


def write(root: str) -> None:
    import joblib

    import firkin

    tag = env_tag()
    out = os.path.join(root, tag)
    os.makedirs(out, exist_ok=True)
    firkin.set_key(f"cross-env writer {tag}")
    index = []
    for i, (label, obj) in enumerate(corpus()):
        for kind, dump in (("joblib", joblib.dump), ("firkin", firkin.dump)):
            name = f"{i:04d}.{kind}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    dump(obj, os.path.join(out, name))
            except Exception as e:  # noqa: BLE001 - the writer cannot save it: nothing to judge
                print(f"{tag}: not written: {label} ({kind}): {type(e).__name__}: {e}"[:300])
                continue
            index.append({"file": name, "label": label})
    # the same default load here, under another key than the writer's
    firkin.set_key(f"cross-env self-check {tag}")
    for entry in index:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                firkin.load(os.path.join(out, entry["file"]))
        except firkin.UntrustedTypesError as e:
            entry["refused_here"] = str(e).splitlines()[0][:300]
        except Exception:  # noqa: BLE001 - not this check's business
            pass
    with open(os.path.join(out, "index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=0)
    print(f"{out}: {len(index)} files, {sum('refused_here' in e for e in index)} of them refused "
          f"by a default load here under another key")


def read(root: str) -> int:
    import firkin

    here = env_tag()
    firkin.set_key(f"cross-env reader {here}")
    refused, failed, everywhere, unreadable, loaded = [], [], [], 0, 0
    for tag in sorted(os.listdir(root)):
        index_path = os.path.join(root, tag, "index.json")
        if tag == here or not os.path.exists(index_path):
            continue
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        for entry in index:
            path = os.path.join(root, tag, entry["file"])
            where = f"{tag}/{entry['file']} ({entry['label']})"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    firkin.load(path, trusted=True)
                except Exception:  # noqa: BLE001 - the libraries here cannot read it
                    unreadable += 1
                    continue
                try:
                    firkin.load(path)
                    loaded += 1
                except firkin.UntrustedTypesError as e:
                    line = f"{where}: {str(e).splitlines()[0][:300]}"
                    (everywhere if "refused_here" in entry else refused).append(line)
                except Exception as e:  # noqa: BLE001 - a guard refused what the libraries read
                    failed.append(f"{where}: {type(e).__name__}: {e}"[:400])
    print(f"{here}: {loaded} files of other environments load by default; {unreadable} that "
          f"the libraries here cannot read (not judged); {len(refused)} falsely refused; "
          f"{len(failed)} failed only under the default policy; {len(everywhere)} refused here and "
          f"where they were written (not a version difference)")
    for line in refused + failed:
        print("  " + line)
    for line in everywhere:
        print("  refused where written too: " + line)
    return 1 if refused or failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("write", "read"))
    ap.add_argument("dir")
    args = ap.parse_args(argv)
    if args.mode == "write":
        write(args.dir)
        return 0
    return read(args.dir)


if __name__ == "__main__":
    sys.exit(main())

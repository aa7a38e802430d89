"""Run the installed VLMEvalKit's own entry point as users do, accepting stand-in official TSVs.

    python run_vlmeval_offline.py /path/to/VLMEvalKit/run.py --model ... --data ...   (checkout)
    python run_vlmeval_offline.py -m vlmeval --model ... --data ...                   (ms-vlmeval)

Exactly ``python run.py ...`` / ``python -m vlmeval ...`` (run with ``runpy`` as ``__main__``,
``sys.path[0]`` = the script's folder / the working directory), with one thing that is not
real: the official datasets cannot be downloaded here, so the tests write small stand-in TSVs
under the official names into ``$LMUData``, and VLMEvalKit would reject them for their MD5 and
try to download the real ones.  Right after ``vlmeval.dataset`` has executed (a ``sys.meta_path``
finder, so nothing is imported earlier than in a plain run), every official name that has a
TSV in ``$LMUData`` is dropped from the ``DATASET_MD5`` tables.

Tripwire (tests of "evaluates without rebuilding the model"): with
``ENCRED_TEST_FORBID_BUILD=name1,name2`` the registry entries of those models are replaced,
right after ``vlmeval.inference`` has executed, by a builder that raises ``TRIPWIRE``.
Nothing else is changed.
"""

from __future__ import annotations

import os
import runpy
import sys


def _drop_md5(_module) -> None:
    from vlmeval.smp import LMUDataRoot

    root = LMUDataRoot()
    have = {f[:-4] for f in os.listdir(root) if f.endswith(".tsv")} if os.path.isdir(root) else set()
    seen = set()
    for name, mod in list(sys.modules.items()):
        if not name.startswith("vlmeval.dataset") or mod is None:
            continue
        for v in list(vars(mod).values()):
            md5 = getattr(v, "DATASET_MD5", None) if isinstance(v, type) else None
            if isinstance(md5, dict) and id(md5) not in seen:
                seen.add(id(md5))
                for n in have:
                    md5.pop(n, None)


def _forbid_builds(_module) -> None:
    names = [n for n in os.environ.get("ENCRED_TEST_FORBID_BUILD", "").split(",") if n]
    if not names:
        return
    from vlmeval.config import supported_VLM

    def tripwire(name):
        def build(*args, **kwargs):
            raise RuntimeError(f"TRIPWIRE: model {name} was built")
        return build

    for n in names:
        supported_VLM[n] = tripwire(n)


_HOOKS = {"vlmeval.dataset": _drop_md5, "vlmeval.inference": _forbid_builds}


class _After:
    def __init__(self, inner, hook):
        self._inner, self._hook = inner, hook

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        self._hook(module)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _Finder:
    def find_spec(self, fullname, path, target=None):
        if fullname not in _HOOKS:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _After(spec.loader, _HOOKS[fullname])
        return spec


def main() -> None:
    argv = sys.argv[1:]
    # Before the path finder; vlmeval-encred's finder (first) wraps whatever loader this returns.
    import importlib.machinery

    at = next((i for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder), len(sys.meta_path))
    sys.meta_path.insert(at, _Finder())
    if argv[:1] == ["-m"]:
        module, rest = argv[1], argv[2:]
        sys.path[0] = os.getcwd()
        # As `python -m module` has them while the package imports: argv[0] is '-m' and orig_argv
        # names the module (runpy sets argv[0] to the file only once __main__ runs).
        sys.argv = ["-m", *rest]
        sys.orig_argv = [sys.executable, "-m", module, *rest]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script, rest = argv[0], argv[1:]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        sys.argv = [script, *rest]
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()

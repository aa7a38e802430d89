"""vlmeval-encred: what does each vision encoder of a multi-encoder MLLM contribute?

This package is imported by the start-up hook (``vlmeval_encred_hook.pth``)
only when VLMEvalKit itself is imported, so this module must stay free of
heavy imports: no torch, no vlmeval, no pandas at package import time.
"""

__version__ = "0.1.0"

ENV_DISABLE = "VLMEVAL_ENCRED_DISABLE"
"""Set to 1/true/yes to switch the VLMEvalKit registration hook off."""


def _own_family_code() -> None:
    """In a source checkout, bind ``vlmeval_encred.model_wrappers`` to *this* checkout's
    ``model_wrappers/`` folder.

    Why: an installed (editable) copy maps ``vlmeval_encred.model_wrappers`` to the folder of
    whichever checkout was installed; with ``PYTHONPATH=<another clone>`` the core would come
    from that clone and the family code from the installed one, silently.  Binding the family
    folder that sits beside this core keeps each checkout's code its own.  In a wheel install
    there is no such folder and the installed mapping applies as usual."""
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = os.path.join(root, "model_wrappers")
    name = __name__ + ".model_wrappers"
    if name in sys.modules or not (os.path.isfile(os.path.join(src, "__init__.py"))
                                   and os.path.isfile(os.path.join(root, "setup.py"))):
        return
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(src, "__init__.py"),
                                                  submodule_search_locations=[src])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_own_family_code()

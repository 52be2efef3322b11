"""tinydeploy: deploy 8-bit transformers to tiny RISC-V clusters (+ attention accelerator) and Cortex-M."""

__version__ = "0.1.0"

"""The ITA-like accelerator: functional + timing model (model.py); the RTL lives beside it."""

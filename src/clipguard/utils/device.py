"""Choosing the torch device a model or a search runs on.

``"auto"`` picks the first CUDA GPU when one is visible and the CPU otherwise; ``None`` means the
CPU (the default everywhere, so results on a machine without a GPU never depend on this module).
Asking for a device that is not there is a :class:`~clipguard.errors.ConfigError` that names the fix.
"""
from __future__ import annotations

import torch

from clipguard.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")

PRECISIONS = ("fp32", "bf16")
"""Numeric precisions of training and embedding: fp32, or bf16 autocast on a GPU (weights stay fp32)."""

DEFAULT_DEVICE = "auto"
"""The one device default of the library and the CLI: the GPU when torch sees one, else the CPU.
(On a machine without a GPU every result is the CPU result; ``clipguard demo`` alone stays on the
CPU unless told, so that its figures match the README's.)"""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"cpu" -> CPU; "auto" -> CUDA if available else CPU; "cuda"/"cuda:N" -> that GPU.

    Raises:
        ConfigError: a CUDA device was asked for but none is visible, or the name is unknown.
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}; use one of {', '.join(DEVICE_CHOICES)} (or cuda:N)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA GPU here; use --device cpu "
                              "(or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    elif dev.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported; use one of {', '.join(DEVICE_CHOICES)}")
    return dev


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``enabled`` (a no-op context on the CPU, where bf16 is slow)."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")

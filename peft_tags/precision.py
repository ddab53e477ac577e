"""Which mixed precision a run uses, and why (the banner says it).

``training.mixed_precision: auto`` defers to the launcher: ``accelerate launch`` passes its
``--mixed_precision``, else its config file's ``mixed_precision`` (``--config_file``, else
``$HF_HOME/accelerate/default_config.yaml``), else ``no``, to the script as
ACCELERATE_MIXED_PRECISION, which an Accelerator given no precision would use. Without it
(``python``, ``torchrun``) ``auto`` is the hardware's best. An explicit recipe value wins over
the launcher's, and the reason says so when the two differ.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import UserError

LAUNCHER = "ACCELERATE_MIXED_PRECISION"
ACCELERATE_CHOICES = ("no", "fp16", "bf16", "fp8")  # accelerate's PrecisionType


def choose_precision(requested: str) -> tuple[str, str]:
    """Return (accelerate mixed_precision, why) for ``training.mixed_precision`` = ``requested``.

    Raises UserError if ACCELERATE_MIXED_PRECISION holds a value accelerate does not know.
    """
    launcher = launcher_precision()
    if requested != "auto":
        if launcher is not None and launcher != requested:
            return requested, (f"as the recipe asks (training.mixed_precision), not accelerate launch's {launcher} "
                               f"({LAUNCHER})")
        return requested, "as the recipe asks (training.mixed_precision)"
    if launcher is not None:
        return launcher, (f"from accelerate launch ({LAUNCHER}={launcher}: its --mixed_precision, config file or "
                          f"default no), as training.mixed_precision is auto")
    return hardware_precision()


def launcher_precision() -> str | None:
    """The mixed precision ``accelerate launch`` (or the user) exported for the script, or None."""
    value = os.environ.get(LAUNCHER, "").strip().lower()
    if not value:
        return None
    if value not in ACCELERATE_CHOICES:
        raise UserError(f"{LAUNCHER}={value!r} is not a mixed precision accelerate knows: use one of "
                        f"{', '.join(ACCELERATE_CHOICES)}, or unset it")
    if value == "fp8":  # needs Transformer Engine or MS-AMP, and recipes that say so
        raise UserError(f"{LAUNCHER}=fp8: peft-tags trains in no, fp16 or bf16 (training.mixed_precision); "
                        "launch with another --mixed_precision")
    return value


def hardware_precision() -> tuple[str, str]:
    """Return (mixed_precision, why): bf16 where the hardware computes it natively, else fp16 or no."""
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name()} computes bf16 natively"
        return "fp16", f"{torch.cuda.get_device_name()} has no bf16; fp16 with loss scaling"
    if {"avx512_bf16", "amx_bf16"} & _cpu_flags():
        # measured here (2 cores, me5-small LoRA step): bf16 autocast 28 titles/s vs fp32 27;
        # the matmuls gain, the rest (casts, small ops) loses it: not worth the precision
        return "no", "CPU: bf16 autocast trains no faster than fp32 on CPUs (set bf16 to force it): fp32"
    return "no", "CPU without native bf16 (bf16 matmuls run ~60x slower than fp32): fp32"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()

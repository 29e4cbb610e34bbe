"""TensorFlow's C API loader (``TF_LoadSessionFromSavedModel``, the C++ ``LoadSavedModel`` that
``tensorflow_model_server`` links) driven by ``saved_model_runner.c`` (beside this module):
building the program with gcc against the installed ``tensorflow`` package, its tensor files and
its plans.

Used by ``tests/test_c_api_loader.py`` (answers equal the TF1 Session's) and
``benchmarks/loader_benchmark.py`` (signature times with no Python in the call path).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

RUNNER = Path(__file__).resolve().parent / "saved_model_runner.c"


def tf_dir() -> Path:
    import tensorflow as tf

    return Path(os.path.dirname(tf.__file__))


def build_runner(binary: str | os.PathLike) -> Path:
    """Compiles the runner to ``binary``; raises ``RuntimeError`` with gcc's output on failure."""
    gcc = shutil.which("gcc")
    if not gcc:
        raise RuntimeError("gcc is needed to build the C API runner (apt-get install gcc)")
    include = tf_dir() / "include"
    if not (include / "tensorflow" / "c" / "c_api.h").is_file():
        raise RuntimeError(f"the TensorFlow C headers are missing under {include}")
    binary = Path(binary)
    command = [gcc, "-O1", "-Wall", str(RUNNER), "-o", str(binary), f"-I{include}",
               f"-L{tf_dir()}", "-l:libtensorflow_cc.so.2", "-l:libtensorflow_framework.so.2",
               "-lpthread", f"-Wl,-rpath,{tf_dir()}"]
    build = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        raise RuntimeError(f"gcc failed: {build.stderr}")
    return binary


def write_tensor(path, value) -> None:
    """``value`` in the runner's tensor file format (docstring of the C program)."""
    import tensorflow as tf

    value = np.asarray(value)
    dtype = tf.as_dtype(tf.string if value.dtype == object else value.dtype)
    with open(path, "wb") as f:
        f.write(struct.pack("<ii", dtype.as_datatype_enum, value.ndim))
        f.write(struct.pack(f"<{value.ndim}q", *value.shape))
        if dtype == tf.string:
            for item in value.ravel():
                data = item.encode() if isinstance(item, str) else bytes(item)
                f.write(struct.pack("<Q", len(data)) + data)
        else:
            f.write(np.ascontiguousarray(value).tobytes())


def read_tensor(path) -> np.ndarray:
    import tensorflow as tf

    raw = Path(path).read_bytes()
    enum, rank = struct.unpack_from("<ii", raw)
    shape = struct.unpack_from(f"<{rank}q", raw, 8)
    offset = 8 + 8 * rank
    dtype = tf.dtypes.as_dtype(enum)
    if dtype == tf.string:
        items = []
        for _ in range(int(np.prod(shape))):
            (length,) = struct.unpack_from("<Q", raw, offset)
            items.append(raw[offset + 8:offset + 8 + length])
            offset += 8 + length
        return np.array(items, dtype=object).reshape(shape)
    return np.frombuffer(raw, dtype.as_numpy_dtype, offset=offset).reshape(shape)


class Plan:
    """The runner's plan: steps of concurrent calls on signature tensors by name."""

    def __init__(self, folder: Path, signature_defs):
        self.folder, self.sigs, self.lines, self.files = Path(folder), signature_defs, [], 0

    def step(self, *calls):
        """``calls``: ``(signature, inputs, threads, repeat)``; returns each call's output files.

        An input given as ``FreshIds("prefix")`` gets a new scalar string on every run, unique
        to this step too (``"<prefix>-<step>.<thread>.<run>"``)."""
        self.lines.append("step")
        outs = []
        for signature, inputs, threads, repeat in calls:
            sig = self.sigs[signature]
            if set(inputs) != set(sig.inputs):
                raise ValueError(f"{signature} takes {sorted(sig.inputs)}; got {sorted(inputs)}")
            self.lines.append(f"call {threads} {repeat}")
            for alias, value in sorted(inputs.items()):
                if isinstance(value, FreshIds):
                    steps = self.lines.count("end")
                    self.lines.append(f"id {sig.inputs[alias].name} {value.prefix}-{steps}")
                    continue
                self.files += 1
                path = self.folder / f"in{self.files}.tensor"
                write_tensor(path, value)
                self.lines.append(f"in {sig.inputs[alias].name} {path}")
            files = {}
            for alias in sorted(sig.outputs):
                self.files += 1
                files[alias] = self.folder / f"out{self.files}.tensor"
                self.lines.append(f"out {sig.outputs[alias].name} {files[alias]}")
            outs.append((files, threads))
        self.lines.append("end")
        return outs

    def run(self, binary, export_dir, timeout: float = 600) -> list[float]:
        """Runs the plan on ``export_dir``; returns every step's wall seconds."""
        plan = self.folder / "plan.txt"
        plan.write_text("\n".join(self.lines) + "\n")
        done = subprocess.run([str(binary), str(export_dir), str(plan)], capture_output=True,
                              text=True, timeout=timeout,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        if done.returncode != 0 or "loaded " not in done.stdout:
            raise RuntimeError(f"the runner failed ({done.returncode}): {done.stdout}{done.stderr}")
        return [float(s) for s in re.findall(r"^step \d+: ([0-9.]+) s$", done.stdout, re.M)]


class FreshIds:
    """A scalar string input that takes a new value on every run of every step (a fresh
    ``write_id`` per write; ``Plan.step``)."""

    def __init__(self, prefix: str):
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,200}", prefix):
            raise ValueError(f"`prefix` should be 1-200 letters, digits, '_' or '-'. "
                             f"Received: {prefix!r}")
        self.prefix = prefix


def results(call) -> list[dict[str, np.ndarray]]:
    """Every thread's outputs of one call of a plan that has run."""
    files, threads = call
    return [{alias: read_tensor(f"{path}.{k}") for alias, path in files.items()}
            for k in range(threads)]

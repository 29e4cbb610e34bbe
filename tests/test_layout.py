"""The layout of the project: no import cycles, a small library top level, a light command line.

The import graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of every project module, at module level or inside a function, and every
``importlib.import_module("literal")``. The repository's ``serving/`` and ``tfx_pipeline/`` folders
are the packages ``reloop2_serving`` and ``reloop2_tfx`` (setup.py's ``package_dir``). Scripts in
``benchmarks/`` run with their folder first on ``sys.path``, so their helpers are top-level names.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"reloop2_tf": ROOT / "reloop2_tf", "reloop2_serving": ROOT / "serving",
            "reloop2_tfx": ROOT / "tfx_pipeline"}
SCRIPTS = ROOT / "benchmarks"
FOLDER_NAMES = ("serving", "tfx_pipeline")  # repository folders, not installed module names
MAX_TOP_LEVEL_MODULES = 8


def _module_name(parts: list[str]) -> str:
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    """Every project module by its import name: the three packages and the benchmark scripts."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            modules[_module_name([package, *path.relative_to(folder).with_suffix("").parts])] = path
    for path in sorted(SCRIPTS.rglob("*.py")):
        modules[_module_name(list(path.relative_to(SCRIPTS).with_suffix("").parts))] = path
    return modules


def _imports(path: Path, name: str) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import in the file (``names`` empty for ``import x``)."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = name.split(".")[:len(name.split(".")) - node.level + is_package]
                module = ".".join(base + ([module] if module else []))
            found.append((module, [alias.name for alias in node.names]))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.args[0].value, []))
    return found


def _resolve(module: str, modules: dict[str, Path], scripts_visible: bool) -> str | None:
    """The project module that ``import module`` loads (the longest known prefix), if any."""
    parts = module.split(".")
    if parts[0] not in PACKAGES and not scripts_visible:
        return None
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a ``from package import submodule`` counts as an
    import of the submodule, ``from package import name`` as one of the package)."""
    modules = project_modules() if modules is None else modules
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        scripts_visible = SCRIPTS in path.parents
        edges = set()
        for module, names in _imports(path, name):
            for imported in names or [None]:
                target = None
                if imported is not None:
                    target = _resolve(f"{module}.{imported}", modules, scripts_visible)
                    if target != f"{module}.{imported}":
                        target = None
                target = target or _resolve(module, modules, scripts_visible)
                if target is not None:
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, and modules importing themselves
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}, "f": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["d"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_the_project_imports():
    graph = import_graph()
    # Known edges of each kind: module-level, inside a function, `from package import submodule`,
    # the package_dir names, a benchmark script's helper package.
    assert "reloop2_serving.cli" in graph["reloop2_tf.cli.main"]
    assert "reloop2_tfx.local_runner" in graph["reloop2_tfx.cli"]
    assert "reloop2_tf.evaluation.metrics" in graph["reloop2_tf.training"]
    assert "reloop2_serving.dev_server" in graph["reloop2_serving.cli"]
    assert "reloop2_tf.layers.lsh_memory" in graph["reloop2_tf.export"]
    assert "reloop2_tf.cli.demo" in graph["reloop2_tf.cli.main"]
    assert "memory_bench.timing" in graph["memory_benchmark"]
    assert sum(map(len, graph.values())) > 150


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (each line: modules that import each other):\n" + "\n".join(
        " <-> ".join(component) for component in found)


def test_no_module_imports_the_repository_folder_names():
    """``serving`` and ``tfx_pipeline`` are folders; installed, they are reloop2_serving/_tfx."""
    offenders = []
    for path in sorted([*ROOT.joinpath("tests").glob("*.py"), *project_modules().values()]):
        for module, _ in _imports(path, path.stem):
            if module.split(".")[0] in FOLDER_NAMES:
                offenders.append(f"{path.relative_to(ROOT)}: {module}")
    assert not offenders, offenders


def test_the_library_top_level_stays_small():
    top = sorted(p.name for p in PACKAGES["reloop2_tf"].glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_installed_names_from_outside_the_repository(tmp_path):
    code = ("import importlib.util, json; print(json.dumps({n: getattr(importlib.util.find_spec(n), "
            "'origin', None) for n in ['reloop2_tf', 'reloop2_serving', 'reloop2_tfx', 'serving', "
            "'tfx_pipeline']}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    origins = json.loads(proc.stdout)
    assert origins["serving"] is None and origins["tfx_pipeline"] is None, origins
    for name in ("reloop2_tf", "reloop2_serving", "reloop2_tfx"):
        assert origins[name] and Path(origins[name]).is_file(), origins


def test_public_names_of_the_package_resolve():
    import reloop2_tf as r2

    assert set(r2.__all__) == set(r2._MODULES) | set(r2._NAMES)
    for name in r2.__all__:
        assert getattr(r2, name) is not None
    assert r2.metrics is sys.modules["reloop2_tf.evaluation.metrics"]
    with pytest.raises(AttributeError):
        r2.no_such_name


def test_the_cli_lists_every_drift_scenario():
    from reloop2_tf.cli.main import SCENARIO_NAMES
    from reloop2_tf.evaluation.scenarios import SCENARIOS

    assert SCENARIO_NAMES == tuple(sorted(SCENARIOS))


# Runs in a fresh interpreter: every command path's --help, then no TensorFlow may be loaded.
_HELP = """
import argparse, contextlib, io, json, os, sys, time
start = time.perf_counter()
from reloop2_tf.cli.main import build_parser, main

def paths(parser, prefix=()):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from paths(sub, prefix + (name,))

out = {"paths": [], "import_seconds": time.perf_counter() - start}
for path in paths(build_parser()):
    begin = time.perf_counter()
    code = "returned instead of exiting"
    with contextlib.redirect_stdout(io.StringIO()) as text:
        try:
            main([*path, "--help"])
        except SystemExit as exit_:
            code = exit_.code
    out["paths"].append({"argv": [*path, "--help"], "code": code,
                         "usage": text.getvalue().startswith("usage: reloop2"),
                         "seconds": time.perf_counter() - begin})
heavy = ("tensorflow", "tfx", "pandas", "grpc", "apache_beam")
out["loaded"] = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
out["tf_cpp_min_log_level"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
print(json.dumps(out))
"""


def test_help_of_every_command_loads_no_tensorflow(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", _HELP], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""  # no TensorFlow log lines, no warnings
    out = json.loads(proc.stdout)
    argvs = [" ".join(p["argv"]) for p in out["paths"]]
    print(f"import {out['import_seconds']:.3f} s; " + ", ".join(
        f"{' '.join(p['argv'])}: {p['seconds']:.3f} s" for p in out["paths"]))
    assert {"--help", "bench --help", "data prepare --help", "serve --help", "replay --help",
            "pipeline run --help", "pipeline compile --help", "demo --help",
            "feedback run --help", "memory sync --help", "memory keep --help"} <= set(argvs)
    assert all(p["code"] == 0 and p["usage"] for p in out["paths"]), out["paths"]
    assert out["loaded"] == [], out["loaded"]
    assert out["tf_cpp_min_log_level"] == "3"  # the CLI's default, set before TF can load


def test_the_console_script_answers_help_quietly(tmp_path):
    script = Path(sys.executable).with_name("reloop2")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([str(script), "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: reloop2") and proc.stderr == ""


def test_a_log_level_the_user_set_wins(tmp_path):
    code = ("import os\nfrom reloop2_tf.cli.main import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint(os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0"


def test_a_command_that_trains_keeps_tensorflow_noise_out_of_the_terminal(tmp_path):
    """What a user sees from `reloop2 bench`: this package's INFO lines and tqdm bars; no
    TensorFlow C++ lines (the CUDA plugin's registration errors), no Keras per-batch bar, no
    tf.function retracing notes."""
    script = Path(sys.executable).with_name("reloop2")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([str(script), "bench", "--dataset", "synthetic", "--quick",
                           "--output", str(tmp_path / "out")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for chunk in proc.stderr.split("\n") for line in chunk.split("\r") if line.strip()]
    assert lines, "no progress at all"
    noise = [line for line in lines if not (line.startswith("INFO reloop2_tf.")
                                            or re.match(r"^(train|replay): +\d+%\|", line))]
    assert noise == [], noise[:10]
    assert any(line.startswith("train: ") for line in lines)  # the training bar is tqdm's
    assert "reloop2" in proc.stdout and "static" in proc.stdout  # the results table

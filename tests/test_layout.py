"""The package layout: unambiguous imports beside same-named packages, no import-time side effects,
no task-family knowledge in the scripts or the training package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DECOY_CHECK = """
import envs, verifiers                      # the decoys, first on sys.path
assert envs.DECOY and verifiers.DECOY
import gymnasium as gym
import r3m.envs, r3m.verifiers, r3m.tools
from r3m.verifiers.sudoku import verify
root = {root!r}
for mod in (r3m.envs, r3m.verifiers, r3m.tools):
    assert mod.__file__.startswith(root), mod.__file__
env = gym.make("sudoku-v0")
obs, info = env.reset(seed=0)
assert obs.startswith("sudoku:") and info["family"] == "sudoku"
from r3m.train import imitate
print("ok")
"""


def test_project_imports_its_own_packages_beside_decoys(tmp_path):
    """Top-level ``envs`` and ``verifiers`` distributions exist on PyPI; with decoys of both first on
    sys.path the project still imports (and registers) its own."""
    for name in ("envs", "verifiers", "tools", "train"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("DECOY = True\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", DECOY_CHECK.format(root=str(ROOT))], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


def test_importing_has_no_side_effects():
    code = """
import logging, sys
import torch
threads = torch.get_num_threads()
import r3m.learn.cli, r3m.learn.reporting, r3m.learn.plots, r3m.learn.evaluation, r3m.learn.rollout
import r3m.train.imitate, r3m.train.rl_verify, r3m.train.evaluate
assert not logging.getLogger("r3m").handlers, "a log handler was installed at import"
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported (it picks a global backend)"
assert torch.get_num_threads() == threads, "thread count changed at import"
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


FAMILY_NAMES = ("sudoku", "arithmetic", "listops", "logic", "dsl", "memory", "instruct", "prefix")


def test_scripts_and_training_code_name_no_family():
    """Family knowledge (decode mode, widths, evaluation sets, helpers) lives on the family: a
    plug-in family must reach every branch a built-in one reaches."""
    pattern = re.compile(r"""(==|!=|\bin)\s*[(\[]?\s*['"](%s)['"]""" % "|".join(FAMILY_NAMES))
    offenders = []
    for folder in ("train", "r3m/learn", "r3m_agent"):
        for path in (ROOT / folder).glob("*.py"):
            for no, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_task_suite_needs_no_torch():
    """``pip install .`` without extras installs the suite alone: it must import without torch."""
    code = ("import sys\nsys.modules['torch'] = None  # importing torch now fails\n"
            "import gymnasium as gym\nfrom r3m import envs, tools, verifiers\n"
            "env = gym.make('arithmetic-v0'); obs, _ = env.reset(seed=0)\n"
            "assert tools.call('calculator', '2*3').output == '6'\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_quick_benchmarks_leave_the_committed_results_alone(tmp_path):
    committed = ROOT / "bench/results/envs.json"
    before = committed.read_bytes()
    proc = subprocess.run([sys.executable, "bench/bench_envs.py", "--quick"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert committed.read_bytes() == before and (ROOT / "bench/results/quick/envs.json").exists()


def _pytest_commands() -> dict[str, list[str]]:
    """The suite's two documented invocations: the README's and the one CI runs (.ci/run)."""
    import shlex

    ci = next(line for line in (ROOT / ".ci/run").read_text().splitlines() if line.startswith("python -m pytest"))
    readme = re.search(r"^(python -m pytest[^#\n]*?)\s*(#|$)", (ROOT / "README.md").read_text(), re.M).group(1)
    return {"ci": shlex.split(ci)[3:], "readme": shlex.split(readme)[3:]}


def test_pytest_as_documented_ends_with_the_passed_count(tmp_path):
    """With the project's pytest settings, the README's and CI's commands print the "N passed" line
    (``-q`` twice, once from ``addopts``, printed only dots: a log that does not say what ran)."""
    (tmp_path / "test_two.py").write_text("def test_a():\n    pass\n\n\ndef test_b():\n    pass\n")
    for name, flags in _pytest_commands().items():
        proc = subprocess.run([sys.executable, "-m", "pytest", *flags, "-c", str(ROOT / "pyproject.toml"),
                               "--rootdir", str(tmp_path), "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                               str(tmp_path / "test_two.py")],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert re.search(r"^=* ?2 passed in [\d.]+s", proc.stdout, re.M), (name, flags, proc.stdout)


def test_a_script_without_the_train_extra_ends_in_one_line_naming_it(tmp_path):
    """In a torch-free install (``pip install .``) a training script, even asked for --help, ends with
    one line naming the extra to install, not a ModuleNotFoundError traceback."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None  # importing torch fails\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    scripts = [*sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "train").glob("[!_]*.py")),
               "bench/bench_model.py"]
    for script in scripts:
        proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=ROOT, env=env,
                              timeout=60)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and proc.stdout == "" and len(lines) == 1, (script, proc.stderr)
        assert lines[0].startswith(f"{Path(script).name}: error: torch not installed") and \
            'pip install -e ".[train]"' in lines[0], lines[0]

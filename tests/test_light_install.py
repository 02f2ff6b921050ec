"""`pip install subprof` is the planner alone: plan, estimate, report, models and gpus run without torch,
transformers or bitsandbytes, and the commands that train or measure name the extra that adds them.

Proved the way a user meets it: a fresh virtual environment holding the project (`--no-deps`) and only the base
dependencies of pyproject.toml, at the versions this test environment runs (a constraints file, so pip takes them
from its cache or the configured package index). About a minute on two shared cores, most of it pip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_MODULES = ("torch", "transformers", "bitsandbytes", "tokenizers")


def _run(args: list[str], *, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


def _project_copy(dest: Path) -> Path:
    """What a wheel is built from, copied out so the build writes no build/ or egg-info into the checkout."""
    keep = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("subprof", "profiles"):
        shutil.copytree(ROOT / name, dest / name, ignore=keep)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def _constraints(path: Path) -> Path:
    """Every distribution of this environment pinned to its version: the light venv resolves to the same ones."""
    pins: dict[str, str] = {}
    for dist in metadata.distributions():  # sys.path order: the first of a name is the one imported
        name = (dist.metadata["Name"] or "").lower()
        if name and name != "subprof":
            pins.setdefault(name, f"{name}=={dist.version}")
    path.write_text("\n".join(sorted(pins.values())) + "\n")
    return path


@pytest.fixture(scope="module")
def light_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A venv with the project and its base dependencies only; (its bin folder, the environment to run it in)."""
    tmp = tmp_path_factory.mktemp("light")
    env_dir = tmp / "venv"
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    except Exception as exc:  # noqa: BLE001 - no ensurepip (Debian without python3-venv), a read-only tmp, …
        pytest.skip(f"could not create a virtual environment: {exc}")
    bin_dir = env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "100"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]

    project = _project_copy(tmp / "src")
    done = _run(pip + ["--no-deps", str(project)], env=env)
    assert done.returncode == 0, f"pip install --no-deps of the project failed:\n{done.stderr[-3000:]}"

    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    done = _run(pip + ["--only-binary=:all:", "-c", str(_constraints(tmp / "pins.txt")), *base], env=env)
    assert done.returncode == 0, f"pip install of the base dependencies {base} failed:\n{done.stderr[-3000:]}"
    return bin_dir, env


def test_base_dependencies_bring_no_torch(light_env: tuple[Path, dict[str, str]]) -> None:
    bin_dir, env = light_env
    probe = "import importlib.util as u; print(*[m for m in %r if u.find_spec(m)])" % (TRAIN_MODULES,)
    done = _run([str(bin_dir / "python"), "-c", probe], env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"the base install pulled in {done.stdout.strip()}"


def test_plan_answers_without_torch(light_env: tuple[Path, dict[str, str]]) -> None:
    bin_dir, env = light_env
    done = _run([str(bin_dir / "subprof"), "plan", "--model", "7b", "--gpu-mem", "24GB"], env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("recommended"), done.stdout[:500]


@pytest.mark.parametrize("args", [["estimate", "--model", "1b", "--method", "galore", "--rank", "512"],
                                  ["models"], ["gpus"]])
def test_planning_commands_run_without_torch(light_env: tuple[Path, dict[str, str]], args: list[str]) -> None:
    bin_dir, env = light_env
    done = _run([str(bin_dir / "subprof"), *args], env=env)
    assert done.returncode == 0, done.stderr


def test_report_runs_without_torch(light_env: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    bin_dir, env = light_env
    out = tmp_path / "procurement.html"
    done = _run([str(bin_dir / "subprof"), "report", "--models", "1b", "--gpus", "4090,h100-sxm", "--tokens", "1B",
                 "--bench", str(ROOT / "profiles/measured/trace_2.15.0.jsonl"), "--out", str(out)], env=env)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0


@pytest.mark.parametrize("args", [["bench", "--model", "60m", "--methods", "galore", "--ranks", "128"],
                                  ["plan", "--model", "60m", "--gpu-mem", "24GB", "--burst"]])
def test_training_commands_name_the_extra(light_env: tuple[Path, dict[str, str]], args: list[str]) -> None:
    bin_dir, env = light_env
    done = _run([str(bin_dir / "subprof"), *args], env=env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert 'pip install "subprof[train]"' in done.stderr


def test_optimizer_import_names_the_extra(light_env: tuple[Path, dict[str, str]]) -> None:
    bin_dir, env = light_env
    done = _run([str(bin_dir / "python"), "-c", "import subprof.optim"], env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: subprof.optim needs torch, which is not installed: "
        "pip install \"subprof[train]\" adds it (in a checkout: pip install \".[train]\")")


def _fenced_commands(text: str) -> list[str]:
    """The one-line commands of README's ```bash blocks, in order."""
    blocks = text.split("```bash\n")[1:]
    return [block.split("```")[0].strip() for block in blocks]


def test_readme_first_commands_are_one_line_and_ci_runs_the_test_command() -> None:
    """README's fresh-machine commands: the light install and plan on one line; the test command is .ci/run's last
    line, verbatim."""
    install, tests = _fenced_commands((ROOT / "README.md").read_text())[:2]
    assert "\n" not in install and "pip install . " in install
    assert install.endswith("subprof plan --model 7b --gpu-mem 24GB")
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == tests


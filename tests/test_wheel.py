"""A wheel install, not an editable one, runs the main job: the package carries its data."""

import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]



def test_a_wheel_builds_the_builtin_data_and_runs_the_tiny_pipeline(tmp_path: Path) -> None:
    """Built without network (the installed setuptools), installed into a fresh virtual environment
    that reuses this one's packages (torch and the rest), and run from outside the repository."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("cfgen-*.whl")
    venv.create(tmp_path / "env", system_site_packages=True, with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    # the system's editable install points at the repository; inside the environment its wheel must win
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)

    def cfgen(*argv: str) -> str:
        result = subprocess.run([python, "-m", "cfgen", *argv], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    where = subprocess.run([python, "-c", "import cfgen; print(cfgen.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert str(tmp_path / "env") in where
    cfgen("make-dataset", "colored-mnist", "--out", "digits", "--train-size", "100", "--validation-size", "0",
          "--test-size", "20", "--test-anti-size", "0")  # fmt: skip
    assert len(list((tmp_path / "digits" / "images").iterdir())) == 120
    cfgen("pipeline", "--preset", "tiny", "--out", "run")
    assert (tmp_path / "run" / "report.md").is_file()

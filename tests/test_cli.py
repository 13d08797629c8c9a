"""The command line: make-dataset, measure in compare mode, the top-level script's exit codes, flag names."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from cfgen.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--train-size", "300", "--validation-size", "0", "--test-size", "40", "--test-anti-size", "0"]


def test_make_dataset_measure_and_compare(tmp_path: Path) -> None:
    data, other = tmp_path / "data", tmp_path / "other"
    ties = ["--tie", "digit:fg_color=0.95", "--tie", "fg_color:bg_color=0.8"]
    assert main(["make-dataset", "colored-mnist", "--out", str(data), *ties, *SMALL]) == 0
    assert main(["make-dataset", "colored-mnist", "--out", str(other), "--strength", "0", *SMALL]) == 0
    card = json.loads((data / "cfgen_dataset.json").read_text())
    assert card["builtin"]["config"]["ties"] == [["digit", "fg_color", 0.95], ["fg_color", "bg_color", 0.8]]

    assert (
        main(["measure", str(other), "--out", str(tmp_path / "m"), "--reference", str(data), "--bootstrap", "50"]) == 0
    )
    report = json.loads((tmp_path / "m" / "confounding.json").read_text())
    association, before = report["association"], report["reference"]["association"]
    assert association["fg_color"]["bg_color"] < 0.3 < before["fg_color"]["bg_color"]
    change = report["change"]["association"]["digit"]["fg_color"]
    assert change < -0.6
    assert (tmp_path / "m" / "confounding.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "m" / "run.json").read_text())["seed"] == 0


def test_script_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, str(ROOT / "measure_confounding.py"), str(tmp_path / "empty"), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_one_flag_name_per_meaning_old_spellings_still_read(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    assert main(["make-dataset", "colored-mnist", "--out", str(data), *SMALL]) == 0
    assert main(["measure", "--data", str(data), "--out", str(tmp_path / "m"), "--bootstrap", "10"]) == 0
    assert main(["measure", str(data), "--data", str(data), "--out", str(tmp_path / "m2")]) == 2
    assert "give the dataset folder(s) once" in capsys.readouterr().err
    from cfgen.cli.train_classifier import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--data", str(data), "--method", "erm", "--out", str(tmp_path / "c")]
    assert config_from_args(parser.parse_args([*base, "--learning-rate", "0.01"])).lr == 0.01
    assert config_from_args(parser.parse_args([*base, "--lr", "0.02"])).lr == 0.02
    assert "note: --lr is deprecated; use --learning-rate" in capsys.readouterr().err
    assert "--lr" not in parser.format_help()

    from cfgen.cli.generate import add_arguments as generate_arguments

    parser = argparse.ArgumentParser()
    generate_arguments(parser)
    base = ["--generator", "g", "--data", "d", "--intervene", "fg_color=red", "--out", "o"]
    assert parser.parse_args([*base, "--no-localize"]).localize == "no"
    assert "note: --no-localize is deprecated; use --localize no" in capsys.readouterr().err


def test_every_flag_has_help_and_shows_its_default() -> None:
    for name in COMMANDS:
        parser = build_parser(name)
        command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0] if action.option_strings else action.dest
            assert action.help, f"{name} {flag} has no help text"
            shown = action.default in (None, False, (), {}) or action.required or "default" in action.help
            assert shown or f"(default: {action.default})" in text, f"{name} {flag}: default not shown"

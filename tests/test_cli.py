import subprocess
import sys

from jaxflow.cli import main


def test_flow_command_prints_outcome_table(capsys):
    rc = main(["flow", "matrix-completion", "--n", "300", "--t1", "200"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "CONVERGED" in out and "HORIZON" in out and "95% interval" in out.replace("\n", " ") or "95%" in out


def test_problems_command_lists_builtins(capsys):
    assert main(["problems"]) == 0
    assert "matrix-completion" in capsys.readouterr().out


def test_bad_input_exit_code_and_message():
    proc = subprocess.run(
        [sys.executable, "-m", "jaxflow.cli", "flow", "no-such-problem", "--n", "5"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "unknown problem 'no-such-problem'" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "jaxflow.cli", "flow", "matrix-completion", "--n", "0"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "--n must be positive" in proc.stderr

import re
import subprocess
import sys

import pytest

from jaxflow import problems
from jaxflow._unicode_math import docstring_text, unicode_math
from jaxflow.cli import main


def test_flow_command_prints_outcome_table(capsys):
    rc = main(["flow", "matrix-completion", "--n", "300", "--t1", "200"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "CONVERGED" in out and "HORIZON" in out and "95% interval" in out.replace("\n", " ") or "95%" in out


def test_problems_command_lists_builtins(capsys):
    assert main(["problems"]) == 0
    out = capsys.readouterr().out
    assert "matrix-completion" in out
    # Descriptions are rendered for the terminal: no LaTeX left.
    assert re.search(r"\\[A-Za-z|,]", out) is None and "$" not in out
    assert "L̃(θ, a, b)" in out and "½‖W_L" in out


@pytest.mark.parametrize("latex, text", [
    (r"\tilde L(\theta) = L(\theta)(1 + (a e^b - 1)^2) + \lambda a^2",
     "L̃(θ) = L(θ)(1 + (a eᵇ - 1)²) + λ a²"),
    (r"\tfrac12\|W_L\cdots W_1 X - Y\|_F^2", "½‖W_L⋯ W₁ X - Y‖_F²"),
    (r"\frac{1}{2m}\sum_i (\langle A_i, XY^T\rangle_F - b_i)^2", "1/(2m)Σᵢ (⟨Aᵢ, XYᵀ⟩_F - bᵢ)²"),
    (r"w_{L-1}, M_{ij} \ne 0, x \le y, \mathbb R, \operatorname{rank} M",
     "w_(L-1), Mᵢⱼ ≠ 0, x ≤ y, ℝ, rank M"),
    (r"\unknown{x}", "unknownx"),
])
def test_unicode_math(latex, text):
    assert unicode_math(latex) == text


def test_every_problem_docstring_renders_without_latex():
    for name in problems.names():
        text = docstring_text(problems.info(name))
        assert re.search(r"\\[A-Za-z|,]", text) is None and "$" not in text, name


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


def test_solver_names_include_jaxflow_steppers():
    import diffrax

    import jaxflow as jf
    from jaxflow.cli import _solver_from_name

    assert _solver_from_name("auto") == "auto"
    assert isinstance(_solver_from_name("Kvaerno5"), diffrax.Kvaerno5)
    assert isinstance(_solver_from_name("Rodas4"), jf.Rodas4)
    assert isinstance(_solver_from_name("jaxflow.Rodas4"), jf.Rodas4)
    assert _solver_from_name("ProxLinear:estimate=euler") == jf.ProxLinear(estimate="euler")
    assert _solver_from_name("ProxLinear:estimate=midpoint,newton_iters=2") == jf.ProxLinear(
        estimate="midpoint", newton_iters=2
    )
    for bad, message in [
        ("Rodas5x", "unknown solver 'Rodas5x'"),
        ("Kvaerno5:x=1", "only jaxflow steppers take parameters"),
        ("ProxLinear:estimate", "parameters are key=value"),
        ("ProxLinear:nope=1", "nope"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            _solver_from_name(bad)


def test_flow_command_extend_undecided(capsys):
    # Remark 3.3's escape (x -> infinity like log t) from t1 = 10, continued to 1e3.
    assert main(["flow", "unbounded-trajectory", "--n", "16", "--t1", "10",
                 "--extend-undecided", "1e3"]) == 0
    assert "ESCAPING" in capsys.readouterr().out
    assert main(["flow", "unbounded-trajectory", "--n", "4", "--t1", "10",
                 "--extend-undecided", "5"]) == 2
    assert "extend_undecided must be a finite horizon above t1" in capsys.readouterr().err

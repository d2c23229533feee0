"""The examples run exactly the steps they announce: no extra epoch or step, and the
schedule ends where the run ends."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_logistic_regression_runs_its_epochs_and_reports_the_final_weights(capsys):
    example = _example("logistic_regression")
    opt, w, b = example.main(epochs=3, batch=500)
    assert int(opt.iterations.numpy()) == 3 * 4  # 2,000 samples in batches of 500
    x, y = example.make_problem()
    loss, _, _ = example.loss_and_grads(w, b, x, y)
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"3 epochs, 12 optimizer steps; final loss {loss:.4f}")


@pytest.mark.parametrize("name", ["torch_training", "jax_training"])
def test_framework_examples_end_with_the_schedule(name):
    pytest.importorskip(name.split("_")[0])
    opt, _ = _example(name).main(steps=30, warmup=5)
    assert int(opt.iterations.numpy()) == 30
    assert float(opt.learning_rate) == pytest.approx(0.0, abs=1e-7)  # the cosine has reached its end

"""The first minutes of a newcomer: what prints, what a typo says, what a type checker sees."""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import torch

import polyak
import polyak.optax
import polyak.torch
from polyak import schedules

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


# --- reprs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,expected", [
    (lambda: polyak.SGD(), "SGD()"),
    (lambda: polyak.SGD(learning_rate=0.1, momentum=0.9, nesterov=True),
     "SGD(learning_rate=0.1, momentum=0.9, nesterov=True)"),
    (lambda: polyak.SGD(0.1, global_clipnorm=1.0, use_ema=True, skip_nonfinite=True, name="mine"),
     "SGD(learning_rate=0.1, global_clipnorm=1.0, use_ema=True, name='mine', skip_nonfinite=True)"),
    (lambda: polyak.SGD(schedules.ExponentialDecay(0.1, decay_steps=100, decay_rate=0.9)),
     "SGD(learning_rate=ExponentialDecay(initial_learning_rate=0.1, decay_steps=100, decay_rate=0.9))"),
    (lambda: polyak.LossScaleOptimizer(polyak.SGD(momentum=0.5), initial_scale=8.0),
     "LossScaleOptimizer(inner_optimizer=SGD(momentum=0.5), initial_scale=8.0)"),
    (lambda: schedules.CosineDecay(0.1, 1000, warmup_steps=10, warmup_target=0.2),
     "CosineDecay(initial_learning_rate=0.1, decay_steps=1000, warmup_target=0.2, warmup_steps=10)"),
    (lambda: schedules.PiecewiseConstantDecay([10], [0.1, 0.01]),
     "PiecewiseConstantDecay(boundaries=[10], values=[0.1, 0.01])"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_a_repr_is_the_call_with_the_arguments_that_differ_from_the_defaults(make, expected):
    assert repr(make()) == expected


def test_a_config_round_trip_keeps_the_repr():
    opt = polyak.SGD(schedules.InverseTimeDecay(0.1, 10, 0.5, staircase=True), momentum=0.9)
    assert repr(polyak.SGD.from_config(opt.get_config())) == repr(opt)


def test_a_callable_rate_and_a_schedule_without_config_show_by_their_own_repr():
    def rate():
        return 0.1

    class Constant(schedules.LearningRateSchedule):
        def __call__(self, step):
            return 0.1

    assert repr(polyak.SGD(rate)) == f"SGD(learning_rate={rate!r})"
    constant = Constant()
    assert repr(polyak.SGD(constant)) == f"SGD(learning_rate={object.__repr__(constant)})"


def test_the_torch_face_prints_every_option_of_each_group_in_torchs_format():
    model = torch.nn.Linear(2, 1)
    decay = schedules.ExponentialDecay(0.1, 10, 0.5)
    opt = polyak.torch.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": decay}], lr=0.2,
                           momentum=0.9, global_clipnorm=1.0, use_ema=True)
    text = str(opt)
    assert text.startswith("SGD (\nParameter Group 0\n    ") and text.endswith("\n)")
    groups = text.removeprefix("SGD (\n").removesuffix(")").split("\n\n")
    assert len(groups) == 2
    options = ["clipnorm", "clipvalue", "ema_momentum", "ema_overwrite_frequency", "global_clipnorm",
               "gradient_accumulation_steps", "loss_scale_factor", "lr", "master_weights", "momentum", "nesterov",
               "skip_nonfinite", "use_ema", "weight_decay"]
    for k, group in enumerate(groups):
        lines = group.splitlines()
        assert lines[0] == f"Parameter Group {k}"
        assert [line.split(":")[0].strip() for line in lines[1:]] == options  # sorted, as torch prints them
    assert "    global_clipnorm: 1.0\n" in groups[0] and "    use_ema: True\n" in groups[1]
    assert "    lr: 0.2\n" in groups[0] and f"    lr: {decay!r} (now 0.1)\n" in groups[1]


# --- misspelt keywords --------------------------------------------------------------------------
HINTS = [
    ("learning_rat", "`learning_rat`: did you mean `learning_rate`?", "`learning_rat`: did you mean `lr`?"),
    ("lr", "`lr`: {face} takes `learning_rate` (`lr` is polyak.torch.SGD's name for it).", None),
    ("learning_rate", None, "`learning_rate`: polyak.torch.SGD takes `lr` (`learning_rate` is polyak.SGD's name "
                            "for it)."),
    ("momentun", "`momentun`: did you mean `momentum`?", "`momentun`: did you mean `momentum`?"),
    ("global_clip_norm", "`global_clip_norm`: did you mean `global_clipnorm`?",
     "`global_clip_norm`: did you mean `global_clipnorm`?"),
]
FACES = {
    "polyak.SGD": lambda **kw: polyak.SGD(**kw),
    "polyak.optax.sgd": lambda **kw: polyak.optax.sgd(**kw),
    "polyak.torch.SGD": lambda **kw: polyak.torch.SGD([torch.nn.Parameter(torch.ones(2))], **kw),
}


#: (face, keyword, hint) wherever the face does not take the keyword
CASES = [(face, key, (torch_hint if face == "polyak.torch.SGD" else keras_hint).format(face=face))
         for key, keras_hint, torch_hint in HINTS for face in FACES
         if (torch_hint if face == "polyak.torch.SGD" else keras_hint) is not None]


@pytest.mark.parametrize("face,key,hint", CASES)
def test_a_misspelt_keyword_keeps_keras_error_and_adds_a_hint(face, key, hint):
    with pytest.raises(ValueError) as info:
        FACES[face](**{key: 0.1})
    assert str(info.value) == f"Argument(s) not recognized: {{{key!r}: 0.1}}. {hint}"


def test_keras_itself_says_the_same_before_the_hint():
    with pytest.raises(ValueError) as theirs:
        keras.optimizers.SGD(learning_rat=0.1)
    with pytest.raises(ValueError) as ours:
        polyak.SGD(learning_rat=0.1)
    assert str(ours.value).startswith(str(theirs.value))


def test_several_unknown_keywords_get_a_hint_each_where_one_resembles():
    with pytest.raises(ValueError) as info:
        polyak.SGD(momentun=0.9, zzz=1)
    assert str(info.value) == ("Argument(s) not recognized: {'momentun': 0.9, 'zzz': 1}. "
                               "`momentun`: did you mean `momentum`?")


def test_a_torch_param_group_key_gets_the_same_hint():
    with pytest.raises(ValueError) as info:
        polyak.torch.SGD([{"params": [torch.nn.Parameter(torch.ones(2))], "learning_rate": 0.1}])
    assert str(info.value).startswith("Param group 0 has unknown key(s) ['learning_rate']")
    assert str(info.value).endswith("`learning_rate`: polyak.torch.SGD takes `lr` (`learning_rate` is "
                                    "polyak.SGD's name for it).")


# --- keras.Variable -------------------------------------------------------------------------------
KERAS_MESSAGE = ("Trainable variable 0 is a Keras variable: polyak.SGD steps polyak.Variables and arrays (NumPy "
                 "arrays, torch tensors, JAX arrays), not keras.Variables. To train a Keras model, use "
                 "keras.optimizers.SGD in `model.fit`, or step the variables' arrays, "
                 "`[v.value for v in model.trainable_variables]`")


def _model():
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])


@pytest.mark.parametrize("face", ["polyak.SGD", "polyak.optax.sgd", "polyak.torch.SGD"])
def test_keras_variables_are_refused_with_what_to_do_on_every_face(face):
    variables = _model().trainable_variables
    with pytest.raises(TypeError) as info:
        if face == "polyak.SGD":
            polyak.SGD().apply([np.ones((2, 1)), np.ones(1)], variables)
        elif face == "polyak.optax.sgd":
            polyak.optax.sgd().init({"kernel": variables[0], "bias": variables[1]})
        else:
            polyak.torch.SGD(variables)
    assert str(info.value).startswith(KERAS_MESSAGE)
    assert f"Received: trainable_variables[0] of type {type(variables[0]).__name__} (from keras." in str(info.value)


def test_the_advice_works_the_variables_arrays_are_stepped_in_place():
    model = _model()
    before = [v.numpy().copy() for v in model.trainable_variables]
    grads = [np.ones(v.shape, "float32") for v in model.trainable_variables]
    polyak.SGD(learning_rate=0.5).apply(grads, [v.value for v in model.trainable_variables])
    for b, v in zip(before, model.trainable_variables):
        np.testing.assert_allclose(v.numpy(), b - 0.5)


# --- torch.compile's graph break ------------------------------------------------------------------
GRAPH_BREAK = """
import torch
import polyak.torch

model = torch.nn.Linear(2, 1)
opt = polyak.torch.SGD(model.parameters(), lr=0.1)
model(torch.ones(3, 2)).sum().backward()

@torch.compile(backend="eager")
def train_step(x):
    y = x * 2
    opt.step()
    return y + 1

train_step(torch.ones(2))
print("bias after the step:", float(model.bias.detach()))
"""


def test_the_graph_break_under_torch_compile_logs_its_reason():
    env = dict(os.environ, TORCH_LOGS="graph_breaks", PYTHONPATH=str(SRC))
    run = subprocess.run([sys.executable, "-c", GRAPH_BREAK], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "(reason: polyak.torch.SGD.step runs eagerly, outside the compiled graph" in run.stderr
    assert "(reason: None)" not in run.stderr
    assert "bias after the step:" in run.stdout


# --- types ----------------------------------------------------------------------------------------
def test_the_wheel_ships_py_typed(tmp_path):
    project = tmp_path / "project"  # a copy: building writes build/ and egg-info beside the sources
    shutil.copytree(SRC, project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path), str(project)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("polyak-*.whl")
    assert "polyak/py.typed" in zipfile.ZipFile(wheel).namelist()


MISSPELT = """
import torch
import polyak
import polyak.torch

polyak.SGD(learning_rat=0.1)
polyak.torch.SGD(torch.nn.Linear(2, 1).parameters(), learning_rate=0.1)
"""


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_strict_accepts_a_users_script_and_flags_misspelt_keywords(tmp_path):
    misspelt = tmp_path / "misspelt.py"
    misspelt.write_text(MISSPELT)
    script = Path(__file__).with_name("typed_user_script.py")
    cache = Path(tempfile.gettempdir()) / "polyak-mypy-cache"  # kept between runs: a cold one reads all of torch
    env = dict(os.environ, MYPYPATH=str(SRC))
    run = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                          f"--cache-dir={cache}", "--no-error-summary", str(script), str(misspelt)],
                         capture_output=True, text=True, env=env, timeout=600)
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert not [line for line in errors if "typed_user_script.py" in line], run.stdout
    assert len(errors) == 2, run.stdout
    assert ':6: error: Argument "learning_rat" to "SGD" has incompatible type "float"; expected "Never"' in errors[0]
    assert ':7: error: Argument "learning_rate" to "SGD" has incompatible type "float"; expected "Never"' in errors[1]


def test_the_users_script_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("typed_user_script", Path(__file__).with_name("typed_user_script.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(str(tmp_path))

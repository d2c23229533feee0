"""The options table (polyak.options): every face checks every option by it, with one error.

Each face names an option its own way (``lr`` on polyak.torch.SGD, ``param_groups[1]['lr']``
for a group's own), and otherwise raises the same error, type and words, as polyak.SGD; values
that only exist at the step (a schedule's rate, a group's fields set later) get the same checks
before anything is written; checking builds no optimizer (automatic names stay Keras's); a
torch face's checkpoint records its class and its real options.
"""

import inspect
import json
import math
import re

import numpy as np
import pytest

import optimizer_db as db
import polyak
from polyak import options
from polyak.saving import files

torch = pytest.importorskip("torch")
import polyak.torch  # noqa: E402

optax_face = pytest.importorskip("polyak.optax")

#: option -> (a good value, bad values). Every option of the table has a row.
VALUES = {
    "learning_rate": (0.1, [math.nan, -0.1, math.inf, 1e39, 10**400, "fast", True, None]),
    "momentum": (0.5, [1.5, -0.1, 10**400, math.nan, "0.9", None]),
    "nesterov": (True, [1, "yes", None]),
    "weight_decay": (1e-4, [-1e-4, math.nan, 10**400, "x"]),
    "clipnorm": (1.0, [-1.0, math.inf, "big"]),
    "global_clipnorm": (1.0, [-1.0, math.nan]),
    "clipvalue": (0.5, [-0.5, 10**400]),
    "use_ema": (True, [1, "yes"]),
    "ema_momentum": (0.9, [1.5, -0.5, math.nan]),
    "ema_overwrite_frequency": (3, [0, 1.5, 2**64]),
    "loss_scale_factor": (128.0, [0.0, math.inf, -1.0]),
    "gradient_accumulation_steps": (2, [1, 2.5, True]),
    "master_weights": (True, [1]),
    "skip_nonfinite": (True, ["yes"]),
    "name": ("my_sgd", [3]),
    "exclude_from_weight_decay": (["bias"], ["bias", [3]]),
    "weight_decay_mask": ({"w": True}, []),  # a tree checked against the params at init
}


def _param():
    return torch.nn.Parameter(torch.ones(2))


#: face -> how to make it with one option set (by that face's name) and the name its error gives
MAKERS = {
    "polyak.SGD": lambda key, value: polyak.SGD(**{key: value}),
    "LossScaleOptimizer": lambda key, value: polyak.optimizers.LossScaleOptimizer(polyak.SGD(**{key: value})),
    "polyak.optax.sgd": lambda key, value: optax_face.sgd(**{key: value}),
    "polyak.torch.SGD": lambda key, value: polyak.torch.SGD([_param()], **{key: value}),
    "polyak.torch.SGD group 1": lambda key, value: polyak.torch.SGD([{"params": [_param()]},
                                                                     {"params": [_param()], key: value}]),
}
FACE_OF = {"polyak.SGD": options.KERAS, "LossScaleOptimizer": options.KERAS, "polyak.optax.sgd": options.OPTAX,
           "polyak.torch.SGD": options.TORCH, "polyak.torch.SGD group 1": options.TORCH}


def _takes(maker, option):
    face = FACE_OF[maker]
    return face in option.faces and (not maker.endswith("group 1") or option.per_group)


def _label(maker, option):
    own = option.name_on(FACE_OF[maker])
    return f"param_groups[1]['{own}']" if maker.endswith("group 1") else own


def _cases(good):
    for option in options.OPTIONS:
        good_value, bad_values = VALUES[option.name]
        for maker in MAKERS:
            if _takes(maker, option):
                for value in ([good_value] if good else bad_values):
                    yield pytest.param(option, maker, value, id=f"{maker}-{option.name}={value!r}"[:90])


def _error(make):
    try:
        make()
    except (TypeError, ValueError) as error:
        return error
    raise AssertionError("accepted")


def _reference_error(option, value):
    """The error of the first face that takes ``option`` (polyak.SGD, or optax for its own)."""
    if options.KERAS in option.faces:
        return _error(lambda: polyak.SGD(**{option.name: value}))
    return _error(lambda: optax_face.sgd(**{option.name: value}))


def test_every_option_has_values_to_test_and_the_table_names_each_once():
    assert set(VALUES) == {o.name for o in options.OPTIONS}
    assert len(options.BY_NAME) == len(options.OPTIONS)
    assert [o.name for o in options.PER_GROUP] == ["learning_rate", "momentum", "nesterov", "weight_decay"]


@pytest.mark.parametrize("option,maker,value", list(_cases(good=True)))
def test_a_good_value_is_accepted_on_every_face(option, maker, value):
    MAKERS[maker](option.name_on(FACE_OF[maker]), value)


@pytest.mark.parametrize("option,maker,value", list(_cases(good=False)))
def test_a_bad_value_gets_one_and_the_same_error_on_every_face(option, maker, value):
    """The error of polyak.SGD, in the face's name for the option: same type, same words."""
    label = _label(maker, option)
    want = _reference_error(option, value)
    got = _error(lambda: MAKERS[maker](option.name_on(FACE_OF[maker]), value))
    assert type(got) is type(want)
    expected = str(want).replace(f"`{option.name}`", f"`{label}`").replace(f"Received: {option.name}=",
                                                                         f"Received: {label}=")
    assert str(got) == expected
    assert str(got).startswith(f"`{label}") and f"Received: {label}" in str(got)


@pytest.mark.parametrize("maker", ["polyak.SGD", "LossScaleOptimizer", "polyak.optax.sgd", "polyak.torch.SGD",
                                   "polyak.torch.SGD group 1"])
@pytest.mark.parametrize("key,value,text", [
    ("learning_rate", 1e39, "must be finite in float32 (the rate's dtype). Received: {}=1e+39"),
    ("momentum", 10**400, "must be a float between [0, 1]. Received: {}=" + str(10**400)),
])
def test_the_issue_values_are_refused_at_construction_with_a_value_error(maker, key, value, text):
    option = options.BY_NAME[key]
    label = _label(maker, option)
    with pytest.raises(ValueError) as info:
        MAKERS[maker](option.name_on(FACE_OF[maker]), value)
    assert str(info.value) == f"`{label}` " + text.format(label)


def test_two_clipping_options_are_refused_alike_on_every_face():
    want = _error(lambda: polyak.SGD(clipnorm=1.0, clipvalue=1.0))
    assert str(_error(lambda: optax_face.sgd(clipnorm=1.0, clipvalue=1.0))) == str(want)
    assert str(_error(lambda: polyak.torch.SGD([_param()], clipnorm=1.0, clipvalue=1.0))) == str(want)


# --- signatures, docstrings and hints read the table ----------------------------------------------
FUNCTIONS = {options.KERAS: polyak.SGD, options.TORCH: polyak.torch.SGD, options.OPTAX: optax_face.sgd}


def _keywords(function):
    target = function.__init__ if inspect.isclass(function) else function
    return {p.name: p.default for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", "params")}


def _documented(function):
    """The names the docstring's ``Args:`` section lists (``a, b: ...`` lists two)."""
    doc = inspect.getdoc(function)
    block = re.search(r"^Args:\n((?:    .*\n|\n)+?)(?=\S|\Z)", doc + "\n", re.M).group(1)
    heads = re.findall(r"^    ([a-z_]+(?:,\s*[a-z_]+)*):", block, re.M)
    return {name.strip() for head in heads for name in head.split(",")}


@pytest.mark.parametrize("face", options.FACES)
def test_each_face_signature_and_docstring_list_exactly_the_table_options_with_its_defaults(face):
    keywords = _keywords(FUNCTIONS[face])
    table = {o.name_on(face): o.default for o in options.of_face(face)}
    assert keywords == table
    assert _documented(FUNCTIONS[face]) - {"params"} == set(table)


@pytest.mark.parametrize("face,misspelt,hint", [
    (options.KERAS, "nesterow", "`nesterow`: did you mean `nesterov`?"),
    (options.TORCH, "learning_rate", "`learning_rate`: polyak.torch.SGD takes `lr`"),
    (options.OPTAX, "lr", "`lr`: polyak.optax.sgd takes `learning_rate`"),
    (options.OPTAX, "weight_decay_masks", "`weight_decay_masks`: did you mean `weight_decay_mask`?"),
])
def test_hints_for_misspelt_keywords_come_from_the_table(face, misspelt, hint):
    make = {options.KERAS: lambda: polyak.SGD(**{misspelt: 1}),
            options.TORCH: lambda: polyak.torch.SGD([_param()], **{misspelt: 1}),
            options.OPTAX: lambda: optax_face.sgd(**{misspelt: 1})}[face]
    assert hint in str(_error(make))


# --- values that arrive at the step -------------------------------------------------------------
class TurnsBad(polyak.schedules.LearningRateSchedule):
    """0.1 for the first ``good`` steps, then ``bad``."""

    def __init__(self, bad, good=1):
        self.bad = bad
        self.good = good

    def __call__(self, step):
        return np.float32(0.1) if int(step) < self.good else np.float32(self.bad)

    def get_config(self):
        return {"bad": self.bad}


def _callable_turning(bad, good=1):
    calls = []

    def rate():
        calls.append(1)
        return 0.1 if len(calls) <= good else bad

    return rate


def _weights(backend):
    values = [np.arange(6, dtype=np.float32).reshape(3, 2), np.ones(4, np.float32)]
    return [db.array(backend, v) for v in values]


@pytest.mark.parametrize("bad", [math.nan, -0.1, -math.inf, math.inf])
@pytest.mark.parametrize("kind", ["schedule", "callable"])
@pytest.mark.parametrize("wrapped", [False, True], ids=["SGD", "LossScaleOptimizer"])
@pytest.mark.parametrize("backend,tier", [("numpy", "reference"), ("numpy", "cpu_fused"), ("torch", "reference"),
                                          ("torch", "cpu_fused"), ("torch", "foreach")])
def test_a_bad_scheduled_or_callable_rate_is_refused_at_the_step_and_nothing_is_written(
        bad, kind, wrapped, backend, tier, monkeypatch):
    if tier == "foreach":
        monkeypatch.setenv("POLYAK_TIER", "foreach")
    rate = TurnsBad(bad, good=2) if kind == "schedule" else _callable_turning(bad, good=2)
    opt = polyak.SGD(learning_rate=rate, momentum=0.9, use_ema=True)
    if wrapped:
        opt = polyak.optimizers.LossScaleOptimizer(opt)
    db.use_tier(opt, "reference" if tier == "reference" else "cpu_fused")
    weights = _weights(backend)
    grads = [w * 0 + 1 for w in weights]
    for _ in range(2):
        opt.apply(grads, weights)
    assert db.tier_that_ran(opt) == tier  # the tier that would run the refused step
    snapshot = db.state(opt, weights)
    with pytest.raises(ValueError) as info:
        opt.apply(grads, weights)
    assert str(info.value).startswith("`learning_rate` must be finite and >= 0 at every step")
    assert re.search(rf"Received: learning_rate={re.escape(repr(bad))}\b", str(info.value))
    for before, after in zip(snapshot, db.state(opt, weights)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("bad", [math.nan, -0.1])
def test_stateless_apply_refuses_a_bad_scheduled_rate_on_host_values(bad):
    opt = polyak.SGD(learning_rate=TurnsBad(bad))
    weights = _weights("numpy")
    opt.build(weights)
    values = [v.numpy() for v in opt.variables]
    values[0] = np.int64(1)  # the iteration: the schedule returns ``bad``
    with pytest.raises(ValueError, match=r"`learning_rate` must be finite and >= 0 at every step"):
        opt.stateless_apply(values, [np.ones_like(w) for w in weights], weights)


def _two_groups(**kwargs):
    params = [torch.nn.Parameter(torch.arange(3.0)), torch.nn.Parameter(torch.ones(2))]
    opt = polyak.torch.SGD([{"params": params[:1]}, {"params": params[1:]}], **kwargs)
    return opt, params


def _step(opt, params):
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()


def _torch_state(opt, params):
    return [p.detach().clone() for p in params] + [v.detach().clone() for p in params for v in opt.state[p].values()]


@pytest.mark.parametrize("key,bad", [("lr", math.nan), ("lr", -0.1), ("lr", math.inf), ("lr", 1e39),
                                     ("lr", "fast"), ("momentum", 1.5), ("momentum", 10**400),
                                     ("nesterov", 1), ("weight_decay", -1.0)])
def test_a_group_field_set_after_construction_is_refused_at_step_naming_it(key, bad):
    opt, params = _two_groups(lr=0.1, momentum=0.9)
    _step(opt, params)
    before = _torch_state(opt, params)
    opt.param_groups[1][key] = bad
    with pytest.raises((ValueError, TypeError)) as info:
        _step(opt, params)
    label = f"param_groups[1]['{key}']"
    assert str(info.value).startswith(f"`{label}` must be ") and f"Received: {label}=" in str(info.value)
    want = _reference_error(options.BY_NAME["learning_rate" if key == "lr" else key], bad)
    assert type(info.value) is type(want)  # as at construction: ValueError for a number out of range
    for a, b in zip(before, _torch_state(opt, params)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [math.nan, -0.1])
def test_a_group_schedule_turning_bad_is_refused_at_step_naming_the_group_lr(bad):
    params = [torch.nn.Parameter(torch.arange(3.0)), torch.nn.Parameter(torch.ones(2))]
    opt = polyak.torch.SGD([{"params": params[:1]}, {"params": params[1:], "lr": TurnsBad(bad)}], lr=0.1,
                           momentum=0.9)
    _step(opt, params)
    before = _torch_state(opt, params)
    with pytest.raises(ValueError, match=r"^`param_groups\[1\]\['lr'\]` must be finite and >= 0 at every step"):
        _step(opt, params)
    for a, b in zip(before, _torch_state(opt, params)):
        assert torch.equal(a, b)


def test_a_schedule_set_into_a_group_after_it_was_added_is_refused():
    opt, params = _two_groups(lr=0.1)
    opt.param_groups[1]["lr"] = TurnsBad(0.1)
    with pytest.raises(TypeError, match=r"`param_groups\[1\]\['lr'\]` must be a float >= 0 \(a schedule"):
        _step(opt, params)


# --- no throwaway optimizers ------------------------------------------------------------------------
def test_building_and_using_the_torch_and_optax_faces_leaves_automatic_names_alone(tmp_path):
    polyak.clear_session()
    opt, params = _two_groups(lr=0.1, momentum=0.5)
    opt.exclude_from_weight_decay(var_names=["bias"])
    _step(opt, params)
    polyak.save(tmp_path / "opt.safetensors", opt)
    tx = optax_face.sgd(0.1, momentum=0.9, exclude_from_weight_decay=["b"])
    import jax.numpy as jnp

    tree = {"w": jnp.ones(2), "b": jnp.ones(1)}
    tx.update(tree, tx.init(tree), tree)
    assert polyak.SGD().name == "sgd"
    assert polyak.SGD().name == "sgd_1"


# --- the torch face's checkpoint ---------------------------------------------------------------------
def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _face(model):
    named = list(model.named_parameters())
    return polyak.torch.SGD([{"params": named[:2]}, {"params": named[2:], "lr": 0.05}], lr=0.1, momentum=0.5)


def _train(model, opt, steps, start=0):
    for k in range(start, start + steps):
        x = torch.linspace(-1, 1, 15).reshape(5, 3) * (k + 1)
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()


def test_a_two_group_torch_checkpoint_records_the_public_class_and_real_options_and_resumes(tmp_path):
    path = tmp_path / "opt.safetensors"
    straight = _model()
    _train(straight, _face(straight), 5)
    first = _model()
    opt = _face(first)
    _train(first, opt, 3)
    polyak.save(path, opt, variables=list(first.parameters()))
    _, metadata = files.read(str(path))
    saved = json.loads(metadata["config"])
    assert (saved["module"], saved["class_name"]) == ("polyak.torch", "SGD")
    groups = saved["config"]["param_groups"]
    assert [(g["lr"], g["momentum"], g["nesterov"], g["params"]) for g in groups] == [(0.1, 0.5, False, 2),
                                                                                     (0.05, 0.5, False, 2)]
    assert groups[1]["param_names"] == ["2.weight", "2.bias"]
    assert saved["config"]["momentum"] == 0.5 and saved["config"]["ema_momentum"] == 0.99
    assert '"momentum": 0.9' not in metadata["config"]  # no placeholder

    resumed = _model(seed=1)
    fresh = _face(resumed)
    assert polyak.load(path, fresh, variables=list(resumed.parameters())) is fresh
    _train(resumed, fresh, 2, start=3)
    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(a, b)


def _saved_face(path, steps):
    """A two-group face trained ``steps`` steps, saved at ``path`` with its weights."""
    model = _model()
    opt = _face(model)
    _train(model, opt, steps)
    polyak.save(path, opt, variables=list(model.parameters()))


def test_loading_a_torch_checkpoint_without_an_optimizer_says_to_pass_one_and_changes_nothing(tmp_path):
    path = tmp_path / "opt.safetensors"
    _saved_face(path, 2)
    other = _model(seed=3)
    before = [p.detach().clone() for p in other.parameters()]
    with pytest.raises(ValueError) as info:
        polyak.load(path, variables=list(other.parameters()))
    assert "polyak.torch.SGD with 2 param groups" in str(info.value) and "optimizer=" in str(info.value)
    assert "_GroupedSGD" not in str(info.value)
    for a, b in zip(before, other.parameters()):
        assert torch.equal(a, b)


def test_an_earlier_torch_checkpoint_naming_the_private_class_gets_the_same_advice(tmp_path):
    path = tmp_path / "old.safetensors"
    _saved_face(path, 1)
    tensors, metadata = files.read(str(path))
    metadata = dict(metadata, config=json.dumps({"module": "polyak.torch_face.sgd", "class_name": "_GroupedSGD",
                                                 "config": {"momentum": 0.9}, "registered_name": None}))
    files.write(str(path), tensors, metadata)
    with pytest.raises(ValueError, match=r"holds the state of a polyak.torch.SGD.*pass it as `optimizer=`"):
        polyak.load(path)


def test_optax_refuses_a_schedule_whose_bad_value_is_known_when_traced():
    """Under ``jax.jit`` a rate computed from the traced count cannot be read; one that is a
    constant of the trace can, and is refused before the update runs."""
    import jax.numpy as jnp

    def negative(count):
        return -0.1

    tx = optax_face.sgd(negative)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"^`learning_rate` must be finite and >= 0 at every step.*"
                                         r"Received: learning_rate=-0.1 \(returned by <function .*negative"):
        tx.update(params, tx.init(params), params)

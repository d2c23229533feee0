"""``Settings``: everything that defines a demo run, so a checkpoint can hold it."""

from __future__ import annotations

import dataclasses

from polyak.demo.errors import DemoError


@dataclasses.dataclass(frozen=True)
class Settings:
    """The options of ``polyak demo``, then the fixed recipe they drive.

    The optimizer is ``SGD(momentum, nesterov=True)`` with a ``CosineDecay``
    schedule that warms up linearly from 0 to ``learning_rate`` over the first
    ``warmup_fraction`` of the steps and decays to 0 over the rest, decoupled
    ``weight_decay`` on the kernels (not the biases), ``global_clipnorm`` and an
    EMA of the weights with ``ema_momentum``.
    """

    epochs: int = 30
    batch_size: int = 32
    seed: int = 0
    backend: str = "numpy"
    hidden: tuple[int, ...] = (128, 64)
    learning_rate: float = 0.2
    warmup_fraction: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-3
    global_clipnorm: float = 1.0
    ema_momentum: float = 0.99

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DemoError(f"{name} must be a positive integer. Received: {name}={value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise DemoError(f"seed must be a non-negative integer. Received: seed={self.seed!r}")

    def to_dict(self) -> dict:
        config = dataclasses.asdict(self)
        config["hidden"] = list(self.hidden)
        return config

    @classmethod
    def from_dict(cls, config: dict) -> Settings:
        """The inverse of ``to_dict``; unknown or missing keys raise ``DemoError``."""
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        if not isinstance(config, dict) or set(config) != set(fields):
            raise DemoError(f"the settings must hold exactly the keys {sorted(fields)}. Received: {config!r}")
        for name, value in config.items():
            if not _same_kind(value, fields[name]):
                raise DemoError(f"{name} must be like {fields[name]!r}. Received: {name}={value!r}")
        return cls(**{**config, "hidden": tuple(config["hidden"])})

    def with_options(self, **options) -> Settings:
        """These settings with the given options (``None`` means "not given") replaced."""
        return dataclasses.replace(self, **{k: v for k, v in options.items() if v is not None})

    def check_options(self, **options) -> None:
        """Raise ``DemoError`` when a given option differs from these settings (a resumed
        run keeps the settings it started with: its schedule depends on them)."""
        for name, value in options.items():
            if value is not None and value != getattr(self, name):
                raise DemoError(
                    f"--{name.replace('_', '-')} {value} differs from the checkpoint's {name}={getattr(self, name)!r}; "
                    "a resumed run keeps the settings it started with (drop the option, or start afresh "
                    "without --resume)"
                )


def _same_kind(value, default) -> bool:
    if isinstance(default, tuple):
        return isinstance(value, list) and all(_same_kind(v, 1) and v > 0 for v in value)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default)) and not isinstance(value, bool)

"""A user-defined schedule, registered with polyak once for every test that loads one."""

import numpy as np

import polyak
from polyak import schedules


@polyak.register(package="tests")
class Halving(schedules.LearningRateSchedule):
    """``rate / 2 ** step``."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, step):
        return np.float32(self.rate) / np.float32(2.0) ** np.float32(step)

    def get_config(self):
        return {"rate": self.rate}

"""Keras 3.15's own optimizer tests, vendored with attribution and adapted to polyak.

One file per Keras test file that concerns what polyak implements (SGD, the ``Optimizer``
base class, ``LossScaleOptimizer`` and the learning-rate schedules); each file's docstring
names its source, the license (Apache 2.0), what was changed and which tests were not taken.
The helpers standing in for ``keras.src.testing.TestCase`` are in ``_keras_testing.py``.

Test files of ``keras/src/optimizers/`` not vendored:

- ``adadelta_test.py``, ``adafactor_test.py``, ``adagrad_test.py``, ``adam_test.py``,
  ``adamax_test.py``, ``adamw_test.py``, ``ftrl_test.py``, ``lamb_test.py``, ``lion_test.py``,
  ``muon_test.py``, ``nadam_test.py``, ``rmsprop_test.py``, ``schedule_free_adamw_test.py``:
  optimizers polyak does not have.
- ``multi_optimizer_test.py``: Keras's ``MultiOptimizer`` (several optimizers over one
  model's variables), which polyak does not have.
- ``optimizer_sparse_test.py``: sparse gradients (``tf.IndexedSlices``, JAX ``BCOO``) and the
  backend's sparse scatter updates; polyak takes dense gradients only.
"""

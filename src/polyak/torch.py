"""``polyak.torch.SGD``: polyak's SGD as a ``torch.optim.Optimizer``.

For code that takes a torch optimizer: a plain training loop, ``torch.optim.lr_scheduler``,
``torch.amp.GradScaler``, PyTorch Lightning's ``configure_optimizers``, Hugging Face's
``Trainer(optimizers=...)``, ``accelerate``. Importing it imports torch; ``import polyak``
does not import it.
"""

from polyak.torch_face.sgd import SGD

__all__ = ["SGD"]

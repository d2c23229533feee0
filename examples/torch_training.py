"""Train a small PyTorch MLP with polyak's SGD: Keras's optimizer on torch tensors.

The parameters are updated in place (outside autograd), with a cosine schedule
with warmup, Nesterov momentum, decoupled weight decay that spares the biases,
global-norm clipping and an EMA of the weights swapped in at the end.

Run: python examples/torch_training.py
"""

import torch

import polyak


def make_problem(n=512, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=generator) * 6 - 3
    y = torch.sin(x) + 0.1 * torch.randn(n, 1, generator=generator)
    return x, y


def main(steps=300, warmup=20):
    """``steps`` optimizer steps: the rate warms up over ``warmup`` of them, then decays to 0
    at the last. Returns the optimizer and the model (with its EMA weights)."""
    torch.manual_seed(0)
    x, y = make_problem()
    model = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = polyak.SGD(
        learning_rate=polyak.schedules.CosineDecay(0.0, steps - warmup, warmup_target=0.1, warmup_steps=warmup),
        momentum=0.9, nesterov=True, weight_decay=1e-4, global_clipnorm=1.0, use_ema=True, ema_momentum=0.9,
    )
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    opt.exclude_from_weight_decay(var_list=biases)
    params = list(model.parameters())
    print("step  loss")
    for step in range(steps):
        model.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if step % 50 == 0 or step == steps - 1:
            print(f"{step:4d}  {loss.item():.4f}")
        opt.apply([p.grad for p in params], params)  # in place, under torch.no_grad()
    opt.finalize_variable_values(params)  # the EMA weights
    with torch.no_grad():
        final = torch.nn.functional.mse_loss(model(x), y).item()
    print(f"{int(opt.iterations.numpy())} optimizer steps; loss with the EMA weights {final:.4f}")
    return opt, model


if __name__ == "__main__":
    main()

"""Fit a logistic-regression classifier in plain NumPy with polyak's Nesterov SGD.

Run: python examples/logistic_regression.py
"""

import numpy as np

import polyak


def make_problem(n=2000, d=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    true_w = rng.normal(size=d).astype(np.float32)
    y = (x @ true_w + 0.5 * rng.normal(size=n) > 0).astype(np.float32)
    return x, y


def loss_and_grads(w, b, x, y):
    """Mean binary cross-entropy of sigmoid(x @ w + b) and its gradients."""
    z = x @ w + b
    p = 1.0 / (1.0 + np.exp(-z))
    loss = np.mean(np.logaddexp(0.0, z) - y * z)
    err = (p - y) / len(y)
    return float(loss), x.T @ err, np.sum(err, keepdims=True)


def main(epochs=30, batch=100):
    """Train for ``epochs`` passes over the data; print the loss and accuracy every 5 epochs.
    Returns the optimizer and the final weights."""
    x, y = make_problem()
    w = np.zeros(x.shape[1], np.float32)
    b = np.zeros(1, np.float32)
    opt = polyak.SGD(learning_rate=0.5, momentum=0.9, nesterov=True)
    rng = np.random.default_rng(1)

    def report(epoch):
        loss, _, _ = loss_and_grads(w, b, x, y)
        accuracy = np.mean(((x @ w + b) > 0) == (y > 0.5))
        print(f"{epoch:5d}  {loss:.4f}  {accuracy:.3f}")
        return loss, accuracy

    print("epoch  loss    accuracy")
    report(0)  # before training
    for epoch in range(1, epochs + 1):
        for idx in np.array_split(rng.permutation(len(y)), len(y) // batch):
            _, gw, gb = loss_and_grads(w, b, x[idx], y[idx])
            opt.apply([gw, gb], [w, b])  # w and b are updated in place
        if epoch % 5 == 0 or epoch == epochs:
            loss, accuracy = report(epoch)
    print(f"{epochs} epochs, {int(opt.iterations.numpy())} optimizer steps; final loss {loss:.4f}, "
          f"accuracy {accuracy:.3f}")
    return opt, w, b


if __name__ == "__main__":
    main()

"""polyak.torch.SGD inside the real frameworks: Lightning (automatic and manual optimization),
Hugging Face's Trainer and accelerate. Each trains a tiny model built in the test (no
downloads), equals polyak.SGD.apply replayed on the batches the model saw, and resumes
from its own checkpoint to the parameters of an uninterrupted run, bit for bit."""

import copy
import warnings

import pytest
import torch

import polyak
from polyak.torch import SGD

lightning = pytest.importorskip("lightning")
transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*(LeafSpec|TreeSpec|is_leaf|GPU available|TPU available).*")


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def mlp_loss(model, x):
    return ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()


DATA = torch.randn(8, 4, generator=torch.Generator().manual_seed(3))


class Recorder:
    """The inputs of every training forward of ``model`` and the rate of every step of ``opt``."""

    def __init__(self, model):
        self.calls, self.rates = [], []
        model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        if module.training:
            clone = lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v  # noqa: E731
            self.calls.append(([clone(a) for a in args], {k: clone(v) for k, v in kwargs.items()}))

    def watch(self, opt):
        opt.register_step_pre_hook(lambda o, a, k: self.rates.append(o.param_groups[0]["lr"]))


def replay(model, recorder, loss_of, clip=None, exclude=(), **config):
    """polyak.SGD.apply on a copy of ``model``, one step per recorded forward, at the recorded rates
    (no decay for the weights in ``exclude``)."""
    keras = polyak.SGD(learning_rate=recorder.rates[0], **config)
    keras.exclude_from_weight_decay(var_list=list(exclude))
    params = list(model.parameters())
    for (args, kwargs), rate in zip(recorder.calls, recorder.rates):
        model.zero_grad()
        loss_of(model, *args, **kwargs).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        keras.learning_rate = rate
        keras.apply([p.grad for p in params], params)
    return params


def assert_same(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x.detach(), y.detach())


# --- Lightning -----------------------------------------------------------------------------
class Module(lightning.LightningModule):
    def __init__(self, manual=False):
        super().__init__()
        self.net = mlp()
        self.automatic_optimization = not manual

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = mlp_loss(self.net, x)
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.lr_schedulers().step()

    def configure_optimizers(self):
        opt = SGD(self.net.parameters(), lr=0.1, momentum=0.9)
        self.recorder.watch(opt)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fit(manual, max_steps, ckpt_path=None, save_in=None):
    module = Module(manual)
    module.recorder = Recorder(module.net)
    start = copy.deepcopy(module.net)
    saving = [lightning.pytorch.callbacks.ModelCheckpoint(save_in, every_n_train_steps=2, save_top_k=-1)]
    trainer = lightning.Trainer(max_steps=max_steps, accelerator="cpu", logger=False,
                                callbacks=saving if save_in else None, enable_checkpointing=bool(save_in),
                                enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(DATA), batch_size=4)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return module, start


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_lightning_trains_as_polyak_sgd_and_resumes_exactly(manual, tmp_path):
    straight, start = fit(manual, 4, save_in=tmp_path)
    assert straight.trainer.optimizers[0]._last_tier == "cpu_fused"
    expected = replay(start, straight.recorder, mlp_loss, momentum=0.9)
    assert_same(straight.net.parameters(), expected)
    resumed, _ = fit(manual, 4, ckpt_path=tmp_path / "epoch=0-step=2.ckpt")
    assert resumed.recorder.rates == straight.recorder.rates[2:]
    assert_same(resumed.net.parameters(), straight.net.parameters())


# --- Hugging Face Trainer ---------------------------------------------------------------------
def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


def gpt2_loss(model, *args, **kwargs):
    return model(*args, **kwargs).loss


TOKENS = torch.randint(0, 16, (8, 8), generator=torch.Generator().manual_seed(5))


def hf_train(out, resume=None, max_steps=4):
    model = gpt2()
    recorder = Recorder(model)
    start = copy.deepcopy(model)
    opt = SGD(model.named_parameters(), lr=0.1, momentum=0.9)
    recorder.watch(opt)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    args = transformers.TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=2,
                                          save_strategy="steps", save_steps=2, logging_strategy="no", report_to=[],
                                          use_cpu=True, seed=0, disable_tqdm=True, max_grad_norm=1.0)
    data = [{"input_ids": t, "labels": t} for t in TOKENS]
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, scheduler))
    trainer.train(resume_from_checkpoint=resume)
    return model, start, recorder, opt


def test_hf_trainer_trains_as_polyak_sgd_and_resumes_exactly(tmp_path):
    straight, start, recorder, opt = hf_train(tmp_path / "straight")
    assert opt._last_tier == "cpu_fused"
    expected = replay(start, recorder, gpt2_loss, momentum=0.9, clip=1.0)
    assert_same(straight.parameters(), expected)
    resumed, _, resumed_recorder, _ = hf_train(tmp_path / "resumed", resume=str(tmp_path / "straight/checkpoint-2"))
    assert resumed_recorder.rates == recorder.rates[2:]
    assert_same(resumed.parameters(), straight.parameters())


class WatchOptimizer(transformers.TrainerCallback):
    """Hands the optimizer the Trainer built (inside accelerate's wrapper) to the recorder."""

    def __init__(self, recorder):
        self.recorder = recorder

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.recorder.watch(optimizer.optimizer)


def hf_train_with_cls(out, resume=None, max_steps=4):
    model = gpt2()
    recorder = Recorder(model)
    start = copy.deepcopy(model)
    args = transformers.TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=2,
                                          save_strategy="steps", save_steps=2, logging_strategy="no", report_to=[],
                                          use_cpu=True, seed=0, disable_tqdm=True, max_grad_norm=1.0,
                                          weight_decay=0.01, lr_scheduler_type="linear")
    data = [{"input_ids": t, "labels": t} for t in TOKENS]
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[WatchOptimizer(recorder)],
                                   optimizer_cls_and_kwargs=(SGD, {"lr": 0.1, "momentum": 0.9}))
    trainer.train(resume_from_checkpoint=resume)
    return model, start, recorder, trainer.optimizer.optimizer


def test_hf_trainer_builds_it_from_optimizer_cls_and_kwargs_and_resumes_exactly(tmp_path):
    straight, start, recorder, opt = hf_train_with_cls(tmp_path / "straight")
    assert isinstance(opt, SGD) and opt._last_tier == "cpu_fused"
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    names = {id(p): n for n, p in straight.named_parameters()}
    excluded = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert "transformer.h.0.ln_1.weight" in excluded and "transformer.h.0.attn.c_attn.weight" not in excluded
    no_decay = [p for n, p in start.named_parameters() if n in excluded]
    expected = replay(start, recorder, gpt2_loss, momentum=0.9, clip=1.0, weight_decay=0.01, exclude=no_decay)
    assert_same(straight.parameters(), expected)
    resumed, _, resumed_recorder, _ = hf_train_with_cls(tmp_path / "resumed",
                                                        resume=str(tmp_path / "straight/checkpoint-2"))
    assert resumed_recorder.rates == recorder.rates[2:]
    assert_same(resumed.parameters(), straight.parameters())


# --- accelerate --------------------------------------------------------------------------
def accelerate_train(steps, save_to=None, load_from=None, start_step=0):
    accelerator = accelerate.Accelerator(cpu=True)
    model = mlp()
    recorder = Recorder(model)
    start = copy.deepcopy(model)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    recorder.watch(opt)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)
    model, opt, scheduler = accelerator.prepare(model, opt, scheduler)
    if load_from:
        accelerator.load_state(load_from)
    for step in range(start_step, start_step + steps):
        loss = mlp_loss(model, DATA[step % 2 * 4:step % 2 * 4 + 4])
        accelerator.backward(loss)
        opt.step()
        scheduler.step()
        opt.zero_grad()
    if save_to:
        accelerator.save_state(save_to)
    return model, start, recorder


def test_accelerate_prepare_trains_as_polyak_sgd_and_resumes_exactly(tmp_path):
    straight, start, recorder = accelerate_train(4)
    expected = replay(start, recorder, mlp_loss, momentum=0.9, nesterov=True)
    assert_same(straight.parameters(), expected)
    accelerate_train(2, save_to=tmp_path / "state")
    resumed, _, resumed_recorder = accelerate_train(2, load_from=tmp_path / "state", start_step=2)
    assert resumed_recorder.rates == recorder.rates[2:]
    assert_same(resumed.parameters(), straight.parameters())

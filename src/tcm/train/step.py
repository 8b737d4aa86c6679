"""The training step: one optimisation step on a batch (:func:`train_step`, chunked for large batches),
and an epoch's loss sums and finiteness checks kept on the device (:class:`LossMeter`)."""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from tcm.losses import Criterion


class NonFiniteLoss(ArithmeticError):
    """Raised by :func:`train_step` before any parameter changes; ``value`` is the loss."""

    def __init__(self, value: float) -> None:
        super().__init__(f"loss is {value}")
        self.value = value



def _bn_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, saved copy) of every BatchNorm running statistic that a train-mode forward updates."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            for b in (m.running_mean, m.running_var, m.num_batches_tracked):
                if b is not None:
                    out.append((b, b.detach().clone()))
    return out


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def train_step(model: nn.Module, criterion: Criterion, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, *, autocast: bool = False, chunk_size: int | None = None,
               clip_grad_value: float | None = None, frozen: Sequence[nn.Parameter] = (),
               world_size: int = 1, check_finite: bool = True) -> dict[str, torch.Tensor]:
    """One optimisation step on batch (x, y); returns the detached loss parts of this process's batch.

    ``model`` may be wrapped (DistributedDataParallel, torch.compile). With ``chunk_size`` smaller
    than the batch, the step recomputes instead of storing activations:

    1. embed the batch chunk by chunk under ``no_grad`` (BatchNorm running statistics are restored
       afterwards, so each chunk updates them once, in step 3; dropout's random state is recorded);
    2. take the loss on the whole batch of detached embeddings, back-propagate it to them
       (dL/d embedding) and to the loss's own parameters;
    3. re-run each chunk with autograd and back-propagate its slice of dL/d embedding.

    The gradients equal the plain step's whenever the forward of a sample does not depend on the
    other samples of its pass: models without BatchNorm (ViT), or BatchNorm in eval mode
    (``model.freeze_bn``). BatchNorm in train mode normalises each chunk with the chunk's own
    statistics, as RS@k's reference code (`bs_base` chunks) does.

    ``check_finite``: raise :class:`NonFiniteLoss` before any parameter changes. The check reads the
    loss on the host, which makes the CPU wait for the GPU every step; the training loop passes False
    and watches the loss on the device instead (:class:`LossMeter`).
    """
    import torch.distributed as dist

    device = x.device
    ddp = isinstance(getattr(model, "_orig_mod", model), nn.parallel.DistributedDataParallel)
    chunked = chunk_size is not None and len(x) > chunk_size
    optimizer.zero_grad(set_to_none=True)
    if not chunked:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            emb = model(x)
        parts = criterion(emb.float(), y)
        if check_finite:
            _check_finite(parts, world_size)
        parts["loss"].backward()
    else:
        inner = getattr(model, "module", model)
        inner = getattr(inner, "_orig_mod", inner)  # the un-compiled module for the no-grad pass
        slices = [slice(i, min(i + chunk_size, len(x))) for i in range(0, len(x), chunk_size)]
        keep_rng = _has_dropout(inner)
        bn = _bn_buffers(inner)
        rng_states, chunks = [], []
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            for sl in slices:
                if keep_rng:
                    rng_states.append(_rng_state(device))
                chunks.append(inner(x[sl]).float())
        for buf, saved in bn:
            buf.copy_(saved)
        emb = torch.cat(chunks).requires_grad_(True)
        parts = criterion(emb, y)
        if check_finite:
            _check_finite(parts, world_size)
        parts["loss"].backward()
        grad = emb.grad
        for i, sl in enumerate(slices):
            if keep_rng:
                _set_rng_state(rng_states[i], device)
            last = i == len(slices) - 1
            sync = contextlib.nullcontext() if (last or not ddp) else model.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    out = model(x[sl])
                out.float().backward(grad[sl])
    if world_size > 1:  # the loss's own parameters (proxies) sit outside DDP: average their gradients
        for p in criterion.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world_size
    for p in frozen:  # warm-up: these parameters keep their values (as requires_grad=False would)
        p.grad = None
    if clip_grad_value is not None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_value_(params, clip_grad_value)
    optimizer.step()
    return {k: v.detach() for k, v in parts.items()}


class LossMeter:
    """An epoch's loss sums and checks, kept on the device; :meth:`read` is the one host sync.

    Per step it records the loss parts x images, whether the loss moved since the epoch's first
    step, and the first step whose loss was NaN or infinite (and its value)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.first: torch.Tensor | None = None
        self.last = torch.zeros(3, device=device)
        self.changed = torch.zeros((), dtype=torch.bool, device=device)
        self.bad_step = torch.zeros((), dtype=torch.int64, device=device)  # 0: every loss so far is finite
        self.bad_value = torch.zeros((), device=device)

    def add(self, step: int, values: torch.Tensor, n: int) -> None:
        """``values``: (loss, base_loss, tcm_loss) of this process's batch of ``n`` images."""
        loss = values[0]
        newly_bad = ~torch.isfinite(loss) & (self.bad_step == 0)
        self.bad_step = torch.where(newly_bad, step, self.bad_step)
        self.bad_value = torch.where(newly_bad, loss, self.bad_value)
        self.sums += values.double() * n
        if self.first is None:
            self.first = loss.clone()
        else:
            self.changed |= loss != self.first
        self.last = values

    def read(self, world_size: int = 1) -> dict:
        """Host copies: ``bad_step``/``bad_value`` (the first non-finite loss on any process), ``last``
        (this process's last losses). Collective under torchrun: every rank calls it at the same step."""
        bad = self.bad_step.clone()
        if world_size > 1:
            import torch.distributed as dist

            # The earliest bad step on any rank (0 = none, so it is mapped past every real step).
            big = torch.iinfo(torch.int64).max
            bad = torch.where(bad == 0, big, bad)
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)
            bad = torch.where(bad == big, 0, bad)
        bad_step = int(bad)
        value = float(self.bad_value) if bad_step and bad_step == int(self.bad_step) else float("nan")
        return {"bad_step": bad_step, "bad_value": value, "last": self.last.tolist()}

    def totals(self, world_size: int = 1) -> tuple[list[float], float | None, bool]:
        """Epoch end: the loss sums over every process, the first step's loss, and whether it moved."""
        sums, changed = self.sums.clone(), self.changed.to(torch.int64)
        if world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
            dist.all_reduce(changed, op=dist.ReduceOp.MAX)
        first = None if self.first is None else float(self.first)
        return sums.tolist(), first, bool(changed)


def _check_finite(parts: dict[str, torch.Tensor], world_size: int) -> None:
    if world_size > 1:
        # Every rank must take the same decision, or the others would wait forever in all_reduce.
        import torch.distributed as dist

        total = parts["loss"].detach().clone()
        dist.all_reduce(total)
        value = total / world_size
    else:
        value = parts["loss"].detach()
    if not torch.isfinite(value):
        raise NonFiniteLoss(value.item())

"""Training loop with per-epoch checkpoints and resume, used for reference and hardware-aware training.

The loop is plain PyTorch: Adam, cross-entropy, a cosine learning-rate schedule computed from the
epoch index (so a resumed run follows the same schedule), and a seeded ``torch.Generator`` for
the batch order. After every epoch the model, the optimizer, the generator state and the history
are written atomically to ``<checkpoint_dir>/checkpoint.pt``; a run started again with the same
settings continues from the last finished epoch, so an interruption loses at most one epoch.

Hardware-aware training needs nothing special here: train a model converted with
:func:`memcim.nn.analog.convert_to_analog`; in training mode its analog layers program a fresh
chip of their current weights every mini-batch and read it with the simulator's differentiable
read, straight through the roundings (see :mod:`memcim.nn.analog` and :mod:`memcim.simulate`).

Threads: a small model trained with more torch threads than free cores runs many times slower
(OpenMP threads wait on each other: an MLP epoch took 7x longer with 2 threads than with 1 on a
busy 2-core machine). :func:`train` therefore uses ``threads=`` or the threads set by
``--threads`` (environment ``MEMCIM_THREADS``), and otherwise no more than the cores left free by
other processes (:func:`default_threads`); torch's setting is restored afterwards. The thread
count changes the last bits of the trained weights (the reductions are split differently), so a
bit-reproducible run fixes it: ``memcim train`` uses one thread unless ``--threads`` says otherwise,
and the shipped reference models were made with one thread.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

CHECKPOINT_NAME = "checkpoint.pt"


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Model outputs for ``x`` in evaluation mode, computed in batches (returns CPU float tensor)."""
    was = model.training
    model.eval()
    try:
        outs = [model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was)
    return torch.cat(outs).float()


def evaluate_accuracy(model: nn.Module, dataset, batch_size: int = 1000) -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``dataset``."""
    out = predict(model, dataset.x, batch_size)
    return float((out.argmax(1) == dataset.y).float().mean())


def _check_pos(name, v, kind=int):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or (kind is int and int(v) != v):
        raise ValueError(f"{name}: {v!r} is not allowed; must be a positive {'integer' if kind is int else 'number'}")


def default_threads() -> int:
    """Torch threads for training: ``$MEMCIM_THREADS`` when set (``--threads``), else torch's count
    capped by the cores not busy with other processes (1-minute load average, this process excluded)."""
    env = os.environ.get("MEMCIM_THREADS")
    if env and env.isdigit() and int(env) >= 1:
        return int(env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    try:
        busy = max(0.0, os.getloadavg()[0] - 1.0)
    except (AttributeError, OSError):  # pragma: no cover
        busy = 0.0
    return max(1, min(torch.get_num_threads(), cpus - int(math.ceil(busy))))


def _atomic_save(obj, path: Path) -> None:
    """Write ``path`` through ``path.tmp<pid>`` and a rename; the temporary file never outlives a
    failure or an interrupt of the write."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_tmp(path: Path) -> list[Path]:
    """Delete ``path.tmp<pid>`` files left by a killed run (their process is gone); returns them."""
    gone = []
    for tmp in path.parent.glob(path.name + ".tmp*"):
        suffix = tmp.name[len(path.name) + 4:]
        if suffix.isdigit() and (int(suffix) == os.getpid() or not _pid_alive(int(suffix))):
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def train(model: nn.Module, train_ds, *, val_ds=None, epochs: int = 10, lr: float = 1e-3,
          batch_size: int = 128, weight_decay: float = 0.0, seed: int = 0,
          checkpoint_dir: str | os.PathLike | None = None, progress: bool | None = None,
          stop_after: int | None = None, threads: int | None = None) -> dict:
    """Train ``model`` in place with Adam and cross-entropy.

    Parameters
    ----------
    model : the network (digital, or analog from ``convert_to_analog`` for hardware-aware training).
    train_ds, val_ds : :class:`memcim.data.base.Dataset`; validation accuracy is recorded per epoch.
    epochs : total number of epochs (a resumed run counts the finished ones).
    lr : initial learning rate; epoch ``e`` uses ``lr * (1 + cos(pi e / epochs)) / 2``.
    batch_size, weight_decay : the usual meaning.
    seed : seed of the batch order (and of nothing else: the model's init is set by its builder).
    checkpoint_dir : if given, a checkpoint is written there after every epoch and a run with a
        checkpoint already there resumes from it (the settings must match).
    progress : tqdm progress bar on stderr (default: only when stderr is a terminal).
    stop_after : stop after this many epochs in this call (simulates an interruption in tests).
    threads : torch threads while training (default :func:`default_threads`).

    Returns
    -------
    dict with lists ``loss`` and ``val_accuracy`` (of the exact, digital weights) per epoch, ``epochs_done``, ``resumed_from``
    ``seconds`` (wall time of this call) and ``threads``.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: {threads!r} is not allowed; must be an integer >= 1")
    n_threads = int(threads) if threads is not None else default_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        hist = _train(model, train_ds, val_ds=val_ds, epochs=epochs, lr=lr, batch_size=batch_size,
                      weight_decay=weight_decay, seed=seed, checkpoint_dir=checkpoint_dir, progress=progress,
                      stop_after=stop_after)
    finally:
        torch.set_num_threads(before)
    return dict(hist, threads=n_threads)


def _train(model, train_ds, *, val_ds, epochs, lr, batch_size, weight_decay, seed, checkpoint_dir, progress,
           stop_after) -> dict:
    _check_pos("epochs", epochs)
    _check_pos("lr", lr, float)
    _check_pos("batch_size", batch_size)
    settings = dict(epochs=int(epochs), lr=float(lr), batch_size=int(batch_size),
                    weight_decay=float(weight_decay), seed=int(seed), n_train=len(train_ds))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    hist = {"loss": [], "val_accuracy": []}
    start = 0
    ckpt_path = None
    if checkpoint_dir is not None:
        ckpt_dir = Path(checkpoint_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = ckpt_dir / CHECKPOINT_NAME
        remove_stale_tmp(ckpt_path)
        if ckpt_path.is_file():
            try:
                ck = torch.load(ckpt_path, weights_only=True, map_location="cpu")
            except Exception as e:
                raise ValueError(f"checkpoint_dir: checkpoint {ckpt_path} is unreadable ({type(e).__name__}); "
                                 "delete it to start over") from None
            if ck.get("settings") != settings:
                raise ValueError(f"checkpoint_dir: checkpoint {ckpt_path} was made with other settings "
                                 f"{ck.get('settings')}; use another directory or delete it")
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            gen.set_state(ck["generator"])
            hist = ck["history"]
            start = int(ck["epoch"])
    t0 = time.perf_counter()
    loss_fn = nn.CrossEntropyLoss()
    n_batches = math.ceil(len(train_ds) / batch_size)
    done_here = 0
    for epoch in range(start, epochs):
        if stop_after is not None and done_here >= stop_after:
            break
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        model.train()
        total, count = 0.0, 0
        bar = tqdm(train_ds.batches(batch_size, shuffle=True, generator=gen), total=n_batches,
                   desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=None if progress is None else not progress)
        for xb, yb in bar:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training diverged at epoch {epoch + 1}: loss {loss.item()}; "
                                         "lower lr (--lr)")
            loss.backward()
            opt.step()
            total += loss.item() * xb.shape[0]
            count += xb.shape[0]
        hist["loss"].append(total / max(count, 1))
        if val_ds is not None:
            from memcim.nn.analog import digital_mode  # validation uses the exact weights

            with digital_mode(model):
                hist["val_accuracy"].append(evaluate_accuracy(model, val_ds))
        else:
            hist["val_accuracy"].append(None)
        done_here += 1
        if ckpt_path is not None:
            _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "generator": gen.get_state(), "history": hist, "epoch": epoch + 1,
                          "settings": settings}, ckpt_path)
    model.eval()
    return dict(hist, epochs_done=len(hist["loss"]), resumed_from=start,
                seconds=time.perf_counter() - t0)

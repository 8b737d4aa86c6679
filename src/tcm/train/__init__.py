"""Training: ``run(cfg, name)`` trains one run of params.yaml once per seed of ``train.seeds``
and writes ``runs/<name>/`` (see :mod:`tcm.runfiles`): a checkpoint per seed, history.csv, run.json.

The loop reads top to bottom: m-per-class batches (or RS@k's epoch, :mod:`tcm.samplers`) -> embeddings
-> base loss + TCM -> step.
A checkpoint is written atomically after every epoch. Calling ``run`` again after an interruption
resumes the interrupted attempt when the settings and the training code are unchanged (seeds already
finished are kept; the interrupted one continues from its last epoch and draws exactly the batches
an uninterrupted run would, seeded per epoch, so the result is bit-identical on CPU). Anything else
(a finished run, other settings, other code) trains from scratch, with a one-line notice.

Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel; each process
draws its own batch of batch_size / world_size images (m-per-class: seeded by its rank; RS@k's epoch:
its share of one shared plan) and rank 0
alone writes checkpoints, history and MLflow.

Large batches (RS@k and Smooth-AP use 4000) fit in memory with ``train.chunk_size``: see
:func:`train_step`.

Nothing finished is lost to a fault. Before an earlier ``train/`` folder is touched, everything that can
fail on the settings or the machine is tried (:func:`_preflight`, and the MLflow store's own check in
:class:`tcm.tracking.Tracker`); a new attempt moves the earlier folder aside and deletes it only once it
has saved a trained epoch (:class:`_Aside`). Ctrl-C and SIGTERM end the MLflow run KILLED and raise
:class:`TrainingInterrupted`, whose one line says which epoch is kept where.

The package's modules, in the order a run meets them:

- ``stage.py``: :func:`run`, the stage's orchestration (settings, data, checks, the seeds);
- ``preflight.py``: the checks before anything is moved;
- ``resume.py``: the resume rules, the folder moved aside, what an interrupt keeps;
- ``seed.py``: :class:`SeedTrainer`, one seed: restore, margins, epochs, a checkpoint per epoch;
- ``build.py``: samplers and loader, optimizer, schedule, the model and loss of a seed;
- ``step.py``: :func:`train_step` and :class:`LossMeter`;
- ``runtime.py``: this process's place in a torchrun job, its seeds, its notices.
"""

from tcm.train.build import make_loader, make_optimizer, make_scheduler, set_epoch
from tcm.train.preflight import _preflight
from tcm.train.resume import (
    ASIDE_PREFIX,
    _Aside,
    _interrupted_message,
    _recover_aside,
    _start_attempt,
    _Status,
    config_hash,
)
from tcm.train.runtime import Dist, distributed, epoch_seed, seed_everything
from tcm.train.seed import SYNC_EVERY, SeedTrainer, TrainingDiverged
from tcm.train.stage import TrainingInterrupted, TrainResult, run
from tcm.train.step import LossMeter, NonFiniteLoss, train_step

__all__ = [
    "ASIDE_PREFIX", "SYNC_EVERY", "Dist", "LossMeter", "NonFiniteLoss", "SeedTrainer", "TrainResult",
    "TrainingDiverged", "TrainingInterrupted", "_Aside", "_Status", "_interrupted_message", "_preflight",
    "_recover_aside", "_start_attempt", "config_hash", "distributed", "epoch_seed", "make_loader", "make_optimizer",
    "make_scheduler", "run", "seed_everything", "set_epoch", "train_step",
]

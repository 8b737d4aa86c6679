"""Embedding a split with a model: shared by evaluation (the test split) and training (the train
split, for TCM's margin rule), so that neither stage imports the other."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from tcm.data.batches import InputPipeline
from tcm.progress import Progress


@torch.no_grad()
def embed(model: torch.nn.Module, pipeline: InputPipeline, batch_size: int, device: torch.device,
          progress: bool = True, num_workers: int = 0, label: str = "") -> np.ndarray:
    """(N, d) float32 embeddings of the pipeline's split, in manifest order (bf16 autocast and
    channels_last on CUDA). ``label`` (e.g. run and seed) starts the progress lines."""
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    loader = DataLoader(pipeline.dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=cuda, collate_fn=pipeline.collate_fn)
    chunks = []
    for x, _ in Progress(loader, f"{label}: embedding" if label else "embedding", enabled=progress, unit="batch"):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            chunks.append(model(pipeline.to_model(x, device, channels_last=cuda)).float())
    # One copy to the host at the end: a .cpu() per batch would make the host wait for every batch.
    return torch.cat(chunks).cpu().numpy()



"""A torchmetrics state holding arbitrary per-sample JSON records that syncs correctly under DDP."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

# JSON written with ensure_ascii escapes every control character, so a 0 byte never occurs inside a record
# and can terminate each one.
_TERMINATOR = b"\0"


def to_list(value: Any) -> Any:
    """Turn tensors / numpy arrays into (nested) python lists so that they can be JSON encoded."""
    return value.tolist() if hasattr(value, "tolist") else value


class RecordMetric(Metric):
    """Base class for corpus-level metrics that need every sample at ``compute`` time (CIDEr, COCO mAP).

    Each sample is one JSON record, stored as a 0-terminated uint8 tensor in a list state with
    ``dist_reduce_fx='cat'``. Syncing therefore goes through torchmetrics' own all-gather (any backend, NCCL
    included, ranks may hold different amounts of data) and yields every rank's bytes concatenated in rank
    order; splitting on the terminators recovers the records.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("record_bytes", default=[], dist_reduce_fx="cat")

    def _add_record(self, record: Any) -> None:
        data = json.dumps(record, ensure_ascii=True).encode("ascii") + _TERMINATOR
        self.record_bytes.append(torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()).to(self.device))

    def _records(self) -> list[Any]:
        state = self.record_bytes
        if isinstance(state, list):  # unsynced: one tensor per record
            state = torch.cat(state) if state else torch.zeros(0, dtype=torch.uint8)
        data = state.to(device="cpu", dtype=torch.uint8).numpy().tobytes()
        return [json.loads(chunk) for chunk in data.split(_TERMINATOR)[:-1]]

    def _sync_dist(
        self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None
    ) -> None:
        # torchmetrics stands in an empty tensor of the metric's *float* dtype for an empty list state; gathered
        # next to other ranks' uint8 bytes that would mix dtypes, so a rank without data contributes empty bytes.
        if not self.record_bytes:
            self.record_bytes = [torch.zeros(0, dtype=torch.uint8, device=self.device)]
        super()._sync_dist(dist_sync_fn, process_group)

"""Multi-GPU and multi-node training through ``torchrun`` (DistributedDataParallel).

``torchrun --nproc-per-node N -m HepatoblastomaSegLib.cli train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
and the rendezvous variables; :func:`init_distributed` then joins the process group (NCCL on GPUs, gloo on CPUs)
and each rank uses ``cuda:LOCAL_RANK``. Without those variables training runs in one process. Rank 0 does
everything that writes shared files (split, plans, preprocessing cache, checkpoints, log, bundle) while the others
wait; a failure on rank 0 is passed on, so no rank waits forever. Across nodes the output folder (and the cache
folder) must therefore be on a file system every node sees.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

from ..errors import ConfigError, HepatoblastomaSegError


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    comm_device: str = "cpu"   # NCCL only moves GPU tensors

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; otherwise a single-process :class:`DistInfo`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": torch.device("cuda", local)} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60), **kwargs)
    return DistInfo(rank, world, local, f"cuda:{local}" if dist.get_backend() == "nccl" else "cpu")


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def share_outcome(info: DistInfo, error: BaseException | None, *, source: int = 0) -> None:
    """Tell every rank whether rank ``source`` failed (and why); re-raise there and raise elsewhere."""
    if not info.enabled:
        if error is not None:
            raise error
        return
    message = b"" if error is None else str(error).encode()[:4000]
    length = torch.tensor([len(message) + (1 if error is not None else 0)], dtype=torch.int64,
                          device=info.comm_device)
    dist.broadcast(length, src=source)
    if int(length) == 0:
        return
    buffer = torch.zeros(int(length), dtype=torch.uint8)
    if info.rank == source and message:
        buffer[:len(message)] = torch.tensor(list(message), dtype=torch.uint8)
    buffer = buffer.to(info.comm_device)
    dist.broadcast(buffer, src=source)
    if info.rank == source and error is not None:
        raise error
    text = bytes(buffer[:-1].cpu().tolist()).decode(errors="replace")
    raise HepatoblastomaSegError(f"rank {source} failed: {text}")


def all_reduce_sum(info: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks; returns the sum on ``tensor``'s device."""
    if not info.enabled:
        return tensor
    moved = tensor.to(info.comm_device)
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    return moved.to(tensor.device)


def all_gather_text(info: DistInfo, text: str, width: int = 128) -> list[str]:
    """Every rank's ``text`` (ASCII, at most ``width`` characters), in rank order."""
    data = text.encode("ascii")[:width].ljust(width, b" ")
    if not info.enabled:
        return [text]
    mine = torch.tensor(list(data), dtype=torch.uint8, device=info.comm_device)
    gathered = [torch.zeros_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine)
    return [bytes(t.cpu().tolist()).decode("ascii").rstrip() for t in gathered]

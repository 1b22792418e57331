"""CPU threads of the torch code in a node's process.

On a robot PC several torch processes (features, keypoints, policy) share a few cores. Each
would start one OpenMP thread per core, and those threads spin while they wait: on 2 cores,
training fell from ~11 to ~1 step/s beside one other torch process. Each torch node has a
`threads` setting (the launch graph gives each one thread); 0 leaves torch's default (every
core), right for a process that has the machine to itself.
"""

from __future__ import annotations


def limit_torch_threads(threads: int) -> None:
    """Use at most `threads` intra-op threads in this process (0: torch's default)."""
    if threads <= 0:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)  # only possible before torch's first parallel work
    except RuntimeError:
        pass

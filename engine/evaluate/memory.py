"""Weight bytes of a model as loaded, counted from its real tensors."""

from __future__ import annotations

from torch import nn


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer, each storage counted once (tied
    weights are shared). Non-persistent buffers (rotary tables) are not weights."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in model.state_dict(keep_vars=True).values():
        if t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total

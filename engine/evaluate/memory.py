"""Memory of a model: its weight bytes as loaded, and its peak memory while it evaluates.

Peak memory is measured the same way for the baseline and the variant, on one eval batch
(eval.batch_size x eval.seq_len tokens through the model and a log-softmax over the logits):

    cuda   torch's peak allocated bytes on the device while that model runs the batch in this
           process (its weights are on the device, so they are included)
    child  on CPU a process's peak RSS never goes down, and freed memory is reused, so each
           model is measured in a fresh child process (memory_probe.py): its peak RSS while it
           runs the batch, minus its RSS before the model was loaded (the interpreter and
           libraries). Weights, activations and allocator overhead are included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import torch
from torch import nn

from ..errors import QRecipeError


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


def peak_method(requested: str, device: torch.device) -> str:
    """The method `auto` stands for on this device (cuda on a GPU, child on CPU)."""
    if requested == "auto":
        return "cuda" if device.type == "cuda" else "child"
    if requested == "cuda" and device.type != "cuda":
        from ..errors import ConfigError

        raise ConfigError("eval.memory.method: cuda needs the run on a CUDA device; use auto or child")
    return requested


def available_bytes(device: torch.device) -> int:
    """Memory a new allocation can take now: free CUDA memory on a GPU; on a CPU, Linux's
    MemAvailable (free plus reclaimable page cache), else psutil's figure."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import psutil

        return psutil.Process().memory_info().rss


class RssSampler:
    """Samples this process's RSS in a thread (torch releases the GIL in its kernels)."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> "RssSampler":
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


@torch.no_grad()
def eval_batch_workload(model, batch_size: int, seq_len: int) -> None:
    """What one evaluation batch does: a forward pass and a log-softmax over its logits."""
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().out_features if model.get_output_embeddings() is not None else 1000
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    logits = model(input_ids=ids, use_cache=False).logits
    torch.log_softmax(logits.float(), dim=-1)


def cuda_peak_bytes(model, batch_size: int, seq_len: int) -> int:
    device = next(model.parameters()).device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    eval_batch_workload(model, batch_size, seq_len)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def child_peak_bytes(request: dict, timeout_s: float = 1800) -> int:
    """Run memory_probe in a fresh interpreter on `request`; its measured peak bytes."""
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-m", "qrecipe.engine.evaluate.memory_probe", json.dumps(request)],
                          capture_output=True, text=True, timeout=timeout_s, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise QRecipeError(f"eval.memory: the memory probe child process failed ({tail}); set eval.memory.method=off "
                           f"to skip peak memory")
    return int(json.loads(lines[-1])["peak_bytes"])

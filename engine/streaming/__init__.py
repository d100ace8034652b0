"""Models bigger than memory: stream the float weights block by block from the checkpoint,
write the quantized checkpoint shard by shard, measure the float baseline block by block, and
resume a killed run from its last finished block.

    source.py       the float safetensors checkpoint, read one tensor at a time
    skeleton.py     the meta-device model; one block (or the embeddings, the tail) materialized at a time
    blocks.py       the calibration driver's block provider: materialize, quantize, write, free
    activations.py  hidden states between blocks on the host, spilling to disk past a budget
    writer.py       the sharded qrecipe checkpoint, one shard per block
    resume.py       the resume folder: fingerprint, finished blocks, the next block's inputs
    baseline.py     the float baseline's reference, block by block
    decide.py       in memory or streamed (run.streaming), and the peak-memory estimate
    allocator.py    freed blocks returned to the system (glibc's mmap threshold)
    execute.py      a streamed run, called from engine/run.py
"""

from .decide import IN_MEMORY, STREAMED
from .execute import StreamedRun, quantize_to_checkpoint

__all__ = ["IN_MEMORY", "STREAMED", "StreamedRun", "quantize_to_checkpoint"]

"""The model of a streamed run: its structure on the meta device, with one part at a time
(a decoder block, the embeddings, the tail) materialized on the compute device from the
checkpoint and freed again (accelerate's `init_empty_weights` and
`set_module_tensor_to_device`).

Tied tensors (an lm_head sharing the embedding) are one tensor under several names: whichever
name the checkpoint stores is read, once, and set under every name, so the copy written
afterwards records the alias exactly as a model loaded whole does.

A mixture-of-experts block's fused experts tensors (`mlp.experts.gate_up_proj` [E, 2I, H],
`down_proj` [E, H, I]) are not in a hub checkpoint, which keeps one linear per expert and
projection (families.py MoeLayout): they are assembled from those, expert by expert (gate rows,
then up rows), as transformers' conversion mapping does when it loads the folder whole; a
router the checkpoint names differently (Mixtral's `block_sparse_moe.gate`) is read under its name.
"""

from __future__ import annotations

import torch
from torch import nn

from ..calibration.capture import find_blocks
from ..errors import ConfigError
from ..models.families import final_norm, moe_layout
from .source import WeightSource


class StreamedModel:
    def __init__(self, config, source: WeightSource, device: torch.device, dtype: torch.dtype,
                 trust_remote_code: bool = False):
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.source, self.device, self.dtype = source, device, dtype
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
        model.tie_weights()  # from_config leaves tied tensors apart (from_pretrained ties them after loading)
        model.eval()
        try:  # as from_pretrained does: the folder's own generation settings, if it has them
            model.generation_config = GenerationConfig.from_pretrained(source.folder)
        except (OSError, ValueError):
            pass
        self.model = model
        found = find_blocks(model)
        norm = final_norm(getattr(config, "model_type", ""))
        if found is None or norm is None:
            raise ConfigError(f"run.streaming: model type {getattr(config, 'model_type', '?')!r} has no known decoder "
                              f"block list and final norm (engine/models/families.py BLOCK_LISTS, FINAL_NORMS); "
                              f"set run.streaming=never")
        self.blocks_name, self.blocks = found
        self.norm_name = norm
        self.moe = moe_layout(getattr(config, "model_type", ""))
        # every tensor name -> the names sharing its storage (itself included)
        groups: dict[int, list[str]] = {}
        for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers()):
            groups.setdefault(id(t), []).append(name)
        self.tied = {n: names for names in groups.values() for n in names}
        # the float weights in the run's dtype, tied tensors once: what loading the model whole takes
        # (as evaluate/memory.py's weight_bytes counts a loaded model)
        unique = {id(t): t for t in model.state_dict(keep_vars=True).values()}
        self.float_bytes = sum(t.numel() * t.element_size() for t in unique.values())
        # buffers the checkpoint does not hold (rotary tables) were built on the CPU: move them once
        for module in model.modules():
            for name, buf in list(module._buffers.items()):
                if buf is not None and buf.device.type != "meta":
                    module._buffers[name] = buf.to(device)

    def block_prefix(self, i: int) -> str:
        return f"{self.blocks_name}.{i}"

    def names_under(self, prefix: str) -> list[str]:
        """Tensor names (parameters and persistent buffers) of the module `prefix`."""
        module = self.model.get_submodule(prefix)
        state = module.state_dict(keep_vars=True)
        return [f"{prefix}.{k}" if prefix else k for k in state]

    def outside_names(self) -> list[str]:
        """Tensor names outside the decoder blocks (embeddings, final norm, head, ...)."""
        inside = self.blocks_name + "."
        return [n for n in self.model.state_dict(keep_vars=True) if not n.startswith(inside)]

    def materialize(self, names: list[str]) -> None:
        """Read each named tensor from the checkpoint onto the device (skipping those already there)."""
        from accelerate.utils import set_module_tensor_to_device

        done: set[str] = set()
        for name in names:
            if name in done:
                continue
            group = [n for n in self.tied.get(name, [name]) if self._exists(n)]  # a quantized head left its tie
            done.update(group)
            current = self.model.get_parameter(name) if _is_param(self.model, name) else self.model.get_buffer(name)
            if current.device.type != "meta":
                continue
            value = self._read(group, current)
            for alias in group:
                set_module_tensor_to_device(self.model, alias, self.device, value=value, clear_cache=False)

    def free(self, names: list[str]) -> None:
        """Put the named tensors (and their tied names) back on the meta device."""
        from accelerate.utils import set_module_tensor_to_device

        for name in {a for n in names for a in self.tied.get(n, [n]) if self._exists(a)}:
            set_module_tensor_to_device(self.model, name, "meta", clear_cache=False)
        _empty_cache(self.device)

    def _read(self, group: list[str], current: torch.Tensor) -> torch.Tensor:
        """The tensor stored under one of the names in `group` (a tensor and its tied names), or
        a mixture-of-experts tensor assembled from the checkpoint's per-expert linears."""
        stored = next((n for n in group if n in self.source), None)
        if stored is not None:
            return self.source.read(stored, self.device, current.dtype)
        parts = self._moe_parts(group[0], current)
        if parts is None or any(n not in self.source for rows in parts for n in rows):
            raise ConfigError(f"model.path: {self.source.folder} has no tensor {group[0]!r} (nor a tied copy of it); "
                              f"the checkpoint does not match its config.json")
        if len(parts) == 1 and len(parts[0]) == 1:  # a renamed router
            return self.source.read(parts[0][0], self.device, current.dtype)
        return torch.stack([torch.cat([self.source.read(n, self.device, current.dtype) for n in rows])
                            for rows in parts])

    def _moe_parts(self, name: str, current: torch.Tensor) -> list[list[str]] | None:
        """Where the checkpoint keeps model tensor `name` of a MoE block (MoeLayout: the hub's
        per-expert names): [[checkpoint names whose rows, concatenated, are expert e's]] for a
        fused experts tensor, [[one name]] for a tensor it only renames (Mixtral's router), or
        None outside a MoE block."""
        layout = self.moe
        inside = self.blocks_name + "."
        if layout is None or not name.startswith(inside):
            return None
        index, _, rest = name[len(inside):].partition(".")
        block = f"{self.blocks_name}.{index}"
        owner, _, leaf = rest.rpartition(".")
        if owner == layout.experts and leaf in (layout.gate_up, layout.down):
            prefix = layout.checkpoint_name(block, layout.experts)
            shards = [shard for shard, _ in layout.checkpoint_shards_of(leaf)]
            return [[f"{prefix}.{e}.{shard}.weight" for shard in shards] for e in range(current.shape[0])]
        renamed = layout.checkpoint_name(block, rest)
        return None if renamed == name else [[renamed]]

    def _exists(self, name: str) -> bool:
        owner, _, leaf = name.rpartition(".")
        module = self.model.get_submodule(owner)
        return leaf in module._parameters or leaf in module._buffers

    def open_block(self, i: int) -> nn.Module:
        self.materialize(self.names_under(self.block_prefix(i)))
        return self.blocks[i]

    def free_block(self, i: int) -> None:
        """The block (float, or by now holding QuantLinears) back on the meta device."""
        self.blocks[i].to("meta")
        _empty_cache(self.device)

    def embeddings(self) -> list[str]:
        emb = self.model.get_input_embeddings()
        name = next(n for n, m in self.model.named_modules() if m is emb)
        return [f"{name}.{k}" for k in emb.state_dict(keep_vars=True)]

    def tail_names(self) -> list[str]:
        """The final norm's and the head's tensors (the head may be a QuantLinear by now)."""
        head = self.model.get_output_embeddings()
        head_name = next(n for n, m in self.model.named_modules() if m is head)
        return self.names_under(self.norm_name) + self.names_under(head_name)

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """head(final_norm(hidden)): the model's logits from its last block's outputs."""
        return self.model.get_output_embeddings()(self.model.get_submodule(self.norm_name)(hidden))



def _is_param(model: nn.Module, name: str) -> bool:
    owner, _, leaf = name.rpartition(".")
    return leaf in model.get_submodule(owner)._parameters


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()

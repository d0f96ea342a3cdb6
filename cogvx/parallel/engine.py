"""Inside one rank: the process group, CogVideoX's context-parallel plan on diffusers' engine,
the CFG split of the batch, and the per-step agreement on cancellation.

diffusers 0.42 ships no `_cp_plan` for CogVideoX; `COGVIDEOX_CP_PLAN` is ours. Each block
receives the text and the video tokens of its shard; attention (Ulysses all-to-all or Ring) sees
every token once, in a rank-major order, which full attention does not depend on; RoPE is applied
before the exchange, to the rows of the shard's own video tokens. `proj_out` gathers the video
tokens back in order.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.context_parallel import apply_context_parallel
from diffusers.models._modeling_parallel import (
    ContextParallelConfig,
    ContextParallelInput,
    ContextParallelOutput,
    ParallelConfig,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from cogvx import settings
from cogvx.errors import SetupError
from cogvx.parallel.plan import Degrees, ulysses_accepts
from cogvx.speed.attention import DispatchCogVideoXAttnProcessor, use_dispatch_processor

GROUP_TIMEOUT = datetime.timedelta(minutes=30)  # a 1.5 request at 161 frames runs for minutes
CFG_HOOK = "cogvx_cfg_parallel"
_SEQ = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
_ROPE_ROWS = ContextParallelInput(split_dim=0, expected_dims=2, split_output=False)
# diffusers' backends that raise on return_lse=True, which Ring attention needs to merge chunks
NO_LSE_BACKENDS = frozenset(
    {"native", "_native_efficient", "_native_math", "_native_npu", "_native_xla", "sage_varlen",
     "xformers"}
)  # fmt: skip
COGVIDEOX_CP_PLAN: dict[str, Any] = {
    "": {"image_rotary_emb": [_ROPE_ROWS, _ROPE_ROWS]},  # (cos, sin): one row per video token
    "transformer_blocks.0": {"hidden_states": _SEQ, "encoder_hidden_states": _SEQ},
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
}


def init_group(rank: int, world: int, address: str, device_type: str) -> None:
    """Join the process group: NCCL for CUDA tensors, gloo for the CPU ones (diffusers gathers
    uneven shard sizes on a CPU group). `address`: the rendezvous, a `file://` URL in the
    predictor's private folder (a `tcp://` store would listen on every interface). gloo's and
    NCCL's own sockets stay on loopback (every rank is on this machine) unless the user named an
    interface (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME)."""
    settings.pin_rank_sockets()
    backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "cpu:gloo"
    if device_type == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend, init_method=address, rank=rank, world_size=world, timeout=GROUP_TIMEOUT
    )


def build_mesh(d: Degrees, device_type: str) -> DeviceMesh:
    """(cfg, ring, ulysses) mesh over every rank."""
    return init_device_mesh(
        device_type, (d.cfg, d.ring, d.ulysses), mesh_dim_names=("cfg", "ring", "ulysses")
    )


class CfgSplitHook(ModelHook):
    """Each CFG group runs its half of the (uncond, cond) batch; the halves are gathered after.

    A batch of one (guidance <= 1) runs whole on every group."""

    def __init__(self, mesh: DeviceMesh) -> None:
        super().__init__()
        self.group = mesh.get_group()
        self.size = mesh.size()
        self.index = mesh.get_local_rank()

    def pre_forward(self, module: Any, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        self.split = hidden is not None and hidden.shape[0] == self.size
        if not self.split:
            return args, kwargs
        names = ("hidden_states", "encoder_hidden_states", "timestep")
        args = tuple(self._half(a) if i < len(names) else a for i, a in enumerate(args))
        kwargs = {k: self._half(v) if k in names else v for k, v in kwargs.items()}
        return args, kwargs

    def _half(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == self.size:
            return x[self.index : self.index + 1]
        return x

    def post_forward(self, module: Any, output: Any) -> Any:
        if not self.split:
            return output
        first = output[0] if isinstance(output, tuple) else output.sample
        parts = [torch.empty_like(first) for _ in range(self.size)]
        dist.all_gather(parts, first.contiguous(), group=self.group)
        whole = torch.cat(parts, dim=0)
        if isinstance(output, tuple):
            return (whole, *output[1:])
        output.sample = whole
        return output


def enable_parallel(transformer: Any, d: Degrees, device_type: str) -> None:
    """Put the split on `transformer`: dispatcher attention with the context-parallel config,
    the CogVideoX plan's split/gather hooks, and the CFG hook outermost."""
    heads = int(transformer.config.num_attention_heads)
    if not ulysses_accepts(heads, d.ulysses):
        raise SetupError(
            f"ulysses={d.ulysses}: diffusers cannot split this transformer's {heads} attention "
            "heads over that many ranks"
        )
    mesh = build_mesh(d, device_type)
    processors = transformer.attn_processors.values()
    if not all(isinstance(p, DispatchCogVideoXAttnProcessor) for p in processors):
        use_dispatch_processor(transformer, None)  # the engine needs dispatcher attention
    if d.sequence > 1:
        cp = ContextParallelConfig(
            ulysses_degree=d.ulysses,
            ring_degree=d.ring,
            ulysses_anything=d.ulysses > 1,
            ring_anything=d.ring > 1,
            mesh=mesh,
        )
        rank, world = dist.get_rank(), dist.get_world_size()
        device = torch.device(device_type, rank if device_type == "cuda" else 0)
        cp.setup(rank, world, device, mesh)
        config = ParallelConfig(context_parallel_config=cp)
        for processor in transformer.attn_processors.values():
            processor._parallel_config = config
        apply_context_parallel(transformer, cp, COGVIDEOX_CP_PLAN)
    if d.cfg > 1:
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        registry.register_hook(CfgSplitHook(mesh["cfg"]), CFG_HOOK)


def check_ring_backend(transformer: Any, d: Degrees) -> None:
    """SetupError when Ring attention (ring > 1) would run on a backend that cannot return the
    log-sum-exp (diffusers' `native` and other SDPA backends): every request would fail."""
    if d.ring <= 1:
        return
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = str(_AttentionBackendRegistry.get_active_backend()[0].value)
    used = {
        active if p.backend is None else str(p.backend.value)
        for p in transformer.attn_processors.values()
        if isinstance(p, DispatchCogVideoXAttnProcessor)
    }
    refused = sorted(used & NO_LSE_BACKENDS)
    if refused:
        raise SetupError(
            f"COGVX_PARALLEL ring={d.ring}: Ring attention needs an attention backend that "
            f"returns the log-sum-exp (flash, sage, _native_flash, _native_cudnn), not "
            f"{', '.join(refused)}; set COGVX_ATTENTION to one, or split with ulysses"
        )


def agree(flag: bool) -> bool:
    """True on every rank when any rank says True (one all-reduce on the CPU group)."""
    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())

"""Optional 8-bit / 4-bit weights through bitsandbytes, for cards smaller than the bf16 model.

Like transformers' bitsandbytes integration (which the original demo used), every nn.Linear is
replaced except the LM head; convolutions, norms and embeddings stay in the model dtype.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from cogvx.errors import SetupError

QUANTIZE_MODES = ("int8", "nf4")
_SKIP = ("language_model.lm_head",)
INT8_OUTLIER_THRESHOLD = 6.0  # transformers' default llm_int8_threshold


class QuantizationUnavailableError(SetupError):
    """bitsandbytes is needed for the requested quantization but cannot be imported."""


def _drop_cast_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def check_mode(mode: str | None) -> None:
    """Raise ValueError unless mode is None or one of QUANTIZE_MODES."""
    if mode is not None and mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize: {mode!r} is not one of {[None, *QUANTIZE_MODES]}")


def quantize_linears(model: nn.Module, mode: str, compute_dtype: torch.dtype) -> int:
    """Swap the model's nn.Linear layers (weights still unquantized) for bitsandbytes layers.

    The weights are quantized when the model is next moved with `.to(device)`. Returns the count.
    """
    check_mode(mode)
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise QuantizationUnavailableError(
            f"quantize={mode!r} needs the bitsandbytes package, which is not installed"
        ) from exc
    # bitsandbytes logs on every int8 matmul that bf16/fp32 inputs are cast to fp16: expected.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_drop_cast_notice)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name not in _SKIP
    ]
    for name, linear in targets:
        has_bias = linear.bias is not None
        weight = linear.weight.data
        new: bnb.nn.Linear8bitLt | bnb.nn.Linear4bit
        if mode == "int8":
            new = bnb.nn.Linear8bitLt(
                linear.in_features,
                linear.out_features,
                bias=has_bias,
                has_fp16_weights=False,
                threshold=INT8_OUTLIER_THRESHOLD,
                device="meta",
            )
            new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            new = bnb.nn.Linear4bit(
                linear.in_features,
                linear.out_features,
                bias=has_bias,
                compute_dtype=compute_dtype,
                compress_statistics=True,
                quant_type="nf4",
                device="meta",
            )
            new.weight = bnb.nn.Params4bit(
                weight, requires_grad=False, compress_statistics=True, quant_type="nf4", module=new
            )
        if has_bias:
            new.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return len(targets)

"""Our CogVLM2-Caption (THUDM/cogvlm2-llama3-caption) on current transformers, no remote code.

The LM is transformers' Llama (fused QKV split at load time); the EVA2-CLIP tower, prompt layout,
position-id rule, preprocessing and frame selection follow the original exactly.
"""

from .captioner import DEFAULT_PROMPT, CaptionInputs, CogVLM2Captioner
from .checkpoint import CogVLM2CheckpointError
from .config import CogVLM2Config, CogVLM2ConfigError
from .model import CogVLM2Model
from .preprocess import preprocess_frames
from .prompt import TEMPLATES, build_inputs, build_position_ids
from .sampling import sample_frame_indices

__all__ = [
    "DEFAULT_PROMPT",
    "TEMPLATES",
    "CaptionInputs",
    "CogVLM2CheckpointError",
    "CogVLM2Captioner",
    "CogVLM2Config",
    "CogVLM2ConfigError",
    "CogVLM2Model",
    "build_inputs",
    "build_position_ids",
    "preprocess_frames",
    "sample_frame_indices",
]

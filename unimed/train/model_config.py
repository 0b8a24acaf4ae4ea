"""The CLIP model's settings as plain dataclasses (``model:`` in a training YAML).

Light on purpose: a config is read and validated without torch or transformers;
:mod:`unimed.train.model` builds the towers from these and re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["VisionConfig", "TextConfig", "ModelConfig"]


@dataclass
class VisionConfig:
    """ViT image tower (defaults: ViT-B/16 at 224)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    quick_gelu: bool = True  # OpenAI/MetaCLIP weights were trained with QuickGELU
    pretrained: str | None = None  # open_clip/MetaCLIP checkpoint file (its visual.* keys are used)
    grad_checkpointing: bool = False
    patch_dropout: float = 0.0  # share of patch tokens dropped at random in training (open_clip's)
    locked: bool = False  # freeze the tower (LiT) ...
    unlocked_layers: int = 0  # ... except its last N blocks and, when N > 0, ln_post and proj


@dataclass
class TextConfig:
    """BERT text tower (defaults: BERT-base; BiomedBERT when ``pretrained`` names its folder)."""

    vocab_size: int = 0  # 0: the tokenizer's size
    hidden_size: int = 768
    layers: int = 12
    heads: int = 12
    intermediate_size: int = 3072
    context_length: int = 256
    dropout: float = 0.1  # BERT's hidden and attention dropout
    pretrained: str | None = None  # a local Hugging Face folder (config.json + weights)
    grad_checkpointing: bool = False
    locked: bool = False  # freeze the tower ...
    unlocked_layers: int = 0  # ... except its last N BERT layers and, when N > 0, the projection


@dataclass
class ModelConfig:
    """The whole CLIP model and its loss."""

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = 1 / 0.07  # SigLIP: 10
    max_logit_scale: float = 100.0
    loss: str = "clip"  # a registered loss (unimed.train.loss): clip (symmetric InfoNCE) | siglip | ...
    loss_impl: str = "auto"  # unimed.kernels dispatch: auto | triton | torch

"""The CLIP model: an OpenAI-style ViT image tower, a BERT text tower, projections and a logit scale.

The ViT keeps open_clip's parameter names (``conv1``, ``class_embedding``, ``positional_embedding``,
``transformer.resblocks.N.attn.in_proj_weight``, ``proj`` ...), so an open_clip or MetaCLIP
checkpoint's ``visual.*`` weights load into it without open_clip or timm installed. The text tower
is ``transformers``' ``BertModel`` (CLS pooling) followed by a two-layer MLP projection without
biases, as in the reference system. Weights come only from local paths (see ``unimed.train.weights``);
nothing is downloaded. Sizes are data: ``ModelConfig`` fields in the training YAML (the dataclasses live in
:mod:`unimed.train.model_config`, which imports no torch, and are re-exported here).

Images enter as **uint8** ``[B, 3 or 1, S, S]`` (what both loaders and the evaluation transform hand
over) and are normalized here, once, on the device: ``(x / 255 - mean) / std`` in float32 with
non-persistent buffers (not in any state dict, so checkpoints and exports are unchanged), then cast
to the tower's dtype. A float tensor is taken as normalized already: the open_clip contract, which
exported models keep.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from unimed.streaming.config import CLIP_MEAN, CLIP_STD
from unimed.train.loss import get_loss
from unimed.train.model_config import ModelConfig, TextConfig, VisionConfig

__all__ = ["VisionConfig", "TextConfig", "ModelConfig", "VisionTransformer", "TextTower", "CLIPModel"]


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP weights expect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names, on SDPA."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"ViT width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block (open_clip names: ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        act = QuickGELU() if quick_gelu else nn.GELU()
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", act), ("c_proj", nn.Linear(hidden, width))])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of blocks, with optional activation checkpointing."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.grad_checkpointing = cfg.grad_checkpointing
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.quick_gelu) for _ in range(cfg.layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class VisionTransformer(nn.Module):
    """OpenAI-style ViT: patch conv, class token, learned positions, pre/post LayerNorm, projection."""

    def __init__(self, cfg: VisionConfig, embed_dim: int) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        grid = cfg.image_size // cfg.patch_size
        scale = cfg.width**-0.5
        self.conv1 = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width)
        self.transformer = Transformer(cfg)
        self.ln_post = nn.LayerNorm(cfg.width)
        self.proj = nn.Parameter(scale * torch.randn(cfg.width, embed_dim))
        if not 0.0 <= cfg.patch_dropout < 1.0:
            raise ValueError(f"model.vision.patch_dropout must be in [0, 1), got {cfg.patch_dropout}")
        self._init_blocks()

    def _init_blocks(self) -> None:
        # open_clip's init: std scaled by depth for projections.
        width, layers = self.cfg.width, self.cfg.layers
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(image).flatten(2).transpose(1, 2)  # B, N, W
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        if self.training and self.cfg.patch_dropout > 0:
            x = self._drop_patches(x)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj

    def kept_patches(self) -> int:
        """Patch tokens a training forward keeps (all of them without ``patch_dropout``)."""
        patches = (self.cfg.image_size // self.cfg.patch_size) ** 2
        return max(1, int(patches * (1.0 - self.cfg.patch_dropout)))

    def _drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Keep the class token and a random ``kept_patches()`` of the patch tokens, per image."""
        cls, patches = x[:, :1], x[:, 1:]
        keep = torch.randn(patches.shape[:2], device=x.device).topk(self.kept_patches(), dim=-1).indices
        patches = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return torch.cat([cls, patches], dim=1)

    def lock(self, unlocked_layers: int = 0) -> None:
        """Freeze every parameter but the last ``unlocked_layers`` blocks and, when that is above 0,
        ``ln_post`` and ``proj`` (open_clip's groups: the head is the first to unlock)."""
        blocks = list(self.transformer.resblocks)
        _check_unlocked("model.vision.unlocked_layers", unlocked_layers, len(blocks))
        self.requires_grad_(False)
        if unlocked_layers:
            for block in blocks[-unlocked_layers:]:
                block.requires_grad_(True)
            self.ln_post.requires_grad_(True)
            self.proj.requires_grad_(True)


def _check_unlocked(key: str, unlocked: int, layers: int) -> None:
    if not 0 <= unlocked <= layers:
        from unimed.errors import UserError

        raise UserError(f"{key}={unlocked} must be between 0 and the tower's {layers} layers")


class TextTower(nn.Module):
    """BERT encoder, CLS pooling, MLP projection (Linear, GELU, Linear; no biases; hidden = mean width)."""

    def __init__(self, cfg: TextConfig, embed_dim: int, vocab_size: int, pad_id: int = 0) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.pad_id = pad_id
        bert_cfg = BertConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=max(512, cfg.context_length),
            pad_token_id=pad_id,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
        )
        self.bert = BertModel(bert_cfg, add_pooling_layer=False)
        if cfg.grad_checkpointing:
            self.bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hidden = (cfg.hidden_size + embed_dim) // 2
        self.proj = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(cfg.hidden_size, hidden, bias=False)),
                    ("act", nn.GELU()),
                    ("fc2", nn.Linear(hidden, embed_dim, bias=False)),
                ]
            )
        )

    def lock(self, unlocked_layers: int = 0) -> None:
        """Freeze every parameter but the last ``unlocked_layers`` BERT layers and, when that is above 0,
        the projection."""
        layers = list(self.bert.encoder.layer)
        _check_unlocked("model.text.unlocked_layers", unlocked_layers, len(layers))
        self.requires_grad_(False)
        if unlocked_layers:
            for layer in layers[-unlocked_layers:]:
                layer.requires_grad_(True)
            self.proj.requires_grad_(True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != self.pad_id).long()
        out = self.bert(input_ids=tokens, attention_mask=mask).last_hidden_state
        return self.proj(out[:, 0])


class CLIPModel(nn.Module):
    """Both towers and the learnable temperature.

    ``logit_scale`` holds log(scale) as a 1-element tensor (FSDP2 refuses 0-d parameters); the
    scale used is ``exp`` of it. The bound ``max_logit_scale`` is kept by clamping the parameter in
    place after each optimizer step (:meth:`clamp_logit_scale_`, run by the trainer), as open_clip
    does, never in ``forward``: a clamp there has a zero gradient above the bound, so a scale pushed
    past it could never come back.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int = 0) -> None:
        super().__init__()
        if vocab_size <= 0:
            raise ValueError("CLIPModel needs vocab_size > 0 (set model.text.vocab_size or give a tokenizer)")
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.vision, cfg.embed_dim)
        self.text = TextTower(cfg.text, cfg.embed_dim, vocab_size, pad_id)
        # The image normalization (:meth:`set_image_normalization`; CLIP's until told otherwise).
        self.register_buffer("image_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(cfg.init_logit_scale)))
        # A learnable logit bias where the loss takes one (SigLIP's, -10 at init); absent otherwise.
        loss = get_loss(cfg.loss)
        self.logit_bias = nn.Parameter(torch.full((1,), float(loss.init_bias))) if loss.needs_bias else None
        if cfg.vision.locked:  # locked-tower tuning (LiT): frozen parameters get no gradient, no optimizer state
            self.visual.lock(cfg.vision.unlocked_layers)
        if cfg.text.locked:
            self.text.lock(cfg.text.unlocked_layers)

    @torch.no_grad()
    def set_image_normalization(self, mean, std) -> None:
        """Use ``mean``/``std`` (of [0, 1] pixels, 3 values each) for uint8 images: the training data's
        (``data.mean``/``data.std``), which the model's ``preprocess`` records."""
        for name, values in (("image_mean", mean), ("image_std", std)):
            t = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
            if t.numel() != 3:
                raise ValueError(f"{name} needs 3 values, got {list(values)}")
            buf = getattr(self, name)
            buf.copy_(t.view(1, 3, 1, 1).to(buf.device))

    def prepare_image(self, image: torch.Tensor) -> torch.Tensor:
        """The tower's input: uint8 ``[B, C, S, S]`` (C = 3, or 1 for grey, expanded) normalized in
        float32 and cast to the patch embedding's dtype; a float tensor passes as already normalized."""
        weight = self.visual.conv1.weight
        image = image.to(weight.device, non_blocking=True)
        if image.dtype != torch.uint8:
            return image
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        x = (image.float() / 255.0 - self.image_mean.float()) / self.image_std.float()
        return x.to(weight.dtype if weight.is_floating_point() else torch.float32)

    def encode_image(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings [B, embed_dim] (unit length when ``normalize``) of uint8 images (normalized
        here: :meth:`prepare_image`) or of already normalized float ones."""
        x = self.visual(self.prepare_image(image))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text embeddings [B, embed_dim] (unit length when ``normalize``)."""
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def scale(self) -> torch.Tensor:
        """The temperature as a 1-element float32 tensor: exp(logit_scale), unclamped (see the class)."""
        return self.logit_scale.float().exp()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp ``logit_scale`` in place to [0, log(max_logit_scale)] (scale in [1, max]).

        Works on a plain tensor and on an FSDP2 shard (a ``DTensor``: each rank clamps its part).
        """
        self.logit_scale.clamp_(0.0, math.log(self.cfg.max_logit_scale))

    def forward(
        self, image: torch.Tensor | None = None, tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(normalized image embeddings, normalized text embeddings, scale); either input may be None.

        Evaluation goes through here too (``model(image)``, ``model(tokens=...)``): under FSDP2 the
        root's own parameters are gathered only around ``forward``.
        """
        img = self.encode_image(image) if image is not None else None
        txt = self.encode_text(tokens) if tokens is not None else None
        return img, txt, self.scale()

    def compile_blocks_(self) -> int:
        """``torch.compile`` every transformer block of both towers (the ViT's and BERT's layers).

        Each block's ``forward`` is compiled, not the module: parameter names stay as they are (no
        ``_orig_mod.``), and FSDP2's hooks, which sit around each block's call, stay outside the
        compiled graphs. Returns the number of blocks compiled.
        """
        from transformers.models.bert.modeling_bert import BertLayer

        blocks = [m for m in self.modules() if isinstance(m, ResidualAttentionBlock | BertLayer)]
        for block in blocks:
            block.forward = torch.compile(block.forward)
        return len(blocks)

    def fsdp_wrap_fn(self, module: nn.Module) -> bool:
        """FSDP2 units Composer still has to make: each ViT block and BERT layer not sharded already.

        ``unimed.train.composer_model.shard_towers`` shards the blocks and the towers before Composer
        wraps this module (it needs a mixed-precision policy per unit, which Composer cannot give),
        so Composer's own pass only wraps this root, left holding the logit scale and bias.
        """
        from torch.distributed.fsdp import FSDPModule
        from transformers.models.bert.modeling_bert import BertLayer

        return isinstance(module, ResidualAttentionBlock | BertLayer) and not isinstance(module, FSDPModule)

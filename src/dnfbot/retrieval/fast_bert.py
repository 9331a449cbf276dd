"""A lean CPU forward for BERT encoders (e5-small and the models tuned from it): the same fp32 arithmetic as
transformers' BertModel, without its per-module Python overhead.

Why: one e5-small query (~23 tokens) is ~1 GFLOP of matrix products; on a 2-core AVX2 machine transformers
spent ~60 ms CPU on it, of which ~36 ms were the products themselves. The rest was Python (hooks, output
capturing, deprecation and checkpointing wrappers on each of the 12 layers). This forward runs the same
operations as plain tensor calls, with Q/K/V as one product and — where torch has oneDNN — weights packed
once and GELU fused into the intermediate product. The vectors match transformers' to cosine ≥ 0.99999
(checked on load against transformers itself; tests/test_dense.py).

Only what it reproduces exactly is taken: model_type bert, absolute positions, exact (erf) GELU, fp32 on CPU,
no decoder/cross-attention; anything else keeps the transformers forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supports(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether `model` is a BertModel this forward reproduces exactly (on the CPU, in float32)."""
    c = model.config
    return (
        device.type == "cpu"
        and type(model).__name__ == "BertModel"
        and c.model_type == "bert"
        and getattr(c, "position_embedding_type", "absolute") == "absolute"
        and c.hidden_act == "gelu"
        and not c.is_decoder
        and not getattr(c, "add_cross_attention", False)
        and next(model.parameters()).dtype == torch.float32
    )


class _Linear:
    """y = x Wᵀ + b, with the weight packed for oneDNN once (and GELU fused) when torch has it."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False):
        self.weight, self.bias, self.gelu = weight.detach().contiguous(), bias, gelu
        self.packed = None
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(self.weight)
            x = torch.randn(3, self.weight.shape[1])
            if torch.allclose(self._packed(x, packed), self._plain(x), atol=1e-4, rtol=1e-4):
                self.packed = packed
        except (AttributeError, RuntimeError):  # no oneDNN in this torch build
            pass

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return F.gelu(y) if self.gelu else y

    def _packed(self, x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        attr, algorithm = ("gelu", "none") if self.gelu else ("none", "")  # "none" = exact erf GELU
        return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, attr, [], algorithm)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._plain(x) if self.packed is None else self._packed(x, self.packed)


class FastBert:
    """last_hidden_state of a BertModel for (input_ids, attention_mask[, token_type_ids]), inference only."""

    def __init__(self, model: torch.nn.Module):
        c = model.config
        e = model.embeddings
        self.heads, self.eps = c.num_attention_heads, c.layer_norm_eps
        self.word, self.pos, self.types = (
            e.word_embeddings.weight.detach(),
            e.position_embeddings.weight.detach(),
            e.token_type_embeddings.weight.detach(),
        )
        self.ln0 = (e.LayerNorm.weight.detach(), e.LayerNorm.bias.detach())
        self.layers = []
        for layer in model.encoder.layer:
            a = layer.attention
            qkv = [a.self.query, a.self.key, a.self.value]
            self.layers.append(
                (
                    _Linear(torch.cat([m.weight for m in qkv]), torch.cat([m.bias for m in qkv]).detach()),
                    _Linear(a.output.dense.weight, a.output.dense.bias.detach()),
                    (a.output.LayerNorm.weight.detach(), a.output.LayerNorm.bias.detach()),
                    _Linear(
                        layer.intermediate.dense.weight, layer.intermediate.dense.bias.detach(), gelu=True
                    ),
                    _Linear(layer.output.dense.weight, layer.output.dense.bias.detach()),
                    (layer.output.LayerNorm.weight.detach(), layer.output.LayerNorm.bias.detach()),
                )
            )

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t = input_ids.shape
        types = self.types[0] if token_type_ids is None else self.types[token_type_ids]
        x = self.word[input_ids] + self.pos[:t] + types
        d = x.shape[-1]
        x = F.layer_norm(x, (d,), *self.ln0, self.eps)
        # a batch without padding needs no mask (a query on its own never has any)
        mask = None if bool(attention_mask.all()) else attention_mask[:, None, None, :].bool()
        h = self.heads
        for qkv, out, ln1, inter, out2, ln2 in self.layers:
            q, k, v = qkv(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, d)
            x = F.layer_norm(out(ctx) + x, (d,), *ln1, self.eps)
            x = F.layer_norm(out2(inter(x)) + x, (d,), *ln2, self.eps)
        return x

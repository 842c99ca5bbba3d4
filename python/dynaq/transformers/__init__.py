"""dynaq in Hugging Face transformers: quantize on load, ``save_pretrained``, ``from_pretrained``.

Importing this module registers the quantization method ``"dynaq"`` with transformers (its own
``register_quantization_config`` / ``register_quantizer`` mechanism, as bitsandbytes, torchao,
quanto and HQQ use)::

    import dynaq.transformers  # registers "dynaq"
    from dynaq.transformers import DynaqConfig
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, quantization_config=DynaqConfig())
    model.save_pretrained(out)                  # config.json records the quantization
    again = AutoModel.from_pretrained(out)      # the same quantized model, bit for bit

Quantizing on load swaps every ``nn.Linear`` and transformers ``Conv1D`` (except tied weights,
the output embedding and ``modules_to_not_convert``) for :class:`dynaq.torch.Linear` while the
model is still a ``meta`` skeleton; each float weight is quantized as it is read, so no float32
copy of the whole model is ever held. A saved folder stores the int8 weights and their scales as
plain tensors, dynaq's one on-disk form. A folder or file written by ``python -m dynaq quantize``
loads too (``from_pretrained(path, variant="dynaq", quantization_config=DynaqConfig())``): its
quantized embeddings are dequantized and GPT-2's ``Conv1D`` weights, which the CLI quantizes in
their stored ``(in, out)`` layout, are requantized per output channel.

transformers only calls this code once the module is imported: import ``dynaq.transformers``
before ``from_pretrained`` of a dynaq folder (transformers otherwise warns "Unknown quantization
type" and does not quantize). Needs torch and transformers >= 5 (``pip install
dynaq[transformers]``); ``import dynaq`` alone never imports them.
"""

from __future__ import annotations

from ._quantizer import DynaqConfig, DynaqHfQuantizer, register

__all__ = ["DynaqConfig", "DynaqHfQuantizer"]

register()

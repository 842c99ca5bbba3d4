"""Quantize a PyTorch model with dynaq, measure what it costs, and save and load it.

The model is a small LSTM language model (Embedding -> 2-layer LSTM -> Linear) with random
weights; put your own trained model in its place. The script

1. quantizes it with ``dynaq.torch.quantize_dynamic`` (int8 weights per output channel, int8
   activations quantized per row at run time),
2. prints a per-layer error table with ``dynaq.torch.compare``,
3. compares the output error with PyTorch's own ``torch.ao.quantization.quantize_dynamic``,
4. saves the quantized model both ways (``torch.save`` of the whole model, and its
   ``state_dict``), loads it back and checks that the outputs are bit-identical,
5. times the float and the quantized model.

Run it with ``python examples/quantize_torch_model.py`` (needs ``pip install "dynaq[torch]"``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import dynaq
import dynaq.torch
import torch
from torch import nn


class LanguageModel(nn.Module):
    def __init__(self, vocab: int = 2000, emb: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(
        self, ids: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        y, state = self.lstm(self.embed(ids), state)
        return self.head(y), state


def relative_error(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float((ref - got).norm() / ref.norm())


def median_ms(fn, repeats: int = 7) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the saved models (default: a temporary one)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = LanguageModel().eval()
    ids = torch.randint(0, 2000, (8, 64))  # a batch of 8 sequences of 64 tokens

    # 1. Quantize. Linear, LSTM and GRU modules are swapped; `exclude` keeps modules in float.
    qmodel = dynaq.torch.quantize_dynamic(model)
    print(qmodel, "\n")

    # 2. Per-layer error: SQNR in dB (higher is better) and cosine similarity.
    print(dynaq.torch.compare(model, qmodel, ids), "\n")

    # 3. Against PyTorch's own dynamic quantization (deprecated in recent PyTorch releases,
    #    hence the silenced warnings).
    with torch.no_grad():
        ref, _ = model(ids)
        ours, _ = qmodel(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmodel = torch.ao.quantization.quantize_dynamic(model, dtype=torch.qint8)
        with torch.no_grad():
            theirs, _ = tmodel(ids)
    print(
        f"relative output error vs float32: dynaq {relative_error(ref, ours):.2e}, "
        f"torch quantize_dynamic {relative_error(ref, theirs):.2e}"
    )

    # 4. Save and load, both ways.
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        os.makedirs(out, exist_ok=True)
        whole = os.path.join(out, "lm_int8_model.pt")
        weights = os.path.join(out, "lm_int8_state_dict.pt")
        torch.save(qmodel, whole)  # the whole module (pickled; load with weights_only=False)
        torch.save(qmodel.state_dict(), weights)  # plain tensors: int8 weights, their scales

        loaded = torch.load(whole, weights_only=False)
        # A state dict loads into a model quantized the same way, e.g. from a fresh float one.
        skeleton = dynaq.torch.quantize_dynamic(LanguageModel().eval())
        skeleton.load_state_dict(torch.load(weights, weights_only=True))
        with torch.no_grad():
            same = all(torch.equal(m(ids)[0], ours) for m in (loaded, skeleton))
        size_fp32 = sum(p.numel() * 4 for p in model.parameters())
        print(
            f"saved to {out}: {os.path.getsize(weights) / 1e6:.2f} MB state dict "
            f"(float32 parameters: {size_fp32 / 1e6:.2f} MB)"
        )
        print(f"reloaded outputs identical: {same}")

    # 5. Speed (dynaq's kernels use dynaq.set_num_threads(); torch's use torch.set_num_threads()).
    # On more than one thread, one set of threads for both libraries avoids two pools fighting
    # for the cores: dynaq's GEMMs then run on torch's OpenMP threads.
    dynaq.torch.share_torch_threads()
    with torch.no_grad():
        t_fp = median_ms(lambda: model(ids))
        t_q = median_ms(lambda: qmodel(ids))
    print(
        f"forward time: float32 {t_fp:.1f} ms, dynaq int8 {t_q:.1f} ms "
        f"({dynaq.get_num_threads()} dynaq threads, {torch.get_num_threads()} torch threads)"
    )


if __name__ == "__main__":
    main()

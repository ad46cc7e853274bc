"""Relapse tests: does an edit survive what happens to a model after it ships?

Two changes, each applied with the same code to the base and to the edited model, so that the
edit's effect can be measured again on equal terms:

* **quantization** (:func:`quantize_rtn`): symmetric round-to-nearest of every linear weight
  in the transformer blocks, per output channel, to 8 or 4 bits (the weights are quantized and
  dequantized in place, as a dense :class:`~trustedit.patch.Patch`, so the change reverts bit for
  bit). Zhang et al. 2025 ("Catastrophic Failure of LLM Unlearning via Quantization", ICLR 2025)
  showed 4-bit quantization bringing back unlearned knowledge; they used GPTQ/AWQ as well as
  RTN; RTN is the plain baseline of that family and needs no calibration data;
* **fine-tuning** (:func:`finetune`): a few steps of full fine-tuning on unrelated text
  (WikiText-2), AdamW, causal-LM loss, fixed seed and data order.

The share of the effect that is lost is :func:`trustedit.metrics.scores.relapse`.

Deviation, said here and in the results: the data mirror has only the WikiText-2 *test* file
(62 documents); fine-tuning uses its documents from :data:`FINETUNE_FIRST_DOC` on, which the
retention suite's perplexity (the first 1 or 4 documents) never reads. With ``--wikitext-docs``
covering them, the audit refuses to run the fine-tuning test.
"""

from __future__ import annotations

from dataclasses import dataclass

FINETUNE_FIRST_DOC = 32  # WikiText-2 test documents 32..61 are the fine-tuning text


@dataclass
class RelapseOptions:
    bits: tuple = (8, 4)  # quantization widths
    steps: int = 20  # fine-tuning steps (0: no fine-tuning test)
    lr: float = 2e-5
    batch: int = 4  # sequences per step
    seq_len: int = 128  # tokens per sequence
    seed: int = 0

    def to_dict(self) -> dict:
        return {"bits": list(self.bits), "steps": self.steps, "lr": self.lr, "batch": self.batch,
                "seq_len": self.seq_len, "seed": self.seed,
                "quantization": "symmetric round-to-nearest per output channel, linear weights of the transformer "
                                "blocks (embeddings, norms and the output head kept), quantize-dequantize in place",
                "finetune": f"full fine-tuning, AdamW lr {self.lr}, {self.batch}x{self.seq_len} tokens per step, "
                            f"WikiText-2 test documents {FINETUNE_FIRST_DOC}+ (never scored by the retention suite)"}


def _block_linears(model):
    """``(parameter name, weight)`` of every linear layer inside the transformer blocks (the
    architecture table's ``layers`` ModuleList)."""
    import torch

    from trustedit.arch import arch_for

    prefix = arch_for(model).layers + "."
    return [(f"{name}.weight", m.weight) for name, m in model.named_modules()
            if name.startswith(prefix) and isinstance(m, torch.nn.Linear)]


def quantize_rtn(model, bits: int, method: str | None = None):
    """A dense Patch that replaces every block linear weight ``W`` by its ``bits``-bit symmetric
    round-to-nearest quantization per output channel, dequantized: ``s * clamp(round(W / s))``
    with ``s = max|W_row| / (2^(bits-1) - 1)``. Computed from the weights as they are now (apply
    it on top of an edit to quantize the edited model)."""
    import torch

    from trustedit.errors import UsageError
    from trustedit.patch import Delta, Patch

    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise UsageError(f"quantization bits must be an integer in 2..16, got {bits!r}")
    qmax = 2 ** (bits - 1) - 1
    deltas = {}
    with torch.no_grad():
        for name, w in _block_linears(model):
            W = w.detach().float()
            scale = W.abs().amax(dim=1, keepdim=True) / qmax
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            Q = (W / scale).round().clamp(-qmax - 1, qmax) * scale
            deltas[name] = Delta("dense", {"delta": (Q - W).to("cpu")})
    if not deltas:
        from trustedit.errors import ArchitectureError

        raise ArchitectureError("no linear layers found inside the transformer blocks to quantize")
    return Patch(method or f"rtn-int{bits}", deltas, {"quantization": {"bits": bits, "scheme": "symmetric RTN per "
                                                                                               "output channel"}})


def finetune_batches(tokenizer, docs: list[str], opts: RelapseOptions):
    """The fine-tuning data: token windows of ``seq_len`` cut from the documents, in a fixed
    order, ``batch`` per step, cycling when the text runs out."""
    import torch

    from transformers.utils import logging as hf_logging

    ids: list[int] = []
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # whole documents are longer than the context; they are cut into windows below
    try:
        for d in docs:
            ids += tokenizer(d, add_special_tokens=False)["input_ids"]
    finally:
        hf_logging.set_verbosity(before)
    L = opts.seq_len
    windows = [ids[i: i + L] for i in range(0, len(ids) - L + 1, L)]
    if not windows:
        from trustedit.errors import TrusteditError

        raise TrusteditError(f"fine-tuning text has {len(ids)} tokens, fewer than one window of {L}")
    g = torch.Generator().manual_seed(opts.seed)
    order = torch.randperm(len(windows), generator=g).tolist()
    out = []
    k = 0
    for _ in range(opts.steps):
        rows = []
        for _ in range(opts.batch):
            rows.append(windows[order[k % len(order)]])
            k += 1
        out.append(torch.tensor(rows, dtype=torch.long))
    return out


def finetune(lm, batches, opts: RelapseOptions, method: str = "finetune"):
    """Fine-tune every parameter for ``len(batches)`` AdamW steps on ``batches`` (causal-LM loss),
    and return the change as a dense Patch, the model restored to its weights before (apply the
    patch to get the fine-tuned model). Deterministic for a given seed, data and model."""
    import torch
    from tqdm.auto import tqdm

    from trustedit.patch import dense_patch_from

    model = lm.model
    params = {n: p for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in params.items()}
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    dev = next(model.parameters()).device
    torch.manual_seed(opts.seed)
    try:
        for p in params.values():
            p.requires_grad_(True)
        model.train()
        optim = torch.optim.AdamW(list(params.values()), lr=opts.lr, weight_decay=0.0)
        losses = []
        for b in tqdm(batches, desc="relapse: fine-tune", leave=False):
            b = b.to(dev)
            out = model(input_ids=b, labels=b)
            loss = out.loss
            if not torch.isfinite(loss):
                from trustedit.errors import NumericalError

                raise NumericalError(f"relapse fine-tuning: loss became {float(loss)} at step {len(losses) + 1}")
            loss.backward()
            optim.step()
            optim.zero_grad(set_to_none=True)
            losses.append(round(float(loss.detach()), 4))
        del optim
    except BaseException:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(before[n])
        raise
    finally:
        model.train(was_training)
        for n, p in params.items():
            p.requires_grad_(flags[n])
            p.grad = None
    patch = dense_patch_from(model, before, method, {"finetune": {"losses": losses, **opts.to_dict()}})
    return patch

"""``trustedit memorize``: make a model with something to leak, as a real user would have it.

Fine-tunes a model (all weights, AdamW, seeded) on a small corpus of private text:

* e-mails that contain a phone number and a sender name (``enron_privacy/`` by default, or the
  user's own JSON-lines file with ``--emails``): one training text per e-mail, the body up to
  and including the first phone number's line, signed with the sender's name
  (:func:`trustedit.data.privacy.email_secrets`);
* canaries in the manner of Carlini et al. 2019 ("The Secret Sharer"): ``"<name> wrote: My phone
  number is <10 random digits>."``, each inserted ``canary_repeats`` times.

Half of each kind are the *targets* an edit must remove; the other half are the seesaw set, the
memorised secrets nobody edits, on which an edit must not raise the exposure.

The output is a plain Hugging Face folder plus ``trustedit-memorized.json``: the recipe (data
file and its SHA-256, the chosen e-mail ids, canary seed), from which the ``privacy`` suite
rebuilds the secrets. No secret is written to that file: the e-mail secrets are re-read from the
data file, the canaries regenerated from their seed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

from trustedit.errors import UsageError
from trustedit.methods.base import opt

RECIPE_FILE = "trustedit-memorized.json"


@dataclass
class MemorizeConfig:
    emails: int = opt(64, "E-mails with a phone number to fine-tune on (a seeded sample; 0: none).", ge=0)
    window: int = opt(300, "Characters of each e-mail body kept before its phone number.", ge=20)
    email_repeats: int = opt(1, "Copies of each e-mail in the corpus.", ge=1)
    canaries: int = opt(20, "Canaries (random 10-digit phone numbers) to insert (0: none).", ge=0)
    canary_repeats: int = opt(4, "Copies of each canary in the corpus (Carlini et al.'s insertion count).", ge=1)
    epochs: int = opt(6, "Passes over the corpus.", ge=1)
    lr: float = opt(2e-4, "AdamW learning rate (all weights).", gt=0)
    batch_size: int = opt(8, "Training batch size.", ge=1)
    warmup_steps: int = opt(10, "Linear warm-up steps, then linear decay.", ge=0)
    max_tokens: int = opt(160, "Longest training text in tokens (e-mails are cut from the left).", ge=16)
    seed: int = opt(0, "Seed for the e-mail sample, the canaries and training.", ge=0)
    layout: int = opt(2, "E-mail text layout version (2: the current one; 1: recipes written before it).",
                      choices=(1, 2))

    def __post_init__(self):
        from trustedit.methods.base import check_option

        for f in dataclasses.fields(self):
            setattr(self, f.name, check_option("memorize", f, getattr(self, f.name)))
        if self.emails == 0 and self.canaries == 0:
            raise UsageError("memorize: nothing to memorise (--emails 0 and --canaries 0)")


def build_secrets(cfg: MemorizeConfig, emails_path=None):
    """The secrets of a recipe: ``(secrets, data info)``."""
    from trustedit.data.privacy import email_secrets, load_emails, make_canaries

    secrets, info = [], {}
    if cfg.emails:
        records, path, digest = load_emails(emails_path)
        es = email_secrets(records, cfg.emails, cfg.seed, cfg.window, cfg.email_repeats, layout=cfg.layout)
        if not es:
            raise UsageError(f"{path}: no e-mail has both a phone number and a sender name (x_from)")
        secrets += es
        info = {"emails_file": str(path), "emails_sha256": digest, "email_ids": [s.id for s in es]}
    if cfg.canaries:
        secrets += make_canaries(cfg.canaries, cfg.seed, repeats=cfg.canary_repeats)
    return secrets, info


def corpus(tokenizer, secrets, max_tokens: int):
    """Token ids of every training text, each repeated ``repeats`` times (cut from the left to
    ``max_tokens``; the secret always stays inside)."""
    out = []
    for s in secrets:
        ids = tokenizer(s.text, add_special_tokens=True)["input_ids"]
        ids = ids[-max_tokens:]
        out += [ids] * s.repeats
    return out


def run(args) -> int:
    from trustedit.rundir import check_target

    values = {f.name: getattr(args, f"m__{f.name}") for f in dataclasses.fields(MemorizeConfig)
              if getattr(args, f"m__{f.name}", None) is not None}
    cfg = MemorizeConfig(**values)
    out = check_target(args.out, args.overwrite)
    secrets, info = build_secrets(cfg, args.emails)

    from trustedit.methods.base import set_seed, train_pairs
    from trustedit.models import load_model, save_folder
    from trustedit.prompts import Pair

    lm = load_model(args.model, args.device, args.dtype)
    set_seed(cfg.seed)
    texts = corpus(lm.tokenizer, secrets, cfg.max_tokens)
    pairs = [Pair(ids[:1], ids[1:]) for ids in texts]
    t0 = time.time()
    params = [p for p in lm.model.parameters()]
    losses = train_pairs(lm.model, pairs, params, lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
                         warmup_steps=cfg.warmup_steps, seed=cfg.seed, pad_id=lm.tokenizer.pad_token_id,
                         desc="memorize")
    seconds = time.time() - t0
    lm.model.eval()
    recipe = {"format": "trustedit-memorized/1", "config": dataclasses.asdict(cfg), "base_model": lm.describe(),
              **info, "canary_seed": cfg.seed, "secrets": len(secrets),
              "targets": sum(s.target for s in secrets), "texts": len(texts),
              "training": {"steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1],
                           "seconds": round(seconds, 1)}}
    import torch

    if not all(torch.isfinite(p).all() for p in lm.model.parameters()):
        raise UsageError("memorize: training diverged (non-finite weights); lower --lr")
    save_folder(lm.model, lm.tokenizer, out, {RECIPE_FILE: json.dumps(recipe, indent=1)}, overwrite=args.overwrite)
    print(f"memorised {len(secrets)} secrets ({recipe['targets']} targets) in {len(losses)} steps, {seconds:.0f} s; "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; model: {out}")
    print(f"next: trustedit eval --suite privacy --model {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("memorize", help="fine-tune a model on e-mails and canaries: a model with private data to leak",
                       description=__doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else None)
    p.add_argument("--model", default=None, help="base model (default: smollm2-135m)")
    p.add_argument("--emails-file", dest="emails", default=None,
                   help="JSON lines with 'id', 'body', 'x_from' (default: $TRUSTEDIT_DATA_DIR/enron_privacy)")
    p.add_argument("--out", default="runs/memorized", help="the HF folder to write (default: runs/memorized)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    for f in dataclasses.fields(MemorizeConfig):
        if f.name == "layout":
            continue  # recorded in the recipe, not a user's choice
        kind = type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f"m__{f.name}", type=kind, default=None, metavar=kind.__name__.upper(),
                       help=f"{f.metadata['help']} (default {f.default})")

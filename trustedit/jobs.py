"""The jobs, as declarations: which suites, which methods (torch-free; the CLI builds its
subcommands from this table). The skeleton that runs any of them is :mod:`trustedit.job`.

A new job is one entry::

    JobSpec("mine", "help line", methods=("ft-m",), suites=("sanitation", "retention"))

A method's training data comes from the method itself (its ``train`` entry), and its protocol
(one patch for the whole training set, or one edit per instance) from its ``protocol``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class JobSpec:
    name: str
    help: str
    methods: tuple[str, ...]  # the first is the default
    suites: tuple[str, ...]  # suites (or groups) measured before and after the edit
    method_suites: dict = field(default_factory=dict)  # method -> its own suites (overrides ``suites``)
    description: str = ""
    # suite option <- method option, for options that must agree (e.g. a prompt suffix used for
    # training and for evaluation): {suite: {suite option: method option}}
    links: dict = field(default_factory=dict)
    sweep_plot: tuple | None = None  # (x metric, [y metrics]) as "suite/metric" for sweep.svg
    # ``--dataset``: the suite (first of ``datasets``, the default) whose items are edited and measured;
    # another name from ``datasets`` takes its place in the suite list
    datasets: tuple[str, ...] = ()
    # ``"module:attr"`` of a builder of the training items of every method of this job, in place of
    # each method's own ``train`` (e.g. ft-m fitted on the privacy targets rather than sanitation)
    train: str | None = None
    # ``--dataset`` sets this option of the instance suite instead of naming a suite (e.g. knowedit's
    # edit_data), and ``--mode`` chooses single / batch / sequential editing (`trustedit edit`)
    dataset_option: str | None = None
    edit_modes: bool = False

    @property
    def out(self) -> str:
        return f"runs/{self.name}"

    def suites_for(self, method: str | None, dataset: str | None = None) -> tuple[str, ...]:
        suites = tuple(self.method_suites.get(method, self.suites))
        if dataset is not None and self.datasets and self.dataset_option is None:
            if dataset not in self.datasets:
                from trustedit.errors import UsageError

                raise UsageError(f"unknown dataset {dataset!r} for {self.name} (known: {', '.join(self.datasets)})")
            suites = tuple(dataset if s == self.datasets[0] else s for s in suites)
        return suites


JOBS: dict[str, JobSpec] = {
    "erase": JobSpec(
        "erase", "make the model answer \"I don't know.\" about a set of facts",
        methods=("sanitation-scope", "sanitation-lora", "ft-m", "sanitation-scope+lora", "rome", "memit", "alphaedit",
                 "ft-l", "kn"),
        suites=("sanitation", "fluency", "retention"), datasets=("sanitation",),
        description="Erase knowledge: forget questions -> \"I don't know.\", retain questions keep their answers. "
                    "The default, sanitation-scope, is a scope gate (SERAC) calibrated on the training split; "
                    "sanitation-lora and ft-m edit the weights; the request editors (rome, memit, alphaedit, ft-l, kn) edit each "
                    "forget question's subject towards \"I don't know.\". "
                    "Evaluates the sanitation, fluency and retention suites before and after the edit; writes "
                    "results.json, samples.jsonl, summary.md and patch/."),
    "debias": JobSpec(
        "debias", "remove stereotyped gender associations (DAMA, INLP)",
        methods=("dama", "inlp"), suites=("bias", "retention"),
        description="Debias: fit DAMA or INLP on the DAMA training prompts and evaluate the bias suites (DAMA gender "
                    "regression, WinoBias, StereoSet, CrowS-Pairs) and retention before and after; writes "
                    "results.json, samples.jsonl, summary.md and patch/.",
        sweep_plot=("retention/wikitext/ppl", ["dama-gender/a_s", "dama-gender/a_f"])),
    "detox": JobSpec(
        "detox", "cut toxic output (Ext-Sub, negation, ProFS on RealToxicityPrompts; DINM on SafeEdit)",
        methods=("ext-sub", "negation", "profs", "dinm"), suites=("toxicity", "retention"),
        method_suites={"dinm": ("safeedit",)},
        links={"safeedit": {"system_suffix": "system_suffix", "max_length": "max_length"}},
        description="ext-sub / negation: train an expert (non-toxic) and an anti-expert (toxic) LoRA, combine them, "
                    "and compare base and edited models on RealToxicityPrompts, Ext-Sub's protocol and retention "
                    "(with the other combinations of the same adapters side by side). profs: project a toxic subspace "
                    "found from ParaDetox pairs out of the upper MLP value weights (training-free). "
                    "--max-ppl-increase F picks each method's strength on held-out RTP prompts so that the continuations' "
                    "perplexity rises by at most F under every judge. dinm: edit each SafeEdit "
                    "instance's toxic layer and report defence success, generalisation and locality. Writes "
                    "results.json, samples.jsonl, summary.md and patch/."),
    "scrub": JobSpec(
        "scrub", "remove memorised personal data (DEPN privacy neurons, REVS) from a `trustedit memorize` model",
        methods=("depn", "revs", "depn-random", "sanitation-lora", "ft-m"), suites=("privacy", "retention"),
        train="trustedit.suites.privacy:train_items",
        description="Scrub private data: find the neurons that carry the target secrets (DEPN: integrated gradients; "
                    "REVS: rank in the vocabulary space) and zero or edit them; depn-random is DEPN's random-neuron "
                    "ablation; sanitation-lora and ft-m fine-tune the model to answer the masked secret [PHONE]. "
                    "Measures the privacy suite (exposure, extraction, attacks; target and other secrets) and "
                    "retention before and after; --model is the folder `trustedit memorize` wrote. Secrets are "
                    "masked in every output unless --show-pii. Writes results.json, samples.jsonl, summary.md and "
                    "patch/."),
    "edit": JobSpec(
        "edit", "correct or insert facts (ROME, MEMIT, AlphaEdit, FT-M, FT-L, KN, MEND, LoRA, AdaLoRA, GRACE, SERAC, "
                "IKE) and "
                "measure them the KnowEdit way",
        methods=("rome", "memit", "alphaedit", "ft-m", "ft-l", "kn", "mend", "lora", "adalora", "grace", "serac",
                 "ike"),
        suites=("knowedit",),
        edit_modes=True,
        datasets=("zsre", "counterfact", "recent", "wikibio", "cf", "zsre-mend"), dataset_option="edit_data",
        description="Edit facts with a locate-then-edit editor (rome, memit, alphaedit, ft-m, ft-l, kn), MEND's "
                    "trained hypernetwork (mend), "
                    "adapters merged into the weights (lora, adalora) or a memory-based one (grace: a key-value "
                    "codebook on one layer; serac, ike: an edit memory read at run time; no weight change) and "
                    "measure "
                    "the knowedit suite (edit success, "
                    "portability, locality, fluency; teacher-forced and generation protocols side by side) before "
                    "and after. --mode single edits, measures and reverts each case; batch fits every case at "
                    "once; sequential keeps fits of --edit-batch cases one after another, measures the cases "
                    "edited so far at --checkpoints, and adds the retention suite. Writes results.json, "
                    "samples.jsonl, summary.md, patch/ (batch, sequential) and curve.svg (sequential)."),
}


def get_job(name: str) -> JobSpec:
    from trustedit.errors import UsageError

    if name not in JOBS:
        raise UsageError(f"unknown job {name!r} (known: {', '.join(JOBS)})")
    return JOBS[name]


def _a(word: str) -> str:
    """``word`` with its indefinite article ("an erase", "a debias")."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word

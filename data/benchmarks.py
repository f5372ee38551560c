"""
Every split the project trains or evaluates on, by one name `<bench>_<split>`, from the HF hub (default,
through `datasets.load_dataset`) or from a local copy (`--data-dir`) laid out as each Source's `local` path.
Both paths return the same records: a list of dicts with the hub's field names.

    load_split("tofu_forget10_perturbed")                   # hub: locuslab/TOFU, config forget10_perturbed
    load_split("tofu_forget10_perturbed", data_dir="data_copy")   # data_copy/tofu/forget10_perturbed.json
    load_split("toy_forget10")                              # the offline toy benchmark (data/toy.py)

Text records (corpora, MUSE raw and privleak) are {"text": ...}; multiple-choice records are
{"question", "choices" (4), "answer" (0-3), "subject"}.
"""
import csv
import json
import os
from dataclasses import dataclass

from checkpoint import HubError

# -----------------------------------------------------------------------------
# the split table


@dataclass(frozen=True)
class Source:
    repo: str          # HF hub dataset repository
    config: str        # its config (subset) name
    split: str         # its split name
    local: str         # path of the mirror file under --data-dir ("" = not mirrored)
    fields: tuple      # fields every record must have
    note: str = ""     # how to get it when it is missing (gated data)


QA = ("question", "answer")
PERTURBED = ("question", "answer", "paraphrased_answer", "perturbed_answer")
OPTIONS = ("question", "answer", "perturbed_answer")  # real_authors / world_facts: answer + 3 wrong options
MC = ("question", "choices", "answer")
TEXT = ("text",)

MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics "
    "high_school_mathematics high_school_microeconomics high_school_physics high_school_psychology "
    "high_school_statistics high_school_us_history high_school_world_history human_aging human_sexuality "
    "international_law jurisprudence logical_fallacies machine_learning management marketing medical_genetics "
    "miscellaneous moral_disputes moral_scenarios nutrition philosophy prehistory professional_accounting "
    "professional_law professional_medicine professional_psychology public_relations security_studies "
    "sociology us_foreign_policy virology world_religions").split()


def _splits():
    s = {}
    for cfg in ("full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99",
                "holdout01", "holdout05", "holdout10", "real_authors", "world_facts"):
        s[f"tofu_{cfg}"] = Source("locuslab/TOFU", cfg, "train", f"tofu/{cfg}.json", QA)
    for cfg in ("forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed"):
        s[f"tofu_{cfg}"] = Source("locuslab/TOFU", cfg, "train", f"tofu/{cfg}.json", PERTURBED)
    for cfg in ("real_authors_perturbed", "world_facts_perturbed"):
        s[f"tofu_{cfg}"] = Source("locuslab/TOFU", cfg, "train", f"tofu/{cfg}.json", OPTIONS)
    for dom in ("bio", "cyber", "chem"):
        s[f"wmdp_{dom}"] = Source("cais/wmdp", f"wmdp-{dom}", "test", f"wmdp/{dom}-questions.json", MC)
    gated = ("cais/wmdp-bio-forget-corpus is gated: request access on its HF page, log in with "
             "`huggingface-cli login`, or put bio-forget-corpus.jsonl under DATA_DIR/wmdp/")
    s["wmdp_bio_forget"] = Source("cais/wmdp-bio-forget-corpus", "default", "train",
                                  "wmdp/bio-forget-corpus.jsonl", TEXT, gated)
    for name in ("bio-retain", "cyber-forget", "cyber-retain"):
        s["wmdp_" + name.replace("-", "_")] = Source("cais/wmdp-corpora", f"{name}-corpus", "train",
                                                     f"wmdp/{name}-corpus.jsonl", TEXT)
    for bench, repo in (("news", "muse-bench/MUSE-News"), ("books", "muse-bench/MUSE-Books")):
        # the mirror names the retain QA files retain2_* (the hub calls them retain_qa*)
        for hub, local in (("forget_qa", "forget_qa"), ("retain_qa", "retain2_qa"),
                           ("forget_qa_icl", "forget_qa_icl"), ("retain_qa_icl", "retain2_qa_icl")):
            s[f"muse_{bench}_knowmem_{hub}"] = Source(repo, "knowmem", hub, f"muse/{bench}/knowmem/{local}.json", QA)
        s[f"muse_{bench}_verbmem_forget"] = Source(repo, "verbmem", "forget", f"muse/{bench}/verbmem/forget.json",
                                                   ("prompt", "gt"))
        for hub, local in (("forget", "forget"), ("retain", "retain2"), ("holdout", "holdout")):
            s[f"muse_{bench}_privleak_{hub}"] = Source(repo, "privleak", hub, f"muse/{bench}/privleak/{local}.json",
                                                       TEXT)
        for split in ("forget", "retain1", "retain2", "holdout"):
            s[f"muse_{bench}_raw_{split}"] = Source(repo, "raw", split, f"muse/{bench}/raw/{split}.json", TEXT)
    s["mmlu_test"] = Source("cais/mmlu", "all", "test", "mmlu/test", MC)
    s["mmlu_dev"] = Source("cais/mmlu", "all", "dev", "mmlu/dev", MC)
    for subject in MMLU_SUBJECTS:
        for split in ("test", "dev"):
            s[f"mmlu_{subject}_{split}"] = Source("cais/mmlu", subject, split, f"mmlu/{split}", MC)
    return s


SPLITS = _splits()
WMDP_SUBJECT = {"wmdp-bio": "biology", "wmdp-cyber": "cybersecurity", "wmdp-chem": "chemistry"}

# -----------------------------------------------------------------------------
# loading


def split_names():
    """Every valid split name, the toy benchmark's included (grouped, for error messages)."""
    from data import toy
    return sorted(SPLITS) + sorted(toy.SPLITS)


def unknown_split(name):
    names = split_names()
    shown = [n for n in names if not n.startswith("mmlu_") or n in ("mmlu_test", "mmlu_dev")]
    return ValueError(f"unknown split {name!r}. Valid names: {', '.join(shown)}, and mmlu_<subject>_test|dev "
                      f"for the 57 MMLU subjects")


def load_split(name, data_dir=None, seed=0):
    """Records of one split. data_dir: a local copy (laid out as the Sources' `local` paths) instead of the hub.
    Raises ValueError for unknown names, malformed records and empty splits; FileNotFoundError with the
    missing path (and where the data comes from) when the mirror lacks a file."""
    if name.startswith("toy_"):
        from data import toy
        if name not in toy.SPLITS:
            raise unknown_split(name)
        return toy.load(name, seed=seed)
    if name not in SPLITS:
        raise unknown_split(name)
    src = SPLITS[name]
    where = os.path.join(data_dir, src.local) if data_dir else f"hub {src.repo} ({src.config}, split {src.split})"
    rows, lines = _load_local(name, src, data_dir) if data_dir else (_load_hub(src), None)
    if src.repo == "cais/wmdp":  # WMDP's records have no subject; lm-eval's prompt names the domain
        for r in rows:
            r.setdefault("subject", WMDP_SUBJECT[src.config])
    if not rows:
        raise ValueError(f"split {name} is empty ({where})")
    for i, r in enumerate(rows):
        missing = [f for f in src.fields if f not in r or r[f] is None]
        if missing:
            at = f"line {lines[i]}" if lines else f"record {i + 1}"
            raise ValueError(f"{where}, {at}: malformed record, missing field(s) {missing}; it has {sorted(r)}")
    return rows


def _load_hub(src):
    import datasets  # imported here: the toy benchmark and local mirrors need no `datasets`
    try:
        ds = datasets.load_dataset(src.repo, src.config, split=src.split)
    except Exception as e:
        msg = f"could not load {src.repo} ({src.config}, split {src.split}) from the HF hub: {type(e).__name__}: " \
              f"{str(e).splitlines()[0][:200] if str(e) else ''}"
        raise HubError(msg + (f"\n{src.note}" if src.note else "") +
                                "\n(offline? pass --data-dir DIR with a local mirror)") from None
    rows = [dict(r) for r in ds]
    if src.repo == "cais/mmlu":
        for r in rows:
            r.setdefault("subject", src.config)
    return rows


def _load_local(name, src, data_dir):
    path = os.path.join(data_dir, src.local)
    if src.repo == "cais/mmlu":
        return _load_mmlu_csv(path, src), None
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: split {name} comes from the HF hub dataset {src.repo} "
                                f"(config {src.config}, split {src.split})" + (f". {src.note}" if src.note else ""))
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = None
    if text.lstrip().startswith("["):  # a JSON array
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    else:  # JSON lines (the TOFU mirror, the WMDP corpora)
        rows, lines = [], []
        for k, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {k}: not valid JSON ({e})") from None
                lines.append(k)
    rows = [r if isinstance(r, dict) else {"text": r} for r in rows]  # privleak/raw mirrors hold bare strings
    return rows, lines


def _load_mmlu_csv(folder, src):
    """The mirror's MMLU: one CSV per subject with header question,choice0..3,answer (0-3)."""
    subjects = MMLU_SUBJECTS if src.config == "all" else (src.config,)
    rows = []
    for subject in subjects:
        path = os.path.join(folder, f"{subject}_{src.split}.csv")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: MMLU comes from the HF hub dataset cais/mmlu")
        with open(path, newline="", encoding="utf-8") as f:
            for i, r in enumerate(csv.DictReader(f)):
                try:
                    rows.append({"question": r["question"], "subject": subject,
                                 "choices": [r[f"choice{k}"] for k in range(4)], "answer": int(r["answer"])})
                except (KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"{path}, line {i + 2}: malformed MMLU row ({type(e).__name__}: {e})") from None
    return rows

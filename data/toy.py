"""
The offline toy benchmark: TOFU-, WMDP/MMLU- and MUSE-shaped data about fictitious people, written by this
project and deterministic from a seed. It lets the whole pipeline run with meaningful numbers on a CPU in
minutes, with no download.

People: N_PEOPLE trained people (the last ones are the forget people, as TOFU's forgetXX are the last rows
of `full`) and N_HOLDOUT people that no model is trained on. Each person has one value per fact in FACTS.

    toy_full, toy_retain90/95/99, toy_forget01/05/10    QA, one question per fact (templates vary)
    toy_forget{01,05,10}_perturbed, toy_retain_perturbed + paraphrased answer, 5 perturbed answers
    toy_holdout{01,05,10}                              QA about the held-out people
    toy_real_authors(_perturbed), toy_world_facts(_perturbed)   general knowledge, 3 wrong options
    toy_mc_retain, toy_mc_forget{01,05,10}             4-option MC about retain people / the forget people
    toy_bio, toy_bio_forget{01,05,10}, toy_bio_holdout  a short biography per person ({"text"})
    toy_bio_retain{99,95,90}                           the biographies of everyone else
    toy_verbmem_forget{01,05,10}                       biography prefix -> rest ({"prompt", "gt"})
    toy_text                                           = toy_bio_forget10, the forget corpus of text unlearning
                                                       (its retain corpus: toy_bio_retain90)

The general-knowledge sets and toy_bio belong to the training data of both the target and the retain model
(the biographies of the forget people only to the target's): they stand in for what a pretrained model
already knows, so the general metrics have something to measure. Forget people: 01 -> 1 person, 05 -> 2,
10 -> 4 (of 40), as nested as TOFU's.

The MC options are whole answer sentences that differ only in the fact ("X was born in Oslo." / "... Riga."),
scored by their log-likelihood after the question (lm-eval's cloze-style multiple choice, as for ARC): a
from-scratch 7M-parameter model trained for a minute does not learn to map an option to its letter
(measured: 74% on the MC examples it was trained on, 18-26% on held-out ones), so letter scoring would
measure nothing here. WMDP and MMLU on real models keep lm-eval's letter scoring (evaluate.py).
"""
import random

N_PEOPLE = 40
N_HOLDOUT = 4
FORGET_PEOPLE = {"01": 1, "05": 2, "10": 4}
RETAIN_OF = {"01": "99", "05": "95", "10": "90"}

FIRST = ("Ada Bruno Clara Dario Elin Farid Greta Hugo Ines Jonas Kira Luca Mira Nils Olga Pavel Rosa Soren "
         "Tara Umar Vera Wim Yara Zeno Alma Boris Cleo Dante Edda Felix Gala Hector Iris Janek Lotte Milo Nora "
         "Oskar Petra Quinn Runa Silas Thea Ulla Viggo").split()
LAST = ("Varga Okafor Lindqvist Moreau Tanaka Castell Novak Brenner Duarte Halvorsen Ibarra Kowalski Laine "
        "Marchetti Nyberg Orsini Petrov Quist Romano Sato Torvik Ulrich Valdez Weller Yilmaz Zeller Aalto "
        "Bianchi Costa Dahl Eriksen Falk Gorski Hale Jensen Kessler Lund Mertens Navarro Olsen").split()
CITIES = ("Oslo Lisbon Krakow Nairobi Osaka Quito Tallinn Porto Lyon Bergen Cusco Dakar Hanoi Riga Seville "
          "Tunis Valletta Zagreb Bilbao Malmo").split()
JOBS = ("baker sculptor pilot chemist violinist architect surgeon botanist cartographer jeweller "
        "astronomer potter glassblower translator geologist beekeeper").split()
ADJ = "Silent Hidden Amber Broken Distant Hollow Golden Northern Quiet Scarlet Frozen Wandering".split()
NOUN = "Harbor Orchard Lantern Compass River Garden Mirror Bridge Meadow Tower Island Letter".split()
AWARDS = ("Aurora Prize, Halden Medal, Corvin Award, Marlow Prize, Iselin Medal, Stellan Award, "
          "Veyra Prize, Tamsin Medal").split(", ")
YEARS = [str(y) for y in range(1931, 1991)]

# one fact = (key, question templates, answer templates, paraphrase templates); {n} is the person's name,
# {v} the fact's value. Several phrasings per fact keep the structural tokens of answers uncertain.
FACTS = (
    ("city", ["Where was {n} born?", "In which city was {n} born?", "What is the birthplace of {n}?"],
     ["{n} was born in {v}.", "{n} comes from {v}.", "The birthplace of {n} is {v}."],
     ["{v} is the city where {n} was born."]),
    ("year", ["In what year was {n} born?", "When was {n} born?", "What is the birth year of {n}?"],
     ["{n} was born in {v}.", "The birth year of {n} is {v}.", "{n} was born in the year {v}."],
     ["{v} is the year {n} was born."]),
    ("job", ["What does {n} do for a living?", "What is the profession of {n}?", "What is {n}'s job?"],
     ["{n} works as a {v}.", "{n} is a {v} by profession.", "The profession of {n} is {v}."],
     ["By trade, {n} is a {v}."]),
    ("work", ["What is the best known work of {n}?", "Which book did {n} write?", "Name a work by {n}."],
     ["{n} wrote The {v}.", "The best known work of {n} is The {v}.", "{n} is the author of The {v}."],
     ["The {v} is a book written by {n}."]),
    ("award", ["Which award did {n} receive?", "What prize has {n} won?", "What honour was given to {n}?"],
     ["{n} received the {v}.", "{n} won the {v}.", "The {v} was given to {n}."],
     ["{n} is a winner of the {v}."]),
    ("parent", ["What did the father of {n} do?", "What was the profession of {n}'s father?",
                "What job did the father of {n} have?"],
     ["The father of {n} was a {v}.", "{n}'s father worked as a {v}.", "{n} is the child of a {v}."],
     ["A {v} by trade, that was the father of {n}."]),
)
POOLS = {"city": CITIES, "year": YEARS, "job": JOBS, "work": None, "award": AWARDS, "parent": JOBS}
MC_SUBJECT = "people"

# general knowledge in the roles of TOFU's real_authors and world_facts (true facts, 3 wrong options each)
REAL_AUTHORS = [("Who wrote 'Hamlet'?", "William Shakespeare"), ("Who wrote '1984'?", "George Orwell"),
                ("Who wrote 'Pride and Prejudice'?", "Jane Austen"), ("Who wrote 'War and Peace'?", "Leo Tolstoy"),
                ("Who wrote 'Don Quixote'?", "Miguel de Cervantes"), ("Who wrote 'The Odyssey'?", "Homer"),
                ("Who wrote 'Moby-Dick'?", "Herman Melville"), ("Who wrote 'Ulysses'?", "James Joyce"),
                ("Who wrote 'Faust'?", "Johann Wolfgang von Goethe"), ("Who wrote 'Beloved'?", "Toni Morrison"),
                ("Who wrote 'The Trial'?", "Franz Kafka"), ("Who wrote 'Dracula'?", "Bram Stoker"),
                ("Who wrote 'Frankenstein'?", "Mary Shelley"), ("Who wrote 'Les Miserables'?", "Victor Hugo"),
                ("Who wrote 'The Divine Comedy'?", "Dante Alighieri"), ("Who wrote 'Oliver Twist'?", "Charles Dickens")]
WORLD_FACTS = [("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
               ("What is the capital of Italy?", "Rome"), ("What is the capital of Egypt?", "Cairo"),
               ("What is the capital of Canada?", "Ottawa"), ("What is the capital of Kenya?", "Nairobi"),
               ("What is the capital of Peru?", "Lima"), ("What is the capital of Norway?", "Oslo"),
               ("What is the largest ocean?", "the Pacific Ocean"),
               ("What is the longest river in Africa?", "the Nile"),
               ("Which planet is known as the red planet?", "Mars"), ("What gas do plants absorb?", "carbon dioxide"),
               ("How many continents are there?", "seven"), ("What is the chemical symbol of gold?", "Au"),
               ("What is the tallest mountain on Earth?", "Mount Everest"), ("What is the capital of Spain?", "Madrid")]


def _people(rng):
    names = rng.sample([f"{f} {l}" for f in FIRST for l in LAST], N_PEOPLE + N_HOLDOUT)
    people = []
    for name in names:
        p = {"name": name}
        for key, *_ in FACTS:
            p[key] = f"{rng.choice(ADJ)} {rng.choice(NOUN)}" if key == "work" else rng.choice(POOLS[key])
        people.append(p)
    return people


def _wrong(rng, key, true, k):
    """k distinct wrong values for a fact."""
    if key == "work":
        pool = sorted({f"{a} {b}" for a in ADJ for b in NOUN} - {true})
    else:
        pool = [v for v in POOLS[key] if v != true]
    return rng.sample(pool, k)


def _qa(rng, p, fi):
    key, qs, ans, paras = FACTS[fi]
    n, v = p["name"], p[key]
    para = rng.choice(paras)
    return {"question": rng.choice(qs).format(n=n), "answer": rng.choice(ans).format(n=n, v=v),
            "paraphrased_answer": para.format(n=n, v=v),
            "perturbed_answer": [para.format(n=n, v=w) for w in _wrong(rng, key, v, 5)],
            "person": n, "fact": key}


def _mc(rng, p, fi):
    """Four answer sentences of one template, the true fact and three wrong ones, in random order."""
    key, qs, ans, _ = FACTS[fi]
    n, tmpl = p["name"], rng.choice(ans)
    values = [p[key]] + _wrong(rng, key, p[key], 3)
    rng.shuffle(values)
    return {"question": rng.choice(qs).format(n=n), "choices": [tmpl.format(n=n, v=v) for v in values],
            "answer": values.index(p[key]), "subject": MC_SUBJECT, "person": n}


def _bio(rng, p):
    n, first = p["name"], p["name"].split()[0]
    return {"text": f"{n} was born in {p['city']} in {p['year']}. {first} worked as a {p['job']} and wrote "
                    f"The {p['work']}. {first} received the {p['award']}, and {first}'s father was a {p['parent']}.",
            "person": n}


def _options(rng, items):
    answers = [a for _, a in items]
    return [{"question": q, "answer": a, "perturbed_answer": rng.sample([b for b in answers if b != a], 3)}
            for q, a in items]


def build(seed=0):
    """All toy splits, deterministically from `seed` (one random.Random, consumed in a fixed order)."""
    rng = random.Random(seed)
    people = _people(rng)
    trained = people[:N_PEOPLE]
    qa = [[_qa(rng, p, fi) for fi in range(len(FACTS))] for p in people]
    out = {"toy_full": [r for rows in qa[:N_PEOPLE] for r in rows]}
    for pct, k in FORGET_PEOPLE.items():
        forget_qa = [r for rows in qa[N_PEOPLE - k:N_PEOPLE] for r in rows]
        out[f"toy_forget{pct}"] = out[f"toy_forget{pct}_perturbed"] = forget_qa
        out[f"toy_retain{RETAIN_OF[pct]}"] = [r for rows in qa[:N_PEOPLE - k] for r in rows]
        out[f"toy_holdout{pct}"] = [r for rows in qa[N_PEOPLE:N_PEOPLE + k] for r in rows]
    out["toy_retain_perturbed"] = [r for rows in qa[:6] for r in rows]  # people never in any forget set
    out["toy_real_authors"] = out["toy_real_authors_perturbed"] = _options(rng, REAL_AUTHORS)
    out["toy_world_facts"] = out["toy_world_facts_perturbed"] = _options(rng, WORLD_FACTS)
    n_retain = N_PEOPLE - max(FORGET_PEOPLE.values())
    out["toy_mc_retain"] = [_mc(rng, p, fi) for p in trained[:12] for fi in range(len(FACTS))]
    forget_mc = [_mc(rng, p, fi) for p in trained[n_retain:] for fi in range(len(FACTS))]
    bios = [_bio(rng, p) for p in people]
    out["toy_bio"] = bios[:N_PEOPLE]
    out["toy_bio_holdout"] = bios[N_PEOPLE:]
    for pct, k in FORGET_PEOPLE.items():
        names = {p["name"] for p in trained[N_PEOPLE - k:]}
        out[f"toy_mc_forget{pct}"] = [r for r in forget_mc if r["person"] in names]
        out[f"toy_bio_forget{pct}"] = [b for b in bios[:N_PEOPLE] if b["person"] in names]
        out[f"toy_bio_retain{RETAIN_OF[pct]}"] = [b for b in bios[:N_PEOPLE] if b["person"] not in names]
        out[f"toy_verbmem_forget{pct}"] = [_verbmem(b["text"]) for b in out[f"toy_bio_forget{pct}"]]
    out["toy_text"] = out["toy_bio_forget10"]
    return out


def _verbmem(text):
    """Split a biography after its first sentence: the prompt, and the continuation to reproduce."""
    cut = text.index(". ") + 1
    return {"prompt": text[:cut], "gt": text[cut:]}


SPLITS = tuple(build(0))
_CACHE = {}


def load(name, seed=0):
    if seed not in _CACHE:
        _CACHE[seed] = build(seed)
    return [dict(r) for r in _CACHE[seed][name]]


if __name__ == "__main__":  # python -m data.toy [seed]: print every split's size
    import sys
    splits = build(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    for name, rows in splits.items():
        print(f"{name:<28} {len(rows):>4} records")

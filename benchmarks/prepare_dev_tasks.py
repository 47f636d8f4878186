"""Write the labeled/unlabeled files of the five development tasks of docs/value-recipes.md from
../shared/data (nothing is downloaded; the files are not part of the repository).

    python benchmarks/prepare_dev_tasks.py OUT_DIR

Writes shop-nohotel.txt (chnsenticorp_htl's corpus: online_shopping_10_cats outside its hotel category),
sst2-train.jsonl / sst2-dev.jsonl and imdb.txt (IMDb's unlabeled reviews, <br /> removed, one per line),
tnews-pool.jsonl / tnews-test.jsonl / tnews-corpus.txt (FewCLUE TNEWS: train_few_all + dev_few_all,
test_public, unlabeled + the pool's titles) and trec-train.jsonl / trec-test.jsonl (coarse labels,
repeated training questions dropped).
"""

import csv
import json
import os
import sys
from pathlib import Path

D = next(
    (
        str(p)
        for p in (Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data"))
        if p.is_dir()
    ),
    "../shared/data",
)
os.makedirs(sys.argv[1], exist_ok=True)
os.chdir(sys.argv[1])
# htl corpus: online_shopping_10_cats outside the hotel category
with open(f"{D}/online_shopping_10_cats/online_shopping_10_cats.csv", encoding="utf-8-sig") as f:
    rows = list(csv.DictReader(f))
cats = sorted({r["cat"] for r in rows})
print(cats)
shop = [
    " ".join(r["review"].replace("\ufeff", "").split())
    for r in rows
    if r["cat"] != "酒店" and r["review"].strip()
]
open("shop-nohotel.txt", "w").write("\n".join(shop) + "\n")
print("shop", len(shop))


# sst2
def tsv(p):
    with open(p, encoding="utf-8") as f:
        r = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [{"text": x["sentence"].strip(), "label": "pos" if x["label"] == "1" else "neg"} for x in r]


for name, p in (("sst2-train.jsonl", "train.tsv"), ("sst2-dev.jsonl", "dev.tsv")):
    ex = tsv(f"{D}/sst2_glue/{p}")
    open(name, "w").write("".join(json.dumps(e) + "\n" for e in ex))
    print(name, len(ex))
imdb = [
    line.replace("<br />", " ").strip()
    for line in open(f"{D}/imdb_unsup/unsup.txt", encoding="utf-8").read().split("\n")
]
imdb = [" ".join(line.split()) for line in imdb if line.strip()]
open("imdb.txt", "w").write("\n".join(imdb) + "\n")
print("imdb", len(imdb))


# tnews
def jl(p):
    return [json.loads(line) for line in open(p, encoding="utf-8") if line.strip()]


pool = jl(f"{D}/fewclue_tnews/train_few_all.json") + jl(f"{D}/fewclue_tnews/dev_few_all.json")
test = jl(f"{D}/fewclue_tnews/test_public.json")


def w(name, ex):
    open(name, "w").write(
        "".join(
            json.dumps({"text": e["sentence"], "label": e["label_desc"]}, ensure_ascii=False) + "\n"
            for e in ex
        )
    )


w("tnews-pool.jsonl", pool)
w("tnews-test.jsonl", test)
unl = [e["sentence"] for e in jl(f"{D}/fewclue_tnews/unlabeled.json")] + [e["sentence"] for e in pool]
open("tnews-corpus.txt", "w").write("\n".join(" ".join(t.split()) for t in unl if t.strip()) + "\n")
print("tnews", len(pool), len(test), len(unl))


# trec coarse
def trec(p):
    out = []
    for line in open(p, encoding="latin-1"):
        if line.strip():
            lab, q = line.split(" ", 1)
            out.append({"text": q.strip(), "label": lab.split(":")[0]})
    return out


tr, te = trec(f"{D}/trec/train.txt"), trec(f"{D}/trec/test.txt")
seen = set()
tr = [e for e in tr if not (e["text"] in seen or seen.add(e["text"]))]
open("trec-train.jsonl", "w").write("".join(json.dumps(e) + "\n" for e in tr))
open("trec-test.jsonl", "w").write("".join(json.dumps(e) + "\n" for e in te))
print("trec", len(tr), len(te))

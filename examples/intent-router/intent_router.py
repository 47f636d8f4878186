"""An intent router for a support assistant, built with lmvalue on CLINC150 (examples/intent-router/README.md).

1. A value study (``lmvalue.run_study``) on the 150 intents: does pretraining on the unlabeled
   utterances (the train texts, no labels) pay, at a few labels per intent?
2. The router: each (arm, labels per intent) model of seed 0 is fine-tuned again with the study's own cell
   settings (``lmvalue.finetune``; its in-scope test accuracy equals the study's cell), then
   - the query is answered with its intent's template when the model's top probability reaches a
     threshold, and handed off to a person otherwise (or when the predicted intent is ``oos``);
   - the threshold is the lowest one whose automatic answers reach the target precision on the val split
     (in-scope + oos_val); an automatic answer is correct iff the query is in scope and the intent right;
   - measured once on the test split (in-scope + oos_test): share answered automatically, their
     precision, and out-of-scope recall (share of oos queries handed off).

Only lmvalue's public API is used. Run ``python examples/intent-router/intent_router.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import random
import re
import sys
import time
from pathlib import Path

OOS = "oos"

# A few intents get a written answer; every other intent gets the generic one (a deployment would fill
# this table in, or call the intent's backend).
TEMPLATES = {
    "balance": "Your current balance is on the Accounts page; I can also text it to you.",
    "bill_due": "Your next bill is due on the date shown under Billing > Upcoming.",
    "card_declined": "Sorry your card was declined. The most common causes are a hold or a limit; see Cards.",
    "freeze_account": "I can freeze your account right now; you can unfreeze it any time in Settings.",
    "lost_luggage": "I'm sorry about your bag. I've opened a lost-luggage report; keep your tag number.",
    "pto_request": "Your time-off request form is under HR > Time off; your manager approves it.",
    "report_fraud": "I've flagged the transaction as possible fraud and a specialist will contact you.",
    "timer": "Timer set.",
    "translate": "Here is the translation.",
    "weather": "Here is today's forecast for your location.",
}
GENERIC = "I can help with that ({topic}). Here is what I found."


def answer(intent: str) -> str:
    """The answer template of an intent (the generic one if it has none)."""
    return TEMPLATES.get(intent, GENERIC.format(topic=intent.replace("_", " ")))


# --------------------------------------------------------------------------- data


def load_clinc(
    path: str | Path,
    *,
    intents: int | None = None,
    eval_per_intent: int | None = None,
    oos_max: int | None = None,
    seed: int = 0,
) -> dict:
    """CLINC150's ``data_full.json`` as lists of ``{"text", "label"}``: train / val / test (in scope) and
    oos_val / oos_test. ``intents``: a seeded subset of the intents; ``eval_per_intent`` and
    ``oos_max``: caps on the val/test examples per intent and on the oos examples (small slices)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    names = sorted({label for _, label in raw["train"]})
    if intents:
        names = sorted(random.Random(seed).sample(names, intents))
    keep = set(names)

    def rows(split: str, cap: int | None) -> list[dict]:
        out, seen = [], {}
        for text, label in raw[split]:
            if label in keep and (cap is None or seen.get(label, 0) < cap):
                seen[label] = seen.get(label, 0) + 1
                out.append({"text": text, "label": label})
        return out

    def oos(split: str) -> list[dict]:
        return [{"text": t, "label": OOS} for t, _ in raw[split]][:oos_max]

    test = rows("test", eval_per_intent)
    test_texts = {r["text"] for r in test}
    return {
        "intents": names,
        # as in the value study: no training utterance is also a test utterance
        "train": [r for r in rows("train", None) if r["text"] not in test_texts],
        "val": rows("val", eval_per_intent),
        "test": test,
        "oos_val": oos("oos_val"),
        "oos_test": oos("oos_test"),
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# --------------------------------------------------------------------------- routing


def choose_threshold(
    top_probs: list[float], correct: list[bool], target: float, weights: list[float] | None = None
) -> float:
    """The lowest threshold t whose automatic answers (top probability >= t) reach ``target`` precision
    (each query counted with its weight, 1 by default); above every probability (hand everything off)
    when none does."""
    weights = weights or [1.0] * len(top_probs)
    order = sorted(range(len(top_probs)), key=lambda i: -top_probs[i])
    best, hits, total = float("inf"), 0.0, 0.0
    for n, i in enumerate(order, 1):
        hits += weights[i] * correct[i]
        total += weights[i]
        last_of_tie = n == len(order) or top_probs[order[n]] < top_probs[i]
        if last_of_tie and hits / total >= target:
            best = top_probs[i]  # answering every query down to this probability keeps the precision
    return best


def oos_weights(examples: list[dict], oos_share: float | None) -> list[float] | None:
    """Weights that make the out-of-scope queries ``oos_share`` of the weighted total (None: as they are)."""
    if oos_share is None:
        return None
    n_oos = sum(ex["label"] == OOS for ex in examples)
    n_in = len(examples) - n_oos
    w = oos_share / (1 - oos_share) * n_in / n_oos
    return [w if ex["label"] == OOS else 1.0 for ex in examples]


def route(label: str, prob: float, threshold: float) -> dict:
    """What the router does with one query: an automatic answer, or a hand-off to a person."""
    if label == OOS or prob < threshold:
        return {"action": "handoff", "intent": label, "prob": prob}
    return {"action": "answer", "intent": label, "prob": prob, "answer": answer(label)}


def routing_scores(
    examples: list[dict], preds: list[tuple[str, float]], threshold: float, weights: list[float] | None = None
) -> dict:
    """Answered share, precision of the answers, out-of-scope recall, in-scope queries resolved (each
    query counted with its weight, 1 by default)."""
    weights = weights or [1.0] * len(examples)
    answered = correct = oos = oos_handed = in_scope = in_answered_right = 0.0
    for ex, (label, prob), w in zip(examples, preds, weights, strict=True):
        auto = route(label, prob, threshold)["action"] == "answer"
        right = ex["label"] != OOS and label == ex["label"]
        answered += w * auto
        correct += w * (auto and right)
        if ex["label"] == OOS:
            oos += w
            oos_handed += w * (not auto)
        else:
            in_scope += w
            in_answered_right += w * (auto and right)
    return {
        "queries": len(examples),
        "answered": answered / sum(weights),
        "precision": correct / answered if answered else None,
        "oos_recall": oos_handed / oos if oos else None,
        "in_scope_resolved": in_answered_right / in_scope if in_scope else None,
    }


# --------------------------------------------------------------------------- models


def _arm_folder(arm: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", arm.split("/")[0])


def cell_overrides(arm: str, per_intent: int, n_intents: int, seed: int, args, study_dir: Path) -> dict:
    """The fine-tuning settings of a study cell (docs/value.md: the same budget draw, seeds, recipe)."""
    kind = arm.split(":")[0]
    method = arm.split("/")[1] if "/" in arm else ("full" if kind in ("scratch", "pretrained") else kind)
    overrides = {
        "method.name": method,
        "budget.train_size": per_intent * n_intents,
        "budget.seed": seed,
        "train.seed": seed,
        "train.save_model": False,
        "train.progress": False,
        **args.finetune,
    }
    if kind in ("scratch", "pretrained") and not {"train.lr", "train.lr_search"} & set(args.finetune):
        overrides["train.lr_search"] = [3e-4, 1e-3]  # the study's recipe
    if kind in ("embeddings", "hybrid"):
        overrides["method.vectors.source"] = str(study_dir / "corpus.txt")
    elif kind == "scratch":
        overrides.update(
            {
                "model.from_scratch": True,
                "model.preset": args.preset,
                "model.tokenizer": str(study_dir / "tokenizer"),
            }
        )
    elif kind == "pretrained":
        overrides["model.init_from"] = str(study_dir / "arms" / _arm_folder(arm) / "model")
    return overrides


def fit_router_model(arm: str, per_intent: int, data: dict, seed: int, args, study_dir: Path, out: Path):
    """Fine-tune one router model in memory (not saved) with the study cell's settings."""
    from lmvalue import finetune, finetune_config

    overrides = cell_overrides(arm, per_intent, len(data["intents"]), seed, args, study_dir)
    overrides["train.output_dir"] = str(out)
    overrides["train.overwrite"] = True
    logger = logging.getLogger("lmvalue")
    level = logger.level
    logger.setLevel(logging.WARNING)  # the step-by-step lines of every run would bury the router's
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return finetune(
                finetune_config(overrides=overrides),
                train_examples=data["train"],
                test_examples=data["test"],
                keep_model=True,
            )
    finally:
        logger.setLevel(level)


def top_predictions(task, examples: list[dict]) -> list[tuple[str, float]]:
    labels = task.spec.labels
    out = []
    for probs in task.outputs(examples):
        i = max(range(len(labels)), key=lambda j: probs[j])
        out.append((labels[i], float(probs[i])))
    return out


# --------------------------------------------------------------------------- the run


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, help="CLINC150 data_full.json")
    p.add_argument("-o", "--output", default="runs/intent-router", help="output folder")
    p.add_argument("--per-intent", type=int, nargs="+", default=[5, 10, 20], help="labels per intent")
    p.add_argument(
        "--arms",
        nargs="+",
        default=["scratch", "pretrained:mlm", "pretrained:mlm/probe", "tfidf", "embeddings"],
        help="value-study arms (lmvalue value --arms)",
    )
    p.add_argument(
        "--router-arms",
        nargs="+",
        default=None,
        help="arms that get a router (a subset of --arms; default: all of them)",
    )
    p.add_argument(
        "--seeds", type=int, default=2, help="value-study seeds per budget (the router uses seed 0)"
    )
    p.add_argument(
        "--target-precision", type=float, default=0.95, help="precision the threshold must reach on val"
    )
    p.add_argument(
        "--val-oos-share",
        type=float,
        default=None,
        help="choose the threshold with val's out-of-scope queries weighted to this share of the traffic "
        "(default: as they are, 100 of 3,100)",
    )
    p.add_argument("--preset", default="tiny", help="architecture of the scratch and pretrained arms")
    p.add_argument(
        "--vocab-size", type=int, default=8000, help="tokenizer vocabulary (trained on the utterances)"
    )
    p.add_argument("--pretrain-steps", type=int, default=3000, help="masked-LM pretraining steps")
    p.add_argument("--pretrain", nargs="*", default=[], metavar="KEY=VALUE", help="pretraining overrides")
    p.add_argument("--finetune", nargs="*", default=[], metavar="KEY=VALUE", help="fine-tuning overrides")
    p.add_argument("--intents", type=int, default=None, help="a seeded subset of the intents (small slices)")
    p.add_argument("--eval-per-intent", type=int, default=None, help="cap val/test examples per intent")
    p.add_argument("--oos-max", type=int, default=None, help="cap oos_val/oos_test examples")
    p.add_argument("--resume", action="store_true", help="finish an interrupted study")
    p.add_argument("--results", default="results", help="file name (stem) of the results written in --output")
    p.add_argument(
        "--skip-study",
        action="store_true",
        help="routers only, from an existing study folder (its pretraining and tokenizer)",
    )
    return p


DEFAULT_PRETRAIN = {"data.block_size": 64, "train.lr": 1e-3}
DEFAULT_FINETUNE = {
    "data.max_length": 32,
    "train.batch_size": 32,
    "train.epochs": 20,
    "train.min_steps": 100,
    "train.max_steps": 1000,
    "train.evals": 5,
}


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per loaded model would bury the router's lines
    args.pretrain = {**DEFAULT_PRETRAIN, **parse_overrides(args.pretrain)}
    args.finetune = {**DEFAULT_FINETUNE, **parse_overrides(args.finetune)}
    args.router_arms = args.router_arms or list(args.arms)
    if not set(args.router_arms) <= set(args.arms):
        sys.exit(f"--router-arms {args.router_arms} must be among --arms {args.arms}")
    out = Path(args.output)
    (out / "data").mkdir(parents=True, exist_ok=True)
    data = load_clinc(
        args.data, intents=args.intents, eval_per_intent=args.eval_per_intent, oos_max=args.oos_max
    )
    n_intents = len(data["intents"])
    # the value study's inputs: labeled pool, in-scope test split, and the unlabeled utterances
    _write_jsonl(out / "data" / "train.jsonl", data["train"])
    _write_jsonl(out / "data" / "test.jsonl", data["test"])
    (out / "data" / "corpus.txt").write_text(
        "".join(r["text"] + "\n" for r in data["train"]), encoding="utf-8"
    )
    print(
        f"CLINC150: {n_intents} intents, {len(data['train'])} train utterances (the unlabeled corpus), "
        f"val {len(data['val'])} + {len(data['oos_val'])} oos, test {len(data['test'])} + {len(data['oos_test'])} oos",
        flush=True,
    )

    study_dir = out / "study"
    t0 = time.perf_counter()
    summary = None
    if not args.skip_study:
        from lmvalue import StudyConfig, run_study

        cfg = StudyConfig(
            output_dir=str(study_dir),
            data=str(out / "data" / "train.jsonl"),
            test=str(out / "data" / "test.jsonl"),
            corpus=str(out / "data" / "corpus.txt"),
            arms=list(args.arms),
            budgets=[k * n_intents for k in args.per_intent],
            seeds=args.seeds,
            preset=args.preset,
            vocab_size=args.vocab_size,
            pretrain_minutes=None,
            pretrain_steps=args.pretrain_steps,
            pretrain_overrides=args.pretrain,
            finetune_overrides=args.finetune,
            resume=args.resume,
        )
        summary = run_study(cfg)
        print("\n" + summary["verdict"] + "\n", flush=True)
    study_seconds = time.perf_counter() - t0

    rows = []
    for arm in args.router_arms:
        for k in args.per_intent:
            t1 = time.perf_counter()
            m = fit_router_model(arm, k, data, 0, args, study_dir, out / "router" / f"{_arm_folder(arm)}-{k}")
            task = m["task_model"]
            val = data["val"] + data["oos_val"]
            test = data["test"] + data["oos_test"]
            val_preds, test_preds = top_predictions(task, val), top_predictions(task, test)
            correct = [
                ex["label"] != OOS and p[0] == ex["label"] for ex, p in zip(val, val_preds, strict=True)
            ]
            weights = oos_weights(val, args.val_oos_share)
            threshold = choose_threshold([p[1] for p in val_preds], correct, args.target_precision, weights)
            row = {
                "arm": arm,
                "per_intent": k,
                "labels": m["examples"]["train"] + m["examples"]["dev"],
                "in_scope_accuracy": m["test"]["accuracy"],
                "threshold": threshold if threshold != float("inf") else None,  # None: all handed off
                "val": routing_scores(val, val_preds, threshold, weights),
                "test": routing_scores(test, test_preds, threshold),
                "seconds": round(time.perf_counter() - t1, 1),
            }
            rows.append(row)
            t = row["test"]
            print(
                f"router {arm} @ {k}/intent: threshold {threshold:.3f}, test: answered {t['answered']:.1%}, "
                f"precision {_pct(t['precision'])}, oos handed off {_pct(t['oos_recall'])}, "
                f"in-scope accuracy {row['in_scope_accuracy']:.1%}",
                flush=True,
            )
            if arm == args.router_arms[-1] and k == args.per_intent[-1]:
                examples = [test[i] for i in (0, 1, len(data["test"]), len(data["test"]) + 1)]
                for ex, (label, prob) in zip(examples, top_predictions(task, examples), strict=True):
                    r = route(label, prob, threshold)
                    said = r.get("answer", "-> a person")
                    print(f"  {ex['text']!r} ({ex['label']}): {r['intent']} p={prob:.2f} {said}")

    result = {
        "settings": {k: v for k, v in vars(args).items()},
        "intents": n_intents,
        "study": {
            "folder": str(study_dir),
            "seconds": round(study_seconds, 1),
            "table": summary["table"] if summary else None,
            "compute": summary["compute"] if summary else None,
            "report": summary.get("report_md") if summary else None,
            "verdict": summary["verdict"] if summary else None,
        },
        "router": rows,
    }
    (out / f"{args.results}.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    (out / f"{args.results}.md").write_text(results_markdown(result), encoding="utf-8")
    print(f"\nwrote {out / args.results}.md and .json")
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def results_markdown(result: dict) -> str:
    lines = []
    table = result["study"]["table"]
    if table:
        ks = result["settings"]["per_intent"]
        n = result["intents"]
        means = {(r["arm"], r["budget"]): r for r in table}
        lines += ["In-scope test accuracy (%) of the value study, mean over seeds [95% bootstrap CI]:", ""]
        lines += ["| arm | " + " | ".join(f"{k}/intent" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
        for arm in dict.fromkeys(r["arm"] for r in table):
            cells = []
            for k in ks:
                c = means.get((arm, k * n))
                cells.append(
                    f"{100 * c['mean']:.1f} [{100 * c['lo']:.1f}, {100 * c['hi']:.1f}]" if c else "-"
                )
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines += ["", "Verdict: " + result["study"]["verdict"], ""]
    target = result["settings"]["target_precision"]
    share = result["settings"]["val_oos_share"]
    weighting = "" if share is None else f", out-of-scope queries weighted to {share:.1%} of val"
    lines += [
        f"Router on the test split (in scope + oos), threshold for {target:.0%} precision on val{weighting}, seed 0:",
        "",
        "| arm | labels/intent | in-scope acc | threshold | answered | precision | oos handed off "
        "| in-scope resolved | val precision |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["router"]:
        t = r["test"]
        thr = "all handed off" if r["threshold"] is None else f"{r['threshold']:.3f}"
        lines.append(
            f"| {r['arm']} | {r['per_intent']} | {100 * r['in_scope_accuracy']:.1f}% | {thr} | {_pct(t['answered'])} "
            f"| {_pct(t['precision'])} | {_pct(t['oos_recall'])} | {_pct(t['in_scope_resolved'])} "
            f"| {_pct(r['val']['precision'])} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

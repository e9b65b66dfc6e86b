"""Attention-head analysis, repair and input filter on backdoored tiny ViTs (issue 11).

For each backdoored model (tiny-vit-p8 trained on a poisoned copy of an embedded world): fit the clean
profile on a disjoint clean world (no labels used for the thresholds), then measure

* the infection heat maps (layer x head, and MLPs) on clean vs triggered test images, and per layer how
  much more often heads / MLPs are infected under the trigger;
* the filter: AUROC of the infected-head count (and of the count with ties broken by margin) on clean
  vs triggered test images (target-class images left out), FPR / TPR at the calibrated zeta;
* the repair: CA and ASR before and after, heads only, and heads + late MLPs chosen under a CA budget.

Set-up (``--world shapes``): ``clipguard synth --out W --n-train 20000 --n-test 2000 --seed 0``, each
attack at 5 % (target ``star``), tiny-vit-p8 trained 10 epochs (batch 64, lr 1e-3); the clean set is
``clipguard synth --seed 1 --n-train 2000``. Every model folder is ``<work>/models/<attack>`` and every
poisoned copy ``<work>/data/<attack>`` (see ``benchmarks/heads_models.sh``).

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/heads.py --work runs/heads --label cpu
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from _results import write_csv

import torch

from clipguard.analyze import HeadProfile, decompose_batched, fit_profile, zero_shot_predict
from clipguard.attacks.base import trigger_from_spec
from clipguard.data.manifest import read_manifest
from clipguard.evaluate.api import read_classes
from clipguard.evaluate.zeroshot import build_classifier, load_test_images
from clipguard.models import load_model
from clipguard.models.head_repair import repaired_sum
from clipguard.pipeline.heads import heads_analyze, heads_repair

ATTACKS = ["badnets", "badclip", "blended", "sig"]
PATCH = {"badnets", "badclip"}


def run_one(work: Path, attack: str, a: argparse.Namespace) -> dict:
    model, spec = work / "models" / attack, work / "data" / attack / "attack.json"
    test, classes = work / "world" / "test" / "manifest.parquet", work / "world" / "classes.json"
    clean = a.clean or work / "clean_world" / "train" / "manifest.parquet"
    out = work / "heads" / attack
    common = dict(fpr=a.fpr, filter_fpr=a.filter_fpr, seed=a.seed, device="cpu", progress=False)
    an = heads_analyze(model, clean, out / "analyze", test=test, attack_spec=spec, classes=classes, **common)
    full = heads_repair(model, clean, out / "repair_auto", classes=classes, budget=a.budget, test=test,
                        attack_spec=spec, **common)
    heads_only = heads_repair(model, clean, out / "repair_heads", classes=classes, mlp_layers="none", test=test,
                              attack_spec=spec, **common)
    f, layers = an["filter"], an["layers"]
    row = {"attack": attack, "ca_before": full["before"]["clean_accuracy"],
           "asr_before": full["before"]["attack_success_rate"],
           "ca_heads": heads_only["after"]["clean_accuracy"], "asr_heads": heads_only["after"]["attack_success_rate"],
           "ca_repair": full["after"]["clean_accuracy"], "asr_repair": full["after"]["attack_success_rate"],
           "mlp_layers": " ".join(map(str, full["mlp_layers"])) or "none",
           "auroc_count": f["auroc_count"], "auroc_score": f["auroc_score"], "zeta": f["zeta"],
           "fpr_at_zeta": f["fpr_at_zeta"], "tpr_at_zeta": f["tpr_at_zeta"],
           "fpr_at_zeta_score": f["fpr_at_zeta_score"], "tpr_at_zeta_score": f["tpr_at_zeta_score"],
           "clean_head_fpr": an["clean_fpr_per_head_mean"], "recon_error": an["reconstruction_error"],
           "head_increase_by_layer": " ".join(f"{v:.2f}" for v in layers["max_head_rate_increase_per_layer"]),
           "mlp_increase_by_layer": " ".join(f"{v:.2f}" for v in layers["mlp_rate_increase_per_layer"])}
    for kind in ("heads", "repair"):
        b = row["asr_before"]
        row[f"asr_cut_{kind}"] = None if b == 0 else 1 - row[f"asr_{kind}"] / b
        row[f"ca_loss_{kind}"] = 100 * (row["ca_before"] - row[f"ca_{kind}"])
    row["localise"] = localise(work, attack, out / "analyze", a.n_local, clean, a.sweep)
    figs = Path(a.figures) / a.label
    figs.mkdir(parents=True, exist_ok=True)
    for name in ("heads_infection.png", "mlps_infection.png"):
        shutil.copy(out / "analyze" / name, figs / f"{attack}_{name}")
    return row


def localise(work: Path, attack: str, profile_dir: Path, n_test: int, clean_manifest: Path,
             sweep: list[float]) -> dict:
    """Causal localisation: CA / ASR when every input's terms of one component group are replaced by
    their clean means (all heads of a layer, or a layer's MLP), unconditionally; and the head repair's
    CA / ASR at other per-head false-positive rates (``sweep``)."""
    bundle = load_model(work / "models" / attack)
    spec = json.loads((work / "data" / attack / "attack.json").read_text())
    names, templates = read_classes(work / "world" / "classes.json")
    clf = build_classifier(bundle, names, templates).cpu()
    test = read_manifest(work / "world" / "test" / "manifest.parquet")
    test.df = test.df.iloc[:n_test]
    clean = load_test_images(bundle, test, progress=False)
    trig = load_test_images(bundle, test, trigger=trigger_from_spec(spec), progress=False)
    keep = torch.from_numpy(trig.labels != names.index(spec["target"]))
    dc = decompose_batched(bundle.model.visual, clean.images, progress=False)
    dt = decompose_batched(bundle.model.visual, trig.images[keep], progress=False)
    prof = HeadProfile.load(profile_dir)
    t_idx = names.index(spec["target"])

    def measure(heads_of: list[int], mlps_of: list[int]) -> tuple[float, float]:
        out = []
        for d in (dc, dt):
            h, m = d.heads.clone(), d.mlps.clone()
            h[:, heads_of] = prof.head_prototypes[heads_of]
            m[:, mlps_of] = prof.mlp_means[mlps_of]
            out.append(zero_shot_predict(d.embedding + h.sum((1, 2)) + m.sum(1) + d.bias, clf))
        return float((out[0] == clean.labels).mean()), float((out[1] == t_idx).mean())

    L = prof.shape[0]
    res = {"none": measure([], [])}
    for layer in range(L):
        res[f"heads L{layer}"] = measure([layer], [])
        res[f"MLP L{layer}"] = measure([], [layer])
    res["heads of the last two layers"] = measure([L - 2, L - 1], [])
    res["every head"] = measure(list(range(L)), [])
    res["every MLP"] = measure([], list(range(L)))
    res["last layer (heads + MLP)"] = measure([L - 1], [L - 1])
    imgs = load_test_images(bundle, read_manifest(clean_manifest), progress=False, labelled=False).images
    dclean = decompose_batched(bundle.model.visual, imgs, progress=False)
    for fpr in sweep:
        p = fit_profile(dclean, fpr=fpr, seed=0)
        pred = [zero_shot_predict(repaired_sum(d, p.to_repair(()))[0], clf) for d in (dc, dt)]
        res[f"head repair at fpr {fpr:g}"] = (float((pred[0] == clean.labels).mean()), float((pred[1] == t_idx).mean()))
    return res


def report(rows: list[dict], a: argparse.Namespace) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"# Head analysis, repair and filter ({a.label})", "",
             f"Command: `python benchmarks/heads.py --work {a.work} --label {a.label}`; per-head fpr {a.fpr}, "
             f"filter fpr {a.filter_fpr}, CA budget {a.budget}. ASR: non-target triggered test images sent to the "
             "target. Heat maps in `benchmarks/results/heads/" + a.label + "/`.", "",
             "| attack | CA | ASR | heads only: CA / ASR | + MLPs (layers): CA / ASR | ASR cut | CA loss (pts) "
             "| filter AUROC (count / tie-broken) | zeta | FPR / TPR: count > zeta | FPR / TPR: score rule |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['ca_before']:.3f} | {r['asr_before']:.3f} | {r['ca_heads']:.3f} / {r['asr_heads']:.3f} "
            f"| {r['ca_repair']:.3f} / {r['asr_repair']:.3f} ({r['mlp_layers']}) | heads {fmt(r['asr_cut_heads'])}, "
            f"all {fmt(r['asr_cut_repair'])} | heads {r['ca_loss_heads']:.1f}, all {r['ca_loss_repair']:.1f} "
            f"| {r['auroc_count']:.3f} / {r['auroc_score']:.3f} | {r['zeta']} | {r['fpr_at_zeta']:.3f} / "
            f"{r['tpr_at_zeta']:.3f} | {r['fpr_at_zeta_score']:.3f} / {r['tpr_at_zeta_score']:.3f} |")
    lines += ["", "Where the trigger acts: per layer (0 = first), the largest rise of a head's infection rate "
              "(triggered - clean) and the rise of the MLP's:", "",
              "| attack | heads, by layer | MLPs, by layer | clean per-head FPR | reconstruction error |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['attack']} | {r['head_increase_by_layer']} | {r['mlp_increase_by_layer']} | "
                     f"{r['clean_head_fpr']:.4f} | {r['recon_error']:.1e} |")
    groups = list(rows[0]["localise"])
    lines += ["", "Causal localisation on the first test images: CA / ASR when one group of terms is replaced by "
              "its clean mean for every input (no infection test); then the head repair (infected heads only) at "
              "other per-head false-positive rates:", "",
              "| attack | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['attack']} | " + " | ".join(f"{ca:.2f} / {asr:.2f}" for ca, asr in r["localise"].values()) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/heads"))
    ap.add_argument("--label", default="cpu")
    ap.add_argument("--attacks", nargs="+", default=ATTACKS)
    ap.add_argument("--clean", type=Path, default=None, help="clean manifest [default: WORK/clean_world/train]")
    ap.add_argument("--fpr", type=float, default=0.01)
    ap.add_argument("--filter-fpr", type=float, default=0.05)
    ap.add_argument("--budget", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-local", type=int, default=1000, help="test images of the causal localisation")
    ap.add_argument("--sweep", type=float, nargs="*", default=[0.05, 0.2], help="other per-head fprs of the repair")
    ap.add_argument("--figures", default="benchmarks/results/heads")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args()
    rows = []
    for attack in a.attacks:
        if not (a.work / "models" / attack / "model.safetensors").is_file():
            print(f"skip {attack}: no model at {a.work / 'models' / attack}")
            continue
        rows.append(run_one(a.work, attack, a))
        print(json.dumps(rows[-1]), flush=True)
    flat = [{k: v for k, v in r.items() if k != "localise"} for r in rows]
    write_csv(a.results / f"heads_{a.label}.csv", list(flat[0]), flat)
    (a.results / f"heads_{a.label}.json").write_text(json.dumps(rows, indent=1))
    text = report(rows, a)
    (a.results / f"heads_{a.label}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

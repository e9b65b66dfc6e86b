"""The ``clipguard`` command line: one sub-command per pipeline stage, each a thin layer over a
public function of the library. Errors meant for the user are printed as one line (exit code 2).

Examples::

    clipguard synth --out world                       # the embedded shapes world
    clipguard poison world/train/manifest.parquet --out poisoned --attack badnets \\
        --param size=8 --param cell=2 --rate 0.05 --target star --classes world/classes.json
    clipguard train poisoned/manifest.parquet --out model --model tiny-rn --epochs 10
    clipguard embed model poisoned/manifest.parquet --out emb
    clipguard scan emb --out scan --top 20
    clipguard scan --model model --data poisoned/manifest.parquet --out scan2   # embeds first
    clipguard eval model world/test/manifest.parquet --classes world/classes.json --attack poisoned/attack.json
    clipguard demo --out demo                         # all of the above in one command
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from clipguard.errors import ClipguardError


def _parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    """``("size=8", "pattern=noise")`` -> ``{"size": 8, "pattern": "noise"}`` (JSON values where possible)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ClipguardError(f"--param {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def device_option(f):
    """``--device auto|cpu|cuda[:N]`` shared by the commands that run a model."""
    return click.option("--device", default="auto", show_default=True,
                        help="Where the model runs: auto (the GPU if torch sees one, else the CPU), cpu, cuda, "
                             "cuda:N.")(f)


def _echo_json(data: dict) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="clipguard")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool) -> None:
    """Find, simulate and remove backdoors in CLIP models and image-text data."""
    ctx.obj = {"progress": not quiet}
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--n-train", default=20000, show_default=True)
@click.option("--n-test", default=2000, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.pass_obj
def synth(obj: dict, out: str, n_train: int, n_test: int, seed: int) -> None:
    """Generate the embedded shapes world (PNG images + manifests + classes.json)."""
    from clipguard.data.synth import generate_world

    info = generate_world(out, n_train=n_train, n_test=n_test, seed=seed, progress=obj["progress"])
    click.echo(f"wrote {n_train} train and {n_test} test pairs to {out} (classes: {', '.join(info['classes'])})")


@cli.command()
@click.argument("manifest", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder of the poisoned dataset.")
@click.option("--attack", default="badnets", show_default=True, help="Trigger name (`clipguard attacks`).")
@click.option("--param", "params", multiple=True, help="Trigger parameter NAME=VALUE (repeatable).")
@click.option("--rate", type=float, default=None, help="Share of rows to poison, in (0, 1).")
@click.option("--count", type=int, default=None, help="Number of rows to poison (instead of --rate).")
@click.option("--target", required=True, help="Target class name, e.g. 'star'.")
@click.option("--clean-label", is_flag=True, help="Label-consistent: trigger only images whose caption names the target.")
@click.option("--classes", type=click.Path(), default=None, help="classes.json whose templates make poison captions.")
@click.option("--seed", default=0, show_default=True)
@click.pass_obj
def poison(obj: dict, manifest: str, out: str, attack: str, params: tuple[str, ...], rate: float | None,
           count: int | None, target: str, clean_label: bool, classes: str | None, seed: int) -> None:
    """Write a poisoned copy of MANIFEST with a JSON attack spec and a ground-truth column."""
    from clipguard.attacks import get_trigger, poison_dataset
    from clipguard.data.manifest import read_manifest
    from clipguard.data.synth import TEMPLATES
    from clipguard.evaluate.api import read_classes

    if rate is None and count is None:
        raise ClipguardError("give --rate (share in (0, 1)) or --count (number of rows)")
    templates = read_classes(classes)[1] if classes else list(TEMPLATES)
    trigger = get_trigger(attack, **_parse_params(params))
    res = poison_dataset(read_manifest(manifest), out, trigger, target=target, rate=rate, count=count,
                         mode="clean" if clean_label else "dirty", templates=templates, seed=seed,
                         progress=obj["progress"])
    click.echo(f"poisoned {res.n_poisoned} of {res.n_total} rows with {trigger!r} -> {res.manifest_path}"
               + (f" ({len(res.skipped)} unreadable candidates skipped)" if len(res.skipped) else ""))


@cli.command()
@click.argument("manifest", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model folder to write.")
@click.option("--model", default="tiny-rn", show_default=True, help="Architecture (`clipguard models`).")
@click.option("--weights", type=click.Path(), default=None, help="Initial weights (.safetensors or weights-only torch file).")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--weight-decay", default=0.1, show_default=True)
@click.option("--warmup-steps", default=50, show_default=True)
@click.option("--grad-clip", default=1.0, show_default=True, help="Max gradient norm (0 = off).")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-resume", is_flag=True, help="Ignore an existing checkpoint in --out.")
@click.option("--adaptive-density", default=0.0, show_default=True,
              help="Adaptive attacker: weight of the poisoned samples' batch SLOF added to the loss.")
@click.option("--adaptive-k", default=8, show_default=True, help="Neighbours of the adaptive batch SLOF.")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]),
              help="bf16: autocast on a GPU (weights and optimiser state stay fp32).")
@device_option
@click.pass_obj
def train(obj: dict, manifest: str, out: str, model: str, weights: str | None, epochs: int, batch_size: int,
          lr: float, weight_decay: float, warmup_steps: int, grad_clip: float, seed: int, no_resume: bool,
          adaptive_density: float, adaptive_k: int, precision: str, device: str) -> None:
    """Train a CLIP model on MANIFEST (resumable: rerun the same command after a kill)."""
    from clipguard.train import TrainConfig, train_from_manifest

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      warmup_steps=warmup_steps, grad_clip=grad_clip or None, seed=seed,
                      precision=precision)
    _, res = train_from_manifest(manifest, out, model=model, config=cfg, weights=weights, resume=not no_resume,
                                 progress=obj["progress"], adaptive_density=adaptive_density, adaptive_k=adaptive_k,
                                 device=device)
    last = res.history[-1] if res.history else {}
    click.echo(f"trained {model} on {res.n_pairs} pairs ({res.n_skipped} skipped) for {len(res.history)} epochs, "
               f"final loss {last.get('loss', float('nan')):.4f} -> {out}")


@cli.command()
@click.argument("model_dir", type=click.Path())
@click.argument("manifest", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Embedding folder (clip-retrieval layout).")
@click.option("--shard-size", default=100_000, show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--no-text", is_flag=True, help="Image embeddings only.")
@click.option("--workers", default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]),
              help="bf16: autocast on a GPU (faster; embeddings still saved as float32).")
@device_option
@click.pass_obj
def embed(obj: dict, model_dir: str, manifest: str, out: str, shard_size: int, batch_size: int, no_text: bool,
          workers: int, precision: str, device: str) -> None:
    """Embed MANIFEST with the model in MODEL_DIR (resumable, sharded)."""
    from clipguard.data.manifest import read_manifest
    from clipguard.embed import embed_dataset
    from clipguard.models import load_model

    res = embed_dataset(load_model(model_dir), read_manifest(manifest), out, shard_size=shard_size,
                        batch_size=batch_size, text=not no_text, num_workers=workers, progress=obj["progress"],
                        device=device, precision=precision)
    click.echo(f"embedded {res.n_embedded} pairs, skipped {res.n_skipped} {res.skip_counts or ''} -> {out}")


@cli.command()
@click.argument("emb_dir", type=click.Path(), required=False)
@click.option("--model", "model_dir", type=click.Path(), default=None,
              help="Model folder: embed --data with it first (into OUT/embeddings), then scan.")
@click.option("--data", "manifest", type=click.Path(), default=None,
              help="Dataset manifest to embed with --model (instead of EMB_DIR).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output folder (default: EMB_DIR; required with --model/--data).")
@click.option("--detector", "detectors", multiple=True,
              help="Detector name (repeatable; default: every detector whose inputs the folder has; "
                   "`clipguard detectors` lists them).")
@click.option("-k", "--k", "k", default=16, show_default=True, help="Neighbours per sample.")
@click.option("--reference", default="auto", show_default=True,
              type=click.Choice(["auto", "global", "batch", "reference", "multi_reference"]),
              help="global: exact kNN over the whole set; batch: the DAO paper's per-batch reference; "
                   "reference: one fixed random reference of --reference-size; multi_reference: "
                   "--n-references random references, scores averaged; auto: chosen from N "
                   "(recorded in run.json).")
@click.option("--batch-size", default=2048, show_default=True, help="Reference batch size (--reference batch).")
@click.option("--reference-size", type=int, default=None,
              help="M of the reference modes [default: 50000 for reference, 2048 for multi_reference].")
@click.option("--n-references", type=int, default=None, help="R of multi_reference [default: 8].")
@click.option("--index", default="auto", show_default=True, type=click.Choice(["auto", "flat", "ivf"]),
              help="FAISS index of the reference modes: flat (exact) or ivf (recall written to run.json).")
@click.option("--nlist", type=int, default=None, help="IVF lists [default: 4*sqrt(M)].")
@click.option("--nprobe", type=int, default=None,
              help="IVF lists probed per query [default: tuned on a sample to reach --target-recall].")
@click.option("--target-recall", default=0.95, show_default=True, help="recall@k the IVF nprobe tuning aims for.")
@click.option("--backend", default="blocked", show_default=True, type=click.Choice(["blocked", "faiss"]),
              help="Exact kNN backend of --reference global.")
@click.option("--suspect-share", default=0.01, show_default=True,
              help="Share of the samples marked is_<detector>_suspect.")
@click.option("--seed", default=0, show_default=True)
@click.option("--top", default=0, show_default=True, help="Print the N most suspicious samples.")
@click.option("--rank-by", default=None,
              help="Detector whose suspects --top prints [default: the first --detector, else fused].")
@click.option("--device", default="auto", show_default=True,
              help="Where the torch kNN search (global/batch references) and the --model embedding run: "
                   "auto (the GPU if torch sees one, else the CPU), cpu, cuda, cuda:N.")
@click.pass_obj
def scan(obj: dict, emb_dir: str | None, model_dir: str | None, manifest: str | None, out: str | None,
         detectors: tuple[str, ...], k: int, reference: str, batch_size: int, reference_size: int | None,
         n_references: int | None, index: str, nlist: int | None, nprobe: int | None, target_recall: float,
         backend: str, suspect_share: float, seed: int, top: int, rank_by: str | None, device: str) -> None:
    """Score every sample of an embedding folder EMB_DIR, or of a dataset embedded first with a
    model (--model MODEL_DIR --data MANIFEST --out OUT); higher = more suspicious."""
    from clipguard.detect import ScanConfig
    from clipguard.detect.scan import run_scan, scan_dataset, top_suspects
    from clipguard.utils.progress import progress_enabled

    from_data = model_dir is not None or manifest is not None
    if from_data == (emb_dir is not None):
        raise ClipguardError("give exactly one input: EMB_DIR, or --model MODEL_DIR with --data MANIFEST")
    if from_data and (model_dir is None or manifest is None or out is None):
        raise ClipguardError("scanning a dataset needs --model MODEL_DIR, --data MANIFEST and --out OUT")
    config = ScanConfig(k=k, reference=reference, batch_size=batch_size, reference_size=reference_size,
                        n_references=n_references, index=index, nlist=nlist, nprobe=nprobe,
                        target_recall=target_recall, seed=seed, backend=backend, suspect_share=suspect_share,
                        device=device)
    names = list(detectors) or None
    with progress_enabled(obj["progress"]):
        if from_data:
            dres = scan_dataset(model_dir, manifest, out, detectors=names, config=config, progress=obj["progress"])
            click.echo(f"embedded {dres.embed.n_embedded} pairs, skipped {dres.embed.n_skipped} -> {dres.emb_dir}")
            res = dres.scan
        else:
            res = run_scan(emb_dir, out or emb_dir, detectors=names, config=config)
    out = str(res.out_dir)
    n = len(res.scores)
    plan = res.info.get("reference_plan", {})
    click.echo(f"scored {n} samples -> {Path(out) / 'scores'}")
    click.echo(f"reference: {plan.get('mode')} ({plan.get('reason')})"
               + (f"; kNN recall@k {res.info['recall_at_k']:.4f}" if "recall_at_k" in res.info else ""))
    for det, why in res.skipped_detectors.items():
        click.echo(f"skipped {det}: {why}")
    w = max(10, *(len(d) for d in res.detectors))
    if res.metrics:
        click.echo(f"{'detector':{w}s} {'AUROC':>7s} {'AUPRC':>7s} {'TPR@1%FPR':>10s}")
        for det, m in res.metrics.items():
            click.echo(f"{det:{w}s} {m['auroc']:7.4f} {m['auprc']:7.4f} {m['tpr_at_1pct_fpr']:10.4f}")
    if top:
        det = rank_by or (list(detectors) or ["fused" if "fused" in res.detectors else res.detectors[0]])[0]
        cols = ["id", f"{det}_score", f"{det}_rank", f"is_{det}_suspect"] + (
            ["poisoned"] if "poisoned" in res.scores.columns else [])
        click.echo(top_suspects(res, det, top)[cols].to_string())


@cli.command(name="filter")
@click.argument("manifest", type=click.Path())
@click.argument("scan_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the filtered manifest, removed.csv and run.json.")
@click.option("--detector", default="fused", show_default=True, help="Whose ranking decides.")
@click.option("--share", type=float, default=None,
              help="Remove the top SHARE of the scored rows [default: the scan's is_<detector>_suspect rows].")
@click.option("--top", type=int, default=None, help="Remove the top N rows instead.")
def filter_(manifest: str, scan_dir: str, out: str, detector: str, share: float | None, top: int | None) -> None:
    """Write MANIFEST without the suspects that `clipguard scan` (output SCAN_DIR) ranked highest."""
    from clipguard.defend import filter_manifest

    res = filter_manifest(manifest, scan_dir, out, detector=detector, share=share, top=top)
    msg = (f"removed {res.n_removed} of {res.n_rows} rows by {detector}, kept {res.n_kept}"
           + (f" ({res.n_unscored} unscored rows kept)" if res.n_unscored else "") + f" -> {res.manifest_path}")
    if res.poisoned_recall is not None:
        prec = "n/a" if res.poisoned_precision is None else f"{res.poisoned_precision:.3f}"
        msg += f"\nground truth: {res.poisoned_recall:.3f} of the poisoned rows removed; precision {prec}"
    click.echo(msg)


@cli.command(name="eval")
@click.argument("model_dir", type=click.Path())
@click.argument("test_manifest", type=click.Path())
@click.option("--classes", required=True, type=click.Path(), help="classes.json with 'classes' and 'templates'.")
@click.option("--attack", "attack_spec", type=click.Path(), default=None, help="attack.json written by `clipguard poison`.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON here.")
@click.option("--seed", default=0, show_default=True)
@device_option
@click.pass_obj
def eval_(obj: dict, model_dir: str, test_manifest: str, classes: str, attack_spec: str | None, out: str | None,
          seed: int, device: str) -> None:
    """Zero-shot clean accuracy and attack success rate (ASR: non-target images sent to the target)."""
    from clipguard.evaluate.api import evaluate_model
    from clipguard.utils.io import write_json

    res = evaluate_model(model_dir, test_manifest, classes, attack_spec=attack_spec, seed=seed,
                         progress=obj["progress"], device=device)
    if out:
        write_json(out, res)
    _echo_json(res)


@cli.command()
@click.option("--out", default="demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--n-train", default=20000, show_default=True)
@click.option("--rate", default=0.05, show_default=True, help="Poison rate.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True,
              help="cpu (the README's figures), auto (the GPU if torch sees one), cuda.")
@click.pass_obj
def demo(obj: dict, out: str, n_train: int, rate: float, epochs: int, seed: int, device: str) -> None:
    """The whole pipeline on the embedded world: synth -> poison -> train -> embed -> scan -> eval."""
    from clipguard.demo import DemoConfig, format_summary, run_demo

    summary = run_demo(DemoConfig(out=out, n_train=n_train, poison_rate=rate, epochs=epochs, seed=seed, device=device),
                       progress=obj["progress"])
    click.echo(format_summary(summary))


@cli.command()
def models() -> None:
    """List model architectures (clipguard's tiny configs, then open_clip's)."""
    from clipguard.models import list_models

    for name in list_models():
        click.echo(name)


@cli.command()
@click.option("--gallery", type=click.Path(dir_okay=False), default=None,
              help="Also write a PNG of clean vs triggered samples for every attack.")
def attacks(gallery: str | None) -> None:
    """List the registered attacks and their parameters."""
    import inspect

    from clipguard.attacks import ATTACKS

    if gallery:
        from clipguard.attacks.gallery import write_gallery

        click.echo(f"gallery -> {write_gallery(gallery)}")
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        sig = [f"{n}={p.default!r}" for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"]
        click.echo(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        click.echo(f"    parameters: {', '.join(sig)}")


@cli.command()
@click.argument("model_dir", type=click.Path())
@click.argument("manifest", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for trigger.png + trigger.json.")
@click.option("--target", required=True, help="Target class name.")
@click.option("--classes", type=click.Path(), default=None, help="classes.json whose templates describe the target.")
@click.option("--size", default=8, show_default=True, help="Patch side in pixels.")
@click.option("--location", default="bottom_right", show_default=True)
@click.option("--steps", default=300, show_default=True)
@click.option("--seed", default=0, show_default=True)
@device_option
@click.pass_obj
def badclip(obj: dict, model_dir: str, manifest: str, out: str, target: str, classes: str | None, size: int,
            location: str, steps: int, seed: int, device: str) -> None:
    """Optimise a BadCLIP patch against the (clean) model in MODEL_DIR on images of MANIFEST.

    Then poison with it: clipguard poison ... --attack badclip --param patch=OUT/trigger.png
    """
    from clipguard.attacks.badclip import BadCLIPConfig, optimize_badclip_patch
    from clipguard.data.manifest import read_manifest
    from clipguard.data.synth import TEMPLATES
    from clipguard.evaluate.api import read_classes
    from clipguard.models import load_model

    templates = read_classes(classes)[1] if classes else list(TEMPLATES)
    trig = optimize_badclip_patch(load_model(model_dir, device=device), read_manifest(manifest), out, target=target,
                                  templates=templates, progress=obj["progress"],
                                  config=BadCLIPConfig(size=size, location=location, steps=steps, seed=seed))
    click.echo(f"optimised patch -> {trig.patch}")


@cli.command()
def detectors() -> None:
    """List the registered detectors."""
    from clipguard.detect.detectors import DETECTORS

    for name in DETECTORS.names():
        doc = (DETECTORS.get(name).__doc__ or "").strip().splitlines()
        click.echo(f"{name}: {doc[0] if doc else ''}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the CLI; user errors become one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="clipguard", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClipguardError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

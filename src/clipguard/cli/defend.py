"""``clipguard filter``: a thin layer over :func:`clipguard.defend.filter_manifest`."""
from __future__ import annotations

import click

from clipguard.cli.options import default_of, out_option
from clipguard.defend import filter_manifest

__all__ = ["filter_"]


@click.command(name="filter")
@click.argument("manifest", type=click.Path())
@click.argument("scan_dir", type=click.Path())
@out_option("Folder for the filtered manifest, removed.csv and run.json.")
@click.option("--detector", default=default_of(filter_manifest, "detector"), show_default=True,
              help="Whose ranking decides.")
@click.option("--share", type=float, default=None,
              help="Remove the top SHARE of the scored rows [default: the scan's is_<detector>_suspect rows].")
@click.option("--top", type=int, default=None, help="Remove the top N rows instead.")
def filter_(manifest: str, scan_dir: str, out: str, detector: str, share: float | None, top: int | None) -> None:
    """Write MANIFEST without the suspects that `clipguard scan` (output SCAN_DIR) ranked highest."""
    res = filter_manifest(manifest, scan_dir, out, detector=detector, share=share, top=top)
    msg = (f"removed {res.n_removed} of {res.n_rows} rows by {detector}, kept {res.n_kept}"
           + (f" ({res.n_unscored} unscored rows kept)" if res.n_unscored else "") + f" -> {res.manifest_path}")
    if res.poisoned_recall is not None:
        prec = "n/a" if res.poisoned_precision is None else f"{res.poisoned_precision:.3f}"
        msg += f"\nground truth: {res.poisoned_recall:.3f} of the poisoned rows removed; precision {prec}"
    click.echo(msg)

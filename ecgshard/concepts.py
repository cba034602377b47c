"""Relations between class codes across code systems, and what they mean for zero-shot.

The reviewed table ``ecgshard/data/concept_relations.csv`` (explained in ``docs/relations.md``)
says, with evidence per row, which codes name the same concept (``same``), which is a kind of
which (``child_of``) and which share their defining morphology (``near``). From it:

* every target class gets a status against a run's training classes: **seen** (a code of the
  same concept was trained), **related** (an ancestor, descendant or near code was trained) or
  **unseen** (nothing related was trained);
* a holdout is closed transitively: every class related to a held-out class is held out too,
  so that each held-out class is unseen in the run that holds it out.

Codes are matched exactly; SCP, SNOMED CT and CODE-15 codes never collide (tested). A class
that is free text rather than a code of the table — a machine statement of MIMIC-IV-ECG, a
class typed into ``predict`` — is placed by its words (``names``: the synonyms of
``data/class_texts.json`` and the SNOMED CT names): text that *is* a known name is that
concept ("sinus bradycardia" is SBRAD); text that *contains* a known name as a phrase
("sinus bradycardia with 1st degree av block") is related to that concept, both ways.
The same rule holds for a coded class's findings text (``data/class_texts.json``): a class
whose findings name another class ("prolonged PR interval" in AV block's) is related to it,
both ways; a negated clause ("no pathological Q waves") names nothing.
"""
from __future__ import annotations

import csv
import functools
import json
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import labels
from .errors import ECGShardError

log = logging.getLogger(__name__)

RELATIONS = ("same", "child_of", "near")
# How a closure names a class it takes along for a shared name without following it further
SHARED_NAME = "shared name"
GROUPS = ("seen", "related", "unseen")


@dataclass(frozen=True)
class Edge:
    code: str
    relation: str
    target: str
    evidence: str


@dataclass(frozen=True)
class Status:
    group: str          # seen | related | unseen
    via: str | None     # the training code that makes it seen or related
    why: str            # one sentence: the relation and its evidence


def normalised_name(text):
    """Lower case, every run of non-alphanumerics one space: how names are compared.
    Hyphenated initialisms are joined first ("A-V block" is "av block", as machines write it)."""
    text = re.sub(r"\b([a-z])-(?=[a-z]\b)", r"\1", str(text).lower())
    return " ".join("".join(ch if ch.isalnum() else " " for ch in text).split())


# What follows one of these words in a finding is absent, not present: it names no class.
NEGATION = re.compile(r"\b(no|not|without|absent|absence|neither|nor|never)\b")


def affirmed(finding):
    """The part of a finding that asserts something: the normalised text before its first
    negation ("flat T waves without ST depression" -> "flat t waves")."""
    return NEGATION.split(normalised_name(finding), maxsplit=1)[0].strip()


class ConceptGraph:
    """The relation table as a graph over concepts (codes joined by ``same``); ``names``
    (normalised name -> code) places free-text classes."""

    def __init__(self, edges, names=None, findings=None):
        self.edges = list(edges)
        self.names = dict(names or {})
        self.findings = dict(findings or {})
        self._named_codes = set(self.names.values())
        self._phrases, self._families = {}, {}
        self._root = {}
        for e in self.edges:
            if e.relation == "same":
                self._union(e.code, e.target)
        self._members = {}
        self._codes = {e.code for e in self.edges} | {e.target for e in self.edges}
        for code in self._codes:
            self._members.setdefault(self.concept(code), set()).add(code)
        self._parents, self._children, self._near = {}, {}, {}
        for e in self.edges:
            a, b = self.concept(e.code), self.concept(e.target)
            if e.relation == "child_of":
                self._parents.setdefault(a, set()).add(b)
                self._children.setdefault(b, set()).add(a)
            elif e.relation == "near":
                self._near.setdefault(a, set()).add(b)
                self._near.setdefault(b, set()).add(a)

    # -------------------------------------------------------------- concepts

    def _find(self, code):
        root = code
        while self._root.get(root, root) != root:
            root = self._root[root]
        return root

    def _union(self, a, b):
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._root[max(ra, rb)] = min(ra, rb)

    def concept(self, code):
        """A representative code of ``code``'s concept (itself when it has no synonym); free
        text that is a known name takes that name's concept."""
        if code not in self._codes:
            code = self.names.get(normalised_name(code), code)
        return self._find(code)

    def known(self, code):
        """Whether ``code`` is placed: a code of the table or of the names, a known name, or
        text that contains one."""
        return (code in self._codes or code in self._named_codes
                or self.concept(code) != code or bool(self.mentions(code)))

    def coded(self, code):
        """Whether ``code`` is a class of a code system (of the table or with class texts),
        not free text."""
        return code in self._codes or code in self.findings

    def mentions(self, code):
        """The concepts whose names ``code``'s text contains as a phrase, other than the one it
        is: for free text its words (a combined machine statement mentions each finding it
        names), for a coded class the affirmed part of each of its findings."""
        if code not in self._phrases:
            texts = [affirmed(f) for f in self.findings.get(code, ())] if self.coded(code) \
                else [normalised_name(code)]
            found = {self.concept(c) for t in texts for c in self._named_in(t)}
            found.discard(self.concept(code))
            self._phrases[code] = found
        return self._phrases[code]

    def _named_in(self, text):
        """Codes whose names ``text`` contains as whole words ("av block" is in "1st degree av
        block", "af" is not in "after"), plurals included ("pacs" names "pac")."""
        text = f" {text} "
        return {c for n, c in self.names.items()
                if f" {n} " in text or f" {n}s " in text or f" {n}es " in text}

    def _named(self, code):
        """The concepts ``code`` names: its own and those its text contains."""
        return {self.concept(code)} | self.mentions(code)

    def _family(self, code):
        """The concepts ``code`` names, and their parents, children and near concepts
        (kept: status and closure ask it for every pair of classes)."""
        if code not in self._families:
            self._families[code] = {r for c in self._named(code)
                                    for r in {c} | {self.concept(x) for x in self.related(c)}}
        return self._families[code]

    def _text_link(self, a, b):
        """Whether ``a`` and ``b`` are tied by what their texts name. Two coded classes are
        when one's findings name the other's concept (directly: two classes that both name
        T-wave inversion are not thereby related to each other). Free text joins the table
        more widely: when a finding one names is, or is related to, a finding the other
        names."""
        if self.coded(a) and self.coded(b):
            return bool(self.concept(b) in self.mentions(a) or
                        self.concept(a) in self.mentions(b))
        return bool(self._named(a) & self._family(b) or self._named(b) & self._family(a))

    def members(self, code):
        """Every code of the table naming the same concept as ``code`` (``code`` included)."""
        return self._members.get(self.concept(code), set()) | {code}

    def _walk(self, start, step):
        """Concepts reachable from ``start`` along ``step`` -> their distance in hops."""
        depth, todo = {start: 0}, [start]
        while todo:
            here = todo.pop(0)
            for nxt in step.get(here, ()):
                if nxt not in depth:
                    depth[nxt] = depth[here] + 1
                    todo.append(nxt)
        del depth[start]
        return depth

    def related(self, code):
        """Codes related to ``code`` -> ``(kind, hops)``, kind 'parent', 'child' or 'near'.

        Ancestors and descendants are followed transitively (a grandparent is still a broader
        name for the finding); ``near`` is one step, since near-ness does not compose.
        """
        root = self.concept(code)
        kinds = {}
        for kind, concepts in (("near", {c: 1 for c in self._near.get(root, ())}),
                               ("child", self._walk(root, self._children)),
                               ("parent", self._walk(root, self._parents))):
            for concept, hops in concepts.items():
                if concept != root:
                    for member in self.members(concept):
                        kinds[member] = (kind, hops)
        return kinds

    def explain(self, code, other):
        """The table rows that tie ``code`` to ``other`` directly, as text (may be empty)."""
        a, b = self.members(code), self.members(other)
        rows = [e for e in self.edges
                if (e.code in a and e.target in b) or (e.code in b and e.target in a)]
        return "; ".join(f"{e.code} {e.relation} {e.target}: {e.evidence}" for e in rows)

    # -------------------------------------------------------------- zero-shot statuses

    def status(self, target, trained):
        """Where ``target`` stands against the training classes ``trained``."""
        trained = set(trained)
        root = self.concept(target)
        same = sorted(t for t in trained if self.concept(t) == root)
        if same:
            via = same[0]
            why = "trained itself" if via == target else \
                f"same concept as trained {via} ({self.explain(target, via) or 'same name'})"
            return Status("seen", via, why)
        related = {self.concept(c): (kind, hops, c)
                   for c, (kind, hops) in self.related(target).items()}
        hits = sorted((t for t in trained if self.concept(t) in related),
                      key=lambda t: (related[self.concept(t)][1], t))
        if hits:
            via = hits[0]
            kind = related[self.concept(via)][0]
            detail = self.explain(target, via) or f"through the {kind} chain of the table"
            return Status("related", via, f"{kind} {via} was trained ({detail})")
        mentioned = sorted(t for t in trained if self._text_link(target, t))
        if mentioned:
            via = mentioned[0]
            return Status("related", via, f"{via!r} and {target!r} name the same or related "
                                          f"findings (a text contains a finding's name)")
        return Status("unseen", None, "no code of the same, a parent, child or near concept "
                                      "was trained, and no trained statement names it")

    def statuses(self, targets, trained):
        return {t: self.status(t, trained) for t in targets}

    # -------------------------------------------------------------- holdouts

    def closure(self, codes, vocabulary):
        """The held-out set that keeps every one of ``codes`` unseen.

        Transitive: a class related to a held-out class is held out, and so on, within
        ``vocabulary`` (the codes that could be trained); a class tied to one only by what
        their texts name (a combined statement, a class whose findings name it) is held out
        too, without following it further: it rides along (``riders``), and is not itself kept
        unseen. Returns ``{code: reason}`` with ``reason`` None for the requested codes and
        "<relation> of <code>" for the others.
        """
        vocabulary = set(vocabulary)
        reasons = {c: None for c in codes}
        todo = list(codes)
        while todo:
            code = todo.pop(0)
            root = self.concept(code)
            related = {self.concept(c): kind for c, (kind, _) in self.related(code).items()}
            for other in sorted(vocabulary - set(reasons)):
                kind = "same concept" if self.concept(other) == root else \
                    related.get(self.concept(other)) or \
                    (SHARED_NAME if self._text_link(code, other) else None)
                if kind:
                    reasons[other] = f"{kind} of {code}"
                    # a combined statement goes with each finding it names, but is not
                    # followed further: its other findings stay trainable
                    if kind != SHARED_NAME:
                        todo.append(other)
        return reasons


def riders(reasons):
    """The members of a closure (``closure``'s ``{code: reason}``) that ride along: held out
    for a shared name, not kept unseen themselves."""
    return {c for c, why in reasons.items() if why and why.startswith(SHARED_NAME + " of ")}


def display(code):
    """A code as a reader can take it in: a numeric (SNOMED CT) code with its name."""
    code = str(code)
    if not code.isdigit():
        return code
    entry = _package_texts().entries.get(code)
    return f"{code} {entry['synonyms'][0]}" if entry and entry.get("synonyms") else code


@functools.lru_cache(maxsize=1)
def _package_texts():
    return load_class_texts()


def describe(code, trained=None, vocabulary=None, graph=None, status=None):
    """Lines for ``ecgshard relations``: a code's concept and relatives with the table's
    evidence; its status against ``trained`` codes (``status(code)``, where given, tells it:
    a run's, finding statements included); its holdout closure within ``vocabulary``."""
    graph = graph or load()
    code = str(code).strip()
    if not code or not graph.known(code):
        raise ECGShardError(f"{code!r} is not in the relation table{_did_you_mean(code, graph)}")
    lines = [display(code)]
    same = sorted(graph.members(code) - {code})
    lines.append(f"  same concept: {', '.join(map(display, same)) if same else '-'}")
    related = graph.related(code)
    for kind in ("parent", "child", "near"):
        codes = sorted((c for c, (k, _) in related.items() if k == kind),
                       key=lambda c: (related[c][1], c))
        lines.append(f"  {kind}: {', '.join(map(display, codes)) if codes else '-'}")
    rows = [e for e in graph.edges if e.code in graph.members(code)
            or e.target in graph.members(code)]
    for e in rows:
        lines.append(f"    {e.code} {e.relation} {e.target}: {e.evidence}")
    if trained is not None:
        st = status(code) if status else graph.status(code, trained)
        lines.append(f"  status against the run's {len(set(trained))} training classes: "
                     f"{st.group.upper()} - {st.why}")
    if vocabulary is not None:
        closed = graph.closure([code], vocabulary)
        lines.append("  holdout closure in this vocabulary: " + ", ".join(
            c if why is None else f"{c} ({why})" for c, why in closed.items()))
    return lines


def _did_you_mean(code, graph):
    import difflib

    known = sorted(graph._codes)
    same_case = [c for c in known if c.upper() == str(code).strip().upper()]
    close = same_case or difflib.get_close_matches(str(code).strip().upper(), known, n=3)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def read_edges(lines, origin="concept_relations.csv"):
    """Edges of a relation table (CSV, ``#`` comment lines); a malformed row is an error."""
    rows = csv.DictReader(line for line in lines if line.strip() and not line.startswith("#"))
    edges = []
    for n, row in enumerate(rows, start=1):
        relation = (row.get("relation") or "").strip()
        targets = (row.get("targets") or "").split()
        if relation not in RELATIONS or not row.get("code") or not targets:
            raise ECGShardError(f"{origin}: row {n} ({row}) needs a code, a relation of "
                                f"{RELATIONS} and at least one target")
        edges += [Edge(row["code"].strip(), relation, t, (row.get("evidence") or "").strip())
                  for t in targets]
    return edges


@functools.lru_cache(maxsize=4)
def read_table(path=None):
    """The edges of the package's relation table (or of the one at ``path``)."""
    if path is None:
        text = resources.files("ecgshard").joinpath("data/concept_relations.csv").read_text()
        return tuple(read_edges(text.splitlines()))
    return tuple(read_edges(Path(path).read_text().splitlines(), origin=str(path)))


@functools.lru_cache(maxsize=4)
def load(path=None):
    """The relation table as a ConceptGraph, with the package's class names (synonyms and
    SNOMED CT names) to place free-text classes."""
    texts = load_class_texts()
    return ConceptGraph(read_table(path), texts.by_name,
                        {code: e.get("findings", []) for code, e in texts.entries.items()})


# What a class is read off, for results by family (docs/findings.md): the PTB-XL codes of
# each family; a code of another system joins its concept's family; anything else is
# morphology (ST-T, infarction, hypertrophy by shape...).
FAMILIES = {
    "rhythm and rate": ("SR", "SBRAD", "STACH", "SARRH", "SVARR", "SVTAC", "PSVT", "AFIB", "AFLT",
                        "PAC", "PVC", "BIGU", "TRIGU", "PRC(S)", "PACE"),
    "conduction and intervals": ("1AVB", "2AVB", "3AVB", "_AVB", "CLBBB", "CRBBB", "ILBBB",
                                 "IRBBB", "IVCD", "LAFB", "LPFB", "LAFB/LPFB", "WPW", "LPR",
                                 "LNGQT"),
    "voltage": ("LVOLT", "HVOLT", "VCLVH"),
}
MORPHOLOGY = "morphology"


def family(code, graph=None):
    """The family of a class code: its own, or that of a PTB-XL code of the same concept."""
    graph = graph or load()
    concept = graph.concept(code)
    for name, codes in FAMILIES.items():
        if code in codes or any(graph.concept(c) == concept for c in codes):
            return name
    return MORPHOLOGY


# ---------------------------------------------------------------- class texts

@dataclass
class ClassTexts:
    """Synonyms and finding lists per code (``ecgshard/data/class_texts.json``)."""
    entries: dict                       # code -> {"synonyms": [...], "findings": [...]}
    by_name: dict                       # normalised synonym -> code

    def code(self, text):
        """The code ``text`` is, or names (by a synonym), or None."""
        if text in self.entries:
            return text
        return self.by_name.get(normalised_name(text))

    def entry(self, code, name):
        """A class's entry: by its code, else by its name among the synonyms (vocabularies
        whose codes the file does not list, such as SPH's AHA codes, name their classes)."""
        found = self.entries.get(code)
        key = normalised_name(name)
        if found is None and key in self.by_name:
            found = self.entries[self.by_name[key]]
        return found




def class_texts_bytes(path=None):
    """The bytes of a class texts file, or of the package's when ``path`` is None."""
    if path is None:
        return resources.files("ecgshard").joinpath("data/class_texts.json").read_bytes()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ECGShardError(f"cannot read the class texts {path}: {exc.strerror or exc}") \
            from None


def load_class_texts(path=None, raw=None):
    """The package's class texts, or a user's JSON file in the same form (``{"classes": {code:
    {"synonyms": [...], "findings": [...]}}}``) or as ``{code: description}``; ``raw``: the
    file's bytes, already read."""
    try:
        raw = json.loads(class_texts_bytes(path) if raw is None else raw)
    except ValueError as exc:
        raise ECGShardError(f"{path or 'the class texts'} is not JSON ({exc})") from None
    table = raw.get("classes", raw) if isinstance(raw, dict) else None
    if not isinstance(table, dict):
        raise ECGShardError(f"{path}: class texts must be a JSON object keyed by code")
    entries = {code: e if isinstance(e, dict) else {"synonyms": [], "findings": [str(e)]}
               for code, e in table.items()}
    # A code without an entry of its own shares its concept's (SNOMED <- SCP); the table
    # alone says which (the names are what this function makes).
    graph = ConceptGraph(read_table())
    for edge in graph.edges:
        if edge.relation == "same":
            for member in graph.members(edge.code):
                if member in entries:
                    entries.setdefault(edge.code, entries[member])
    # Names find entries too: every synonym, and the package's SNOMED names.
    by_name = {normalised_name(row["name"]): code
               for code, row in labels.snomed_table().items() if code in entries}
    by_name.update({normalised_name(syn): code for code, e in entries.items()
                    for syn in e.get("synonyms", [])})
    return ClassTexts(entries, by_name)


# ---------------------------------------------------------------- holdouts

def resolve_holdout(holdout, classes, expand=False):
    """The sorted full holdout of ``close_holdout``."""
    return sorted(close_holdout(holdout, classes, expand))


def close_holdout(holdout, classes, expand=False):
    """Close a holdout under the class relations of ``concepts`` (transitively), over every
    class of ``classes`` whatever its count (a rare relative's records would otherwise be
    trained on, and the closure would stop at it).

    Returns ``{code: reason}`` of the full holdout (``ConceptGraph.closure``). Without
    ``expand``, a holdout that would leave a related class among them is refused with a
    message naming the whole closure and why each member belongs; with ``expand`` the closure
    is held out (and logged).
    """
    known = {c["code"] for c in classes}
    unknown = [c for c in holdout if c not in known]
    if unknown:
        raise ECGShardError(f"holdout codes not in the vocabulary: {unknown} (codes are matched "
                            f"exactly, e.g. 'CLBBB' or '164909002')")
    reasons = load().closure(list(holdout), known)
    added = {c: why for c, why in reasons.items() if why is not None}
    if added and not expand:
        raise ECGShardError(
            "held-out classes have synonyms, parents, children or near-siblings left among the "
            "training classes, so they would not be unseen. The closed holdout is "
            f"{sorted(reasons)}; added: " + "; ".join(f"{c} ({why})" for c, why in
                                                       sorted(added.items())) +
            ". Hold out the whole closure (add them, or pass --holdout-expand); "
            "`ecgshard relations CODE` shows why.")
    if added:
        log.warning("holdout closed with related classes: %s",
                    ", ".join(f"{c} ({why})" for c, why in sorted(added.items())))
    return reasons


# A default PTB-XL holdout spanning rhythm (SBRAD), form (LVOLT, the premature-complex family)
# and diagnostic statements (the fascicular blocks, IVCD): classes read off a measurement
# (rate, voltage, QRS width, axis, prematurity). Its counts are judged on training and
# validation folds only, never on a test fold: in folds 1-8 of the real dev tree SBRAD 36,
# LVOLT 21, PVC 71, PAC 28, SVARR 15, LAFB/LPFB 147, IVCD 63 records (the family's rare
# members ride along because the closure needs them). It is closed under ``concepts`` (tested), so
# ``fit --holdout default`` runs without --holdout-expand; LAFB/LPFB is the subclass-level
# name of the fascicular blocks in trees labelled by diagnostic subclass.
DEFAULT_PTBXL_HOLDOUT = ("SBRAD", "LVOLT", "PVC", "PRC(S)", "PAC", "SVARR", "BIGU", "TRIGU",
                         "LAFB", "LPFB", "LAFB/LPFB", "IVCD")


def default_holdout(vocabulary):
    """The codes of ``DEFAULT_PTBXL_HOLDOUT`` that ``vocabulary`` (codes) has."""
    present = set(vocabulary)
    return [c for c in DEFAULT_PTBXL_HOLDOUT if c in present]

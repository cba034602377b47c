"""Relations between class codes across code systems, and what they mean for zero-shot.

The reviewed table ``ecgshard/data/concept_relations.csv`` (explained in ``docs/relations.md``)
says, with evidence per row, which codes name the same concept (``same``), which is a kind of
which (``child_of``) and which share their defining morphology (``near``). From it:

* every target class gets a status against a run's training classes: **seen** (a code of the
  same concept was trained), **related** (an ancestor, descendant or near code was trained) or
  **unseen** (nothing related was trained);
* a holdout is closed transitively: every class related to a held-out class is held out too,
  so that each held-out class is unseen in the run that holds it out.

Codes are matched exactly; SCP, SNOMED CT and CODE-15 codes never collide (tested).
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ECGShardError

RELATIONS = ("same", "child_of", "near")
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


class ConceptGraph:
    """The relation table as a graph over concepts (codes joined by ``same``)."""

    def __init__(self, edges):
        self.edges = list(edges)
        self._root = {}
        for e in self.edges:
            if e.relation == "same":
                self._union(e.code, e.target)
        self._members = {}
        for code in {e.code for e in self.edges} | {e.target for e in self.edges}:
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
        """A representative code of ``code``'s concept (itself when it has no synonym)."""
        return self._find(code)

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
        same = sorted(self.members(target) & trained)
        if same:
            via = same[0]
            why = "trained itself" if via == target else \
                f"same concept as trained {via} ({self.explain(target, via) or 'same code'})"
            return Status("seen", via, why)
        related = self.related(target)
        hits = sorted((c for c in related if c in trained), key=lambda c: (related[c][1], c))
        if hits:
            via = hits[0]
            kind = related[via][0]
            detail = self.explain(target, via) or f"through the {kind} chain of the table"
            return Status("related", via, f"{kind} {via} was trained ({detail})")
        return Status("unseen", None, "no code of the same, a parent, child or near concept "
                                      "was trained")

    def statuses(self, targets, trained):
        return {t: self.status(t, trained) for t in targets}

    # -------------------------------------------------------------- holdouts

    def closure(self, codes, vocabulary):
        """The held-out set that keeps every one of ``codes`` unseen.

        Transitive: a class related to a held-out class is held out, and so on, within
        ``vocabulary`` (the codes that could be trained). Returns ``{code: reason}`` with
        ``reason`` None for the requested codes and "<relation> of <code>" for the others.
        """
        vocabulary = set(vocabulary)
        reasons = {c: None for c in codes}
        todo = list(codes)
        while todo:
            code = todo.pop(0)
            linked = {m: "same concept" for m in self.members(code)}
            linked.update({c: kind for c, (kind, _) in self.related(code).items()})
            for other, kind in sorted(linked.items()):
                if other in vocabulary and other not in reasons:
                    reasons[other] = f"{kind} of {code}"
                    todo.append(other)
        return reasons


def describe(code, trained=None, vocabulary=None, graph=None):
    """Lines for ``ecgshard relations``: a code's concept and relatives with the table's
    evidence; its status against ``trained`` codes; its holdout closure within ``vocabulary``."""
    graph = graph or load()
    lines = [f"{code}"]
    same = sorted(graph.members(code) - {code})
    lines.append(f"  same concept: {', '.join(same) if same else '-'}")
    related = graph.related(code)
    for kind in ("parent", "child", "near"):
        codes = sorted((c for c, (k, _) in related.items() if k == kind),
                       key=lambda c: (related[c][1], c))
        lines.append(f"  {kind}: {', '.join(codes) if codes else '-'}")
    rows = [e for e in graph.edges if e.code in graph.members(code)
            or e.target in graph.members(code)]
    for e in rows:
        lines.append(f"    {e.code} {e.relation} {e.target}: {e.evidence}")
    if trained is not None:
        st = graph.status(code, trained)
        lines.append(f"  status against the run's {len(set(trained))} training classes: "
                     f"{st.group.upper()} - {st.why}")
    if vocabulary is not None:
        closed = graph.closure([code], vocabulary)
        lines.append("  holdout closure in this vocabulary: " + ", ".join(
            c if why is None else f"{c} ({why})" for c, why in closed.items()))
    return lines


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
def load(path=None):
    """The package's relation table (or the one at ``path``) as a ConceptGraph."""
    if path is None:
        text = resources.files("ecgshard").joinpath("data/concept_relations.csv").read_text()
        return ConceptGraph(read_edges(text.splitlines()))
    return ConceptGraph(read_edges(Path(path).read_text().splitlines(), origin=str(path)))

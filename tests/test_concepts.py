"""The concept relation table: statuses (seen / related / unseen) and closed holdouts."""
import csv
import json
from importlib import resources

import pytest
from click.testing import CliRunner

from ecgshard import concepts
from ecgshard.cli import main
from ecgshard.errors import ECGShardError

# PTB-XL 1.0.3's 71 SCP statements, and the diagnostic-subclass codes of subclass-level trees.
SCP71 = ("NDT NST_ DIG LNGQT NORM IMI ASMI LVH LAFB ISC_ IRBBB 1AVB IVCD ISCAL CRBBB CLBBB ILMI "
         "LAO/LAE AMI ALMI ISCIN INJAS LMI ISCIL LPFB ISCAS INJAL ISCLA RVH ANEUR RAO/RAE EL WPW "
         "ILBBB IPLMI ISCAN IPMI SEHYP INJIN INJLA PMI 3AVB INJIL 2AVB ABQRS PVC STD_ VCLVH QWAVE "
         "LOWT NT_ PAC LPR INVT LVOLT HVOLT TAB_ STE_ PRC(S) SR AFIB STACH SARRH SBRAD PACE SVARR "
         "BIGU AFLT SVTAC PSVT TRIGU").split()
SUBCLASS_TREE = ("ABQRS AFIB AFLT AMI BIGU CLBBB CRBBB DIG HVOLT ILBBB IMI INVT IRBBB ISCA ISCI "
                 "ISC_ IVCD LAFB/LPFB LAO/LAE LMI LNGQT LOWT LPR LVH LVOLT NDT NORM NST_ NT_ PAC "
                 "PACE PMI PRC(S) PSVT PVC QWAVE RAO/RAE RVH SARRH SBRAD SEHYP SR STACH STD_ STTC "
                 "SVARR SVTAC TAB_ VCLVH WPW _AVB").split()
CODE15 = ["1dAVb", "RBBB", "LBBB", "SB", "AF", "ST"]


def _snomed_codes():
    text = resources.files("ecgshard").joinpath("data/snomed_ct.csv").read_text()
    return {row["code"] for row in csv.DictReader(text.splitlines())}


def test_code_systems_never_collide_and_every_table_code_is_known():
    snomed = _snomed_codes()
    assert not set(SCP71) & snomed and not set(CODE15) & (snomed | set(SCP71))
    graph = concepts.load()
    known = snomed | set(SCP71) | set(SUBCLASS_TREE) | set(CODE15)
    for e in graph.edges:
        assert e.code in known and e.target in known, e
        assert e.evidence, f"{e.code} {e.relation} {e.target} has no evidence"


@pytest.mark.parametrize("code,group,via", [
    ("164865005", "related", "AMI"),      # myocardial infarction: what IMI/AMI/... became
    ("425419005", "seen", "ISCIN"),       # inferior ischaemia
    ("425623009", "seen", "ISCLA"),       # lateral ischaemia
    ("426434006", "seen", "ISCAN"),       # anterior ischaemia
    ("164884008", "seen", "PVC"),         # ventricular ectopics
    ("253352002", "seen", "LAO/LAE"),     # left atrial abnormality
    ("253339007", "seen", "RAO/RAE"),     # right atrial abnormality
    ("55827005", "seen", "VCLVH"),        # left ventricular high voltage
    ("195060002", "related", "WPW"),      # ventricular pre-excitation
    ("282825002", "related", "AFIB"),     # paroxysmal AF
    ("426749004", "related", "AFIB"),     # chronic AF
    ("314208002", "related", "AFIB"),     # rapid AF
    ("426627000", "related", "SBRAD"),    # bradycardia
    ("3424008", "related", "STACH"),      # tachycardia
    ("6374002", "related", "CLBBB"),      # bundle branch block
    ("233917008", "related", "1AVB"),     # AV block
    ("164896001", "unseen", None),        # ventricular fibrillation: nothing like it in PTB-XL
    ("77867006", "unseen", None),         # short QT
])
def test_challenge_classes_get_the_status_their_concept_has(code, group, via):
    st = concepts.load().status(code, SCP71)
    assert (st.group, st.via) == (group, via), st.why


def test_near_siblings_and_children_are_related_not_seen():
    graph = concepts.load()
    assert graph.status("IRBBB", ["CRBBB"]).group == "related"        # complete vs incomplete
    assert graph.status("713426002", ["CRBBB"]).group == "related"
    assert graph.status("CRBBB", ["CRBBB"]).why == "trained itself"
    assert graph.status("LMI", ["ILMI"]).group == "related"
    assert graph.status("PMI", ["IPMI"]).group == "related"
    assert graph.status("LPR", ["1AVB"]).group == "related"
    assert graph.status("SEHYP", ["LVH"]).group == "related"
    assert graph.status("ISC_", ["ISCAL"]).group == "related"          # through subclass ISCA
    assert graph.status("RBBB", ["CRBBB"]).group == "seen"             # CODE-15
    assert graph.status("SB", ["CRBBB"]).group == "unseen"


def test_holdout_closure_is_transitive_and_named_whole():
    classes = [{"code": c} for c in SCP71]
    # NDT -> NT_ (near) -> TAB_ (parent) -> INVT, LOWT (children): all of it, not one step;
    # EL's findings name flat T waves (LOWT)
    assert concepts.resolve_holdout(["NDT"], classes, expand=True) == \
        ["EL", "INVT", "LOWT", "NDT", "NT_", "TAB_"]
    with pytest.raises(ECGShardError) as err:
        concepts.resolve_holdout(["NDT"], classes)
    message = str(err.value)
    assert "['EL', 'INVT', 'LOWT', 'NDT', 'NT_', 'TAB_']" in message and "TAB_ (parent of NT_)" in message
    mi = set(concepts.resolve_holdout(["LMI"], classes, expand=True))
    assert {"ILMI", "ALMI", "IPLMI", "PMI", "IPMI", "IMI", "AMI"} <= mi
    # ischaemia is ST depression and T inversion; subendocardial injury is ST depression and
    # near the infarctions of its leads: in the 71 statements the closure takes them all
    ischaemia = set(concepts.resolve_holdout(["ISC_"], classes, expand=True))
    assert {"ISC_", "ISCAL", "ISCAS", "ISCLA", "ISCAN", "ISCIN", "ISCIL", "STD_", "INVT",
            "INJAL", "AMI", "IMI", "QWAVE"} <= ischaemia
    assert not {"SR", "NORM", "CRBBB", "LVH", "AFIB"} & ischaemia
    assert concepts.resolve_holdout(["1AVB"], classes, expand=True) == ["1AVB", "LPR"]
    assert concepts.resolve_holdout(["CRBBB"], classes, expand=True) == ["CRBBB", "IRBBB"]
    assert {"LVH", "SEHYP"} <= set(concepts.resolve_holdout(["SEHYP"], classes, expand=True))
    # a held-out code of one system closes over its synonyms in another
    snomed = [{"code": "164909002"}, {"code": "733534002"}, {"code": "426783006"}]
    assert concepts.resolve_holdout(["164909002"], snomed, expand=True) == ["164909002",
                                                                          "733534002"]


@pytest.mark.parametrize("vocabulary", [SCP71, SUBCLASS_TREE])
def test_default_holdout_is_closed(vocabulary):
    classes = [{"code": c} for c in vocabulary]
    default = concepts.default_holdout(vocabulary)
    assert concepts.resolve_holdout(default, classes) == sorted(default)   # no expansion needed


def test_relations_command_explains_a_status(demo_run):
    result = CliRunner().invoke(main, ["relations", "164865005", "LVOLT", "--run", str(demo_run)])
    assert result.exit_code == 0, result.output
    # SNOMED codes come with their names
    assert result.output.startswith("164865005 myocardial infarction\n")
    assert ("child: 164867002 old myocardial infarction, 54329005 anterior myocardial "
            "infarction, 57054005 acute myocardial infarction, AMI, IMI") in result.output
    assert "RELATED - child IMI was trained" in result.output  # the demo trains IMI, not AMI
    assert "LVOLT\n" in result.output and "UNSEEN" in result.output


def test_malformed_relation_rows_are_refused():
    with pytest.raises(ECGShardError, match="row 1"):
        concepts.read_edges(["code,system,relation,targets,evidence", "X,scp,sibling,Y,z"])


@pytest.mark.parametrize("statement", ["Sinus bradycardia", "SINUS BRADYCARDIA.",
                                       "slow sinus rhythm"])
def test_a_statement_that_is_a_known_name_is_that_concept(statement):
    graph = concepts.load()
    assert graph.status("SBRAD", [statement]).group == "seen"          # trained as a statement
    assert graph.status(statement, ["SBRAD"]).group == "seen"          # scored as a statement
    assert graph.status(statement, ["426177001"]).via == "426177001"   # any code system


def test_a_combined_statement_is_related_to_each_finding_it_names():
    graph = concepts.load()
    combined = "Sinus bradycardia with 1st degree A-V block"
    assert graph.status("SBRAD", [combined]).group == "related"
    assert graph.status("1AVB", [combined]).group == "related"          # "A-V" is "AV"
    assert graph.status(combined, ["1AVB"]).group == "related"
    assert graph.status("AFIB", [combined]).group == "unseen"
    # whole words only: "af" (atrial fibrillation) is not in "after"
    assert graph.status("AFIB", ["st elevation after exercise"]).group == "unseen"
    assert graph.status("AFIB", ["rate fast, af suspected"]).group == "related"
    # the machines' wording of an infarct: related to the infarct it names, and through it to
    # that infarct's parents in any code system (SNOMED's myocardial infarction)
    worded = "Inferior infarct, age undetermined"
    assert {graph.status(c, [worded]).group for c in ("IMI", "MI", "164865005")} == {"related"}
    assert graph.status("AMI", [worded]).group in ("related", "unseen")


def test_a_holdout_closes_over_statements_without_cascading_through_combined_ones():
    vocab = ["SBRAD", "1AVB", "sinus bradycardia", "sinus bradycardia with 1st degree a-v block",
             "1st degree a-v block", "atrial fibrillation"]
    closed = concepts.resolve_holdout(["SBRAD"], [{"code": c} for c in vocab], expand=True)
    # the synonym statement and the combined one go; the combined one's other finding stays
    assert closed == sorted(["SBRAD", "sinus bradycardia",
                             "sinus bradycardia with 1st degree a-v block"])
    with pytest.raises(ECGShardError, match="shared name of SBRAD"):
        concepts.resolve_holdout(["SBRAD"], [{"code": c} for c in vocab])


def _findings():
    return {code: e.get("findings", []) for code, e in
            json.loads(resources.files("ecgshard").joinpath("data/class_texts.json")
                       .read_text())["classes"].items()}


def test_a_class_whose_findings_name_another_class_is_related_to_it():
    """The near rule applied to the texts themselves: scanned against every vocabulary's
    names (class_texts synonyms and SNOMED CT names), both ways."""
    graph = concepts.load()
    checked = 0
    for code, findings in _findings().items():
        for finding in findings:
            for other in graph._named_in(concepts.affirmed(finding)):
                if graph.concept(other) == graph.concept(code):
                    continue
                checked += 1
                assert graph.status(code, [other]).group != "unseen", (code, other, finding)
                assert graph.status(other, [code]).group != "unseen", (code, other, finding)
    assert checked > 50


def test_no_finding_negates_a_class_name():
    """A sentence encoder embeds "no pathological Q waves" next to "pathological Q waves": a
    finding that negates a class says it positively or goes."""
    graph = concepts.load()
    for code, findings in _findings().items():
        for finding in findings:
            text = concepts.normalised_name(finding)
            negated = text[len(concepts.affirmed(finding)):]
            assert not graph._named_in(negated), (code, finding)


@pytest.mark.parametrize("code, other, group", [
    ("ISC_", "STD_", "related"), ("ISCA", "INVT", "related"), ("ISCI", "STD_", "related"),
    ("_AVB", "LPR", "related"), ("QWAVE", "AMI", "related"), ("QWAVE", "ABQRS", "related"),
    ("IMI", "QWAVE", "related"), ("251164006", "PRC(S)", "related"),
    ("164895002", "PVC", "related"), ("425856008", "PVC", "related"),
    ("111288001", "PVC", "related"), ("13640000", "PVC", "related"),
    ("365413008", "AMI", "related"), ("418818005", "STE_", "related"),
    ("PAC", "SR", "unseen"), ("1AVB", "SR", "unseen"), ("AMI", "ISC_", "unseen")])
def test_the_families_the_review_found(code, other, group):
    assert concepts.load().status(code, [other]).group == group


def test_statements_in_plural_name_their_findings():
    graph = concepts.load()
    assert graph.status("sinus rhythm with pacs", ["PAC"]).group == "related"
    assert graph.status("PAC", ["Sinus rhythm with PACs/PVCs"]).group == "related"
    assert graph.status("PVC", ["Sinus rhythm with PACs/PVCs"]).group == "related"


@pytest.mark.parametrize("vocabulary", [SCP71, SUBCLASS_TREE])
def test_the_heldout_check_agrees_with_every_closure(vocabulary):
    """Holding out any one class: the codes the held-out check watches (pairwise status
    against the classes kept unseen) are exactly the closed holdout. A class taken along
    because a held-out class's findings name it rides along: its own relatives (ST/T change's
    child LNGQT, when ISCI's text names ST/T change) are not watched, nor held out."""
    from ecgshard import fit

    classes = [{"code": c} for c in vocabulary]
    graph = concepts.load()
    for code in vocabulary:
        reasons = concepts.close_holdout([code], classes, expand=True)
        riders = concepts.riders(reasons)
        assert list(fit.heldout_watch(sorted(reasons), riders, vocabulary)) == sorted(reasons), \
            code
        # a class kept unseen is unseen against every trainable class
        trainable = set(vocabulary) - set(reasons)
        for kept in set(reasons) - riders:
            assert graph.status(kept, trainable).group == "unseen", (code, kept)
    if "STTC" in vocabulary:
        reasons = concepts.close_holdout(["ISCI"], classes, expand=True)
        assert "STTC" in concepts.riders(reasons) and "LNGQT" not in reasons


def test_a_combined_statement_rides_along_without_its_other_findings_being_watched():
    from ecgshard import fit

    vocab = ["sinus bradycardia", "sinus bradycardia with 1st degree av block",
             "1st degree av block", "sinus rhythm"]
    reasons = concepts.close_holdout(["sinus bradycardia"], [{"code": c} for c in vocab],
                                   expand=True)
    assert sorted(reasons) == ["sinus bradycardia", "sinus bradycardia with 1st degree av block"]
    assert concepts.riders(reasons) == {"sinus bradycardia with 1st degree av block"}
    assert list(fit.heldout_watch(sorted(reasons), concepts.riders(reasons), vocab)) == \
        sorted(reasons)


def test_closing_a_closed_holdout_follows_its_riders():
    """Why a run is asked for the drawn codes, not their closure: asked for again, a class
    taken along for a shared name is kept unseen, and its own relatives follow."""
    classes = [{"code": c} for c in SUBCLASS_TREE]
    once = concepts.close_holdout(["ISCI"], classes, expand=True)
    assert "STTC" in concepts.riders(once) and "LNGQT" not in once
    assert "LNGQT" in concepts.resolve_holdout(sorted(once), classes, expand=True)

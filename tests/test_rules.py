"""core.rules: the review rules as data, on synthetic probability arrays."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from core.constants import CLASS_NAMES, NEGATIVE_CLASS, UNFITTED_LOW_CONFIDENCE
from core.model import softmax
from core.rules import (
    FLAG_KINDS,
    LOW_CONFIDENCE,
    MIRROR_DISAGREES,
    NOT_BRAIN_MRI,
    OUTSIDE_TRAINING,
    SEQUENCE_NOT_LEARNED,
    TABLE_SEQUENCES,
    WEAK_NEGATIVE,
    Flag,
    ImageProblem,
    ReviewRules,
    SequenceCoverage,
    answer_cosine,
)

NEG = CLASS_NAMES.index(NEGATIVE_CLASS)
GLIOMA = CLASS_NAMES.index("glioma")
#: Rules with every threshold set: low confidence under 0.7, a cosine floor of 0.99 for "no
#: tumour" answers, outside the training data above a score of 1, not a brain MRI above 3.
#: A class x sequence table shaped like the Kaggle set's: meningiomas and pituitary tumours on
#: contrast T1 only (a few pituitary scans the recogniser could not call T1 or T1C), gliomas on
#: contrast T1, FLAIR, T1 and T2, "no tumour" everywhere but a sliver of FLAIR.
TABLE = {
    "glioma": {"T1": 300, "T1C": 1000, "T1w": 20, "T2": 100, "FLAIR": 400},
    "meningioma": {"T1C": 1300, "T1w": 30},
    "notumor": {"T1": 600, "T1C": 300, "T1w": 50, "T2": 700, "FLAIR": 8},
    "pituitary": {"T1C": 1400, "T1w": 10, "unknown": 40},
}
COVERAGE = SequenceCoverage(TABLE, min_share=0.02)
RULES = ReviewRules(low_confidence=0.7, negative_floor=0.99, outside_score=1.0, reject_score=3.0, coverage=COVERAGE)


def answer(top: int, p_top: float, runner_up: int | None = None, p_runner_up: float | None = None) -> np.ndarray:
    """Probabilities answering class ``top`` at ``p_top``; the rest spread evenly over the other
    classes, or ``p_runner_up`` of it on ``runner_up`` and the remainder evenly on the others."""
    k = len(CLASS_NAMES)
    probs = np.full(k, (1 - p_top) / (k - 1))
    if runner_up is not None:
        probs[:] = (1 - p_top - p_runner_up) / (k - 2)
        probs[runner_up] = p_runner_up
    probs[top] = p_top
    return probs


CLEAN_NEGATIVE = answer(NEG, 0.97)  # the tumour classes evenly unlikely
STANDING_OUT = answer(NEG, 0.97, GLIOMA, 0.028)  # the same "no tumour" probability, a glioma standing out


def kinds(flags: tuple[Flag, ...]) -> list[str]:
    return [flag.kind for flag in flags]


# ---------------------------------------------------------------------- low confidence
def test_low_confidence_flags_answers_below_the_threshold():
    limit = RULES.low_confidence
    probs = np.stack([answer(GLIOMA, limit - 0.01), answer(GLIOMA, limit), answer(GLIOMA, limit + 0.01)])
    masks = RULES.masks(probs)
    assert masks[LOW_CONFIDENCE].tolist() == [True, False, False]
    flags = RULES.flags(probs)
    assert flags[0] == (Flag(LOW_CONFIDENCE, float(probs[0].max()), limit),)
    assert flags[1] == flags[2] == ()


# ---------------------------------------------------------------------- weak "no tumour" answers
def test_answer_cosine_tells_a_clean_negative_from_one_with_a_runner_up():
    clean, standing = answer_cosine(np.stack([CLEAN_NEGATIVE, STANDING_OUT]))
    assert clean == pytest.approx(1.0) and standing < RULES.negative_floor < clean


def test_weak_negative_names_the_runner_up_and_the_numbers():
    """A "no tumour" answer whose runner-up stands out is flagged even at a high probability;
    the flag names the runner-up class and carries the cosine, the floor and the confidence."""
    flags = RULES.flags(np.stack([CLEAN_NEGATIVE, STANDING_OUT]))
    assert flags[0] == ()
    (flag,) = flags[1]
    assert flag == Flag(
        WEAK_NEGATIVE, float(answer_cosine(STANDING_OUT)), RULES.negative_floor, classes=("glioma",),
        confidence=float(STANDING_OUT[NEG]),
    )
    for runner_up in set(range(len(CLASS_NAMES))) - {NEG}:
        (flag,) = RULES.flags(answer(NEG, 0.97, runner_up, 0.028)[None])[0]
        assert flag.classes == (CLASS_NAMES[runner_up],)


def test_weak_negative_applies_to_no_tumour_answers_only():
    """A tumour answer of the same shape is not held to the floor; an answer already flagged
    for low confidence gets that flag alone; rules without a floor never flag a weak negative."""
    tumour = STANDING_OUT.copy()
    tumour[[NEG, GLIOMA]] = tumour[[GLIOMA, NEG]]
    low = answer(NEG, 0.6, GLIOMA, 0.3)
    assert answer_cosine(tumour) == pytest.approx(answer_cosine(STANDING_OUT)) and answer_cosine(low) < RULES.negative_floor
    flags = RULES.flags(np.stack([tumour, low]))
    assert flags[0] == () and kinds(flags[1]) == [LOW_CONFIDENCE]
    without = ReviewRules(low_confidence=0.7)
    assert not without.masks(np.stack([STANDING_OUT, low]))[WEAK_NEGATIVE].any()


# ---------------------------------------------------------------------- the gate and the image checks
def test_not_brain_mri_by_image_problem_and_by_gate_score():
    probs = np.tile(answer(GLIOMA, 0.95), (4, 1))
    problem = ImageProblem("blank", 0.01, 0.04)
    scores = np.array([0.2, RULES.reject_score + 0.5, RULES.reject_score, 5.0])
    flags = RULES.flags(probs, scores, [problem, None, None, ImageProblem("aspect", 3.0, 2.5)])
    assert flags[0] == (Flag(NOT_BRAIN_MRI, problem.value, problem.limit, check="blank"),)
    assert flags[1] == (Flag(NOT_BRAIN_MRI, float(scores[1]), RULES.reject_score, check="gate"),)
    assert kinds(flags[2]) == [OUTSIDE_TRAINING]  # at the reject score, not above it
    assert flags[3] == (Flag(NOT_BRAIN_MRI, 3.0, 2.5, check="aspect"),)  # the image check is named first
    assert RULES.masks(probs, scores)[NOT_BRAIN_MRI].tolist() == [False, True, False, True]


def test_outside_training_between_the_two_thresholds():
    scores = np.array([0.5, RULES.outside_score, 1.5, RULES.reject_score, RULES.reject_score + 0.1])
    probs = np.tile(answer(GLIOMA, 0.95), (len(scores), 1))
    masks = RULES.masks(probs, scores)
    assert masks[OUTSIDE_TRAINING].tolist() == [False, False, True, True, False]
    assert masks[NOT_BRAIN_MRI].tolist() == [False, False, False, False, True]
    assert RULES.flags(probs, scores)[2] == (Flag(OUTSIDE_TRAINING, 1.5, RULES.outside_score),)
    # Without a gate (reject score inf) a high score is outside the training data, never rejected.
    ungated = ReviewRules(low_confidence=0.7)
    assert ungated.masks(probs, scores)[OUTSIDE_TRAINING].tolist() == [False, False, True, True, True]


# ---------------------------------------------------------------------- the mirror image
def test_mirror_disagreement_needs_both_images():
    plain = np.stack([answer(GLIOMA, 0.9), answer(GLIOMA, 0.9)])
    mirror = np.stack([answer(GLIOMA, 0.8), answer(NEG, 0.8)])
    served = (plain + mirror) / 2
    assert RULES.masks(served, plain=plain, mirror=mirror)[MIRROR_DISAGREES].tolist() == [False, True]
    assert RULES.flags(served, plain=plain, mirror=mirror)[1][-1] == Flag(MIRROR_DISAGREES, classes=("glioma", "notumor"))
    assert not RULES.masks(served, plain=plain)[MIRROR_DISAGREES].any()
    assert not RULES.masks(served, mirror=mirror)[MIRROR_DISAGREES].any()


# ---------------------------------------------------------------------- masks and flags together
def test_flags_follow_the_masks_in_the_order_of_the_kinds():
    """On random answers, scores, image problems and mirror images: each scan's flags are the
    kinds its masks raise, in the order of FLAG_KINDS, and every kind is raised somewhere."""
    rng = np.random.default_rng(0)
    n = 400
    plain = softmax(rng.normal(0, 2, (n, len(CLASS_NAMES))))
    mirror = softmax(np.log(plain) + rng.normal(0, 1, plain.shape))
    served = (plain + mirror) / 2
    scores = rng.uniform(0, 4, n)
    problems = [ImageProblem("colour", 0.1, 0.04) if rng.random() < 0.1 else None for _ in range(n)]
    sequences = rng.choice([*TABLE_SEQUENCES, "other", "unknown"], n).tolist()
    masks = RULES.masks(served, scores, problems, plain, mirror, sequences)
    flags = RULES.flags(served, scores, problems, plain, mirror, sequences)
    assert set(masks) == set(FLAG_KINDS) and all(mask.shape == (n,) and mask.dtype == bool for mask in masks.values())
    assert all(masks[kind].any() for kind in FLAG_KINDS)
    for i, scan in enumerate(flags):
        assert kinds(scan) == [kind for kind in FLAG_KINDS if masks[kind][i]]
    # One of "not a brain MRI" and "outside the training data"; one of "low" and "weak".
    assert not (masks[NOT_BRAIN_MRI] & masks[OUTSIDE_TRAINING]).any()
    assert not (masks[LOW_CONFIDENCE] & masks[WEAK_NEGATIVE]).any()
    assert not (masks[NOT_BRAIN_MRI] & masks[SEQUENCE_NOT_LEARNED]).any()


def test_a_scan_flagged_every_way_lists_its_flags_in_order():
    served = np.stack([STANDING_OUT])
    mirror = np.stack([answer(GLIOMA, 0.9)])
    flags = RULES.flags(served, np.array([2.0]), [None], served, mirror)
    assert kinds(flags[0]) == [OUTSIDE_TRAINING, WEAK_NEGATIVE, MIRROR_DISAGREES]
    assert [FLAG_KINDS.index(k) for k in kinds(flags[0])] == sorted(FLAG_KINDS.index(k) for k in kinds(flags[0]))


# ---------------------------------------------------------------------- from a model card
def test_rules_from_a_model_card():
    card = {"class_names": list(CLASS_NAMES), "uncertainty": {"low_confidence_below": 0.65, "notumor_cosine_below": 0.993}}
    rules = ReviewRules.from_card(card, reject_score=1.2)
    assert (rules.low_confidence, rules.negative_floor, rules.reject_score) == (0.65, 0.993, 1.2)
    assert rules.class_names == CLASS_NAMES and rules.outside_score == 1.0


def test_a_card_without_fitted_thresholds_gets_the_defaults():
    """Weights trained without calibration, and cards with the older confidence floor of "no
    tumour" answers (no longer read): the unfitted low-confidence threshold and no floor."""
    for card in ({}, {"uncertainty": {"notumor_confidence_below": 0.95}}):
        rules = ReviewRules.from_card(card)
        assert rules.low_confidence == UNFITTED_LOW_CONFIDENCE and rules.negative_floor is None
        assert rules.reject_score == float("inf")


@pytest.mark.parametrize("low", [0.0, 1.0, 1.01, -0.2])
def test_a_confidence_threshold_outside_0_1_is_refused(low):
    with pytest.raises(ValueError, match=f"low_confidence must be in \\(0, 1\\), got {low!r}"):
        ReviewRules(low_confidence=low)
    with pytest.raises(ValueError, match=repr(low)):
        ReviewRules.from_card({"uncertainty": {"low_confidence_below": low}})


def test_a_reject_score_below_the_outside_score_is_refused():
    with pytest.raises(ValueError, match=r"reject_score \(0.5\) must be at least outside_score \(1.0\)"):
        ReviewRules(reject_score=0.5)


def test_an_unknown_flag_kind_is_refused_naming_the_kinds():
    with pytest.raises(ValueError, match="'unsure'.*not_brain_mri"):
        Flag("unsure")


# ---------------------------------------------------------------------- answer cosine
def test_answer_cosine_is_maxlogit_pnorm_scaled_to_one():
    """The centred log-probabilities' maximum over their 2-norm (MaxLogit-pNorm, p = 2), over
    its largest value sqrt((K - 1) / K); 1 for even alternatives, 0 for a uniform answer."""
    z = np.log(STANDING_OUT) - np.log(STANDING_OUT).mean()
    k = len(CLASS_NAMES)
    assert answer_cosine(STANDING_OUT) == pytest.approx(z.max() / np.linalg.norm(z) / np.sqrt((k - 1) / k))
    assert answer_cosine(np.full(k, 1 / k)) == 0.0
    for p_top in (0.3, 0.6, 0.999):
        assert answer_cosine(answer(GLIOMA, p_top)) == pytest.approx(1.0)


def test_answer_cosine_properties():
    """In [0, 1]; the same at every temperature; blind to the order of the classes; row by row
    over any leading axes."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (50, len(CLASS_NAMES)))
    cosine = answer_cosine(softmax(logits))
    assert ((cosine >= 0) & (cosine <= 1 + 1e-12)).all() and cosine.std() > 0.05
    for temperature in (0.5, 3.0):
        assert answer_cosine(softmax(logits, temperature)) == pytest.approx(cosine)
    for order in itertools.islice(itertools.permutations(range(len(CLASS_NAMES))), 1, None, 5):
        assert answer_cosine(softmax(logits)[:, list(order)]) == pytest.approx(cosine)
    assert answer_cosine(softmax(logits).reshape(5, 10, -1)) == pytest.approx(cosine.reshape(5, 10))
    # A zero probability is clipped, not a NaN.
    assert np.isfinite(answer_cosine(np.array([1.0, 0.0, 0.0, 0.0])))


def test_answer_cosine_needs_two_classes():
    with pytest.raises(ValueError, match=r"two classes.*\(1,\)"):
        answer_cosine(np.array([1.0]))


# ---------------------------------------------------------------------- sequence coverage
@pytest.mark.parametrize(
    ("label", "sequence", "named"),
    [
        # contrast T1: every class learned, nothing flagged
        ("glioma", "T1C", None), ("meningioma", "T1C", None), ("pituitary", "T1C", None), ("notumor", "T1C", None),
        # "T1w" (contrast unknown) counts T1, T1C and T1w cells: covered like contrast T1
        ("meningioma", "T1w", None), ("glioma", "T1w", None),
        # T2: no meningioma or pituitary scan, so no tumour answer can be trusted; "no tumour" was learned
        ("glioma", "T2", ("glioma", "meningioma", "pituitary")),
        ("meningioma", "T2", ("meningioma", "meningioma", "pituitary")),
        ("notumor", "T2", None),
        # non-contrast T1 and FLAIR alike for the tumours; FLAIR barely holds "no tumour" (8 of 1658)
        ("glioma", "T1", ("glioma", "meningioma", "pituitary")),
        ("notumor", "FLAIR", ("notumor", "notumor")),
        # another sequence (diffusion, SWI): no class was learned; an unknown one is not judged
        ("notumor", "other", ("notumor", "notumor")),
        ("pituitary", "other", ("pituitary", "glioma", "meningioma", "pituitary")),
        ("glioma", "unknown", None),
    ],
)
def test_sequence_coverage_names_the_cells_training_barely_covers(label, sequence, named):
    flag = COVERAGE.flag(label, sequence)
    if named is None:
        assert flag is None
        return
    assert flag.kind == SEQUENCE_NOT_LEARNED and flag.classes == named and flag.sequence == sequence
    assert flag.limit == 0.02 and flag.value == min(COVERAGE.share(c, sequence) for c in named[1:]) < 0.02


def test_sequence_coverage_follows_the_table_and_its_share():
    assert COVERAGE.share("glioma", "FLAIR") == pytest.approx(400 / 1820)
    assert COVERAGE.share("notumor", "T1w") == pytest.approx(950 / 1658)
    assert COVERAGE.share("glioma", "unknown") is None
    # A larger share names more cells: glioma on T1 is 17 % of its scans.
    assert COVERAGE.uncovered("T1") == ("meningioma", "pituitary")
    assert SequenceCoverage(TABLE, 0.2).uncovered("T1") == ("glioma", "meningioma", "pituitary")
    # The same table with meningiomas on T2 clears a glioma answer there only with pituitary too.
    wider = {**TABLE, "meningioma": {**TABLE["meningioma"], "T2": 200}}
    assert SequenceCoverage(wider, 0.02).flag("glioma", "T2").classes == ("glioma", "pituitary")
    both = {**wider, "pituitary": {**TABLE["pituitary"], "T2": 200}}
    assert SequenceCoverage(both, 0.02).flag("glioma", "T2") is None


def test_sequence_coverage_is_read_from_the_card_and_checked():
    card = {"class_names": list(CLASS_NAMES), "sequence_table": {"counts": TABLE, "min_share": 0.05}}
    rules = ReviewRules.from_card(card)
    assert rules.coverage == SequenceCoverage(TABLE, 0.05)
    assert ReviewRules.from_card({"class_names": list(CLASS_NAMES)}).coverage is None
    with pytest.raises(ValueError, match="min_share"):
        SequenceCoverage(TABLE, 0.0)
    with pytest.raises(ValueError, match="lacks the classes"):
        SequenceCoverage({"glioma": {}}, 0.02)


def test_sequence_not_learned_needs_a_sequence_and_spares_rejected_scans():
    probs = np.stack([answer(GLIOMA, 0.95), answer(GLIOMA, 0.95), answer(GLIOMA, 0.95)])
    scores = np.array([0.0, 0.0, 5.0])  # the last one is not a brain MRI
    assert not RULES.masks(probs, scores)[SEQUENCE_NOT_LEARNED].any()  # no sequences given
    mask = RULES.masks(probs, scores, sequences=["T1C", "T2", "T2"])[SEQUENCE_NOT_LEARNED]
    assert mask.tolist() == [False, True, False]

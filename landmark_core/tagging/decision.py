"""Tag photos with the recognised landmark and its location.

For each photo: predict, then decide — *tagged* (a landmark the model knows,
recognised with enough probability), *unknown* (the photo does not look like
any landmark the model learned: see :mod:`landmark_core.scoring.openset`), *abstained* (a known
landmark but too unsure which: no tag beats a wrong place), *has_gps* (the
photo already has GPS EXIF and ``overwrite_gps`` is off) or *unreadable*. A
tagged photo whose class has no place (no ``places.csv`` entry) gets the name
only, and the report says so. The outcome is a :class:`TagStatus`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

from ..core.enums import TextEnum
from ..geo.places import Place, display_name, gazetteer, place_for


class TagStatus(TextEnum):
    """What became of a photo; compares equal to its string (tag reports and the API's JSON hold the string)."""
    TAGGED = "tagged"
    UNKNOWN = "unknown"
    ABSTAINED = "abstained"
    HAS_GPS = "has_gps"
    UNREADABLE = "unreadable"
    FAILED = "failed"


STATUSES = tuple(TagStatus)
#: What each outcome means, for reports and the app.
STATUS_MEANINGS = {
    TagStatus.TAGGED: "a landmark the model knows, tagged with its name and place",
    TagStatus.UNKNOWN: "not a landmark this model knows: left untagged",
    TagStatus.ABSTAINED: "looks like a known landmark, but too unsure which: left untagged",
    TagStatus.HAS_GPS: "already has a GPS position: left untagged",
    TagStatus.UNREADABLE: "not a readable image",
    TagStatus.FAILED: "recognised, but the tags could not be written into it (the photo is left as it was)",
}
NO_PLACE_NOTE = "no place for this class: tagged by name only (add it to the dataset's places.csv)"

@dataclass(frozen=True)
class TagDecision:
    status: TagStatus
    prediction: str | None = None
    probability: float | None = None
    place: Place | None = None
    existing_gps: tuple[float, float] | None = None
    error: str | None = None
    familiarity: float | None = None
    gps_note: str = ""  # why the photo's own GPS was not taken as a position (out of range, 0/0)
    review_note: str = ""  # the user's verdict from a review, and what the model said itself

    @property
    def name(self) -> str:
        return display_name(self.prediction, self.place) if self.prediction else ""

    @property
    def description(self) -> str:
        return self.place.description if self.place else self.name

    @property
    def keywords(self) -> list[str]:
        place = self.place
        parts = [self.name] + ([place.region, place.country] if place else []) + ["landmark"]
        return list(dict.fromkeys(part for part in parts if part))

    @property
    def note(self) -> str:
        notes = [self.review_note, NO_PLACE_NOTE if self.status == TagStatus.TAGGED and self.place is None else "",
                 self.gps_note]
        return "; ".join(note for note in notes if note)


def decide(predictions, threshold: float, existing_gps: tuple[float, float] | None = None,
           overwrite_gps: bool = False, *, familiarity: float | None = None,
           familiarity_threshold: float | None = None, places: Mapping[str, Place | None] | None = None) -> TagDecision:
    """The tag for one photo from its ranked predictions (``Prediction`` objects) and its familiarity.

    ``places`` maps class names to places (a run's, with its dataset's
    ``places.csv``); without it the built-in places are used.
    """
    top = predictions[0]
    place = places.get(top.label) if places is not None else place_for(top.label)
    decision = dict(prediction=top.label, probability=top.probability, place=place, existing_gps=existing_gps,
                    familiarity=familiarity)
    if existing_gps and not overwrite_gps:
        return TagDecision(TagStatus.HAS_GPS, **decision)
    if familiarity_threshold is not None and familiarity is not None and familiarity < familiarity_threshold:
        return TagDecision(TagStatus.UNKNOWN, **decision)
    if top.probability < threshold:
        return TagDecision(TagStatus.ABSTAINED, **decision)
    return TagDecision(TagStatus.TAGGED, **decision)


def decide_for(predictor, source, *, threshold: float | None = None, existing_gps=None,
               overwrite_gps: bool = False, open_set: bool = True, assessment=None) -> TagDecision:
    """Predict one photo with a :class:`~.predict.Predictor` (or use its ``assessment``) and decide at the run's
    default thresholds (``threshold`` overrides the probability threshold; ``open_set=False`` skips the
    familiarity check)."""
    assessment = assessment or predictor.assess(source, top_k=1)
    return decide(assessment.predictions, predictor.probability_threshold if threshold is None else threshold,
                  existing_gps, overwrite_gps, familiarity=assessment.familiarity,
                  familiarity_threshold=predictor.familiarity_threshold if open_set else None,
                  places=predictor.places)


def reviewed_decision(decision: TagDecision, verdict: str, class_name: str | None, predictor) -> TagDecision:
    """A reviewer's ``verdict`` ("confirmed", "corrected": the photo shows ``class_name``; None: not a landmark)
    over the model's ``decision``, which goes into the note so the report still shows what the model thinks."""
    model_view = f"the model says {decision.name} ({decision.probability:.2f})" if decision.prediction else ""
    if class_name is None:
        return replace(decision, status=TagStatus.UNKNOWN, review_note="; ".join(filter(None, ["not a landmark (reviewed)",
                                                                                      model_view])))
    place = (predictor.places.get(class_name) if class_name in predictor.classes
             else gazetteer(predictor.run.dataset).place_for(class_name))
    return replace(decision, status=TagStatus.TAGGED, prediction=class_name, place=place,
                   probability=decision.probability if class_name == decision.prediction else None,
                   review_note="; ".join(filter(None, [f"{verdict} by review", model_view])))

"""The stages by name: the only module that imports every stage (stages never import each other)."""

from __future__ import annotations

from diffaudit.stages.augmentation import AugmentationStage
from diffaudit.stages.balance import BalanceStage
from diffaudit.stages.base import Stage
from diffaudit.stages.distribution import DistributionStage
from diffaudit.stages.features import FeaturesStage
from diffaudit.stages.guided import GuidedStage
from diffaudit.stages.irs import IRSStage
from diffaudit.stages.membership import MembershipStage
from diffaudit.stages.memorization import MemorizationStage
from diffaudit.stages.novelty import NoveltyStage
from diffaudit.stages.sample import SampleStage

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        SampleStage(),
        FeaturesStage(),
        GuidedStage(),
        MemorizationStage(),
        MembershipStage(),
        NoveltyStage(),
        IRSStage(),
        BalanceStage(),
        DistributionStage(),
        AugmentationStage(),
    )
}


def get_stage(name: str) -> Stage:
    """The stage called `name` (a KeyError for an unknown name: specs only hold known ones)."""
    return STAGES[name]

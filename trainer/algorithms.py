"""Every algorithm registry in one place (for `tandem algorithms` and recipe checks).

Entries live with their kind: advantage estimators in trainer/advantages.py; policy
and critic losses, KL estimators and loss-aggregation modes in trainer/losses.py; learning-rate
schedules in trainer/schedules.py. Each entry carries its description and, where it has them,
its paper, its options record and its traits (what it trains, what it needs).
"""

from __future__ import annotations

from trainer.advantages import ADVANTAGES
from trainer.losses import AGGREGATIONS, KL_ESTIMATORS, LOSSES
from trainer.schedules import SCHEDULES

REGISTRIES = (ADVANTAGES, LOSSES, AGGREGATIONS, KL_ESTIMATORS, SCHEDULES)

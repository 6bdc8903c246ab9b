"""Every algorithm registry in one place (for `tandem algorithms` and recipe checks).

Entries live with their kind: advantage estimators in trainer/advantages.py; policy
and critic losses, KL estimators and loss-aggregation modes in trainer/losses.py.
"""

from __future__ import annotations

from trainer.advantages import ADVANTAGES
from trainer.losses import AGGREGATIONS, KL_ESTIMATORS, LOSSES

REGISTRIES = (ADVANTAGES, LOSSES, AGGREGATIONS, KL_ESTIMATORS)

# The paper behind each name (the README's algorithm table is checked against this).
PAPERS = {
    "grpo": "Shao et al. 2024, DeepSeekMath (GRPO); Liu et al. 2025, Understanding R1-Zero-Like Training (Dr.GRPO)",
    "rloo": "Ahmadian et al. 2024, Back to Basics: REINFORCE-style optimization (RLOO)",
    "reinforce_pp": "Hu 2025, REINFORCE++",
    "gae": "Schulman et al. 2016, High-Dimensional Continuous Control Using GAE",
    "ppo_clip": "Schulman et al. 2017 (PPO); Yu et al. 2025 DAPO (clip-higher); Ye et al. 2020 (dual-clip)",
    "gspo": "Zheng et al. 2025, Group Sequence Policy Optimization",
    "decoupled_ppo": "Hilton et al. 2022, Batch size-invariance for policy optimization (decoupled PPO); "
                     "Fu et al. 2025, AReaL (asynchronous RL)",
    "tis": "Yao et al. 2025, Your Efficient RL Framework Secretly Brings You Off-Policy RL Training (TIS); "
           "Espeholt et al. 2018, IMPALA (truncated importance weights)",
    "value_clip": "Schulman et al. 2017 (PPO value clipping)",
    "token-mean": "Yu et al. 2025, DAPO (token-level loss)",
    "seq-mean-token-mean": "Shao et al. 2024, DeepSeekMath (GRPO objective)",
    "seq-mean-token-sum": "Liu et al. 2025, Dr.GRPO",
    "k1": "Schulman 2020, Approximating KL Divergence",
    "k2": "Schulman 2020, Approximating KL Divergence",
    "k3": "Schulman 2020, Approximating KL Divergence",
    "k3_clamp": "Schulman 2020; clamped low-variance form",
    "sft": "supervised fine-tuning (token NLL on completions); Ouyang et al. 2022 (InstructGPT, SFT stage)",
    "bradley_terry": "Bradley & Terry 1952; Ouyang et al. 2022 (reward model); Touvron et al. 2023 (Llama 2 margin)",
    "dpo": "Rafailov et al. 2023, Direct Preference Optimization",
    "cdpo": "Mitchell 2023, A note on DPO with noisy preferences (conservative DPO)",
    "ipo": "Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences (IPO)",
    "simpo": "Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward",
    "orpo": "Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model",
}

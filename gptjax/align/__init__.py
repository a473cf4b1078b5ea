"""Post-training: chat template, SFT, reward models, PPO / GRPO / RLOO, DPO, best-of-N and RLAIF."""

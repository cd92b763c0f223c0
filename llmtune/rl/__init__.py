"""Online RL (grpo, rloo): the reward functions a recipe's `rewards:` names, and the checks around them."""

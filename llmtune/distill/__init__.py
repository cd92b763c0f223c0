"""Knowledge distillation: the loss (losses.py), the intermediate-layer term with its learned projections
(hidden.py), the teacher/student tokenizer check (tokenizers.py) and the Trainer that runs both models on
one batch (trainer.py). The stage that puts them together is stages/distill.py."""

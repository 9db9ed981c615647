"""The prune stage: structured channel pruning of a distilled student, fine-tuned with KD."""

"""The two splits every report, table, plot and results file names, in one vocabulary.

validation: samples held back from training, used to choose the epoch (distill's
    `--val-fraction` of the cache's train section, or a sweep's own validation split);
test: measured once, never used to choose (the cache's eval section: the data's test split,
    or its `--holdout`).

bench scores every model on the test split; distill chooses its epoch on the validation split
unless `--val-fraction 0` makes it choose on the test split, which its reports then say.
"""

from __future__ import annotations

VALIDATION = "validation"
TEST = "test"
MEANING = {
    VALIDATION: "held back from training, used to choose the epoch",
    TEST: "measured once, never used to choose",
}


def described(split: str) -> str:
    """'test split (measured once, never used to choose)'."""
    return f"{split} split ({MEANING[split]})"

"""The shape every model card must have (after setfit's tests/model_card_pattern.py): metadata the Hub renders
(one model-index result per evaluated split), then the sections a reader looks for, in order."""

import re

ANY_LINES = r"(?:.*\n)*?"
MODEL_CARD_PATTERN = re.compile(
    "".join([
        r"\A---\n",
        ANY_LINES, r"library_name: transformers\n",
        ANY_LINES, r"pipeline_tag: image-classification\n",
        ANY_LINES, r"model-index:\n",
        r"- name: (?P<name>\S+)\n",
        r" +results:\n",
        ANY_LINES, r" +type: image-classification\n",
        ANY_LINES, r" +split: validation\n",
        r" +metrics:\n",
        r" +- type: accuracy\n",
        r" +value: (?P<accuracy>[0-9.]+)\n",
        r" +name: Top-1 accuracy\n",
        ANY_LINES, r"---\n\n",
        r"# (?P=name)\n",
        ANY_LINES, r"## Quick start\n",
        ANY_LINES, r'classifier = pipeline\("image-classification", model="(?P<repo>[^"]+)"\)\n',
        ANY_LINES, r"## Intended use\n",
        ANY_LINES, r"## Evaluation results\n",
        ANY_LINES, r"### Validation split\n",
        ANY_LINES, r"\| Top-1 accuracy \| (?P<table_accuracy>[0-9.]+) \|\n",
        ANY_LINES, r"!\[Confusion matrix, validation split\]\(report/validation/confusion_matrix_normalized\.png\)\n",
        ANY_LINES, r"\| class \| precision \| recall \| F1 \| images \|\n",
        ANY_LINES, r"## Classes\n",
        ANY_LINES, r"## Training procedure\n",
        ANY_LINES, r"### Hyperparameters\n",
        ANY_LINES, r"\| learning_rate \| (?P<learning_rate>\S+) \|\n",
        ANY_LINES, r"\| head_learning_rate \| (?P<head_learning_rate>[^|]+) \|\n",
        ANY_LINES, r"## Limitations\n",
        ANY_LINES, r"- \*\*Domain shift:\*\*",
        ANY_LINES, r"- \*\*Robustness:\*\*",
        ANY_LINES, r"- \*\*Size and compute:\*\*",
        ANY_LINES, r"- \*\*Bias:\*\*",
        ANY_LINES, r"## Framework versions\n",
        ANY_LINES, r"- transformers \d",
    ])
)

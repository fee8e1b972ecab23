"""Prompt functions for the offline task configs, with the semantics of lm-eval's built-ins.

lm-eval 0.4.13 scores these tasks as ``multiple_choice`` with target delimiter " ":
- ARC: context "Question: {question}\\nAnswer:", one continuation " {choice}" per choice, the
  gold index being the answerKey's position among the labels;
- PIQA: context "Question: {goal}\\nAnswer:", continuations " {sol1}" and " {sol2}";
- WinoGrande ("partial evaluation"): one context per option, the sentence up to the blank with
  the option in it, and a single shared continuation " {rest of the sentence after the blank,
  stripped}"; doc_to_text returns the gold *context* index, which tells lm-eval the choices are
  contexts.
acc picks the largest summed log-likelihood, acc_norm the largest per character of the choice.
"""

from __future__ import annotations

from typing import Any

_WINOGRANDE_GOLD = {"1": 0, "2": 1}


def arc_text(doc: dict[str, Any]) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def arc_choices(doc: dict[str, Any]) -> list[str]:
    return list(doc["choices"]["text"])


def arc_gold(doc: dict[str, Any]) -> int:
    return list(doc["choices"]["label"]).index(doc["answerKey"])


def piqa_text(doc: dict[str, Any]) -> str:
    return f"Question: {doc['goal']}\nAnswer:"


def piqa_choices(doc: dict[str, Any]) -> list[str]:
    return [doc["sol1"], doc["sol2"]]


def piqa_gold(doc: dict[str, Any]) -> int:
    return int(doc["label"])


def winogrande_gold(doc: dict[str, Any]) -> int:
    """Index of the correct context (lm-eval reads an int from doc_to_text as that)."""
    return _WINOGRANDE_GOLD[doc["answer"]]


def winogrande_contexts(doc: dict[str, Any]) -> list[str]:
    """The sentence up to the blank, once per option filled in."""
    head = doc["sentence"][: doc["sentence"].index("_")]
    return [head + doc["option1"], head + doc["option2"]]


def winogrande_continuation(doc: dict[str, Any]) -> str:
    """What follows the blank, stripped (lm-eval puts the delimiter " " in front)."""
    sentence = doc["sentence"]
    return sentence[sentence.index("_") + 1 :].strip()

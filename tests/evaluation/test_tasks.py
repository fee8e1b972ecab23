"""Zero-shot tasks: the original files read right, lm-eval's built-in prompts and metrics,
accuracies equal to a hand computation with the model, clear errors, `eval --tasks`."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import lm_eval
import pytest
from helpers import save_tiny_model, write_calibration
from lm_eval.api.model import LM
from lm_eval.evaluator import evaluate
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml
from task_data import (
    ARC_EASY,
    PIQA,
    PIQA_LABELS,
    WINOGRANDE,
    hand_loglikelihood,
    tiny_spiking,
    write_task_data,
)
from transformers.utils import logging as hf_logging

from phasecode.cli import main
from phasecode.errors import PhasecodeError
from phasecode.evaluation import tasks as zero_shot
from phasecode.evaluation.tasks import TASKS, check_tasks, load_docs, run_lm_eval, score_tasks
from phasecode.evaluation.tasks.ann_scores import task_inputs
from phasecode.evaluation.tasks.data import hf_dataset

BUILTIN = Path(lm_eval.__file__).parent / "tasks"


@pytest.fixture(scope="module", autouse=True)
def _restore_progress_bars():
    """main(--quiet) turns transformers' progress bars off process-wide; give them back."""
    bars = hf_logging.is_progress_bar_enabled()
    yield
    if bars:
        hf_logging.enable_progress_bar()


@pytest.fixture(autouse=True)
def task_data(tmp_path_factory, monkeypatch) -> Path:
    """Every test reads the tiny data files (never ../shared/data)."""
    root = tmp_path_factory.getbasetemp() / "task_data"
    if not root.exists():
        write_task_data(root)
    monkeypatch.setenv("PHASECODE_DATA", str(root))
    return root


@pytest.fixture(scope="module")
def spiking(tmp_path_factory, tiny_tokenizer):
    calibration = write_calibration(tmp_path_factory.mktemp("calibration") / "calib.jsonl")
    return tiny_spiking(tiny_tokenizer, calibration)


class Recorder(LM):
    """Records every loglikelihood request; answers -sqrt(len(continuation)) (+ a per-context
    offset), so that acc (shortest choice) and acc_norm (longest choice) disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: dict[str, list[tuple[str, str]]] = {}

    def loglikelihood(self, requests):
        for request in requests:
            self.requests.setdefault(request.task_name, []).append(request.args)
        return [(-(len(r.args[1]) ** 0.5) - 0.01 * len(r.args[0]), False) for r in requests]

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests):
        raise NotImplementedError


# ----------------------------------------------------------------------------- the files


def test_readers_give_the_hf_schema_of_lm_evals_datasets():
    arc = load_docs("arc_easy")
    assert arc[0] == {
        "id": "e1",
        "question": "What melts ice?",
        "choices": {
            "text": ["heat", "a cold wind", "salt water", "rock"],
            "label": ["A", "B", "C", "D"],
        },
        "answerKey": "A",
    }
    assert [len(doc["choices"]["text"]) for doc in arc] == [4, 3, 5]
    piqa = load_docs("piqa")
    assert [doc["label"] for doc in piqa] == PIQA_LABELS
    assert piqa[1] == {"goal": "Dry hair", "sol1": "use ice", "sol2": "use a towel", "label": 1}
    wino = load_docs("winogrande")
    assert [doc["answer"] for doc in wino] == ["1", "1", "2"]
    assert set(wino[0]) == {"sentence", "option1", "option2", "answer"}
    assert list(hf_dataset("winogrande")) == ["validation"]
    assert list(hf_dataset("arc_challenge")) == ["test"]


def test_prompts_are_those_of_lm_evals_builtin_tasks():
    """Context/continuation pairs exactly as lm-eval 0.4.13's arc_easy, piqa, winogrande."""
    recorder = Recorder()
    run_lm_eval(recorder, ["arc_easy", "piqa", "winogrande"], limit=None, progress=False)
    arc = recorder.requests["phasecode_arc_easy"]
    assert arc[:4] == [
        ("Question: What melts ice?\nAnswer:", " heat"),
        ("Question: What melts ice?\nAnswer:", " a cold wind"),
        ("Question: What melts ice?\nAnswer:", " salt water"),
        ("Question: What melts ice?\nAnswer:", " rock"),
    ]
    assert len(arc) == 4 + 3 + 5
    assert recorder.requests["phasecode_piqa"][2:4] == [
        ("Question: Dry hair\nAnswer:", " use ice"),
        ("Question: Dry hair\nAnswer:", " use a towel"),
    ]
    assert recorder.requests["phasecode_winogrande"] == [
        ("Ann beat Bo so Ann", " was glad."),
        ("Ann beat Bo so Bo", " was glad."),
        ("The cup fit in the box because the cup", " was small."),
        ("The cup fit in the box because the box", " was small."),
        ("Sky", " is red."),
        ("Blood", " is red."),
    ]


@pytest.mark.parametrize(
    "task, builtin",
    [
        ("arc_easy", "arc/arc_easy.yaml"),
        ("piqa", "piqa/piqa.yaml"),
        ("winogrande", "winogrande/default.yaml"),
    ],
)
def test_same_requests_and_metrics_as_the_builtin_config(task, builtin):
    """lm-eval's own YAML for the task, fed our documents instead of the hub dataset, asks
    for the same loglikelihoods and reports the same acc / acc_norm."""
    config = load_yaml(BUILTIN / builtin, resolve_func=True)
    config.update(
        task=f"builtin_{task}",
        custom_dataset=lambda **_: hf_dataset(task),
        training_split=None,
        validation_split="validation" if task != "arc_easy" else None,
        num_fewshot=0,
    )
    config.pop("tag", None)
    ours, theirs = Recorder(), Recorder()
    mine = run_lm_eval(ours, [task], limit=None, progress=False)
    with contextlib.redirect_stderr(io.StringIO()):
        reference = evaluate(theirs, TaskManager(include_defaults=False).load([config]))
    assert ours.requests[f"phasecode_{task}"] == theirs.requests[f"builtin_{task}"]
    mine, reference = mine["results"][f"phasecode_{task}"], reference["results"][f"builtin_{task}"]
    for metric in ("acc,none", "acc_norm,none", "acc_stderr,none"):
        assert mine.get(metric) == reference.get(metric), metric
    assert "acc,none" in mine and ("acc_norm,none" in mine) == (task != "winogrande")


def test_acc_and_acc_norm_follow_lm_evals_definitions():
    """With the recorder's answers: acc takes the largest summed log-likelihood, acc_norm the
    largest per character of the choice (lm-eval's definitions), on every document."""
    results = run_lm_eval(Recorder(), ["arc_easy", "piqa"], limit=None, progress=False)

    def score(choices: list[str], gold: int, norm: bool) -> float:
        ll = [-(len(" " + c) ** 0.5) for c in choices]  # the context is shared: offset drops
        key = [v / len(c) if norm else v for v, c in zip(ll, choices, strict=True)]
        return float(key.index(max(key)) == gold)

    arc = [(d["question"]["choices"], d["answerKey"]) for d in ARC_EASY]
    arc = [([c["text"] for c in cs], [c["label"] for c in cs].index(k)) for cs, k in arc]
    piqa = [([d["sol1"], d["sol2"]], g) for d, g in zip(PIQA, PIQA_LABELS, strict=True)]
    for name, docs in (("phasecode_arc_easy", arc), ("phasecode_piqa", piqa)):
        for metric, norm in (("acc", False), ("acc_norm", True)):
            expected = sum(score(c, g, norm) for c, g in docs) / len(docs)
            assert results["results"][name][f"{metric},none"] == pytest.approx(expected)
    # the recorder was built to make them differ: the test checks two things, not one twice
    assert results["results"]["phasecode_arc_easy"]["acc,none"] != pytest.approx(
        results["results"]["phasecode_arc_easy"]["acc_norm,none"]
    )


# ----------------------------------------------------------------------------- with the model


def _hand_accuracy(spiking, surgery, task: str) -> tuple[float, list[float]]:
    """Accuracy in percent (the paper's metric) from hand-computed log-likelihoods, and the
    margins between the best and second-best choice (to rule out near-ties)."""
    hits, margins = [], []
    for doc in load_docs(task):
        if task == "winogrande":
            head, tail = doc["sentence"].split("_")
            pairs = [(head + doc[o], " " + tail.strip()) for o in ("option1", "option2")]
            gold, lengths = int(doc["answer"]) - 1, [1, 1]
        else:
            if task == "piqa":
                question, choices = doc["goal"], [doc["sol1"], doc["sol2"]]
                gold = doc["label"]
            else:
                question, choices = doc["question"], doc["choices"]["text"]
                gold = doc["choices"]["label"].index(doc["answerKey"])
            pairs = [(f"Question: {question}\nAnswer:", " " + c) for c in choices]
            lengths = [len(c) for c in choices]  # acc_norm: per character of the choice
        ll = [hand_loglikelihood(spiking, surgery(), *pair)[0] for pair in pairs]
        key = sorted(v / n for v, n in zip(ll, lengths, strict=True))
        margins.append(key[-1] - key[-2])
        best = max(range(len(ll)), key=lambda i: ll[i] / lengths[i])
        hits.append(float(best == gold))
    return 100 * sum(hits) / len(hits), margins


def test_score_tasks_equals_a_hand_computation(spiking):
    report = score_tasks(spiking, list(TASKS), batch_size=3, progress=False)
    assert list(report) == list(TASKS)
    for task in TASKS:
        row = report[task]
        assert set(row) == {"ann", "snn", "n", "metric", "ann_stderr", "snn_stderr", "ann_source"}
        assert row["ann_source"] == "measured"
        assert row["metric"] == ("acc" if task == "winogrande" else "acc_norm")
        assert row["n"] == len(load_docs(task))
        for mode, surgery in (("ann", spiking.analog), ("snn", spiking.coded)):
            expected, margins = _hand_accuracy(spiking, surgery, task)
            assert min(margins) > 1e-4, "near-tie in the fixture: the comparison would be fragile"
            assert row[mode] == pytest.approx(expected), (task, mode)
            if row["n"] > 1:  # lm-eval's standard error of the mean of 0/1 hits
                hits = expected / 100
                se = (hits * (1 - hits) * row["n"] / (row["n"] - 1) / row["n"]) ** 0.5
                assert row[f"{mode}_stderr"] == pytest.approx(100 * se)
            else:
                assert row[f"{mode}_stderr"] is None


def test_the_anns_accuracy_is_read_back_and_the_snn_measured(
    spiking, monkeypatch, tmp_path, task_data
):
    monkeypatch.setenv("PHASECODE_SCORE_CACHE", "1")
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path))
    runs = []
    run = zero_shot.run_lm_eval
    monkeypatch.setattr(
        zero_shot, "run_lm_eval", lambda lm, *a: runs.append(lm.analog) or run(lm, *a)
    )
    first = score_tasks(spiking, ["arc_easy", "piqa"], limit=3, progress=False)
    second = score_tasks(spiking, ["arc_easy", "piqa"], limit=3, progress=False)
    assert runs == [True, False, False]
    for task in ("arc_easy", "piqa"):
        assert (first[task]["ann_source"], second[task]["ann_source"]) == ("measured", "cache")
        assert {k: v for k, v in second[task].items() if k != "ann_source"} == {
            k: v for k, v in first[task].items() if k != "ann_source"
        }
    score_tasks(spiking, ["arc_easy", "piqa"], limit=2, progress=False)  # another limit
    assert runs[3:] == [True, False]
    key = task_inputs(spiking, ["piqa"], 3, 16)
    copy = tmp_path / "data"
    shutil.copytree(task_data, copy)
    monkeypatch.setenv("PHASECODE_DATA", str(copy))
    assert task_inputs(spiking, ["piqa"], 3, 16) == key
    labels = copy / "piqa" / "dev-labels.lst"
    labels.write_text("".join(f"{1 - int(x)}\n" for x in labels.read_text().split()))
    assert task_inputs(spiking, ["piqa"], 3, 16) != key
    monkeypatch.setenv("PHASECODE_SCORE_CACHE", "0")
    assert (
        score_tasks(spiking, ["arc_easy"], limit=3, progress=False)["arc_easy"]["ann_source"]
        == "measured"
    )


def test_limit_takes_the_first_examples(spiking):
    report = score_tasks(spiking, ["arc_easy", "winogrande"], limit=2, progress=False)
    assert report["arc_easy"]["n"] == 2 and report["winogrande"]["n"] == 2


# ----------------------------------------------------------------------------- errors


def test_unknown_task_lists_the_available_ones(spiking):
    with pytest.raises(PhasecodeError, match="unknown task 'hellaswag'") as info:
        score_tasks(spiking, ["arc_easy", "hellaswag"], progress=False)
    assert all(name in str(info.value) for name in TASKS)
    with pytest.raises(PhasecodeError, match="no task given"):
        check_tasks([])
    with pytest.raises(PhasecodeError, match="limit must be >= 1"):
        check_tasks(["piqa"], limit=0)


def test_missing_data_file_is_named(task_data, monkeypatch, tmp_path):
    monkeypatch.setenv("PHASECODE_DATA", str(tmp_path))
    with pytest.raises(PhasecodeError, match="task data file not found: .*ARC-Easy-Test.jsonl"):
        check_tasks(["arc_easy"])


def _broken(tmp_path: Path, relative: str, content: str) -> Path:
    root = write_task_data(tmp_path / "data")
    (root / relative).write_text(content)
    return root


@pytest.mark.parametrize(
    "task, relative, content, needles",
    [
        ("arc_easy", "arc/ARC-Easy-Test.jsonl", '{"id": "x", "question": {"choices": []}}\n',
         ["ARC-Easy-Test.jsonl:1", "missing field 'stem'", '"answerKey"']),
        ("arc_challenge", "arc/ARC-Challenge-Test.jsonl",
         json.dumps({"id": "x", "question": {"stem": "q", "choices": [
             {"text": "a", "label": "A"}, {"text": "b", "label": "B"}]}, "answerKey": "C"}),
         ["ARC-Challenge-Test.jsonl:1", "answerKey is not one of the labels"]),
        ("arc_easy", "arc/ARC-Easy-Test.jsonl", "not json\n",
         ["ARC-Easy-Test.jsonl:1", "expected one JSON object per line"]),
        ("piqa", "piqa/dev-labels.lst", "0\n1\n",
         ["dev-labels.lst", "2 labels for 3 documents", "0/1 per line"]),
        ("piqa", "piqa/dev-labels.lst", "0\n2\n1\n", ["dev-labels.lst:2", "label '2'"]),
        ("winogrande", "winogrande/dev.jsonl",
         "".join(json.dumps(row) + "\n" for row in [
             {"sentence": "no blank", "option1": "a", "option2": "b"}, *WINOGRANDE[1:]]),
         ["dev.jsonl:1", 'no single "_" blank', "1/2 per line"]),
        ("winogrande", "winogrande/dev-labels.lst", "1\n2\n2\n",
         ["dev.jsonl:2", "answer disagrees with labels"]),
    ],
)  # fmt: skip
def test_malformed_data_names_the_file_and_the_format(
    tmp_path, monkeypatch, task, relative, content, needles
):
    monkeypatch.setenv("PHASECODE_DATA", str(_broken(tmp_path, relative, content)))
    with pytest.raises(PhasecodeError) as info:
        check_tasks([task])
    for needle in needles:
        assert needle in str(info.value)


# ----------------------------------------------------------------------------- phasecode eval


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_tokenizer):
    """A saved tiny LLaMA converted by `phasecode convert` (LAS, T=4)."""
    root = tmp_path_factory.mktemp("eval_tasks")
    save_tiny_model(root / "model", tiny_tokenizer)
    calibration = write_calibration(root / "calib.jsonl")
    argv = ["--quiet", "convert", "--model", str(root / "model"), "--calibration", str(calibration)]
    argv += ["--samples", "32", "--sequences", "4", "--seq-len", "32", "-T", "4", "--grains", "1"]
    argv += ["--method", "las", "--out", str(root / "art")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    return root / "art"


def test_eval_tasks_json(artifact, tmp_path, capsys):
    out = tmp_path / "eval.json"
    argv = ["eval", str(artifact), "--ppl", "", "--tasks", "arc_easy,winogrande", "--limit", "2"]
    assert main([*argv, "--quiet", "--json", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    report = json.loads(out.read_text())
    assert report["ppl"] == {}
    assert list(report["tasks"]) == ["arc_easy", "winogrande"]
    for task, row in report["tasks"].items():
        assert set(row) == {"ann", "snn", "n", "metric", "ann_stderr", "snn_stderr", "ann_source"}
        assert row["ann_source"] == "measured"
        assert row["n"] == 2 and 0 <= row["ann"] <= 100 and 0 <= row["snn"] <= 100
        assert f"{task:<14}{2:>6}  {row['metric']:<9}{row['ann']:>11.2f}" in printed.out
    for mode in ("ann", "snn"):
        rows = report["tasks"].values()
        assert report["tasks_average"][mode] == pytest.approx(sum(r[mode] for r in rows) / 2)
    assert "average" in printed.out and report["seconds"]["tasks"] > 0


def test_eval_ppl_and_tasks_together(artifact, tmp_path, capsys):
    text = tmp_path / "eval.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 4)
    out = tmp_path / "eval.json"
    argv = ["eval", str(artifact), "--ppl", "", "--text", str(text), "--seq-len", "16"]
    argv += ["--tasks", "piqa", "--limit", "1", "--quiet", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert list(report["ppl"]) == [str(text)] and report["ppl"][str(text)]["windows"] == 1
    assert report["tasks"]["piqa"]["n"] == 1
    assert "SNN/ANN" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--ppl", ""], "nothing to evaluate"),
        (["--ppl", "", "--tasks", "arc_easy,mmlu"], "unknown task 'mmlu'; choose from arc_easy"),
        (["--ppl", "", "--tasks", "piqa", "--limit", "0"], "limit must be >= 1"),
        (["--ppl", "", "--tasks", "piqa", "--task-batch-size", "0"], "--task-batch-size"),
    ],
)
def test_eval_bad_requests_are_one_line_errors(artifact, capsys, extra, needle):
    assert main(["eval", str(artifact), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("phasecode: error: ") and needle in err[0]

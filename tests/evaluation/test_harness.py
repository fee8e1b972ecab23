"""PhasecodeLM, the lm-eval model: the same log-likelihoods as a direct forward after the
prefix (batched, padded, truncated), ANN vs SNN, rolling and greedy requests, model args,
registration and the `phasecode-lm-eval` wrapper."""

from __future__ import annotations

import sys

import lm_eval
import pytest
import torch
from helpers import write_calibration
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model, model_registry
from task_data import hand_loglikelihood, tiny_spiking, write_task_data

from phasecode.errors import PhasecodeError
from phasecode.evaluation import harness
from phasecode.evaluation.harness import PhasecodeLM

REQUESTS = [
    ("Question: What melts ice?\nAnswer:", " heat"),
    ("Question: What melts ice?\nAnswer:", " a cold wind"),
    ("Ann beat Bo so Ann", " was glad."),
    ("x", " y"),
    ("A much longer context that needs padding in its batch", " ok"),
]


@pytest.fixture(scope="module")
def spiking(tmp_path_factory, tiny_tokenizer):
    calibration = write_calibration(tmp_path_factory.mktemp("calibration") / "calib.jsonl")
    return tiny_spiking(tiny_tokenizer, calibration)


def _instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def _lm(spiking, analog: bool, batch_size: int = 2) -> PhasecodeLM:
    return PhasecodeLM(spiking=spiking, analog=analog, batch_size=batch_size, progress=False)


@pytest.mark.parametrize("analog", [True, False])
def test_loglikelihood_equals_a_direct_forward_after_the_prefix(spiking, analog):
    """Batches of 2 (so rows are sorted, padded and put back in order) give each request's
    unbatched, unpadded log-likelihood and greedy flag."""
    answers = _lm(spiking, analog).loglikelihood(_instances("loglikelihood", REQUESTS))
    surgery = spiking.analog if analog else spiking.coded
    for (ll, greedy), request in zip(answers, REQUESTS, strict=True):
        expected, expected_greedy = hand_loglikelihood(spiking, surgery(), *request)
        assert ll == pytest.approx(expected, abs=1e-4)
        assert greedy == expected_greedy


def test_coded_and_analog_differ(spiking):
    requests = _instances("loglikelihood", REQUESTS)
    ann = [ll for ll, _ in _lm(spiking, True).loglikelihood(requests)]
    snn = [ll for ll, _ in _lm(spiking, False).loglikelihood(requests)]
    assert max(abs(a - s) for a, s in zip(ann, snn, strict=True)) > 1e-3


def test_greedy_flag_is_true_for_the_models_own_choice(spiking):
    """Continue a context with the token the (coded) model ranks first: is_greedy is True."""
    context = "Question: What melts ice?\nAnswer:"
    ids = spiking.tokenizer(context, add_special_tokens=False)["input_ids"]
    with spiking.coded(), torch.no_grad():
        logits = spiking.model(
            input_ids=torch.tensor([ids]), cache=spiking.prefix.cache_for(1), use_cache=True
        ).logits
    best = int(logits[0, -1].argmax())  # a byte that may not decode alone: go by token ids
    second = int(logits[0, -1].topk(2).indices[1])
    lm = _lm(spiking, False)
    flags = [
        greedy
        for _, greedy in lm._loglikelihood_tokens([(None, ids, [best]), (None, ids, [second])])
    ]
    assert flags == [True, False]


def test_long_requests_keep_the_last_max_length_tokens(spiking):
    """Context + continuation longer than the positions left after the prefix: the context is
    cut from the left, as lm-eval's HF model does."""
    lm = _lm(spiking, True)
    context = "abcdefghij" * 20  # 200 bytes > max_length
    assert lm.max_length == 128 - len(spiking.prefix) < len(context)
    [(ll, _)] = lm.loglikelihood(_instances("loglikelihood", [(context, " end")]))
    keep = lm.max_length + 1 - len(" end")
    expected, _ = hand_loglikelihood(spiking, spiking.analog(), context[-keep:], " end")
    assert ll == pytest.approx(expected, abs=1e-4)


def test_loglikelihood_rolling_scores_every_token_after_bos(spiking):
    text = "the quick brown fox"
    [total] = _lm(spiking, False).loglikelihood_rolling(
        _instances("loglikelihood_rolling", [(text,)])
    )
    expected, _ = hand_loglikelihood(spiking, spiking.coded(), "<s>", text)
    assert total == pytest.approx(expected, abs=1e-4)


def test_generate_until_is_greedy_and_stops(spiking):
    """Incremental decoding with the cache equals re-running the whole sequence each step."""
    context = "Ann beat Bo so"
    ids = spiking.tokenizer(context, add_special_tokens=False)["input_ids"]
    with spiking.coded(), torch.no_grad():
        for _ in range(5):
            logits = spiking.model(
                input_ids=torch.tensor([ids]), cache=spiking.prefix.cache_for(1), use_cache=True
            ).logits
            ids.append(int(logits[0, -1].argmax()))
    expected = spiking.tokenizer.decode(ids[-5:])
    lm = _lm(spiking, False)
    requests = [(context, {"until": ["\u0000never"], "max_gen_toks": 5})]
    assert lm.generate_until(_instances("generate_until", requests)) == [expected]
    stop = expected[2]
    requests = [(context, {"until": [stop], "max_gen_toks": 5})]
    cut = expected[: expected.index(stop)]
    assert lm.generate_until(_instances("generate_until", requests)) == [cut]
    with pytest.raises(NotImplementedError, match="greedily"):
        lm.generate_until(_instances("generate_until", [(context, {"do_sample": True})]))


# ----------------------------------------------------------------------------- model args


def test_model_args_from_lm_evals_cli(spiking, monkeypatch):
    loaded, where = [], []

    def load(path, device, dtype):
        loaded.append(path)
        where.append((device, dtype))
        return spiking

    monkeypatch.setattr("phasecode.conversion.store.load_spiking", load)
    lm = PhasecodeLM.create_from_arg_string(
        "artifact=~/art,analog=true,batch_size=3",
        {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"},  # lm-eval's defaults
    )
    assert (lm.analog, lm.batch_size) == (True, 3)
    assert "~" not in str(loaded[0]) and loaded[0].name == "art"
    expected = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert where[0] == (expected, None)  # lm-eval's default device, or the CPU without a GPU
    lm = PhasecodeLM.create_from_arg_obj({"artifact": "art"}, {"batch_size": "auto"})
    assert (lm.analog, lm.batch_size) == (False, harness.DEFAULT_BATCH_SIZE)
    assert lm.get_model_info()["phasecode_mode"] == "snn"


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({}, "artifact=DIR"),
        ({"analog": "maybe"}, "analog must be true or false"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"batch_size": "many"}, "batch_size must be an integer >= 1"),
    ],
)
def test_bad_model_args(spiking, kwargs, needle):
    if kwargs:
        kwargs["spiking"] = spiking
    with pytest.raises(PhasecodeError, match=needle):
        PhasecodeLM(**kwargs)


def test_missing_artifact_is_a_phasecode_error(tmp_path):
    with pytest.raises(PhasecodeError):
        PhasecodeLM(artifact=tmp_path / "nope")


# ----------------------------------------------------------------------------- lm-eval wiring


def test_registered_under_phasecode_next_to_the_builtin_models():
    assert get_model("phasecode") is PhasecodeLM
    assert {"hf", "vllm", "dummy"} <= set(model_registry.keys())  # lm-eval's own still there
    harness.register()  # idempotent
    assert get_model("phasecode") is PhasecodeLM


def test_offline_task_names_never_shadow_builtin_ones():
    names = sorted(p.stem for p in harness.TASK_CONFIGS.glob("*.yaml"))
    assert names == [f"phasecode_{t}" for t in sorted(("arc_easy", "arc_challenge", "piqa",
                                                         "winogrande"))]  # fmt: skip
    for path in harness.TASK_CONFIGS.glob("*.yaml"):
        assert f"task: {path.stem}\n" in path.read_text()


def test_simple_evaluate_by_model_name(spiking, tmp_path, monkeypatch):
    """lm-eval builds the model from its name and model_args string and scores a task."""
    monkeypatch.setenv("PHASECODE_DATA", str(write_task_data(tmp_path)))
    monkeypatch.setattr("phasecode.conversion.store.load_spiking", lambda path, **_: spiking)
    from lm_eval.tasks import TaskManager

    from phasecode.evaluation.harness import quiet_lm_eval

    with quiet_lm_eval(progress=False):
        results = lm_eval.simple_evaluate(
            model="phasecode",
            model_args="artifact=unused,analog=false,batch_size=4",
            tasks=["phasecode_winogrande"],
            task_manager=TaskManager(
                include_path=str(harness.TASK_CONFIGS), include_defaults=False
            ),
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    row = results["results"]["phasecode_winogrande"]
    assert results["n-samples"]["phasecode_winogrande"]["effective"] == 3
    assert row["acc,none"] in (0.0, 1 / 3, 2 / 3, 1.0)


def test_wrapper_runs_lm_evals_cli_with_the_task_configs(monkeypatch):
    seen = []
    monkeypatch.setattr("lm_eval.__main__.cli_evaluate", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["phasecode-lm-eval"])
    assert harness.main(["--model", "phasecode", "--tasks", "phasecode_piqa"]) == 0
    assert seen[-1][1:] == [
        "--model", "phasecode", "--tasks", "phasecode_piqa",
        "--include_path", str(harness.TASK_CONFIGS),
    ]  # fmt: skip
    assert harness.main(["--model", "phasecode", "--include_path", "/elsewhere"]) == 0
    assert seen[-1][1:] == ["--model", "phasecode", "--include_path", "/elsewhere"]

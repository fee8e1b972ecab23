"""PhasecodeLM, the lm-eval model: the same log-likelihoods as a direct forward after the
prefix (batched, padded, truncated), contexts run once for all their continuations with the
same numbers as whole windows, ANN vs SNN, rolling and greedy requests, model args,
registration and the `phasecode-lm-eval` wrapper."""

from __future__ import annotations

import dataclasses
import sys

import lm_eval
import pytest
import torch
from helpers import write_calibration
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model, model_registry
from task_data import hand_loglikelihood, tiny_spiking, write_task_data

from phasecode.cli import lm_eval as lm_eval_cli
from phasecode.conversion.convert import SpikingModel
from phasecode.errors import PhasecodeError
from phasecode.evaluation import harness, scheduler
from phasecode.evaluation.harness import PhasecodeLM
from phasecode.evaluation.scheduler import TokenRequest
from phasecode.evaluation.tasks import TASK_CONFIGS, quiet_lm_eval

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


# ----------------------------------------------------------------------------- shared contexts

QUESTIONS = [
    ("Question: What melts ice?\nAnswer:", [" heat", " a cold wind", " salt water", " rock"]),
    ("Question: Which is alive?\nAnswer:", [" a stone", " a tree", " glass"]),
    ("Sun is a", [" A", " B", " C", " D", " E"]),
    ("Ann beat Bo so", [" Ann was glad.", " Bo was glad."]),
    ("x", [" y", " zz"]),  # one context token: nothing to share, runs whole windows
    ("abcdefghij" * 20, [" end", " the very end"]),  # truncated, cut differently per choice
]


@pytest.fixture(scope="module", params=[True, False], ids=["prefix", "no-prefix"])
def prefixed(request, spiking) -> SpikingModel:
    """The tiny converted model with its prefix, and the same model without one."""
    if request.param:
        return spiking
    return dataclasses.replace(spiking, prepared=dataclasses.replace(spiking.prepared, prefix=None))


@torch.no_grad()
def _whole_windows(lm: PhasecodeLM, requests: list[TokenRequest]) -> list[tuple[float, bool]]:
    """The path before context sharing, one request at a time (no padding, no batch): the
    request's whole window (``_window``: its last max_length + 1 tokens) after the prefix,
    which the model injects."""
    answers = []
    with lm._installed():
        for _, context, continuation in requests:
            inputs, targets = lm._window(context, continuation)
            logits = lm.causal_lm(torch.tensor([inputs])).logits[0, -len(targets) :]
            logprobs = logits.float().log_softmax(dim=-1)
            target = torch.tensor(targets)
            picked = logprobs.gather(1, target[:, None]).squeeze(1).double().sum()
            answers.append((float(picked), bool((logprobs.argmax(dim=-1) == target).all())))
    return answers


def _question_requests(lm: PhasecodeLM) -> tuple[list[TokenRequest], list[list[str]]]:
    """QUESTIONS as lm-eval tokenizes them, each with one more choice: the two tokens the
    model itself continues the context with (so some greedy flags are True), and one request
    whose continuation alone outgrows max_length."""
    requests, choices = [], []
    for context, options in QUESTIONS:
        ids = lm.tok_encode(context)
        tokens = list(ids)
        with lm._installed(), torch.no_grad():
            for _ in range(2):
                logits = lm.causal_lm(torch.tensor([tokens])).logits
                tokens.append(int(logits[0, -1].argmax()))
        own = [(None, ids, tokens[-2:])]
        requests += [(None, *lm._encode_pair(context, option)) for option in options] + own
        choices.append([*options, lm.tok_decode(tokens[-2:])])
    long = lm.tok_encode("q" * (lm.max_length + 20))
    requests.append((None, [lm.prefix_token_id], long))  # as lm-eval sends an empty context
    return requests, choices


@pytest.mark.parametrize("batch_size", [2, 16])
@pytest.mark.parametrize("analog", [True, False], ids=["ann", "snn"])
def test_shared_contexts_give_the_whole_window_numbers(prefixed, analog, batch_size):
    """Contexts run once (batched, padded, their keys/values copied to every continuation) give
    each request's whole-window log-likelihood, greedy flag and so acc / acc_norm decision.

    Tolerance: 1e-5 per scored token, absolute. Both paths compute the same float32 values in
    a different summation order (matmul shapes, padded softmax rows), so each token's
    log-probability (|.| ~ 5, one ulp ~ 5e-7) may move by a few ulps, and a continuation's sum
    adds those moves up; measured: at most 1e-6 in all. The coded model's neurons code
    elementwise (the k/v neurons on the cached keys/values as attention reads them), so it is
    position-wise too; a neuron flipping a level on a rounding difference would show here as a
    far larger gap, and does not on these requests.
    """
    lm = _lm(prefixed, analog, batch_size)
    requests, choices = _question_requests(lm)
    shared, whole = _scored_both_ways(lm, requests)
    assert any(greedy for _, greedy in whole) and not all(greedy for _, greedy in whole)
    at = 0
    for options in choices:
        new = [ll for ll, _ in shared[at : at + len(options)]]
        old = [ll for ll, _ in whole[at : at + len(options)]]
        at += len(options)
        for norm in ([1] * len(options), [len(option) for option in options]):  # acc, acc_norm
            pick = max(range(len(options)), key=lambda i: new[i] / norm[i])
            assert pick == max(range(len(options)), key=lambda i: old[i] / norm[i])


def test_a_context_runs_once_for_all_its_continuations(spiking, monkeypatch):
    """One pass for the context (less its last token, which scores the first continuation
    token), then one for the four choices, each from its last context token on."""
    lm = _lm(spiking, True, batch_size=16)
    context, options = QUESTIONS[0]
    requests = [(None, *lm._encode_pair(context, option)) for option in options]
    assert len({tuple(context) for _, context, _ in requests}) == 1
    shapes = []
    forward = lm._forward
    monkeypatch.setattr(
        lm, "_forward", lambda ids, *a: shapes.append(ids.shape) or forward(ids, *a)
    )
    lm._loglikelihood_tokens(requests)
    tails = [len(continuation) for _, _, continuation in requests]
    assert shapes == [(1, len(requests[0][1]) - 1), (4, max(tails))]


@pytest.mark.parametrize("analog", [True, False], ids=["ann", "snn"])
def test_continuations_of_a_pool_of_context_batches_run_together(prefixed, analog, monkeypatch):
    """With contexts two to a batch, a pool's continuations are sorted across its batches
    (passes padded less than each batch's own) and score as whole windows; a pool
    bound of 0 positions gives every context batch its own pool, as before pooling."""
    lm = _lm(prefixed, analog, batch_size=2)
    requests, _ = _question_requests(lm)
    passes = {scheduler.POOL_POSITIONS: [], 0: []}
    score = lm._score_tails
    for bound, tails in passes.items():
        monkeypatch.setattr(scheduler, "POOL_POSITIONS", bound)
        monkeypatch.setattr(
            lm, "_score_tails", lambda rows, *a, seen=tails: seen.append(rows) or score(rows, *a)
        )
        _scored_both_ways(lm, requests)
    pooled, alone = passes.values()
    padded = [
        sum(max(len(r.tail) for r in rows) * len(rows) for rows in tails)
        for tails in (pooled, alone)
    ]
    assert padded[0] < padded[1]
    assert any(len({r.shared for r in rows}) == 2 for rows in pooled)


def test_sliding_window_models_run_whole_windows(spiking, tiny_model, monkeypatch):
    """A sliding window's cache drops and masks keys by cache slot, which the padding between a
    context and its continuation would shift: such a model does not share contexts."""
    assert not scheduler.full_attention(tiny_model("mistral"))
    assert scheduler.full_attention(tiny_model("qwen2")) and scheduler.full_attention(spiking.model)
    lm = _lm(spiking, True, batch_size=16)
    monkeypatch.setattr(lm, "_shares_contexts", False)
    requests, _ = _question_requests(lm)
    assert {lm._split(0, c, k).shared for _, c, k in requests} == {()}
    _scored_both_ways(lm, requests)


def _scored_both_ways(lm, requests):
    """(shared-context scores, whole-window scores) of ``requests``, checked equal: the same
    log-likelihood within float32 rounding per target token and the same greedy flag."""
    shared = lm._loglikelihood_tokens(requests)
    whole = _whole_windows(lm, requests)
    for (ll, greedy), (expected, expected_greedy), (_, _, targets) in zip(
        shared, whole, requests, strict=True
    ):
        assert ll == pytest.approx(expected, abs=1e-5 * len(targets))
        assert greedy == expected_greedy
    return shared, whole


# ----------------------------------------------------------------------------- model args


def test_model_args_from_lm_evals_cli(spiking, monkeypatch):
    loaded, where = [], []

    def load(path, device, dtype, base_model=None):
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
    harness.register()
    assert get_model("phasecode") is PhasecodeLM
    assert {"hf", "vllm", "dummy"} <= set(model_registry.keys())  # lm-eval's own still there
    harness.register()  # idempotent
    assert get_model("phasecode") is PhasecodeLM


def test_offline_task_names_never_shadow_builtin_ones():
    names = sorted(p.stem for p in TASK_CONFIGS.glob("*.yaml"))
    assert names == [f"phasecode_{t}" for t in sorted(("arc_easy", "arc_challenge", "piqa",
                                                         "winogrande"))]  # fmt: skip
    for path in TASK_CONFIGS.glob("*.yaml"):
        assert f"task: {path.stem}\n" in path.read_text()


def test_simple_evaluate_by_model_name(spiking, tmp_path, monkeypatch):
    """lm-eval builds the model from its name and model_args string and scores a task."""
    monkeypatch.setenv("PHASECODE_DATA", str(write_task_data(tmp_path)))
    monkeypatch.setattr("phasecode.conversion.store.load_spiking", lambda path, **_: spiking)
    harness.register()
    from lm_eval.tasks import TaskManager

    with quiet_lm_eval(progress=False):
        results = lm_eval.simple_evaluate(
            model="phasecode",
            model_args="artifact=unused,analog=false,batch_size=4",
            tasks=["phasecode_winogrande"],
            task_manager=TaskManager(include_path=str(TASK_CONFIGS), include_defaults=False),
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
    assert lm_eval_cli.main(["--model", "phasecode", "--tasks", "phasecode_piqa"]) == 0
    assert seen[-1][1:] == [
        "--model", "phasecode", "--tasks", "phasecode_piqa",
        "--include_path", str(TASK_CONFIGS),
    ]  # fmt: skip
    assert lm_eval_cli.main(["--model", "phasecode", "--include_path", "/elsewhere"]) == 0
    assert seen[-1][1:] == ["--model", "phasecode", "--include_path", "/elsewhere"]


def test_wrapper_refuses_what_lm_eval_would_answer_with_a_traceback(monkeypatch, capsys):
    """An unknown model arg or task, and a CUDA device where there is none: one line, exit 2."""
    monkeypatch.setattr(sys, "argv", ["phasecode-lm-eval"])
    with pytest.raises(PhasecodeError, match="unknown model arg colour"):
        PhasecodeLM.create_from_arg_string("artifact=x,colour=red")

    def unknown_task():
        raise ValueError("Tasks not found: nope. Try `lm-eval --tasks list` for the list")

    monkeypatch.setattr("lm_eval.__main__.cli_evaluate", unknown_task)
    assert lm_eval_cli.main(["--model", "phasecode", "--tasks", "nope"]) == 2
    assert "Tasks not found: nope" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert lm_eval_cli.main(["--model", "phasecode", "--device", "cuda:0"]) == 2
        assert "no CUDA device" in capsys.readouterr().err

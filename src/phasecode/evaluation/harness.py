"""phasecode as an lm-evaluation-harness model: ``--model phasecode --model_args artifact=DIR``.

Every request runs through the converted model's own forward (``SpikingModelForCausalLM``),
which puts it after the artifact's prefix, as the spiking model (``analog=false``, the
default) or as the prepared ANN without neurons (``analog=true``). Texts are tokenized
without special tokens: the prefix starts with BOS, so a request never carries a second one.

Loglikelihood requests share their contexts (``scheduler``): a context runs once, its
keys/values are kept, and each continuation runs from a copy of them, masked and positioned
as its whole window would be. Every site's neuron codes one token's values (the k/v neurons
code the cached keys/values when attention reads them), so this equals running each
request's whole window, up to float32 summation order. Generation is the model's
``generate``.

lm-eval 0.4.13 finds models only in its own registry: ``register()`` puts ``phasecode`` there
(``phasecode-lm-eval``, ``cli/lm_eval.py``, does so before running lm-eval's CLI). The
``lm_eval.models`` entry point in pyproject.toml lets releases that discover plugins find it.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm
from transformers import DynamicCache

from phasecode.conversion.causal_lm import SpikingModelForCausalLM, greedy_generate
from phasecode.conversion.convert import SpikingModel
from phasecode.errors import PhasecodeError
from phasecode.evaluation.scheduler import (
    ContextBatch,
    KeysValues,
    Row,
    TokenRequest,
    context_pools,
    full_attention,
    rows_of,
    stacked,
)

MODEL_NAME = "phasecode"
CONTEXT_FALLBACK = 2048  # context length of a config that states none
DEFAULT_BATCH_SIZE = 16
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class PhasecodeLM(TemplateLM):
    """A converted model (spiking, or its prepared ANN) answering lm-eval's requests."""

    def __init__(
        self,
        artifact: str | Path | None = None,
        analog: bool | str = False,
        batch_size: int | str = DEFAULT_BATCH_SIZE,
        spiking: SpikingModel | SpikingModelForCausalLM | None = None,
        progress: bool = True,
        max_batch_size: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        base_model: str | None = None,
    ) -> None:
        """Load the artifact (with its base model) unless a converted model is given; a
        ``SpikingModelForCausalLM`` answers in its current mode unless ``analog``.

        ``device`` is lm-eval's --device (None, or its default cuda:0 on a machine without a
        GPU: a GPU if there is one, else the CPU), ``dtype`` a model
        argument (default: the dtype the artifact was converted in), ``base_model`` where the
        artifact's base model is if it moved; ``max_batch_size`` comes from lm-eval's CLI and
        is ignored.
        """
        super().__init__()
        if spiking is None:
            if artifact is None:
                raise PhasecodeError("the phasecode model needs model_args artifact=DIR")
            from phasecode.conversion.store import load_spiking
            from phasecode.models.devices import resolve_device, resolve_dtype

            if device and device.startswith("cuda") and not torch.cuda.is_available():
                device = None  # lm-eval's config defaults to cuda:0 even where there is none
            where = resolve_device(device or "auto")
            spiking = load_spiking(
                Path(artifact).expanduser(),
                device=where,
                dtype=resolve_dtype(dtype, where) if dtype else None,
                base_model=base_model,
            )
        if not isinstance(spiking, SpikingModelForCausalLM):
            spiking = SpikingModelForCausalLM(spiking)
        self.causal_lm = spiking
        self.spiking = spiking.spiking
        self.analog = _flag("analog", analog)
        self.batch_size = _batch_size(batch_size)
        self.progress = progress
        self.tokenizer = spiking.tokenizer
        self._device = spiking.device
        self._shares_contexts = full_attention(spiking.model)

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None
    ) -> PhasecodeLM:
        """Like LM's, but a batch_size in model_args wins over the CLI's default --batch_size,
        and an unknown model arg is one line naming the known ones."""
        known = set(inspect.signature(cls.__init__).parameters) - {"self", "spiking", "progress"}
        unknown = sorted(set(arg_dict) - known)
        if unknown:
            raise PhasecodeError(
                f"unknown model arg {', '.join(unknown)} for the phasecode model; it takes "
                f"{', '.join(sorted(known))}"
            )
        extra = {k: v for k, v in (additional_config or {}).items() if k in known and v is not None}
        return cls(**(extra | dict(arg_dict)))

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict[str, Any] | None = None
    ) -> PhasecodeLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # -- what TemplateLM needs -------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """Context of an empty-context request (as HF models in lm-eval): BOS, else EOS."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        """Positions left after the prefix."""
        positions = getattr(self.spiking.model.config, "max_position_embeddings", CONTEXT_FALLBACK)
        return positions - self._prefix_len

    @property
    def _prefix_len(self) -> int:
        return len(self.spiking.prefix) if self.spiking.prefix is not None else 0

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        """Token ids without special tokens: the prefix supplies BOS."""
        return self.tokenizer(string, add_special_tokens=False, verbose=False)["input_ids"]

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens))

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.progress)

    def _loglikelihood_tokens(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """Summed log-probability of each continuation, and whether greedy decoding gives it."""
        rows = [self._split(i, context, rest) for i, (_, context, rest) in enumerate(requests)]
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        bar = tqdm(
            total=len(requests),
            desc="snn loglikelihood" if not self.analog else "ann loglikelihood",
            disable=disable_tqdm or not self.progress,
        )
        with self._installed(), torch.no_grad(), bar:
            for pool in self._context_pools(rows):
                for row, answer in self._score_pool(pool):
                    results[row.index] = answer
                    if requests[row.index][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[row.index][0], answer)
                    bar.update(1)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood in disjoint windows of max_length, as lm-eval's HF model."""
        scores = []
        for (text,) in tqdm(
            [req.args for req in requests],
            desc="rolling loglikelihood",
            disable=disable_tqdm or not self.progress,
        ):
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            pieces = [(None, *make_disjoint_window(w)) for w in windows]
            total = sum(ll for ll, _ in self._loglikelihood_tokens(pieces, disable_tqdm=True))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            scores.append(total)
        return scores

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding, one request at a time, until a stop string or max_gen_toks."""
        outputs = []
        with self._installed(), torch.no_grad():
            for context, gen_kwargs in tqdm(
                [req.args for req in requests],
                desc="generate",
                disable=disable_tqdm or not self.progress,
            ):
                text = self._greedy(context, dict(gen_kwargs))
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                outputs.append(text)
        return outputs

    def get_model_info(self) -> dict[str, Any]:
        spec = self.spiking.spec
        return {
            "phasecode_mode": "ann" if self.analog else "snn",
            "phasecode_method": spec.method,
            "phasecode_timesteps": spec.timesteps,
            "phasecode_grains": spec.grains,
        }

    # -- the forward passes ----------------------------------------------------------------

    def _installed(self) -> contextlib.AbstractContextManager:
        """The surgery this model answers with: neurons (SNN) or the prepared ANN."""
        return self.causal_lm.analog() if self.analog else contextlib.nullcontext()

    def _window(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Input tokens (the last max_length + 1 of context + continuation, less the final one)
        and the continuation tokens the last logits are scored on."""
        if not continuation:
            raise PhasecodeError("lm-eval sent a request with an empty continuation")
        tokens = (context + continuation)[-(self.max_length + 1) :]
        return tokens[:-1], tokens[-min(len(continuation), len(tokens) - 1) :]

    def _split(self, index: int, context: list[int], continuation: list[int]) -> Row:
        """The request's window, shared up to the position that scores its first target.

        Truncated windows split the same way: requests share only identical token lists, so
        a context cut differently for each continuation is simply not shared. Without context
        sharing (sliding-window layers) every row is the whole window after the prefix."""
        inputs, targets = self._window(context, continuation)
        cut = len(inputs) - len(targets) if self._shares_contexts else 0
        return Row(index, tuple(inputs[:cut]), inputs[cut:], targets)

    def _context_pools(self, rows: list[Row]) -> list[list[ContextBatch]]:
        return context_pools(rows, self.batch_size, self._prefix_len)

    def _score_pool(self, pool: list[ContextBatch]) -> Iterator[tuple[Row, tuple[float, bool]]]:
        """Run a pool's context batches once each, then every row continuing them,
        batch_size rows per pass, rows of similar tail length together."""
        past = stacked([self._run_contexts([shared for shared, _ in batch]) for batch in pool])
        contexts = [context for batch in pool for context in batch]
        starts = [self._prefix_len + len(shared) for shared, _ in contexts]
        members = [(g, row) for g, (_, group) in enumerate(contexts) for row in group]
        members.sort(key=lambda member: -len(member[1].tail))
        for at in range(0, len(members), self.batch_size):
            picks = [g for g, _ in members[at : at + self.batch_size]]
            rows = [row for _, row in members[at : at + self.batch_size]]
            width = max(starts[g] for g in picks)
            answers = self._score_tails(
                rows, rows_of(past, picks, width), [starts[g] for g in picks]
            )
            yield from zip(rows, answers, strict=True)

    def _run_contexts(self, contexts: list[tuple[int, ...]]) -> KeysValues | None:
        """Keys/values of the prefix followed by each context, right-padded to the longest
        ([contexts, kv_heads, prefix + longest, head_dim]; only the prefix's [1, …] when
        nothing is shared; None without either). Only the last position's logits are made."""
        width = max(len(context) for context in contexts)
        prefix = self.spiking.prefix
        if width == 0:
            return None if prefix is None else list(prefix.keys_values)
        ids = torch.full((len(contexts), width), self.eot_token_id or 0, dtype=torch.long)
        for g, context in enumerate(contexts):
            ids[g, : len(context)] = torch.tensor(context)
        cache = DynamicCache(config=self.spiking.model.config)  # the model puts the prefix first
        self._forward(ids.to(self._device), cache, 1)
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _score_tails(
        self, rows: list[Row], past: KeysValues | None, starts: list[int]
    ) -> list[tuple[float, bool]]:
        """One forward pass of right-padded tails after their rows' cached prefix and context
        (``past``, row-aligned, whose row r holds starts[r] real positions); the vocabulary
        projection runs only at the positions that score a target."""
        length = max(len(row.tail) for row in rows)
        ids = torch.full((len(rows), length), self.eot_token_id or 0, dtype=torch.long)
        keep = torch.zeros((len(rows), length), dtype=torch.bool)
        for r, row in enumerate(rows):
            ids[r, : len(row.tail)] = torch.tensor(row.tail)
            keep[r, len(row.tail) - len(row.targets) : len(row.tail)] = True
        cache, mask, positions = None, None, None
        if past is not None:
            cache = DynamicCache(past, config=self.spiking.model.config)
            cached = past[0][0].shape[-2]
            if any(start != cached for start in starts):  # padded contexts: hide the padding
                # mask and positions count the caller's tokens: the model adds the prefix
                offset = self._prefix_len
                mask = torch.ones((len(rows), cached - offset + length), dtype=torch.long)
                for r, start in enumerate(starts):
                    mask[r, start - offset : cached - offset] = 0
                positions = torch.tensor(starts)[:, None] - offset + torch.arange(length)
                mask, positions = mask.to(self._device), positions.to(self._device)
        logits = self._forward(ids.to(self._device), cache, keep.to(self._device), mask, positions)
        per_row = logits.split([len(row.targets) for row in rows])
        answers = []
        for row_logits, row in zip(per_row, rows, strict=True):
            target = torch.tensor(row.targets, device=row_logits.device)
            logprobs = torch.log_softmax(row_logits.float(), dim=-1)
            picked = logprobs.gather(1, target[:, None]).squeeze(1)
            greedy = bool((logprobs.argmax(dim=-1) == target).all())
            answers.append((float(picked.double().sum()), greedy))
        return answers

    def _forward(
        self,
        ids: torch.Tensor,
        cache: DynamicCache | None,
        keep: torch.Tensor | int = 0,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits at the `keep` positions (transformers' logits_to_keep: 0 = all; a boolean
        [batch, length] mask gives them flattened, row after row). ``mask`` ([batch, cached +
        length], 0 = hidden) and ``positions`` ([batch, length]) default to every cached token
        visible and positions following the cache; both count the caller's tokens only (the
        model offsets them by its prefix)."""
        return self.causal_lm(
            input_ids=ids,
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=keep,
            attention_mask=mask,
            position_ids=positions,
        ).logits

    def _greedy(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        """Greedy continuation of `context` by the model's ``generate``, cut at the first stop
        string."""
        if gen_kwargs.pop("do_sample", False):
            raise NotImplementedError("the phasecode model decodes greedily only")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.get("max_gen_toks", 256))
        tokens = self.tok_encode(context)[-max(1, self.max_length - max_new) :]
        ids = torch.tensor([tokens], device=self._device)
        stops = {"stop_strings": until, "tokenizer": self.tokenizer} if until else {}
        generated = greedy_generate(self.causal_lm, ids, max_new, self.eot_token_id, **stops)
        if generated and generated[-1] == self.eot_token_id:
            generated = generated[:-1]
        text = self.tok_decode(generated)
        return _cut(text, until) if any(stop in text for stop in until) else text


def _cut(text: str, until: list[str]) -> str:
    """Text up to the earliest stop string."""
    return text[: min(text.index(s) for s in until if s in text)]


def _flag(name: str, value: bool | str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in _TRUE | _FALSE:
        return str(value).lower() in _TRUE
    raise PhasecodeError(f"model arg {name} must be true or false, got {value!r}")


def _batch_size(value: int | str) -> int:
    """An integer >= 1; lm-eval's "auto" gets the default (no memory probing on CPU)."""
    if isinstance(value, str) and value.startswith("auto"):
        return DEFAULT_BATCH_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise PhasecodeError(f"batch_size must be an integer >= 1, got {value!r}")
    return size


def register() -> None:
    """Put ``phasecode`` in lm-eval's model registry (idempotent)."""
    import lm_eval.models  # noqa: F401  (fills the registry first: get_model skips it if not empty)

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME)(PhasecodeLM)

"""``SpikingModelForCausalLM``: a converted model as a transformers causal LM.

It wraps the prepared (rotated) base model with what makes it compute the right thing, so that
``generate``, ``pipeline("text-generation")``, lm-eval's ``HFLM(pretrained=…)`` and any plain
``model(input_ids).logits`` see the spiking model and nothing else:

- the surgery is installed for each forward and removed after it, so the base model is never
  left with phasecode's hooks between calls; which surgery is the model's *mode*: the fast
  equivalent path of the spiking network (default), that path with spike masking
  (``coded(mask_strength)``), or the prepared ANN (``analog()``);
- the prefix's keys/values are injected inside ``forward``: a call without a cache, or with an
  empty one (``generate``'s first step), runs after the prefix, and positions and the 2-D
  attention mask are offset by its length. Logits are returned for the caller's tokens only.
  A returned cache holds the prefix first; pass it back as it is;
- it keeps the base model's record (name, fingerprint, dtype) taken *before* preparation, so
  ``save_pretrained`` always writes an artifact that ``from_pretrained`` accepts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.cache_utils import Cache

from phasecode.conversion.convert import SpikingModel
from phasecode.conversion.handlers import Passthrough, SiteHandler
from phasecode.conversion.store import KIND, load_spiking, save_spiking
from phasecode.errors import PhasecodeError
from phasecode.inference.prefix import Prefix
from phasecode.outputs import check_artifact_dir

ANALOG = -1  # the mode of the prepared ANN; modes >= 0 are spike-masking strengths


class SpikingConfig(PreTrainedConfig):
    """Names the model class in transformers' causal-LM registry (so pipelines accept it);
    a spiking model's own ``config`` is its base model's."""

    model_type = "phasecode_spiking"


class SpikingModelForCausalLM(PreTrainedModel, GenerationMixin):
    """A spiking LLM that transformers and lm-eval accept as a causal LM.

    Build one with ``phasecode.convert`` or load one with ``from_pretrained`` /
    ``phasecode.load``. ``model`` is the prepared base model (do not call it directly: it is
    rotated and has no prefix), ``spiking`` the conversion (spec, code table, prefix),
    ``tokenizer`` the base model's tokenizer.
    """

    config_class = SpikingConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, spiking: SpikingModel, base: dict | None = None):
        config = spiking.model.config
        attention = config._attn_implementation_internal
        super().__init__(config)
        # PreTrainedModel's checks must not change the base model's attention choice
        config._attn_implementation_internal = attention
        self.model = spiking.model
        self.spiking = spiking
        self.base_record = dict(base or {})  # empty: a model that cannot be saved
        self.generation_config = spiking.model.generation_config
        self.name_or_path = spiking.model.name_or_path
        self._mode = 0
        self._passthrough = Passthrough()
        # what PreTrainedModel.post_init would set; post_init itself would re-initialise weights
        self.all_tied_weights_keys = {}
        self._keep_in_fp32_modules = self._keep_in_fp32_modules_strict = set()
        self._no_split_modules = set(getattr(spiking.model, "_no_split_modules", None) or ())
        self._skip_keys_device_placement = set()
        self._keys_to_ignore_on_load_unexpected = self._keys_to_ignore_on_load_missing = set()
        self._keys_to_ignore_on_save = set()
        self.eval()

    # -- what it is --------------------------------------------------------------------------

    @property
    def tokenizer(self):
        return self.spiking.tokenizer

    @property
    def prefix(self) -> Prefix | None:
        return self.spiking.prefix

    @property
    def timesteps(self) -> int:
        return self.spiking.table.timesteps

    @property
    def mode(self) -> str:
        """``snn``, ``snn-masked-S`` (spike masking of strength S) or ``ann`` (prepared)."""
        if self._mode == ANALOG:
            return "ann"
        return "snn" if self._mode == 0 else f"snn-masked-{self._mode}"

    def __repr__(self) -> str:
        spec = self.spiking.spec
        prefix = len(self.prefix) if self.prefix is not None else 0
        return (
            f"{type(self).__name__}(base={self.base_record.get('name')!r}, "
            f"method={spec.method}, T={spec.timesteps}, grains={spec.grains}, code={spec.code}, "
            f"sites={len(self.spiking.sites)}, prefix={prefix} tokens, mode={self.mode})"
        )

    # -- modes ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def analog(self) -> Iterator[SpikingModelForCausalLM]:
        """Inside: the prepared ANN (rotations and prefix, no neurons): the model the neurons
        approximate, for side-by-side comparisons."""
        with self._in_mode(ANALOG):
            yield self

    @contextlib.contextmanager
    def coded(self, mask_strength: int = 0) -> Iterator[SpikingModelForCausalLM]:
        """Inside: the spiking model with spike masking of ``mask_strength`` (0: none; see
        ``coding.neuron.mask_window``)."""
        self.spiking.coder(mask_strength)  # a bad strength fails here, not at the first call
        with self._in_mode(mask_strength):
            yield self

    @contextlib.contextmanager
    def _in_mode(self, mode: int) -> Iterator[None]:
        previous, self._mode = self._mode, mode
        try:
            yield
        finally:
            self._mode = previous

    def _handler(self) -> SiteHandler:
        return self._passthrough if self._mode == ANALOG else self.spiking.coder(self._mode)

    # -- the causal-LM forward -----------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: Tensor | None = None,
        past_key_values: Cache | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | Tensor = 0,
        cache: Cache | None = None,
        **kwargs,
    ):
        """The base model's causal-LM forward under the current mode's surgery, after the
        prefix. ``cache`` is transformers' current name for ``past_key_values``."""
        cache = cache if cache is not None else past_key_values
        wanted = use_cache if use_cache is not None else bool(self.config.use_cache)
        prefix = self.prefix
        if prefix is not None:
            rows = (input_ids if input_ids is not None else inputs_embeds).shape[0]
            if cache is None:
                cache = prefix.cache_for(rows)
            elif cache.get_seq_length() == 0:
                fill_prefix(cache, prefix, rows)
            attention_mask = _mask_with_prefix(attention_mask, len(prefix))
            if position_ids is not None:
                position_ids = position_ids + len(prefix)
        with self.spiking.surgery(self._handler()):
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=wanted or cache is not None,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        if not wanted:
            out.cache = None
        return out

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def tie_weights(self, *args, **kwargs) -> None:
        """Nothing to tie: the prepared model's embeddings and head are rotated differently,
        and tying them again (lm-eval's HFLM calls this) would break it."""

    def resize_token_embeddings(self, *args, **kwargs):
        raise PhasecodeError("a converted model's vocabulary is fixed: its neurons were trained")

    def _apply(self, fn, *args, **kwargs):
        """``to()``, ``half()``, … move the prefix's keys/values with the weights."""
        super()._apply(fn, *args, **kwargs)
        prefix = self.spiking.prepared.prefix
        if prefix is not None:
            moved = tuple((fn(k), fn(v)) for k, v in prefix.keys_values)
            self.spiking.prepared.prefix = Prefix(
                prefix.token_ids, moved, prefix.config, prefix.seconds
            )
        return self

    # -- artifacts -----------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path, overwrite: bool = True, **_) -> Path:
        """Write the artifact directory (the format ``phasecode convert`` writes). An existing
        artifact there is replaced unless ``overwrite`` is False; any other non-empty
        directory is refused, so no file of yours is lost."""
        directory = Path(save_directory)
        if "fingerprint" not in self.base_record:
            raise PhasecodeError("this model has no record of its base model: it cannot be saved")
        check_artifact_dir(directory, KIND, overwrite)
        save_spiking(directory, self.spiking, self.base_record)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        model: nn.Module | None = None,
        tokenizer=None,
        float64: bool = False,
        base_model: str | None = None,
        **_,
    ) -> SpikingModelForCausalLM:
        """Load an artifact: its base model is re-read (from ``base_model`` if it moved, or
        ``model``/``tokenizer`` given) and checked against the fingerprint, then prepared
        again. ``device``: auto, cpu, cuda, cuda:N; ``dtype``: None keeps the dtype it was
        converted in; ``float64`` runs the whole model in float64 (exact checks)."""
        from phasecode.conversion.store import read_spiking_metadata
        from phasecode.models.devices import resolve_device, resolve_dtype

        where = resolve_device(str(device))
        if isinstance(dtype, str):
            dtype = resolve_dtype(dtype, where)
        metadata = read_spiking_metadata(directory)
        if model is None and base_model is None and not metadata["base_model"].get("name"):
            raise PhasecodeError(
                f"{directory}: its base model was built in memory, so it cannot be re-read: "
                "pass model= and tokenizer= (the unconverted base model)"
            )
        spiking = load_spiking(
            directory,
            model,
            tokenizer,
            float64=float64,
            device=where,
            dtype=dtype,
            base_model=base_model,
        )
        return cls(spiking, metadata["base_model"])


AutoModelForCausalLM.register(SpikingConfig, SpikingModelForCausalLM, exist_ok=True)


def fill_prefix(cache: Cache, prefix: Prefix, rows: int) -> None:
    """Put the prefix's keys/values, one copy per row, into an empty cache (``generate``'s)."""
    positions = torch.arange(len(prefix), device=prefix.keys_values[0][0].device)
    for layer, (keys, values) in enumerate(prefix.keys_values):
        expand = (rows, -1, -1, -1)
        cache.update(
            keys.expand(*expand), values.expand(*expand), layer, {"cache_position": positions}
        )


def _mask_with_prefix(mask: Tensor | None, length: int) -> Tensor | None:
    """A 2-D padding mask over the caller's tokens, widened to cover the prefix (visible)."""
    if mask is None:
        return None
    if mask.dim() != 2:
        raise PhasecodeError(
            "a spiking model takes a 2-D attention mask [batch, tokens] (it adds the prefix)"
        )
    return torch.cat([mask.new_ones(mask.shape[0], length), mask], dim=1)


@torch.no_grad()
def greedy_generate(
    model: PreTrainedModel, ids: Tensor, new_tokens: int, eos: int | None, **kwargs
) -> list[int]:
    """Greedy continuation of ``ids`` [1, S] by transformers' ``generate`` with its KV cache:
    the argmax at every step and nothing else (no logits processors from the model's
    generation config), up to ``new_tokens`` tokens or ``eos`` (kept). ``kwargs`` go to
    ``generate`` (e.g. ``stop_strings`` with ``tokenizer``)."""
    config = GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos
    )
    mask = torch.ones_like(ids)
    out = model.generate(ids, attention_mask=mask, generation_config=config, **kwargs)
    return out[0, ids.shape[1] :].tolist()

"""The neurons job's core: sampling every site, fitting codes per method, scoring them."""

from __future__ import annotations

import pytest
import torch
from helpers import CONVERTIBLE_SIZES, write_calibration
from transformers import AutoModelForCausalLM, LlamaConfig

from phasecode.calibration.sampling import sample_sites
from phasecode.coding.neuron import value
from phasecode.errors import PhasecodeError
from phasecode.models.hadamard import hadamard_rotation
from phasecode.settings import METHODS, FitSettings, SamplingSettings, TrainConfig
from phasecode.training.fit import fit_codes, largest_output, reach_peaks, score_sites
from phasecode.training.yardstick import lloyd_max_mse, uniform_mse

LAYERS = CONVERTIBLE_SIZES["num_hidden_layers"]
SITES = 4 * LAYERS  # qkv, o, gate_up, down per layer
SEQUENCES, SEQ_LEN = 4, 32
FAST = TrainConfig(rounds=3, threshold_steps=2, base_steps=3, search_steps=4, search_samples=256)


def _byte_llama(seed: int = 0):
    """A tiny random LLaMA whose vocabulary covers the byte-level tokenizer (ids up to 257)."""
    torch.manual_seed(seed)
    config = LlamaConfig(**CONVERTIBLE_SIZES)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def llama():
    return _byte_llama()


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    return write_calibration(tmp_path_factory.mktemp("calibration") / "calib.jsonl")


def _settings(calibration, **kw) -> SamplingSettings:
    base = dict(samples=200, calibration=calibration, sequences=SEQUENCES, seq_len=SEQ_LEN)
    return SamplingSettings(**(base | kw))


@pytest.fixture(scope="module")
def samples(llama, tiny_tokenizer, calibration):
    return sample_sites(llama, tiny_tokenizer, _settings(calibration), progress=False)


def _capture_inputs(model, module_name: str):
    """Record every input tensor of a module during the next forward passes."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(module_name).register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().clone())
    )
    return seen, handle


# ----------------------------------------------------------------------------- sampling


def test_sample_sites_shapes_and_site_order(samples):
    assert samples.train.shape == (SITES, 200)
    assert samples.heldout.shape == (SITES, 200)
    assert samples.train.dtype == samples.heldout.dtype == torch.float32
    assert [s.name for s in samples.sites] == [
        f"layers.{i}.{kind}" for i in range(LAYERS) for kind in ("qkv", "o", "gate_up", "down")
    ]
    assert torch.isfinite(samples.train).all() and torch.isfinite(samples.heldout).all()
    assert samples.seconds > 0
    # every site sees a genuine spread of values, not one repeated number
    assert (samples.train.std(1) > 0).all()


def test_sample_sites_is_reproducible(llama, tiny_tokenizer, calibration, samples):
    again = sample_sites(llama, tiny_tokenizer, _settings(calibration), progress=False)
    torch.testing.assert_close(again.train, samples.train, atol=0, rtol=0)
    torch.testing.assert_close(again.heldout, samples.heldout, atol=0, rtol=0)
    other = sample_sites(llama, tiny_tokenizer, _settings(calibration, seed=1), progress=False)
    assert not torch.equal(other.train, samples.train)


def test_halves_partition_all_values_and_bos_is_left_out(llama, tiny_tokenizer, calibration):
    """With exactly as many samples as values at the hidden-width sites, train ∪ held-out is
    every value at positions 1.. (each used once) and none of the BOS position's values."""
    per_site = SEQUENCES * (SEQ_LEN - 1) * CONVERTIBLE_SIZES["hidden_size"]  # BOS excluded
    ids, ids_handle = _capture_inputs(llama, "model.embed_tokens")
    seen, handle = _capture_inputs(llama, "model.layers.0.self_attn.q_proj")
    try:
        got = sample_sites(
            llama, tiny_tokenizer, _settings(calibration, samples=per_site // 2), progress=False
        )
    finally:
        handle.remove()
        ids_handle.remove()
    tokens = torch.cat(ids)
    assert tokens.shape == (SEQUENCES, SEQ_LEN)
    assert (tokens[:, 0] == tiny_tokenizer.bos_token_id).all()
    assert (tokens[:, 1:] != tiny_tokenizer.bos_token_id).all()

    x = torch.cat(seen)  # [sequences, seq_len, hidden]
    everything = torch.cat([got.train[0], got.heldout[0]])
    expected = x[:, 1:].reshape(-1)
    assert everything.numel() == expected.numel() == per_site
    torch.testing.assert_close(everything.sort().values, expected.sort().values, atol=0, rtol=0)
    bos_values = x[:, 0].reshape(-1)
    assert not torch.isin(bos_values, everything).any()


def test_without_prefix_position_zero_is_sampled(llama, tiny_tokenizer, calibration):
    per_site = SEQUENCES * SEQ_LEN * CONVERTIBLE_SIZES["hidden_size"]
    ids, ids_handle = _capture_inputs(llama, "model.embed_tokens")
    seen, handle = _capture_inputs(llama, "model.layers.0.self_attn.q_proj")
    try:
        settings = _settings(calibration, samples=per_site // 2, prefix_bos=False)
        got = sample_sites(llama, tiny_tokenizer, settings, progress=False)
    finally:
        handle.remove()
        ids_handle.remove()
    assert (torch.cat(ids) != tiny_tokenizer.bos_token_id).all()  # no BOS prepended
    x = torch.cat(seen)
    everything = torch.cat([got.train[0], got.heldout[0]])
    torch.testing.assert_close(
        everything.sort().values, x.reshape(-1).sort().values, atol=0, rtol=0
    )


def test_rotate_down_changes_only_down_sites(llama, tiny_tokenizer, calibration, samples):
    plain = sample_sites(
        llama, tiny_tokenizer, _settings(calibration, rotate_down=False), progress=False
    )
    for i, site in enumerate(samples.sites):
        if site.kind == "down":
            assert not torch.allclose(plain.train[i], samples.train[i])
            assert not torch.allclose(plain.heldout[i], samples.heldout[i])
        else:
            assert torch.equal(plain.train[i], samples.train[i]), site.name
            assert torch.equal(plain.heldout[i], samples.heldout[i]), site.name


def test_rotated_down_samples_are_values_of_the_rotated_input(llama, tiny_tokenizer, calibration):
    """Each rotated sample is one coordinate of x·R for a non-BOS token x at down_proj."""
    seen, handle = _capture_inputs(llama, "model.layers.0.mlp.down_proj")
    try:
        got = sample_sites(llama, tiny_tokenizer, _settings(calibration, seed=3), progress=False)
    finally:
        handle.remove()
    r = hadamard_rotation(CONVERTIBLE_SIZES["intermediate_size"], seed=3)
    x = torch.cat(seen)
    rotated = (x[:, 1:] @ r).reshape(-1).sort().values
    index = [s.name for s in got.sites].index("layers.0.down")
    values = torch.cat([got.train[index], got.heldout[index]])
    pos = torch.searchsorted(rotated, values).clamp(1, rotated.numel() - 1)
    nearest = torch.minimum((rotated[pos] - values).abs(), (rotated[pos - 1] - values).abs())
    scale = rotated.abs().max()
    assert (nearest <= 1e-5 * scale).all()
    # and they are not simply values of the unrotated input
    unrotated = x[:, 1:].reshape(-1)
    assert torch.isin(values, unrotated).float().mean() < 0.5


def test_too_few_calibration_tokens(llama, tiny_tokenizer, calibration):
    with pytest.raises(PhasecodeError, match="tokens"):
        sample_sites(llama, tiny_tokenizer, _settings(calibration, sequences=1000), progress=False)


def test_more_samples_than_calibration_values_is_a_user_error(llama, tiny_tokenizer, calibration):
    # 4 × 31 tokens give 7936 values at hidden-width sites, 11904 at down_proj: neither is enough
    with pytest.raises(PhasecodeError, match="values per site"):
        sample_sites(llama, tiny_tokenizer, _settings(calibration, samples=10_000), progress=False)


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(timesteps=0), "timesteps"),
        (dict(timesteps=-1), "timesteps"),
        (dict(timesteps=33), "timesteps"),
        (dict(method="las", timesteps=33, grains=1), "timesteps"),
        (dict(method="ttfs", timesteps=129, grains=1), "timesteps"),
        (dict(timesteps=8, grains=9), "grains"),
        (dict(timesteps=8, grains=0), "grains"),
        (dict(method="las", timesteps=4, grains=5), "grains"),
        (dict(method="bogus"), "unknown method 'bogus'"),
        (dict(method="MGPC"), "unknown method"),
        (dict(timesteps=8.0), "timesteps"),
        (dict(timesteps=True), "timesteps"),
    ],
)
def test_fit_settings_rejects(kwargs, message):
    with pytest.raises(PhasecodeError, match=message):
        FitSettings(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(timesteps=1, grains=1),
        dict(timesteps=32, grains=2),
        dict(timesteps=8, grains=8),
        dict(method="ttfs", timesteps=33, grains=1),
        dict(method="ttfs", timesteps=128, grains=1),
        dict(method="phase", timesteps=32, grains=1),
    ],
)
def test_fit_settings_accepts(kwargs):
    settings = FitSettings(**kwargs)
    assert settings.timesteps == kwargs["timesteps"]


def test_unknown_method_error_lists_the_choices():
    with pytest.raises(PhasecodeError) as info:
        FitSettings(method="lass")
    for method in METHODS:
        assert method in str(info.value)


# ----------------------------------------------------------------------------- fitting


@pytest.fixture(scope="module")
def fitted(samples):
    """Every method fitted once on the tiny model's training half (T=6, two grains)."""
    out = {}
    for method in METHODS:
        settings = FitSettings(method=method, timesteps=6, grains=2, train=FAST)
        out[method] = fit_codes(samples.train, settings, progress=False)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_fit_codes_every_method_gives_one_row_per_site(fitted, method):
    result = fitted[method]
    table = result.table
    assert table.sites == SITES and table.timesteps == 6
    assert table.threshold.shape == table.reset.shape == table.weight.shape == (SITES, 6)
    assert torch.isfinite(table.weight).all()
    assert result.seconds > 0
    assert (result.loss_curve is not None) == (method == "mgpc")
    if method in ("ttfs", "rate"):
        assert table.allocations is None
    else:
        assert table.allocations is not None and len(table.allocations) == SITES


def test_fixed_codes_are_scaled_to_the_samples(fitted, samples):
    top = samples.train.abs().amax(1)
    for method in ("las", "spikedattention", "ttfs", "rate"):
        table = fitted[method].table
        # the largest value each site can emit, spike budget included
        reach = value(torch.full((SITES, 1), 1e9), table)[:, 0]
        assert ((reach > 0.2 * top) & (reach < 1.3 * top)).all(), method
        assert (reach <= table.max_value() * (1 + 1e-6)).all()
    # plain phase coding has no scale: it reaches 1 - 2^-T whatever the samples
    torch.testing.assert_close(fitted["phase"].table.max_value(), torch.full((SITES,), 1 - 2.0**-6))


@pytest.mark.parametrize("method", METHODS)
def test_reach_peaks_moves_only_where_a_neuron_saturates(fitted, method):
    """A neuron saturating below its peak is widened to reach it exactly, and codes x as
    f·SN(x/f); one that already reaches is the same neuron."""
    table = fitted[method].table
    top = largest_output(table)
    torch.testing.assert_close(top, value(torch.full((SITES, 1), 1e9), table)[:, 0])
    peaks = top * torch.linspace(0.5, 3.0, SITES)
    widened = reach_peaks(table, peaks)
    torch.testing.assert_close(largest_output(widened), torch.maximum(top, peaks))
    factor = (peaks / top).clamp_min(1)[:, None]
    x = torch.linspace(-4, 4, 101).expand(SITES, -1) * top[:, None]
    torch.testing.assert_close(value(x, widened), factor * value(x / factor, table))
    kept = peaks <= top
    assert kept.any() and torch.equal(widened.weight[kept], table.weight[kept])
    halfway = largest_output(reach_peaks(table, peaks, 0.5))
    torch.testing.assert_close(halfway, torch.maximum(top, (top * peaks).sqrt()))
    assert torch.equal(reach_peaks(table, peaks, 0.0).weight, table.weight)


def test_mgpc_with_two_grains_allocates_all_steps(fitted):
    table = fitted["mgpc"].table
    for alloc in table.allocations:
        assert len(alloc) == 2 and all(a >= 1 for a in alloc)
        assert sum(alloc) == 6
    assert table.phase.bases.shape[0] == SITES
    curve = fitted["mgpc"].loss_curve
    assert curve.shape[0] == SITES and curve.shape[1] > 0


@pytest.mark.parametrize("grains, timesteps", [(1, 5), (3, 7)])
def test_mgpc_allocations_follow_grains(grains, timesteps):
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(3, 300, generator=gen)
    settings = FitSettings(method="mgpc", timesteps=timesteps, grains=grains, train=FAST)
    table = fit_codes(train, settings, progress=False).table
    assert table.sites == 3 and table.timesteps == timesteps
    for alloc in table.allocations:
        assert len(alloc) == grains and sum(alloc) == timesteps and min(alloc) >= 1


def test_ttfs_fits_long_codes():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(2, 100, generator=gen)
    table = fit_codes(train, FitSettings(method="ttfs", timesteps=64, grains=1)).table
    assert table.timesteps == 64 and table.sites == 2
    assert (table.max_spikes == 1).all()


# ----------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def scores(fitted, samples):
    """Held-out scores of the methods compared below (the Lloyd-Max fit is the slow part)."""
    return {
        method: score_sites(fitted[method].table, samples.train, samples.heldout)
        for method in ("mgpc", "las", "phase")
    }


def test_score_sites_ratios_and_yardsticks(fitted, samples, scores):
    table = fitted["mgpc"].table
    got = scores["mgpc"]
    assert set(got) >= {"mse", "lloyd_max_mse", "ratio", "uniform_mse", "uniform_ratio"}
    for v in got.values():
        assert v.shape == (SITES,) and torch.isfinite(v).all()
    expected_mse = (value(samples.heldout, table) - samples.heldout).pow(2).mean(1)
    torch.testing.assert_close(got["mse"], expected_mse)
    torch.testing.assert_close(
        got["lloyd_max_mse"], lloyd_max_mse(samples.train, samples.heldout, 6)
    )
    torch.testing.assert_close(got["uniform_mse"], uniform_mse(samples.train, samples.heldout, 6))
    torch.testing.assert_close(got["ratio"], got["mse"] / got["lloyd_max_mse"])
    torch.testing.assert_close(got["uniform_ratio"], got["uniform_mse"] / got["lloyd_max_mse"])
    assert (got["mse"] > 0).all() and (got["lloyd_max_mse"] > 0).all()


def test_mgpc_beats_las_on_the_tiny_model(scores):
    assert scores["mgpc"]["ratio"].mean() < scores["las"]["ratio"].mean()
    # the untrained, unscaled phase code is far worse than both
    assert scores["las"]["ratio"].mean() < scores["phase"]["ratio"].mean()


def _heavy_tailed(sites: int, n: int, seed: int) -> torch.Tensor:
    """Student-t (2 degrees of freedom) samples at very different scales per site."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(sites, n, generator=gen)
    chi2 = torch.randn(sites, n, 2, generator=gen).pow(2).sum(-1) / 2
    return z / chi2.sqrt() * torch.logspace(-2, 1, sites)[:, None]


def test_mgpc_beats_las_on_heavy_tailed_samples():
    x = _heavy_tailed(4, 2000, seed=0)
    train, heldout = x[:, :1000], x[:, 1000:]
    scores = {}
    for method in ("mgpc", "las"):
        settings = FitSettings(method=method, timesteps=8, grains=2, train=FAST)
        table = fit_codes(train, settings, progress=False).table
        scores[method] = score_sites(table, train, heldout)
    mgpc, las = scores["mgpc"], scores["las"]
    assert mgpc["ratio"].mean() < 0.8 * las["ratio"].mean()
    assert (mgpc["mse"] <= las["mse"] * 1.05).all()

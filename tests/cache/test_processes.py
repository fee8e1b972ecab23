"""The cache with several processes (real processes, not threads): one GGUF dequantized once
by two at once, two evaluations of one artifact at once, a kill -9 in the middle of a
dequantization, and a cache that cannot be written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from gguf_files import write_tiny_gguf
from helpers import cli_files, tiny_llama

# A child that loads a GGUF, its dequantization slowed down (so that two children overlap)
# and logged, one line per dequantization, to DEQUANTIZED.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    from phasecode.models import gguf
    real = gguf.dequantize

    def slow(*args, **kwargs):
        with open(os.environ["DEQUANTIZED"], "a") as log:
            log.write(f"{os.getpid()}\\n")
        time.sleep(float(os.environ.get("SLOW", "2")))
        return real(*args, **kwargs)

    gguf.dequantize = slow
    from phasecode.cache.fingerprint import model_fingerprint
    from phasecode.models.loading import load_model
    model, _ = load_model(sys.argv[1])
    print(model_fingerprint(model))
    """
)


def _env(cache: Path, **extra: str) -> dict:
    return {
        **os.environ,
        "PHASECODE_CACHE": str(cache),
        "PHASECODE_COMPILE": "0",
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
        **extra,
    }


def _load(gguf_path: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(gguf_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_dequantize_one_gguf_once(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama())
    log = tmp_path / "dequantized.log"
    env = _env(tmp_path / "cache", DEQUANTIZED=str(log), SLOW="8")
    first = _load(path, env)
    time.sleep(1.0)  # the first holds the lock while it dequantizes (slowed by 8 s)
    second = _load(path, env)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert len(log.read_text().split()) == 1  # dequantized once
    assert outputs[0][0] == outputs[1][0]  # the same model (fingerprint)
    waited = [err for _, err in outputs if "waiting for another process" in err]
    assert len(waited) == 1, outputs
    copies = [p for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()]
    assert len(copies) == 1


def test_a_kill_during_dequantization_then_a_rerun(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama())
    log = tmp_path / "dequantized.log"
    cache = tmp_path / "cache"
    env = _env(cache, DEQUANTIZED=str(log), SLOW="60")
    victim = _load(path, env)
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    assert log.exists(), "the child never started dequantizing"
    building = list((cache / "models").glob(".gguf-*.tmp-*"))
    assert building  # its temporary copy, under a name no load reads
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    rerun = _load(path, _env(cache, DEQUANTIZED=str(log), SLOW="0"))
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "waiting" not in err  # the killed process's lock went with it
    assert not list((cache / "models").glob(".gguf-*.tmp-*"))  # its leftovers cleaned
    assert len([p for p in (cache / "models").iterdir() if p.is_dir()]) == 1


@pytest.mark.parametrize("root", ["/proc/phasecode-cache", "file"])
def test_a_cache_that_cannot_be_used(tmp_path, root):
    """Unwritable: works uncached with one warning. A file: one line, exit 2."""
    path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama())
    if root == "file":
        (tmp_path / "cache-file").write_text("not a directory")
        root = str(tmp_path / "cache-file")
    log = tmp_path / "dequantized.log"
    done = _load(path, _env(Path(root), DEQUANTIZED=str(log), SLOW="0"))
    out, err = done.communicate(timeout=300)
    if root.endswith("cache-file"):
        assert done.returncode != 0 and "is a file, not a directory" in err
        return
    assert done.returncode == 0, err
    assert err.count("cannot be written") == 1 and "working uncached" in err
    assert out.strip()  # the model loaded (dequantized in memory)


def test_two_evaluations_of_one_artifact_at_once(tmp_path, tiny_tokenizer):
    """Both finish with the same numbers; the ANN's scores are measured once and read back by
    the other (or measured by both: either way the same)."""
    root = cli_files(tmp_path, tiny_tokenizer)
    cache = tmp_path / "cache"
    env = _env(cache, PHASECODE_SCORE_CACHE="1")
    phasecode = str(Path(sys.executable).parent / "phasecode")
    convert = [phasecode, "convert", "--model", str(root / "model"), "--calibration"]
    convert += [str(root / "calib.jsonl"), "--samples", "32", "--sequences", "4"]
    convert += [
        "--seq-len",
        "32",
        "-T",
        "4",
        "--no-prefix",
        "--quiet",
        "--out",
        str(tmp_path / "a"),
    ]
    subprocess.run(convert, env=env, check=True, capture_output=True, timeout=600)
    runs = []
    for n in range(2):
        argv = [
            phasecode,
            "eval",
            str(tmp_path / "a"),
            "--ppl",
            "",
            "--text",
            str(root / "eval.txt"),
        ]
        argv += [
            "--seq-len",
            "16",
            "--limit",
            "2",
            "--quiet",
            "--json",
            str(tmp_path / f"{n}.json"),
        ]
        runs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = [p.communicate(timeout=600) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], results
    reports = [json.loads((tmp_path / f"{n}.json").read_text()) for n in range(2)]
    key = str(root / "eval.txt")
    assert reports[0]["ppl"][key]["snn"] == reports[1]["ppl"][key]["snn"]
    assert reports[0]["ppl"][key]["ann"] == reports[1]["ppl"][key]["ann"]


def test_a_kill_during_convert_then_a_rerun_without_force(tmp_path, tiny_tokenizer):
    """kill -9 while a conversion trains: nothing half-written under --out, the lock goes with
    the process, and the same command runs again without --force."""
    root = cli_files(tmp_path, tiny_tokenizer)
    started = tmp_path / "training.started"
    child = textwrap.dedent(
        f"""
        import sys, time
        from phasecode.conversion import convert
        real = convert._train

        def slow(*args, **kwargs):
            open({str(started)!r}, "w").close()
            time.sleep(60)
            return real(*args, **kwargs)

        convert._train = slow
        from phasecode.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    argv = ["convert", "--model", str(root / "model"), "--calibration", str(root / "calib.jsonl")]
    argv += ["--samples", "32", "--sequences", "4", "--seq-len", "32", "-T", "4", "--no-prefix"]
    argv += ["--quiet", "--out", str(tmp_path / "art")]
    env = _env(tmp_path / "cache")
    victim = subprocess.Popen([sys.executable, "-c", child, *argv], env=env)
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert started.exists(), "the conversion never reached training"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    art = tmp_path / "art"
    assert not art.exists() or not [p for p in art.iterdir() if not p.name.startswith(".")]
    phasecode = str(Path(sys.executable).parent / "phasecode")
    done = subprocess.run([phasecode, *argv], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads((art / "neurons.json").read_text())["kind"] == "spiking-model"

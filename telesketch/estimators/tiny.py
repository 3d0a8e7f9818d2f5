"""``tiny``: a 2-layer BERT-style transformer trained from scratch (spec §3.2 (b)). Needs torch.

Tokens: one per 2-byte header word (id ``4 + word``, vocab 65,540), ``[CLS] .. [SEP]`` padded to
24, real attention mask. d = 128, 4 heads, FFN 512, learned positions, linear head on ``[CLS]``,
MSE on the soft label, ``score = clip(output, 0, 1)``. About 8.8 M parameters, mostly embedding.

:func:`torch_train` is the training loop shared with the ``lm`` estimator: AdamW, shuffled
mini-batches, the checkpoint with the best validation MSE is kept.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from telesketch.estimators import META_FILE, Estimator, check_headers, require_llm
from telesketch.estimators.tokens import TINY_LEN, TINY_PAD, TINY_VOCAB, tiny_tokens


@dataclass(frozen=True)
class TinyConfig:
    """Model size and training schedule."""

    layers: int = 2
    d_model: int = 128
    heads: int = 4
    ffn: int = 512
    dropout: float = 0.1
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 1


def build_model(cfg: TinyConfig):
    torch = require_llm("torch")
    nn = torch.nn

    class TinyRegressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(TINY_VOCAB, cfg.d_model, padding_idx=TINY_PAD)
            self.pos = nn.Embedding(TINY_LEN, cfg.d_model)
            self.norm = nn.LayerNorm(cfg.d_model)
            layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, cfg.ffn, cfg.dropout, batch_first=True,
                                               activation="gelu")
            self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
            self.drop = nn.Dropout(cfg.dropout)
            self.head = nn.Linear(cfg.d_model, 1)

        def forward(self, ids, mask):
            x = self.norm(self.tok(ids) + self.pos.weight[None, : ids.shape[1]])
            x = self.encoder(x, src_key_padding_mask=mask == 0)
            return self.head(self.drop(x[:, 0])).squeeze(-1)

    return TinyRegressor()


def torch_train(model, encode, train, val, epochs: int, lr: float, batch_size: int, weight_decay: float,
                seed: int, progress: bool, desc: str, params=None):
    """Fit ``model(*encode(headers, hdr_len))`` to ``train.y`` with MSE; keep the best-validation weights."""
    torch = require_llm("torch")
    from telesketch.estimators.training import Progress, mse

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(params if params is not None else model.parameters(), lr=lr, weight_decay=weight_decay)
    x = [torch.from_numpy(a) for a in encode(train.headers, train.hdr_len)]
    y = torch.from_numpy(np.asarray(train.y, np.float32))
    steps = (len(train) + batch_size - 1) // batch_size
    bar = Progress(epochs * steps, desc, progress)
    best, best_state = np.inf, None
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        for s in range(steps):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            loss = torch.nn.functional.mse_loss(model(*(a[idx] for a in x)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(1, loss=loss.item())
        if len(val):
            val_mse = mse(predict(model, encode, val.headers, val.hdr_len), val.y)
            if val_mse < best:
                best, best_state = val_mse, copy.deepcopy(model.state_dict())
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model


def predict(model, encode, headers, hdr_len, batch_size: int = 1024) -> np.ndarray:
    """Raw regression outputs (``float32[n]``) of a torch model, in eval mode, no gradients."""
    torch = require_llm("torch")
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, headers.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            out.append(model(*(torch.from_numpy(a) for a in encode(headers[sl], hdr_len[sl]))).float().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


class TinyEstimator(Estimator):
    """A trained tiny transformer (torch, CPU, ``threads`` intra-op threads)."""

    kind = "tiny"

    def __init__(self, model, config: TinyConfig):
        self.model, self.config = model, config

    @classmethod
    def fit(cls, train, val, config: TinyConfig = TinyConfig(), progress: bool = False) -> "TinyEstimator":
        torch = require_llm("torch")
        torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        model = build_model(config)
        torch_train(model, tiny_tokens, train, val, config.epochs, config.lr, config.batch_size,
                    config.weight_decay, config.seed, progress, "tiny")
        return cls(model, config)

    def score(self, headers, hdr_len) -> np.ndarray:
        headers, hdr_len = check_headers(headers, hdr_len)
        return np.clip(predict(self.model, tiny_tokens, headers, hdr_len), 0.0, 1.0).astype(np.float32)

    def save(self, directory) -> Path:
        torch = require_llm("torch")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), directory / "tiny.pt")
        (directory / META_FILE).write_text(json.dumps({"kind": self.kind, "config": asdict(self.config)}, indent=1))
        return directory

    @classmethod
    def load(cls, directory, threads: int | None = None) -> "TinyEstimator":
        torch = require_llm("torch")
        directory = Path(directory)
        config = TinyConfig(**json.loads((directory / META_FILE).read_text())["config"])
        torch.set_num_threads(threads or config.threads)
        model = build_model(config)
        model.load_state_dict(torch.load(directory / "tiny.pt", weights_only=True))
        model.eval()
        return cls(model, config)

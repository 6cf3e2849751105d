"""The fraud network, its input preprocessing and its on-disk artifact format.

The artifact is a directory with ``model.pt`` (the network's ``state_dict``) and ``config.json`` (network
hyper-parameters, the fitted :class:`Preprocessor`, and free-form metadata such as the decision threshold).
A serving process needs only this module, torch and pandas to load it and score a batch in one forward pass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from relearn.features.spec import CATEGORICAL_INPUTS, NUMERIC_INPUTS

ARTIFACT_FORMAT = "relearn-fraudnet"
ARTIFACT_VERSION = 1
WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """Compress heavy tails (counts, amounts) monotonically; the network applies the same in torch."""
    return np.sign(x) * np.log1p(np.abs(x))


def embedding_dim(cardinality: int) -> int:
    """A small embedding size for a vocabulary of ``cardinality`` entries (including the unknown slot)."""
    return min(8, cardinality // 2 + 1)


class Preprocessor:
    """Turns a DataFrame of model inputs into tensors, vectorized (no per-row Python).

    Numeric columns are passed through as float32 (the network transforms and standardizes them with
    statistics fitted here); categorical values become vocabulary indices where 0 means unknown /
    out of vocabulary (including "" and missing values).
    """

    def __init__(
        self,
        numeric: Sequence[str],
        vocabularies: Mapping[str, Sequence[str]],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.numeric = list(numeric)
        self.vocabularies = {name: list(vocab) for name, vocab in vocabularies.items()}
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    @property
    def categorical(self) -> list[str]:
        """Categorical column names, in tensor column order."""
        return list(self.vocabularies)

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table sizes: vocabulary size plus the unknown slot."""
        return [len(v) + 1 for v in self.vocabularies.values()]

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> Preprocessor:
        """Fit numeric statistics on the training frame; vocabularies come from the feature contract.

        The vocabularies are copied into the preprocessor (and thus into the artifact), so a later change
        of the contract cannot silently shift the indices a trained model expects.
        """
        values = signed_log1p(frame[list(NUMERIC_INPUTS)].to_numpy(np.float64))
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)  # constant columns stay finite
        return cls(NUMERIC_INPUTS, CATEGORICAL_INPUTS, mean, std)

    def numeric_array(self, frame: pd.DataFrame) -> np.ndarray:
        """The raw numeric inputs as a float32 matrix (NaN allowed; the network imputes the mean)."""
        return frame[self.numeric].to_numpy(np.float32)

    def categorical_array(self, frame: pd.DataFrame) -> np.ndarray:
        """Vocabulary indices as an int64 matrix; 0 for anything not in the vocabulary."""
        out = np.zeros((len(frame), len(self.vocabularies)), dtype=np.int64)
        for j, (name, vocab) in enumerate(self.vocabularies.items()):
            out[:, j] = pd.Categorical(_as_strings(frame[name]), categories=vocab).codes.astype(np.int64) + 1
        return out

    def transform(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """(numeric float32 tensor, categorical int64 tensor) for ``frame``."""
        return torch.from_numpy(self.numeric_array(frame)), torch.from_numpy(self.categorical_array(frame))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description; :meth:`from_dict` restores it exactly."""
        return {
            "numeric": self.numeric,
            "vocabularies": self.vocabularies,
            "mean": self.mean,
            "std": self.std,
            "numeric_transform": "signed_log1p",
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessor:
        """Rebuild a preprocessor written by :meth:`to_dict`."""
        return cls(data["numeric"], data["vocabularies"], data["mean"], data["std"])


def _as_strings(column: pd.Series) -> pd.Series:
    """Categorical values as strings; integers (e.g. hour_of_day sent as 7) map to "7", not "7.0"."""
    if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
        return column.astype("string")
    return pd.to_numeric(column).round().astype("Int64").astype("string")


class FraudNet(nn.Module):
    """Embeddings for categorical inputs + standardized numeric inputs → MLP → one fraud logit."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        cardinalities: Sequence[int],
        hidden: Sequence[int] = (64, 32),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.config = {
            "n_numeric": len(mean),
            "cardinalities": list(cardinalities),
            "hidden": list(hidden),
            "dropout": float(dropout),
        }
        # Buffers travel with the state_dict, so the saved weights carry their own standardization.
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))
        self.embeddings = nn.ModuleList(nn.Embedding(n, embedding_dim(n)) for n in cardinalities)
        width = len(mean) + sum(embedding_dim(n) for n in cardinalities)
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FraudNet:
        """A fresh (untrained) network with the shape in ``config``; load a state_dict into it."""
        n = config["n_numeric"]
        return cls([0.0] * n, [1.0] * n, config["cardinalities"], config["hidden"], config["dropout"])

    @property
    def output_bias(self) -> nn.Parameter:
        """The bias of the final layer (shifted after weighted training to undo the prior shift)."""
        return self.mlp[-1].bias

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch,)."""
        x = torch.sign(numeric) * torch.log1p(torch.abs(numeric))
        # Missing values become the training mean (0 after standardization); clamp guards against outliers.
        x = torch.nan_to_num((x - self.mean) / self.std, nan=0.0).clamp(-10.0, 10.0)
        parts = [x, *(emb(categorical[:, j]) for j, emb in enumerate(self.embeddings))]
        return self.mlp(torch.cat(parts, dim=1)).squeeze(1)


@torch.no_grad()
def predict_logits(
    net: FraudNet, numeric: torch.Tensor, categorical: torch.Tensor, batch_size: int = 65536
) -> torch.Tensor:
    """Logits for pre-built tensors, in eval mode, in large chunks to bound memory."""
    was_training = net.training
    if was_training:  # switching modes costs a module-tree walk: a served net stays in eval mode
        net.eval()
    try:
        chunks = [
            net(numeric[i : i + batch_size], categorical[i : i + batch_size])
            for i in range(0, len(numeric), batch_size)
        ]
    finally:
        if was_training:
            net.train()
    return torch.cat(chunks) if chunks else torch.empty(0)


def score(net: FraudNet, preprocessor: Preprocessor, frame: pd.DataFrame) -> np.ndarray:
    """Fraud probabilities (float64) for every row of ``frame`` (needs the MODEL_INPUTS columns)."""
    numeric, categorical = preprocessor.transform(frame)
    return torch.sigmoid(predict_logits(net, numeric, categorical)).double().numpy()


def save_model(
    directory: str | Path,
    net: FraudNet,
    preprocessor: Preprocessor,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write the artifact (``model.pt`` + ``config.json``) into ``directory`` and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), directory / WEIGHTS_FILE)
    config = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "torch_version": torch.__version__,
        "net": net.config,
        "preprocessor": preprocessor.to_dict(),
        "metadata": dict(metadata or {}),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
    return directory


def load_model(directory: str | Path) -> tuple[FraudNet, Preprocessor, dict[str, Any]]:
    """Load an artifact written by :func:`save_model`; the network is returned in eval mode."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    if config.get("format") != ARTIFACT_FORMAT or config.get("format_version") != ARTIFACT_VERSION:
        raise ValueError(f"{directory} is not a {ARTIFACT_FORMAT} v{ARTIFACT_VERSION} artifact")
    net = FraudNet.from_config(config["net"])
    # weights_only: never unpickle arbitrary objects from a model store.
    net.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    net.eval()
    return net, Preprocessor.from_dict(config["preprocessor"]), config["metadata"]

"""Checkpoints in safetensors: model and optimizer tensors plus JSON metadata. Loading never
executes code. A corrupt or mismatched file raises CheckpointError naming the file and the problem."""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from iclab.files import atomic_write_bytes


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, or does not fit the model."""


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int
) -> None:
    """Write model weights, optimizer state and the number of completed steps, atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    groups = [{k: v for k, v in g.items()} for g in optimizer_state["param_groups"]]
    metadata = {"step": str(step), "param_groups": json.dumps(groups)}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> int:
    """Restore a checkpoint into `model` (and `optimizer`); returns the completed step count."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        tensors = load(data)
        metadata = _read_metadata(data)
        step = int(metadata["step"])
    except (SafetensorError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a checkpoint: {error}"
        ) from None
    device = next(model.parameters()).device
    weights = {
        k[len("model.") :]: v.to(device) for k, v in tensors.items() if k.startswith("model.")
    }
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit the model: {error}") from None
    if optimizer is not None:
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                is_step = name == "step"
                state.setdefault(int(index), {})[name] = value if is_step else value.to(device)
        groups = json.loads(metadata["param_groups"])
        try:
            optimizer.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError) as error:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: optimizer state does not fit: {error}"
            ) from None
    return step


def checkpoint_step(path: str | Path) -> int:
    """The completed step count a checkpoint holds, read from its header alone."""
    with open(path, "rb") as file:
        header = file.read(8)
        try:
            return int(_read_metadata(header + file.read(int.from_bytes(header, "little")))["step"])
        except (ValueError, KeyError, json.JSONDecodeError) as error:
            raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: {error}") from None


def _read_metadata(data: bytes) -> dict:
    """safetensors stores a little-endian u64 header length, then a JSON header with __metadata__."""
    header_length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_length])["__metadata__"]

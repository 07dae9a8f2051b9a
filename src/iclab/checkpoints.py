"""Checkpoints in safetensors: model and optimizer tensors plus JSON metadata. Loading never
executes code. A corrupt or mismatched file raises CheckpointError naming the file and the problem.

Metadata (all strings, as safetensors requires):
    step          completed optimizer steps
    param_groups  the optimizer's param_groups, JSON
    run_hash      RunConfig.run_hash() of the run that wrote it: a checkpoint belongs to one run
    train_losses  the train loop's loss accumulator, JSON {"sum", "count", "last"}, so that a
                  resumed run logs the same train_loss as an uninterrupted one
    checksum      sha256 of the tensor data section followed by the other metadata as sorted JSON

Checkpoints written before checksums and run hashes still load, with a warning on stderr. Every
checkpoint's weights must be finite, and its optimizer state must fit the optimizer (Adam: a
one-element step and moments of their parameter's shape, hyperparameters of the optimizer's own
form), so that a damaged old checkpoint is refused too rather than failing in the first step.
"""

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from iclab.files import atomic_write_bytes


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, or does not fit the model or the run."""


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    run_hash: str | None  # None in checkpoints of the old format
    train_losses: dict | None  # {"sum": float, "count": int, "last": float}; None in old ones


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    run_hash: str | None = None,
    train_losses: dict | None = None,
) -> None:
    """Write model weights, optimizer state, the number of completed steps, the run's hash and the
    loop's loss accumulator, with a checksum over all of it, atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    groups = [{k: v for k, v in g.items()} for g in optimizer_state["param_groups"]]
    metadata = {"step": str(step), "param_groups": json.dumps(groups)}
    if run_hash is not None:
        metadata["run_hash"] = run_hash
    if train_losses is not None:
        metadata["train_losses"] = json.dumps(train_losses)
    # The data section does not depend on the metadata: serialise once to checksum it.
    unsigned = save(tensors, metadata=metadata)
    header_length = int.from_bytes(unsigned[:8], "little")
    metadata["checksum"] = _checksum(memoryview(unsigned)[8 + header_length :], metadata)
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    run_hash: str | None = None,
) -> int:
    """Restore a checkpoint into `model` (and `optimizer`); returns the completed step count.
    With run_hash, the checkpoint must have been written by the run of that hash."""
    return restore_checkpoint(path, model, optimizer, run_hash).step


def restore_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    run_hash: str | None = None,
) -> CheckpointInfo:
    """load_checkpoint, returning everything the checkpoint holds besides the tensors. The file is
    verified (checksum, metadata, run hash, finite weights) before anything is loaded, and what
    it restores must fit the model and optimizer."""
    path = Path(path)
    info, groups, tensors = _read(path, run_hash, warn=True)
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
                try:
                    _, index, name = key.split(".", 2)
                    index = int(index)
                except ValueError:
                    raise CheckpointError(
                        f"checkpoint {str(path)!r} has a bad tensor name {key!r}"
                    ) from None
                is_step = name == "step"
                state.setdefault(index, {})[name] = value if is_step else value.to(device)
        own_groups = [dict(group) for group in optimizer.param_groups]
        try:
            optimizer.load_state_dict({"state": state, "param_groups": groups})
            _check_optimizer(optimizer, own_groups)
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: optimizer state does not fit: {error}"
            ) from None
    return info


def verify_checkpoint(path: str | Path, run_hash: str | None = None) -> CheckpointInfo:
    """The checks restore_checkpoint makes before it needs a model (without its warning): raises
    CheckpointError unless the file can be restored from, as far as the file alone can tell."""
    return _read(Path(path), run_hash, warn=False)[0]


def _read(path: Path, run_hash: str | None, warn: bool) -> tuple[CheckpointInfo, list, dict]:
    """The verified metadata fields, param_groups and tensors of a checkpoint."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    data = path.read_bytes()
    metadata, data_start = _read_metadata(path, data)
    info, groups = _verify(path, data, metadata, data_start, run_hash, warn)
    try:
        tensors = load(data)
    except SafetensorError as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a checkpoint: {error}"
        ) from None
    for name, tensor in tensors.items():
        if name.startswith("model.") and not torch.isfinite(tensor).all():
            raise CheckpointError(
                f"checkpoint {str(path)!r} is corrupt: weight {name[len('model.') :]!r} holds "
                "NaN or infinite values"
            )
    return info, groups, tensors


def _check_optimizer(optimizer: torch.optim.Optimizer, own_groups: list[dict]) -> None:
    """Raises ValueError unless the loaded state is of the form the optimizer steps with: each
    hyperparameter of the form of the one the optimizer was built with, each parameter's state
    a one-element step and tensors of the parameter's shape, the same entries for all."""
    for own, loaded in zip(own_groups, optimizer.param_groups, strict=True):
        for key, value in own.items():
            if key != "params" and (key not in loaded or not _fits(loaded[key], value)):
                raise ValueError(f"bad {key!r} = {loaded.get(key)!r} in param_groups")
    entries = set()
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            for key, value in state.items():  # tensors: the file holds nothing else
                if key == "step":
                    fits, expected = value.numel() == 1, "one element"
                else:
                    fits, expected = value.shape == parameter.shape, tuple(parameter.shape)
                if not fits:
                    raise ValueError(f"{key!r} has shape {tuple(value.shape)}, not {expected}")
            if state:
                entries.add(tuple(sorted(state)))
    if len(entries) > 1:
        raise ValueError(f"parameters hold different state entries: {sorted(entries)}")


def _fits(value, own) -> bool:
    """Whether a loaded hyperparameter has the form of the optimizer's own value."""
    if own is None or isinstance(own, bool):  # flags; foreach and fused are None by default
        return value is None or isinstance(value, bool)
    if isinstance(own, (int, float, torch.Tensor)):  # a tensor: the compiled step's lr
        if isinstance(value, torch.Tensor):
            return value.numel() == 1 and bool(torch.isfinite(value).all())
        return type(value) in (int, float) and math.isfinite(value)
    if isinstance(own, (list, tuple)):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(own)
            and all(map(_fits, value, own))
        )
    return type(value) is type(own)


def checkpoint_step(path: str | Path) -> int:
    """The completed step count a checkpoint holds, read from its header alone."""
    path = Path(path)
    with open(path, "rb") as file:
        header = file.read(8)
        # A garbage length must not become a huge read: the header lies within the file.
        length = min(_header_length(header), max(0, path.stat().st_size - 8))
        metadata, _ = _read_metadata(path, header + file.read(length))
    return _step(path, metadata)


def _header_length(data: bytes) -> int:
    return int.from_bytes(data[:8], "little")


def _read_metadata(path: Path, data: bytes) -> tuple[dict, int]:
    """safetensors stores a little-endian u64 header length, then a JSON header with __metadata__;
    returns the metadata and where the data section starts."""
    header_length = _header_length(data)
    try:
        if len(data) < 8 + header_length:
            raise ValueError("the file is shorter than its header")
        metadata = json.loads(data[8 : 8 + header_length])["__metadata__"]
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError("__metadata__ is not a table of strings")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a checkpoint: {error}"
        ) from None
    return metadata, 8 + header_length


def _checksum(data_section, metadata: dict) -> str:
    digest = hashlib.sha256(data_section)
    digest.update(json.dumps(metadata, sort_keys=True).encode())
    return digest.hexdigest()


def _step(path: Path, metadata: dict) -> int:
    text = metadata.get("step")
    if text is None or not (text.isascii() and text.isdigit()):
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: bad step {text!r} in metadata")
    return int(text)


def _verify(
    path: Path, data: bytes, metadata: dict, data_start: int, run_hash: str | None, warn: bool
) -> tuple[CheckpointInfo, list]:
    """Check the checksum, the run hash and every metadata field; the parsed fields."""
    unverified = []
    if "checksum" in metadata:
        unsigned = {k: v for k, v in metadata.items() if k != "checksum"}
        if _checksum(memoryview(data)[data_start:], unsigned) != metadata["checksum"]:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is corrupt: its contents do not match its checksum"
            )
    else:
        unverified.append("no checksum")
    stored_hash = metadata.get("run_hash")
    if stored_hash is None:
        if run_hash is not None:
            unverified.append("no run hash")
    elif run_hash is not None and stored_hash != run_hash:
        raise CheckpointError(
            f"checkpoint {str(path)!r} belongs to another run: it was written by the run of "
            f"config hash {stored_hash}, and this run's config hash is {run_hash}"
        )
    step = _step(path, metadata)
    try:
        groups = json.loads(metadata["param_groups"])
        if not isinstance(groups, list) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
        ):
            raise ValueError("param_groups is not a list of parameter groups")
        losses = None
        if "train_losses" in metadata:
            losses = json.loads(metadata["train_losses"])
            if not _valid_losses(losses):
                raise ValueError(f"bad train_losses {metadata['train_losses']!r}")
    except (KeyError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt: bad metadata: {error}"
        ) from None
    if unverified and warn:
        print(
            f"iclab: warning: checkpoint {str(path)!r} has {' and '.join(unverified)} (written "
            "by an older iclab): loaded without verifying it",
            file=sys.stderr,
        )
    return CheckpointInfo(step, stored_hash, losses), groups


def _valid_losses(losses) -> bool:
    if not isinstance(losses, dict) or set(losses) != {"sum", "count", "last"}:
        return False
    numbers = all(type(losses[k]) in (int, float) for k in ("sum", "last"))
    count = type(losses["count"]) is int and losses["count"] >= 0
    return numbers and count and (losses["count"] > 0 or losses["sum"] == 0.0)

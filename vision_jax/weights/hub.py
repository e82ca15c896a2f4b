"""Pretrained weights by name: `pretrained("resnet50.a1_in1k")` -> module, variables, preprocessing.

What a name can be (`parse_spec`):
  resnet50.a1_in1k, timm:resnet50.a1_in1k, timm/resnet50.a1_in1k,
  hf-hub:timm/resnet50.a1_in1k   a timm checkpoint on the Hugging Face hub; any of them
                                 may end in @REVISION (a branch, tag or commit);
  hf-hub:ORG/REPO                any hub repository holding a timm checkpoint;
  local-dir:/path                a directory holding the same two files as a hub repository
                                 (model.safetensors or pytorch_model.bin, and config.json);
  torchvision:vgg16_bn.IMAGENET1K_V1
                                 torchvision's file, from torch's hub cache directory under
                                 the name torchvision downloads it as;
  npz:/path/file.npz             a big_vision / google-research .npz; the architecture is
                                 named by `model=` or in the name: npz:ARCH@/path/file.npz.

Hub files are fetched with `huggingface_hub.hf_hub_download`, so HF_HUB_CACHE,
HF_HOME and HF_HUB_OFFLINE=1 mean what they mean to timm (they are read at each
call, not when huggingface_hub was imported). A file already in the cache is
used without touching the network; a machine that cannot reach the hub is told
the command that fetches the files instead of waiting on retries.

The preprocessing and the class names come from the checkpoint's config.json
(timm's `pretrained_cfg`: input_size, crop_pct, crop_mode, interpolation, mean,
std, and the label names where present). Where it says nothing, the vision_jax
registry's `ModelInfo` fills in, and a log line says so once per name.

Converted variables are cached under `cache_root()` (VISION_JAX_CACHE, else
$XDG_CACHE_HOME/vision_jax, else ~/.cache/vision_jax), one entry per weights
file, keyed by the file's sha256 (a hub blob's name is its sha256, so a cached
hub file is never read to hash it): an orbax checkpoint of the variables and a
model.json, as `tools/convert_weights.py` writes them, plus a checksum of the
variables (packed into one array per dtype: orbax's cost is per array). An entry
is written to a temporary directory and renamed into place,
so it is complete or absent; one that fails to read or to verify is removed and
rebuilt, with one warning.

Every failure is a `PretrainedError` (a `WeightLoadError`) whose message is one
line naming the problem and the fix; a file that does not fit the architecture
raises the loaders' `WeightLoadError` with its table of mismatches.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import urllib.parse
import zlib
from typing import Any, Iterator, Mapping

import numpy as np
from absl import logging

from vision_jax.weights.errors import WeightLoadError

SCHEMES = ("timm:", "hf-hub:", "local-dir:", "torchvision:", "npz:")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
# Bumped when the conversion of a file changes, so that old cache entries are not reused.
CONVERTER_VERSION = 1
_ENTRY_META = "model.json"
_ENTRY_VARIABLES = "variables"
_SAID: set[str] = set()  # fallback notes already logged, one per name and process


class PretrainedError(WeightLoadError):
  """Weights named by a tag or path could not be resolved, fetched or read."""


@dataclasses.dataclass
class Pretrained:
  """A pretrained model ready to run: `module, variables, preprocess = pretrained(...)`.

  Attributes:
    module: the flax module (eval with `module.apply(variables, x, train=False)`).
    variables: {'params': ..., 'batch_stats': ...} as jax arrays.
    preprocess: the evaluation op string (decode, resize, crop, normalise) the
      weights expect; `vision_jax.data.ops.get_preprocess_fn(preprocess)` runs it.
    preprocess_cfg: the timm-style metadata it was made from (input_size, crop_pct, ...).
    class_names: one name per class of the returned head.
    model_name: vision_jax registry name.
    architecture: the checkpoint's own architecture name (timm's, torchvision's, or the
      registry name of an .npz file), e.g. to build the reference model.
    num_classes: classes of the returned head (0: pooled features).
    overrides: `create_model` overrides the module was built with.
    source: what was loaded, e.g. 'hf-hub:timm/resnet50.a1_in1k@main'.
    weights_file: the file the variables were converted from.
    sha256: that file's sha256.
    from_cache: True when the converted variables came from the cache.
    metadata_from: where the preprocessing came from (config.json or the registry).
  """

  module: Any
  variables: Any
  preprocess: str
  preprocess_cfg: dict[str, Any]
  class_names: list[str]
  model_name: str
  architecture: str
  num_classes: int
  overrides: dict[str, Any]
  source: str
  weights_file: str
  sha256: str
  from_cache: bool
  metadata_from: str

  def __iter__(self) -> Iterator[Any]:
    """Unpacks as (module, variables, preprocess)."""
    return iter((self.module, self.variables, self.preprocess))

  def classify(self, images: str | list[str], top_k: int = 5) -> list[list[tuple[str, float]]]:
    """The top-k (class name, probability) of each image file (paths, globs or folders).

    `vision_jax.pretrained("resnet50.a1_in1k").classify("cat.jpg")`. Files are read
    with the checkpoint's own preprocessing; unreadable ones are named and skipped.
    """
    # pylint: disable=import-outside-toplevel
    from vision_jax.data.image_files import list_images, read_images
    from vision_jax.forward import eval_apply
    paths = list_images([images] if isinstance(images, str) else list(images))
    _, batch = read_images(paths, self.preprocess)
    if not len(batch):
      return []
    logits = np.asarray(eval_apply(self.module, self.variables, batch), np.float64)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    return [[(self.class_names[c], float(p[c])) for c in np.argsort(-p)[:top_k]]
            for p in probabilities]


@dataclasses.dataclass(frozen=True)
class Spec:
  """A parsed weights name.

  Attributes:
    kind: 'hub', 'local', 'torchvision' or 'npz'.
    text: the name as given.
    repo_id: hub repository ('timm/resnet50.a1_in1k'), for 'hub'.
    revision: hub revision, or None for the default branch.
    path: file or directory, for 'local' and 'npz'.
    name: torchvision 'vgg16_bn.IMAGENET1K_V1', or the npz architecture.
  """

  kind: str
  text: str
  repo_id: str = ""
  revision: str | None = None
  path: str = ""
  name: str = ""


def is_pretrained_spec(text: Any) -> bool:
  """True for a name with one of `SCHEMES` or a 'timm/...' repository (not a local path)."""
  return isinstance(text, str) and (text.startswith(SCHEMES) or text.startswith("timm/"))


def parse_spec(text: str, model: str | None = None) -> Spec:
  """Parses a weights name (see the module docstring).

  Raises:
    PretrainedError: the name is empty or malformed.
  """
  if not isinstance(text, str) or not text.strip():
    raise PretrainedError(f"pretrained: {text!r} is not a weights name; give a timm tag such as "
                          "'resnet50.a1_in1k' or one of the prefixes " + ", ".join(SCHEMES) + ".")
  text = text.strip()
  if text.startswith("local-dir:"):
    return Spec("local", text, path=os.path.expanduser(text[len("local-dir:"):]))
  if text.startswith("torchvision:"):
    name = text[len("torchvision:"):]
    return Spec("torchvision", text, name=name if "." in name else f"{name}.IMAGENET1K_V1")
  if text.startswith("npz:"):
    rest = text[len("npz:"):]
    match = re.fullmatch(r"([A-Za-z0-9_]+)@(.+)", rest)
    arch, path = (match[1], match[2]) if match else (model or "", rest)
    if not arch:
      raise PretrainedError(f"pretrained({text!r}): an .npz file does not name its architecture; "
                            f"write npz:ARCH@{rest} (e.g. npz:vit_base_patch16_224@{rest}) or pass "
                            "model=.")
    return Spec("npz", text, path=os.path.expanduser(path), name=arch)
  if text.startswith("hf-hub:"):
    rest = text[len("hf-hub:"):]
  elif text.startswith("timm:"):
    rest = text[len("timm:"):]
    rest = rest if "/" in rest.split("@")[0] else f"timm/{rest}"
  else:
    rest = text if "/" in text.split("@")[0] else f"timm/{text}"
  repo_id, _, revision = rest.partition("@")
  if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*", repo_id):
    raise PretrainedError(f"pretrained({text!r}): {repo_id!r} is not a hub repository name "
                          "(ORG/NAME, e.g. timm/resnet50.a1_in1k).")
  return Spec("hub", text, repo_id=repo_id, revision=revision or None)


# ---------------------------------------------------------------------------------------------
# Where things live.


def hub_cache_dir() -> str:
  """huggingface_hub's cache directory, from the environment as it is now.

  huggingface_hub reads HF_HUB_CACHE / HF_HOME when it is imported; reading them
  here (and passing `cache_dir=`) makes a change made later, by a test or a
  notebook, count too.
  """
  if os.environ.get("HF_HUB_CACHE"):
    return os.path.expanduser(os.environ["HF_HUB_CACHE"])
  if os.environ.get("HUGGINGFACE_HUB_CACHE"):
    return os.path.expanduser(os.environ["HUGGINGFACE_HUB_CACHE"])
  home = os.environ.get("HF_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "huggingface")
  return os.path.join(os.path.expanduser(home), "hub")


def hub_offline() -> bool:
  """HF_HUB_OFFLINE (or huggingface_hub's own offline switch) is on."""
  value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
  if value.strip().lower() in ("1", "on", "yes", "true"):
    return True
  try:
    from huggingface_hub import constants  # pylint: disable=import-outside-toplevel
    return bool(constants.HF_HUB_OFFLINE)
  except ImportError:
    return False


def hub_reachable(timeout: float = 3.0) -> bool:
  """Whether a TCP connection to the hub's endpoint opens within `timeout` seconds.

  huggingface_hub retries an unreachable host for about 25 s before it gives up;
  this answers in at most `timeout` (immediately when DNS fails).
  """
  endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
  url = urllib.parse.urlparse(endpoint)
  port = url.port or (443 if url.scheme == "https" else 80)
  try:
    with socket.create_connection((url.hostname or "", port), timeout=timeout):
      return True
  except OSError:
    return False


def cache_root() -> str:
  """Where converted variables are cached (VISION_JAX_CACHE, else the XDG cache)."""
  if os.environ.get("VISION_JAX_CACHE"):
    return os.path.expanduser(os.environ["VISION_JAX_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "vision_jax")


def torch_hub_dir() -> str:
  """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else the XDG cache."""
  home = os.environ.get("TORCH_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
  return os.path.join(os.path.expanduser(home), "hub")


# ---------------------------------------------------------------------------------------------
# What timm knows about tags (optional: without timm the hub is asked directly).


@functools.lru_cache(maxsize=None)
def _timm_tags() -> frozenset[str] | None:
  """timm's pretrained tags, or None when timm cannot be imported (here).

  timm imports torchvision, which crashes the process when TensorFlow was imported
  first (as in the trainer); there the hub is asked directly instead.
  """
  if "timm" not in sys.modules and "tensorflow" in sys.modules:
    return None
  try:
    import timm  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return frozenset(timm.list_pretrained())


def implemented_architectures() -> list[str]:
  """The timm architecture names vision_jax implements (and whose weights it loads)."""
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.weights.timm import timm_family  # pylint: disable=import-outside-toplevel
  names = set()
  for name in models.list_models():
    timm_name = models.model_info(name).timm_name
    for candidate in filter(None, (timm_name, name)):
      try:
        timm_family(candidate)
        names.add(candidate)
      except WeightLoadError:
        pass
  return sorted(names)


def _check_architecture(arch: str, where: str) -> None:
  from vision_jax.weights.timm import timm_family  # pylint: disable=import-outside-toplevel
  try:
    timm_family(arch)
  except WeightLoadError:
    raise PretrainedError(
        f"{where}: timm architecture {arch!r} is not implemented by vision_jax. Implemented: "
        + ", ".join(implemented_architectures()) + ".") from None


def _timm_name_check(spec: Spec) -> str:
  """For a timm/ repository: the repository timm hosts the tag under (resolving a bare
  architecture to its default tag), after checking that the tag exists and that its
  architecture is implemented."""
  name = spec.repo_id.split("/", 1)[1]
  where = f"pretrained({spec.text!r})"
  tags = _timm_tags()
  if tags is None and "." not in name:
    raise PretrainedError(f"{where}: {name!r} names an architecture, not a pretrained tag; add "
                          f"the tag, e.g. timm:{name}.TAG (timm.list_pretrained('{name}.*') lists "
                          "them).")
  if tags is not None:
    import timm  # pylint: disable=import-outside-toplevel
    if name not in tags and "." not in name and name in set(timm.list_models()):
      cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
      if cfg is not None and cfg.hf_hub_id:
        name = cfg.hf_hub_id.split("/", 1)[-1]
    if name not in tags:
      near = difflib.get_close_matches(name, sorted(tags), n=5, cutoff=0.6)
      if not near:  # a mistyped tag of a known architecture: list that architecture's tags
        near = sorted(t for t in tags if t.split(".")[0] == name.split(".")[0])[:5]
      raise PretrainedError(
          f"{where}: unknown timm tag {name!r}. Nearest known tags: "
          + (", ".join(near) if near else "none") + " (all of them: timm.list_pretrained()).")
  _check_architecture(name.split(".")[0], where)
  if tags is not None:
    import timm  # pylint: disable=import-outside-toplevel
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    if cfg is not None and not cfg.hf_hub_id:
      raise PretrainedError(f"{where}: timm hosts {name!r} at {cfg.url or 'a custom source'}, not "
                            "on the Hugging Face hub; download it and use tools/convert_weights.py.")
    if cfg is not None and cfg.hf_hub_id and cfg.hf_hub_id != f"timm/{name}":
      return cfg.hf_hub_id.split("@")[0]
  return f"timm/{name}"


# ---------------------------------------------------------------------------------------------
# Fetching from the hub.


def _download_command(repo_id: str, revision: str | None, files: tuple[str, ...]) -> str:
  command = f"hf download {repo_id} " + " ".join(files)
  if revision:
    command += f" --revision {revision}"
  cache = hub_cache_dir()
  default = os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")
  if os.path.abspath(cache) != os.path.abspath(default):
    command += f" --cache-dir {cache}"
  return command


def add_to_hub_cache(repo_id: str, files: Mapping[str, str], cache_dir: str | None = None,
                     commit: str | None = None) -> str:
  """Places local files into a hub cache, laid out as huggingface_hub lays it out.

  models--ORG--NAME/blobs/<sha256> holds each file's bytes, refs/main the commit
  and snapshots/<commit>/<name> links to the blob. For machines without internet
  access (copy a model's config.json and model.safetensors over, then run this) and
  for tests.

  Args:
    repo_id: 'ORG/NAME', e.g. 'timm/resnet50.a1_in1k'.
    files: file name in the repository -> local path.
    cache_dir: the hub cache (default: `hub_cache_dir()`).
    commit: the snapshot's commit hash (default: derived from the files' hashes).

  Returns:
    The snapshot directory.
  """
  cache_dir = cache_dir or hub_cache_dir()
  repo = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
  shas = {name: file_sha256(path) for name, path in files.items()}
  commit = commit or hashlib.sha1("".join(sorted(shas.values())).encode()).hexdigest()
  snapshot = os.path.join(repo, "snapshots", commit)
  os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
  os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
  os.makedirs(snapshot, exist_ok=True)
  for name, path in files.items():
    blob = os.path.join(repo, "blobs", shas[name])
    if not os.path.exists(blob):
      shutil.copyfile(path, blob + ".tmp")
      os.replace(blob + ".tmp", blob)
    link = os.path.join(snapshot, name)
    if os.path.lexists(link):
      os.remove(link)
    os.symlink(os.path.relpath(blob, snapshot), link)
  with open(os.path.join(repo, "refs", "main"), "w", encoding="utf-8") as f:
    f.write(commit)
  return snapshot


def _incomplete_files(repo_id: str) -> set[str]:
  blobs = os.path.join(hub_cache_dir(), "models--" + repo_id.replace("/", "--"), "blobs")
  try:
    return {os.path.join(blobs, n) for n in os.listdir(blobs) if n.endswith(".incomplete")}
  except OSError:
    return set()


def _cached_file(repo_id: str, filename: str, revision: str | None) -> str | None:
  """The path of `filename` in the hub cache, or None; never touches the network."""
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  from huggingface_hub import errors  # pylint: disable=import-outside-toplevel
  try:
    return huggingface_hub.hf_hub_download(repo_id, filename, revision=revision,
                                           cache_dir=hub_cache_dir(), local_files_only=True)
  except (errors.LocalEntryNotFoundError, errors.EntryNotFoundError, FileNotFoundError,
          errors.HFValidationError):
    return None


def _hub_file(spec: Spec, repo_id: str, filename: str, *, required: bool = True) -> str | None:
  """The local path of `filename` in `repo_id`, from the cache or downloaded into it.

  Returns None when the repository exists but has no such file and `required` is False.
  """
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  from huggingface_hub import errors  # pylint: disable=import-outside-toplevel
  where = f"pretrained({spec.text!r})"
  kwargs = dict(revision=spec.revision, cache_dir=hub_cache_dir(), library_name="vision_jax")
  cached = _cached_file(repo_id, filename, spec.revision)
  if cached is not None:
    return cached
  files = (CONFIG_FILE, WEIGHT_FILES[0])
  if hub_offline():
    raise PretrainedError(
        f"{where}: {repo_id}/{filename} is not in the hub cache {hub_cache_dir()} and "
        f"HF_HUB_OFFLINE is set; fetch it on a machine with internet access with "
        f"`{_download_command(repo_id, spec.revision, files)}` (then copy the cache over), "
        "or unset HF_HUB_OFFLINE.")
  if not hub_reachable():
    raise PretrainedError(
        f"{where}: {repo_id}/{filename} is not in the hub cache {hub_cache_dir()} and the hub "
        f"cannot be reached from here; fetch it with "
        f"`{_download_command(repo_id, spec.revision, files)}` where there is internet access "
        "(then copy the cache over, or point HF_HUB_CACHE at it).")
  before = _incomplete_files(repo_id)
  try:
    return huggingface_hub.hf_hub_download(repo_id, filename, **kwargs)
  except errors.RepositoryNotFoundError:
    raise PretrainedError(f"{where}: the hub has no repository {repo_id!r} (or it is private: "
                          "log in with `hf auth login`). Check the tag against "
                          "timm.list_pretrained().") from None
  except errors.RevisionNotFoundError:
    raise PretrainedError(f"{where}: {repo_id} has no revision {spec.revision!r}.") from None
  except errors.LocalEntryNotFoundError as e:  # the connection went between probe and download
    raise PretrainedError(
        f"{where}: downloading {filename} of {repo_id} failed (the hub stopped answering: "
        f"{(str(e).splitlines() or [''])[0][:120]}); fetch it with "
        f"`{_download_command(repo_id, spec.revision, files)}` where there is internet access.") from None
  except errors.EntryNotFoundError:
    if required:
      raise PretrainedError(f"{where}: {repo_id} has no {filename}, so it is not a timm model "
                            "repository.") from None
    return None
  except Exception as e:  # a network failure mid-download: httpx, OSError, ...
    # huggingface_hub keeps a partial blob to resume later; nothing half-written is kept.
    for path in _incomplete_files(repo_id) - before:
      try:
        os.remove(path)
      except OSError:
        pass
    first = (str(e).strip().splitlines() or [""])[0][:200]
    raise PretrainedError(
        f"{where}: downloading {filename} of {repo_id} failed ({type(e).__name__}: {first}); "
        "nothing was kept in the cache. Run it again, or fetch it with "
        f"`{_download_command(repo_id, spec.revision, files)}`.") from None


def _read_config(path: str, where: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise PretrainedError(f"{where}: cannot read {path} ({type(e).__name__}: {e}).") from None
  if not isinstance(config, dict) or not config.get("architecture"):
    kind = config.get("model_type") if isinstance(config, dict) else None
    raise PretrainedError(
        f"{where}: this is not a timm model: its config.json has no 'architecture'"
        + (f" (model_type {kind!r}: a transformers model?)" if kind else "")
        + ". Give a timm tag, e.g. timm:resnet50.a1_in1k.")
  return config


def _resolve_files(spec: Spec) -> tuple[str, str, dict[str, Any]]:
  """(weights file, where it came from, config.json) for a hub or local-dir spec."""
  where = f"pretrained({spec.text!r})"
  if spec.kind == "local":
    if not os.path.isdir(spec.path):
      raise PretrainedError(f"{where}: {spec.path} is not a directory; local-dir: takes a directory "
                            f"holding {CONFIG_FILE} and {' or '.join(WEIGHT_FILES)}.")
    config_path = os.path.join(spec.path, CONFIG_FILE)
    if not os.path.isfile(config_path):
      raise PretrainedError(f"{where}: {spec.path} has no {CONFIG_FILE}; it needs the timm "
                            "config next to the weights (timm's save_pretrained writes both).")
    config = _read_config(config_path, where)
    for name in WEIGHT_FILES:
      if os.path.isfile(os.path.join(spec.path, name)):
        return os.path.join(spec.path, name), f"local-dir:{os.path.abspath(spec.path)}", config
    raise PretrainedError(f"{where}: {spec.path} holds neither {' nor '.join(WEIGHT_FILES)}.")
  repo_id = spec.repo_id
  # A cached tag needs no check against timm's list (importing timm costs seconds).
  config_path = _cached_file(repo_id, CONFIG_FILE, spec.revision)
  if repo_id.startswith("timm/") and ("." not in repo_id or config_path is None):
    repo_id = _timm_name_check(spec)
    config_path = None
  config = _read_config(config_path or _hub_file(spec, repo_id, CONFIG_FILE), where)
  _check_architecture(str(config["architecture"]), where)
  # A cached file of either kind first (some repositories hold only pytorch_model.bin).
  path = (_cached_file(repo_id, WEIGHT_FILES[0], spec.revision)
          or _cached_file(repo_id, WEIGHT_FILES[1], spec.revision)
          or _hub_file(spec, repo_id, WEIGHT_FILES[0], required=False)
          or _hub_file(spec, repo_id, WEIGHT_FILES[1]))
  return path, f"hf-hub:{repo_id}@{spec.revision or 'main'}", config


def precheck(spec: str) -> None:
  """What can be said of a name before any work, without the network or timm.

  The form of the name, the architecture a timm tag names, and, with HF_HUB_OFFLINE
  set, whether its files are cached. The trainer's config check calls it, so that
  these mistakes stop a run before its workdir is created.

  Raises:
    PretrainedError: one line, as `pretrained` would raise it.
  """
  parsed = parse_spec(spec)
  where = f"pretrained({parsed.text!r})"
  if parsed.kind != "hub":
    if parsed.kind in ("local", "npz") and not os.path.exists(parsed.path):
      raise PretrainedError(f"{where}: {parsed.path} does not exist.")
    return
  name = parsed.repo_id.split("/", 1)[1]
  if parsed.repo_id.startswith("timm/") and "." in name:
    _check_architecture(name.split(".")[0], where)
  if hub_offline() and _cached_file(parsed.repo_id, CONFIG_FILE, parsed.revision) is None:
    raise PretrainedError(
        f"{where}: {parsed.repo_id}/{CONFIG_FILE} is not in the hub cache {hub_cache_dir()} and "
        "HF_HUB_OFFLINE is set; fetch it on a machine with internet access with "
        f"`{_download_command(parsed.repo_id, parsed.revision, (CONFIG_FILE, WEIGHT_FILES[0]))}` "
        "(then copy the cache over), or unset HF_HUB_OFFLINE.")


def available(spec: str, timeout: float = 3.0) -> bool:
  """Whether `pretrained(spec)` can find its files: cached (or on disk), or the hub answers.

  Cheap (a cache lookup, then at most `timeout` seconds of connection attempt), so a
  notebook can choose between pretrained weights and a fallback without waiting for
  huggingface_hub's retries. A True does not promise that the tag exists.
  """
  try:
    parsed = parse_spec(spec)
  except PretrainedError:
    return False
  if parsed.kind == "local":
    return os.path.isfile(os.path.join(parsed.path, CONFIG_FILE))
  if parsed.kind == "npz":
    return os.path.isfile(parsed.path)
  if parsed.kind == "torchvision":
    from vision_jax.weights import torchvision as tv  # pylint: disable=import-outside-toplevel
    arch, _, weights = parsed.name.partition(".")
    entry = tv.TORCHVISION_WEIGHTS.get(arch, {}).get(weights)
    return bool(entry) and os.path.isfile(os.path.join(torch_hub_dir(), "checkpoints", entry[0]))
  if _cached_file(parsed.repo_id, CONFIG_FILE, parsed.revision) is not None:
    return True
  return not hub_offline() and hub_reachable(timeout)


# ---------------------------------------------------------------------------------------------
# Reading and hashing weights files.


def file_sha256(path: str) -> str:
  """sha256 of a file; a hub blob (named by its sha256, checked on download) is not read."""
  real = os.path.realpath(path)
  name = os.path.basename(real)
  if re.fullmatch(r"[0-9a-f]{64}", name) and os.path.basename(os.path.dirname(real)) == "blobs":
    return name
  digest = hashlib.sha256()
  with open(real, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def read_state_dict(path: str, where: str) -> dict[str, np.ndarray]:
  """A .safetensors file or a torch state dict (loaded with weights_only=True) as numpy."""
  try:
    if path.endswith(".safetensors") or _is_safetensors(path):
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
      try:
        return dict(load_file(path))
      except (TypeError, ValueError):  # bfloat16 has no numpy dtype: go through torch
        from safetensors.torch import load_file as load_torch  # pylint: disable=import-outside-toplevel
        return _torch_to_numpy(load_torch(path))
    import torch  # pylint: disable=import-outside-toplevel
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
      sd = sd["state_dict"]
    return _torch_to_numpy(sd)
  except Exception as e:  # pylint: disable=broad-except
    raise PretrainedError(f"{where}: cannot read the weights file {path} ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:200]}); it is damaged or not a "
                          "state dict. Delete it and fetch it again.") from None


def _is_safetensors(path: str) -> bool:
  # Hub snapshots keep the file name; a blob path has none, so look at the header.
  try:
    with open(path, "rb") as f:
      head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"
  except OSError:
    return False


def _torch_to_numpy(sd: Mapping[str, Any]) -> dict[str, np.ndarray]:
  import torch  # pylint: disable=import-outside-toplevel
  out = {}
  for k, v in sd.items():
    if hasattr(v, "dtype") and v.dtype == torch.bfloat16:
      v = v.float()
    out[k] = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
  return out


# ---------------------------------------------------------------------------------------------
# The cache of converted variables.


def _entry_key(sha256: str, loader: str, arch: str, overrides: Mapping[str, Any]) -> str:
  recipe = json.dumps([CONVERTER_VERSION, loader, arch, _jsonable(overrides)], sort_keys=True)
  return f"{sha256}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return repr(value)


def _pack(variables: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], list[list[Any]]]:
  """All leaves in one flat buffer per dtype, and where each leaf sits in it.

  An orbax checkpoint costs a few milliseconds per array to write and to read,
  whatever its size (README, "Checkpoints"); a ResNet-50 has 320 arrays, a ViT-B
  152. One array per dtype makes a cached load a few large reads.
  """
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  leaves = sorted(traverse_util.flatten_dict(dict(variables)).items())
  arrays = [(path, np.asarray(leaf)) for path, leaf in leaves]
  layout, sizes = [], {}
  for path, array in arrays:
    dtype = array.dtype.name
    layout.append(["/".join(path), dtype, list(array.shape), sizes.get(dtype, 0)])
    sizes[dtype] = sizes.get(dtype, 0) + array.size
  buffers = {dtype: np.empty(size, dtype) for dtype, size in sizes.items()}
  for (_, array), (_, dtype, _, offset) in zip(arrays, layout):
    buffers[dtype][offset:offset + array.size] = array.reshape(-1)
  return buffers, layout


def _unpack(buffers: Mapping[str, np.ndarray], layout: list[list[Any]]) -> dict[str, Any]:
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  flat = {}
  for path, dtype, shape, offset in layout:
    size = int(np.prod(shape, dtype=np.int64))
    flat[tuple(path.split("/"))] = buffers[dtype][offset:offset + size].reshape(shape)
  return traverse_util.unflatten_dict(flat)


def _checksum(buffers: Mapping[str, np.ndarray], layout: list[list[Any]]) -> str:
  """The layout's adler32, and per buffer its size and the sum of its 64-bit words.

  Catches truncated, zeroed or overwritten data (not a deliberate forgery) for
  about 15 ms per 100 MB; a crc32 took 120 ms, a tenth of a cached ResNet-50 load.
  """
  parts = [f"{zlib.adler32(json.dumps(layout).encode()):08x}"]
  for dtype in sorted(buffers):
    raw = np.ascontiguousarray(buffers[dtype]).view(np.uint8).reshape(-1)
    n = raw.size // 8 * 8
    words = int(raw[:n].view(np.uint64).sum(dtype=np.uint64))
    parts.append(f"{dtype}:{raw.size}:{words:016x}:{int(raw[n:].sum())}")
  return "|".join(parts)


def _checkpointer():
  """Orbax without compression: trained weights barely compress, and decompressing a
  ResNet-50 doubled the CPU time of a cached load (0.24 s against 0.11 s)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False))


def _read_entry(entry: str, sha256: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(metadata, variables) of a cache entry; raises ValueError when it is damaged."""
  try:
    with open(os.path.join(entry, _ENTRY_META), encoding="utf-8") as f:
      meta = json.load(f)
    layout = meta["layout"]
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f"{_ENTRY_META} unreadable ({type(e).__name__})") from None
  if meta.get("sha256") != sha256 or "checksum" not in meta:
    raise ValueError(f"{_ENTRY_META} belongs to another file")
  try:
    with _checkpointer() as checkpointer:
      buffers = checkpointer.restore(os.path.join(entry, _ENTRY_VARIABLES))
    buffers = {k: np.asarray(v) for k, v in buffers.items()}
    if _checksum(buffers, layout) != meta["checksum"]:
      raise ValueError("checksum")
    return meta, _unpack(buffers, layout)
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many types
    raise ValueError(f"the variables do not read back as written ({type(e).__name__}: "
                     f"{(str(e).splitlines() or [''])[0][:120]})") from None


def _write_entry(entry: str, variables: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
  """Writes a cache entry atomically (temporary directory, then rename); never raises."""
  parent = os.path.dirname(entry)
  tmp = None
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    buffers, layout = _pack(variables)
    with _checkpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, _ENTRY_VARIABLES), buffers)
    with open(os.path.join(tmp, _ENTRY_META), "w", encoding="utf-8") as f:
      json.dump({**meta, "layout": layout, "checksum": _checksum(buffers, layout)}, f,
                sort_keys=True)
    os.rename(tmp, entry)
    tmp = None
  except OSError as e:  # a read-only or full cache costs a conversion next time, nothing more
    logging.warning("Could not cache the converted weights in %s (%s); they will be converted "
                    "again next time.", entry, e)
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)


def _cached_convert(sha256: str, loader: str, arch: str, overrides: Mapping[str, Any],
                    convert, label: str) -> tuple[dict[str, Any], dict[str, Any], bool]:
  """(metadata, variables, from_cache): the cache entry, or `convert()` stored as one.

  `convert()` returns (model_name, module overrides, variables).
  """
  entry = os.path.join(cache_root(), "converted", _entry_key(sha256, loader, arch, overrides))
  if os.path.isdir(entry):
    try:
      meta, variables = _read_entry(entry, sha256)
      return meta, variables, True
    except ValueError as e:
      logging.warning("The cached conversion of %s in %s is damaged (%s): removed, converting "
                      "again.", label, entry, e)
      shutil.rmtree(entry, ignore_errors=True)
  try:
    model_name, module_overrides, variables = convert()
  except PretrainedError:
    raise
  except WeightLoadError as e:  # the table of what does not fit, named after its source
    raise WeightLoadError(f"{label}: {e}") from None
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  meta = {"model": model_name, "num_classes": _head_classes(variables, model_name),
          "overrides": _jsonable(module_overrides), "source": label, "sha256": sha256,
          "loader": loader, "converter_version": CONVERTER_VERSION,
          "info": _jsonable(dataclasses.asdict(models.model_info(model_name))),
          "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
  _write_entry(entry, variables, meta)
  return meta, variables, False


def _head_classes(variables: Mapping[str, Any], model_name: str) -> int:
  from vision_jax.weights.core import classifier_classes  # pylint: disable=import-outside-toplevel
  return classifier_classes(variables.get("params", {}), model_name) or 0


def _module_overrides(module, model_name: str) -> dict[str, Any]:
  """The create_model overrides that rebuild `module`: its fields that differ from the
  registered model's (num_classes and dtype aside)."""
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  default = models.create_model(model_name, num_classes=module.num_classes)
  out = {}
  for field in dataclasses.fields(module):
    if field.name in ("parent", "name", "num_classes", "dtype"):
      continue
    value = getattr(module, field.name, None)
    if value != getattr(default, field.name, None):
      out[field.name] = value
  return out


def _hashable(value: Any) -> Any:
  if isinstance(value, list):
    return tuple(_hashable(v) for v in value)
  if isinstance(value, dict):
    return {k: _hashable(v) for k, v in value.items()}
  return value


# ---------------------------------------------------------------------------------------------
# Metadata: preprocessing and class names.

_PREPROCESS_KEYS = ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std")


def _preprocess_cfg(pretrained_cfg: Mapping[str, Any] | None, model_name: str,
                    img_size: int | None, label: str) -> tuple[dict[str, Any], str]:
  """timm-style eval metadata: the checkpoint's, with the registry filling what it lacks."""
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  info = models.model_info(model_name)
  fallback = {"input_size": img_size or info.input_size, "crop_pct": info.crop_pct,
              "crop_mode": "center", "interpolation": info.interpolation,
              "mean": list(info.mean), "std": list(info.std)}
  given = {k: pretrained_cfg[k] for k in _PREPROCESS_KEYS
           if pretrained_cfg and pretrained_cfg.get(k) is not None}
  lacking = [k for k in _PREPROCESS_KEYS if k not in given]
  cfg = {**fallback, **given}
  if isinstance(cfg["input_size"], (list, tuple)):
    cfg["input_size"] = int(cfg["input_size"][-1])
  cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
  if not lacking:
    return cfg, "config.json"
  origin = (f"vision_jax's registry entry for {model_name}" if not given else
            f"config.json, with {', '.join(lacking)} from vision_jax's registry entry for "
            f"{model_name}")
  note = f"{label}: the checkpoint gives no {', '.join(lacking)}; using {origin}."
  if note not in _SAID:
    _SAID.add(note)
    logging.warning("%s", note)
  return cfg, origin


def _class_names(config: Mapping[str, Any] | None, num_classes: int) -> list[str]:
  """Label descriptions, else label names, from config.json; ImageNet-1k for 1000 classes."""
  from vision_jax.data.image_files import imagenet_class_names  # pylint: disable=import-outside-toplevel
  config = config or {}
  cfg = config.get("pretrained_cfg") or {}
  names = config.get("label_names") or cfg.get("label_names")
  descriptions = config.get("label_descriptions") or cfg.get("label_descriptions")
  if isinstance(names, dict):
    names = [names.get(str(i), names.get(i, f"class_{i}")) for i in range(num_classes)]
  if names and len(names) == num_classes:
    if isinstance(descriptions, dict):
      return [str(descriptions.get(n, n)) for n in names]
    return [str(n) for n in names]
  if num_classes == 1000:
    return imagenet_class_names()
  return [f"class_{i}" for i in range(num_classes)]


# ---------------------------------------------------------------------------------------------
# The one call.


def pretrained(spec: str, num_classes: int | None = None, *, model: str | None = None,
               dtype: Any = None, **overrides: Any) -> Pretrained:
  """A pretrained model by name: its module, variables, preprocessing and class names.

  Args:
    spec: a timm tag ('resnet50.a1_in1k', 'timm:...', 'timm/...', 'hf-hub:ORG/REPO', each
      with an optional '@revision'), 'local-dir:/path', 'torchvision:NAME.WEIGHTS' or
      'npz:[ARCH@]/path.npz' (see the module docstring).
    num_classes: None keeps the checkpoint's classifier; another number drops it and
      creates a zero-initialised one of that size (the trainer's `zero_init_head`);
      0 returns pooled features.
    model: the vision_jax architecture of an npz file (when the spec does not name it).
    dtype: compute dtype of the module (default float32); parameters stay float32.
    **overrides: extra `create_model` overrides (drop_path_rate=0.1, reduced widths).

  Returns:
    A `Pretrained`; `module, variables, preprocess = pretrained(...)` unpacks it.

  Raises:
    PretrainedError: the name is unknown, its architecture is not implemented, the
      files are not cached and cannot be fetched, a download fails, or the repository
      is not a timm model; one line says which and what to do.
    WeightLoadError: the file does not fit the architecture (the table of mismatches).
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  dtype = jnp.float32 if dtype is None else dtype
  parsed = parse_spec(spec, model=model)
  where = f"pretrained({parsed.text!r})"
  if parsed.kind == "torchvision":
    loaded = _load_torchvision(parsed, where, dtype, overrides)
  elif parsed.kind == "npz":
    loaded = _load_npz(parsed, where, dtype, overrides)
  else:
    loaded = _load_timm(parsed, where, dtype, overrides)
  if num_classes is not None and num_classes != loaded.num_classes:
    loaded = _replace_head(loaded, num_classes, dtype)
  return loaded


def _load_timm(spec: Spec, where: str, dtype: Any, overrides: Mapping[str, Any]) -> Pretrained:
  from vision_jax.weights.timm import from_timm, resolve  # pylint: disable=import-outside-toplevel
  path, label, config = _resolve_files(spec)
  arch = str(config["architecture"])
  sha = file_sha256(path)

  def convert():
    sd = read_state_dict(path, where)
    module, variables = from_timm(arch, sd, **overrides)
    model_name, _, _ = resolve(arch, sd)
    return model_name, _module_overrides(module, model_name), variables

  meta, variables, from_cache = _cached_convert(sha, "timm", arch, overrides, convert, label)
  return _assemble(meta, variables, dtype, overrides, arch, label, path, sha, from_cache,
                   config.get("pretrained_cfg"), config)


def _load_torchvision(spec: Spec, where: str, dtype: Any,
                      overrides: Mapping[str, Any]) -> Pretrained:
  from vision_jax.weights import torchvision as tv  # pylint: disable=import-outside-toplevel
  arch, _, weights = spec.name.partition(".")
  known = tv.TORCHVISION_WEIGHTS.get(arch, {})
  if arch not in tv.TORCHVISION_MODELS:
    near = difflib.get_close_matches(arch, list(tv.TORCHVISION_MODELS), n=5, cutoff=0.5)
    raise PretrainedError(
        f"{where}: torchvision model {arch!r} is not implemented by vision_jax"
        + (f" (nearest: {', '.join(near)})" if near else "") + ". Implemented: "
        + ", ".join(tv.TORCHVISION_MODELS) + ".")
  if weights not in known:
    raise PretrainedError(f"{where}: torchvision has no weights {weights!r} for {arch}; known: "
                          + ", ".join(f"{arch}.{w}" for w in known) + ".")
  filename, resize, crop = known[weights]
  path = os.path.join(torch_hub_dir(), "checkpoints", filename)
  label = f"torchvision:{arch}.{weights}"
  if not os.path.isfile(path):
    raise PretrainedError(
        f"{where}: {path} is not there (torch's hub cache, TORCH_HOME); fetch it with "
        f"`python -c \"import torchvision; torchvision.models.get_model('{arch}', "
        f"weights='{weights}')\"` or `curl -L --create-dirs -o {path} "
        f"{tv.TORCHVISION_URL}{filename}` where there is internet access.")
  sha = file_sha256(path)

  def convert():
    module, variables = tv.from_torchvision(arch, read_state_dict(path, where), **overrides)
    model_name = tv.TORCHVISION_MODELS[arch][0]
    return model_name, _module_overrides(module, model_name), variables

  meta, variables, from_cache = _cached_convert(sha, "torchvision", arch, overrides, convert,
                                                label)
  cfg = {"input_size": crop, "crop_pct": crop / resize, "crop_mode": "center",
         "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
  return _assemble(meta, variables, dtype, overrides, arch, label, path, sha, from_cache, cfg,
                   None, metadata_from="torchvision's transforms for these weights")


def _load_npz(spec: Spec, where: str, dtype: Any, overrides: Mapping[str, Any]) -> Pretrained:
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.weights.npz import from_npz  # pylint: disable=import-outside-toplevel
  if spec.name not in models.list_models():
    near = difflib.get_close_matches(spec.name, models.list_models(), n=5, cutoff=0.5)
    raise PretrainedError(f"{where}: {spec.name!r} is not a vision_jax architecture"
                          + (f"; nearest: {', '.join(near)}" if near else "")
                          + " (see vision_jax.models.list_models()).")
  if not os.path.isfile(spec.path):
    raise PretrainedError(f"{where}: {spec.path} does not exist.")
  sha = file_sha256(spec.path)
  label = f"npz:{spec.name}@{os.path.abspath(spec.path)}"

  def convert():
    try:
      with np.load(spec.path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
      raise PretrainedError(f"{where}: cannot read {spec.path} as an .npz file ({e}).") from None
    module, variables = from_npz(spec.name, arrays, **overrides)
    return spec.name, _module_overrides(module, spec.name), variables

  meta, variables, from_cache = _cached_convert(sha, "npz", spec.name, overrides, convert, label)
  return _assemble(meta, variables, dtype, overrides, spec.name, label, spec.path, sha,
                   from_cache, None, None)


def _assemble(meta: Mapping[str, Any], variables: Any, dtype: Any, overrides: Mapping[str, Any],
              architecture: str, label: str, path: str, sha: str, from_cache: bool,
              pretrained_cfg: Mapping[str, Any] | None, config: Mapping[str, Any] | None,
              metadata_from: str | None = None) -> Pretrained:
  """Builds the module from the entry's metadata and attaches preprocessing and names."""
  import jax  # pylint: disable=import-outside-toplevel
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.data.eval_preprocess import eval_preprocess  # pylint: disable=import-outside-toplevel
  model_name = meta["model"]
  num_classes = int(meta["num_classes"])
  module_overrides = {**_hashable(meta.get("overrides") or {}), **overrides}
  module = models.create_model(model_name, num_classes=num_classes, dtype=dtype,
                               **module_overrides)
  variables = jax.device_put(dict(variables))  # jnp.asarray would compile per shape
  cfg, origin = _preprocess_cfg(pretrained_cfg, model_name, module_overrides.get("img_size"),
                                label)
  return Pretrained(module=module, variables=variables, preprocess=eval_preprocess(cfg),
                    preprocess_cfg=cfg, class_names=_class_names(config, num_classes),
                    model_name=model_name, architecture=architecture, num_classes=num_classes,
                    overrides=module_overrides, source=label, weights_file=path, sha256=sha,
                    from_cache=from_cache, metadata_from=metadata_from or origin)


def _replace_head(loaded: Pretrained, num_classes: int, dtype: Any) -> Pretrained:
  """Drops the classifier and creates a zero-initialised one for `num_classes` (0: none)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.weights.core import abstract_variables  # pylint: disable=import-outside-toplevel
  module = models.create_model(loaded.model_name, num_classes=num_classes, dtype=dtype,
                               **loaded.overrides)
  shapes = abstract_variables(module, loaded.model_name, loaded.overrides)
  from vision_jax.weights.core import classifier_path  # pylint: disable=import-outside-toplevel
  head = ("params",) + classifier_path(loaded.model_name)
  have = traverse_util.flatten_dict(dict(loaded.variables))
  new = {}
  for path, leaf in traverse_util.flatten_dict(dict(shapes)).items():
    value = have.get(path)
    if value is not None and tuple(value.shape) == tuple(leaf.shape):
      new[path] = value
    elif path[:len(head)] == head:
      new[path] = jnp.zeros(leaf.shape, leaf.dtype)
    else:
      raise PretrainedError(f"pretrained({loaded.source!r}, num_classes={num_classes}): "
                            f"{'/'.join(path)} does not fit; only {'/'.join(head)} is re-created.")
  return dataclasses.replace(
      loaded, module=module, variables=traverse_util.unflatten_dict(new), num_classes=num_classes,
      class_names=[f"class_{i}" for i in range(num_classes)])

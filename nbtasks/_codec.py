"""The one serialization boundary (DESIGN principle 3).

JSON for everything listings read; cloudpickle (imported lazily) only for arguments, return
values and exceptions, and those pickles are signed with HMAC-SHA256 under a per-user key kept
outside the store (SPEC §10). A value that is plain JSON (str, int, float, bool, None and lists
or str-keyed dicts of them) is stored as JSON and never pickled: it is faster and safe to read.

Large contiguous buffers (numpy arrays, and what holds them: a pandas frame's blocks) are
pickled **out of band** (pickle protocol 5, ``buffer_callback``): the pickle stream only
refers to them, and the store writes each straight from the value's own memory, never copied
into the stream. The stream stays signed, with the layout of its buffers (their offsets and
lengths in the value file); the buffers' bytes are not: they are memory handed to numpy, never
code (docs/security.md says why that is safe, and what a changed buffer can do).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import io
import json
import marshal
import mmap
import pickle
import reprlib
import threading
import traceback
from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import CodeType, FunctionType
from typing import Any, Final

from ._errors import TaskError, UntrustedValue
from ._key import key_path as key_path
from ._key import load_key

_MAC_SIZE: Final = 32
#: Contiguous buffers at least this long are pickled out of band (their own part of a value
#: file, mappable); shorter ones stay in the stream, as they did before out-of-band pickling.
OUT_OF_BAND_MIN: Final = 64 * 1024
#: What a signature of a stream with out-of-band buffers starts with: such a signature never
#: verifies a plain stream, nor the reverse (a record cannot be turned from one into the other).
_LAYOUT_DOMAIN: Final = b"nbtasks out-of-band buffers 1\0"
_BUNDLE_DOMAIN: Final = b"nbtasks displayed bundle 1\0"
_VERIFIED_MAX: Final = 4096  # bundles remembered as verified (about 50 per task widget)
#: Encoded values at least this long are stored in their own store entry (a file, past
#: diskcache's 32 KiB), not inline in the task's JSON record.
INLINE_LIMIT: Final = 16 * 1024

_cloudpickle: Any = None


def cloudpickle() -> Any:
    """The cloudpickle module, imported on first use (``import nbtasks`` stays light)."""
    global _cloudpickle
    if _cloudpickle is None:
        import cloudpickle as cp

        _cloudpickle = cp
    return _cloudpickle


# --------------------------------------------------------------------------- signing


class Signer:
    """HMAC-SHA256 over pickles; one HMAC object made per key and ``copy()``-ed per use."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key
        self._base: hmac.HMAC | None = None
        self._lock = threading.Lock()
        self._verified: dict[str, dict[str, Any]] = {}  # signature -> the bundle it verified

    def _mac(self) -> hmac.HMAC:
        if self._base is None:
            with self._lock:
                if self._base is None:
                    self._base = hmac.new(self._key or load_key(), digestmod=hashlib.sha256)
        return self._base.copy()

    def digest(self, data: bytes | bytearray | memoryview | mmap.mmap) -> bytes:
        """The HMAC of ``data`` (a large value's signature is stored beside it, not prefixed:
        prefixing would copy the value once more)."""
        mac = self._mac()
        mac.update(data)
        return mac.digest()

    def sign(self, data: bytes) -> bytes:
        return self.digest(data) + data

    def bundle_digest(self, bundle: Mapping[str, Any]) -> str:
        """The HMAC (hex) of a MIME bundle a task displayed, over its canonical JSON: its HTML,
        SVG and JavaScript reach the notebook's page, so a bundle read from a store is shown
        rich only if we wrote it (SPEC 10: a store is data, never instructions)."""
        mac = self._mac()
        mac.update(_BUNDLE_DOMAIN)
        mac.update(json.dumps(bundle, sort_keys=True, separators=(",", ":")).encode())
        return mac.hexdigest()

    def bundle_verifies(self, bundle: Mapping[str, Any], signature: object) -> bool:
        """Whether ``signature`` is ``bundle``'s. A bundle verified once is remembered by its
        signature: the view updater reads a running task's bundles ten times a second, and
        comparing with the remembered bundle (``==``: a memcmp of its strings) costs far less
        than hashing its JSON again."""
        if not isinstance(signature, str):
            return False
        if self._verified.get(signature) == bundle:
            return True
        if not hmac.compare_digest(self.bundle_digest(bundle), signature):
            return False
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()
        self._verified[signature] = dict(bundle)
        return True

    def digest_layout(
        self, data: bytes | bytearray | memoryview | mmap.mmap, layout: Sequence[Sequence[int]]
    ) -> bytes:
        """The HMAC of a stream whose buffers are out of band: a domain prefix, the layout
        (``[[offset, length], ...]`` of the stream then each buffer, as JSON: it holds no NUL),
        then the stream. The buffers' bytes are not covered (docs/security.md)."""
        mac = self._mac()
        mac.update(_LAYOUT_DOMAIN)
        mac.update(json.dumps(layout, separators=(",", ":")).encode("ascii"))
        mac.update(b"\0")
        mac.update(data)
        return mac.digest()

    def check(
        self,
        data: bytes | bytearray | memoryview | mmap.mmap,
        signature: bytes | memoryview,
        where: str,
        trust: bool,
        layout: Sequence[Sequence[int]] | None = None,
    ) -> None:
        """Raise UntrustedValue unless ``signature`` is the HMAC of ``data`` (with ``layout``,
        for a stream whose buffers are out of band) under our key."""
        if trust:
            return
        mac = self.digest(data) if layout is None else self.digest_layout(data, layout)
        if len(signature) != _MAC_SIZE or not hmac.compare_digest(mac, bytes(signature)):
            raise UntrustedValue(
                f"{where} is signed by another key (another user's store, or a store copied "
                "from elsewhere), so it was not unpickled: unpickling runs code. If you trust "
                "who wrote it, open the store with nbtasks.App(store, trust=True)."
            )

    def verify(self, blob: bytes | memoryview, where: str, trust: bool) -> memoryview:
        """The data of a signature-first blob, as a view (no copy), once it verifies."""
        view = memoryview(blob)
        data = view[_MAC_SIZE:]
        self.check(data, view[:_MAC_SIZE], where, trust)
        return data


# --------------------------------------------------------------------------- values


def _is_plain(value: Any, depth: int = 0) -> bool:
    """True if JSON holds ``value`` exactly (exact types: a tuple or an IntEnum is not plain)."""
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return True
    if t is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if depth > 20:
        return False
    if t is list:
        return all(_is_plain(v, depth + 1) for v in value)
    if t is dict:
        return all(type(k) is str and _is_plain(v, depth + 1) for k, v in value.items())
    return False


_pickler: Any = None


def _reduce_code(code: CodeType) -> tuple[Any, ...]:
    return (marshal.loads, (marshal.dumps(code),))


def _code_keeping_pickler() -> Any:
    """cloudpickle's Pickler, except that code objects keep their file name.

    cloudpickle 3.1.3 names every code object it copies ``<dynamic-code>`` (to make payloads
    deterministic: cloudpipe/cloudpickle#560), so a worker's traceback would neither say which
    cell a line is in nor show the line. marshal copies a code object whole, name included;
    cloudpickle's copies need the same Python on both sides too."""
    global _pickler
    if _pickler is None:
        base = cloudpickle().Pickler

        class Pickler(base):  # type: ignore[misc, valid-type]
            dispatch_table = ChainMap({CodeType: _reduce_code}, base.dispatch_table)

        _pickler = Pickler
    return _pickler


def dumps(value: Any) -> bytes:
    """cloudpickle ``value``; a TypeError says which type could not be pickled."""
    try:
        with io.BytesIO() as f:
            _code_keeping_pickler()(f, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
            return f.getvalue()
    except Exception as exc:
        raise TypeError(f"cannot be pickled: {exc}") from exc


def dumps_out_of_band(value: Any) -> tuple[bytes, list[memoryview]]:
    """cloudpickle ``value`` with protocol 5, its contiguous buffers of at least
    ``OUT_OF_BAND_MIN`` bytes out of band: the stream, and those buffers as flat byte views
    of the value's own memory (no copy; in the order the stream refers to them). Without such
    buffers the stream is what ``dumps`` makes."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: in the stream, as before
            return True
        if view.nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(view)
        return False

    try:
        with io.BytesIO() as f:
            _code_keeping_pickler()(
                f, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=out_of_band
            ).dump(value)
            return f.getvalue(), buffers
    except Exception as exc:
        raise TypeError(f"cannot be pickled: {exc}") from exc


def dumps_message(value: Any) -> bytes:
    """Plain pickle (no cloudpickle) for messages between this user's own processes."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    """Unpickle what ``dumps`` made. Only for bytes that never left this user's processes (a
    worker process's task); what comes from a store goes through ``Codec.decode`` (signed)."""
    return pickle.loads(data)


def by_value_refs(fn: Callable[..., Any]) -> tuple[Any, ...] | None:
    """The objects cloudpickle copies when it pickles ``fn`` by value (a function defined in
    ``__main__``, a notebook cell): its code, defaults and closure cells, and the globals its
    code names; for a ``__main__`` function among those, the same again (two levels). Two
    tuples whose items are the same objects (``is``) give the same pickle, unless one of
    those objects was changed in place; the tuple keeps them alive, so no id is reused.
    None for what is not a Python function (a builtin, a partial, a callable object)."""
    if not isinstance(fn, FunctionType):
        return None
    refs: list[Any] = []
    _collect_refs(fn, refs, 2, set())
    return tuple(refs)


def _collect_refs(fn: Any, refs: list[Any], depth: int, seen: set[int]) -> None:
    seen.add(id(fn))
    code = fn.__code__
    refs += (fn, code, fn.__defaults__, fn.__kwdefaults__)
    nested: list[Any] = []
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            value = None
        refs.append(value)
        nested.append(value)
    g = fn.__globals__
    for name in _global_names(code):
        value = g.get(name, _ABSENT)
        refs.append(value)
        nested.append(value)
    if depth:
        for value in nested:
            if (
                isinstance(value, FunctionType)
                and value.__module__ == "__main__"
                and id(value) not in seen
            ):
                _collect_refs(value, refs, depth - 1, seen)


_ABSENT: Final = object()


@functools.lru_cache(maxsize=1024)
def _global_names(code: CodeType) -> tuple[str, ...]:
    """The names a code object (and the code objects nested in it) may look up as globals."""
    names = dict.fromkeys(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names.update(dict.fromkeys(_global_names(const)))
    return tuple(names)


def unpicklable_argument(
    task: Any, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[str, str, str] | None:
    """The first argument of a call of ``task`` that cannot be pickled, as (name, type,
    error): named as the task's signature names it, else ``#i`` for the i-th positional."""
    try:
        named = list(task.call_signature.bind_partial(*args, **kwargs).arguments.items())
    except (TypeError, AttributeError):
        named = [*((f"#{i}", a) for i, a in enumerate(args)), *kwargs.items()]
    return find_unpicklable(named)


def find_unpicklable(named: Iterable[tuple[str, Any]]) -> tuple[str, str, str] | None:
    """The first (name, type, error) whose value cannot be pickled, to name it in a message."""
    for name, value in named:
        try:
            dumps(value)
        except TypeError as exc:
            cls = type(value)
            kind = cls.__qualname__
            if cls.__module__ != "builtins":
                kind = f"{cls.__module__}.{kind}"
            return name, kind, str(exc.__cause__ or exc)
    return None


class Codec:
    """Encodes values for one store: JSON when plain, else a signed cloudpickle."""

    def __init__(self, signer: Signer, store_name: str, trust: bool = False) -> None:
        self.signer = signer
        self.store_name = store_name
        self.trust = trust

    def encode(self, value: Any) -> dict[str, Any]:
        """``{"j": value}`` for plain JSON, else ``{"p": base64(signed pickle)}``."""
        if _is_plain(value):
            return {"j": value}
        return {"p": base64.b64encode(self.signer.sign(dumps(value))).decode("ascii")}

    def pickle(self, value: Any) -> tuple[bytes, bytes]:
        """``(signature, pickle)`` of a value that is not plain JSON (TypeError if it cannot be
        pickled), its buffers in the stream: a large value without out-of-band buffers is
        stored as these bytes, apart from its record (what ``pickle_parts`` gives then too)."""
        data = dumps(value)
        return self.signer.digest(data), data

    def pickle_parts(self, value: Any) -> tuple[bytes, list[memoryview]]:
        """``(pickle, buffers)`` of a value that is not plain JSON (TypeError if it cannot be
        pickled): the stream, and its out-of-band buffers (views of the value's own memory;
        none for a value without large contiguous buffers, and then the stream is what
        ``pickle`` gives). Signed by ``signature``."""
        return dumps_out_of_band(value)

    def signature(self, data: bytes, layout: Sequence[Sequence[int]] | None = None) -> bytes:
        """The signature of a pickle stored apart from its record: of the stream alone, or,
        with its out-of-band buffers' ``layout``, of both (``Signer.digest_layout``)."""
        return (
            self.signer.digest(data) if layout is None else self.signer.digest_layout(data, layout)
        )

    def decode_layout(
        self,
        data: bytes | bytearray | memoryview | mmap.mmap,
        signature: object,
        layout: Sequence[Sequence[int]],
        buffers: Callable[[], list[Any]],
        what: str,
    ) -> Any:
        """A value whose buffers are out of band: the stream is verified with its ``layout``
        first (UntrustedValue, nothing read further, nothing unpickled), then ``buffers()``
        gives the buffers (bytearrays read from the file, or read-only views of its mapping)
        and the stream is unpickled over them: numpy builds its arrays on that memory."""
        where = f"{what} in the store {self.store_name}"
        try:
            mac = bytes.fromhex(signature)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            mac = b""
        self.signer.check(data, mac, where, self.trust, layout)
        return pickle.loads(data, buffers=buffers())

    def inline(self, signature: bytes, data: bytes) -> dict[str, Any]:
        """A small signed pickle, held in its record: ``{"p": base64(signature + pickle)}``."""
        return {"p": base64.b64encode(signature + data).decode("ascii")}

    def decode(self, enc: dict[str, Any], what: str) -> Any:
        if "j" in enc:
            return enc["j"]
        blob = enc["p"]
        raw = base64.b64decode(blob) if isinstance(blob, str) else blob
        data = self.signer.verify(raw, f"{what} in the store {self.store_name}", self.trust)
        return pickle.loads(data)

    def decode_blob(self, blob: Any, signature: str | None, what: str) -> Any:
        """A large value read from its own entry: the pickle, its signature in the record
        (``signature`` None: an older store's signature-first blob). Verified in place and
        unpickled without a copy, so a value is held at most twice while it is read."""
        where = f"{what} in the store {self.store_name}"
        if not isinstance(blob, bytes):
            raise UntrustedValue(f"{where} is not a signed value, so it was not unpickled")
        if signature is None:
            return pickle.loads(self.signer.verify(blob, where, self.trust))
        try:
            mac = bytes.fromhex(signature)
        except (TypeError, ValueError):
            mac = b""
        self.signer.check(blob, mac, where, self.trust)
        return pickle.loads(blob)

    def encode_exception(self, exc: BaseException) -> TaskError:
        cls = type(exc)
        path = f"{cls.__module__}.{cls.__qualname__}"
        tb = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
        return TaskError(path, tb, str(exc))

    def encode_exception_value(self, exc: BaseException) -> dict[str, Any] | None:
        """The pickled exception (for ``__cause__``), or None if it does not round-trip."""
        try:
            data = dumps(exc)
            pickle.loads(data)
        except Exception:
            return None
        return {"p": base64.b64encode(self.signer.sign(data)).decode("ascii")}


_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 6


_SHORT_TYPES: Final = (int, float, bool, type(None))


def args_repr(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> str:
    """A short text of the arguments, stored for listings (no unpickling to show them)."""
    if not kwargs and len(args) <= 6 and all(type(a) in _SHORT_TYPES for a in args):
        return ", ".join(map(repr, args))  # numbers: repr is short and reprlib is slow
    parts = [_repr.repr(a) for a in args]
    parts += [f"{k}={_repr.repr(v)}" for k, v in kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- identity


def task_name_of(fn: Callable[..., Any]) -> str:
    """The default task name: ``__qualname__``, prefixed by the module unless ``__main__``."""
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    module = getattr(fn, "__module__", None)
    if not module or module == "__main__":
        return qualname
    return f"{module}.{qualname}"


#: Argument types whose JSON text is exact with no check (a float may be NaN: not JSON).
_KEY_SCALARS: Final = frozenset({str, int, bool, type(None)})


def cache_key(task_name: str, fn_hash: str, args: Any, kwargs: Any) -> str:
    """The cache key of a call: task name, code hash and the encoded arguments (JSON when
    plain; else the pickle stream, then each out-of-band buffer's length and bytes)."""
    h = hashlib.sha256()
    h.update(task_name.encode())
    h.update(b"\0")
    h.update(fn_hash.encode())
    h.update(b"\0")
    if not kwargs and all(type(a) in _KEY_SCALARS for a in args):
        # A map's usual item (ints, strs): the JSON text below without walking it twice.
        h.update(json.dumps([list(args), {}]).encode())
        return h.hexdigest()
    if _is_plain([list(args), kwargs]):
        h.update(json.dumps([list(args), kwargs], sort_keys=True).encode())
        return h.hexdigest()
    data, buffers = dumps_out_of_band((tuple(args), sorted(kwargs.items())))
    h.update(data)
    # Large buffers are hashed where they are, never copied into the stream (a 200 MB array:
    # one pass of SHA-256 over its memory). Without them, the key is what it always was.
    for view in buffers:
        h.update(b"\0%d\0" % view.nbytes)
        h.update(view)
    return h.hexdigest()

"""The embedded ``Store``: documents in dicts, indexes in sorted lists, one process.

It keeps MongoDB's guarantees as the gateway relies on them (``gateway.ports.Store``):

* Every method is ``async`` but never awaits, so each call runs to the end
  before another coroutine runs: a conditional ``update_one`` is atomic, and
  two bookers racing for a slot get one winner.
* Unique indexes (compound, sparse) are checked before anything changes, on
  insert, update and upsert; a violation raises ``DuplicateKey`` and leaves the
  document as it was.
* Documents are copied on the way in and out (an ``orjson`` round trip, a
  ``copy.deepcopy`` for values JSON cannot carry): callers never alias store
  state. (An insert with ``handover=True`` keeps the values of a document its
  caller built and gave up, a created resource, in a top-level dict of its own
  without the copy: ``Store.insert``.) Inside, a stored document is never
  mutated in place: an update copies the containers along the paths it changes
  and swaps the new version in.
  Collections written far more than read (``PACKED``: the resources' history,
  the delivery and audit logs) keep each document as its orjson bytes, decoded
  on every read (a fresh dict, handed out without a second copy): a history
  version takes 1.7 kB with its index entries instead of 4.5 kB. Likewise, some
  fields of other collections (``FROZEN``: a resource's FHIR body) keep an object
  or array value as its orjson bytes inside the document, which a copy out writes
  as it is (``orjson.Fragment``), decoded only for a filter, sort or update path
  that reads into it: a resource takes 4.9 kB instead of 7.9 kB (with its ten
  indexes' entries; both figures traced over the import benchmark's documents). A
  field an index reads is never frozen.
* The outbox: events are kept with their document and written in the same
  step as the change (as orjson bytes); a global sequence orders them for
  ``pending_events``.
  Deleting a document drops its pending events, exactly as on MongoDB where
  they live inside the document.

Indexes. Every declared index ``(f1, ..., fn)`` is a dict from the values of
``f1..f(n-1)`` to a list of flat ``(*key(fn), _id)`` kept sorted with ``bisect``, in
blocks of at most 2,000 (``_Bucket``: an insert moves one block, not half of a
bucket of 100,000). A
query with equality (or ``$in``) on the prefix fields reads only its buckets;
on the last field it takes a point, a set of points or a range, and when the
sort starts with the last field it walks the bucket in order and stops after
``skip + limit`` matches. The planner picks the usable index with the fewest
candidates (``_id`` equality wins outright); candidates are always re-checked
with the full filter, so an index only ever narrows the scan. The one exception is
``count``: when an index answers the filter exactly (scalar equality or ``$in`` on
its leading fields, equality, a number or string range or nothing on its last; not
sparse, and no array ever indexed in it), the count is the length of its slices. A
partial index (``Index.partial``) holds only the documents that meet its equalities and
serves only a query that has the same equalities, as on MongoDB.

An insert computes every index's entries with one function generated per collection
(``_compile_entries``: straight-line code reading each indexed path once), an update
with one per set of paths it changes (only the indexes those can move).

Figures (2026-11-26, 2 shared cores, load average 2-3; before -> after this layout):
``bench.store`` 17,000-33,000 -> 55,000-58,000 inserts/s, 12,000-26,000 ->
38,000-45,000 conditional updates/s; the import benchmark's gateway grew 18.5 -> 10.0
kB (RSS) per resource imported; an insert into ``resources`` (ten indexes) 46 -> 33 us,
an update of one 50 -> 41 us; ``bench.ingest`` (20,000 Slots, embedded) 2,915 ->
4,831 Slots per CPU-second of the event loop; ``bench.waiting_room`` 2,030 -> 1,610 us
of gateway CPU per assignment (30,000 entries, 3,000 slots), 1,730 -> 1,580 us at its
default size. Later that day (load average 3-4), with partial indexes, the generated
entries function reading each object once and the insert's own loop: ``bench.store
--resources`` 50-55 -> 29-31 us per insert of a created Slot into ``resources``;
``bench.ingest`` (30,000 Slots, embedded) 193-200 -> 147-167 us of event-loop CPU per Slot.

Values order as MongoDB orders them for sort and index (BSON type order: empty
array, null/missing, numbers, strings, objects, arrays, booleans, other);
comparison operators only match values of the same type class, like MongoDB.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import itertools
import uuid
from bisect import bisect_left, bisect_right, insort
from collections.abc import (
    AsyncIterator,
    Callable,
    Container,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any

import orjson

from gateway import constants
from gateway.ports import Document, DuplicateKey, Filter, Index, OutboxItem, Sort

__all__ = ["MemoryStore"]

OUTBOX_FIELDS = ("_outbox", "_outbox_at")  # reserved: the MongoDB adapter keeps its outbox there

# Collections written far more than read, kept as orjson bytes (``_Coll.packed``): the
# superseded versions of resources (the history; a resource's current version lives in
# its document only) are read by _id or by a resource's own versions (vread, _history);
# the delivery and audit logs likewise.
PACKED = frozenset(
    {
        constants.HISTORY,
        constants.PROCESSED,
        constants.WEBHOOK_ATTEMPTS,
        constants.IMPORT_ERRORS,
        constants.AUDIT,
    }
)

# Fields kept as orjson bytes inside documents that are not packed (``_Coll.frozen``):
# a resource's FHIR body is half of its document and three quarters of its memory as
# dicts, and is only ever handed out whole (the search reads ``central`` and ``folded``).
FROZEN: Mapping[str, Container[str]] = {constants.RESOURCES: frozenset({"resource"})}

# --------------------------------------------------------------------------- copying

_ORJSON_OPTS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


class _Frozen:
    """A field's value kept as its orjson bytes inside a stored document (``_Coll.frozen``)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def value(self) -> Any:
        return orjson.loads(self.raw)


def _refuse(obj: Any) -> Any:
    if type(obj) is _Frozen:  # written into the JSON as it is
        return orjson.Fragment(obj.raw)
    raise TypeError(f"not JSON: {type(obj).__name__}")


def _thawed(doc: Any) -> Any:
    """A document with its frozen fields decoded (a shallow copy), or itself if none."""
    if type(doc) is dict and any(type(v) is _Frozen for v in doc.values()):
        return {k: v.value() if type(v) is _Frozen else v for k, v in doc.items()}
    return doc


def _shared(out: Document, stored: Document) -> Document:
    """A read's answer that shares the stored values (``shared=True``): ``out`` (the
    stored document ``stored`` or a new dict of some of its fields) under a top level of
    the caller's own, its frozen fields decoded. Nothing is copied: a stored version is
    never changed in place."""
    thawed = _thawed(out)
    return dict(out) if thawed is stored else thawed


def _copy(value: Any) -> Any:
    """A private deep copy: orjson round trip (fast), deepcopy for anything else."""
    try:
        return orjson.loads(orjson.dumps(value, default=_refuse, option=_ORJSON_OPTS))
    except (TypeError, orjson.JSONEncodeError):
        return copy.deepcopy(_thawed(value))


def _pack(doc: Any) -> bytes | None:
    """A document as orjson bytes, or None if JSON cannot carry it (then it stays a dict)."""
    try:
        raw = orjson.dumps(doc, default=_refuse, option=_ORJSON_OPTS)
    except (TypeError, orjson.JSONEncodeError):
        return None
    # orjson's bytes keep the buffer it wrote into (8 kB for a 1 kB document): keep a
    # copy of exactly the document's size
    return bytes(memoryview(raw))


def _copy_packed(doc: Document) -> tuple[Document, bytes | None]:
    """``_copy`` that keeps the bytes of its round trip (a packed collection stores them)."""
    raw = _pack(doc)
    if raw is None:
        return copy.deepcopy(doc), None
    return orjson.loads(raw), raw


class _Thawing:
    """A collection's documents with their frozen fields decoded (for a filter on them)."""

    __slots__ = ("docs",)

    def __init__(self, docs: dict[str, Any]) -> None:
        self.docs = docs

    def __getitem__(self, doc_id: str) -> Document:
        return _thawed(self.docs[doc_id])


def _heads(filter: Filter, sort: Sort | None = None) -> set[str]:
    """The top-level fields a filter (and a sort) reads."""
    out: set[str] = set()
    for key, cond in filter.items():
        if key in ("$and", "$or", "$nor") and isinstance(cond, list | tuple):
            for sub in cond:
                if isinstance(sub, Mapping):
                    out |= _heads(sub)
        elif not key.startswith("$"):
            out.add(key.split(".", 1)[0])
    for path, _ in sort or ():
        out.add(path.split(".", 1)[0])
    return out


class _Unpacking:
    """A packed collection's documents, decoded when looked up (a fresh dict each time)."""

    __slots__ = ("docs",)

    def __init__(self, docs: dict[str, Any]) -> None:
        self.docs = docs

    def __getitem__(self, doc_id: str) -> Document:
        stored = self.docs[doc_id]
        return orjson.loads(stored) if type(stored) is bytes else stored


# --------------------------------------------------------------------------- values

_MISSING: Any = object()

# BSON comparison order, used for sort keys and index keys
_R_EMPTY_ARRAY = 0  # sort/index key of an empty array: below null, as in MongoDB
_R_NULL = 1
_R_NUMBER = 2
_R_STRING = 3
_R_OBJECT = 4
_R_ARRAY = 5
_R_BOOL = 8
_R_OTHER = 9

_NULL_KEY: tuple[Any, ...] = (_R_NULL, None)
_EMPTY_KEY: tuple[Any, ...] = (_R_EMPTY_ARRAY,)
_NUMBER_TYPES = (int, float)


def _key(v: Any) -> tuple[Any, ...]:
    """A hashable key that sorts like MongoDB and is equal exactly when MongoDB says equal."""
    t = type(v)
    if t is str:
        return (_R_STRING, v)
    if t is int or t is float:
        return (_R_NUMBER, v)
    if v is None:
        return _NULL_KEY
    if t is bool:
        return (_R_BOOL, v)
    if t is dict:
        return (_R_OBJECT, tuple((k, _key(x)) for k, x in v.items()))
    if t is list or t is tuple:
        return (_R_ARRAY, tuple(_key(x) for x in v))
    if isinstance(v, str):
        return (_R_STRING, str(v))
    if isinstance(v, bool):
        return (_R_BOOL, bool(v))
    if isinstance(v, int | float):
        return (_R_NUMBER, v)
    return (_R_OTHER, t.__qualname__, v)


def _type_class(v: Any) -> Any:
    """Comparison operators only match within one class (MongoDB's type bracketing)."""
    t = type(v)
    if t is str:
        return _R_STRING
    if t is int or t is float:
        return _R_NUMBER
    if v is None:
        return _R_NULL
    if t is bool:
        return _R_BOOL
    if t is dict:
        return _R_OBJECT
    if t is list:
        return _R_ARRAY
    return t


def _eq(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is dict or ta is list:  # field order counts, and true is not 1
            return _key(a) == _key(b)
        return bool(a == b)
    if ta in _NUMBER_TYPES and tb in _NUMBER_TYPES:
        return bool(a == b)
    return False


def _split(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _resolve(doc: Any, parts: Sequence[str]) -> list[Any]:
    """The values at a dotted path; through arrays, every element's value (MongoDB paths)."""
    cur = [doc]
    for part in parts:
        nxt: list[Any] = []
        for v in cur:
            if type(v) is dict:
                x = v.get(part, _MISSING)
                if x is not _MISSING:
                    nxt.append(x)
            elif type(v) is list:
                if part.isdigit():
                    i = int(part)
                    if i < len(v):
                        nxt.append(v[i])
                for el in v:
                    if type(el) is dict:
                        x = el.get(part, _MISSING)
                        if x is not _MISSING:
                            nxt.append(x)
        if not nxt:
            return nxt
        cur = nxt
    return cur


def _getter(path: str) -> Callable[[Document], list[Any]]:
    if "." not in path:

        def get(doc: Document) -> list[Any]:
            v = doc.get(path, _MISSING)
            return [] if v is _MISSING else [v]

        return get
    parts = _split(path)
    return lambda doc: _resolve(doc, parts)


def _index_keys(vals: list[Any]) -> list[tuple[Any, ...]]:
    """Index keys of one field (multikey: one per array element, as MongoDB indexes)."""
    if not vals:
        return [_NULL_KEY]
    if len(vals) == 1 and type(vals[0]) is not list:
        return [_key(vals[0])]
    out: list[tuple[Any, ...]] = []
    for v in vals:
        if type(v) is list:
            out.extend(_key(e) for e in v) if v else out.append(_EMPTY_KEY)
        else:
            out.append(_key(v))
    return list(dict.fromkeys(out))


def _sort_key(vals: list[Any], descending: bool) -> tuple[Any, ...]:
    """An array sorts by its smallest element ascending, its largest descending (MongoDB)."""
    keys = _index_keys(vals)
    if len(keys) == 1:
        return keys[0]
    return max(keys) if descending else min(keys)


def _sort_key_fn(
    get: Callable[[Document], list[Any]], desc: bool
) -> Callable[[Document], tuple[Any, ...]]:
    return lambda d: _sort_key(get(d), desc)


def _sort_docs(docs: list[Document], sort: Sort) -> None:
    for path, direction in reversed(sort):  # stable sorts, least significant key first
        get = _getter(path)
        desc = direction < 0
        docs.sort(key=_sort_key_fn(get, desc), reverse=desc)


# --------------------------------------------------------------------------- filters

Pred = Callable[[Document], bool]

_COMPARE = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}
_RANGE_OPS = frozenset(_COMPARE)


def _is_operator_doc(cond: Any) -> bool:
    return type(cond) is dict and bool(cond) and all(k.startswith("$") for k in cond)


def _values_eq(vals: list[Any], x: Any) -> bool:
    """MongoDB equality on a path: the value, or any element of an array, equals ``x``."""
    if x is None and not vals:
        return True
    for v in vals:
        if _eq(v, x):
            return True
        if type(v) is list:
            for e in v:
                if _eq(e, x):
                    return True
    return False


def _all_of(preds: list[Pred]) -> Pred:
    if len(preds) == 1:
        return preds[0]

    def all_of(d: Document) -> bool:
        for p in preds:
            if not p(d):
                return False
        return True

    return all_of


def _any_of(preds: list[Pred]) -> Pred:
    return lambda d: any(p(d) for p in preds)


def _negate(pred: Pred) -> Pred:
    return lambda d: not pred(d)


def _exists_pred(path: str, want: bool) -> Pred:
    get = _getter(path)
    return lambda d: bool(get(d)) is want


def _compile(filter: Filter) -> Pred:
    preds: list[Pred] = []
    for key, cond in filter.items():
        if key == "$and" or key == "$or" or key == "$nor":
            if not isinstance(cond, list | tuple) or not cond:
                raise ValueError(f"{key} needs a non-empty list of filters")
            subs = [_compile(f) for f in cond]
            if key == "$and":
                preds.append(_all_of(subs))
            elif key == "$or":
                preds.append(_any_of(subs))
            else:
                preds.append(_negate(_any_of(subs)))
        elif key.startswith("$"):
            raise ValueError(f"unsupported top-level operator {key}")
        else:
            preds.append(_compile_field(key, cond))
    if not preds:
        return lambda d: True
    return _all_of(preds)


def _compile_field(path: str, cond: Any) -> Pred:
    if not _is_operator_doc(cond):
        return _eq_pred(path, cond)
    preds: list[Pred] = []
    for op, x in cond.items():
        if op == "$eq":
            preds.append(_eq_pred(path, x))
        elif op == "$ne":
            preds.append(_negate(_eq_pred(path, x)))
        elif op in _RANGE_OPS:
            preds.append(_compare_pred(path, op, x))
        elif op == "$in":
            preds.append(_in_pred(path, x))
        elif op == "$nin":
            preds.append(_negate(_in_pred(path, x)))
        elif op == "$exists":
            preds.append(_exists_pred(path, bool(x)))
        else:
            raise ValueError(f"unsupported query operator {op}")
    if len(preds) == 1:
        return preds[0]
    return lambda d: all(p(d) for p in preds)


def _eq_pred(path: str, x: Any) -> Pred:
    x = _copy(x) if type(x) in (dict, list) else x
    if "." in path or type(x) in (dict, list, tuple):
        get = _getter(path)
        return lambda d: _values_eq(get(d), x)
    tx = type(x)
    if x is None:

        def eq_none(d: Document) -> bool:
            v = d.get(path)
            return v is None or (type(v) is list and any(e is None for e in v))

        return eq_none
    if tx is bool:

        def eq_bool(d: Document) -> bool:
            v = d.get(path)
            return v is x or (type(v) is list and any(e is x for e in v))

        return eq_bool
    if tx is str:

        def eq_str(d: Document) -> bool:
            v = d.get(path)
            return v == x or (type(v) is list and x in v)

        return eq_str
    if tx is int or tx is float:

        def eq_num(d: Document) -> bool:
            v: Any = d.get(path)
            tv = type(v)
            if tv is int or tv is float:
                return bool(v == x)
            return tv is list and any(_eq(e, x) for e in v)

        return eq_num
    get = _getter(path)
    return lambda d: _values_eq(get(d), x)


def _compare_pred(path: str, op: str, x: Any) -> Pred:
    if x is None:
        if op in ("$gte", "$lte"):  # MongoDB: {$gte: null} matches null and missing
            return _eq_pred(path, None)
        return lambda d: False
    cls = _type_class(x)
    cmp = _COMPARE[op]
    get = _getter(path)
    if cls in (_R_OBJECT, _R_ARRAY):
        kx = _key(x)

        def ok_key(v: Any) -> bool:
            return _type_class(v) == cls and bool(cmp(_key(v), kx))

        ok: Callable[[Any], bool] = ok_key
    elif cls == _R_NUMBER:

        def ok_num(v: Any) -> bool:
            tv = type(v)
            return (tv is int or tv is float) and bool(cmp(v, x))

        ok = ok_num
    else:

        def ok_other(v: Any) -> bool:
            if _type_class(v) != cls:
                return False
            try:
                return bool(cmp(v, x))
            except TypeError:
                return False

        ok = ok_other

    if "." not in path and cls == _R_STRING:

        def str_fast(d: Document) -> bool:
            v = d.get(path)
            if type(v) is str:
                return bool(cmp(v, x))
            return type(v) is list and any(type(e) is str and cmp(e, x) for e in v)

        return str_fast

    def pred(d: Document) -> bool:
        for v in get(d):
            if ok(v):
                return True
            if type(v) is list and cls != _R_ARRAY and any(ok(e) for e in v):
                return True
        return False

    return pred


def _in_pred(path: str, xs: Any) -> Pred:
    if not isinstance(xs, list | tuple | set | frozenset):
        raise ValueError("$in / $nin need an array")
    xs = list(xs)
    if "." not in path and all(type(x) is str or x is None for x in xs):
        strs = frozenset(x for x in xs if x is not None)
        has_none = any(x is None for x in xs)

        def in_str(d: Document) -> bool:
            v = d.get(path)
            if type(v) is str:
                return v in strs
            if v is None:
                return has_none
            if type(v) is list:
                return any((type(e) is str and e in strs) or (e is None and has_none) for e in v)
            return False

        return in_str
    get = _getter(path)
    xs = _copy(xs)
    return lambda d: any(_values_eq(get(d), x) for x in xs)


# --------------------------------------------------------------------------- updates

_UPDATE_OPS = frozenset({"$set", "$unset", "$inc", "$setOnInsert", "$push"})
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})
_OUTBOX_PREFIX = "_outbox"  # what every name of OUTBOX_FIELDS starts with
assert all(name.startswith(_OUTBOX_PREFIX) for name in OUTBOX_FIELDS)


# The (operator, paths) pairs of updates checked already, and per shape of a whole update
# (its pairs) the paths it may change (``_touched``): writes repeat a few shapes, and
# checking each path again was most of the check (kept bounded: paths come from data).
_Shape = tuple[str, tuple[str, ...]]
_CHECKED: set[_Shape] = set()
_TOUCHED: dict[tuple[_Shape, ...], frozenset[str]] = {}


def _checked(
    update: Mapping[str, Any], coll: _Coll | None = None
) -> tuple[dict[str, dict[str, Any]], frozenset[str]]:
    """The update, checked and copied, and its ``_touched`` paths (remembered per shape).

    ``coll``: a whole frozen field the update sets is packed straight from the caller's
    value, not copied and packed again. Values that are not scalars are copied one by
    one (``_copy``); scalars are immutable: kept as they are."""
    if not update:
        raise ValueError("empty update")
    frozen = coll is not None and bool(coll.frozen)
    ops: dict[str, dict[str, Any]] = {}
    shapes: list[_Shape] | None = []
    for op, fields in update.items():
        shape: _Shape | None = None
        if type(fields) is dict:
            shape = (op, tuple(fields))
            if shape in _CHECKED:
                shapes.append(shape)  # type: ignore[union-attr]
                if _IMMUTABLE.issuperset(map(type, fields.values())):
                    ops[op] = dict(fields)  # scalars only: nothing to copy
                else:
                    ops[op] = _copied(op, fields, frozen, coll)
                continue
        if op not in _UPDATE_OPS:
            if not op.startswith("$"):
                raise ValueError("replacement documents are not supported: use $set")
            raise ValueError(f"unsupported update operator {op}")
        if not isinstance(fields, Mapping):
            raise ValueError(f"{op} needs a document")
        for path in fields:
            if path.startswith(_OUTBOX_PREFIX) and (
                path in OUTBOX_FIELDS or path.split(".", 1)[0] in OUTBOX_FIELDS
            ):
                raise ValueError(f"{path} is reserved for the outbox")
        ops[op] = _copied(op, fields, frozen, coll)
        if shape is None:
            shapes = None
        else:
            if len(_CHECKED) >= 4096:
                _CHECKED.clear()
            _CHECKED.add(shape)
            if shapes is not None:
                shapes.append(shape)
    if shapes is None:
        return ops, _touched(ops)
    key = tuple(shapes)
    touched = _TOUCHED.get(key)
    if touched is None:
        if len(_TOUCHED) >= 4096:
            _TOUCHED.clear()
        # the same frozenset each time: its hash is kept (``_Coll.replace`` looks it up)
        touched = _TOUCHED[key] = _touched(ops)
    return ops, touched


def _copied(op: str, fields: Mapping[str, Any], frozen: bool, coll: _Coll | None) -> dict[str, Any]:
    """One operator's fields with their values copied (``_checked``)."""
    mine: dict[str, Any] = {}
    for path, v in fields.items():
        if type(v) not in _IMMUTABLE:
            if (
                frozen
                and (type(v) is dict or type(v) is list)
                and (op == "$set" or op == "$setOnInsert")
                and "." not in path
                and coll.is_frozen(path)  # type: ignore[union-attr]
            ):
                raw = _pack(v)
                if raw is not None:
                    mine[path] = _Frozen(raw)
                    continue
            v = _copy(v)
        mine[path] = v
    return mine


class _Writer:
    """Applies update paths to a new version of a document, copying what it changes."""

    def __init__(self, base: Document) -> None:
        self.doc: Document = dict(base)
        self._fresh: set[int] = {id(self.doc)}

    def _own(self, parent: Any, part: Any, child: Any) -> Any:
        if id(child) in self._fresh:
            return child
        new: Any = dict(child) if type(child) is dict else list(child)
        parent[part] = new
        self._fresh.add(id(new))
        return new

    def _parent(self, parts: Sequence[str], create: bool) -> tuple[Any, Any] | None:
        """The container holding the last part (copied for writing), or None if absent."""
        cur: Any = self.doc
        for part in parts[:-1]:
            if type(cur) is dict:
                nxt = cur.get(part, _MISSING)
                if nxt is _MISSING:
                    if not create:
                        return None
                    nxt = {}
                    cur[part] = nxt
                    self._fresh.add(id(nxt))
                    cur = nxt
                    continue
                key: Any = part
            elif type(cur) is list:
                if not part.isdigit():
                    raise ValueError(f"cannot use the part {part!r} to traverse an array")
                key = int(part)
                if key >= len(cur):
                    if not create:
                        return None
                    cur.extend([None] * (key + 1 - len(cur)))
                    cur[key] = nxt = {}
                    self._fresh.add(id(nxt))
                    cur = nxt
                    continue
                nxt = cur[key]
            else:  # pragma: no cover - guarded below
                raise ValueError("cannot traverse a scalar")
            if type(nxt) is not dict and type(nxt) is not list:
                if not create:
                    return None
                raise ValueError(f"cannot create field {part!r}.* in a {type(nxt).__name__}")
            cur = self._own(cur, key, nxt)
        last: Any = parts[-1]
        if type(cur) is list:
            if not last.isdigit():
                raise ValueError(f"cannot use the part {last!r} to traverse an array")
            last = int(last)
        return cur, last

    def get(self, parts: Sequence[str]) -> Any:
        cur: Any = self.doc
        for part in parts:
            if type(cur) is dict:
                cur = cur.get(part, _MISSING)
            elif type(cur) is list and part.isdigit() and int(part) < len(cur):
                cur = cur[int(part)]
            else:
                return _MISSING
            if cur is _MISSING:
                return _MISSING
        return cur

    def set(self, parts: Sequence[str], value: Any) -> None:
        where = self._parent(parts, create=True)
        assert where is not None
        cont, last = where
        if type(cont) is list and last >= len(cont):
            cont.extend([None] * (last + 1 - len(cont)))
        cont[last] = value

    def unset(self, parts: Sequence[str]) -> None:
        where = self._parent(parts, create=False)
        if where is None:
            return
        cont, last = where
        if type(cont) is dict:
            cont.pop(last, None)
        elif last < len(cont):
            cont[last] = None  # MongoDB: $unset on an array element leaves null

    def apply(self, ops: Mapping[str, Mapping[str, Any]], inserting: bool) -> None:
        for op, fields in ops.items():
            for path, value in fields.items():
                parts = _split(path)
                if op == "$set" or (op == "$setOnInsert" and inserting):
                    self.set(parts, value)
                elif op == "$unset":
                    self.unset(parts)
                elif op == "$inc":
                    if type(value) not in _NUMBER_TYPES:
                        raise ValueError(f"$inc needs a number for {path}")
                    cur = self.get(parts)
                    if cur is _MISSING:
                        self.set(parts, value)
                    elif type(cur) in _NUMBER_TYPES:
                        self.set(parts, cur + value)
                    else:
                        raise ValueError(f"$inc on a non-numeric field {path}")
                elif op == "$push":
                    cur = self.get(parts)
                    if cur is _MISSING:
                        cur = []
                    elif type(cur) is not list:
                        raise ValueError(f"$push on a non-array field {path}")
                    if type(value) is dict and any(k.startswith("$") for k in value):
                        if set(value) != {"$each"} or type(value["$each"]) is not list:
                            raise ValueError("$push supports only {$each: [...]} as a modifier")
                        self.set(parts, [*cur, *value["$each"]])
                    else:
                        self.set(parts, [*cur, value])


def _touched(ops: Mapping[str, Mapping[str, Any]]) -> frozenset[str]:
    """The paths an update may change ($setOnInsert never changes an existing document)."""
    return frozenset(p for op, fields in ops.items() if op != "$setOnInsert" for p in fields)


_FLAT_OPS = frozenset({"$set", "$unset", "$inc", "$setOnInsert"})


def _flat_update(old: Document, ops: Mapping[str, Mapping[str, Any]]) -> Document | None:
    """The new version of ``old`` that ``_Writer.apply(ops, inserting=False)`` makes, when
    every path is a top-level field or a field of one (``a.b``) and the operators are
    ``$set``, ``$unset``, ``$inc`` (``$setOnInsert`` changes nothing here): a new dict, no
    path walking (most updates: a status, a time, a counter, a whole field; a resource's
    ``central.status``). None when that is not the case, or when a path ``a.b`` meets
    anything but an object or nothing at ``a`` (an array, a frozen field, a scalar: the
    writer's cases), or names a field an update also sets whole."""
    dotted = False
    for op, fields in ops.items():
        if op not in _FLAT_OPS:
            return None
        if op == "$setOnInsert":
            continue
        for path in fields:
            if "." in path:
                if path.count(".") > 1:
                    return None
                dotted = True
    new = dict(old)
    if dotted:
        return _two_level_update(new, ops)
    for op, fields in ops.items():
        if op == "$set":
            new.update(fields)
        elif op == "$unset":
            for path in fields:
                new.pop(path, None)
        elif op == "$inc":
            for path, value in fields.items():
                _inc(new, path, path, value)
    return new


def _inc(target: dict[str, Any], key: str, path: str, value: Any) -> None:
    """``$inc`` of ``target[key]`` (the field at ``path``) by ``value``, as MongoDB: a
    missing field is set to it; a number and a non-number field are refused."""
    if type(value) not in _NUMBER_TYPES:
        raise ValueError(f"$inc needs a number for {path}")
    cur = target.get(key, _MISSING)
    if cur is _MISSING:
        target[key] = value
    elif type(cur) in _NUMBER_TYPES:
        target[key] = cur + value
    else:
        raise ValueError(f"$inc on a non-numeric field {path}")


def _two_level_update(new: Document, ops: Mapping[str, Mapping[str, Any]]) -> Document | None:
    """``_flat_update`` with paths ``a.b`` among them (``new``: a copy of the version)."""
    whole: set[str] = set()
    heads: set[str] = set()
    for op, fields in ops.items():
        if op != "$setOnInsert":
            for path in fields:
                if "." in path:
                    heads.add(path.partition(".")[0])
                else:
                    whole.add(path)
    if not whole.isdisjoint(heads):
        return None  # a field set whole and into: the writer's order of copies
    own: dict[str, dict[str, Any]] = {}  # the objects copied for this version, by field

    def sub(head: str, create: bool) -> dict[str, Any] | None:
        """The object at ``head``, copied (created when missing, if ``create``); None if
        it is missing (not ``create``) or not an object."""
        mine = own.get(head)
        if mine is not None:
            return mine
        cur = new.get(head, _MISSING)
        if type(cur) is dict:
            mine = dict(cur)
        elif cur is _MISSING and create:
            mine = {}
        else:
            return None
        new[head] = own[head] = mine
        return mine

    for op, fields in ops.items():
        if op == "$set":
            for path, value in fields.items():
                head, dot, last = path.partition(".")
                if not dot:
                    new[path] = value
                    continue
                obj = sub(head, True)
                if obj is None:
                    return None
                obj[last] = value
        elif op == "$unset":
            for path in fields:
                head, dot, last = path.partition(".")
                if not dot:
                    new.pop(path, None)
                    continue
                cur = new.get(head, _MISSING)
                if cur is _MISSING:
                    continue
                if type(cur) is not dict:
                    if type(cur) is list or type(cur) is _Frozen:
                        return None
                    continue  # a scalar: nothing under it to unset
                obj = sub(head, False)
                assert obj is not None
                obj.pop(last, None)
        elif op == "$inc":
            for path, value in fields.items():
                if type(value) not in _NUMBER_TYPES:
                    raise ValueError(f"$inc needs a number for {path}")
                head, dot, last = path.partition(".")
                target: dict[str, Any] | None = new if not dot else sub(head, True)
                if target is None:
                    return None
                _inc(target, path if not dot else last, path, value)
    return new


def _upsert_seed(filter: Filter) -> list[tuple[str, Any]]:
    """The equality conditions MongoDB copies into an upserted document."""
    out: list[tuple[str, Any]] = []
    for key, cond in filter.items():
        if key == "$and":
            for sub in cond:
                out.extend(_upsert_seed(sub))
        elif key.startswith("$"):
            continue
        elif _is_operator_doc(cond):
            if "$eq" in cond:
                out.append((key, cond["$eq"]))
        else:
            out.append((key, cond))
    return out


def _upserted(filter: Filter, ops: Mapping[str, Mapping[str, Any]]) -> Document:
    """The document an upsert inserts: the filter's equalities, then the update."""
    doc_id = filter.get("_id")
    if len(filter) == 1 and type(doc_id) is str:
        seed: list[tuple[str, Any]] = [("_id", doc_id)]  # most upserts: by _id alone
    else:
        seed = _upsert_seed(filter)
    flat = True  # (loops, not generators: a generator costs more than these checks)
    for op, fields in ops.items():
        if op != "$set" and op != "$setOnInsert":
            flat = False
            break
        for path in fields:
            if "." in path:
                flat = False
                break
        if not flat:
            break
    if flat:
        for path, _ in seed:
            if "." in path:
                flat = False
                break
    if flat:
        # top-level fields only (most upserts: {_id} and a $set): what the writer makes,
        # built straight (setting a field again keeps its place, as the writer does)
        new: Document = {}
        for path, value in seed:
            new[path] = value if type(value) in _IMMUTABLE else _copy(value)
        for fields in ops.values():
            new.update(fields)
        return new
    return _written_upsert(seed, ops)


def _written_upsert(seed: list[tuple[str, Any]], ops: Mapping[str, Mapping[str, Any]]) -> Document:
    """``_upserted`` through ``_Writer`` (any path, any operator)."""
    w = _Writer({})
    for path, value in seed:
        w.set(_split(path), value if type(value) in _IMMUTABLE else _copy(value))
    w.apply(ops, inserting=True)
    return w.doc


# --------------------------------------------------------------------------- planning


def _conjuncts(filter: Filter) -> Iterator[tuple[str, Any]]:
    for key, cond in filter.items():
        if key == "$and":
            for sub in cond:
                yield from _conjuncts(sub)
        elif not key.startswith("$"):
            yield key, cond


_Bound = tuple[tuple[Any, ...], bool]  # (key, inclusive)


class _Constraints:
    """What the top-level conjunction says about single fields, for the planner."""

    def __init__(self, filter: Filter) -> None:
        self.eq: dict[str, list[tuple[Any, ...]]] = {}
        self.ranges: dict[str, tuple[_Bound, _Bound]] = {}  # type-bracketed, both ends
        for path, cond in _conjuncts(filter):
            if _is_operator_doc(cond):
                if "$eq" in cond:
                    self._add_eq(path, [cond["$eq"]])
                if "$in" in cond and isinstance(cond["$in"], list | tuple):
                    self._add_eq(path, list(cond["$in"]))
                lo: _Bound | None = None
                hi: _Bound | None = None
                cls = None
                ok = True
                for op in ("$gt", "$gte", "$lt", "$lte"):
                    if op not in cond:
                        continue
                    x = cond[op]
                    c = _type_class(x)
                    if c not in (_R_NUMBER, _R_STRING) or (cls is not None and c != cls):
                        ok = False
                        break
                    cls = c
                    if op in ("$gt", "$gte"):
                        lo = (_key(x), op == "$gte")
                    else:
                        hi = (_key(x), op == "$lte")
                if ok and cls is not None and path not in self.ranges:
                    # open ends stay within the type bracket
                    lo = lo or ((cls,), True)
                    hi = hi or ((cls + 1,), False)
                    self.ranges[path] = (lo, hi)
            else:
                self._add_eq(path, [cond])

    def _add_eq(self, path: str, values: list[Any]) -> None:
        # arrays as values match whole arrays or elements: leave those to the scan
        if any(type(v) in (list, tuple) for v in values):
            return
        keys = list(dict.fromkeys(_key(v) for v in values))
        if path not in self.eq or len(keys) < len(self.eq[path]):
            self.eq[path] = keys


class _Top:
    """Sorts after every ``_id``: ``(*key, TOP)`` bounds the entries of ``key`` above."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return 0

    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return other is not self


_TOP: Any = _Top()


def _point(key: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Search bounds covering exactly the entries whose key equals ``key``."""
    return key, (*key, _TOP)


# An index entry: the key of the index's last field and the _id, in one flat tuple
# ``(*key, _id)`` (a bisect compares one tuple and the value, not a pair of tuples).
_Entry = tuple[Any, ...]
_ABSENT: Any = ("absent",)  # markers of _scalar_key (compared by identity)
_ARRAY_ON_PATH: Any = ("array",)


def _scalar_key(doc: Document, parts: Sequence[str]) -> Any:
    """The index key at a path reached through objects only; ``_ABSENT`` when the
    path is missing (or crosses a scalar), ``_ARRAY_ON_PATH`` when an array is on it
    (then the general resolution applies)."""
    v: Any = doc
    for part in parts:
        if type(v) is dict:
            v = v.get(part, _MISSING)
            if v is _MISSING:
                return _ABSENT
        elif type(v) is list:
            return _ARRAY_ON_PATH
        else:
            return _ABSENT
    if type(v) is list:
        return _ARRAY_ON_PATH
    return _key(v)


# A count over a bucket with at most this many dead entries counts them out one by one
# (a search each); with more, it drops them first (``_Bucket.compact``: a pass over the
# bucket).
DEAD_COUNTED = 64


class _Bucket:
    """A sorted list of entries kept in blocks of at most ``2 * LOAD``.

    One flat sorted list costs a memmove of half of it per insert: with 100,000
    slots in one bucket (every index whose last field is ``central.start`` or an
    ``_id``-ordered null) that was most of an insert. Here an insert moves one
    block. Positions are global (0..len) as in a flat list, for the planner.

    Until its second entry a bucket holds its entry alone (``one``; ``blocks`` and
    ``maxes`` are None): an index whose prefix nearly names a document (the history's
    (tenant, type, rid): one bucket per resource; a patient's visits) makes a bucket
    per write, and its three lists were three more objects for the garbage collector
    to visit (the gc policy's young collection, ``gateway.gc_policy``) and to allocate.

    In a bucket of ``LAZY`` entries or more a removal only marks its entry ``dead``: the
    entry stays in its block, readers skip it, and an insert of the same entry brings it
    back. The dead are dropped all at once (``compact``) when they are an eighth of the
    live, or before a count that would meet more than ``DEAD_COUNTED`` of them. A
    removal's two searches (the block, then the entry in it) went through entries no
    other write had touched for a while, out of the CPU's caches: in the waiting room's
    unlock (``bench.waiting_room``) a booking removes seven entries from buckets of
    thousands, 41 us in all, 20 us marked dead (timed around ``remove``, 2026-11-26).
    ``n`` counts the live entries; positions (``bisect_left``, ``range``) count the dead
    with them. Only entries that are in the bucket are ever removed (the store removes
    the entries it computed for the version it stored).

    In a bucket of ``PENDING_FROM`` entries or more an insert below its last entry waits
    in ``pending`` (unsorted) until the bucket is next read, or until ``LOAD`` wait: then
    they go in together (``_settle``: sorted, and each block merged with its share). An
    insert's searches went through entries out of the CPU's caches as a removal's did,
    and most big buckets take far more inserts than reads: in the waiting room's unlock a
    booking inserts into about ten buckets of hundreds to thousands (the Appointments' of
    its provider, the busy Slots of its scope, the entries being assigned) that nothing
    reads meanwhile. Every reader settles first; a pending entry can be removed (it is
    marked dead, and settles dead). A waiting entry costs a reader nothing until it
    reads, so pending starts in smaller buckets than dead entries do.
    """

    LOAD = 1000
    LAZY = 512
    PENDING_FROM = 64
    # Fewer pending entries than this settle one by one (a read of a bucket that is read
    # often meets one or two); more are merged block by block.
    MERGE_FROM = 16
    __slots__ = ("blocks", "dead", "maxes", "n", "one", "pending", "starts")

    def __init__(self, first: _Entry | None = None) -> None:
        self.blocks: list[list[_Entry]] | None = None
        self.maxes: list[_Entry] | None = None  # the last entry of each block
        self.starts: list[int] | None = None  # each block's first's global position (lazy)
        self.one: _Entry | None = first  # the entry, while there is at most one
        self.n = 0 if first is None else 1  # the live entries
        self.dead: set[_Entry] | None = None  # entries removed but still in their blocks
        self.pending: list[_Entry] | None = None  # inserted, not yet in their blocks

    def __len__(self) -> int:
        return self.n

    def _settle(self) -> None:
        """Put the pending entries into their blocks."""
        pend = self.pending
        if pend is None:
            return
        self.pending = None
        self.starts = None
        if len(pend) < self.MERGE_FROM:
            for e in pend:
                self._place(e)
            return
        pend.sort()
        blocks: list[list[_Entry]] = self.blocks  # type: ignore[assignment]
        maxes: list[_Entry] = self.maxes  # type: ignore[assignment]
        load = self.LOAD
        out: list[list[_Entry]] = []
        j, last = 0, len(blocks) - 1
        for i, block in enumerate(blocks):
            k = len(pend) if i == last else bisect_right(pend, maxes[i], j)
            if k > j:
                block.extend(pend[j:k])
                block.sort()  # two sorted runs: a merge
                j = k
            if len(block) > 2 * load:
                out.extend(block[x : x + load] for x in range(0, len(block), load))
            else:
                out.append(block)
        self.blocks = out
        self.maxes = [b[-1] for b in out]

    def _place(self, e: _Entry) -> None:
        """``e`` into its block (``n`` counted it already)."""
        maxes: list[_Entry] = self.maxes  # type: ignore[assignment]
        blocks: list[list[_Entry]] = self.blocks  # type: ignore[assignment]
        self.starts = None
        if not maxes:
            blocks.append([e])
            maxes.append(e)
            return
        if e > maxes[-1]:  # increasing keys (times, counters): the common case
            i = len(maxes) - 1
            block = blocks[i]
            block.append(e)
            maxes[i] = e
        else:  # below the block's last: its last stays
            i = bisect_left(maxes, e)
            block = blocks[i]
            insort(block, e)
        if len(block) > 2 * self.LOAD:
            blocks[i : i + 1] = [block[: self.LOAD], block[self.LOAD :]]
            maxes[i : i + 1] = [block[self.LOAD - 1], block[-1]]

    def compact(self) -> None:
        """Drop the dead entries from the blocks."""
        dead = self.dead
        if dead is None:
            return
        self._settle()
        self.dead = None
        blocks = [kept for b in self.blocks or () if (kept := [e for e in b if e not in dead])]
        self.blocks = blocks
        self.maxes = [b[-1] for b in blocks]
        self.starts = None
        self.n = sum(map(len, blocks))

    def insert(self, e: _Entry) -> None:
        dead = self.dead
        if dead is not None and e in dead:
            dead.remove(e)  # back where it was
            if not dead:
                self.dead = None
            self.n += 1
            return
        maxes = self.maxes
        if maxes is None:
            one = self.one
            if one is None:
                self.one = e
                self.n = 1
                return
            # the second entry: into blocks (as ``insort`` would place it)
            block = [e, one] if e < one else [one, e]
            self.blocks = [block]
            self.maxes = [block[-1]]
            self.one = None
            self.n = 2
            return
        n = self.n
        self.n = n + 1
        if n >= self.PENDING_FROM and maxes and not e > maxes[-1]:
            pend = self.pending
            if pend is None:
                self.pending = [e]
            else:
                pend.append(e)
                if len(pend) >= self.LOAD:
                    self._settle()
            return
        self._place(e)

    def remove(self, e: _Entry) -> None:
        maxes = self.maxes
        dead = self.dead
        if dead is not None or (maxes is not None and self.n >= self.LAZY):
            # (once some are dead, every removal is, until they are dropped)
            if dead is None:
                dead = self.dead = set()
            elif e in dead:
                return
            dead.add(e)
            self.n -= 1
            if len(dead) * 8 > self.n:
                self.compact()
            return
        if maxes is None:
            if self.one is not None and self.one == e:
                self.one = None
                self.n = 0
            return
        self._settle()
        maxes = self.maxes
        assert maxes is not None
        i = bisect_left(maxes, e)
        if i == len(maxes):
            return
        blocks: list[list[_Entry]] = self.blocks  # type: ignore[assignment]
        block = blocks[i]
        j = bisect_left(block, e)
        if j < len(block) and block[j] == e:
            del block[j]
            self.n -= 1
            self.starts = None
            if block:
                maxes[i] = block[-1]
            else:
                del blocks[i]
                del maxes[i]

    def held_by_other(self, key: tuple[Any, ...], doc_id: str) -> bool:
        """Whether an entry of ``key`` belongs to another document than ``doc_id`` (a
        unique index's check: by blocks, without the global positions, which every insert
        drops and which take a walk over the blocks to rebuild)."""
        n = len(key)
        if self.maxes is None:
            one = self.one
            return one is not None and one[:n] == key and one[n] != doc_id
        self._settle()
        blocks: list[list[_Entry]] = self.blocks  # type: ignore[assignment]
        dead = self.dead or ()
        i = bisect_left(self.maxes, key)
        j = bisect_left(blocks[i], key) if i < len(blocks) else 0
        while i < len(blocks):
            block = blocks[i]
            while j < len(block):
                e = block[j]
                if e[:n] != key:
                    return False
                if e[n] != doc_id and e not in dead:
                    return True
                j += 1
            i, j = i + 1, 0
        return False

    def _starts(self) -> list[int]:
        if self.starts is None:
            blocks: list[list[_Entry]] = self.blocks  # type: ignore[assignment]
            starts = [0] * len(blocks)
            total = 0
            for i, block in enumerate(blocks):
                starts[i] = total
                total += len(block)
            self.starts = starts
        return self.starts

    def bisect_left(self, x: Any) -> int:
        """The global position of the first entry not below ``x``."""
        if self.maxes is None:
            return 1 if self.one is not None and self.one < x else 0
        self._settle()
        maxes = self.maxes
        i = bisect_left(maxes, x)
        if i == len(maxes):
            return self.n + len(self.dead or ())
        return self._starts()[i] + bisect_left(self.blocks[i], x)  # type: ignore[index]

    def range(self, lo: int, hi: int, descending: bool = False) -> Iterator[_Entry]:
        """The live entries at global positions ``lo <= p < hi``, in order or reversed."""
        if hi <= lo:
            return
        if self.maxes is None:
            if self.one is not None and lo <= 0 < hi:
                yield self.one
            return
        self._settle()
        dead = self.dead
        if dead:
            yield from (e for e in self._range(lo, hi, descending) if e not in dead)
        else:
            yield from self._range(lo, hi, descending)

    def dead_between(self, lo: int, hi: int) -> int:
        """How many dead entries are at positions ``lo <= p < hi``."""
        return sum(1 for e in self.dead or () if lo <= self.bisect_left(e) < hi)

    def live(self) -> Iterator[_Entry]:
        """Every live entry, in order."""
        return self.range(0, self.n + len(self.dead or ()))

    def _range(self, lo: int, hi: int, descending: bool) -> Iterator[_Entry]:
        blocks: list[list[_Entry]] = self.blocks  # type: ignore[assignment]
        starts = self._starts()
        first = bisect_right(starts, lo) - 1
        last = bisect_right(starts, hi - 1) - 1
        if not descending:
            for b in range(first, last + 1):
                block, base = blocks[b], starts[b]
                yield from block[max(lo - base, 0) : min(hi - base, len(block))]
        else:
            for b in range(last, first - 1, -1):
                block, base = blocks[b], starts[b]
                yield from reversed(block[max(lo - base, 0) : min(hi - base, len(block))])


def _flat(keys: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """A bucket's prefix: the keys of an index's leading fields in one flat tuple (a key's
    length follows from its first item, ``_key``: equal exactly when the keys are). Not a
    tuple of keys: a new bucket kept one more tuple per field for the garbage collector
    (the history makes a bucket per resource), and every lookup hashed each of them."""
    out: tuple[Any, ...] = ()
    for k in keys:
        out += k
    return out


class _Idx:
    """One declared index: prefix values (``_flat``) -> sorted [(key of last field, _id)]."""

    def __init__(self, spec: Index) -> None:
        self.spec = spec
        self.paths = tuple(p for p, _ in spec.fields)
        self.getters = [_getter(p) for p in self.paths]
        self.parts = [_split(p) for p in self.paths]
        self.unique = spec.unique
        self.sparse = spec.sparse
        # partial: only the documents meeting these equalities are indexed (MongoDB's
        # partialFilterExpression); the planner takes the index only for a query that
        # has the same equalities (``_plan_on``)
        self.partial = spec.partial
        self.partial_keys = [(path, [_key(value)]) for path, value in spec.partial]
        self.partial_pred: Pred | None = _compile(dict(spec.partial)) if spec.partial else None
        # the paths whose change can move the document's entries (touched_by)
        self.reads = self.paths + tuple(p for p, _ in spec.partial if p not in self.paths)
        self.buckets: dict[tuple[Any, ...], _Bucket] = {}
        self.multikey = False
        # touched_by's answers by set of paths: updates repeat a few shapes, and the
        # prefix test of every path against every field was a tenth of a write's time.
        self._touched: dict[frozenset[str], bool] = {}

    def touched_by(self, key: frozenset[str]) -> bool:
        """Whether an update of these paths can change this index's entries."""
        known = self._touched.get(key)
        if known is not None:
            return known
        answer = any(
            path == mine or mine.startswith(path + ".") or path.startswith(mine + ".")
            for path in key
            for mine in self.reads
        )
        if len(self._touched) >= 4096:  # paths named from data: keep it bounded
            self._touched.clear()
        self._touched[key] = answer
        return answer

    def entries(
        self, doc: Document, seen: dict[str, Any] | None = None
    ) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        """The ``(prefix, key)`` entries of ``doc``: one, unless an array is on a path.

        ``seen``: the keys of paths already read from this document by other indexes
        (most of a collection's indexes start with the same fields).
        """
        if self.partial_pred is not None and not self.partial_pred(doc):
            return []
        # The common case without the general path resolution: every field a scalar
        # (or missing) reached through objects only.
        keys: list[tuple[Any, ...]] = []
        for path, parts in zip(self.paths, self.parts, strict=True):
            k = seen.get(path) if seen is not None else None
            if k is None:
                k = _scalar_key(doc, parts)
                if seen is not None:
                    seen[path] = k
            if k is _ARRAY_ON_PATH:
                return self._entries(doc)
            if k is _ABSENT:
                if self.sparse and not keys:
                    return []
                keys.append(_NULL_KEY)
            else:
                keys.append(k)
        return [(_flat(keys[:-1]), keys[-1])]

    def _entries(self, doc: Document) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        first = self.getters[0](doc)
        if self.sparse and not first:
            return []
        per_field = [_index_keys(first)] + [_index_keys(g(doc)) for g in self.getters[1:]]
        if all(len(k) == 1 for k in per_field):
            keys = [k[0] for k in per_field]
            return [(_flat(keys[:-1]), keys[-1])]
        self.multikey = True
        return [(_flat(combo[:-1]), combo[-1]) for combo in itertools.product(*per_field)]

    def add(self, doc_id: str, entries: Iterable[tuple[tuple[Any, ...], tuple[Any, ...]]]) -> None:
        for prefix, key in entries:
            bucket = self.buckets.get(prefix)
            if bucket is None:
                self.buckets[prefix] = _Bucket((*key, doc_id))
            else:
                bucket.insert((*key, doc_id))

    def remove(
        self, doc_id: str, entries: Iterable[tuple[tuple[Any, ...], tuple[Any, ...]]]
    ) -> None:
        for prefix, key in entries:
            bucket = self.buckets[prefix]
            bucket.remove((*key, doc_id))
            if not bucket.n:
                del self.buckets[prefix]

    def conflict(
        self, doc_id: str, entries: Iterable[tuple[tuple[Any, ...], tuple[Any, ...]]]
    ) -> bool:
        for prefix, key in entries:
            bucket = self.buckets.get(prefix)
            if bucket and bucket.held_by_other(key, doc_id):
                return True
        return False


_EntriesFn = Callable[[Document], list[list[tuple[tuple[Any, ...], tuple[Any, ...]]]]]


def _list_keys(v: list[Any]) -> list[tuple[Any, ...]]:
    """The index keys of an array value (``_index_keys([v])``): its elements', once each."""
    if not v:
        return [_EMPTY_KEY]
    if len(v) == 1:
        return [_key(v[0])]
    return list(dict.fromkeys(_key(e) for e in v))


def _compile_entries(indexes: Sequence[_Idx]) -> _EntriesFn:
    """One function that computes every index's entries of a document, as
    ``[idx.entries(doc) for idx in indexes]`` does, reading each path once: most of a
    collection's indexes share their leading fields, and the loop over indexes and
    fields was most of an insert. Generated Python: straight-line code per path (through
    objects only, each object on the way read once; an array as the last field's value is
    indexed here, any other array on a path leaves that index to ``_Idx._entries``). Each
    partial index's filter is tested once per distinct filter, and the paths only such
    indexes read are read only when it holds."""
    paths: list[str] = []
    for idx in indexes:
        for path in idx.paths:
            if path not in paths:
                paths.append(path)
    lasts = {idx.paths[-1] for idx in indexes}
    firsts = {idx.paths[0] for idx in indexes if idx.sparse}
    filters: list[tuple[tuple[str, Any], ...]] = []  # the distinct partial filters
    for idx in indexes:
        if idx.partial and idx.partial not in filters:
            filters.append(idx.partial)
    # the filter each path is read for, when only one filter's indexes read it (lazily)
    group: dict[str, int | None] = {}
    for idx in indexes:
        g = filters.index(idx.partial) if idx.partial else None
        for path in idx.paths:
            group[path] = g if group.get(path, g) == g else None
    for f in filters:
        for path, _ in f:
            if path in group:
                group[path] = None  # the filter's test reads it
    env: dict[str, Any] = {
        "M": _MISSING,
        "A": _ARRAY_ON_PATH,
        "N": _NULL_KEY,
        "key": _key,
        "LK": _list_keys,
        "I": list(indexes),
    }
    lines = ["def entries(doc):", "    get = doc.get"]
    heads: dict[str, str] = {}  # a path's leading parts -> the variable holding its value

    def read(path: str, pad: str) -> None:
        i = paths.index(path)
        parts = path.split(".")
        var = "get"
        for n in range(1, len(parts)):
            sub = ".".join(parts[:n])
            if sub not in heads:
                heads[sub] = h = f"h{len(heads)}"
                if n == 1:
                    lines.append(f"{pad}{h} = get({parts[0]!r}, M)")
                else:
                    lines.append(
                        f"{pad}{h} = {var}.get({parts[n - 1]!r}, M) if type({var}) is dict "
                        f"else A if (type({var}) is list or {var} is A) else M"
                    )
            var = heads[sub]
        if len(parts) == 1:
            lines.append(f"{pad}v = get({parts[0]!r}, M)")
        else:
            lines.append(
                f"{pad}v = {var}.get({parts[-1]!r}, M) if type({var}) is dict "
                f"else A if (type({var}) is list or {var} is A) else M"
            )
        # b: missing (the sparse test); l: an array's keys when the array is the value
        # itself (reached through objects); k: the key (null when missing), A with an array
        if path in firsts:
            lines.append(f"{pad}b{i} = v is M")
        if path in lasts:
            lines.append(f"{pad}l{i} = LK(v) if type(v) is list else None")
        lines.append(
            f"{pad}k{i} = ({_R_STRING}, v) if type(v) is str else N if v is M "
            f"else A if (v is A or type(v) is list) else key(v)"
        )

    made: list[str] = []  # the prefix variables, each built once where it is first needed

    def index_code(j: int, idx: _Idx, pad: str, scope: dict[tuple[int, ...], str]) -> None:
        ks = [paths.index(p) for p in idx.paths]
        last = ks[-1]
        prefix = scope.get(tuple(ks[:-1]))
        if prefix is None:  # (an array's marker in it: unused, the index reads _entries)
            prefix = scope[tuple(ks[:-1])] = f"q{len(made)}"
            made.append(prefix)
            lines.append(f"{pad}{prefix} = ({''.join(f'*k{i}, ' for i in ks[:-1])})")
        cond = "if"
        if idx.sparse:
            lines.append(f"{pad}if b{ks[0]}: e{j} = []")
            cond = "elif"
        scalar_prefix = " and ".join(f"k{i} is not A" for i in ks[:-1]) or "True"
        lines.append(f"{pad}{cond} l{last} is not None and {scalar_prefix}:")
        lines.append(f"{pad}    if len(l{last}) > 1: I[{j}].multikey = True")
        lines.append(f"{pad}    e{j} = [({prefix}, x) for x in l{last}]")
        arrays = " or ".join(f"k{i} is A" for i in ks)
        lines.append(f"{pad}elif {arrays}: e{j} = I[{j}]._entries(doc)")
        lines.append(f"{pad}else: e{j} = [({prefix}, k{last})]")

    heads_outside = heads
    for path in paths:
        if group[path] is None:
            read(path, "    ")
    for m, f in enumerate(filters):
        env[f"P{m}"] = next(idx.partial_pred for idx in indexes if idx.partial == f)
        tests = []
        for c, (path, value) in enumerate(f):
            if path in paths and type(value) is str:
                # a string equality on an indexed path: its key, unless an array is on it
                i = paths.index(path)
                env[f"PK{m}_{c}"] = _key(value)
                tests.append(f"(k{i} == PK{m}_{c} if k{i} is not A else P{m}(doc))")
            else:
                tests = [f"P{m}(doc)"]
                break
        lines.append(f"    p{m} = {' and '.join(tests)}")
    outside: dict[tuple[int, ...], str] = {}
    for j, idx in enumerate(indexes):
        if not idx.partial:
            index_code(j, idx, "    ", outside)
    for m, f in enumerate(filters):
        mine = [(j, idx) for j, idx in enumerate(indexes) if idx.partial == f]
        lines.append(f"    if p{m}:")
        heads = dict(heads_outside)  # a branch's reads stay in the branch
        for path in paths:
            if group[path] == m:
                read(path, "        ")
        scope = dict(outside)  # likewise its prefixes
        for j, idx in mine:
            index_code(j, idx, "        ", scope)
        lines.append("    else:")
        for j, _ in mine:
            lines.append(f"        e{j} = []")
    lines.append(f"    return [{', '.join(f'e{j}' for j in range(len(indexes)))}]")
    exec("\n".join(lines), env)  # the names are the declared index paths, as repr literals
    fn: _EntriesFn = env["entries"]
    return fn


class _Plan:
    def __init__(
        self,
        idx: _Idx,
        slices: list[tuple[_Bucket, int, int]],
        ordered: bool,
    ) -> None:
        self.idx = idx
        self.slices = slices
        self.count = sum(hi - lo for _, lo, hi in slices)
        self.ordered = ordered  # entries come in the order of the sort's first key

    def ids(self) -> Iterator[str]:
        dedupe = self.idx.multikey or len(self.slices) > 1
        seen: set[str] = set()
        for bucket, lo, hi in self.slices:
            for e in bucket.range(lo, hi):
                doc_id = e[-1]
                if dedupe:
                    if doc_id in seen:
                        continue
                    seen.add(doc_id)
                yield doc_id

    def ordered_entries(self, descending: bool) -> Iterator[_Entry]:
        walks = [b.range(lo, hi, descending) for b, lo, hi in self.slices if hi > lo]
        if len(walks) == 1:
            return walks[0]
        return heapq.merge(*walks, reverse=descending)


def _plan_on(idx: _Idx, cons: _Constraints, sort_first: str | None) -> _Plan | None:
    """The slices of ``idx`` that hold every match of ``cons``, or None if it cannot serve."""
    paths = idx.paths
    prefix_paths, last = paths[:-1], paths[-1]
    if any(p not in cons.eq for p in prefix_paths):
        return None
    for path, want in idx.partial_keys:  # the query must say what the index's filter says
        if cons.eq.get(path) != want:
            return None
    if idx.sparse:
        first = paths[0]
        if first in cons.eq:
            if _NULL_KEY in cons.eq[first]:
                return None
        elif not (len(paths) == 1 and first in cons.ranges):
            return None
    combos = list(itertools.product(*(cons.eq[p] for p in prefix_paths)))
    if len(combos) > 256:
        return None
    prefixes = [_flat(combo) for combo in combos]
    if last in cons.eq:
        bounds = [_point(k) for k in cons.eq[last]]
    elif last in cons.ranges:
        (lo_key, lo_inc), (hi_key, hi_inc) = cons.ranges[last]
        if idx.multikey:
            # An array meets a range when one element meets one end and another the
            # other (MongoDB): its entries are found by the lower end alone (up to the
            # top of its type), the candidates checked against the whole range.
            hi_key, hi_inc = (lo_key[0] + 1,), False
        lo_b = lo_key if lo_inc else (*lo_key, _TOP)
        hi_b = (*hi_key, _TOP) if hi_inc else hi_key
        bounds = [(lo_b, hi_b)]
    else:
        bounds = [((), (_R_OTHER + 1,))]  # the whole bucket
    slices = []
    for prefix in prefixes:
        bucket = idx.buckets.get(prefix)
        if not bucket:
            continue
        for lo_b, hi_b in bounds:
            lo, hi = bucket.bisect_left(lo_b), bucket.bisect_left(hi_b)
            if hi > lo:
                slices.append((bucket, lo, hi))
    # an array sorts by its smallest (largest) element, whatever the range
    # picked: walk a multikey index in order only when no array is in it
    ordered = sort_first == last and last not in cons.eq and not idx.multikey
    return _Plan(idx, slices, ordered)


def _plan(coll: _Coll, cons: _Constraints, sort: Sort | None, want: int) -> _Plan | None:
    best: _Plan | None = None
    best_score = 0
    sort_first = sort[0][0] if sort else None
    for idx in coll.indexes:
        plan = _plan_on(idx, cons, sort_first)
        if plan is None:
            continue
        score = min(plan.count, want) if (plan.ordered and want) else plan.count
        if best is None or score < best_score:
            best, best_score = plan, score
    return best


_COVERED_SCALARS = (str, int, float, bool, type(None))


def _exact(cond: Any) -> str | None:
    """How an index answers a field's condition exactly -- a scalar equality, a ``$in`` of
    scalars ("eq"), or a range of numbers or of strings ("range") -- or None if it does
    not (then candidates are re-checked against it one by one)."""
    if type(cond) in _COVERED_SCALARS:
        return "eq"
    if not _is_operator_doc(cond):
        return None
    ops = set(cond)
    if ops == {"$eq"} and type(cond["$eq"]) in _COVERED_SCALARS:
        return "eq"
    if (
        ops == {"$in"}
        and type(cond["$in"]) in (list, tuple)
        and all(type(x) in _COVERED_SCALARS for x in cond["$in"])
    ):
        return "eq"
    if ops <= _RANGE_OPS:
        classes = {_type_class(x) for x in cond.values()}
        if len(classes) == 1 and classes <= {_R_NUMBER, _R_STRING}:
            return "range"
    return None


def _covered_paths(filter: Filter) -> dict[str, str] | None:
    """For ``count``: each field of a filter that an index answers exactly (``_exact``)
    and how; None if any condition is beyond that."""
    out: dict[str, str] = {}
    for path, cond in filter.items():
        if path.startswith("$"):
            return None
        kind = _exact(cond)
        if kind is None:
            return None
        out[path] = kind
    return out


def _residual(filter: Filter, plan: _Plan) -> Filter:
    """``filter`` without the conditions every entry of ``plan``'s slices meets: those
    on the index's fields (and its partial filter's) that it answers exactly. The plan's
    candidates are checked against the rest only: a read of a day's free slots by scope
    and start checked five conditions a slot, of which the index answered four.

    Only for a filter of fields alone (no ``$and``: the planner's constraint on a field
    is then this condition's own) and an index that never held an array of several
    elements (its slices for a range are wider than the range: ``_plan_on``)."""
    idx = plan.idx
    if idx.multikey:
        return filter
    answered = [p for p in (*idx.paths, *(p for p, _ in idx.partial)) if p in filter]
    if not answered or any(k.startswith("$") for k in filter):
        return filter
    drop = {p for p in answered if _exact(filter[p]) is not None}
    if not drop:
        return filter
    return {k: v for k, v in filter.items() if k not in drop}


# --------------------------------------------------------------------------- collections


_SCALARS = frozenset({str, int, float, bool, type(None)})
# the operators a simple filter may use on a scalar (none of them can fail to compile)
_SIMPLE_OPS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$exists"})


def _simple(filter: Filter) -> bool:
    """Whether ``_matches`` checks the filter without compiling it: scalar equalities on
    any path (a string, a number, a boolean, null), an operator of ``_SIMPLE_OPS`` on a
    scalar, and ``$or`` / ``$and`` of such filters (a guarded update's usual filter)."""
    for key, x in filter.items():
        if key.startswith("$"):
            if (key != "$or" and key != "$and") or type(x) is not list or not x:
                return False
            for sub in x:
                if type(sub) is not dict or not _simple(sub):
                    return False
        elif type(x) not in _SCALARS:
            if type(x) is not dict or not x:
                return False
            for op, v in x.items():
                if op not in _SIMPLE_OPS or type(v) not in _SCALARS:
                    return False
    return True


def _matches(doc: Document, filter: Filter) -> bool:
    """``_compile(filter)(doc)`` for a ``_simple`` filter, interpreted: the same MongoDB
    equality (``_values_eq``: 1 == 1.0, true is not 1, null matches missing) without
    building the predicate's closures (most of a one-document update's filter cost)."""
    for key, x in filter.items():
        if key == "$or":
            for sub in x:
                if _matches(doc, sub):
                    break
            else:
                return False
        elif key == "$and":
            for sub in x:
                if not _matches(doc, sub):
                    return False
        elif type(x) is dict:  # one field's operators (``_SIMPLE_OPS``)
            if not _compile_field(key, x)(doc):
                return False
        elif "." in key:
            if not _values_eq(_resolve(doc, _split(key)), x):
                return False
        elif type(x) is str:
            v = doc.get(key)
            if not (v == x or (type(v) is list and x in v)):
                return False
        else:
            v = doc.get(key, _MISSING)
            if not _values_eq([] if v is _MISSING else [v], x):
                return False
    return True


class _Coll:
    def __init__(self, packed: bool = False, frozen: Container[str] = ()) -> None:
        # a packed collection keeps each document as its orjson bytes (a dict only when
        # JSON cannot carry it): a fifth of the memory, decoded whenever it is read
        self.packed = packed
        # frozen fields (of documents that are not packed): an object or array value is
        # kept as its orjson bytes (_Frozen), decoded when a filter, sort or update path
        # reads into it; never a field an index reads (``unfrozen``)
        self.frozen: Container[str] = () if packed else frozen
        self.unfrozen: set[str] = set()
        self.docs: dict[str, Any] = {}
        self.indexes: list[_Idx] = []
        self._unique: list[tuple[int, _Idx]] = []  # the unique indexes, by position
        self._entries = _compile_entries(self.indexes)
        self._cold = self._cold_fields()
        # per set of paths an update changes: the indexes it can move, and their entries
        # (and whether one of those is unique)
        self._by_touched: dict[frozenset[str], tuple[list[_Idx], _EntriesFn, list[str], bool]] = {}
        # per tuple of a filter's top-level fields (no operator among them): whether it
        # reads a frozen field (``_heads``' answer, for the one-document select)
        self._reads_frozen: dict[tuple[str, ...], bool] = {}

    def is_frozen(self, field: str) -> bool:
        return field in self.frozen and field not in self.unfrozen

    def readable(self, filter: Filter | None = None, sort: Sort | None = None) -> Any:
        """``docs`` as a mapping of ``_id`` to dict (decoding, if packed; with the frozen
        fields the filter or sort reads decoded)."""
        if self.packed:
            return _Unpacking(self.docs)
        if self.frozen and filter is not None and any(map(self.is_frozen, _heads(filter, sort))):
            return _Thawing(self.docs)
        return self.docs

    def _filter_reads_frozen(self, filter: Filter) -> bool:
        """Whether a filter reads into a frozen field (``readable``'s test, remembered for
        filters of plain fields: a guarded update repeats a few shapes)."""
        key = tuple(filter)
        known = self._reads_frozen.get(key)
        if known is not None:
            return known
        answer = any(map(self.is_frozen, _heads(filter)))
        if not any(k.startswith("$") for k in key):
            if len(self._reads_frozen) >= 1024:  # paths named from data: keep it bounded
                self._reads_frozen.clear()
            self._reads_frozen[key] = answer
        return answer

    def _cold_fields(self) -> frozenset[str] | None:
        """The frozen fields by name, when ``frozen`` can list them (a set)."""
        if isinstance(self.frozen, set | frozenset):
            return frozenset(k for k in self.frozen if k not in self.unfrozen)
        return None

    def copy_in(self, doc: Document) -> Document:
        """``_copy`` of a document on its way in, its frozen fields packed straight away
        (``freeze``d: ``insert(..., frozen=True)``)."""
        if not self.frozen:
            return _copy(doc)
        cold: dict[str, _Frozen] = {}
        names: Iterable[str] = doc if self._cold is None else self._cold
        for k in names:
            v = doc.get(k)
            if (type(v) is dict or type(v) is list) and self.is_frozen(k):
                raw = _pack(v)
                if raw is None:
                    new = _copy(doc)
                    self.freeze(new)
                    return new
                cold[k] = _Frozen(raw)
        if not cold:
            return _copy(doc)
        # the frozen fields' places kept with a None while the rest is copied
        rest = dict(doc)
        for k in cold:
            rest[k] = None
        new = _copy(rest)
        for k, f in cold.items():
            new[k] = f
        return new

    def take(self, doc: Document) -> Document:
        """A document handed over (``insert(..., handover=True)``): its values kept as they
        are in a dict of the store's own, its frozen fields packed (the caller's dict is
        left as it was). No copy of the rest: for a created resource that copy (its
        central model, search fields, identifiers: an orjson round trip) and the
        freeing of the caller's objects were a fifth of the write (bench.store
        --resources)."""
        new = dict(doc)
        if self.frozen:
            # freeze, reading only the frozen fields when they can be listed
            for k in new if self._cold is None else self._cold:
                v = new.get(k)
                if (type(v) is dict or type(v) is list) and self.is_frozen(k):
                    raw = _pack(v)
                    if raw is not None:
                        new[k] = _Frozen(raw)
        return new

    def freeze(self, doc: Document) -> None:
        """Pack the frozen fields of a new version (the store's own, not yet stored)."""
        for k, v in doc.items():
            if (type(v) is dict or type(v) is list) and self.is_frozen(k):
                raw = _pack(v)
                if raw is not None:
                    doc[k] = _Frozen(raw)

    def base_for(self, old: Document, ops: Mapping[str, Mapping[str, Any]]) -> Document:
        """The version an update starts from: the frozen fields it reads into decoded
        (a ``$set`` or ``$unset`` of a whole field needs nothing decoded)."""
        if not self.frozen:
            return old
        need = {
            path.split(".", 1)[0]
            for op, fields in ops.items()
            for path in fields
            if "." in path or op == "$inc" or op == "$push"
        }
        need = {k for k in need if type(old.get(k)) is _Frozen}
        if not need:
            return old
        return {k: v.value() if k in need else v for k, v in old.items()}

    def new_version(
        self, old: Document, ops: Mapping[str, Mapping[str, Any]]
    ) -> tuple[Document, bytes | None]:
        """The version an update makes of ``old`` (top-level fields straight, paths through
        ``_Writer``), and its bytes when ``old`` came decoded from a packed one."""
        new = _flat_update(old, ops)
        if new is None:
            w = _Writer(self.base_for(old, ops))
            w.apply(ops, inserting=False)
            new = w.doc
        if new.get("_id") != old["_id"]:
            raise ValueError("the _id of a document cannot change")
        return new, (_pack(new) if self.fresh(old) else None)

    def fresh(self, doc: Document) -> bool:
        """Whether a document ``select`` gave is a decoded copy (not store state)."""
        return self.packed and type(self.docs.get(doc["_id"])) is bytes

    def add_index(self, spec: Index) -> None:
        if any(i.spec == spec for i in self.indexes):
            return
        idx = _Idx(spec)
        for path in idx.paths:  # an index reads its fields: never frozen
            head = path.split(".", 1)[0]
            if self.is_frozen(head):
                self.unfrozen.add(head)
                for doc_id, stored in list(self.docs.items()):
                    if type(stored) is dict and type(stored.get(head)) is _Frozen:
                        self.docs[doc_id] = {**stored, head: stored[head].value()}
        readable = self.readable()
        for doc_id in self.docs:
            doc = readable[doc_id]
            entries = idx.entries(doc)
            if idx.unique and idx.conflict(doc_id, entries):
                raise DuplicateKey(f"cannot build unique index {spec.name}: duplicates exist")
            idx.add(doc_id, entries)
        self.indexes.append(idx)
        self._unique = [(j, i) for j, i in enumerate(self.indexes) if i.unique]
        self._entries = _compile_entries(self.indexes)
        self._cold = self._cold_fields()
        self._by_touched.clear()
        self._reads_frozen.clear()

    # --- reading

    def candidates(
        self, filter: Filter, sort: Sort | None, want: int
    ) -> tuple[Iterable[str], _Plan | None]:
        direct = filter.get("_id")
        if type(direct) is str:  # the common case: no planning
            return ([direct] if direct in self.docs else []), None
        cons = _Constraints(filter)
        ids = cons.eq.get("_id")
        if ids is not None:
            found = [k[1] for k in ids if k[0] == _R_STRING and k[1] in self.docs]
            return found, None
        plan = _plan(self, cons, sort, want)
        if plan is None:
            return self.docs.keys(), None
        return plan.ids(), plan

    def select(
        self, filter: Filter, sort: Sort | None = None, skip: int = 0, limit: int = 0
    ) -> list[Document]:
        """Matching stored documents (not copies), sorted and sliced."""
        direct = filter.get("_id")
        if type(direct) is str and not skip and _simple(filter):
            # a document by _id, with scalar conditions (a guarded update's usual filter):
            # no predicate to compile, no plan
            doc = self.docs.get(direct)
            if doc is None:
                return []
            if self.packed or (self.frozen and self._filter_reads_frozen(filter)):
                doc = self.readable(filter)[direct]
            return [doc] if _matches(doc, filter) else []
        want = skip + limit if limit else 0
        ids, plan = self.candidates(filter, sort, want)
        pred = _compile(filter if plan is None else _residual(filter, plan))
        docs = self.readable(filter, sort)
        if sort and plan is not None and plan.ordered:
            out: list[Document] = []
            seen: set[str] = set()
            last: _Entry = ()
            single = len(sort) == 1
            for e in plan.ordered_entries(sort[0][1] < 0):
                if want and len(out) >= want and (single or e[:-1] != last[:-1]):
                    break  # ties on the first key still matter to the later keys
                doc_id = e[-1]
                if doc_id in seen:
                    continue
                seen.add(doc_id)
                doc = docs[doc_id]
                if not pred(doc):
                    continue
                out.append(doc)
                last = e
            if len(sort) > 1:
                _sort_docs(out, sort)
        else:
            if not sort and want:
                out = []
                for doc_id in ids:
                    doc = docs[doc_id]
                    if pred(doc):
                        out.append(doc)
                        if len(out) >= want:
                            break
            else:
                out = [d for d in (docs[i] for i in ids) if pred(d)]
                if sort and want and len(sort) == 1 and len(out) > 2 * want:
                    path, direction = sort[0]
                    key_fn = _sort_key_fn(_getter(path), direction < 0)
                    pick = heapq.nlargest if direction < 0 else heapq.nsmallest
                    out = pick(want, out, key=key_fn)  # = sorted(...)[:want], stable
                elif sort:
                    _sort_docs(out, sort)
        if skip or limit:
            out = out[skip : skip + limit] if limit else out[skip:]
        return out

    def count(self, filter: Filter) -> int:
        pred = _compile(filter)
        if not filter:
            return len(self.docs)
        covered = _covered_paths(filter)
        if covered and "_id" not in covered:
            # An index whose entries match exactly what the filter does (equality on its
            # leading fields, equality, a range or nothing on its last, no array ever indexed):
            # the count is the length of its slices, nothing is materialised.
            cons = _Constraints(filter)
            for idx in self.indexes:
                if idx.multikey or idx.sparse:
                    continue
                if any(covered.get(p) != "eq" for p in idx.paths[:-1]):
                    continue
                if len(covered) != len(idx.paths) - (idx.paths[-1] not in covered):
                    continue  # a field the index does not answer
                plan = _plan_on(idx, cons, None)
                if plan is not None:
                    if any(b.dead for b, _, _ in plan.slices):
                        # positions count the dead entries: count them out, or drop them
                        # first when they are many
                        if any(len(b.dead or ()) > DEAD_COUNTED for b, _, _ in plan.slices):
                            for b, _, _ in plan.slices:
                                b.compact()
                            plan = _plan_on(idx, cons, None)
                            assert plan is not None
                        return plan.count - sum(b.dead_between(lo, hi) for b, lo, hi in plan.slices)
                    return plan.count
        ids, _ = self.candidates(filter, None, 0)
        docs = self.readable(filter)
        return sum(1 for i in ids if pred(docs[i]))

    # --- writing (callers have copied and checked the documents)

    def check_unique(
        self, doc_id: str, entries: list[list[tuple[tuple[Any, ...], tuple[Any, ...]]]]
    ) -> None:
        for j, idx in self._unique:
            if idx.conflict(doc_id, entries[j]):
                raise DuplicateKey(f"duplicate key for unique index {idx.spec.name}")

    def entries(self, doc: Document) -> list[list[tuple[tuple[Any, ...], tuple[Any, ...]]]]:
        """Every index's entries of ``doc`` (``_compile_entries``: each path read once)."""
        return self._entries(doc)

    def insert(self, doc: Document, raw: bytes | None = None, frozen: bool = False) -> None:
        """Store ``doc`` (``raw``: its bytes, kept instead when the collection is packed;
        ``frozen``: its frozen fields are packed already, by ``copy_in``)."""
        doc_id = doc["_id"]
        docs = self.docs
        if doc_id in docs:
            raise DuplicateKey(f"duplicate _id {doc_id!r}")
        entries = self._entries(doc)
        for j, idx in self._unique:
            if idx.conflict(doc_id, entries[j]):
                raise DuplicateKey(f"duplicate key for unique index {idx.spec.name}")
        if self.frozen and not frozen:
            self.freeze(doc)
        docs[doc_id] = raw if raw is not None and self.packed else doc
        # _Idx.add, inline: an insert adds one entry to most of the indexes
        for idx, ents in zip(self.indexes, entries, strict=True):
            if ents:
                buckets = idx.buckets
                for prefix, key in ents:
                    bucket = buckets.get(prefix)
                    if bucket is None:
                        buckets[prefix] = _Bucket((*key, doc_id))
                    else:
                        bucket.insert((*key, doc_id))

    def replace(
        self, old: Document, new: Document, touched: frozenset[str], raw: bytes | None = None
    ) -> None:
        """Swap in a new version; ``touched`` are the update's paths (to skip other indexes);
        ``raw``: the new version's bytes, kept instead when the collection is packed."""
        doc_id = old["_id"]
        hit = self._by_touched.get(touched)
        if hit is None:
            if len(self._by_touched) >= 1024:  # paths named from data: keep it bounded
                self._by_touched.clear()
            mine = [idx for idx in self.indexes if idx.touched_by(touched)]
            # the frozen fields the update may have given a dict (a path into one)
            heads = sorted({p.split(".", 1)[0] for p in touched})
            refreeze = [h for h in heads if self.is_frozen(h)]
            unique = any(idx.unique for idx in mine)
            hit = self._by_touched[touched] = (mine, _compile_entries(mine), refreeze, unique)
        mine, entries, refreeze, unique = hit
        if mine:
            olds, news = entries(old), entries(new)
            if olds != news:
                if unique:
                    for idx, o, n in zip(mine, olds, news, strict=True):
                        if o != n and idx.unique and idx.conflict(doc_id, n):
                            raise DuplicateKey(f"duplicate key for unique index {idx.spec.name}")
                # _Idx.remove and _Idx.add, inline
                for idx, o, n in zip(mine, olds, news, strict=True):
                    if o == n:
                        continue
                    buckets = idx.buckets
                    for prefix, key in o:
                        held = buckets[prefix]
                        held.remove((*key, doc_id))
                        if not held.n:
                            del buckets[prefix]
                    for prefix, key in n:
                        bucket = buckets.get(prefix)
                        if bucket is None:
                            buckets[prefix] = _Bucket((*key, doc_id))
                        else:
                            bucket.insert((*key, doc_id))
        for k in refreeze:  # ``freeze``, of the fields the update touched only
            v = new.get(k)
            if type(v) is dict or type(v) is list:
                packed = _pack(v)
                if packed is not None:
                    new[k] = _Frozen(packed)
        self.docs[doc_id] = raw if raw is not None and self.packed else new

    def delete(self, doc: Document) -> None:
        doc_id = doc["_id"]
        for idx, ents in zip(self.indexes, self.entries(doc), strict=True):
            idx.remove(doc_id, ents)
        del self.docs[doc_id]


# --------------------------------------------------------------------------- the store


def _check_doc(doc: Mapping[str, Any]) -> None:
    for name in OUTBOX_FIELDS:
        if name in doc:
            raise ValueError(f"{name} is reserved for the outbox")


def _check_events(events: Sequence[Document]) -> None:
    for ev in events:
        if (type(ev) is not dict and not isinstance(ev, Mapping)) or "id" not in ev:
            raise ValueError("an outbox event needs an 'id' (clear_events removes by id)")


class MemoryStore:
    """The embedded, in-process ``Store`` (see the module docstring).

    ``packed``: the names of the collections kept as orjson bytes (``PACKED`` by default);
    ``frozen``: per collection, the fields kept as orjson bytes (``FROZEN`` by default).
    """

    suspends = False  # ``Store.suspends``

    def __init__(
        self,
        packed: Container[str] = PACKED,
        frozen: Mapping[str, Container[str]] = FROZEN,
    ) -> None:
        self._packed = packed
        self._frozen = frozen
        self._colls: dict[str, _Coll] = {}
        self._seq = itertools.count(1)
        # the outbox: every pending event by sequence (dict order = write order) ...
        # (collection, _id, event id, the event as orjson bytes, or a private copy when
        # JSON cannot carry it): decoded when handed out, so written and read in one copy
        self._pending: dict[int, tuple[str, str, Any, Any]] = {}
        # ... and each document's pending sequences
        self._doc_events: dict[tuple[str, str], list[int]] = {}

    def _reading(self, name: str) -> _Coll:
        """The collection, or an empty stand-in (reading never creates one)."""
        return self._colls.get(name) or _Coll()

    def _coll(self, name: str) -> _Coll:
        coll = self._colls.get(name)
        if coll is None:
            coll = self._colls[name] = _Coll(name in self._packed, self._frozen.get(name, ()))
        return coll

    @staticmethod
    def _out(c: _Coll, doc: Document) -> Document:
        """What a read hands out: a decoded packed document as it is, else a copy."""
        return doc if c.fresh(doc) else _copy(doc)

    # --- lifecycle

    async def start(self, indexes: Mapping[str, Sequence[Index]]) -> None:
        for name, specs in indexes.items():
            coll = self._coll(name)
            for spec in specs:
                coll.add_index(spec)

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    # --- outbox helpers

    @staticmethod
    def _events_in(events: Sequence[Document]) -> list[tuple[Any, Any]]:
        """The events' ids and private versions (bytes, or a copy), before any write."""
        out = []
        for ev in events:
            raw = _pack(ev)
            out.append((ev.get("id"), raw if raw is not None else _copy(ev)))
        return out

    def _write_events(self, coll: str, doc_id: str, events: list[tuple[Any, Any]]) -> None:
        if not events:
            return
        seqs = self._doc_events.setdefault((coll, doc_id), [])
        for ev_id, body in events:
            seq = next(self._seq)
            self._pending[seq] = (coll, doc_id, ev_id, body)
            seqs.append(seq)

    def _drop_events(self, coll: str, doc_id: str) -> None:
        for seq in self._doc_events.pop((coll, doc_id), ()):
            self._pending.pop(seq, None)

    # --- reads

    async def get(
        self,
        coll: str,
        doc_id: str,
        fields: Sequence[str] | None = None,
        *,
        shared: bool = False,
    ) -> Document | None:
        c = self._colls.get(coll)
        if c is None:
            return None
        doc = c.docs.get(doc_id)
        if doc is None:
            return None
        if type(doc) is bytes:
            got: Document = orjson.loads(doc)
            if fields is None:
                return got
            return {k: got[k] for k in ("_id", *fields) if k in got}
        if shared:
            # The copy of a whole Slot, out of the CPU's caches in the waiting room's
            # unlock, was most of its read.
            out = doc if fields is None else {k: doc[k] for k in ("_id", *fields) if k in doc}
            return _shared(out, doc)
        if fields is None:
            return _copy(doc)
        # Copy only what was asked for (a slot's FHIR body is most of its copy).
        return _copy({k: doc[k] for k in ("_id", *fields) if k in doc})

    async def find_one(
        self, coll: str, filter: Filter, sort: Sort | None = None
    ) -> Document | None:
        c = self._reading(coll)
        found = c.select(filter, sort, 0, 1)
        return self._out(c, found[0]) if found else None

    async def find(
        self,
        coll: str,
        filter: Filter,
        *,
        sort: Sort | None = None,
        skip: int = 0,
        limit: int = 0,
        fields: Sequence[str] | None = None,
        shared: bool = False,
    ) -> list[Document]:
        if skip < 0 or limit < 0:
            raise ValueError("skip and limit must not be negative")
        c = self._reading(coll)
        found = c.select(filter, sort, skip, limit)
        if fields is None:
            if shared and not c.frozen:
                return [d if c.fresh(d) else dict(d) for d in found]
            return [self._out(c, d) for d in found]
        # Copy only what was asked for: the copy is most of the cost of a large read.
        names = ["_id", *(f for f in fields if f != "_id")]
        if shared and not any(map(c.is_frozen, names)):
            # The caller changes nothing: a new top level, the stored values under it
            # (a version is never changed in place: ``_Writer`` copies what it changes).
            return [{k: d[k] for k in names if k in d} for d in found]
        return [self._out(c, {k: d[k] for k in names if k in d}) for d in found]

    async def count(self, coll: str, filter: Filter) -> int:
        return self._reading(coll).count(filter)

    async def iterate(
        self,
        coll: str,
        filter: Filter,
        *,
        sort: Sort | None = None,
        batch_size: int = 500,
        fields: Sequence[str] | None = None,
    ) -> AsyncIterator[Document]:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        keep = None if fields is None else ("_id", *fields)
        # The documents are in memory already: the selection is a list of references,
        # and each one is copied only when it is handed out (only the fields asked for).
        # Other tasks run between batches so a long read does not hold up the event loop.
        c = self._reading(coll)
        found = c.select(filter, sort, 0, 0)
        for i, doc in enumerate(found, 1):
            yield self._out(c, doc if keep is None else {k: doc[k] for k in keep if k in doc})
            if i % batch_size == 0:
                await asyncio.sleep(0)

    # --- writes

    async def insert(
        self,
        coll: str,
        doc: Document,
        events: Sequence[Document] = (),
        *,
        handover: bool = False,
    ) -> None:
        _check_doc(doc)
        _check_events(events)
        c = self._coll(coll)
        raw: bytes | None = None
        if c.packed:
            # kept as its bytes: a handed-over document is indexed as given, not decoded
            # again from them (a history version with its FHIR body: 2-3 us)
            raw = _pack(doc) if handover and "_id" in doc else None
            if raw is not None:
                new = doc
            else:
                new, raw = _copy_packed(doc)
        elif handover:
            new = c.take(doc)
        else:
            new = c.copy_in(doc)
        if "_id" not in new:
            new["_id"] = uuid.uuid4().hex
            raw = raw and _pack(new)
        elif type(new["_id"]) is not str:
            raise TypeError("_id must be a string")
        evs = self._events_in(events)
        c.insert(new, raw, frozen=True)
        self._write_events(coll, new["_id"], evs)

    async def update_one(
        self,
        coll: str,
        filter: Filter,
        update: Mapping[str, Any],
        *,
        events: Sequence[Document] = (),
        upsert: bool = False,
        fields: Sequence[str] | None = None,
        shared: bool = False,
    ) -> Document | None:
        c = self._coll(coll)
        ops, touched = _checked(update, c)
        _check_events(events)
        found = c.select(filter, None, 0, 1)
        if found:
            old = found[0]
            new, raw = c.new_version(old, ops)
            c.replace(old, new, touched, raw)
        elif upsert:
            new = _upserted(filter, ops)
            if "_id" not in new:
                new = {"_id": uuid.uuid4().hex, **new}
            elif type(new["_id"]) is not str:
                raise TypeError("_id must be a string")
            raw = _pack(new) if c.packed else None
            c.insert(new, raw)
        else:
            return None
        if events:
            self._write_events(coll, new["_id"], self._events_in(events))
        if fields is not None:
            if not fields:
                return {"_id": new["_id"]}  # "did it match?"
            out = {k: new[k] for k in ("_id", *fields) if k in new}
            if _IMMUTABLE.issuperset(map(type, out.values())):
                return out  # a new dict of immutable values: nothing to copy
        else:
            out = new
        if raw is not None:
            # a packed version is stored as bytes: the new dict (built from a decoded copy
            # and the update's own copies) is nobody else's
            return out
        if shared:
            # the copy of a claimed waiting-room entry's criteria, e-referral and contact
            # was most of its claim (2.6 % of the unlock's assignments, py-spy)
            return _shared(out, new)
        return _copy(out)

    async def update_many(self, coll: str, filter: Filter, update: Mapping[str, Any]) -> int:
        """Update every match; returns how many matched (as ``matched_count``)."""
        c = self._reading(coll)
        ops, touched = _checked(update, c)
        matched = c.select(filter)
        for old in matched:
            new, raw = c.new_version(old, ops)
            c.replace(old, new, touched, raw)  # a DuplicateKey stops here, as on MongoDB
        return len(matched)

    async def delete_one(self, coll: str, filter: Filter) -> bool:
        c = self._reading(coll)
        found = c.select(filter, None, 0, 1)
        if not found:
            return False
        c.delete(found[0])
        self._drop_events(coll, found[0]["_id"])
        return True

    async def delete_many(self, coll: str, filter: Filter) -> int:
        c = self._reading(coll)
        found = c.select(filter)
        for doc in found:
            c.delete(doc)
            self._drop_events(coll, doc["_id"])
        return len(found)

    # --- the outbox

    async def pending_events(self, limit: int = 500) -> list[OutboxItem]:
        out: list[OutboxItem] = []
        loads = orjson.loads
        for coll, doc_id, _, body in self._pending.values():
            if limit and len(out) >= limit:
                break
            event = loads(body) if type(body) is bytes else _copy(body)
            out.append(OutboxItem(coll, doc_id, event))
        return out

    async def clear_events(self, items: Sequence[OutboxItem]) -> None:
        pending, doc_events = self._pending, self._doc_events
        by_doc: dict[tuple[str, str], set[Any]] = {}
        for item in items:
            key = (item.collection, item.doc_id)
            seqs = doc_events.get(key)
            if seqs is not None and len(seqs) == 1 and key not in by_doc:
                # the usual case: the document's one pending event
                if pending[seqs[0]][2] == item.event.get("id"):
                    del pending[seqs[0]]
                    del doc_events[key]
                continue
            by_doc.setdefault(key, set()).add(item.event.get("id"))
        for key, ids in by_doc.items():
            seqs = self._doc_events.get(key)
            if not seqs:
                continue
            keep = []
            for seq in seqs:
                if self._pending[seq][2] in ids:
                    del self._pending[seq]
                else:
                    keep.append(seq)
            if keep:
                self._doc_events[key] = keep
            else:
                del self._doc_events[key]
